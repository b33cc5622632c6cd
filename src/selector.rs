//! Which domains a policy's `domainSelector` picks: by name, by shell-style glob (`*` any
//! run, `?` one character) or by snapback metadata labels in the domain XML (pure).

use std::collections::BTreeMap;

use crate::api::DomainSelector;

/// Whether the selector picks the domain `name` whose snapback metadata is `metadata`.
pub fn selects(sel: &DomainSelector, name: &str, metadata: &BTreeMap<String, String>) -> bool {
    sel.names.iter().any(|n| n == name)
        || sel.globs.iter().any(|g| glob_matches(g, name))
        || (!sel.metadata.is_empty()
            && sel.metadata.iter().all(|(k, v)| metadata.get(k) == Some(v)))
}

/// The domains of this host the selector picks: its names as written (a name not defined
/// here still gets a run, which then fails DomainNotFound where users see it), then every
/// defined domain its globs or metadata labels pick.
pub async fn on_host(
    host: &crate::libvirt::LibvirtHost,
    sel: &DomainSelector,
) -> Result<Vec<String>, crate::libvirt::LibvirtError> {
    let mut out = sel.names.clone();
    for d in host.domain_names().await? {
        if out.contains(&d) {
            continue;
        }
        // The XML is read only when a metadata rule could pick the domain.
        let metadata = if sel.metadata.is_empty() {
            BTreeMap::new()
        } else {
            match host.domain(&d).await {
                Ok(v) => crate::libvirt::domain_xml::snapback_metadata(&v.xml),
                Err(_) => continue,
            }
        };
        if selects(sel, &d, &metadata) {
            out.push(d);
        }
    }
    Ok(out)
}

/// A shell-style glob match of a whole name.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with backtracking to the last '*'.
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_matches as matches;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(matches("web-*", "web-1"));
        assert!(matches("*", ""));
        assert!(matches("db-?", "db-a"));
        assert!(!matches("db-?", "db-ab"));
        assert!(matches("*-prod-*", "a-prod-b"));
        assert!(!matches("web-*", "db-1"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
    }
}
