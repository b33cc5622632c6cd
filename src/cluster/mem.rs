//! An in-memory Kubernetes API for tests and benches. It is faithful where reconcile code
//! depends on it: resourceVersion bumps and conflicts, generation bumps on spec changes,
//! AlreadyExists, status kept apart from spec, deletion that waits for finalizers, and label
//! selectors. Objects are kept as JSON, as the apiserver keeps them, so a type that does not
//! round-trip fails here too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use serde_json::Value;

use super::mem_faults::{Faults, Verb};
use super::store::{
    decode_listing, ApiError, ApiErrorKind, ApiResult, EventType, Listing, Object, Store,
};

type Key = (String, String, String); // (apiVersion/kind, namespace, name)

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    version: u64,
    events: Vec<RecordedEvent>,
    now: Option<Timestamp>,
    writes: u64,
}

/// An Event as the store recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    pub kind: String,
    pub name: String,
    pub type_: EventType,
    pub reason: String,
    pub note: String,
}

#[derive(Clone, Default)]
pub struct MemStore {
    state: Arc<Mutex<State>>,
    pub(super) faults: Arc<Faults>,
}

fn kind_key<K: Object>() -> String {
    format!("{}/{}", K::api_version(&()), K::kind(&()))
}

fn to_value<K: Object>(obj: &K) -> ApiResult<Value> {
    serde_json::to_value(obj).map_err(|e| ApiError::new(ApiErrorKind::Invalid, e.to_string()))
}

fn from_value<K: Object>(v: &Value) -> ApiResult<K> {
    serde_json::from_value(v.clone())
        .map_err(|e| ApiError::new(ApiErrorKind::Invalid, e.to_string()))
}

fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get("metadata")?.get(field)?.as_str()
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the clock used for creation and deletion timestamps.
    pub fn set_now(&self, t: Timestamp) {
        self.state.lock().unwrap().now = Some(t);
    }

    fn now(st: &State) -> Timestamp {
        st.now.unwrap_or_else(Timestamp::now)
    }

    /// Every Event recorded so far.
    pub fn events(&self) -> Vec<RecordedEvent> {
        self.state.lock().unwrap().events.clone()
    }

    /// How many writes (create, replace, status, delete) the store has taken.
    pub fn writes(&self) -> u64 {
        self.state.lock().unwrap().writes
    }

    fn key_of<K: Object>(obj: &K) -> ApiResult<Key> {
        let name = obj
            .meta()
            .name
            .clone()
            .ok_or_else(|| ApiError::new(ApiErrorKind::Invalid, "metadata.name is required"))?;
        Ok((
            kind_key::<K>(),
            obj.meta().namespace.clone().unwrap_or_default(),
            name,
        ))
    }

    fn check_version(stored: &Value, obj_version: Option<&String>) -> ApiResult<()> {
        match obj_version {
            Some(v) if Some(v.as_str()) != meta_str(stored, "resourceVersion") => {
                Err(ApiError::new(
                    ApiErrorKind::Conflict,
                    "the object has been modified; please apply your changes to the latest version",
                ))
            }
            _ => Ok(()),
        }
    }

    fn bump(st: &mut State, v: &mut Value) {
        st.version += 1;
        st.writes += 1;
        v["metadata"]["resourceVersion"] = Value::String(st.version.to_string());
    }

    /// Drops an object marked for deletion once its last finalizer is gone.
    fn settle(st: &mut State, key: &Key) {
        let gone = st.objects.get(key).is_some_and(|v| {
            v["metadata"].get("deletionTimestamp").is_some()
                && v["metadata"]
                    .get("finalizers")
                    .and_then(|f| f.as_array())
                    .is_none_or(|f| f.is_empty())
        });
        if gone {
            st.objects.remove(key);
        }
    }

    /// Creates from JSON under `kind` (`apiVersion/Kind`); the server sets uid,
    /// creationTimestamp, generation and resourceVersion. With `drop_status` (a kind with a
    /// status subresource) the client's status is ignored, as the apiserver ignores it.
    pub fn raw_create(&self, kind: &str, mut v: Value, drop_status: bool) -> ApiResult<Value> {
        let name = meta_str(&v, "name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::new(ApiErrorKind::Invalid, "metadata.name is required"))?;
        let key = (
            kind.to_string(),
            meta_str(&v, "namespace").unwrap_or_default().to_string(),
            name.to_string(),
        );
        let mut st = self.state.lock().unwrap();
        if st.objects.contains_key(&key) {
            let short = kind.rsplit('/').next().unwrap_or(kind);
            return Err(ApiError::new(
                ApiErrorKind::AlreadyExists,
                format!("{short} \"{}\" already exists", key.2),
            ));
        }
        if drop_status {
            if let Some(m) = v.as_object_mut() {
                m.remove("status");
            }
        }
        let now = Self::now(&st).to_string();
        let m = &mut v["metadata"];
        m["creationTimestamp"] = Value::String(now);
        m["uid"] = Value::String(uuid::Uuid::new_v4().to_string());
        m["generation"] = Value::from(1);
        if let Some(o) = m.as_object_mut() {
            o.remove("deletionTimestamp");
            o.remove("resourceVersion");
        }
        Self::bump(&mut st, &mut v);
        st.objects.insert(key, v.clone());
        Ok(v)
    }

    fn write_status<K: Object>(&self, obj: &K, check: bool) -> ApiResult<K> {
        let key = Self::key_of(obj)?;
        let mut st = self.state.lock().unwrap();
        let mut stored =
            st.objects.get(&key).cloned().ok_or_else(|| {
                ApiError::new(ApiErrorKind::NotFound, format!("{} not found", key.2))
            })?;
        if check {
            Self::check_version(&stored, obj.meta().resource_version.as_ref())?;
        }
        let new = to_value(obj)?;
        match new.get("status") {
            Some(s) => stored["status"] = s.clone(),
            None => {
                if let Some(m) = stored.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        Self::bump(&mut st, &mut stored);
        st.objects.insert(key, stored.clone());
        from_value(&stored)
    }
}

impl Store for MemStore {
    async fn listing<K: Object>(
        &self,
        ns: Option<&str>,
        labels: &[(&str, &str)],
    ) -> ApiResult<Listing<K>> {
        self.injected(Verb::List, &kind_key::<K>(), None)?;
        let kk = kind_key::<K>();
        let st = self.state.lock().unwrap();
        let mut out = Vec::new();
        for ((k, n, _), v) in st.objects.iter() {
            if *k != kk || ns.is_some_and(|ns| ns != n) {
                continue;
            }
            let ok = labels.iter().all(|(lk, lv)| {
                v["metadata"]
                    .get("labels")
                    .and_then(|l| l.get(*lk))
                    .and_then(|x| x.as_str())
                    == Some(*lv)
            });
            if ok {
                out.push(v.clone());
            }
        }
        Ok(decode_listing(out))
    }

    async fn get<K: Object>(&self, ns: Option<&str>, name: &str) -> ApiResult<Option<K>> {
        self.injected(Verb::Get, &kind_key::<K>(), Some(name))?;
        let key = (
            kind_key::<K>(),
            ns.unwrap_or_default().to_string(),
            name.to_string(),
        );
        let st = self.state.lock().unwrap();
        st.objects.get(&key).map(from_value).transpose()
    }

    async fn create<K: Object>(&self, obj: &K) -> ApiResult<K> {
        self.injected(Verb::Create, &kind_key::<K>(), obj.meta().name.as_deref())?;
        from_value(&self.raw_create(&kind_key::<K>(), to_value(obj)?, false)?)
    }

    async fn replace<K: Object>(&self, obj: &K) -> ApiResult<K> {
        self.injected(Verb::Replace, &kind_key::<K>(), obj.meta().name.as_deref())?;
        let key = Self::key_of(obj)?;
        let mut st = self.state.lock().unwrap();
        let stored =
            st.objects.get(&key).cloned().ok_or_else(|| {
                ApiError::new(ApiErrorKind::NotFound, format!("{} not found", key.2))
            })?;
        Self::check_version(&stored, obj.meta().resource_version.as_ref())?;
        let mut new = to_value(obj)?;
        // Status, identity and server-set fields are not the client's to change here.
        match stored.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            match stored["metadata"].get(f) {
                Some(x) => new["metadata"][f] = x.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        if new.get("spec") != stored.get("spec") {
            let g = stored["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = Value::from(g + 1);
        }
        Self::bump(&mut st, &mut new);
        st.objects.insert(key.clone(), new.clone());
        Self::settle(&mut st, &key);
        from_value(&new)
    }

    async fn replace_status<K: Object>(&self, obj: &K) -> ApiResult<K> {
        self.injected(
            Verb::ReplaceStatus,
            &kind_key::<K>(),
            obj.meta().name.as_deref(),
        )?;
        self.write_status(obj, true)
    }

    async fn apply_status<K: Object>(&self, obj: &K, _manager: &str) -> ApiResult<K> {
        self.injected(
            Verb::ApplyStatus,
            &kind_key::<K>(),
            obj.meta().name.as_deref(),
        )?;
        self.write_status(obj, false)
    }

    async fn delete<K: Object>(&self, ns: Option<&str>, name: &str) -> ApiResult<()> {
        self.injected(Verb::Delete, &kind_key::<K>(), Some(name))?;
        let key = (
            kind_key::<K>(),
            ns.unwrap_or_default().to_string(),
            name.to_string(),
        );
        let mut st = self.state.lock().unwrap();
        let Some(mut v) = st.objects.get(&key).cloned() else {
            return Ok(());
        };
        let has_finalizers = v["metadata"]
            .get("finalizers")
            .and_then(|f| f.as_array())
            .is_some_and(|f| !f.is_empty());
        if !has_finalizers {
            st.writes += 1;
            st.objects.remove(&key);
            return Ok(());
        }
        if v["metadata"].get("deletionTimestamp").is_none() {
            v["metadata"]["deletionTimestamp"] = Value::String(Self::now(&st).to_string());
            Self::bump(&mut st, &mut v);
            st.objects.insert(key, v);
        }
        Ok(())
    }

    async fn event(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> ApiResult<()> {
        let r = regarding;
        let kind = format!(
            "{}/{}",
            r.api_version.clone().unwrap_or_default(),
            r.kind.clone().unwrap_or_default()
        );
        self.injected(Verb::Event, &kind, r.name.as_deref())?;
        let mut st = self.state.lock().unwrap();
        st.events.push(RecordedEvent {
            kind: regarding.kind.clone().unwrap_or_default(),
            name: regarding.name.clone().unwrap_or_default(),
            type_,
            reason: reason.to_string(),
            note: note.to_string(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupRun, BackupRunSpec};

    fn run(name: &str) -> BackupRun {
        let mut r = BackupRun::new(name, BackupRunSpec::new("web", "t"));
        r.metadata.namespace = Some("ns".into());
        r
    }

    #[tokio::test]
    async fn a_stale_write_is_a_conflict_and_a_fresh_one_is_not() {
        let s = MemStore::new();
        let created = s.create(&run("a")).await.unwrap();
        let mut first = created.clone();
        first.status = Some(Default::default());
        s.replace_status(&first).await.unwrap();
        let e = s.replace_status(&created).await.unwrap_err();
        assert!(e.is(ApiErrorKind::Conflict));
        let fresh: BackupRun = s.get(Some("ns"), "a").await.unwrap().unwrap();
        s.replace_status(&fresh).await.unwrap();
        assert!(s
            .create(&run("a"))
            .await
            .unwrap_err()
            .is(ApiErrorKind::AlreadyExists));
    }

    #[tokio::test]
    async fn deletion_waits_for_the_last_finalizer() {
        let s = MemStore::new();
        let mut r = run("a");
        r.metadata.finalizers = Some(vec!["snapback.dev/x".into()]);
        s.create(&r).await.unwrap();
        s.delete::<BackupRun>(Some("ns"), "a").await.unwrap();
        let mut marked: BackupRun = s.get(Some("ns"), "a").await.unwrap().unwrap();
        assert!(marked.metadata.deletion_timestamp.is_some());
        marked.metadata.finalizers = Some(vec![]);
        s.replace(&marked).await.unwrap();
        assert!(s.get::<BackupRun>(Some("ns"), "a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn spec_changes_bump_the_generation_and_status_is_kept_apart() {
        let s = MemStore::new();
        let mut r = s.create(&run("a")).await.unwrap();
        r.status = Some(Default::default());
        let r = s.replace_status(&r).await.unwrap();
        let mut changed = r.clone();
        changed.spec.domain = "db".into();
        changed.status = None;
        let after = s.replace(&changed).await.unwrap();
        assert_eq!(after.metadata.generation, Some(2));
        assert!(after.status.is_some(), "replace does not touch status");
    }
}
