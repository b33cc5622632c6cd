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

use super::store::{ApiError, ApiErrorKind, ApiResult, EventType, Object, Store};

#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    recorder: Recorder,
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

/// Maps kube's errors onto the store's stable kinds.
pub fn map_err(e: kube::Error) -> ApiError {
    match &e {
        kube::Error::Api(s) => {
            let kind = match (s.code, s.reason.as_str()) {
                (404, _) => ApiErrorKind::NotFound,
                (409, "AlreadyExists") => ApiErrorKind::AlreadyExists,
                (409, _) => ApiErrorKind::Conflict,
                (422, _) | (400, _) => ApiErrorKind::Invalid,
                (401, _) | (403, _) => ApiErrorKind::Forbidden,
                (500..=599, _) => ApiErrorKind::Unavailable,
                _ => ApiErrorKind::Other,
            };
            ApiError::new(kind, s.message.clone())
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            ApiError::new(ApiErrorKind::Unavailable, e.to_string())
        }
        _ => ApiError::new(ApiErrorKind::Other, e.to_string()),
    }
}

fn name_of<K: Object>(obj: &K) -> ApiResult<String> {
    obj.meta()
        .name
        .clone()
        .ok_or_else(|| ApiError::new(ApiErrorKind::Invalid, "metadata.name is required"))
}

impl Store for KubeStore {
    async fn list<K: Object>(
        &self,
        ns: Option<&str>,
        labels: &[(&str, &str)],
    ) -> ApiResult<Vec<K>> {
        let sel = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let lp = if sel.is_empty() {
            ListParams::default()
        } else {
            ListParams::default().labels(&sel)
        };
        self.api::<K>(ns)
            .list(&lp)
            .await
            .map_err(map_err)?
            .items
            .into_iter()
            .map(from_dyn)
            .collect()
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
            note: Some(note.chars().take(1000).collect()),
            action: reason.to_string(),
            secondary: None,
        };
        self.recorder.publish(&ev, regarding).await.map_err(map_err)
    }
}

/// Connects and proves the API answers, within `timeout`. Every controller and agent command
/// calls this first, so a missing or unreachable apiserver is one clear line, not a hang.
pub async fn connect(timeout: std::time::Duration) -> Result<Client, String> {
    let fut = async {
        let client = Client::try_default()
            .await
            .map_err(|e| format!("no Kubernetes configuration (in-cluster or kubeconfig): {e}"))?;
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
