//! Mounting one point, taking it down, and what is mounted: the I/O half of browsing.
//!
//! A mount records the point (`point.json`) under `<dir>/.snapback/<@GMT name>/` before it
//! starts anything, and marks it `complete` once every filesystem is mounted; everything it
//! starts is found again from there (pid files, and the qemu-nbd processes serving the
//! point's sockets). Taking a point down goes the other way and removes the record last, so
//! after a kill -9 at any moment a rerun of mount or unmount converges.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::name::{gmt_name, parse_gmt_name};
use crate::api::FailureReason;
use crate::error::StepError;
use crate::files::attach::{self, Layout, Source};
use crate::process::crash_point;

/// Where points are mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// One domain's browse dir: `<dir>/@GMT-...` per point.
    pub dir: PathBuf,
    /// Where a symlink `<link_dir>/@GMT-...` to each mounted point goes, if anywhere.
    pub link_dir: Option<PathBuf>,
}

/// One disk of the domain: its target (`vdb`, the directory name in the point) and its
/// qcow2 image, which holds the point's internal snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub target: String,
    pub path: PathBuf,
}

/// The point to mount: the internal snapshot `snapshot` of the domain's qcow2 disks, taken
/// at `time`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointRef {
    pub domain: String,
    pub snapshot: String,
    pub time: Timestamp,
    pub disks: Vec<Disk>,
}

/// A point found under a browse dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountedPoint {
    /// `@GMT-...`.
    pub name: String,
    /// `<dir>/@GMT-...`.
    pub dir: PathBuf,
    /// What was mounted there (None: the record was lost before it was written).
    pub point: Option<PointRef>,
    /// The guest filesystems mounted (`vdb`, `vdc1`, `vg-root`).
    pub filesystems: Vec<String>,
    /// Every filesystem was mounted; false after a mount that died (unmount or mount again).
    pub complete: bool,
}

const STATE: &str = ".snapback";
const RECORD: &str = "point.json";
const COMPLETE: &str = "complete";
const LINK: &str = "link";

fn err(reason: FailureReason, m: impl Into<String>) -> StepError {
    StepError::new(reason, m)
}

fn internal(what: &str, e: impl std::fmt::Display) -> StepError {
    err(FailureReason::Internal, format!("{what}: {e}"))
}

fn state_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(STATE).join(name)
}

fn layout(dir: &Path, name: &str) -> Layout {
    Layout {
        attach: state_dir(dir, name).join("attach"),
        tree: dir.join(name),
    }
}

/// The unix sockets of a point's qemu-nbd servers: short fixed paths (a socket path has at
/// most 107 bytes, a browse dir may be long), named by a hash of the point's state dir.
fn socket_prefix(state: &Path) -> String {
    let h = Sha256::digest(state.as_os_str().as_encoded_bytes());
    format!("/run/snapback/browse-{}-", &hex::encode(h)[..16])
}

fn socket(state: &Path, i: usize) -> PathBuf {
    PathBuf::from(format!("{}{i}.sock", socket_prefix(state)))
}

/// One mount or unmount at a time per browse dir (a CLI call beside the daemon's expiry):
/// a flock outside the dir, so neither Samba nor NFS shows it, gone with its process.
fn lock(dir: &Path) -> Result<std::fs::File, StepError> {
    let h = hex::encode(Sha256::digest(dir.as_os_str().as_encoded_bytes()));
    match crate::state_dir::lock(Path::new("/run/snapback"), "browse", &h[..16]) {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(err(
            FailureReason::Busy,
            format!(
                "another snapback is mounting or unmounting under {}",
                dir.display()
            ),
        )),
        Err(e) => Err(internal("browse lock", e)),
    }
}

fn validate(settings: &Settings, p: &PointRef) -> Result<(), StepError> {
    let bad = |m: String| Err(err(FailureReason::InvalidSpec, m));
    if !settings.dir.is_absolute() {
        return bad(format!(
            "browse dir {} is not absolute",
            settings.dir.display()
        ));
    }
    if let Some(l) = settings.link_dir.as_ref().filter(|l| !l.is_absolute()) {
        return bad(format!("link dir {} is not absolute", l.display()));
    }
    if p.snapshot.is_empty() || p.snapshot.contains('\n') {
        return bad(format!("snapshot name {:?}", p.snapshot));
    }
    if p.disks.is_empty() {
        return bad(format!(
            "domain {} has no qcow2 disk holding internal snapshots",
            p.domain
        ));
    }
    for d in &p.disks {
        let ok_target = !d.target.is_empty()
            && !d.target.starts_with('@')
            && d.target.chars().all(|c| c.is_ascii_alphanumeric());
        if !ok_target {
            return bad(format!("disk target {:?}", d.target));
        }
        if !d.path.is_absolute() {
            return bad(format!("disk {} is not absolute", d.path.display()));
        }
    }
    Ok(())
}

fn read_record(state: &Path) -> Option<PointRef> {
    let text = std::fs::read_to_string(state.join(RECORD)).ok()?;
    serde_json::from_str(&text).ok()
}

/// `driver=qcow2,file.filename=...` with qemu's option escaping (',' doubled).
fn image_opts(path: &Path) -> String {
    format!(
        "driver=qcow2,read-only=on,force-share=on,file.driver=file,file.filename={}",
        path.display().to_string().replace(',', ",,")
    )
}

/// qemu-nbd's `--load-snapshot` value for the internal snapshot `name` (',' doubled).
fn snapshot_opt(name: &str) -> String {
    format!("snapshot.name={}", name.replace(',', ",,"))
}

/// Mounts the point's guest filesystems read-only under `<dir>/@GMT-...` and returns what
/// was mounted. Whatever an earlier mount of the same point left (a crash) is taken down
/// first; on error everything this started is taken down again.
pub async fn mount_point(settings: &Settings, p: &PointRef) -> Result<MountedPoint, StepError> {
    validate(settings, p)?;
    let _lock = lock(&settings.dir)?;
    let name = gmt_name(p.time);
    let state = state_dir(&settings.dir, &name);
    if let Some(other) = read_record(&state) {
        if other.domain != p.domain || other.snapshot != p.snapshot {
            return Err(err(
                FailureReason::Busy,
                format!(
                    "{} already holds snapshot {} of domain {}: unmount it first",
                    settings.dir.join(&name).display(),
                    other.snapshot,
                    other.domain
                ),
            ));
        }
    }
    teardown(&settings.dir, &name).await?;
    std::fs::create_dir_all(&state).map_err(|e| internal("browse state dir", e))?;
    let tmp = state.join(format!("{RECORD}.tmp"));
    let json = serde_json::to_vec_pretty(p).map_err(|e| internal("point record", e))?;
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, state.join(RECORD)))
        .map_err(|e| internal("point record", e))?;
    crash_point("browse:mount:recorded");
    match mount_recorded(settings, p, &name, &state).await {
        Ok(m) => Ok(m),
        Err(e) => {
            if teardown(&settings.dir, &name).await.is_ok() {
                let _ = forget(&settings.dir, &name);
            }
            Err(e)
        }
    }
}

async fn mount_recorded(
    settings: &Settings,
    p: &PointRef,
    name: &str,
    state: &Path,
) -> Result<MountedPoint, StepError> {
    std::fs::create_dir_all("/run/snapback").map_err(|e| internal("/run/snapback", e))?;
    let mut sources = Vec::new();
    for (i, d) in p.disks.iter().enumerate() {
        let sock = socket(state, i);
        let pid = state.join(format!("nbd-{i}.pid"));
        let (sock_s, pid_s) = (sock.display().to_string(), pid.display().to_string());
        let opts = image_opts(&d.path);
        let snap = snapshot_opt(&p.snapshot);
        // --persistent: the server outlives each client connection (qemu-storage-daemon
        // reconnects); --fork: it returns once the socket listens.
        attach::run(&[
            "qemu-nbd",
            "--read-only",
            "--persistent",
            "--fork",
            "--pid-file",
            &pid_s,
            "--socket",
            &sock_s,
            "--image-opts",
            &opts,
            "--load-snapshot",
            &snap,
        ])
        .await
        .map_err(|e| {
            // qemu-nbd says "Failed to load snapshot: Can't find snapshot" for a name the
            // image does not hold: the caller's mistake, not the host's.
            let reason = if e.contains("napshot") {
                FailureReason::InvalidSpec
            } else {
                FailureReason::Internal
            };
            err(
                reason,
                format!("open snapshot {} of {}: {e}", p.snapshot, d.target),
            )
        })?;
        sources.push((d.target.clone(), Source::Nbd(sock)));
    }
    crash_point("browse:mount:served");
    let layout = layout(&settings.dir, name);
    let mounted = attach::attach_sources(&layout, &sources).await?;
    crash_point("browse:mount:attached");
    if let Some(link_dir) = &settings.link_dir {
        std::fs::create_dir_all(link_dir).map_err(|e| internal("link dir", e))?;
        let link = link_dir.join(name);
        // Recorded before it exists, so that an unmount after a crash removes it.
        std::fs::write(state.join(LINK), link.as_os_str().as_encoded_bytes())
            .map_err(|e| internal("link record", e))?;
        if link
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            let _ = std::fs::remove_file(&link);
        }
        std::os::unix::fs::symlink(&layout.tree, &link)
            .map_err(|e| internal(&format!("symlink {}", link.display()), e))?;
    }
    std::fs::write(state.join(COMPLETE), b"").map_err(|e| internal("point record", e))?;
    Ok(MountedPoint {
        name: name.to_string(),
        dir: layout.tree,
        point: Some(p.clone()),
        filesystems: mounted.into_iter().map(|m| m.name).collect(),
        complete: true,
    })
}

/// Live qemu-nbd processes serving one of the point's sockets (found by their command line,
/// so a server whose pid file was never written is found too).
fn nbd_servers(state: &Path) -> Vec<i32> {
    let prefix = socket_prefix(state);
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.first().is_some_and(|a0| a0.ends_with(b"qemu-nbd"))
                    && args.iter().any(|a| a.starts_with(prefix.as_bytes()))
            })
        })
        .collect()
}

/// Takes down whatever a mount of point `name` started, in order: its mounts, loop devices
/// and FUSE exports (files::attach::detach), its qemu-nbd servers and sockets, its symlink.
/// The record stays; the caller removes it.
async fn teardown(dir: &Path, name: &str) -> Result<(), StepError> {
    let state = state_dir(dir, name);
    attach::detach(&layout(dir, name)).await?;
    crash_point("browse:unmount:detached");
    let mut pids: Vec<i32> = std::fs::read_dir(&state)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("nbd-"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.extend(nbd_servers(&state));
    pids.sort_unstable();
    pids.dedup();
    for pid in pids {
        attach::stop_named(pid, "qemu-nbd").await;
    }
    let left = nbd_servers(&state);
    if !left.is_empty() {
        return Err(internal(
            "stop qemu-nbd",
            format!("still running: {left:?}"),
        ));
    }
    let prefix = socket_prefix(&state);
    if let Ok(d) = std::fs::read_dir("/run/snapback") {
        for e in d.flatten() {
            if e.path().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Ok(d) = std::fs::read_dir(&state) {
        for e in d.flatten() {
            if e.file_name().to_string_lossy().starts_with("nbd-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Ok(link) = std::fs::read(state.join(LINK)) {
        let link =
            PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&link));
        // Only a symlink to this point: whatever else stands there now is not ours.
        if std::fs::read_link(&link).is_ok_and(|t| t == dir.join(name)) {
            std::fs::remove_file(&link).map_err(|e| internal("remove symlink", e))?;
        }
        let _ = std::fs::remove_file(state.join(LINK));
    }
    let _ = std::fs::remove_file(state.join(COMPLETE));
    Ok(())
}

/// Unmounts the point taken at `time` under `dir` (what `mount_point` mounted, whole or
/// partly) and stops what served it. Returns whether there was anything to take down; safe
/// to call again, also after a crash halfway through.
pub async fn unmount_point(dir: &Path, time: Timestamp) -> Result<bool, StepError> {
    let _lock = lock(dir)?;
    unmount_named(dir, &gmt_name(time)).await
}

async fn unmount_named(dir: &Path, name: &str) -> Result<bool, StepError> {
    let had = state_dir(dir, name).exists() || dir.join(name).exists();
    teardown(dir, name).await?;
    forget(dir, name)?;
    Ok(had)
}

/// Removes the record of a point taken down.
fn forget(dir: &Path, name: &str) -> Result<(), StepError> {
    match std::fs::remove_dir_all(state_dir(dir, name)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(internal("remove browse state", e)),
    }
    // The state root goes when its last point does, so an unused browse dir is left empty.
    let _ = std::fs::remove_dir(dir.join(STATE));
    Ok(())
}

/// Whether the point taken at `time` is mounted under `dir`, whole or partly: then its
/// snapshot is being read and must not be deleted.
pub fn is_mounted(dir: &Path, time: Timestamp) -> bool {
    let name = gmt_name(time);
    state_dir(dir, &name).exists() || dir.join(&name).exists()
}

/// Processes with a file, working directory or root inside the point taken at `time`
/// under `dir`: a mounted point nobody uses can be unmounted without cutting anyone off.
pub fn in_use(dir: &Path, time: Timestamp) -> Vec<i32> {
    let tree = dir.join(gmt_name(time));
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<i32> = procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let inside = |l: &str| {
                std::fs::read_link(format!("/proc/{pid}/{l}")).is_ok_and(|t| t.starts_with(&tree))
            };
            inside("cwd")
                || inside("root")
                || std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                    fds.flatten()
                        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(&tree)))
                })
        })
        .collect();
    out.sort_unstable();
    out
}

/// The points under `dir`, mounted whole or partly, oldest first.
pub fn list_points(dir: &Path) -> Vec<MountedPoint> {
    let mut names: Vec<String> = Vec::new();
    for d in [dir.join(STATE), dir.to_path_buf()] {
        if let Ok(rd) = std::fs::read_dir(d) {
            names.extend(
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .filter(|n| parse_gmt_name(n).is_some()),
            );
        }
    }
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let state = state_dir(dir, &name);
            let tree = dir.join(&name);
            let mut filesystems: Vec<String> = std::fs::read_dir(&tree)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| is_mount_point(&e.path()))
                        .filter_map(|e| e.file_name().to_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            filesystems.sort();
            MountedPoint {
                point: read_record(&state),
                complete: state.join(COMPLETE).exists(),
                name,
                dir: tree,
                filesystems,
            }
        })
        .collect()
}

/// A directory on another device than its parent: a mount point.
fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(p), p.parent().map(std::fs::metadata)) {
        (Ok(m), Some(Ok(parent))) => m.is_dir() && m.dev() != parent.dev(),
        _ => false,
    }
}

/// Unmounts every point under `dir` (a domain's browsing switched off, or removed).
pub async fn unmount_all(dir: &Path) -> Result<Vec<String>, StepError> {
    let _lock = lock(dir)?;
    let mut done = Vec::new();
    for p in list_points(dir) {
        unmount_named(dir, &p.name).await?;
        done.push(p.name);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(disks: Vec<Disk>) -> PointRef {
        PointRef {
            domain: "web1".into(),
            snapshot: "snapback-1".into(),
            time: "2026-12-01T03:10:00Z".parse().unwrap(),
            disks,
        }
    }

    fn disk(target: &str, path: &str) -> Disk {
        Disk {
            target: target.into(),
            path: path.into(),
        }
    }

    #[test]
    fn bad_settings_and_points_are_refused_before_anything_starts() {
        let ok = Settings {
            dir: "/srv/p".into(),
            link_dir: None,
        };
        let rel = Settings {
            dir: "p".into(),
            link_dir: None,
        };
        let rel_link = Settings {
            dir: "/srv/p".into(),
            link_dir: Some("l".into()),
        };
        assert!(validate(&ok, &point(vec![disk("vdb", "/i/b.qcow2")])).is_ok());
        let cases = [
            (&rel, point(vec![disk("vdb", "/i/b.qcow2")])),
            (&rel_link, point(vec![disk("vdb", "/i/b.qcow2")])),
            (&ok, point(vec![])),
            (&ok, point(vec![disk("", "/i/b.qcow2")])),
            (&ok, point(vec![disk("../x", "/i/b.qcow2")])),
            (&ok, point(vec![disk("@snapback", "/i/b.qcow2")])),
            (&ok, point(vec![disk("vdb", "b.qcow2")])),
        ];
        for (s, p) in cases {
            let e = validate(s, &p).unwrap_err();
            assert_eq!(e.reason, FailureReason::InvalidSpec, "{s:?} {p:?}");
        }
    }

    #[test]
    fn qemu_option_commas_in_image_paths_are_doubled() {
        assert_eq!(
            image_opts(Path::new("/i/a,b.qcow2")),
            "driver=qcow2,read-only=on,force-share=on,file.driver=file,file.filename=/i/a,,b.qcow2"
        );
    }

    #[test]
    fn qemu_option_commas_in_snapshot_names_are_doubled() {
        assert_eq!(snapshot_opt("snapback-1"), "snapshot.name=snapback-1");
        assert_eq!(snapshot_opt("a,b"), "snapshot.name=a,,b");
    }

    #[test]
    fn sockets_are_short_and_differ_per_point() {
        let a = socket(Path::new(&"/very/long/dir/".repeat(20)), 3);
        let b = socket(Path::new("/other"), 3);
        assert!(a.as_os_str().len() < 64, "{}", a.display());
        assert_ne!(a, b);
    }
}
