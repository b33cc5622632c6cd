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
    /// The newest changes, oldest first, for watches: (resourceVersion, type, key, object).
    changes: std::collections::VecDeque<Change>,
}

/// How many changes a watch can start from; an older resourceVersion is `Gone` (410), as
/// etcd's compaction makes it on a real cluster.
const CHANGES_KEPT: usize = 4096;

/// One change, as a watch reports it.
#[derive(Clone, Debug)]
pub struct Change {
    pub version: u64,
    /// ADDED, MODIFIED or DELETED.
    pub type_: &'static str,
    pub kind: String,
    pub namespace: String,
    pub object: Value,
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

    fn log(st: &mut State, type_: &'static str, key: &Key, object: &Value) {
        if st.changes.len() == CHANGES_KEPT {
            st.changes.pop_front();
        }
        st.changes.push_back(Change {
            version: st.version,
            type_,
            kind: key.0.clone(),
            namespace: key.1.clone(),
            object: object.clone(),
        });
    }

    /// A deletion: the object goes, with a new resourceVersion for its DELETED change.
    fn remove(st: &mut State, key: &Key) {
        if let Some(mut v) = st.objects.remove(key) {
            st.version += 1;
            v["metadata"]["resourceVersion"] = Value::String(st.version.to_string());
            Self::log(st, "DELETED", key, &v);
        }
    }

    /// The changes of `kind` (in `ns`, or everywhere) after resourceVersion `since`, and the
    /// newest resourceVersion. An error (HTTP 410 Gone) when `since` is older than the changes
    /// kept.
    pub fn raw_changes_since(
        &self,
        kind: &str,
        ns: Option<&str>,
        since: u64,
    ) -> Result<(Vec<Change>, u64), String> {
        let st = self.state.lock().unwrap();
        let oldest = st.changes.front().map_or(st.version, |c| c.version - 1);
        if since < oldest {
            return Err(format!("too old resource version: {since} ({oldest})"));
        }
        let out = st
            .changes
            .iter()
            .filter(|c| c.version > since && c.kind == kind && ns.is_none_or(|n| n == c.namespace))
            .cloned()
            .collect();
        Ok((out, st.version))
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
            Self::remove(st, key);
        }
    }

    /// A write of the status subresource: only `status` changes.
    fn write_status<K: Object>(&self, obj: &K, check: bool) -> ApiResult<K> {
        let key = Self::key_of(obj)?;
        let mut v = to_value(obj)?;
        if !check {
            if let Some(m) = v["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
        }
        from_value(&self.raw_replace(&key.0, v, Part::Status, false)?)
    }

    /// The object stored under `kind` (`apiVersion/Kind`), `ns` ("" when cluster-scoped) and
    /// `name`, as the apiserver would serve it.
    pub fn raw_get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let st = self.state.lock().unwrap();
        st.objects
            .get(&(kind.to_string(), ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Every object of `kind` (in `ns`, or everywhere), in name order, and the store's current
    /// resourceVersion (the list's).
    pub fn raw_list(&self, kind: &str, ns: Option<&str>) -> (Vec<Value>, u64) {
        let st = self.state.lock().unwrap();
        let items = st
            .objects
            .iter()
            .filter(|((k, n, _), _)| k == kind && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect();
        (items, st.version)
    }

    /// Creates; the server sets uid, creationTimestamp, generation and resourceVersion. With
    /// `drop_status` (a kind with a status subresource) the client's status is ignored, as the
    /// apiserver ignores it.
    pub fn raw_create(&self, kind: &str, mut v: Value, drop_status: bool) -> ApiResult<Value> {
        let key = raw_key(kind, &v)?;
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
        Self::log(&mut st, "ADDED", &key, &v);
        st.objects.insert(key, v.clone());
        Ok(v)
    }

    /// Replaces the object (`Part::Main`: metadata and spec, and everything else when the
    /// kind has no status subresource) or its status (`Part::Status`). A
    /// `metadata.resourceVersion` in `v` must match the stored one (`Conflict`); with
    /// `require_version` it must be present (custom resources refuse unconditional updates).
    pub fn raw_replace(
        &self,
        kind: &str,
        v: Value,
        part: Part,
        require_version: bool,
    ) -> ApiResult<Value> {
        let key = raw_key(kind, &v)?;
        let mut st = self.state.lock().unwrap();
        let stored =
            st.objects.get(&key).cloned().ok_or_else(|| {
                ApiError::new(ApiErrorKind::NotFound, format!("{} not found", key.2))
            })?;
        let version = meta_str(&v, "resourceVersion").map(str::to_string);
        if require_version && version.is_none() {
            return Err(ApiError::new(
                ApiErrorKind::Invalid,
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            ));
        }
        Self::check_version(&stored, version.as_ref())?;
        let mut new = match part {
            Part::Status => {
                let mut new = stored.clone();
                set_or_remove(&mut new, "status", v.get("status"));
                new
            }
            Part::Main { status_apart } => {
                let mut new = v;
                if status_apart {
                    set_or_remove(&mut new, "status", stored.get("status"));
                }
                // Identity and server-set fields are not the client's to change.
                for f in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "generation",
                ] {
                    set_or_remove(&mut new["metadata"], f, stored["metadata"].get(f));
                }
                if new.get("spec") != stored.get("spec") {
                    let g = stored["metadata"]["generation"].as_i64().unwrap_or(1);
                    new["metadata"]["generation"] = Value::from(g + 1);
                }
                new
            }
        };
        Self::bump(&mut st, &mut new);
        Self::log(&mut st, "MODIFIED", &key, &new);
        st.objects.insert(key.clone(), new.clone());
        Self::settle(&mut st, &key);
        Ok(new)
    }

    /// Deletes, or with finalizers present marks for deletion (once). Returns the object as
    /// it was left (`None` when it is gone); `NotFound` when there was none.
    pub fn raw_delete(&self, kind: &str, ns: &str, name: &str) -> ApiResult<Option<Value>> {
        let key = (kind.to_string(), ns.to_string(), name.to_string());
        let mut st = self.state.lock().unwrap();
        let Some(mut v) = st.objects.get(&key).cloned() else {
            return Err(ApiError::new(
                ApiErrorKind::NotFound,
                format!("{name} not found"),
            ));
        };
        let has_finalizers = v["metadata"]
            .get("finalizers")
            .and_then(|f| f.as_array())
            .is_some_and(|f| !f.is_empty());
        if !has_finalizers {
            st.writes += 1;
            Self::remove(&mut st, &key);
            return Ok(None);
        }
        if v["metadata"].get("deletionTimestamp").is_none() {
            v["metadata"]["deletionTimestamp"] = Value::String(Self::now(&st).to_string());
            Self::bump(&mut st, &mut v);
            Self::log(&mut st, "MODIFIED", &key, &v);
            st.objects.insert(key, v.clone());
        }
        Ok(Some(v))
    }
}

/// Which part of an object a replace writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The object; with `status_apart` (a status subresource) the stored status is kept.
    Main { status_apart: bool },
    /// The status subresource only.
    Status,
}

fn raw_key(kind: &str, v: &Value) -> ApiResult<Key> {
    let name = meta_str(v, "name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::new(ApiErrorKind::Invalid, "metadata.name is required"))?;
    Ok((
        kind.to_string(),
        meta_str(v, "namespace").unwrap_or_default().to_string(),
        name.to_string(),
    ))
}

fn set_or_remove(target: &mut Value, field: &str, value: Option<&Value>) {
    match value {
        Some(x) => target[field] = x.clone(),
        None => {
            if let Some(m) = target.as_object_mut() {
                m.remove(field);
            }
        }
    }
}

impl Store for MemStore {
    async fn listing<K: Object>(
        &self,
        ns: Option<&str>,
        labels: &[(&str, &str)],
    ) -> ApiResult<Listing<K>> {
        self.injected(Verb::List, &kind_key::<K>(), None)?;
        let (items, _) = self.raw_list(&kind_key::<K>(), ns);
        Ok(decode_listing(items.into_iter().filter(|v| {
            labels.iter().all(|(lk, lv)| {
                v["metadata"]
                    .get("labels")
                    .and_then(|l| l.get(*lk))
                    .and_then(|x| x.as_str())
                    == Some(*lv)
            })
        })))
    }

    async fn get<K: Object>(&self, ns: Option<&str>, name: &str) -> ApiResult<Option<K>> {
        self.injected(Verb::Get, &kind_key::<K>(), Some(name))?;
        self.raw_get(&kind_key::<K>(), ns.unwrap_or_default(), name)
            .as_ref()
            .map(from_value)
            .transpose()
    }

    async fn create<K: Object>(&self, obj: &K) -> ApiResult<K> {
        self.injected(Verb::Create, &kind_key::<K>(), obj.meta().name.as_deref())?;
        from_value(&self.raw_create(&kind_key::<K>(), to_value(obj)?, false)?)
    }

    async fn replace<K: Object>(&self, obj: &K) -> ApiResult<K> {
        self.injected(Verb::Replace, &kind_key::<K>(), obj.meta().name.as_deref())?;
        let v = self.raw_replace(
            &kind_key::<K>(),
            to_value(obj)?,
            Part::Main { status_apart: true },
            false,
        )?;
        from_value(&v)
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
        match self.raw_delete(&kind_key::<K>(), ns.unwrap_or_default(), name) {
            Ok(_) => Ok(()),
            Err(e) if e.is(ApiErrorKind::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
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
