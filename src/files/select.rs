//! Include/exclude paths of the guest mapped onto the backup tree (pure). The tree holds one
//! top directory per guest filesystem (`vdb`, `vdc1` ...), so a guest path `/etc` is
//! `<tree>/<fs>/etc` for every filesystem.

use crate::duplicity::argv::Select;

/// A guest path from the user: absolute, no `..`, no control characters.
pub fn check_guest_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!(
            "'{p}' is not an absolute guest path (start it with /)"
        ));
    }
    if p.split('/').any(|c| c == "..") || p.chars().any(char::is_control) {
        return Err(format!("'{p}' may not contain '..' or control characters"));
    }
    let trimmed = p.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    })
}

/// duplicity's selection for `tree` with filesystems `fs`. Excludes come first (first match
/// wins); with includes, everything not included is excluded at the end.
pub fn selection(
    tree: &str,
    fs: &[String],
    include: &[String],
    exclude: &[String],
) -> Result<Vec<Select>, String> {
    let mut out = Vec::new();
    let under = |f: &str, p: &str| {
        if p == "/" {
            format!("{tree}/{f}")
        } else {
            format!("{tree}/{f}{p}")
        }
    };
    for e in exclude {
        let p = check_guest_path(e)?;
        for f in fs {
            out.push(Select::Exclude(under(f, &p)));
        }
    }
    for i in include {
        let p = check_guest_path(i)?;
        for f in fs {
            out.push(Select::Include(under(f, &p)));
        }
    }
    if !include.is_empty() {
        out.push(Select::Exclude(format!("{tree}/**")));
    }
    Ok(out)
}

/// Where a guest path lives in a backup, from duplicity's listing of it (paths relative to the
/// tree, e.g. `vdb1/etc/hosts`). `wanted` may name the filesystem as `vdb1:/etc/hosts`, and
/// must name `@snapback` (the point's own files) to get them.
/// Returns the tree-relative paths that match, one per filesystem holding it.
pub fn locate(listing: &[String], wanted: &str) -> Result<Vec<String>, String> {
    let (fs, path) = match wanted.split_once(":/") {
        Some((f, p)) if !f.contains('/') => (Some(f), format!("/{p}")),
        _ => (None, wanted.to_string()),
    };
    let path = check_guest_path(&path)?;
    let mut hits: Vec<String> = listing
        .iter()
        .filter_map(|l| {
            let (f, rest) = l.split_once('/').unwrap_or((l.as_str(), ""));
            let guest = format!("/{rest}");
            let matches = guest.trim_end_matches('/') == path || (path == "/" && rest.is_empty());
            // The point's own files (`@snapback`) are not a guest filesystem: only when named.
            let wanted_fs = match fs {
                Some(want) => want == f,
                None => !f.starts_with('@'),
            };
            (matches && wanted_fs).then(|| l.clone())
        })
        .collect();
    hits.sort();
    hits.dedup();
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs() -> Vec<String> {
        vec!["vdb".into(), "vdc1".into()]
    }

    #[test]
    fn includes_and_excludes_apply_to_every_filesystem_and_excludes_win() {
        let s = selection("/t", &fs(), &["/etc".into()], &["/etc/secret".into()]).unwrap();
        assert_eq!(
            s,
            vec![
                Select::Exclude("/t/vdb/etc/secret".into()),
                Select::Exclude("/t/vdc1/etc/secret".into()),
                Select::Include("/t/vdb/etc".into()),
                Select::Include("/t/vdc1/etc".into()),
                Select::Exclude("/t/**".into()),
            ]
        );
        assert!(selection("/t", &fs(), &[], &[]).unwrap().is_empty());
    }

    #[test]
    fn guest_paths_must_be_absolute_and_stay_inside() {
        assert!(selection("/t", &fs(), &["etc".into()], &[]).is_err());
        assert!(selection("/t", &fs(), &["/etc/../../root".into()], &[]).is_err());
        assert_eq!(check_guest_path("/etc/").unwrap(), "/etc");
        assert_eq!(check_guest_path("/").unwrap(), "/");
    }

    #[test]
    fn locate_finds_a_path_on_each_filesystem_or_on_the_one_named() {
        let listing: Vec<String> = [
            "vdb",
            "vdb/etc",
            "vdb/etc/hosts",
            "vdc1",
            "vdc1/etc",
            "vdc1/etc/hosts",
            "vdc1/data",
            "@snapback",
            "@snapback/r.manifest.json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            locate(&listing, "/etc/hosts").unwrap(),
            vec!["vdb/etc/hosts", "vdc1/etc/hosts"]
        );
        assert_eq!(
            locate(&listing, "vdc1:/etc/hosts").unwrap(),
            vec!["vdc1/etc/hosts"]
        );
        assert_eq!(locate(&listing, "/data/").unwrap(), vec!["vdc1/data"]);
        assert!(locate(&listing, "/nope").unwrap().is_empty());
        assert_eq!(
            locate(&listing, "/").unwrap(),
            vec!["vdb", "vdc1"],
            "the point's own files are not a guest filesystem"
        );
        assert_eq!(locate(&listing, "@snapback:/").unwrap(), vec!["@snapback"]);
        assert!(locate(&listing, "relative").is_err());
    }
}
