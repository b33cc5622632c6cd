//! Label and finalizer names, and the selectors built from them.

/// On BackupRuns: the policy that created the run.
pub const POLICY: &str = "snapback.dev/policy";
/// On BackupRuns and RestoreRequests: the node whose agent runs it.
pub const NODE: &str = "snapback.dev/node";
/// On a run of a KubeVirt VM (value `true`): the kubevirt-worker drives it, not a node agent.
pub const KUBEVIRT: &str = "snapback.dev/kubevirt";
/// On BackupPolicies: the controller stops scheduling and settles the policy's runs first.
pub const POLICY_FINALIZER: &str = "snapback.dev/policy-runs";
/// On BackupRuns an agent has started: a deleted run is cancelled and cleaned up (guest
/// thawed, job aborted, checkpoint dropped) before it goes.
pub const RUN_FINALIZER: &str = "snapback.dev/agent-cleanup";

/// A label value must be at most 63 characters of `[A-Za-z0-9._-]`, starting and ending
/// alphanumeric. Node and policy names almost always are; anything else is hashed.
pub fn label_value(s: &str) -> String {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        return s.to_string();
    }
    use sha2::Digest;
    format!(
        "h-{}",
        hex::encode(&sha2::Sha256::digest(s.as_bytes())[..12])
    )
}

pub fn has_finalizer(meta: &kube::api::ObjectMeta, f: &str) -> bool {
    meta.finalizers
        .as_ref()
        .is_some_and(|v| v.iter().any(|x| x == f))
}

pub fn add_finalizer(meta: &mut kube::api::ObjectMeta, f: &str) {
    let v = meta.finalizers.get_or_insert_with(Vec::new);
    if !v.iter().any(|x| x == f) {
        v.push(f.to_string());
    }
}

pub fn remove_finalizer(meta: &mut kube::api::ObjectMeta, f: &str) {
    if let Some(v) = meta.finalizers.as_mut() {
        v.retain(|x| x != f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_pass_through_or_are_hashed() {
        assert_eq!(label_value("node-1"), "node-1");
        let h = label_value(&"x".repeat(70));
        assert!(h.len() <= 63 && h.starts_with("h-"));
        assert_ne!(label_value("a/b"), "a/b");
    }
}
