//! The part of the Kubernetes API snapback uses, as a trait. Reconcile code is generic over it,
//! so the same code runs against the apiserver and against the in-memory store in tests.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use serde::{de::DeserializeOwned, Serialize};

/// Any resource the store can hold: our CRDs and the built-in kinds we read (Secret, Node).
pub trait Object:
    kube::Resource<DynamicType = (), Scope: 'static>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<T> Object for T where
    T: kube::Resource<DynamicType = (), Scope: 'static>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// Stable words for what went wrong talking to the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiErrorKind {
    NotFound,
    AlreadyExists,
    /// The object changed since it was read (resourceVersion mismatch): read again and retry.
    Conflict,
    Invalid,
    Forbidden,
    /// Worth trying again soon: a 5xx, a 429 (the apiserver throttles us), a connection that
    /// failed or timed out. The only kind `Retrying` retries.
    Unavailable,
    Other,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub message: String,
    /// How long the apiserver asked us to wait before trying again (`retryAfterSeconds`).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, wait: Option<Duration>) -> Self {
        self.retry_after = wait;
        self
    }

    pub fn is(&self, kind: ApiErrorKind) -> bool {
        self.kind == kind
    }

    /// The same error, its message prefixed with what was being done.
    pub fn context(mut self, doing: impl std::fmt::Display) -> Self {
        self.message = format!("{doing}: {}", self.message);
        self
    }
}

/// A stored object that does not decode into its Rust type (say a number too large for its
/// field, which the schema let through). Lists skip it rather than fail for every object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undecodable {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: Option<String>,
    pub error: String,
}

impl Undecodable {
    /// An ObjectReference, so an Event can name the object that no type can hold.
    pub fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(self.api_version.clone()),
            kind: Some(self.kind.clone()),
            name: Some(self.name.clone()),
            namespace: self.namespace.clone(),
            uid: self.uid.clone(),
            ..Default::default()
        }
    }
}

/// What a list returned: the objects that decoded, and those that did not.
#[derive(Clone, Debug)]
pub struct Listing<K> {
    pub items: Vec<K>,
    pub undecodable: Vec<Undecodable>,
}

/// Decodes listed objects one by one. Each one that does not decode is logged (kind,
/// namespace, name and serde's message) and kept aside, so one bad object does not hide all
/// the others. KubeStore and MemStore both list through this.
pub fn decode_listing<K: Object>(
    values: impl IntoIterator<Item = serde_json::Value>,
) -> Listing<K> {
    let mut out = Listing {
        items: Vec::new(),
        undecodable: Vec::new(),
    };
    for v in values {
        match serde_json::from_value::<K>(v.clone()) {
            Ok(k) => out.items.push(k),
            Err(e) => {
                let meta = |f: &str| {
                    v.get("metadata")
                        .and_then(|m| m.get(f))
                        .and_then(|x| x.as_str())
                        .map(str::to_string)
                };
                let kind = K::kind(&()).into_owned();
                // serde's message can quote the offending value: never one of a Secret.
                let error = if kind == "Secret" {
                    "does not decode (the message is withheld: it could quote a secret)".into()
                } else {
                    e.to_string()
                };
                let bad = Undecodable {
                    api_version: K::api_version(&()).into_owned(),
                    kind,
                    namespace: meta("namespace"),
                    name: meta("name").unwrap_or_default(),
                    uid: meta("uid"),
                    error,
                };
                tracing::warn!(
                    kind = %bad.kind,
                    namespace = bad.namespace.as_deref().unwrap_or(""),
                    name = %bad.name,
                    error = %bad.error,
                    "skipping an object that does not decode"
                );
                out.undecodable.push(bad);
            }
        }
    }
    out
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary: the
/// API counts limits such as an Event note's 1 KiB in bytes, and a cut inside a multi-byte
/// character would not be UTF-8.
pub fn cut_to_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `ns` is `None` for cluster-scoped kinds (and for "all namespaces" in `list`).
/// Label selectors are equality pairs, ANDed.
pub trait Store: Clone + Send + Sync + 'static {
    /// The objects of kind `K`; those that do not decode are logged and returned apart
    /// (`decode_listing`), never an error of the whole list.
    fn listing<K: Object>(
        &self,
        ns: Option<&str>,
        labels: &[(&str, &str)],
    ) -> impl Future<Output = ApiResult<Listing<K>>> + Send;

    /// The objects that decode (the others are logged by `listing`).
    fn list<K: Object>(
        &self,
        ns: Option<&str>,
        labels: &[(&str, &str)],
    ) -> impl Future<Output = ApiResult<Vec<K>>> + Send {
        async move { self.listing(ns, labels).await.map(|l| l.items) }
    }

    fn get<K: Object>(
        &self,
        ns: Option<&str>,
        name: &str,
    ) -> impl Future<Output = ApiResult<Option<K>>> + Send;

    /// Fails `AlreadyExists` when the name is taken.
    fn create<K: Object>(&self, obj: &K) -> impl Future<Output = ApiResult<K>> + Send;

    /// Replaces metadata and spec (not status). With `metadata.resourceVersion` set, fails
    /// `Conflict` when the stored object is newer.
    fn replace<K: Object>(&self, obj: &K) -> impl Future<Output = ApiResult<K>> + Send;

    /// Replaces the status only, with the same optimistic-concurrency rule as `replace`.
    fn replace_status<K: Object>(&self, obj: &K) -> impl Future<Output = ApiResult<K>> + Send;

    /// Server-side apply of the status, owned by `manager`: last writer wins, no conflict.
    fn apply_status<K: Object>(
        &self,
        obj: &K,
        manager: &str,
    ) -> impl Future<Output = ApiResult<K>> + Send;

    /// Deletes, or with finalizers present marks for deletion. A missing object is not an error.
    fn delete<K: Object>(
        &self,
        ns: Option<&str>,
        name: &str,
    ) -> impl Future<Output = ApiResult<()>> + Send;

    /// Publishes a Kubernetes Event about `regarding`. Events are best effort: a failure is
    /// logged by the caller, never fatal.
    fn event(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> impl Future<Output = ApiResult<()>> + Send;

    /// Notified on every change a watch of this store sees, for a loop that wants to react
    /// at once instead of at its next poll. `None`: the store has no watches.
    fn changes(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}

/// An ObjectReference for events, from any resource.
pub fn reference<K: Object>(obj: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: obj.meta().name.clone(),
        namespace: obj.meta().namespace.clone(),
        uid: obj.meta().uid.clone(),
        resource_version: obj.meta().resource_version.clone(),
        ..Default::default()
    }
}

/// Reads a key of a Secret as text. The value never leaves this function in an error message.
pub async fn secret_value<S: Store>(
    store: &S,
    ns: &str,
    name: &str,
    key: &str,
) -> ApiResult<String> {
    use k8s_openapi::api::core::v1::Secret;
    let s: Secret = store.get(Some(ns), name).await?.ok_or_else(|| {
        ApiError::new(
            ApiErrorKind::NotFound,
            format!("Secret {ns}/{name} not found"),
        )
    })?;
    let bytes = s
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            s.string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| v.clone().into_bytes())
        })
        .ok_or_else(|| {
            ApiError::new(
                ApiErrorKind::NotFound,
                format!("Secret {ns}/{name} has no key '{key}'"),
            )
        })?;
    String::from_utf8(bytes).map_err(|_| {
        ApiError::new(
            ApiErrorKind::Invalid,
            format!("Secret {ns}/{name} key '{key}' is not UTF-8"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BackupPolicy;

    #[test]
    fn a_cut_to_bytes_keeps_whole_characters_and_stays_within_the_limit() {
        assert_eq!(cut_to_bytes("short", 1024), "short");
        // 'ü' and '€' are 2 and 3 bytes: a cut may never split them.
        let text = "ü€".repeat(300);
        let cut = cut_to_bytes(&text, 1024);
        assert!(cut.len() <= 1024 && cut.len() > 1020, "{}", cut.len());
        assert!(text.starts_with(cut));
        assert_eq!(cut_to_bytes("€", 2), "");
        assert_eq!(cut_to_bytes("a€", 3), "a");
    }

    #[test]
    fn a_list_keeps_the_objects_that_decode_and_reports_the_one_that_does_not() {
        let good = |name: &str| {
            serde_json::json!({
                "apiVersion": "snapback.dev/v1alpha1", "kind": "BackupPolicy",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"domainSelector": {"names": ["web"]}, "targetRef": "t",
                         "schedule": "0 * * * *"},
            })
        };
        let mut bad = good("bad");
        bad["spec"]["consistency"] = serde_json::json!({"freezeTimeoutSeconds": 5_000_000_000u64});
        bad["metadata"]["uid"] = "u-1".into();

        let l = decode_listing::<BackupPolicy>([good("a"), bad, good("b")]);

        let names: Vec<_> = l
            .items
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(l.undecodable.len(), 1);
        let u = &l.undecodable[0];
        assert_eq!(
            (
                u.kind.as_str(),
                u.namespace.as_deref(),
                u.name.as_str(),
                u.uid.as_deref()
            ),
            ("BackupPolicy", Some("ns"), "bad", Some("u-1"))
        );
        assert!(u.error.contains("u32"), "{}", u.error);
        assert_eq!(u.reference().name.as_deref(), Some("bad"));
    }
}
