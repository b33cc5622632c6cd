//! Samba: a share snippet that shows the mounted points as Windows "Previous Versions"
//! through the `shadow_copy2` VFS module. Pure: the caller writes it to a file the host's
//! smb.conf includes (`include = /etc/samba/snapback-web.conf`).
//!
//! Measured here (Samba 4.17): `shadow:mountpoint` must be set, or `shadow_copy2` finds no
//! snapshot under an absolute `shadow:snapdir`; `shadow:localtime = no` because the names
//! are UTC.

use std::path::Path;

use super::name::GMT_FORMAT;

/// One share whose previous versions are the points under `snapdir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SambaShare<'a> {
    /// The share's name (`[name]`).
    pub name: &'a str,
    /// What the share serves now. Its relative paths are looked up in each point, so its tree
    /// has the points' shape (`vdb/...`): a copy of the guest's files, or the newest point.
    pub path: &'a Path,
    /// The browse dir holding the `@GMT-...` point directories.
    pub snapdir: &'a Path,
}

/// A value smb.conf reads back unchanged: no control characters (a newline would start a new
/// parameter), no `%` (Samba's variable substitution), no trailing `\` (line continuation).
fn conf_value(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if v.chars().any(|c| c.is_control() || c == '%') || v.ends_with('\\') {
        return Err(format!(
            "{what} {v:?}: smb.conf cannot carry control characters, '%' or a trailing '\\'"
        ));
    }
    Ok(())
}

fn abs_path(what: &str, p: &Path) -> Result<String, String> {
    if !p.is_absolute() {
        return Err(format!("{what} {} is not an absolute path", p.display()));
    }
    let s = p
        .to_str()
        .ok_or_else(|| format!("{what} {} is not UTF-8", p.display()))?;
    conf_value(what, s)?;
    // smb.conf trims a value's surrounding spaces.
    if s.trim() != s {
        return Err(format!("{what} {s:?} begins or ends with a space"));
    }
    Ok(s.to_string())
}

/// The share block, or why the input cannot be expressed in smb.conf.
pub fn share_snippet(share: &SambaShare) -> Result<String, String> {
    conf_value("share name", share.name)?;
    if share.name.contains(['[', ']']) || share.name.trim() != share.name {
        return Err(format!(
            "share name {:?}: no brackets or surrounding spaces",
            share.name
        ));
    }
    let path = abs_path("share path", share.path)?;
    let snapdir = abs_path("browse dir", share.snapdir)?;
    Ok(format!(
        "# Written by snapback: previous versions from the local restore points in {snapdir}.\n\
         [{name}]\n\
         \tpath = {path}\n\
         \tread only = yes\n\
         \tvfs objects = shadow_copy2\n\
         \tshadow:snapdir = {snapdir}\n\
         \tshadow:mountpoint = {path}\n\
         \tshadow:format = {GMT_FORMAT}\n\
         \tshadow:localtime = no\n\
         \tshadow:sort = desc\n",
        name = share.name,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share<'a>(name: &'a str, path: &'a str, snapdir: &'a str) -> SambaShare<'a> {
        SambaShare {
            name,
            path: Path::new(path),
            snapdir: Path::new(snapdir),
        }
    }

    #[test]
    fn the_share_uses_shadow_copy2_with_snapdir_mountpoint_utc_and_the_gmt_format() {
        let s = share_snippet(&share("web1", "/srv/web1/current", "/srv/web1/points")).unwrap();
        let lines: Vec<&str> = s.lines().map(str::trim).collect();
        for want in [
            "[web1]",
            "path = /srv/web1/current",
            "read only = yes",
            "vfs objects = shadow_copy2",
            "shadow:snapdir = /srv/web1/points",
            "shadow:mountpoint = /srv/web1/current",
            "shadow:format = @GMT-%Y.%m.%d-%H.%M.%S",
            "shadow:localtime = no",
        ] {
            assert!(lines.contains(&want), "{want} missing from:\n{s}");
        }
        // Every parameter belongs to the share: nothing before its header but comments.
        let header = lines.iter().position(|l| *l == "[web1]").unwrap();
        assert!(lines[..header].iter().all(|l| l.starts_with('#')));
    }

    #[test]
    fn input_smb_conf_would_read_differently_is_refused() {
        let bad = [
            share("", "/a", "/b"),
            share("we]b", "/a", "/b"),
            share(" web", "/a", "/b"),
            share("web", "relative", "/b"),
            share("web", "/a", "b"),
            share("web", "/a\n[global]", "/b"),
            share("web", "/a/%U", "/b"),
            share("web", "/a\\", "/b"),
            share("web", "/a ", "/b"),
        ];
        for b in bad {
            assert!(share_snippet(&b).is_err(), "{b:?}");
        }
        assert!(share_snippet(&share("web 1", "/a b/c", "/d e")).is_ok());
    }
}
