//! Whether this host can serve the points: Samba's smbd and nfs-ganesha with its VFS FSAL.
//! The snippets are written either way; a missing server is reported with a reason word so
//! a status condition (or the CLI) can say why nothing serves them.

use std::path::Path;

/// The reason word of a host without smbd.
pub const SAMBA_MISSING: &str = "SambaMissing";
/// The reason word of a host without nfs-ganesha or its VFS FSAL.
pub const NFS_SERVER_MISSING: &str = "NfsServerMissing";

/// Where ganesha's VFS FSAL is installed on Debian-like and Red Hat-like hosts.
const VFS_FSAL: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so",
    "/usr/lib/aarch64-linux-gnu/ganesha/libfsalvfs.so",
    "/usr/lib64/ganesha/libfsalvfs.so",
    "/usr/lib/ganesha/libfsalvfs.so",
];

fn on_path(cmd: &str) -> bool {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&dirs)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(cmd).is_file())
}

fn host_has(what: &str) -> bool {
    if what.starts_with('/') {
        Path::new(what).exists()
    } else {
        on_path(what)
    }
}

/// None when smbd is installed, else (reason word, message).
pub fn samba_missing() -> Option<(&'static str, String)> {
    samba_missing_on(host_has)
}

/// None when ganesha.nfsd and its VFS FSAL are installed, else (reason word, message).
pub fn nfs_server_missing() -> Option<(&'static str, String)> {
    nfs_server_missing_on(host_has)
}

/// `has` answers for a command name or an absolute file path.
fn samba_missing_on(has: impl Fn(&str) -> bool) -> Option<(&'static str, String)> {
    (!has("smbd")).then(|| {
        (
            SAMBA_MISSING,
            "smbd is not installed on this host: the share snippet is written, but nothing serves it (install samba and samba-vfs-modules)".to_string(),
        )
    })
}

fn nfs_server_missing_on(has: impl Fn(&str) -> bool) -> Option<(&'static str, String)> {
    let why = if !has("ganesha.nfsd") {
        "nfs-ganesha is not installed on this host"
    } else if !VFS_FSAL.iter().any(|f| has(f)) {
        "nfs-ganesha's VFS FSAL is not installed on this host"
    } else {
        return None;
    };
    Some((
        NFS_SERVER_MISSING,
        format!("{why}: the export is written, but nothing serves it (install nfs-ganesha and nfs-ganesha-vfs)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_a_server_gets_its_reason_word_and_one_with_it_none() {
        let all = |_: &str| true;
        let none = |_: &str| false;
        let no_fsal = |w: &str| !w.starts_with('/');
        assert_eq!(samba_missing_on(all), None);
        assert_eq!(samba_missing_on(none).unwrap().0, "SambaMissing");
        assert_eq!(nfs_server_missing_on(all), None);
        let (word, why) = nfs_server_missing_on(none).unwrap();
        assert_eq!(word, "NfsServerMissing");
        assert!(why.starts_with("nfs-ganesha is not installed"), "{why}");
        let (_, why) = nfs_server_missing_on(no_fsal).unwrap();
        assert!(why.contains("VFS FSAL"), "{why}");
    }
}
