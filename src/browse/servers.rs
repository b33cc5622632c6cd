//! Whether this host can serve the points: Samba's smbd and nfs-ganesha with its VFS FSAL.
//! The snippets are written either way; a missing server is reported with a reason word so
//! a status condition (or the CLI) can say why nothing serves them.

use std::path::Path;

/// The reason word of a host without smbd.
pub const SAMBA_MISSING: &str = "SambaMissing";
/// The reason word of a host without nfs-ganesha or its VFS FSAL.
pub const NFS_SERVER_MISSING: &str = "NfsServerMissing";

fn on_path(cmd: &str) -> bool {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&dirs)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(cmd).is_file())
}

/// None when smbd is installed, else (reason word, message).
pub fn samba_missing() -> Option<(&'static str, String)> {
    (!on_path("smbd")).then(|| {
        (
            SAMBA_MISSING,
            "smbd is not installed on this host: the share snippet is written, but nothing serves it (install samba)".to_string(),
        )
    })
}

/// None when ganesha.nfsd and its VFS FSAL are installed, else (reason word, message).
pub fn nfs_server_missing() -> Option<(&'static str, String)> {
    let fsal = [
        "/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so",
        "/usr/lib/aarch64-linux-gnu/ganesha/libfsalvfs.so",
        "/usr/lib64/ganesha/libfsalvfs.so",
        "/usr/lib/ganesha/libfsalvfs.so",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    if on_path("ganesha.nfsd") && fsal {
        return None;
    }
    Some((
        NFS_SERVER_MISSING,
        "nfs-ganesha with its VFS FSAL is not installed on this host: the export is written, but nothing serves it (install nfs-ganesha and nfs-ganesha-vfs)".to_string(),
    ))
}
