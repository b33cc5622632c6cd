//! Browsing local points on a real running VM: internal snapshots taken with virsh (the
//! fixture), their guest filesystems mounted read-only under @GMT dirs by `snapback browse`
//! while the VM runs, served by a real smbd (shadow_copy2 "Previous Versions") and a real
//! nfs-ganesha (NFSv4, FSAL VFS) on loopback, and kill -9 at every crash point of mount and
//! unmount converging on a rerun.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The data disk's tree at point `v` (1 or 2): one changed file, one only in the first, one
/// only in the second, one unchanged.
fn tree(dir: &Path, v: u8) -> PathBuf {
    let root = dir.join(format!("tree-{v}"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::write(
        root.join("docs/report.txt"),
        format!("report version {v}\n"),
    )
    .unwrap();
    std::fs::write(root.join("same.txt"), b"never changes\n").unwrap();
    let only = if v == 1 { "old.txt" } else { "new.txt" };
    std::fs::write(root.join(only), format!("only at point {v}\n")).unwrap();
    root
}

/// Puts `tree` onto the stopped domain's qcow2 `image` in place, keeping the image's internal
/// snapshots: through a writable FUSE export and a loop mount (mkfs on the export).
fn write_tree_onto(image: &Path, tree: &Path, work: &Path) {
    std::fs::create_dir_all(work).unwrap();
    let raw = work.join("rw.raw");
    std::fs::write(&raw, b"").unwrap();
    let pid = work.join("rw.pid");
    let file = format!(
        r#"{{"driver":"file","node-name":"f","filename":"{}"}}"#,
        image.display()
    );
    let exp = format!(
        r#"{{"type":"fuse","id":"e","node-name":"q","mountpoint":"{}","writable":true}}"#,
        raw.display()
    );
    run_ok(
        "qemu-storage-daemon",
        &[
            "--blockdev",
            &file,
            "--blockdev",
            r#"{"driver":"qcow2","node-name":"q","file":"f"}"#,
            "--export",
            &exp,
            "--pidfile",
            pid.to_str().unwrap(),
            "--daemonize",
        ],
    );
    run_ok(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            tree.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let pid = std::fs::read_to_string(&pid).unwrap().trim().to_string();
    run_ok("kill", &[&pid]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}/exe")).exists() {
        assert!(
            Instant::now() < deadline,
            "qemu-storage-daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running writer guest with an ext4 data disk (vdb) and two internal snapshots with
/// memory, taken while it ran: `snapback-1` over tree 1, `snapback-2` over tree 2.
/// Dropping it unmounts every point, then removes the snapshots and the domain.
struct Fixture {
    browse: BrowseDir,
    _snaps: Snapshots,
    g: Guest,
    env: Env,
    trees: [PathBuf; 2],
    disk: PathBuf,
}

/// The browse dir; everything under it unmounted when the test ends, passed or not.
struct BrowseDir {
    dir: PathBuf,
}

impl Drop for BrowseDir {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_snapback"))
            .args(["browse", "unmount", "--all", "--dir"])
            .arg(&self.dir)
            .output();
    }
}

/// Undefines the domain with its snapshot metadata (Guest's drop does not).
struct Snapshots(String);

impl Drop for Snapshots {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
        let _ = virsh(&[
            "undefine",
            &self.0,
            "--snapshots-metadata",
            "--checkpoints-metadata",
        ]);
    }
}

impl Fixture {
    fn new(prefix: &str) -> Fixture {
        let env = Env::new();
        let t1 = tree(&env.dir, 1);
        let t2 = tree(&env.dir, 2);
        let raw = env.dir.join("data.raw");
        ext4_raw_disk(&t1, &raw);
        let disk = env.dir.join("data.qcow2");
        run_ok(
            "qemu-img",
            &[
                "convert",
                "-O",
                "qcow2",
                raw.to_str().unwrap(),
                disk.to_str().unwrap(),
            ],
        );
        std::fs::remove_file(&raw).unwrap();
        let g = Guest::new(
            prefix,
            GuestOpts {
                extra_disks: vec![disk.clone()],
                ..Default::default()
            },
        );
        let snaps = Snapshots(g.name.clone());
        virsh_ok(&["snapshot-create-as", &g.name, "snapback-1"]);
        // The second point over the second tree: the domain stops for the rewrite (the writer
        // guest leaves vdb alone) and runs again; the first snapshot stays in the image.
        virsh_ok(&["destroy", &g.name]);
        write_tree_onto(&disk, &t2, &env.dir.join("rewrite"));
        g.start();
        virsh_ok(&["snapshot-create-as", &g.name, "snapback-2"]);
        let browse = BrowseDir {
            dir: env.dir.join("points"),
        };
        Fixture {
            browse,
            _snaps: snaps,
            g,
            env,
            trees: [t1, t2],
            disk,
        }
    }

    fn dir(&self) -> &Path {
        &self.browse.dir
    }

    fn mount(&self, snapshot: &str, extra: &[&str]) -> SnapOut {
        self.mount_with(snapshot, extra, &[])
    }

    fn mount_with(&self, snapshot: &str, extra: &[&str], env: &[(&str, &str)]) -> SnapOut {
        let mut args = vec![
            "browse",
            "mount",
            "--domain",
            &self.g.name,
            "--snapshot",
            snapshot,
            "--dir",
            self.dir().to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.env.snapback_with(&args, env)
    }

    /// The @GMT directory name of an internal snapshot: its time as the image records it
    /// (what `snapback browse mount` reads when no --time is given).
    fn gmt(&self, snapshot: &str) -> String {
        let info = run_ok(
            "qemu-img",
            &["info", "-U", "--output=json", self.disk.to_str().unwrap()],
        );
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        let secs = v["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == snapshot)
            .unwrap_or_else(|| panic!("no snapshot {snapshot}: {info}"))["date-sec"]
            .as_i64()
            .unwrap();
        jiff::Timestamp::from_second(secs)
            .unwrap()
            .strftime("@GMT-%Y.%m.%d-%H.%M.%S")
            .to_string()
    }

    /// Nothing of any point is left: no mount or loop device under the env, no qemu-nbd or
    /// qemu-storage-daemon on its files, no socket of snapback's in /run/snapback that a
    /// live process serves.
    #[track_caller]
    fn assert_nothing_left(&self) {
        let env_dir = self.env.dir.display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&env_dir),
            "a mount under the test dir remains:\n{mounts}"
        );
        let loops = run_ok("losetup", &["-a"]);
        assert!(!loops.contains(&env_dir), "a loop device remains: {loops}");
        for pat in [
            format!("qemu-nbd.*{}", self.disk.display()),
            format!("qemu-storage-daemon.*{env_dir}"),
        ] {
            let o = Command::new("pgrep").args(["-f", &pat]).output().unwrap();
            assert!(
                o.stdout.is_empty(),
                "a process remains ({pat}): {}",
                String::from_utf8_lossy(&o.stdout)
            );
        }
        assert!(
            !self.dir().join(".snapback").exists(),
            "the browse state remains"
        );
    }
}

/// Every file of `want` is in `got` with the same bytes, and nothing else is.
#[track_caller]
fn same_files(got: &Path, want: &Path) {
    let mut names = Vec::new();
    for e in std::fs::read_dir(want).unwrap() {
        let e = e.unwrap();
        names.push(e.file_name());
        let g = got.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            same_files(&g, &e.path());
        } else {
            assert_eq!(
                std::fs::read(&g).unwrap_or_else(|e| panic!("{}: {e}", g.display())),
                std::fs::read(e.path()).unwrap(),
                "{}",
                g.display()
            );
        }
    }
    let mut have: Vec<_> = std::fs::read_dir(got)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "lost+found")
        .collect();
    have.sort();
    names.sort();
    assert_eq!(have, names, "entries of {}", got.display());
}

#[test]
fn each_points_directory_shows_the_files_as_they_were_at_that_point_while_the_vm_runs() {
    let f = Fixture::new("sbb-gmt");
    let links = f.env.dir.join("links");
    let writes_before = f.g.writes();
    let started = Instant::now();
    let p1 = f
        .mount("snapback-1", &["--link-dir", links.to_str().unwrap()])
        .assert_ok();
    eprintln!("mounting one point took {:?}", started.elapsed());
    let p2 = f
        .mount("snapback-2", &["--link-dir", links.to_str().unwrap()])
        .assert_ok();
    let (g1, g2) = (f.gmt("snapback-1"), f.gmt("snapback-2"));
    assert_ne!(g1, g2);
    assert_eq!(PathBuf::from(&p1), f.dir().join(&g1));
    assert_eq!(PathBuf::from(&p2), f.dir().join(&g2));

    same_files(&f.dir().join(&g1).join("vdb"), &f.trees[0]);
    same_files(&f.dir().join(&g2).join("vdb"), &f.trees[1]);
    // The symlinks lead to the same trees.
    let via_link = std::fs::read_to_string(links.join(&g1).join("vdb/docs/report.txt")).unwrap();
    assert_eq!(via_link, "report version 1\n");
    // Read-only, and the VM ran on throughout.
    let e = std::fs::write(f.dir().join(&g1).join("vdb/x"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert_eq!(f.g.state(), "running");
    f.g.wait_for_writes(writes_before + 2);

    let list = f
        .env
        .snapback(&["browse", "list", "--dir", f.dir().to_str().unwrap()]);
    list.assert_ok();
    for (g, s) in [(&g1, "snapback-1"), (&g2, "snapback-2")] {
        let row = list
            .stdout
            .lines()
            .find(|l| l.starts_with(g.as_str()))
            .unwrap_or_else(|| panic!("{g} not listed:\n{}", list.stdout));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols, [g.as_str(), &f.g.name, s, "vdb", "Mounted"]);
    }

    // What expiry asks before deleting a point's snapshot: mounted? in use, by whom?
    let t1 = snapback::browse::parse_gmt_name(&g1).unwrap();
    assert!(snapback::browse::is_mounted(f.dir(), t1));
    assert!(snapback::browse::in_use(f.dir(), t1).is_empty());
    let open = std::fs::File::open(f.dir().join(&g1).join("vdb/same.txt")).unwrap();
    let me = std::process::id() as i32;
    assert_eq!(snapback::browse::in_use(f.dir(), t1), [me]);
    drop(open);
    assert!(snapback::browse::in_use(f.dir(), t1).is_empty());

    // Unmounting one point leaves the other mounted.
    f.env
        .snapback(&[
            "browse",
            "unmount",
            "--dir",
            f.dir().to_str().unwrap(),
            "--point",
            &g1,
        ])
        .assert_ok();
    assert!(!f.dir().join(&g1).exists());
    assert!(!snapback::browse::is_mounted(f.dir(), t1));
    assert!(links.join(&g1).symlink_metadata().is_err(), "link left");
    same_files(&f.dir().join(&g2).join("vdb"), &f.trees[1]);
    let started = Instant::now();
    f.env
        .snapback(&[
            "browse",
            "unmount",
            "--all",
            "--dir",
            f.dir().to_str().unwrap(),
        ])
        .assert_ok();
    eprintln!("unmounting one point took {:?}", started.elapsed());
    f.assert_nothing_left();
    assert_eq!(f.g.state(), "running");
}

#[test]
fn a_snapshot_the_disks_do_not_hold_fails_as_invalid_spec_and_leaves_nothing() {
    let f = Fixture::new("sbb-nosnap");
    f.mount("no-such-snapshot", &[])
        .assert_failed_with("InvalidSpec");
    // With a time given, qemu-nbd is the one that finds no such snapshot.
    f.mount("no-such-snapshot", &["--time", "2026-01-01T00:00:00Z"])
        .assert_failed_with("InvalidSpec");
    f.assert_nothing_left();
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server process of a test, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// smbd on loopback with a private config, state and log dir; guests read without a password.
fn start_smbd(dir: &Path, share: &Path) -> (Server, u16) {
    for d in ["private", "lock", "state", "cache", "pid", "ncalrpc"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let port = free_port();
    let d = dir.display();
    let conf = dir.join("smb.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]
  smb ports = {port}
  interfaces = 127.0.0.1
  bind interfaces only = yes
  disable netbios = yes
  server role = standalone server
  map to guest = Bad User
  private dir = {d}/private
  lock directory = {d}/lock
  state directory = {d}/state
  cache directory = {d}/cache
  pid directory = {d}/pid
  ncalrpc dir = {d}/ncalrpc
  log file = {d}/log
  load printers = no
  printcap name = /dev/null
  disable spoolss = yes
  include = {share}
",
            share = share.display()
        ),
    )
    .unwrap();
    let child = Command::new("smbd")
        .args(["--foreground", "--no-process-group", "-s"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("smbd (scripts/setup-host.sh installs samba)");
    let server = Server(child);
    wait_for_port(port, "smbd", &dir.join("log"));
    (server, port)
}

fn smbclient(port: u16, share: &str, cmd: &str) -> String {
    run_ok(
        "smbclient",
        &[
            "-N",
            "-p",
            &port.to_string(),
            &format!("//127.0.0.1/{share}"),
            "-c",
            cmd,
        ],
    )
}

#[test]
fn smbclient_lists_the_points_as_previous_versions_and_fetches_one_from_a_real_smbd() {
    let f = Fixture::new("sbb-smb");
    f.mount("snapback-1", &[]).assert_ok();
    f.mount("snapback-2", &[]).assert_ok();
    let (g1, g2) = (f.gmt("snapback-1"), f.gmt("snapback-2"));
    // What the share serves now: the guest's current files in the points' shape (vdb/...).
    let current = f.env.dir.join("current");
    std::fs::create_dir_all(current.join("vdb/docs")).unwrap();
    std::fs::write(current.join("vdb/docs/report.txt"), b"report version 3\n").unwrap();
    let smb = f.env.dir.join("smb");
    std::fs::create_dir_all(&smb).unwrap();
    let snippet = smb.join("share.conf");
    let out = f.env.snapback(&[
        "browse",
        "samba",
        "--dir",
        f.dir().to_str().unwrap(),
        "--share",
        "points",
        "--path",
        current.to_str().unwrap(),
        "--out",
        snippet.to_str().unwrap(),
    ]);
    out.assert_ok();
    assert!(!out.stderr.contains("SambaMissing"), "{}", out.stderr);
    // The test lets guests in; the snippet itself leaves authentication to the host.
    let mut text = std::fs::read_to_string(&snippet).unwrap();
    text.push_str("\tguest ok = yes\n");
    std::fs::write(&snippet, text).unwrap();
    let (_smbd, port) = start_smbd(&smb, &snippet);

    let info = smbclient(port, "points", "allinfo vdb/docs/report.txt");
    let listed: Vec<&str> = info.lines().filter(|l| l.starts_with("@GMT-")).collect();
    assert_eq!(listed, [g2.as_str(), g1.as_str()], "{info}");
    for (g, want) in [(&g1, "report version 1\n"), (&g2, "report version 2\n")] {
        let got = smb.join(format!("{g}.txt"));
        smbclient(
            port,
            "points",
            &format!("get \"{g}/vdb/docs/report.txt\" \"{}\"", got.display()),
        );
        assert_eq!(std::fs::read_to_string(&got).unwrap(), want, "{g}");
    }
    // A file only the first point has is there in that version.
    let old = smb.join("old.txt");
    smbclient(
        port,
        "points",
        &format!("get \"{g1}/vdb/old.txt\" \"{}\"", old.display()),
    );
    assert_eq!(std::fs::read_to_string(old).unwrap(), "only at point 1\n");
}

/// nfs-ganesha in the foreground on loopback, NFSv4 only, with a private config, recovery
/// dir and log.
fn start_ganesha(dir: &Path, export: &Path) -> (Server, u16) {
    std::fs::create_dir_all(dir.join("recovery")).unwrap();
    let port = free_port();
    let conf = dir.join("ganesha.conf");
    std::fs::write(
        &conf,
        format!(
            "NFS_CORE_PARAM {{
  Protocols = 4;
  NFS_Port = {port};
  Bind_addr = 127.0.0.1;
  Enable_NLM = false;
  Enable_RQUOTA = false;
  Enable_UDP = false;
}}
NFSV4 {{
  RecoveryBackend = fs;
  RecoveryRoot = \"{rec}\";
  Graceless = true;
  Only_Numeric_Owners = true;
}}
%include \"{export}\"
",
            rec = dir.join("recovery").display(),
            export = export.display()
        ),
    )
    .unwrap();
    let log = dir.join("ganesha.log");
    let child = Command::new("ganesha.nfsd")
        .arg("-F")
        .arg("-f")
        .arg(&conf)
        .arg("-L")
        .arg(&log)
        .arg("-p")
        .arg(dir.join("ganesha.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ganesha.nfsd (scripts/setup-host.sh installs nfs-ganesha)");
    let server = Server(child);
    wait_for_port(port, "ganesha.nfsd", &log);
    (server, port)
}

#[test]
fn a_ganesha_export_serves_the_points_files_over_nfsv4() {
    let f = Fixture::new("sbb-nfs");
    f.mount("snapback-1", &[]).assert_ok();
    f.mount("snapback-2", &[]).assert_ok();
    let (g1, g2) = (f.gmt("snapback-1"), f.gmt("snapback-2"));
    let nfs = f.env.dir.join("nfs");
    std::fs::create_dir_all(&nfs).unwrap();
    let export = nfs.join("export.conf");
    let out = f.env.snapback(&[
        "browse",
        "nfs",
        "--dir",
        f.dir().to_str().unwrap(),
        "--export-id",
        "7",
        "--pseudo",
        "/points",
        "--out",
        export.to_str().unwrap(),
    ]);
    out.assert_ok();
    assert!(!out.stderr.contains("NfsServerMissing"), "{}", out.stderr);
    let (_ganesha, port) = start_ganesha(&nfs, &export);
    let url = |rel: &str| format!("nfs://127.0.0.1/points/{rel}?version=4&nfsport={port}");

    let ls = run_ok("nfs-ls", &[&url("")]);
    for g in [&g1, &g2] {
        assert!(ls.contains(g.as_str()), "{g} not listed:\n{ls}");
    }
    for (g, want) in [(&g1, "report version 1\n"), (&g2, "report version 2\n")] {
        let got = run_ok("nfs-cat", &[&url(&format!("{g}/vdb/docs/report.txt"))]);
        assert_eq!(got, want, "{g}");
    }
    let new = run_ok("nfs-cat", &[&url(&format!("{g2}/vdb/new.txt"))]);
    assert_eq!(new, "only at point 2\n");
}

#[test]
fn a_mount_or_unmount_killed_at_any_moment_converges_when_rerun() {
    let f = Fixture::new("sbb-crash");
    let g1 = f.gmt("snapback-1");
    let dir = f.dir().to_str().unwrap().to_string();
    for point in [
        "browse:mount:recorded",
        "browse:mount:served",
        "browse:mount:attached",
    ] {
        // Killed while mounting, then mounted again: one whole mount.
        let out = f.mount_with("snapback-1", &[], &[("SNAPBACK_CRASH_AT", point)]);
        assert_eq!(out.code, -1, "{point}: not killed: {}", out.stderr);
        f.mount("snapback-1", &[]).assert_ok();
        same_files(&f.dir().join(&g1).join("vdb"), &f.trees[0]);
        f.env
            .snapback(&["browse", "unmount", "--all", "--dir", &dir])
            .assert_ok();
        f.assert_nothing_left();

        // Killed while mounting, then unmounted: nothing left.
        let out = f.mount_with("snapback-1", &[], &[("SNAPBACK_CRASH_AT", point)]);
        assert_eq!(out.code, -1, "{point}: not killed: {}", out.stderr);
        let list = f.env.snapback(&["browse", "list", "--dir", &dir]);
        assert!(list.stdout.contains(&g1), "{point}: {}", list.stdout);
        f.env
            .snapback(&["browse", "unmount", "--point", &g1, "--dir", &dir])
            .assert_ok();
        f.assert_nothing_left();
    }
    // Killed while unmounting (mounts gone, qemu-nbd still serving), then unmounted again.
    f.mount("snapback-1", &[]).assert_ok();
    let out = f.env.snapback_with(
        &["browse", "unmount", "--point", &g1, "--dir", &dir],
        &[("SNAPBACK_CRASH_AT", "browse:unmount:detached")],
    );
    assert_eq!(out.code, -1, "not killed: {}", out.stderr);
    f.env
        .snapback(&["browse", "unmount", "--point", &g1, "--dir", &dir])
        .assert_ok();
    f.assert_nothing_left();
    assert_eq!(f.g.state(), "running");
}
