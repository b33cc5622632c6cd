//! Work on one domain at the same time: a restore as new beside a running backup, an in-place
//! restore refused while a backup runs, and a prune while a backup extends the newest chain.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use snapback::api::{BackupPhase, BackupRun};

/// `snapback backup` in the background, held in its onSnapshot hook for `secs` seconds.
fn spawn_slow_backup(env: &Env, domain: &str, secs: u32) -> Child {
    let hooks = env.dir.join(unique("slow")).with_extension("yaml");
    std::fs::write(
        &hooks,
        format!("onSnapshot:\n- command: [sleep, '{secs}']\n"),
    )
    .unwrap();
    env.spawn(&[
        "backup",
        "--domain",
        domain,
        "--target",
        &env.target,
        "--hooks-file",
        hooks.to_str().unwrap(),
    ])
}

/// Waits until a run is held in its onSnapshot hook (the job has begun).
fn wait_in_snapshot(env: &Env) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs: Vec<BackupRun> = snapback::store::FileStore::new(&env.state)
            .backup_runs()
            .unwrap_or_default();
        if let Some(r) = runs.into_iter().find(|r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == BackupPhase::Snapshotting && s.snapshot_time.is_some())
        }) {
            return r.metadata.name.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the backup never reached its hook"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn finish(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the backup must succeed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_restore_as_new_runs_beside_a_backup_and_an_in_place_restore_is_refused_busy_meanwhile() {
    let g = Guest::new(
        "sbt-conc",
        GuestOpts {
            prefill_mib: 16,
            ..Default::default()
        },
    );
    let env = Env::new();
    let (first, reference) = backup_paused(&env, &g, &[]);
    g.wait_for_writes(g.writes() + 2);

    let child = spawn_slow_backup(&env, &g.name, 30);
    wait_in_snapshot(&env);
    // A new domain from the first point, while the second backup holds its job.
    assert_restores_as_new_byte_exact(&env, &g.name, &["--at", &first], &reference);
    // In place would shut the domain down under the backup job: refused, nothing touched.
    let dir = env.dir.join("inplace");
    std::fs::create_dir_all(&dir).unwrap();
    let out = env.snapback(&[
        "restore",
        "--domain",
        &g.name,
        "--target",
        &env.target,
        "--in-place",
        "--storage-dir",
        dir.to_str().unwrap(),
    ]);
    out.assert_failed_with("Busy");
    assert_eq!(g.state(), "running");
    assert_eq!(g.disk_sources(), vec![g.disk.display().to_string()]);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    finish(child);
}

#[test]
fn a_prune_during_a_backup_deletes_old_chains_only_and_both_finish_sound() {
    let g = Guest::new(
        "sbt-pruneb",
        GuestOpts {
            prefill_mib: 8,
            ..Default::default()
        },
    );
    let env = Env::new();
    // Two chains of a full and an incremental each.
    for _ in 0..4 {
        env.backup(&g.name, &["--max-incrementals", "1"])
            .assert_ok();
        g.wait_for_writes(g.writes() + 2);
    }
    let config = write_config(
        &env,
        "nightly",
        &g.name,
        "0 2 * * *",
        "  retention: {keepLast: 1}\n",
    );

    // The next backup extends the newest chain; prune runs while it is held in its hook.
    let child = spawn_slow_backup(&env, &g.name, 15);
    let running = wait_in_snapshot(&env);
    let out = env.snapback(&["prune", "--config", config.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    finish(child);
    let s = env.read_run(&running).status.unwrap();
    assert_eq!(s.phase, BackupPhase::Succeeded);

    // The old chain is gone; the newest chain, extended by the backup, reads back intact.
    let v = env.verify(&g.name, &["--all"]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert_eq!(
        v.stdout.lines().count(),
        4,
        "a full and two incrementals:\n{}",
        v.stdout
    );
}
