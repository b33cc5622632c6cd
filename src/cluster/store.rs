//! The part of the Kubernetes API snapback uses, as a trait. Reconcile code is generic over it,
//! so the same code runs against the apiserver and against the in-memory store in tests.

use std::fmt::Debug;
use std::future::Future;

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
    Unavailable,
    Other,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn is(&self, kind: ApiErrorKind) -> bool {
        self.kind == kind
    }
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
    fn list<K: Object>(
        &self,
        ns: Option<&str>,
        labels: &[(&str, &str)],
    ) -> impl Future<Output = ApiResult<Vec<K>>> + Send;

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
