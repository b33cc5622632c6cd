//! Releasing snapback's own finalizers from its objects, for `snapback release-finalizers`.
//!
//! The Helm chart runs it as an uninstall hook. Without it, objects carrying
//! `snapback.dev/policy-runs` or `snapback.dev/agent-cleanup` would outlive the controller and
//! the agents that remove those finalizers, and any later delete of them (or of their namespace)
//! would hang for ever. Only snapback's two finalizers are removed: others belong to other
//! controllers, whose promises are not ours to break. Nothing else of the objects is changed,
//! and BackupTargets (and what they point at) are never touched.
//!
//! Objects are read and written as `Untyped`: their metadata, and the rest as plain JSON. So an
//! object this binary's types cannot decode (written by another snapback version, say) still
//! has its finalizers released instead of being skipped, and a field this binary does not
//! know is written back as it was instead of being dropped by the replace.

use std::borrow::Cow;
use std::marker::PhantomData;

use kube::api::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Serialize};

use crate::api::{BackupPolicy, BackupRun, RestoreRequest};
use crate::cluster::labels;
use crate::cluster::store::{ApiError, ApiErrorKind, ApiResult, Object, Store};

/// The finalizers snapback's controller and agents put on objects.
pub const OURS: [&str; 2] = [labels::POLICY_FINALIZER, labels::RUN_FINALIZER];

/// How often one object is read again after a Conflict before giving up. While the controller
/// and the agents still run they write the same objects (status, finalizers), so a few
/// conflicts are expected; one that never settles points at a writer in a loop.
const ATTEMPTS: usize = 10;

/// What one release did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// `Kind namespace/name` of every object whose finalizers were removed.
    pub released: Vec<String>,
    /// Objects left as they were: none of our finalizers on them, or gone before the write.
    pub untouched: usize,
    /// Kinds whose CRD is not installed. Nothing of them exists, so nothing holds a finalizer;
    /// an uninstall after the CRDs were deleted by hand must not fail on that.
    pub missing_kinds: Vec<String>,
    /// `Kind namespace/name: error` of every object the apiserver would not let go (a webhook
    /// or a validation rule refusing the update, say). The others are released all the same:
    /// at post-delete nobody else will release them.
    pub failed: Vec<String>,
}

/// An object of the same resource as `K` (group, version, plural, scope), holding everything
/// but its metadata as JSON, so that any stored object decodes and round-trips unchanged.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound = "")]
struct Untyped<K> {
    metadata: ObjectMeta,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    resource: PhantomData<fn() -> K>,
}

impl<K: Object> Resource for Untyped<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(_: &()) -> Cow<'_, str> {
        K::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        K::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        K::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        K::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Removes snapback's finalizers from every BackupPolicy, BackupRun and RestoreRequest in `ns`
/// (all namespaces when `None`). Idempotent: a second call finds nothing to release. An error
/// listing a kind (no right to, no apiserver) ends it; one object refusing its update is
/// recorded in `failed` and the rest go on.
pub async fn release_finalizers<S: Store>(store: &S, ns: Option<&str>) -> ApiResult<Released> {
    let mut out = Released::default();
    release_kind::<S, BackupPolicy>(store, ns, &mut out).await?;
    release_kind::<S, BackupRun>(store, ns, &mut out).await?;
    release_kind::<S, RestoreRequest>(store, ns, &mut out).await?;
    Ok(out)
}

async fn release_kind<S: Store, K: Object>(
    store: &S,
    ns: Option<&str>,
    out: &mut Released,
) -> ApiResult<()> {
    let kind = K::kind(&()).into_owned();
    let objs: Vec<Untyped<K>> = match store.list(ns, &[]).await {
        Ok(v) => v,
        Err(e) if e.is(ApiErrorKind::NotFound) => {
            out.missing_kinds.push(kind);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for obj in objs {
        let id = format!(
            "{kind} {}/{}",
            obj.meta().namespace.as_deref().unwrap_or_default(),
            obj.meta().name.as_deref().unwrap_or_default()
        );
        match release_one(store, obj).await {
            Ok(true) => out.released.push(id),
            Ok(false) => out.untouched += 1,
            Err(e) => out.failed.push(format!("{id}: {e}")),
        }
    }
    Ok(())
}

fn carries_ours<K: Object>(obj: &K) -> bool {
    OURS.iter().any(|f| labels::has_finalizer(obj.meta(), f))
}

/// Writes `obj` without our finalizers. The write carries the resourceVersion it was read at,
/// so a concurrent writer makes it fail with Conflict instead of being overwritten; then the
/// newest version is read and the decision made again on it. True when it wrote.
async fn release_one<S: Store, K: Object>(store: &S, mut cur: K) -> ApiResult<bool> {
    let ns = cur.meta().namespace.clone();
    let name = cur.meta().name.clone().unwrap_or_default();
    for _ in 0..ATTEMPTS {
        if !carries_ours(&cur) {
            return Ok(false);
        }
        for f in OURS {
            labels::remove_finalizer(cur.meta_mut(), f);
        }
        match store.replace(&cur).await {
            Ok(_) => return Ok(true),
            // Gone already (deleted, and its last finalizer was removed by someone else).
            Err(e) if e.is(ApiErrorKind::NotFound) => return Ok(false),
            Err(e) if e.is(ApiErrorKind::Conflict) => {}
            Err(e) => return Err(e),
        }
        match store.get::<K>(ns.as_deref(), &name).await? {
            Some(fresh) => cur = fresh,
            None => return Ok(false),
        }
    }
    Err(ApiError::new(
        ApiErrorKind::Conflict,
        format!(
            "{} {}/{name}: still conflicting after {ATTEMPTS} attempts",
            K::kind(&()),
            ns.as_deref().unwrap_or_default()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::mem::MemStore;

    const NS: &str = "backups";
    const OTHER: &str = "example.com/keep-me";

    fn meta(name: &str, finalizers: &[&str]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            finalizers: Some(finalizers.iter().map(|f| f.to_string()).collect()),
            ..Default::default()
        }
    }

    fn policy(name: &str, finalizers: &[&str]) -> BackupPolicy {
        let spec = serde_json::json!({
            "domainSelector": {"names": ["web"]},
            "targetRef": "local",
            "schedule": "0 * * * *",
        });
        let mut p = BackupPolicy::new(name, serde_json::from_value(spec).unwrap());
        p.metadata = meta(name, finalizers);
        p
    }

    fn run(name: &str, finalizers: &[&str]) -> BackupRun {
        let spec = serde_json::json!({"domain": "web", "targetRef": "local"});
        let mut r = BackupRun::new(name, serde_json::from_value(spec).unwrap());
        r.metadata = meta(name, finalizers);
        r
    }

    fn restore(name: &str, finalizers: &[&str]) -> RestoreRequest {
        let spec = serde_json::json!({"domain": "web", "targetRef": "local", "newName": "web2"});
        let mut r = RestoreRequest::new(name, serde_json::from_value(spec).unwrap());
        r.metadata = meta(name, finalizers);
        r
    }

    async fn finalizers<K: Object>(store: &impl Store, name: &str) -> Vec<String> {
        let obj: K = store.get(Some(NS), name).await.unwrap().unwrap();
        obj.meta().finalizers.clone().unwrap_or_default()
    }

    #[tokio::test]
    async fn releasing_finalizers_removes_ours_and_leaves_other_finalizers() {
        let store = MemStore::new();
        store
            .create(&policy("nightly", &[labels::POLICY_FINALIZER, OTHER]))
            .await
            .unwrap();
        store
            .create(&run("nightly-web-1", &[OTHER, labels::RUN_FINALIZER]))
            .await
            .unwrap();
        store
            .create(&restore("web-back", &[labels::RUN_FINALIZER]))
            .await
            .unwrap();

        let r = release_finalizers(&store, Some(NS)).await.unwrap();

        assert_eq!(r.released.len(), 3, "{r:?}");
        assert_eq!(r.untouched, 0);
        assert_eq!(finalizers::<BackupPolicy>(&store, "nightly").await, [OTHER]);
        assert_eq!(
            finalizers::<BackupRun>(&store, "nightly-web-1").await,
            [OTHER]
        );
        assert!(finalizers::<RestoreRequest>(&store, "web-back")
            .await
            .is_empty());
    }

    #[tokio::test]
    async fn objects_already_without_our_finalizers_are_untouched() {
        let store = MemStore::new();
        store.create(&policy("nightly", &[OTHER])).await.unwrap();
        store.create(&run("nightly-web-1", &[])).await.unwrap();
        store
            .create(&run("nightly-web-2", &[labels::RUN_FINALIZER]))
            .await
            .unwrap();
        let first = release_finalizers(&store, None).await.unwrap();
        assert_eq!(first.released, ["BackupRun backups/nightly-web-2"]);
        let writes = store.writes();

        let again = release_finalizers(&store, None).await.unwrap();

        assert!(again.released.is_empty(), "{again:?}");
        assert_eq!(again.untouched, 3);
        assert_eq!(store.writes(), writes, "a second release wrote something");
        assert_eq!(finalizers::<BackupPolicy>(&store, "nightly").await, [OTHER]);
    }

    #[tokio::test]
    async fn a_deleted_object_waiting_only_for_our_finalizer_goes() {
        let store = MemStore::new();
        store
            .create(&policy("old", &[labels::POLICY_FINALIZER]))
            .await
            .unwrap();
        store.delete::<BackupPolicy>(Some(NS), "old").await.unwrap();
        assert!(store
            .get::<BackupPolicy>(Some(NS), "old")
            .await
            .unwrap()
            .is_some());

        release_finalizers(&store, Some(NS)).await.unwrap();

        assert!(store
            .get::<BackupPolicy>(Some(NS), "old")
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn only_the_namespace_asked_for_is_released() {
        let store = MemStore::new();
        let mut elsewhere = run("other-web-1", &[labels::RUN_FINALIZER]);
        elsewhere.metadata.namespace = Some("elsewhere".into());
        store.create(&elsewhere).await.unwrap();

        let r = release_finalizers(&store, Some(NS)).await.unwrap();

        assert!(r.released.is_empty());
        let kept: BackupRun = store
            .get(Some("elsewhere"), "other-web-1")
            .await
            .unwrap()
            .unwrap();
        assert!(labels::has_finalizer(&kept.metadata, labels::RUN_FINALIZER));
    }

    #[tokio::test]
    async fn an_object_this_version_cannot_decode_is_released_and_keeps_its_fields() {
        let store = MemStore::new();
        // As a newer snapback might have written it: a type this one does not know, and a
        // field it has never heard of.
        let spec = serde_json::json!({
            "domain": "web",
            "targetRef": "local",
            "type": "Differential",
            "futureField": {"a": 1},
        });
        let rest = serde_json::json!({
            "apiVersion": BackupRun::api_version(&()),
            "kind": "BackupRun",
            "spec": spec,
        });
        let future = Untyped::<BackupRun> {
            metadata: meta("nightly-web-1", &[labels::RUN_FINALIZER, OTHER]),
            rest: rest.as_object().unwrap().clone(),
            resource: PhantomData,
        };
        store.create(&future).await.unwrap();
        assert!(store
            .get::<BackupRun>(Some(NS), "nightly-web-1")
            .await
            .is_err());

        let r = release_finalizers(&store, Some(NS)).await.unwrap();

        assert_eq!(r.released, ["BackupRun backups/nightly-web-1"]);
        let after: Untyped<BackupRun> =
            store.get(Some(NS), "nightly-web-1").await.unwrap().unwrap();
        assert_eq!(after.metadata.finalizers.unwrap_or_default(), [OTHER]);
        assert_eq!(after.rest["spec"], spec);
    }

    #[tokio::test]
    async fn a_conflict_is_retried_on_the_newest_version() {
        let store = MemStore::new();
        store
            .create(&run("nightly-web-1", &[labels::RUN_FINALIZER]))
            .await
            .unwrap();
        let stale: BackupRun = store.get(Some(NS), "nightly-web-1").await.unwrap().unwrap();
        // Another writer (an agent still running) changes the run after our read of it.
        let mut theirs = stale.clone();
        labels::add_finalizer(&mut theirs.metadata, OTHER);
        store.replace(&theirs).await.unwrap();

        assert!(release_one(&store, stale).await.unwrap());

        // The stale write was refused; the retry started from the other writer's version, so
        // its change survives and ours is gone.
        assert_eq!(
            finalizers::<BackupRun>(&store, "nightly-web-1").await,
            [OTHER]
        );
    }

    #[tokio::test]
    async fn an_object_gone_between_read_and_write_counts_as_untouched() {
        let store = MemStore::new();
        store
            .create(&run("nightly-web-1", &[labels::RUN_FINALIZER]))
            .await
            .unwrap();
        let stale: BackupRun = store.get(Some(NS), "nightly-web-1").await.unwrap().unwrap();
        let mut theirs = stale.clone();
        labels::remove_finalizer(&mut theirs.metadata, labels::RUN_FINALIZER);
        store.replace(&theirs).await.unwrap();
        store
            .delete::<BackupRun>(Some(NS), "nightly-web-1")
            .await
            .unwrap();

        assert!(!release_one(&store, stale).await.unwrap());
    }
}
