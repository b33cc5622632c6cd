//! A policy's `localSnapshots` in single-host mode, on a real libvirt host: `standalone
//! --once` takes a local point of each domain beside its backup and records it as a Local
//! run; points past `maxCount` are expired, their runs marked, and the backups' chain goes
//! on incrementally beside the points.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use snapback::api::{BackupPhase, BackupRun, BackupType, ConditionType};
use snapback::store::FileStore;

fn once(env: &Env, config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snapback"))
        .args(["standalone", "--once", "--config"])
        .arg(config)
        .env("SNAPBACK_STATE_DIR", &env.state)
        .env("SNAPBACK_CONNECT", connect_uri())
        .output()
        .unwrap()
}

fn assert_once_ok(env: &Env, config: &Path) {
    let out = once(env, config);
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The runs in the state dir: (local points, backups), each oldest first.
fn runs(env: &Env) -> (Vec<BackupRun>, Vec<BackupRun>) {
    let mut all = FileStore::new(&env.state).backup_runs().unwrap();
    all.sort_by_key(|r| r.status.as_ref().and_then(|s| s.start_time));
    all.into_iter().partition(|r| r.spec.is_local())
}

fn snapshots(domain: &str) -> Vec<String> {
    virsh_ok(&["snapshot-list", "--name", domain])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn expired(r: &BackupRun) -> bool {
    r.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == ConditionType::Expired.as_str() && c.status == "True")
    })
}

const LOCAL: &str = "  localSnapshots:\n    schedule: '0 * * * *'\n    expire:\n      - {match: '* * * * *', after: 30d}\n    maxCount: 1\n";

#[test]
fn once_takes_a_local_point_beside_the_backup_and_max_count_expires_the_oldest() {
    let g = Guest::new("sblp", GuestOpts::default());
    g.wait_for_writes(2);
    let env = Env::new();
    let config = write_config(&env, "points", &g.name, "0 3 * * *", LOCAL);

    assert_once_ok(&env, &config);
    let (points, backups) = runs(&env);
    assert_eq!(points.len(), 1, "{points:?}");
    let s = points[0].status.clone().unwrap();
    assert_eq!(s.phase, BackupPhase::Succeeded, "{s:?}");
    assert_eq!(s.type_, Some(BackupType::Local));
    let first = s
        .local_point
        .clone()
        .expect("the point's snapshot is named");
    assert_eq!(snapshots(&g.name), std::slice::from_ref(&first));
    let taken = s.snapshot_time.expect("taken at");
    let expires = s.expires_at.expect("an expiry time");
    assert_eq!(
        expires.duration_since(taken).as_hours(),
        30 * 24,
        "the only rule keeps it 30 days"
    );
    assert!(s.paused_seconds.is_some(), "the guest's pause is measured");
    assert_eq!(g.state(), "running");
    assert_eq!(backups.len(), 1);
    let b = backups[0].status.clone().unwrap();
    assert_eq!(
        (b.phase, b.type_),
        (BackupPhase::Succeeded, Some(BackupType::Full))
    );

    assert_once_ok(&env, &config);
    let (points, backups) = runs(&env);
    assert_eq!(points.len(), 2, "{points:?}");
    let old = points
        .iter()
        .find(|r| r.status.as_ref().unwrap().local_point.as_deref() == Some(first.as_str()))
        .unwrap();
    assert!(expired(old), "maxCount 1: the first point expired: {old:?}");
    let new = points.iter().find(|r| !expired(r)).expect("a live point");
    let second = new.status.as_ref().unwrap().local_point.clone().unwrap();
    assert_ne!(second, first);
    assert_eq!(
        snapshots(&g.name),
        [second],
        "only the newest point is left"
    );
    let b = backups.last().unwrap().status.clone().unwrap();
    assert_eq!(
        (b.phase, b.type_),
        (BackupPhase::Succeeded, Some(BackupType::Incremental)),
        "a local point beside the checkpoints leaves the chain incremental: {b:?}"
    );
    assert_eq!(g.state(), "running");
}

#[test]
fn a_policy_asking_for_points_without_ram_is_refused_with_the_field_named() {
    let env = Env::new();
    let config = write_config(
        &env,
        "points",
        "nosuch",
        "0 3 * * *",
        "  localSnapshots:\n    schedule: '0 * * * *'\n    memory: Exclude\n    expire:\n      - {match: '* * * * *', after: 1d}\n",
    );
    let out = once(&env, &config);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("localSnapshots.memory"), "{err}");

    let config = write_config(
        &env,
        "points",
        "nosuch",
        "0 3 * * *",
        "  localSnapshots:\n    schedule: '0 * * * *'\n    expire:\n      - {match: 'every hour', after: 1d}\n",
    );
    let out = once(&env, &config);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("localSnapshots.expire[0]"), "{err}");
}

/// Unmounts every point of a VM's browse dir when the test ends, passed or not.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_snapback"))
            .args(["browse", "unmount", "--all", "--dir"])
            .arg(&self.0)
            .output();
    }
}

fn condition(r: &BackupRun, ty: ConditionType) -> Option<(String, String)> {
    r.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == ty.as_str())
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[test]
fn a_policys_points_are_mounted_for_browsing_with_a_samba_share_and_unmounted_when_they_expire() {
    let env = Env::new();
    let tree = env.dir.join("tree");
    std::fs::create_dir_all(tree.join("docs")).unwrap();
    std::fs::write(tree.join("docs/report.txt"), b"the report\n").unwrap();
    let raw = env.dir.join("data.raw");
    ext4_raw_disk(&tree, &raw);
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
    let g = Guest::new(
        "sblpb",
        GuestOpts {
            extra_disks: vec![disk],
            ..Default::default()
        },
    );
    g.wait_for_writes(2);
    let points = env.dir.join("points");
    let vm_dir = points.join(&g.name);
    let _unmount = Unmount(vm_dir.clone());
    let config = write_config(
        &env,
        "points",
        &g.name,
        "0 3 * * *",
        &format!(
            "{LOCAL}    browse:\n      dir: {}\n      samba: true\n      nfs: true\n",
            points.display()
        ),
    );

    assert_once_ok(&env, &config);
    let (points_runs, _) = runs(&env);
    let first = &points_runs[0];
    assert_eq!(
        condition(first, ConditionType::Browsable),
        Some(("True".into(), "Mounted".into())),
        "{first:?}"
    );
    let gmt = |r: &BackupRun| {
        let t = r.status.as_ref().unwrap().snapshot_time.unwrap();
        vm_dir.join(t.strftime("@GMT-%Y.%m.%d-%H.%M.%S").to_string())
    };
    let first_dir = gmt(first);
    assert_eq!(
        std::fs::read(first_dir.join("vdb/docs/report.txt")).unwrap(),
        b"the report\n",
        "the point's guest files are readable under its @GMT dir"
    );
    let samba = std::fs::read_to_string(points.join(format!("{}.samba.conf", g.name))).unwrap();
    assert!(
        samba.contains(&format!("path = {}", first_dir.display())),
        "the share serves the newest point:\n{samba}"
    );
    assert!(samba.contains(&format!("shadow:snapdir = {}", vm_dir.display())));
    let nfs = std::fs::read_to_string(points.join(format!("{}.ganesha.conf", g.name))).unwrap();
    assert!(nfs.contains(&vm_dir.display().to_string()), "{nfs}");
    assert!(
        condition(first, ConditionType::Shared).is_some(),
        "the snippets' condition is recorded"
    );

    assert_once_ok(&env, &config);
    let (points_runs, _) = runs(&env);
    let second = points_runs.iter().find(|r| !expired(r)).unwrap();
    assert!(
        !first_dir.exists(),
        "the expired point is unmounted and its dir gone"
    );
    let second_dir = gmt(second);
    assert!(
        second_dir.join("vdb/docs/report.txt").exists(),
        "{second:?}"
    );
    let samba = std::fs::read_to_string(points.join(format!("{}.samba.conf", g.name))).unwrap();
    assert!(samba.contains(&format!("path = {}", second_dir.display())));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(first_dir.to_str().unwrap()),
        "nothing stays mounted at the expired point"
    );
}

#[test]
fn the_daemon_takes_a_point_for_the_schedules_tick_and_its_rules_match_the_tick() {
    let g = Guest::new("sblpd", GuestOpts::default());
    g.wait_for_writes(2);
    let env = Env::new();
    // Backups never fall due in the test; points every minute, kept a day (the rule matches
    // the tick, whenever within the minute the point is taken).
    let config = write_config(
        &env,
        "points",
        &g.name,
        "0 3 1 1 *",
        "  localSnapshots:\n    schedule: '* * * * *'\n    expire:\n      - {match: '* * * * *', after: 1d}\n",
    );
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_snapback"))
        .args(["standalone", "--interval", "1", "--config"])
        .arg(&config)
        .env("SNAPBACK_STATE_DIR", &env.state)
        .env("SNAPBACK_CONNECT", connect_uri())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(env.dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let run = loop {
        let (points, _) = runs(&env);
        if let Some(r) = points.into_iter().find(|r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == BackupPhase::Succeeded)
        }) {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no point taken; daemon log:\n{}",
            std::fs::read_to_string(env.dir.join("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let _ = daemon.kill();
    let _ = daemon.wait();
    let tick: jiff::Timestamp = run.metadata.annotations.as_ref().unwrap()
        ["snapback.dev/scheduled-at"]
        .parse()
        .unwrap();
    assert!(run.metadata.name.as_deref().unwrap().ends_with("-lp"));
    let s = run.status.unwrap();
    assert_eq!(
        s.expires_at,
        Some(tick + jiff::SignedDuration::from_hours(24)),
        "expiry counts from the tick the point answers"
    );
    assert_eq!(snapshots(&g.name).len(), 1);
}
