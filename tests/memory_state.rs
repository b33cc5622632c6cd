//! RAM state with remote backups: `snapback backup --memory` saves the running guest's memory
//! and device state as one more file of the point, at the disks' instant, and `restore
//! --resume` brings a copy back running from it on the restored disks. Real libvirt and qemu:
//! the writer guest prints its counter on its serial log, so a resumed copy is seen going on
//! from the backup's count where a booted one would start again at 0.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// The counter values a guest printed on a serial log, in order.
fn counts(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SNAPBACK-WRITER wrote "))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .collect()
}

/// Polls a serial log until it holds `n` counts (deadline, not timing: the guest prints one
/// every few hundred milliseconds).
fn wait_counts(log: &Path, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let c = counts(log);
        if c.len() >= n {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{} printed {c:?} only",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The file a domain's serial port writes to (a restored copy gets its own).
fn serial_log(domain: &str) -> PathBuf {
    let xml = virsh_ok(&["dumpxml", domain]);
    let serial = xml
        .split("<serial type='file'>")
        .nth(1)
        .expect("a file serial");
    let path = serial
        .split("path='")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("its path");
    PathBuf::from(path)
}

fn snapshots(domain: &str) -> Vec<String> {
    virsh_ok(&["snapshot-list", domain, "--name"])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Every memory state file under the state dir (staging, restore work dirs).
fn memory_files(env: &Env) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![env.state.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains(".memory.state") {
                out.push(p);
            }
        }
    }
    out
}

fn run_names(env: &Env) -> Vec<String> {
    std::fs::read_dir(env.state.join("backupruns"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_suffix(".yaml")
                .map(String::from)
        })
        .collect()
}

/// A backup with `--memory` of the running writer: the run records the state file and the
/// guest's downtime, and leaves the guest running, no snapshot record and empty staging.
/// Answers the run's name and the range the guest's next count was in at the backup's instant.
fn backup_with_memory(env: &Env, g: &Guest, extra: &[&str]) -> (String, u64, u64) {
    let before = g.writes();
    let mut args = vec!["--memory"];
    args.extend_from_slice(extra);
    let run = env.backup(&g.name, &args).assert_ok();
    let after = g.writes();
    let s = env.read_run(&run).status.unwrap();
    let mem = s
        .memory_state
        .as_ref()
        .expect("the run saved the memory state");
    assert!(
        mem.bytes > 0 && mem.file.ends_with(".memory.state"),
        "{mem:?}"
    );
    let paused = s.paused_seconds.expect("the guest's downtime is recorded");
    assert!(paused > 0.0, "{paused}");
    assert!(!s.guest_paused && !s.guest_frozen && !s.memory_pending);
    assert_eq!(g.state(), "running");
    assert!(snapshots(&g.name).is_empty(), "no snapshot record is kept");
    assert_left_clean(g, env, true, &[s.checkpoint.clone().unwrap()]);
    (run, before, after)
}

/// `restore --as COPY --resume` of a run; answers the copy's serial log.
fn restore_resumed(env: &Env, domain: &str, run: &str, copy: &str) -> PathBuf {
    let storage = env.dir.join(unique("storage"));
    std::fs::create_dir_all(&storage).unwrap();
    let out = env.snapback(&[
        "restore",
        "--domain",
        domain,
        "--target",
        &env.target,
        "--at",
        run,
        "--as",
        copy,
        "--storage-dir",
        storage.to_str().unwrap(),
        "--resume",
    ]);
    out.assert_ok();
    assert_eq!(
        virsh_ok(&["domstate", copy]).trim(),
        "running",
        "the copy runs"
    );
    let disks = virsh_ok(&["domblklist", copy]);
    assert!(
        disks.contains(
            &storage
                .join(format!("{copy}-vda.qcow2"))
                .display()
                .to_string()
        ),
        "the copy runs on its restored disk: {disks}"
    );
    assert!(memory_files(env).is_empty(), "{:?}", memory_files(env));
    serial_log(copy)
}

/// The copy's first count lies in the range the original's next count was in during the
/// backup (a booted guest would start again at 0), and it goes on counting.
#[track_caller]
fn assert_goes_on_from(log: &Path, before: u64, after: u64) {
    let c = wait_counts(log, 2);
    assert!(
        before >= 3,
        "the guest must have counted before the backup: {before}"
    );
    assert!(
        c[0] + 1 >= before && c[0] <= after,
        "the resumed copy must go on from the backup's count ({before}..={after}), printed {c:?}"
    );
    assert!(
        c.windows(2).all(|w| w[1] == w[0] + 1),
        "it counts on: {c:?}"
    );
}

#[test]
fn a_backup_with_memory_restored_with_resume_goes_on_from_the_backups_count_on_the_restored_disks()
{
    let env = Env::new();
    let g = Guest::new("mem", GuestOpts::default());
    g.wait_for_writes(4);
    let (full, before, after) = backup_with_memory(&env, &g, &[]);
    let copy = format!("{}-r", g.name);
    let _defined = Defined(copy.clone());
    let log = restore_resumed(&env, &g.name, &full, &copy);
    assert_goes_on_from(&log, before, after);
    assert_ne!(log, g.log, "the copy writes a serial log of its own");
    // The original runs on, on its own disk.
    assert_eq!(g.state(), "running");
    assert_eq!(g.disk_sources(), vec![g.disk.display().to_string()]);
    let _ = virsh(&["destroy", &copy]);

    // An incremental with memory: a state file of its own, of its own instant.
    g.wait_for_writes(after + 3);
    let (inc, before, after) = backup_with_memory(&env, &g, &[]);
    let s = env.read_run(&inc).status.unwrap();
    assert_eq!(s.type_, Some(snapback::api::BackupType::Incremental));
    let first = env.read_run(&full).status.unwrap().memory_state.unwrap();
    assert_ne!(s.memory_state.as_ref().unwrap().file, first.file);
    let copy2 = format!("{}-r2", g.name);
    let _defined2 = Defined(copy2.clone());
    let log = restore_resumed(&env, &g.name, &inc, &copy2);
    assert_goes_on_from(&log, before, after);
}

#[test]
fn a_kill_while_the_memory_is_captured_leaves_the_guest_running_on_its_disks_and_nothing_behind() {
    let env = Env::new();
    let g = Guest::new("memkill", GuestOpts::default());
    g.wait_for_writes(3);
    for point in [
        "backup:snapshotting:memory-job-done",
        "backup:snapshotting:memory-saved",
    ] {
        let known = run_names(&env);
        env.backup_with_crash(&g.name, &["--memory"], point);
        let killed: Vec<String> = run_names(&env)
            .into_iter()
            .filter(|r| !known.contains(r))
            .collect();
        assert_eq!(killed.len(), 1, "{point}: {killed:?}");
        let killed = killed[0].clone();
        assert_eq!(g.state(), "paused", "{point}: killed with the guest paused");
        // The next backup of the domain gives the guest back first and fails the killed run:
        // the disks' instant is gone, and with it the memory that matched them.
        let (run, _, _) = backup_with_memory(&env, &g, &[]);
        let dead = env.read_run(&killed);
        let s = dead.status.unwrap();
        assert_eq!(
            s.failure.as_ref().map(|f| f.reason),
            Some(snapback::api::FailureReason::Interrupted),
            "{point}: {:?}",
            s.failure
        );
        assert!(!s.guest_paused && !s.memory_pending, "{point}");
        assert!(
            memory_files(&env).is_empty(),
            "{point}: {:?}",
            memory_files(&env)
        );
        assert!(snapshots(&g.name).is_empty(), "{point}");
        let cp = env.read_run(&run).status.unwrap().checkpoint.unwrap();
        assert_left_clean(&g, &env, true, &[cp]);
        let n = g.writes();
        g.wait_for_writes(n + 2);
    }
}

#[test]
fn a_backup_without_memory_saves_none_and_cannot_be_resumed() {
    let env = Env::new();
    let g = Guest::new("nomem", GuestOpts::default());
    let run = env.backup(&g.name, &[]).assert_ok();
    let s = env.read_run(&run).status.unwrap();
    assert!(s.memory_state.is_none() && s.paused_seconds.is_none());
    assert!(memory_files(&env).is_empty());
    let manifest = env
        .target_files_of(&g.name)
        .into_iter()
        .filter(|f| f.contains(".memory."))
        .count();
    assert_eq!(manifest, 0);
    let storage = env.dir.join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    let copy = format!("{}-r", g.name);
    let _defined = Defined(copy.clone());
    let out = env.snapback(&[
        "restore",
        "--domain",
        &g.name,
        "--target",
        &env.target,
        "--as",
        &copy,
        "--storage-dir",
        storage.to_str().unwrap(),
        "--resume",
    ]);
    out.assert_failed_with("InvalidSpec");
    assert!(out.stderr.contains("no memory state"), "{}", out.stderr);
    let state = virsh(&["domstate", &copy]);
    assert!(
        !state.status.success() || !String::from_utf8_lossy(&state.stdout).contains("running"),
        "a restore refused for resume starts nothing"
    );
}

#[test]
fn an_in_place_restore_with_resume_brings_the_domain_back_to_the_backups_count() {
    let env = Env::new();
    let g = Guest::new("meminplace", GuestOpts::default());
    g.wait_for_writes(4);
    let (run, before, after) = backup_with_memory(&env, &g, &[]);
    // The guest counts on past the backup before it is put back.
    g.wait_for_writes(after + 5);
    let old_log = std::fs::read_to_string(&g.log).unwrap_or_default();
    let out = env.snapback(&[
        "restore",
        "--domain",
        &g.name,
        "--target",
        &env.target,
        "--at",
        &run,
        "--in-place",
        "--resume",
        "--shutdown-timeout",
        "5",
    ]);
    out.assert_ok();
    assert_eq!(g.state(), "running");
    // The serial log is the domain's own file: what the resumed guest printed is what
    // follows the old content (or the whole file, had it been started afresh).
    let deadline = Instant::now() + Duration::from_secs(90);
    let printed = loop {
        let now = std::fs::read_to_string(&g.log).unwrap_or_default();
        let new = now
            .strip_prefix(old_log.as_str())
            .unwrap_or(&now)
            .to_string();
        let c: Vec<u64> = new
            .lines()
            .filter_map(|l| l.trim().strip_prefix("SNAPBACK-WRITER wrote "))
            .filter_map(|n| n.trim().parse().ok())
            .collect();
        if c.len() >= 2 {
            break c;
        }
        assert!(Instant::now() < deadline, "the resumed guest printed {c:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        printed[0] + 1 >= before && printed[0] <= after,
        "in place, the guest goes on from the backup's count ({before}..={after}): {printed:?}"
    );
    assert!(memory_files(&env).is_empty());
}
