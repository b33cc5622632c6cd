//! Reflector caches (kube-runtime) of the kinds the controller and the agent read on every
//! pass or tick. A watch keeps each cache current, so a pass lists from memory instead of
//! asking the apiserver for everything every few seconds, and every change wakes whoever waits
//! on `changed` (the agent starts a new run at once instead of at its next poll). A list the
//! caches do not cover (another namespace, a wider selector, a kind not watched) goes to the
//! API as before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kube::api::DynamicObject;
use kube::runtime::reflector::Store as Reader;
use tokio::sync::Notify;

/// What one watch covers, and its cache.
struct Entry {
    namespace: Option<String>,
    labels: Vec<(String, String)>,
    reader: Reader<DynamicObject>,
    /// False from a watch error until the watch delivers again.
    healthy: Arc<AtomicBool>,
}

#[derive(Default)]
pub struct WatchCache {
    /// By `apiVersion/Kind`.
    entries: Mutex<HashMap<String, Entry>>,
    changed: Arc<Notify>,
}

impl WatchCache {
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    pub(super) fn add(
        &self,
        kind: String,
        namespace: Option<String>,
        labels: Vec<(String, String)>,
        reader: Reader<DynamicObject>,
        healthy: Arc<AtomicBool>,
    ) {
        self.entries.lock().unwrap().insert(
            kind,
            Entry {
                namespace,
                labels,
                reader,
                healthy,
            },
        );
    }

    /// The cached objects of `kind` in `ns` (all namespaces when `None`) carrying `labels`, in
    /// namespace and name order as the apiserver lists them; `None` when no watch covers
    /// that list, or its watch is failing.
    pub fn list(
        &self,
        kind: &str,
        ns: Option<&str>,
        labels: &[(&str, &str)],
    ) -> Option<Vec<serde_json::Value>> {
        let entries = self.entries.lock().unwrap();
        let e = entries.get(kind)?;
        if !covers(e.namespace.as_deref(), &e.labels, ns, labels)
            || !e.healthy.load(Ordering::SeqCst)
        {
            return None;
        }
        let mut objs: Vec<Arc<DynamicObject>> = e
            .reader
            .state()
            .into_iter()
            .filter(|o| ns.is_none_or(|ns| o.metadata.namespace.as_deref() == Some(ns)))
            .filter(|o| {
                labels.iter().all(|(k, v)| {
                    o.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(*k))
                        .map(String::as_str)
                        == Some(*v)
                })
            })
            .collect();
        objs.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        Some(
            objs.iter()
                .map(|o| serde_json::to_value(o.as_ref()).unwrap_or(serde_json::Value::Null))
                .collect(),
        )
    }
}

/// Whether a watch of `watch_ns` with `watch_labels` sees every object a list of `ns` with
/// `labels` asks for: the same namespace or all of them, and no label the list does not ask
/// for too.
pub fn covers(
    watch_ns: Option<&str>,
    watch_labels: &[(String, String)],
    ns: Option<&str>,
    labels: &[(&str, &str)],
) -> bool {
    let ns_ok = match (watch_ns, ns) {
        (None, _) => true,
        (Some(w), Some(n)) => w == n,
        (Some(_), None) => false,
    };
    ns_ok
        && watch_labels
            .iter()
            .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
}

#[cfg(test)]
mod tests {
    use super::covers;

    fn l(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    #[test]
    fn a_watch_of_every_namespace_covers_any_namespace_and_a_namespaced_one_only_its_own() {
        assert!(covers(None, &[], Some("a"), &[]));
        assert!(covers(None, &[], None, &[]));
        assert!(covers(Some("a"), &[], Some("a"), &[]));
        assert!(!covers(Some("a"), &[], Some("b"), &[]));
        assert!(!covers(Some("a"), &[], None, &[]));
    }

    #[test]
    fn a_watch_with_a_selector_covers_only_lists_that_ask_for_at_least_that_label() {
        let w = [l("snapback.dev/node", "n1")];
        assert!(covers(None, &w, None, &[("snapback.dev/node", "n1")]));
        assert!(covers(
            None,
            &w,
            None,
            &[("snapback.dev/node", "n1"), ("x", "y")]
        ));
        assert!(!covers(None, &w, None, &[]));
        assert!(!covers(None, &w, None, &[("snapback.dev/node", "n2")]));
        assert!(covers(None, &[], None, &[("snapback.dev/node", "n2")]));
    }
}
