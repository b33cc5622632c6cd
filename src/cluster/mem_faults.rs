//! Test facilities of the in-memory API: faults injected into its calls (an apiserver that
//! is unavailable, forbids, refuses), and objects stored as raw JSON that no Rust type has to
//! accept (what a schema let through but serde refuses).

use std::sync::Mutex;

use serde_json::Value;

use super::mem::MemStore;
use super::store::{ApiError, ApiErrorKind, ApiResult, Object};

/// The store's calls, as faults name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    List,
    Get,
    Create,
    Replace,
    ReplaceStatus,
    ApplyStatus,
    Delete,
    Event,
}

#[derive(Debug)]
struct Fault {
    verb: Verb,
    /// `apiVersion/Kind`, as the store keys objects.
    kind: String,
    /// Only calls on this object; any object when `None`.
    name: Option<String>,
    error: ApiErrorKind,
    left: u32,
}

/// The faults armed on one store (shared by its clones), and how many have fired.
#[derive(Debug, Default)]
pub struct Faults {
    armed: Mutex<(Vec<Fault>, u64)>,
}

fn kind_of<K: Object>() -> String {
    format!("{}/{}", K::api_version(&()), K::kind(&()))
}

impl MemStore {
    /// The next `times` calls of `verb` on kind `K` fail with `error` and change nothing, as
    /// an apiserver that refuses a request does.
    pub fn fail_next<K: Object>(&self, verb: Verb, error: ApiErrorKind, times: u32) {
        self.arm(verb, kind_of::<K>(), None, error, times);
    }

    /// The same, only for calls on the object named `name` (a list names no object).
    pub fn fail_next_on<K: Object>(&self, verb: Verb, name: &str, error: ApiErrorKind, times: u32) {
        self.arm(verb, kind_of::<K>(), Some(name.to_string()), error, times);
    }

    fn arm(&self, verb: Verb, kind: String, name: Option<String>, error: ApiErrorKind, left: u32) {
        let mut a = self.faults.armed.lock().unwrap();
        a.0.push(Fault {
            verb,
            kind,
            name,
            error,
            left,
        });
    }

    /// Disarms every fault not yet used up.
    pub fn clear_faults(&self) {
        self.faults.armed.lock().unwrap().0.clear();
    }

    /// How many calls an injected fault has failed so far.
    pub fn faults_fired(&self) -> u64 {
        self.faults.armed.lock().unwrap().1
    }

    /// Called first by each of the store's calls: the error of the first armed fault that
    /// matches, which is used up by one.
    pub(super) fn injected(&self, verb: Verb, kind: &str, name: Option<&str>) -> ApiResult<()> {
        let mut a = self.faults.armed.lock().unwrap();
        let (faults, fired) = &mut *a;
        let hit = faults.iter_mut().find(|f| {
            f.left > 0
                && f.verb == verb
                && f.kind == kind
                && f.name.as_deref().is_none_or(|n| Some(n) == name)
        });
        let Some(f) = hit else {
            return Ok(());
        };
        f.left -= 1;
        *fired += 1;
        Err(ApiError::new(
            f.error,
            format!("injected fault: {verb:?} {kind} {}", name.unwrap_or("")),
        ))
    }

    /// Stores `value` as it is, as `apiVersion/Kind` (`snapback.dev/v1alpha1/BackupPolicy`)
    /// named `ns`/`name` ("" for cluster-scoped kinds): an object the apiserver accepted but
    /// that may not decode into its Rust type. The server-set fields are set as on a create.
    pub fn insert_raw(&self, api_version_kind: &str, ns: &str, name: &str, mut value: Value) {
        value["metadata"]["name"] = Value::String(name.to_string());
        if !ns.is_empty() {
            value["metadata"]["namespace"] = Value::String(ns.to_string());
        }
        self.raw_create(api_version_kind, value, false)
            .expect("insert_raw: the name is free");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupPolicy, BackupRun, BackupRunSpec};
    use crate::cluster::store::Store;

    fn run(name: &str) -> BackupRun {
        let mut r = BackupRun::new(name, BackupRunSpec::new("web", "t"));
        r.metadata.namespace = Some("ns".into());
        r
    }

    #[tokio::test]
    async fn a_fault_fails_only_its_verb_kind_and_object_and_is_used_up() {
        let s = MemStore::new();
        s.fail_next_on::<BackupRun>(Verb::Create, "b", ApiErrorKind::Forbidden, 1);
        s.fail_next::<BackupPolicy>(Verb::Create, ApiErrorKind::Unavailable, 1);

        s.create(&run("a")).await.unwrap();
        let e = s.create(&run("b")).await.unwrap_err();
        assert!(e.is(ApiErrorKind::Forbidden));
        assert!(
            s.get::<BackupRun>(Some("ns"), "b").await.unwrap().is_none(),
            "nothing written"
        );
        s.create(&run("b")).await.unwrap();

        assert_eq!(s.faults_fired(), 1);
        assert_eq!(s.list::<BackupRun>(Some("ns"), &[]).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_raw_object_that_does_not_decode_is_listed_apart() {
        let s = MemStore::new();
        s.create(&run("good")).await.unwrap();
        s.insert_raw(
            "snapback.dev/v1alpha1/BackupRun",
            "ns",
            "bad",
            serde_json::json!({"apiVersion": "snapback.dev/v1alpha1", "kind": "BackupRun",
                               "metadata": {}, "spec": {"domain": 7}}),
        );

        let l = s.listing::<BackupRun>(Some("ns"), &[]).await.unwrap();

        assert_eq!(l.items.len(), 1);
        assert_eq!(l.undecodable.len(), 1);
        assert_eq!(l.undecodable[0].name, "bad");
        assert!(s.get::<BackupRun>(Some("ns"), "bad").await.is_err());
    }
}
