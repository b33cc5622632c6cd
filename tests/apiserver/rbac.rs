//! RBAC as the apiserver evaluates it, from the Roles, ClusterRoles and bindings stored in the
//! stand-in (in the tests: those `helm template` renders from the chart). Rules are additive:
//! a request is allowed when any rule bound to the user matches it. Every (rule, verb,
//! resource) a request used is recorded, so a test can list what the chart grants and no
//! request ever needed.

use std::collections::BTreeSet;

use serde_json::Value;
use snapback::cluster::mem::MemStore;

const RBAC: &str = "rbac.authorization.k8s.io/v1";

/// What a request asks to do.
#[derive(Clone, Debug)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    /// `plural` or `plural/subresource`.
    pub resource: String,
    /// "" when cluster-scoped (or a list across all namespaces).
    pub namespace: String,
    pub name: String,
}

/// One grant a role makes: the role, the rule's index, one verb and one resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    pub role: String,
    pub rule: usize,
    pub verb: String,
    pub group: String,
    pub resource: String,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rule {}: {} {}/{}",
            self.role, self.rule, self.verb, self.group, self.resource
        )
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

fn names_subject(binding: &Value, user: &str) -> bool {
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| match s["kind"].as_str() {
            Some("ServiceAccount") => {
                let ns = s["namespace"]
                    .as_str()
                    .or(binding["metadata"]["namespace"].as_str())
                    .unwrap_or_default();
                user == format!(
                    "system:serviceaccount:{ns}:{}",
                    s["name"].as_str().unwrap_or_default()
                )
            }
            Some("User") => s["name"].as_str() == Some(user),
            _ => false,
        })
}

/// A role bound to the user, with the namespace the binding limits it to ("" = cluster-wide).
struct Bound {
    label: String,
    rules: Vec<Value>,
    namespace: String,
}

fn bound_roles(store: &MemStore, user: &str) -> Vec<Bound> {
    let mut out = Vec::new();
    let role_of = |kind: &str, ns: &str, name: &str| {
        let key = format!("{RBAC}/{kind}");
        let role_ns = if kind == "Role" { ns } else { "" };
        store.raw_get(&key, role_ns, name).map(|r| {
            let label = if kind == "Role" {
                format!("Role {ns}/{name}")
            } else {
                format!("ClusterRole {name}")
            };
            (label, r["rules"].as_array().cloned().unwrap_or_default())
        })
    };
    for b in store
        .raw_list(&format!("{RBAC}/ClusterRoleBinding"), None)
        .0
    {
        if names_subject(&b, user) {
            let name = b["roleRef"]["name"].as_str().unwrap_or_default();
            if let Some((label, rules)) = role_of("ClusterRole", "", name) {
                out.push(Bound {
                    label,
                    rules,
                    namespace: String::new(),
                });
            }
        }
    }
    for b in store.raw_list(&format!("{RBAC}/RoleBinding"), None).0 {
        if names_subject(&b, user) {
            let ns = b["metadata"]["namespace"].as_str().unwrap_or_default();
            let kind = b["roleRef"]["kind"].as_str().unwrap_or_default();
            let name = b["roleRef"]["name"].as_str().unwrap_or_default();
            if let Some((label, rules)) = role_of(kind, ns, name) {
                out.push(Bound {
                    label,
                    rules,
                    namespace: ns.to_string(),
                });
            }
        }
    }
    out
}

fn matches(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// The grant that allows `a` for `user`, if any.
pub fn authorize(store: &MemStore, user: &str, a: &Attributes) -> Option<Grant> {
    for b in bound_roles(store, user) {
        if !b.namespace.is_empty() && b.namespace != a.namespace {
            continue;
        }
        for (i, rule) in b.rules.iter().enumerate() {
            let names = strs(&rule["resourceNames"]);
            let ok = matches(&strs(&rule["apiGroups"]), &a.group)
                && matches(&strs(&rule["resources"]), &a.resource)
                && matches(&strs(&rule["verbs"]), &a.verb)
                && (names.is_empty() || (!a.name.is_empty() && names.contains(&a.name)));
            if ok {
                return Some(Grant {
                    role: b.label.clone(),
                    rule: i,
                    verb: a.verb.clone(),
                    group: a.group.clone(),
                    resource: a.resource.clone(),
                });
            }
        }
    }
    None
}

/// Every single grant the roles bound to `user` make.
pub fn grants(store: &MemStore, user: &str) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for b in bound_roles(store, user) {
        for (i, rule) in b.rules.iter().enumerate() {
            for g in strs(&rule["apiGroups"]) {
                for r in strs(&rule["resources"]) {
                    for v in strs(&rule["verbs"]) {
                        out.insert(Grant {
                            role: b.label.clone(),
                            rule: i,
                            verb: v,
                            group: g.clone(),
                            resource: r.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}
