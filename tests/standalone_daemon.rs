//! `snapback standalone` as a daemon on a real libvirt host: it runs a schedule, survives a
//! kill -9 mid-run without losing or duplicating the run, picks up a RestoreRequest added to
//! the config dir, and stops cleanly on SIGTERM.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use snapback::api::{BackupPhase, BackupRun, RestorePhase, RestoreRequest};
use snapback::store::FileStore;

fn start(env: &Env, config: &std::path::Path) -> Child {
    start_with(env, config, &[])
}

fn start_with(env: &Env, config: &std::path::Path, extra: &[(&str, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_snapback"))
        .args(["standalone", "--config"])
        .arg(config)
        .args(["--interval", "1"])
        .env("SNAPBACK_STATE_DIR", &env.state)
        .env("SNAPBACK_CONNECT", connect_uri())
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(env.dir.join("daemon.log"))
                .unwrap(),
        ))
        .spawn()
        .unwrap()
}

fn policy_runs(env: &Env) -> Vec<BackupRun> {
    FileStore::new(&env.state)
        .backup_runs()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.spec.policy_ref.as_deref() == Some("every-minute"))
        .collect()
}

fn wait<T>(env: &Env, what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; daemon log:\n{}",
            std::fs::read_to_string(env.dir.join("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_daemon_runs_its_schedule_survives_a_kill_and_picks_up_a_new_restore_request() {
    let g = Guest::new("sbd-daemon", GuestOpts::default());
    let env = Env::new();
    let cfg = write_config(
        &env,
        "every-minute",
        &g.name,
        "* * * * *",
        "  hooks:\n    onSnapshot:\n    - command: [sleep, '8']\n",
    );
    let mut d = start(&env, &cfg);
    // The first tick comes at the next minute; kill -9 the daemon while its run is mid-way.
    let name = wait(
        &env,
        "the first scheduled run to take its snapshot",
        150,
        || {
            policy_runs(&env)
                .into_iter()
                .find(|r| {
                    r.status.as_ref().is_some_and(|s| {
                        s.phase == BackupPhase::Snapshotting && s.snapshot_time.is_some()
                    })
                })
                .and_then(|r| r.metadata.name)
        },
    );
    d.kill().unwrap();
    d.wait().unwrap();

    let mut d = start(&env, &cfg);
    let done = wait(
        &env,
        "the interrupted run to finish after the restart",
        150,
        || {
            policy_runs(&env)
                .into_iter()
                .find(|r| r.metadata.name.as_deref() == Some(name.as_str()))
                .filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
        },
    );
    let s = done.status.unwrap();
    assert_eq!(s.phase, BackupPhase::Succeeded, "{:?}", s.failure);
    assert_eq!(s.upload_attempts, 1);
    let described = env.snapback(&["describe", "backuprun", &name]);
    assert_eq!(described.code, 0, "{}", described.stderr);
    for want in [
        "Phase:          Succeeded",
        "Phases:",
        "Snapshotting",
        "Uploading",
        "onSnapshot sleep (ok, exit 0",
    ] {
        assert!(
            described.stdout.contains(want),
            "{want} in\n{}",
            described.stdout
        );
    }
    assert!(env.snapback(&["describe", "backuprun", "no-such-run"]).code != 0);
    // One run per tick: names carry the tick, and the killed run was finished under its own
    // name rather than scheduled again under a new one.
    let runs = policy_runs(&env);
    let tick_of = |n: &str| n[n.len() - 13..].to_string();
    let killed_tick = tick_of(&name);
    assert_eq!(
        runs.iter()
            .filter(|r| tick_of(r.metadata.name.as_deref().unwrap()) == killed_tick)
            .count(),
        1
    );

    // A RestoreRequest dropped into the config dir is picked up without a restart.
    let storage = env.dir.join("restored");
    std::fs::create_dir_all(&storage).unwrap();
    let new_name = format!("{}-r", g.name);
    std::fs::write(
        cfg.join("restore.yaml"),
        format!(
            "apiVersion: snapback.dev/v1alpha1\nkind: RestoreRequest\nmetadata: {{name: bring-back}}\nspec:\n  domain: {}\n  targetRef: local\n  newName: {new_name}\n  storageDir: {}\n",
            g.name,
            storage.display()
        ),
    )
    .unwrap();
    let rr: RestoreRequest = wait(&env, "the restore request", 180, || {
        FileStore::new(&env.state)
            .read::<RestoreRequest>("restorerequests", "bring-back")
            .ok()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
    });
    let _ = virsh(&["undefine", &new_name]);
    let rs = rr.status.unwrap();
    assert_eq!(rs.phase, RestorePhase::Succeeded, "{:?}", rs.failure);

    run_ok("kill", &["-TERM", &d.id().to_string()]);
    let code = d.wait().unwrap();
    assert!(code.success(), "SIGTERM stops the daemon cleanly: {code:?}");
    let log = std::fs::read_to_string(env.dir.join("daemon.log")).unwrap();
    assert!(log.contains("config reloaded"), "{log}");
}

/// The daemon's clock, moved by the test: libfaketime reads it from a file on every call.
struct FakeClock(std::path::PathBuf);
impl FakeClock {
    fn set(&self, at: &str) {
        // '@' makes the clock run on from `at`.
        std::fs::write(&self.0, format!("@{at}\n")).unwrap();
    }
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "LD_PRELOAD",
                "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1".into(),
            ),
            ("FAKETIME_TIMESTAMP_FILE", self.0.display().to_string()),
            ("FAKETIME_NO_CACHE", "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ]
    }
}

#[test]
fn the_daemon_loses_and_doubles_no_run_when_its_clock_jumps_back_and_forth() {
    let g = Guest::new("sbd-clock", GuestOpts::default());
    let env = Env::new();
    let cfg = write_config(&env, "nightly", &g.name, "0 2 * * *", "");
    let clock = FakeClock(env.dir.join("clock"));
    clock.set("2026-03-01 01:58:00");
    let mut d = start_with(&env, &cfg, &clock.env());
    let store = FileStore::new(&env.state);
    let policy = || {
        store
            .read::<snapback::api::BackupPolicy>("backuppolicies", "nightly")
            .ok()
            .and_then(|p| p.status)
    };
    let runs = || -> Vec<String> {
        let mut v: Vec<String> = store
            .backup_runs()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.spec.policy_ref.as_deref() == Some("nightly"))
            .filter(|r| {
                r.status
                    .as_ref()
                    .is_some_and(|s| s.phase == BackupPhase::Succeeded)
            })
            .filter_map(|r| r.metadata.name)
            .collect();
        v.sort();
        v
    };
    wait(&env, "the daemon to see the policy", 60, || {
        policy().and_then(|s| s.last_schedule_time)
    });

    // Forward over the 02:00 tick: one run.
    clock.set("2026-03-01 02:00:30");
    wait(&env, "the 02:00 run", 120, || {
        (runs().len() == 1).then_some(())
    });
    // Back before the tick (NTP steps the clock back), then over it again: no second run.
    clock.set("2026-03-01 01:59:50");
    std::thread::sleep(Duration::from_secs(3));
    clock.set("2026-03-01 02:00:40");
    std::thread::sleep(Duration::from_secs(3));
    // Forward two days: the newest tick runs, the one in between is counted as missed.
    clock.set("2026-03-03 02:00:30");
    wait(&env, "the catch-up run", 120, || {
        (runs().len() == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    d.kill().unwrap();
    d.wait().unwrap();

    let names = runs();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].ends_with("20260301-0200"), "{names:?}");
    assert!(names[1].ends_with("20260303-0200"), "{names:?}");
    assert_eq!(policy().unwrap().missed_schedules, 1);
    assert_eq!(
        store.backup_runs().unwrap().len(),
        2,
        "no run was created and left unfinished"
    );
}

/// Names of the policy's runs in the state dir, sorted, with their phases.
fn runs_of(store: &FileStore, policy: &str) -> Vec<(String, BackupPhase)> {
    let mut v: Vec<(String, BackupPhase)> = store
        .backup_runs()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.spec.policy_ref.as_deref() == Some(policy))
        .map(|r| {
            let phase = r.status.map(|s| s.phase).unwrap_or_default();
            (r.metadata.name.unwrap_or_default(), phase)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn the_daemon_skips_a_tick_under_forbid_while_a_run_is_unfinished_and_keeps_the_history_limits() {
    let g = Guest::new("sbd-limits", GuestOpts::default());
    let env = Env::new();
    let cfg = write_config(
        &env,
        "hourly",
        &g.name,
        "0 * * * *",
        "  concurrencyPolicy: Forbid\n  successfulRunsHistoryLimit: 1\n  failedRunsHistoryLimit: 1\n",
    );
    let store = FileStore::new(&env.state);
    let policy = || {
        store
            .read::<snapback::api::BackupPolicy>("backuppolicies", "hourly")
            .ok()
            .and_then(|p| p.status)
    };
    let succeeded = |tick: &str| {
        runs_of(&store, "hourly")
            .iter()
            .any(|(n, p)| n.ends_with(tick) && *p == BackupPhase::Succeeded)
    };
    let clock = FakeClock(env.dir.join("clock"));
    clock.set("2026-03-01 00:58:00");
    let mut d = start_with(&env, &cfg, &clock.env());
    wait(&env, "the daemon to see the policy", 60, || {
        policy().and_then(|s| s.last_schedule_time)
    });
    clock.set("2026-03-01 01:00:30");
    wait(&env, "the 01:00 run (the chain's full)", 180, || {
        succeeded("20260301-0100").then_some(())
    });
    d.kill().unwrap();
    d.wait().unwrap();

    // The 02:00 run dies in Uploading with its daemon, as a kill -9 would leave it.
    clock.set("2026-03-01 02:00:30");
    let mut crash = clock.env();
    crash.push(("SNAPBACK_CRASH_AT", "backup:Uploading".into()));
    let mut d = start_with(&env, &cfg, &crash);
    let status = d.wait().unwrap();
    assert!(!status.success(), "the daemon died at the crash point");
    assert!(runs_of(&store, "hourly")
        .iter()
        .any(|(n, p)| n.ends_with("20260301-0200") && *p == BackupPhase::Uploading));

    // At 03:00 the 02:00 run is still unfinished: Forbid skips the tick and counts it, and
    // the 02:00 run is finished instead.
    clock.set("2026-03-01 03:00:30");
    let mut d = start_with(&env, &cfg, &clock.env());
    wait(&env, "the 02:00 run to be finished", 180, || {
        succeeded("20260301-0200").then_some(())
    });
    assert_eq!(
        policy().unwrap().missed_schedules,
        1,
        "the 03:00 tick is missed"
    );
    assert!(
        !runs_of(&store, "hourly")
            .iter()
            .any(|(n, _)| n.ends_with("20260301-0300")),
        "no run for the 03:00 tick"
    );

    // At 04:00 a run succeeds; with a history of one, the 02:00 run goes. The 01:00 run stays:
    // it holds the full of the newest run's chain.
    clock.set("2026-03-01 04:00:30");
    wait(
        &env,
        "the history limit to remove the 02:00 run",
        180,
        || {
            let names: Vec<String> = runs_of(&store, "hourly")
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            (names.len() == 2 && names[1].ends_with("20260301-0400") && succeeded("20260301-0400"))
                .then_some(names)
        },
    );
    d.kill().unwrap();
    d.wait().unwrap();
    let names: Vec<String> = runs_of(&store, "hourly")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names[0].ends_with("20260301-0100"), "{names:?}");
    assert_eq!(
        env.verify(&g.name, &["--all"]).code,
        0,
        "every kept point reads back"
    );
}

/// The named run's `Verified` condition (status, reason) and the tick it last answered.
fn verified(store: &FileStore, run: &str) -> Option<(String, String, Option<String>)> {
    let s = store.read::<BackupRun>("backupruns", run).ok()?.status?;
    let c = s.conditions.into_iter().find(|c| c.type_ == "Verified")?;
    Some((
        c.status,
        c.reason,
        s.last_verify_tick.map(|t| t.to_string()),
    ))
}

#[test]
fn the_daemon_verifies_on_its_verify_schedule_and_marks_a_damaged_point_on_its_run() {
    let g = Guest::new("sbd-verify", GuestOpts::default());
    let env = Env::new();
    let cfg = write_config(
        &env,
        "nightly",
        &g.name,
        "0 2 * * *",
        "  verify:\n    schedule: '0 * * * *'\n",
    );
    let clock = FakeClock(env.dir.join("clock"));
    clock.set("2026-03-01 01:58:00");
    let mut d = start_with(&env, &cfg, &clock.env());
    let store = FileStore::new(&env.state);
    let run = "nightly-".to_string();
    let the_run = || -> Option<String> {
        store
            .backup_runs()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.spec.policy_ref.as_deref() == Some("nightly"))
            .find(|r| {
                r.status
                    .as_ref()
                    .is_some_and(|s| s.phase == BackupPhase::Succeeded)
            })
            .and_then(|r| r.metadata.name)
    };
    wait(&env, "the daemon to see the policy", 60, || {
        store
            .read::<snapback::api::BackupPolicy>("backuppolicies", "nightly")
            .ok()
            .and_then(|p| p.status)
            .and_then(|s| s.last_schedule_time)
    });
    clock.set("2026-03-01 02:00:30");
    let name = wait(&env, "the 02:00 run", 120, the_run);
    assert!(name.starts_with(&run), "{name}");
    // The 02:00 verify tick came before the run finished: nothing is owed for it.
    assert_eq!(verified(&store, &name), None);

    clock.set("2026-03-01 03:00:30");
    let v = wait(&env, "the 03:00 verify", 120, || verified(&store, &name));
    assert_eq!(
        v,
        (
            "True".into(),
            "ReadBackOK".into(),
            Some("2026-03-01T03:00:00Z".into())
        )
    );

    // Damage the full's first volume on the target: the 04:00 verify finds it.
    let dir = env
        .target_dir
        .join(snapback::catalog::layout::domain_dir(&g.name));
    let vol = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with("duplicity-full.") && n.contains(".vol1.")
        })
        .expect("the full's first volume");
    let len = std::fs::metadata(&vol).unwrap().len();
    let mut bytes = std::fs::read(&vol).unwrap();
    for b in &mut bytes[(len / 2) as usize..][..4096] {
        *b ^= 0x5a;
    }
    std::fs::write(&vol, bytes).unwrap();
    clock.set("2026-03-01 04:00:30");
    let v = wait(&env, "the 04:00 verify", 120, || {
        verified(&store, &name).filter(|v| v.2.as_deref() == Some("2026-03-01T04:00:00Z"))
    });
    let message = store
        .read::<BackupRun>("backupruns", &name)
        .unwrap()
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Verified")
        .unwrap()
        .message;
    assert_eq!(
        (v.0.as_str(), v.1.as_str()),
        ("False", "VerificationFailed"),
        "{message}"
    );
    d.kill().unwrap();
    d.wait().unwrap();
    let log = std::fs::read_to_string(env.dir.join("daemon.log")).unwrap();
    assert!(log.contains("1 broken"), "{log}");
}

/// A raw copy of a raw file or block device as it is now.
fn raw_copy(env: &Env, disk: &std::path::Path) -> std::path::PathBuf {
    let copy = env.dir.join(unique("ref"));
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-f",
            "raw",
            "-O",
            "raw",
            disk.to_str().unwrap(),
            copy.to_str().unwrap(),
        ],
    );
    copy
}

#[test]
fn the_daemon_backs_up_a_domain_on_a_raw_file_and_a_block_device_whole_and_it_restores_byte_exact()
{
    use snapback::api::{BackupType, FullReason};
    let env = Env::new();
    let raw = env.dir.join("vda.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(128 * MIB)
        .unwrap();
    let lo = LoopDevice::new(&env.dir.join("vdb.img"), 32);
    run_ok(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", lo.dev.display()),
            "bs=1M",
            "seek=3",
            "count=4",
            "conv=notrunc,fsync",
            "status=none",
        ],
    );
    let g = Guest::new(
        "sbd-raw",
        GuestOpts {
            own_disk: Some(raw.clone()),
            extra_disks: vec![lo.dev.clone()],
            ..Default::default()
        },
    );
    let cfg = write_config(&env, "nightly", &g.name, "0 2 * * *", "");
    let clock = FakeClock(env.dir.join("clock"));
    clock.set("2026-03-01 01:58:00");
    let mut d = start_with(&env, &cfg, &clock.env());
    let store = FileStore::new(&env.state);
    wait(&env, "the daemon to see the policy", 60, || {
        store
            .read::<snapback::api::BackupPolicy>("backuppolicies", "nightly")
            .ok()
            .and_then(|p| p.status)
            .and_then(|s| s.last_schedule_time)
    });

    // Paused from before the tick until the run is over: the copies are what it backs up.
    let w = g.writes();
    g.wait_for_writes(w + 2);
    virsh_ok(&["suspend", &g.name]);
    let refs = [raw_copy(&env, &raw), raw_copy(&env, &lo.dev)];
    clock.set("2026-03-01 02:00:30");
    let run = wait(&env, "the 02:00 run", 180, || {
        store
            .backup_runs()
            .unwrap_or_default()
            .into_iter()
            .find(|r| r.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
    });
    virsh_ok(&["resume", &g.name]);
    let s = run.status.unwrap();
    assert_eq!(s.phase, BackupPhase::Succeeded, "{:?}", s.failure);
    assert_eq!(s.type_, Some(BackupType::Full));
    assert_eq!(s.full_reason, Some(FullReason::NoBitmapSupport));
    for disk in &s.disks {
        assert_eq!(
            disk.full_reason,
            Some(FullReason::NoBitmapSupport),
            "{}",
            disk.name
        );
    }
    assert!(g.checkpoints().is_empty(), "no disk can hold a bitmap");
    let vda = &s.disks[0];
    assert!(
        vda.export_bytes < vda.virtual_size / 2,
        "the raw file's zeros are not stored: {} of {}",
        vda.export_bytes,
        vda.virtual_size
    );

    // A RestoreRequest through the daemon: each disk comes back as a raw file, byte-exact.
    let storage = env.dir.join("restored");
    std::fs::create_dir_all(&storage).unwrap();
    let new_name = format!("{}-r", g.name);
    let _cleanup = Defined(new_name.clone());
    std::fs::write(
        cfg.join("restore.yaml"),
        format!(
            "apiVersion: snapback.dev/v1alpha1\nkind: RestoreRequest\nmetadata: {{name: bring-back}}\nspec:\n  domain: {}\n  targetRef: local\n  newName: {new_name}\n  storageDir: {}\n",
            g.name,
            storage.display()
        ),
    )
    .unwrap();
    let rr: RestoreRequest = wait(&env, "the restore request", 180, || {
        store
            .read::<RestoreRequest>("restorerequests", "bring-back")
            .ok()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
    });
    let rs = rr.status.unwrap();
    assert_eq!(rs.phase, RestorePhase::Succeeded, "{:?}", rs.failure);
    for (disk, reference) in rs.disks.iter().zip(&refs) {
        assert!(disk.path.ends_with(".raw"), "{}", disk.path);
        run_ok(
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                reference.to_str().unwrap(),
                &disk.path,
            ],
        );
    }
    d.kill().unwrap();
    d.wait().unwrap();
}

/// Starts the daemon for `policy` at its 02:00 tick with runs held at the export's pause
/// point and `limits` as environment (`SNAPBACK_MAX_CONCURRENT_RUNS`, ...); waits until
/// `held` runs are held there and the others wait with `reason`; returns the daemon, the
/// pause marker and the runs as they were then.
fn hold_at_two(
    env: &Env,
    cfg: &std::path::Path,
    policy: &str,
    limits: &[(&'static str, String)],
    held: usize,
    waiting: usize,
    reason: &str,
) -> (Child, std::path::PathBuf, Vec<BackupRun>) {
    let store = FileStore::new(&env.state);
    let clock = FakeClock(env.dir.join("clock"));
    clock.set("2026-03-01 01:58:00");
    let marker = env.dir.join("paused");
    let mut vars = clock.env();
    vars.push(("SNAPBACK_PAUSE_AT", "backup:exporting:job-running".into()));
    vars.push(("SNAPBACK_PAUSE_FILE", marker.display().to_string()));
    vars.extend(limits.iter().cloned());
    let d = start_with(env, cfg, &vars);
    wait(env, "the daemon to see the policy", 60, || {
        store
            .read::<snapback::api::BackupPolicy>("backuppolicies", policy)
            .ok()
            .and_then(|p| p.status)
            .and_then(|s| s.last_schedule_time)
    });
    clock.set("2026-03-01 02:00:30");
    let runs = wait(
        env,
        "the admitted runs held and the others waiting",
        180,
        || {
            let runs: Vec<BackupRun> = store.backup_runs().unwrap_or_default();
            let exporting = runs
                .iter()
                .filter(|r| {
                    r.status
                        .as_ref()
                        .is_some_and(|s| s.phase == BackupPhase::Exporting)
                })
                .count();
            let waits = runs
                .iter()
                .filter(|r| {
                    r.status
                        .as_ref()
                        .is_some_and(|s| s.phase == BackupPhase::Pending)
                        && admitted(r) == Some(("False".into(), reason.into()))
                })
                .count();
            (marker.exists() && exporting == held && waits == waiting).then_some(runs)
        },
    );
    assert_eq!(runs.len(), held + waiting, "one run per domain at the tick");
    (d, marker, runs)
}

/// Lets every held run go (each later run is held at the same point in turn) until all
/// runs are finished; returns them.
fn release_all(env: &Env, marker: &std::path::Path, count: usize) -> Vec<BackupRun> {
    let store = FileStore::new(&env.state);
    wait(env, "every run to finish", 300, || {
        let _ = std::fs::remove_file(marker);
        let runs: Vec<BackupRun> = store.backup_runs().unwrap_or_default();
        let done = runs
            .iter()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
            .count();
        (runs.len() == count && done == count).then_some(runs)
    })
}

fn stop(mut d: Child) {
    run_ok("kill", &["-TERM", &d.id().to_string()]);
    assert!(
        d.wait().unwrap().success(),
        "SIGTERM stops the daemon cleanly"
    );
}

#[test]
fn the_daemon_runs_at_most_its_limit_at_once_and_the_others_wait_for_a_slot() {
    let guests: Vec<Guest> = (0..3)
        .map(|_| Guest::new("sbd-slots", GuestOpts::default()))
        .collect();
    let env = Env::new();
    let names: Vec<&str> = guests.iter().map(|g| g.name.as_str()).collect();
    let cfg = write_config(&env, "nightly", &names.join("', '"), "0 2 * * *", "");
    let (d, marker, held) = hold_at_two(
        &env,
        &cfg,
        "nightly",
        &[("SNAPBACK_MAX_CONCURRENT_RUNS", "2".into())],
        2,
        1,
        "WaitingForSlot",
    );
    let waiting = held
        .iter()
        .find(|r| r.status.as_ref().unwrap().phase == BackupPhase::Pending)
        .unwrap()
        .metadata
        .name
        .clone()
        .unwrap();
    let described = env.snapback(&["describe", "backuprun", &waiting]);
    assert!(
        described.stdout.contains("WaitingForSlot")
            && described.stdout.contains("2 of 2 runs in flight"),
        "{}",
        described.stdout
    );

    let runs = release_all(&env, &marker, 3);
    stop(d);
    for r in &runs {
        let s = r.status.as_ref().unwrap();
        assert_eq!(s.phase, BackupPhase::Succeeded, "{:?}", s.failure);
        assert_eq!(admitted(r), Some(("True".into(), "Admitted".into())));
    }
    assert_eq!(most_at_once(&runs), 2, "never more than the limit at once");
    assert!(env.staging_files().is_empty(), "{:?}", env.staging_files());
}

#[test]
fn a_run_that_would_not_fit_the_staging_budget_waits_and_starts_when_space_frees() {
    // 32 MiB of data in each disk: one run's export needs about that, two need twice.
    let opts = GuestOpts {
        prefill_mib: 32,
        ..GuestOpts::default()
    };
    let guests: Vec<Guest> = (0..2)
        .map(|_| Guest::new("sbd-budget", opts.clone()))
        .collect();
    let budget = budget_for_one(&guests);
    let env = Env::new();
    let names: Vec<&str> = guests.iter().map(|g| g.name.as_str()).collect();
    let cfg = write_config(&env, "nightly", &names.join("', '"), "0 2 * * *", "");
    let (d, marker, _) = hold_at_two(
        &env,
        &cfg,
        "nightly",
        &[
            ("SNAPBACK_MAX_CONCURRENT_RUNS", "4".into()),
            ("SNAPBACK_STAGING_BUDGET", budget.to_string()),
        ],
        1,
        1,
        "WaitingForStaging",
    );
    let runs = release_all(&env, &marker, 2);
    stop(d);
    for r in &runs {
        let s = r.status.as_ref().unwrap();
        assert_eq!(s.phase, BackupPhase::Succeeded, "{:?}", s.failure);
        assert_eq!(admitted(r), Some(("True".into(), "Admitted".into())));
    }
    assert_eq!(most_at_once(&runs), 1, "one at a time within the budget");
    let log = std::fs::read_to_string(env.dir.join("daemon.log")).unwrap();
    assert!(
        log.contains("WaitingForStaging: waiting for staging space"),
        "{log}"
    );
}

#[test]
fn once_drives_every_selected_domain_within_the_limit_and_prints_each_result() {
    let guests: Vec<Guest> = (0..3)
        .map(|_| Guest::new("sbd-once", GuestOpts::default()))
        .collect();
    let env = Env::new();
    let names: Vec<&str> = guests.iter().map(|g| g.name.as_str()).collect();
    let cfg = write_config(&env, "adhoc", &names.join("', '"), "0 2 * * *", "");
    let marker = env.dir.join("paused");
    let table = env.dir.join("once.out");
    let mut once = Command::new(env!("CARGO_BIN_EXE_snapback"))
        .args(["standalone", "--config"])
        .arg(&cfg)
        .arg("--once")
        .env("SNAPBACK_STATE_DIR", &env.state)
        .env("SNAPBACK_CONNECT", connect_uri())
        .env("SNAPBACK_MAX_CONCURRENT_RUNS", "2")
        .env("SNAPBACK_PAUSE_AT", "backup:exporting:job-running")
        .env("SNAPBACK_PAUSE_FILE", &marker)
        .stdout(Stdio::from(std::fs::File::create(&table).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(env.dir.join("once.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let store = FileStore::new(&env.state);
    // Held in the export: two runs at once, the third waiting for a slot.
    wait(&env, "two runs held and one waiting", 180, || {
        let runs: Vec<BackupRun> = store.backup_runs().unwrap_or_default();
        let phase = |p: BackupPhase| {
            runs.iter()
                .filter(|r| r.status.as_ref().is_some_and(|s| s.phase == p))
                .count()
        };
        let waiting = runs
            .iter()
            .filter(|r| admitted(r) == Some(("False".into(), "WaitingForSlot".into())))
            .count();
        (marker.exists() && phase(BackupPhase::Exporting) == 2 && waiting == 1).then_some(())
    });
    let runs = release_all(&env, &marker, 3);
    assert!(once.wait().unwrap().success(), "every run succeeded");
    for r in &runs {
        let s = r.status.as_ref().unwrap();
        assert_eq!(s.phase, BackupPhase::Succeeded, "{:?}", s.failure);
    }
    assert_eq!(most_at_once(&runs), 2, "never more than the limit at once");
    let out = std::fs::read_to_string(&table).unwrap();
    for g in &guests {
        let row = out
            .lines()
            .find(|l| l.contains(&g.name))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(row.contains("adhoc") && row.contains("Succeeded"), "{out}");
    }
}
