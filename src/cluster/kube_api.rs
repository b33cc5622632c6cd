//! The store over a real apiserver (kube::Api). Status writes by the agent use server-side
//! apply with a field manager; the controller's writes are guarded by resourceVersion.

use k8s_openapi::api::core::v1::ObjectReference;
use std::any::TypeId;

use k8s_openapi::ClusterResourceScope;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::discovery::Scope;
use kube::runtime::events::{Event, EventType as KEventType, Recorder, Reporter};
use kube::Client;
use std::sync::Arc;

use super::cache::WatchCache;

use super::store::{
    cut_to_bytes, decode_listing, ApiError, ApiErrorKind, ApiResult, EventType, Listing, Object,
    Store,
};

/// The apiserver refuses an Event note longer than this many bytes.
const NOTE_MAX_BYTES: usize = 1024;

#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    recorder: Recorder,
    cache: Arc<WatchCache>,
}

impl KubeStore {
    /// `controller` names the reporter of Events (`snapback-controller`, `snapback-agent`).
    pub fn new(client: Client, controller: &str) -> Self {
        let reporter = Reporter {
            controller: controller.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            cache: Arc::new(WatchCache::default()),
        }
    }

    /// Watches `K` (in `ns`, or every namespace, with `labels`) into a reflector cache that
    /// lists of it then read, and returns once the cache holds the first full list. A watch
    /// that cannot start within `timeout` (say RBAC forbids it) is given up with an error,
    /// and lists of `K` keep going to the API.
    pub async fn watch<K: Object>(
        &self,
        ns: Option<&str>,
        labels: &[(&str, &str)],
        timeout: std::time::Duration,
    ) -> Result<(), String> {
        use futures::StreamExt;
        use kube::runtime::{reflector, watcher, WatchStreamExt};
        let ar = ApiResource::erase::<K>(&());
        let writer = reflector::store::Writer::<DynamicObject>::new(ar);
        let reader = writer.as_reader();
        let sel = selector(labels);
        // The server ends each watch within WATCH_SECONDS, inside the client's read timeout:
        // an idle watch is then renewed from its resourceVersion (no new list) instead of
        // timing out as a hung request.
        let mut cfg = watcher::Config::default().timeout(WATCH_SECONDS);
        if !sel.is_empty() {
            cfg = cfg.labels(&sel);
        }
        let changed = self.cache.changed();
        let kind = kind_key::<K>();
        let what = kind.clone();
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let health = healthy.clone();
        let task = tokio::spawn(
            reflector(writer, watcher(self.api::<K>(ns), cfg))
                .default_backoff()
                .for_each(move |ev| {
                    use std::sync::atomic::Ordering;
                    match ev {
                        // Init starts a new list; the cache holds the old state until InitDone.
                        Ok(watcher::Event::Init) => {}
                        Ok(_) => {
                            health.store(true, Ordering::SeqCst);
                            changed.notify_one();
                        }
                        // The watcher re-lists and watches again by itself (with backoff);
                        // meanwhile lists go to the API rather than to a cache that may be
                        // falling behind (a watch refused after an RBAC change never catches up).
                        Err(e) => {
                            health.store(false, Ordering::SeqCst);
                            tracing::warn!(kind = %what, "watch interrupted: {e}");
                        }
                    }
                    std::future::ready(())
                }),
        );
        match tokio::time::timeout(timeout, reader.wait_until_ready()).await {
            Ok(Ok(())) => {
                self.cache.add(
                    kind,
                    ns.map(str::to_string),
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    reader,
                    healthy,
                );
                Ok(())
            }
            _ => {
                task.abort();
                Err(format!(
                    "the watch of {kind} did not start within {}s",
                    timeout.as_secs()
                ))
            }
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A dynamic Api for `K`: kube's typed constructors differ by scope at compile time, and
    /// the store is generic over both scopes, so objects travel as DynamicObject and are
    /// converted with serde at the edge.
    fn api<K: Object>(&self, ns: Option<&str>) -> Api<DynamicObject> {
        let ar = ApiResource::erase::<K>(&());
        let cluster = TypeId::of::<K::Scope>() == TypeId::of::<ClusterResourceScope>();
        let scope = if cluster {
            Scope::Cluster
        } else {
            Scope::Namespaced
        };
        let api = Api::dynamic(self.client.clone(), &ar, &scope);
        match ns {
            Some(ns) if !cluster => api.constrain(ns),
            _ => api,
        }
    }
}

fn selector(labels: &[(&str, &str)]) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn kind_key<K: Object>() -> String {
    format!("{}/{}", K::api_version(&()), K::kind(&()))
}

fn to_dyn<K: Object>(obj: &K) -> ApiResult<DynamicObject> {
    serde_json::to_value(obj)
        .and_then(serde_json::from_value)
        .map_err(|e| ApiError::new(ApiErrorKind::Invalid, e.to_string()))
}

fn from_dyn<K: Object>(d: DynamicObject) -> ApiResult<K> {
    serde_json::to_value(d)
        .and_then(serde_json::from_value)
        .map_err(|e| ApiError::new(ApiErrorKind::Invalid, e.to_string()))
}

/// Maps kube's errors onto the store's stable kinds. A 429 (the apiserver's priority and
/// fairness throttling us) and a 408 are `Unavailable`: like a 5xx they pass by themselves,
/// and the apiserver's `retryAfterSeconds`, when it gives one, goes along.
pub fn map_err(e: kube::Error) -> ApiError {
    match &e {
        kube::Error::Api(s) => {
            let kind = match (s.code, s.reason.as_str()) {
                (404, _) => ApiErrorKind::NotFound,
                (409, "AlreadyExists") => ApiErrorKind::AlreadyExists,
                (409, _) => ApiErrorKind::Conflict,
                (422, _) | (400, _) => ApiErrorKind::Invalid,
                (401, _) | (403, _) => ApiErrorKind::Forbidden,
                (408, _) | (429, _) | (500..=599, _) => ApiErrorKind::Unavailable,
                _ => ApiErrorKind::Other,
            };
            let wait = s
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|s| *s > 0)
                .map(|s| std::time::Duration::from_secs(s.into()));
            ApiError::new(kind, s.message.clone()).with_retry_after(wait)
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            ApiError::new(ApiErrorKind::Unavailable, e.to_string())
        }
        _ => ApiError::new(ApiErrorKind::Other, e.to_string()),
    }
}

/// An Event's note as the API takes it: at most 1 KiB, cut on a character boundary.
fn event_note(note: &str) -> String {
    cut_to_bytes(note, NOTE_MAX_BYTES).to_string()
}

fn name_of<K: Object>(obj: &K) -> ApiResult<String> {
    obj.meta()
        .name
        .clone()
        .ok_or_else(|| ApiError::new(ApiErrorKind::Invalid, "metadata.name is required"))
}

impl Store for KubeStore {
    async fn listing<K: Object>(
        &self,
        ns: Option<&str>,
        labels: &[(&str, &str)],
    ) -> ApiResult<Listing<K>> {
        if let Some(values) = self.cache.list(&kind_key::<K>(), ns, labels) {
            return Ok(decode_listing(values));
        }
        let sel = selector(labels);
        let lp = if sel.is_empty() {
            ListParams::default()
        } else {
            ListParams::default().labels(&sel)
        };
        let items = self.api::<K>(ns).list(&lp).await.map_err(map_err)?.items;
        // Each item is decoded on its own (a DynamicObject holds any JSON), so one that does
        // not fit its type is reported instead of failing the list.
        Ok(decode_listing(items.into_iter().map(|d| {
            serde_json::to_value(d).unwrap_or(serde_json::Value::Null)
        })))
    }

    async fn get<K: Object>(&self, ns: Option<&str>, name: &str) -> ApiResult<Option<K>> {
        self.api::<K>(ns)
            .get_opt(name)
            .await
            .map_err(map_err)?
            .map(from_dyn)
            .transpose()
    }

    async fn create<K: Object>(&self, obj: &K) -> ApiResult<K> {
        self.api::<K>(obj.meta().namespace.as_deref())
            .create(&PostParams::default(), &to_dyn(obj)?)
            .await
            .map_err(map_err)
            .and_then(from_dyn)
    }

    async fn replace<K: Object>(&self, obj: &K) -> ApiResult<K> {
        let name = name_of(obj)?;
        self.api::<K>(obj.meta().namespace.as_deref())
            .replace(&name, &PostParams::default(), &to_dyn(obj)?)
            .await
            .map_err(map_err)
            .and_then(from_dyn)
    }

    async fn replace_status<K: Object>(&self, obj: &K) -> ApiResult<K> {
        let name = name_of(obj)?;
        self.api::<K>(obj.meta().namespace.as_deref())
            .replace_status(&name, &PostParams::default(), &to_dyn(obj)?)
            .await
            .map_err(map_err)
            .and_then(from_dyn)
    }

    async fn apply_status<K: Object>(&self, obj: &K, manager: &str) -> ApiResult<K> {
        let name = name_of(obj)?;
        let v = serde_json::to_value(obj)
            .map_err(|e| ApiError::new(ApiErrorKind::Invalid, e.to_string()))?;
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": v.get("status").cloned().unwrap_or(serde_json::Value::Null),
        });
        self.api::<K>(obj.meta().namespace.as_deref())
            .patch_status(
                &name,
                &PatchParams::apply(manager).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(map_err)
            .and_then(from_dyn)
    }

    async fn delete<K: Object>(&self, ns: Option<&str>, name: &str) -> ApiResult<()> {
        match self
            .api::<K>(ns)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match map_err(e) {
                x if x.is(ApiErrorKind::NotFound) => Ok(()),
                x => Err(x),
            },
        }
    }

    async fn event(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> ApiResult<()> {
        let ev = Event {
            type_: match type_ {
                EventType::Normal => KEventType::Normal,
                EventType::Warning => KEventType::Warning,
            },
            reason: reason.to_string(),
            note: Some(event_note(note)),
            action: reason.to_string(),
            secondary: None,
        };
        self.recorder.publish(&ev, regarding).await.map_err(map_err)
    }

    fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.cache.changed())
    }
}

/// How long the server keeps one watch request open (`timeoutSeconds`): under READ_TIMEOUT.
const WATCH_SECONDS: u32 = 25;

/// How long one response may keep us waiting: a request that hangs becomes `Unavailable`
/// (and is retried) instead of stalling a pass or a status write forever.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Connects and proves the API answers, within `timeout`. Every controller and agent command
/// calls this first, so a missing or unreachable apiserver is one clear line, not a hang.
///
/// kube's own retry layer is switched off: it retries 429/503/504 up to 15 times with delays
/// growing to minutes, below any budget of ours. `Retrying` is the one place that retries,
/// with a cap on the total time.
pub async fn connect(timeout: std::time::Duration) -> Result<Client, String> {
    let fut = async {
        let mut config = kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration (in-cluster or kubeconfig): {e}"))?;
        config.default_retry = false;
        config.read_timeout = Some(READ_TIMEOUT);
        // The timeout counts from the request's write, not from when a pooled connection
        // last saw a byte: a watch on a connection idle for a while would time out early.
        config.reset_reader_on_write = true;
        let client = Client::try_from(config)
            .map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;
        client
            .apiserver_version()
            .await
            .map_err(|e| format!("the Kubernetes API does not answer: {e}"))?;
        Ok::<_, String>(client)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the Kubernetes API did not answer within {}s",
            timeout.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str, retry_after: u32) -> kube::Error {
        let mut s = kube::core::Status::failure("said no", reason).with_code(code);
        if retry_after > 0 {
            let details = serde_json::json!({"retryAfterSeconds": retry_after});
            s = s.with_details(serde_json::from_value(details).unwrap());
        }
        kube::Error::Api(s.boxed())
    }

    #[test]
    fn an_event_note_is_cut_to_1024_bytes_on_a_character_boundary() {
        // 1000 characters of 3 bytes each: a cut by characters would send 3000 bytes.
        let note = "€".repeat(1000);
        let cut = event_note(&note);
        assert_eq!(cut.len(), 1023, "341 whole characters");
        assert!(note.starts_with(&cut));
        assert_eq!(event_note("fine as it is"), "fine as it is");
    }

    #[test]
    fn throttling_and_server_errors_are_unavailable_and_carry_the_wait_asked_for() {
        let e = map_err(api_error(429, "TooManyRequests", 3));
        assert_eq!(e.kind, ApiErrorKind::Unavailable);
        assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(3)));
        let e = map_err(api_error(503, "ServiceUnavailable", 0));
        assert_eq!((e.kind, e.retry_after), (ApiErrorKind::Unavailable, None));
        for (code, reason, kind) in [
            (409, "Conflict", ApiErrorKind::Conflict),
            (409, "AlreadyExists", ApiErrorKind::AlreadyExists),
            (422, "Invalid", ApiErrorKind::Invalid),
            (403, "Forbidden", ApiErrorKind::Forbidden),
            (404, "NotFound", ApiErrorKind::NotFound),
        ] {
            assert_eq!(map_err(api_error(code, reason, 0)).kind, kind, "{code}");
        }
    }
}
