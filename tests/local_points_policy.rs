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
