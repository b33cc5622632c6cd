//! Exposing disk exports as read-only mounted filesystems, and taking that down again.
//!
//! Security: the guest's filesystems are untrusted data parsed by the host kernel. This is
//! limited to what the job needs: only ext2/3/4 and xfs are mounted, always read-only, with
//! nodev, nosuid and noexec, without journal replay, from a read-only loop device over a
//! read-only FUSE export of a copy (the export), never the VM's live disk. A libguestfs
//! appliance would put a VM between the kernel and the guest data; it is the stronger
//! isolation and the next step if the host kernel is not to parse guest filesystems.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::volumes;
use crate::api::FailureReason;
use crate::error::StepError;

/// Where a run attaches its exports: next to its staging dir, at paths stable per domain and
/// target (duplicity wants the same source path for every run of a chain).
#[derive(Clone, Debug)]
pub struct Layout {
    /// FUSE export files, qemu-storage-daemon pid files.
    pub attach: PathBuf,
    /// The tree duplicity reads: one mounted directory per guest filesystem.
    pub tree: PathBuf,
}

impl Layout {
    pub fn for_staging(staging: &Path) -> Self {
        let s = staging.display().to_string();
        Self {
            attach: PathBuf::from(format!("{s}.attach")),
            tree: PathBuf::from(format!("{s}.tree")),
        }
    }
}

/// What one disk is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A qcow2 file (files mode's export of the disk).
    Qcow2(PathBuf),
    /// An NBD server on a unix socket serving the disk's raw contents (qemu-nbd over an
    /// internal snapshot, for browsing local points).
    Nbd(PathBuf),
}

impl Source {
    /// qemu's `--blockdev` options (JSON, so paths need no escaping of qemu's ',') for the
    /// node `q` the FUSE export serves, read-only.
    fn blockdevs(&self) -> Vec<String> {
        match self {
            Source::Qcow2(file) => vec![
                serde_json::json!({"driver": "file", "node-name": "f", "filename": p(file), "read-only": true}).to_string(),
                serde_json::json!({"driver": "qcow2", "node-name": "q", "file": "f", "read-only": true}).to_string(),
            ],
            Source::Nbd(socket) => vec![serde_json::json!({
                "driver": "nbd", "node-name": "q", "read-only": true,
                "server": {"type": "unix", "path": p(socket)}
            })
            .to_string()],
        }
    }
}

/// A guest filesystem mounted in the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mounted {
    /// `vdb` (whole disk) or `vdb1` (partition 1): the top directory in the tree.
    pub name: String,
    pub fstype: String,
}

fn err(reason: FailureReason, m: impl Into<String>) -> StepError {
    StepError::new(reason, m)
}

pub(crate) async fn run(argv: &[&str]) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(argv[0]);
    cmd.args(&argv[1..]).kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} exited {}: {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// Mount points at or under `dir`, deepest first, from /proc/self/mountinfo.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    v.dedup();
    v
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Takes down everything a run attached under `layout`, in order: filesystem mounts, loop
/// devices, qemu-storage-daemon processes (and their FUSE exports). Safe to call at any time,
/// also when nothing is attached; the next run calls it first, so a crash leaves nothing.
pub async fn detach(layout: &Layout) -> Result<(), StepError> {
    let mut problems = Vec::new();
    for m in mounts_under(&layout.tree) {
        if let Err(e) = run(&["umount", &p(&m)]).await {
            // Busy (a process holds a file): detach it lazily rather than leave it mounted.
            if let Err(e2) = run(&["umount", "-l", &p(&m)]).await {
                problems.push(format!("{e}; {e2}"));
            }
        }
    }
    problems.extend(volumes::release(layout).await);
    let entries: Vec<PathBuf> = std::fs::read_dir(&layout.attach)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    for f in entries
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x == "raw"))
    {
        if let Ok(list) = run(&["losetup", "-j", &p(f)]).await {
            for dev in list.lines().filter_map(|l| l.split(':').next()) {
                if let Err(e) = run(&["losetup", "-d", dev]).await {
                    problems.push(e);
                }
            }
        }
    }
    for f in entries
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x == "pid"))
    {
        let pid: Option<i32> = std::fs::read_to_string(f)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if let Some(pid) = pid.filter(|p| *p > 1) {
            stop_process(pid).await;
        }
        let _ = std::fs::remove_file(f);
    }
    for m in mounts_under(&layout.attach) {
        if let Err(e) = run(&["umount", "-l", &p(&m)]).await {
            problems.push(e);
        }
    }
    if mounts_under(&layout.tree).is_empty() && mounts_under(&layout.attach).is_empty() {
        for d in [&layout.tree, &layout.attach] {
            if let Err(e) = std::fs::remove_dir_all(d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    problems.push(format!("remove {}: {e}", p(d)));
                }
            }
        }
    } else {
        problems.push("mounts remain after detaching".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(err(
            FailureReason::Internal,
            format!("detach: {}", problems.join("; ")),
        ))
    }
}

/// Whether `pid` is a live (not zombie) process whose command name starts with `comm`.
pub(crate) fn is_live(pid: i32, comm: &str) -> bool {
    let named = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.trim().starts_with(comm));
    // A daemonized child that exited stays a zombie until its new parent reaps it.
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    });
    named && !zombie
}

/// SIGTERM, then SIGKILL after 5 s, if the process is a qemu-storage-daemon.
async fn stop_process(pid: i32) {
    stop_named(pid, "qemu-storage").await;
}

/// SIGTERM, then SIGKILL after 5 s, if `pid` is a live process named `comm...` (a pid file can
/// outlive its process, and the pid be reused by another).
pub(crate) async fn stop_named(pid: i32, comm: &str) {
    if pid <= 1 || !is_live(pid, comm) {
        return;
    }
    // SAFETY: kill(2) with a pid read from our own pid file, checked to be that program.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..50 {
        if !is_live(pid, comm) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// The partitions of a disk as (number, byte offset, byte size), from its partition table
/// (MBR or GPT, read by sfdisk). Extended-partition containers are left out.
async fn partitions(dev: &str) -> Vec<(u32, u64, u64)> {
    let Ok(out) = run(&["sfdisk", "--json", dev]).await else {
        return Vec::new(); // no partition table
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
        return Vec::new();
    };
    parse_partitions(&v)
}

fn parse_partitions(v: &serde_json::Value) -> Vec<(u32, u64, u64)> {
    let t = &v["partitiontable"];
    let sector = t["sectorsize"].as_u64().unwrap_or(512);
    let node_number = |node: &str| -> Option<u32> {
        let digits: String = node
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.chars().rev().collect::<String>().parse().ok()
    };
    t["partitions"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .filter(|p| !matches!(p["type"].as_str(), Some("5" | "f" | "85")))
                .filter_map(|p| {
                    Some((
                        node_number(p["node"].as_str()?)?,
                        p["start"].as_u64()? * sector,
                        p["size"].as_u64()? * sector,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Filesystems this host mounts, with the options that keep the host safe and the data
/// untouched (no journal replay).
fn mount_options(fstype: &str) -> Option<&'static str> {
    match fstype {
        "ext2" | "ext3" | "ext4" => Some("ro,nodev,nosuid,noexec,noload"),
        "xfs" => Some("ro,nodev,nosuid,noexec,norecovery,nouuid"),
        _ => None,
    }
}

/// Mounts one filesystem read-only at `<tree>/<name>`; `None` for a type snapback leaves alone.
async fn mount_one(
    layout: &Layout,
    name: &str,
    node: &str,
    fstype: &str,
) -> Result<Option<Mounted>, StepError> {
    let Some(opts) = mount_options(fstype) else {
        return Ok(None);
    };
    let dir = layout.tree.join(name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| err(FailureReason::Internal, format!("mount point: {e}")))?;
    run(&["mount", "-t", fstype, "-o", opts, node, &p(&dir)])
        .await
        .map_err(|e| err(FailureReason::Internal, format!("mount {name}: {e}")))?;
    Ok(Some(Mounted {
        name: name.to_string(),
        fstype: fstype.to_string(),
    }))
}

pub(crate) async fn fstype(dev: &str) -> Option<String> {
    run(&["blkid", "-p", "-o", "value", "-s", "TYPE", dev])
        .await
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Attaches each (disk name, export file) and mounts the filesystems found. Whatever was
/// attached before (a crashed run) is detached first. On error everything is detached again.
pub async fn attach(
    layout: &Layout,
    exports: &[(String, PathBuf)],
) -> Result<Vec<Mounted>, StepError> {
    let sources: Vec<(String, Source)> = exports
        .iter()
        .map(|(d, f)| (d.clone(), Source::Qcow2(f.clone())))
        .collect();
    attach_sources(layout, &sources).await
}

/// `attach` for disks read from any `Source`.
pub async fn attach_sources(
    layout: &Layout,
    exports: &[(String, Source)],
) -> Result<Vec<Mounted>, StepError> {
    detach(layout).await?;
    match attach_inner(layout, exports).await {
        Ok(m) => Ok(m),
        Err(e) => {
            let _ = detach(layout).await;
            Err(e)
        }
    }
}

async fn attach_inner(
    layout: &Layout,
    exports: &[(String, Source)],
) -> Result<Vec<Mounted>, StepError> {
    let io = |what: &str, e: std::io::Error| err(FailureReason::Internal, format!("{what}: {e}"));
    std::fs::create_dir_all(&layout.attach).map_err(|e| io("attach dir", e))?;
    std::fs::create_dir_all(&layout.tree).map_err(|e| io("tree dir", e))?;
    let mut mounted = Vec::new();
    let mut skipped = Vec::new();
    // Volume-manager members, assembled after every disk is attached (a VG or array can span
    // disks): (our name, device).
    let mut lvm_members: Vec<(String, String)> = Vec::new();
    let mut md_members: Vec<(String, String)> = Vec::new();
    for (i, (disk, export)) in exports.iter().enumerate() {
        let fuse = layout.attach.join(format!("{i}.raw"));
        std::fs::write(&fuse, b"").map_err(|e| io("FUSE mount point", e))?;
        let pidfile = layout.attach.join(format!("{i}.pid"));
        let exp = serde_json::json!({"type": "fuse", "id": "e", "node-name": "q", "mountpoint": p(&fuse), "writable": false}).to_string();
        let blockdevs = export.blockdevs();
        let mut argv = vec!["qemu-storage-daemon"];
        for b in &blockdevs {
            argv.extend(["--blockdev", b.as_str()]);
        }
        let pidfile = p(&pidfile);
        argv.extend(["--export", &exp, "--pidfile", &pidfile, "--daemonize"]);
        run(&argv).await.map_err(|e| {
            err(
                FailureReason::Internal,
                format!("FUSE export of {disk}: {e}"),
            )
        })?;
        let dev = run(&["losetup", "--find", "--show", "--read-only", &p(&fuse)])
            .await
            .map_err(|e| {
                err(
                    FailureReason::Internal,
                    format!("loop device for {disk}: {e}"),
                )
            })?
            .trim()
            .to_string();
        // Partitions get loop devices of their own (offset + size limit): this does not rely
        // on the kernel's partition scanning of loop devices, which some hosts disable.
        let mut candidates = vec![(disk.clone(), dev.clone())];
        for (n, start, size) in partitions(&dev).await {
            let part = run(&[
                "losetup",
                "--find",
                "--show",
                "--read-only",
                "--offset",
                &start.to_string(),
                "--sizelimit",
                &size.to_string(),
                &p(&fuse),
            ])
            .await
            .map_err(|e| {
                err(
                    FailureReason::Internal,
                    format!("loop device for {disk}{n}: {e}"),
                )
            })?
            .trim()
            .to_string();
            candidates.push((format!("{disk}{n}"), part));
        }
        if candidates.len() > 1 {
            // A partitioned disk: its filesystems are in the partitions.
            candidates.remove(0);
        }
        for (name, node) in candidates {
            let Some(t) = fstype(&node).await else {
                skipped.push(format!("{name}: no filesystem"));
                continue;
            };
            match t.as_str() {
                "LVM2_member" => lvm_members.push((name, node)),
                "linux_raid_member" => md_members.push((name, node)),
                _ => match mount_one(layout, &name, &node, &t).await? {
                    Some(m) => mounted.push(m),
                    None => skipped.push(format!(
                        "{name}: {t}: not a filesystem snapback mounts (ext2/3/4, xfs)"
                    )),
                },
            }
        }
    }
    // md arrays, then LVM volume groups: the order a guest assembles them in.
    let mut assembled = Vec::new();
    if !md_members.is_empty() {
        assembled.push(volumes::assemble_md(layout, &md_members).await);
    }
    if !lvm_members.is_empty() {
        assembled.push(volumes::activate_lvm(layout, &lvm_members).await);
    }
    for assembly in assembled {
        match assembly {
            Ok(volumes) => {
                for (name, dev) in volumes {
                    let Some(t) = fstype(&dev).await else {
                        continue;
                    };
                    match mount_one(layout, &name, &dev, &t).await? {
                        Some(m) => mounted.push(m),
                        None => skipped.push(format!("{name}: {t}: not mounted")),
                    }
                }
            }
            Err(why) => skipped.push(why),
        }
    }
    if mounted.is_empty() {
        return Err(err(
            FailureReason::FilesystemUnsupported,
            format!(
                "no filesystem to back up on the domain's disks ({})",
                skipped.join("; ")
            ),
        ));
    }
    Ok(mounted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_come_from_the_table_in_bytes_without_extended_containers() {
        let v = serde_json::json!({"partitiontable": {"label": "dos", "sectorsize": 512, "partitions": [
            {"node": "/dev/loop3p1", "start": 2048, "size": 4096, "type": "83"},
            {"node": "/dev/loop3p2", "start": 6144, "size": 8192, "type": "5"},
            {"node": "/dev/loop3p5", "start": 8192, "size": 2048, "type": "83"}
        ]}});
        assert_eq!(
            parse_partitions(&v),
            vec![(1, 2048 * 512, 4096 * 512), (5, 8192 * 512, 2048 * 512)]
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn only_ext_and_xfs_are_mounted_and_always_read_only_without_replay() {
        for t in ["ext2", "ext3", "ext4", "xfs"] {
            let o = mount_options(t).unwrap();
            for must in ["ro", "nodev", "nosuid", "noexec"] {
                assert!(o.split(',').any(|x| x == must), "{t}: {o}");
            }
            assert!(o.contains("noload") || o.contains("norecovery"));
        }
        assert!(mount_options("btrfs").is_none());
        assert!(mount_options("LVM2_member").is_none());
    }
}
