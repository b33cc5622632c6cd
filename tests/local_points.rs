//! Local restore points on a real libvirtd + qemu: taken from a running writer guest, listed,
//! expired in fake time, reverted to with the guest's RAM, safely with checkpoints present;
//! snapshots snapback did not make are never touched; kill -9 mid-way is finished by a rerun.

mod common;

use std::time::{Duration, Instant};

use common::*;
use snapback::api::{BackupType, FullReason};

fn snapshots(g: &Guest) -> Vec<String> {
    let mut v: Vec<String> = virsh_ok(&["snapshot-list", &g.name, "--name"])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    v.sort();
    v
}

fn take(env: &Env, g: &Guest) -> String {
    env.snapback(&["local", "take", "--domain", &g.name])
        .assert_ok()
}

/// The rows of `snapback local list` (header left out), split on whitespace.
fn list(env: &Env, g: &Guest, extra: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec!["local", "list", "--domain", &g.name];
    args.extend_from_slice(extra);
    let out = env.snapback(&args);
    out.assert_ok();
    out.stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

fn expire(env: &Env, g: &Guest, extra: &[&str]) -> SnapOut {
    let mut args = vec!["local", "expire", "--domain", &g.name];
    args.extend_from_slice(extra);
    env.snapback(&args)
}

fn rfc3339_in(d: Duration) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::try_from(d).unwrap()).to_string()
}

/// Where the guest's output after an operation starts in its serial log: the end of the log
/// before it, plus the log's first bytes to tell an appended log from one QEMU started anew
/// (a revert may start a new QEMU, which truncates the file).
#[derive(Clone)]
struct Mark {
    len: usize,
    head: Vec<u8>,
}

fn mark(g: &Guest) -> Mark {
    let log = std::fs::read(&g.log).unwrap_or_default();
    Mark {
        len: log.len(),
        head: log[..log.len().min(64)].to_vec(),
    }
}

/// The counters the guest printed since `m`.
fn counters_since(g: &Guest, m: &Mark) -> Vec<u64> {
    let log = std::fs::read(&g.log).unwrap_or_default();
    let appended = log.len() >= m.len && log.starts_with(&m.head);
    let new = if appended { &log[m.len..] } else { &log[..] };
    String::from_utf8_lossy(new)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SNAPBACK-WRITER wrote "))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .collect()
}

/// Waits (deadline, not a sleep as synchronisation) until the guest printed `n` counters
/// since `m`; the guest writing again is the proof it runs and is not frozen.
fn wait_counters_since(g: &Guest, m: &Mark, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let c = counters_since(g, m);
        if c.len() >= n {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "guest {} wrote no more after the operation (state {})",
            g.name,
            g.state()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn points_are_taken_listed_and_expired_by_rules_and_count_from_a_running_writer_guest() {
    let g = Guest::new("sbt-lp-take", GuestOpts::default());
    let env = Env::new();
    let names: Vec<String> = (0..3).map(|_| take(&env, &g)).collect();
    let mut distinct = names.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "three different names: {names:?}");
    assert_eq!(snapshots(&g), {
        let mut n = names.clone();
        n.sort();
        n
    });
    assert_eq!(g.state(), "running");
    let at = mark(&g);
    wait_counters_since(&g, &at, 2);

    let rows = list(&env, &g, &["--rule", "* * * * *=1h"]);
    eprintln!("points: {rows:?}");
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (row, name) in rows.iter().zip(&names) {
        assert_eq!(&row[0], name, "oldest first");
        assert_eq!(row[2], "yes", "memory");
        assert_eq!(row[3], "internal");
        assert_eq!(row[4], "yes", "quiesced through the guest agent");
        assert!(row[5].ends_with("ms"), "the pause is measured: {row:?}");
        assert_ne!(row[6], "-", "an expiry shown under the rule");
    }

    // Fake time: in 30 minutes nothing is due; over a count of 2 the oldest goes; in two
    // hours the rest are.
    let out = expire(
        &env,
        &g,
        &[
            "--rule",
            "* * * * *=1h",
            "--now",
            &rfc3339_in(Duration::from_secs(1800)),
        ],
    );
    out.assert_ok();
    assert_eq!(snapshots(&g).len(), 3, "{}", out.stdout);
    let out = expire(
        &env,
        &g,
        &[
            "--rule",
            "* * * * *=1h",
            "--max-count",
            "2",
            "--now",
            &rfc3339_in(Duration::from_secs(1800)),
        ],
    );
    out.assert_ok();
    assert_eq!(
        out.stdout.trim(),
        format!("deleted {} (OverMaxCount)", names[0])
    );
    let out = expire(
        &env,
        &g,
        &[
            "--rule",
            "* * * * *=1h",
            "--now",
            &rfc3339_in(Duration::from_secs(7200)),
        ],
    );
    out.assert_ok();
    assert!(snapshots(&g).is_empty(), "{}", out.stdout);
    assert_eq!(g.state(), "running");
}

#[test]
fn a_snapshot_snapback_did_not_make_is_never_listed_expired_or_reverted_to() {
    let g = Guest::new("sbt-lp-foreign", GuestOpts::default());
    let env = Env::new();
    // One with the style of snapback's names, one without.
    virsh_ok(&["snapshot-create-as", &g.name, "snapback-20200101T000000Z"]);
    virsh_ok(&["snapshot-create-as", &g.name, "before-upgrade", "my own"]);
    let ours = take(&env, &g);

    let rows = list(&env, &g, &[]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][0], ours);
    let out = expire(
        &env,
        &g,
        &[
            "--rule",
            "* * * * *=1h",
            "--now",
            &rfc3339_in(Duration::from_secs(365 * 86400)),
        ],
    );
    out.assert_ok();
    assert_eq!(
        snapshots(&g),
        vec![
            "before-upgrade".to_string(),
            "snapback-20200101T000000Z".to_string()
        ]
    );
    for foreign in ["before-upgrade", "snapback-20200101T000000Z"] {
        let out = env.snapback(&["revert", "--domain", &g.name, "--to", foreign]);
        let msg = out.last_err_line();
        out.assert_failed_with("InvalidSpec");
        assert!(msg.contains("did not make it"), "{msg}");
    }
    assert_eq!(g.state(), "running");
}

#[test]
fn a_revert_with_memory_continues_the_writers_counter_from_the_point() {
    let g = Guest::new("sbt-lp-revert", GuestOpts::default());
    let env = Env::new();
    g.wait_for_writes(3);
    let before = g.writes();
    let point = take(&env, &g);
    let after_take = g.writes();
    // Let the guest run well past the point.
    let at = mark(&g);
    let later = *wait_counters_since(&g, &at, 10).last().unwrap();
    assert!(later >= after_take + 8);

    let at = mark(&g);
    let out = env.snapback(&["revert", "--domain", &g.name, "--to", &point]);
    out.assert_ok();
    eprintln!("{}", out.stderr);
    assert_eq!(g.state(), "running");
    let resumed = wait_counters_since(&g, &at, 3);
    // The counter restarts from the point's value (between what was printed just before
    // and just after the take), not from where the guest had got to.
    assert!(
        resumed[0] + 1 >= before && resumed[0] <= after_take + 1,
        "after the revert the guest counted from {} (point taken between {before} and {after_take}, guest was at {later})",
        resumed[0]
    );
    assert!(resumed.windows(2).all(|w| w[1] == w[0] + 1), "{resumed:?}");
    assert_eq!(snapshots(&g), vec![point], "the point stays after a revert");
}

#[test]
fn a_revert_while_checkpoints_exist_never_kills_the_vm_and_the_next_backup_is_a_full_for_the_revert(
) {
    let g = Guest::new("sbt-lp-cp", GuestOpts::default());
    let env = Env::new();
    env.backup(&g.name, &[]).assert_ok();
    let inc = env.backup(&g.name, &[]).assert_ok();
    assert_eq!(
        env.read_run(&inc).status.unwrap().type_,
        Some(BackupType::Incremental)
    );
    assert!(!g.checkpoints().is_empty());
    let point = take(&env, &g);
    let at = mark(&g);
    wait_counters_since(&g, &at, 3);

    let at = mark(&g);
    let t0 = Instant::now();
    let out = env.snapback(&["revert", "--domain", &g.name, "--to", &point]);
    out.assert_ok();
    eprintln!(
        "revert with checkpoints: {:?} wall; {}",
        t0.elapsed(),
        out.stderr
    );
    assert!(out.stderr.contains("LocalRevert"), "{}", out.stderr);
    assert_eq!(g.state(), "running", "the VM survives the revert");
    assert!(g.checkpoints().is_empty(), "dropped before the revert");
    assert!(
        image_bitmaps(&g.disk).is_empty(),
        "no bitmap left: {:?}",
        image_bitmaps(&g.disk)
    );
    wait_counters_since(&g, &at, 3);

    let (full, reference) = backup_paused(&env, &g, &[]);
    let s = env.read_run(&full).status.unwrap();
    assert_eq!(s.type_, Some(BackupType::Full));
    assert_eq!(s.full_reason, Some(FullReason::LocalRevert));
    assert_restores_as_new_byte_exact(&env, &g.name, &[], &reference);
    // The chain goes on from the new full.
    let next = env.backup(&g.name, &[]).assert_ok();
    assert_eq!(
        env.read_run(&next).status.unwrap().type_,
        Some(BackupType::Incremental)
    );
}

#[test]
fn a_take_killed_after_the_snapshot_was_made_is_finished_by_the_next_run_with_no_stray_point() {
    let g = Guest::new("sbt-lp-crash-take", GuestOpts::default());
    let env = Env::new();
    for at in ["local-take-frozen", "local-take-created"] {
        env.snapback_crash(&["local", "take", "--domain", &g.name], at);
        // Killed with the guest frozen: the next operation on the domain thaws it and
        // deletes the half-taken point, then takes its own.
        let p = take(&env, &g);
        assert_eq!(snapshots(&g), vec![p.clone()], "after a kill at {at}");
        let off = mark(&g);
        wait_counters_since(&g, &off, 2);
        virsh_ok(&["snapshot-delete", &g.name, &p]);
    }
    assert_eq!(g.state(), "running");
}

#[test]
fn a_revert_killed_midway_is_finished_by_rerunning_it_and_the_vm_is_never_harmed() {
    let g = Guest::new("sbt-lp-crash-revert", GuestOpts::default());
    let env = Env::new();
    env.backup(&g.name, &[]).assert_ok();
    let point = take(&env, &g);
    let revert = [
        "revert",
        "--domain",
        g.name.as_str(),
        "--to",
        point.as_str(),
    ];
    for at in [
        "local-revert-recorded",
        "local-revert-checkpoints-dropped",
        "local-revert-loaded",
        "local-revert-reverted",
    ] {
        env.snapback_crash(&revert, at);
        assert_eq!(g.state(), "running", "killed at {at}");
        let off = mark(&g);
        env.snapback(&revert).assert_ok();
        assert_eq!(g.state(), "running");
        wait_counters_since(&g, &off, 3);
        assert!(g.checkpoints().is_empty());
        assert_eq!(snapshots(&g), vec![point.clone()]);
    }
    let full = env.backup(&g.name, &[]).assert_ok();
    assert_eq!(
        env.read_run(&full).status.unwrap().full_reason,
        Some(FullReason::LocalRevert)
    );
}

#[test]
fn an_expiry_killed_between_two_deletions_leaves_whole_points_and_the_rerun_deletes_the_rest() {
    let g = Guest::new("sbt-lp-crash-expire", GuestOpts::default());
    let env = Env::new();
    take(&env, &g);
    take(&env, &g);
    let args = [
        "local".to_string(),
        "expire".into(),
        "--domain".into(),
        g.name.clone(),
        "--rule".into(),
        "* * * * *=1h".into(),
        "--now".into(),
        rfc3339_in(Duration::from_secs(7200)),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.snapback_crash(&args, "local-expire-deleted");
    assert_eq!(list(&env, &g, &[]).len(), 1);
    env.snapback(&args).assert_ok();
    assert!(snapshots(&g).is_empty());
    assert_eq!(g.state(), "running");
}

#[test]
fn a_shut_off_domain_gets_a_point_without_memory_and_a_revert_brings_its_disk_back_shut_off() {
    let g = Guest::new(
        "sbt-lp-off",
        GuestOpts {
            start: false,
            ..Default::default()
        },
    );
    let env = Env::new();
    // A checkpoint's bitmap in the image makes `qemu-img snapshot -a` fail too: the revert
    // drops it first here as well.
    env.backup(&g.name, &[]).assert_ok();
    let point = take(&env, &g);
    let rows = list(&env, &g, &[]);
    assert_eq!(rows[0][2], "no", "no memory: {rows:?}");
    assert_eq!(rows[0][4], "no", "nothing to quiesce");
    let disk = g.disk.to_str().unwrap().to_string();
    let has_pattern = || {
        let o = run(
            "qemu-io",
            &["-r", "-U", "-f", "qcow2", "-c", "read -P 0xab 0 1M", &disk],
        );
        o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("verification failed")
    };
    assert!(!has_pattern());
    // Change the disk while off, then go back.
    run_ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0xab 0 1M", &disk],
    );
    assert!(has_pattern(), "the write is there");
    env.snapback(&["revert", "--domain", &g.name, "--to", &point])
        .assert_ok();
    assert_eq!(g.state(), "shut off");
    assert!(!has_pattern(), "the write after the point is gone");
    assert!(image_bitmaps(&g.disk).is_empty());
}

#[test]
fn a_restore_request_with_source_local_reverts_the_vm_in_place_and_the_next_backup_is_a_full() {
    let g = Guest::new("sbt-lp-rr", GuestOpts::default());
    let env = Env::new();
    g.wait_for_writes(3);
    env.backup(&g.name, &[]).assert_ok();
    let before = g.writes();
    let point = take(&env, &g);
    let after_take = g.writes();
    let at = mark(&g);
    wait_counters_since(&g, &at, 8);

    let config = write_config(&env, "p", &g.name, "0 3 1 1 *", "");
    std::fs::write(
        config.join("revert.yaml"),
        format!(
            "apiVersion: snapback.dev/v1alpha1\nkind: RestoreRequest\nmetadata:\n  name: back\nspec:\n  domain: {}\n  source: Local\n  localPoint: {point}\n  inPlace: true\n",
            g.name
        ),
    )
    .unwrap();
    let at = mark(&g);
    struct Daemon(std::process::Child);
    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _daemon = Daemon(
        std::process::Command::new(env!("CARGO_BIN_EXE_snapback"))
            .args(["standalone", "--interval", "1", "--config"])
            .arg(&config)
            .env("SNAPBACK_STATE_DIR", &env.state)
            .env("SNAPBACK_CONNECT", connect_uri())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(env.dir.join("daemon.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let r = snapback::store::FileStore::new(&env.state)
            .read::<snapback::api::RestoreRequest>("restorerequests", "back")
            .ok();
        if let Some(r) = r.filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_terminal())) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the revert did not finish; daemon log:\n{}",
            std::fs::read_to_string(env.dir.join("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let s = done.status.unwrap();
    assert_eq!(s.phase, snapback::api::RestorePhase::Succeeded, "{s:?}");
    assert_eq!(s.point.unwrap().run, point);
    assert_eq!(g.state(), "running");
    let resumed = wait_counters_since(&g, &at, 3);
    assert!(
        resumed[0] + 1 >= before && resumed[0] <= after_take + 1,
        "the guest counts on from the point ({before}..{after_take}), not from {}",
        resumed[0]
    );
    let full = env.backup(&g.name, &[]).assert_ok();
    let s = env.read_run(&full).status.unwrap();
    assert_eq!(
        (s.type_, s.full_reason),
        (Some(BackupType::Full), Some(FullReason::LocalRevert))
    );
}
