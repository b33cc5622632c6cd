//! The patch types snapback and its libraries send: JSON merge patch (RFC 7386), strategic merge
//! patch on built-in kinds (for a Lease or an Event, which have no merge-keyed lists, it is a
//! merge patch), and server-side apply with field managers.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// RFC 7386: objects merge, `null` removes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The leaf fields a configuration sets, as paths. Lists are atomic (one leaf), as for the
/// `atomic` lists and the maps-of-scalars snapback applies.
pub fn leaves(v: &Value) -> BTreeMap<Vec<String>, Value> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut BTreeMap<Vec<String>, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    path.push(k.clone());
                    walk(x, path, out);
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone(), v.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn remove_path(v: &mut Value, path: &[String]) {
    match path {
        [] => {}
        [last] => {
            if let Some(m) = v.as_object_mut() {
                m.remove(last);
            }
        }
        [first, rest @ ..] => {
            if let Some(x) = v.get_mut(first) {
                remove_path(x, rest);
                if x.as_object().is_some_and(|m| m.is_empty()) {
                    v.as_object_mut().expect("had a child").remove(first);
                }
            }
        }
    }
}

/// Fields that identify an object or that the server sets: never owned by an apply.
fn ignored(path: &[String]) -> bool {
    matches!(
        path.first().map(String::as_str),
        Some("apiVersion" | "kind")
    ) || matches!(
        path.get(..2),
        Some([m, f]) if m == "metadata" && matches!(f.as_str(), "name" | "namespace" | "resourceVersion" | "uid" | "creationTimestamp" | "generation" | "managedFields")
    )
}

/// Server-side apply of `config` by `manager` onto `live`. `applied` holds each manager's last
/// applied configuration of this object. Fields this manager applied before and leaves out now
/// are removed; a field another manager applied with a different value is a conflict unless
/// `force`, which takes it over. Returns the conflicting fields when refused.
pub fn apply(
    live: &mut Value,
    config: &Value,
    manager: &str,
    force: bool,
    applied: &mut BTreeMap<String, Value>,
) -> Result<(), Vec<String>> {
    let mine = leaves(config);
    let mut conflicts = Vec::new();
    for (other, cfg) in applied.iter_mut() {
        if other == manager {
            continue;
        }
        for (path, value) in leaves(cfg) {
            if ignored(&path) {
                continue;
            }
            if mine.get(&path).is_some_and(|v| *v != value) {
                if force {
                    remove_path(cfg, &path);
                } else {
                    conflicts.push(format!("{} (owned by {other})", path.join(".")));
                }
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    if let Some(before) = applied.get(manager) {
        for path in leaves(before).keys() {
            if !ignored(path) && !mine.contains_key(path) {
                remove_path(live, path);
            }
        }
    }
    for (path, value) in &mine {
        if path.is_empty() || ignored(path) {
            continue;
        }
        let mut cur = &mut *live;
        for k in &path[..path.len() - 1] {
            if !cur.get(k).is_some_and(Value::is_object) {
                cur[k] = Value::Object(Map::new());
            }
            cur = cur.get_mut(k).expect("set above");
        }
        cur[path.last().expect("a leaf has a path")] = value.clone();
    }
    applied.insert(manager.to_string(), config.clone());
    Ok(())
}

fn value_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

/// After a write that is not an apply (an update, a merge patch), a field the write changed
/// or removed is no longer owned by the managers that had applied it, as the apiserver hands
/// ownership to the updater: a later apply of another value by someone else is then no
/// conflict.
pub fn disown_changed(applied: &mut BTreeMap<String, Value>, live: &Value) {
    for cfg in applied.values_mut() {
        for (path, value) in leaves(cfg) {
            if path.is_empty() || ignored(&path) {
                continue;
            }
            if value_at(live, &path) != Some(&value) {
                remove_path(cfg, &path);
            }
        }
    }
}
