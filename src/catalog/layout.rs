//! Where a domain's backups live on a target: one directory (or key prefix) per domain, and
//! a chain of its own for files-mode backups (pure).

use sha2::{Digest, Sha256};

use crate::duplicity::TargetConfig;

/// A short stable key for a target URL, used in directory and cache names.
pub fn target_key(url: &str) -> String {
    let h = Sha256::digest(url.as_bytes());
    hex::encode(&h[..8])
}

/// The directory (or key prefix) a domain's backups live under on a target: the domain name
/// where it is plain, else a readable form plus a hash so distinct names never collide.
pub fn domain_dir(name: &str) -> String {
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
    t.name = format!("{}-{dir}", target_key(base.url.as_str()));
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
        let b = domain_dir("a/b");
        assert_ne!(a, b);
        assert!(a.starts_with("a_b-") && !b.contains('/'));
        assert!(!domain_dir("..").starts_with('.'));
        assert!(domain_dir("$(x);`y`")
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
    }

    #[test]
    fn target_keys_are_stable_and_distinct() {
        assert_eq!(target_key("file:///a"), target_key("file:///a"));
        assert_ne!(target_key("file:///a"), target_key("file:///b"));
        assert_eq!(target_key("x").len(), 16);
    }
}
