//! Where a domain's backups live on a target: one directory (or key prefix) per domain, and
//! a chain of its own for files-mode backups (pure).

use sha2::{Digest, Sha256};

use crate::duplicity::TargetConfig;

/// A short stable key for a target URL, used in directory and cache names.
pub fn target_key(url: &str) -> String {
    let h = Sha256::digest(url.as_bytes());
    hex::encode(&h[..8])
}

/// A KubeVirt VM's key, `NAMESPACE/NAME` (two DNS labels). libvirt refuses `/` in a domain
/// name, so such a key never names a libvirt domain.
pub fn kubevirt_vm(key: &str) -> Option<(&str, &str)> {
    let (ns, name) = key.split_once('/')?;
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !s.starts_with(['-', '.'])
    };
    (label(ns) && label(name)).then_some((ns, name))
}

/// The directory (or key prefix) a domain's backups live under on a target: the domain name
/// where it is plain, else a readable form plus a hash so distinct names never collide. A
/// KubeVirt VM's chain lives under `kubevirt/<namespace>/<name>`.
pub fn domain_dir(name: &str) -> String {
    if let Some((ns, vm)) = kubevirt_vm(name) {
        return format!("kubevirt/{ns}/{vm}");
    }
    let plain: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let plain = plain.trim_start_matches('.').to_string();
    if plain == name && !plain.is_empty() {
        return plain;
    }
    let mut short: String = plain.chars().take(40).collect();
    if short.is_empty() {
        short = "domain".into();
    }
    format!("{short}-{}", &target_key(name)[..8])
}

/// The duplicity target of one domain: `<target>/<domain dir>`, with one archive-dir cache
/// per target and domain.
pub fn domain_target(base: &TargetConfig, domain: &str) -> TargetConfig {
    let mut t = base.clone();
    let dir = domain_dir(domain);
    // The name is one directory of duplicity's archive cache: a VM's path is joined with
    // '+', which no domain's directory holds, so the two never share a cache.
    t.name = format!(
        "{}-{}",
        target_key(base.url.as_str()),
        dir.replace('/', "+")
    );
    t.url = base.url.child(&dir);
    t
}

/// Files-mode backups of a domain: a chain of their own beside the image chain.
pub fn files_target(base: &TargetConfig, domain: &str) -> TargetConfig {
    let mut t = base.clone();
    let dir = format!("{}.files", domain_dir(domain));
    t.name = format!("{}-{dir}", target_key(base.url.as_str()));
    t.url = base.url.child(&dir);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_dirs_are_path_safe_and_distinct() {
        assert_eq!(domain_dir("web-1.prod"), "web-1.prod");
        let a = domain_dir("a b");
        let b = domain_dir("A/b");
        assert_ne!(a, b);
        assert!(a.starts_with("a_b-") && !b.contains('/'));
        assert!(
            !domain_dir("../x").contains('/'),
            "only a VM key makes a path"
        );
        assert!(!domain_dir("..").starts_with('.'));
        assert!(domain_dir("$(x);`y`")
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
    }

    #[test]
    fn a_kubevirt_vm_key_lives_under_kubevirt_namespace_name() {
        assert_eq!(domain_dir("apps/web"), "kubevirt/apps/web");
        assert_eq!(kubevirt_vm("apps/web"), Some(("apps", "web")));
        for not_a_key in ["apps/", "/web", "a/b/c", "Apps/web", "apps/-web", "../web"] {
            assert_eq!(kubevirt_vm(not_a_key), None, "{not_a_key}");
        }
        let t = TargetConfig::local_for_tests(std::path::Path::new("/srv/b"));
        let d = domain_target(&t, "apps/web");
        assert_eq!(d.url.as_str(), "file:///srv/b/target/kubevirt/apps/web");
        assert!(!d.name.contains('/'));
    }

    #[test]
    fn target_keys_are_stable_and_distinct() {
        assert_eq!(target_key("file:///a"), target_key("file:///a"));
        assert_ne!(target_key("file:///a"), target_key("file:///b"));
        assert_eq!(target_key("x").len(), 16);
    }
}
