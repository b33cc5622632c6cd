//! The kinds the stand-in serves: a fixed set of built-in ones, plus every CustomResourceDefinition
//! created through it. Also the discovery documents kubectl reads, and the server-side Table it
//! asks `kubectl get` for.

use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub struct Resource {
    /// "" for the core group.
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Status is a subresource: dropped on create, kept apart on update.
    pub status_subresource: bool,
    /// A custom resource: updates without a resourceVersion are refused, strategic merge is not
    /// supported, as on the real apiserver.
    pub custom: bool,
    /// additionalPrinterColumns: (name, type, jsonPath).
    pub columns: Vec<(String, String, String)>,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The MemStore's key for this kind.
    pub fn store_kind(&self) -> String {
        format!("{}/{}", self.api_version(), self.kind)
    }
}

fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Resource {
    Resource {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        kind: kind.into(),
        namespaced,
        status_subresource: false,
        custom: false,
        columns: Vec::new(),
    }
}

/// What a real cluster always has, as far as snapback, its chart and the tests touch it.
pub fn builtins() -> Vec<Resource> {
    let mut v = vec![
        builtin("", "v1", "namespaces", "Namespace", false),
        builtin("", "v1", "nodes", "Node", false),
        builtin("", "v1", "secrets", "Secret", true),
        builtin("", "v1", "serviceaccounts", "ServiceAccount", true),
        builtin("", "v1", "services", "Service", true),
        builtin("", "v1", "configmaps", "ConfigMap", true),
        builtin("apps", "v1", "deployments", "Deployment", true),
        builtin("apps", "v1", "daemonsets", "DaemonSet", true),
        builtin("batch", "v1", "jobs", "Job", true),
        builtin(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
        ),
        builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
        builtin("events.k8s.io", "v1", "events", "Event", true),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        ),
    ];
    for (plural, kind, ns) in [
        ("roles", "Role", true),
        ("rolebindings", "RoleBinding", true),
        ("clusterroles", "ClusterRole", false),
        ("clusterrolebindings", "ClusterRoleBinding", false),
    ] {
        v.push(builtin("rbac.authorization.k8s.io", "v1", plural, kind, ns));
    }
    for (plural, kind) in [
        ("validatingadmissionpolicies", "ValidatingAdmissionPolicy"),
        (
            "validatingadmissionpolicybindings",
            "ValidatingAdmissionPolicyBinding",
        ),
    ] {
        v.push(builtin(
            "admissionregistration.k8s.io",
            "v1",
            plural,
            kind,
            false,
        ));
    }
    v
}

/// The served versions of a CustomResourceDefinition, as resources.
pub fn from_crd(crd: &Value) -> Vec<Resource> {
    let spec = &crd["spec"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut out = Vec::new();
    for ver in spec["versions"].as_array().into_iter().flatten() {
        if ver["served"].as_bool() == Some(false) {
            continue;
        }
        let columns = ver["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| (s(&c["name"]), s(&c["type"]), s(&c["jsonPath"])))
            .collect();
        out.push(Resource {
            group: s(&spec["group"]),
            version: s(&ver["name"]),
            plural: s(&spec["names"]["plural"]),
            kind: s(&spec["names"]["kind"]),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            status_subresource: ver["subresources"].get("status").is_some(),
            custom: true,
            columns,
        });
    }
    out
}

/// `/api`, `/apis`, `/api/v1` and `/apis/GROUP/VERSION`, in the legacy (unaggregated) form.
pub fn discovery(all: &[Resource], segs: &[&str]) -> Option<Value> {
    match segs {
        ["api"] => Some(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        ),
        ["apis"] => {
            let mut groups: Vec<(String, String)> = all
                .iter()
                .filter(|r| !r.group.is_empty())
                .map(|r| (r.group.clone(), r.version.clone()))
                .collect();
            groups.sort();
            groups.dedup();
            let list: Vec<Value> = groups
                .iter()
                .map(|(g, v)| {
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    json!({"name": g, "versions": [gv], "preferredVersion": gv})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list}))
        }
        ["api", "v1"] => Some(resource_list(all, "", "v1")),
        ["apis", g, v] => Some(resource_list(all, g, v)),
        _ => None,
    }
}

fn resource_list(all: &[Resource], group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in all
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update"],
        }));
        if r.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": r.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// A meta.k8s.io/v1 Table of `items`: Name, the kind's printer columns, Age.
pub fn table(r: &Resource, items: &[Value], resource_version: u64, now: jiff::Timestamp) -> Value {
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}),
    ];
    for (name, ty, _) in &r.columns {
        defs.push(
            json!({"name": name, "type": ty, "format": "", "description": "", "priority": 0}),
        );
    }
    defs.push(
        json!({"name": "Age", "type": "date", "format": "", "description": "", "priority": 0}),
    );
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for (_, ty, path) in &r.columns {
                let v = json_path(o, path).cloned().unwrap_or(Value::Null);
                cells.push(if ty == "date" { age(&v, now) } else { v });
            }
            cells.push(age(&o["metadata"]["creationTimestamp"], now));
            json!({"cells": cells, "object": {
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": o["metadata"].clone(),
            }})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": defs, "rows": rows,
    })
}

/// The simple JSONPaths printer columns use: `.a.b.c`, with `[N]` indexes.
fn json_path<'a>(o: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = o;
    for part in path.trim_start_matches('.').split('.') {
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(i) = index {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

fn age(v: &Value, now: jiff::Timestamp) -> Value {
    let Some(t) = v.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()) else {
        return Value::String("<unknown>".into());
    };
    let secs = (now - t).get_seconds().max(0);
    Value::String(match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    })
}
