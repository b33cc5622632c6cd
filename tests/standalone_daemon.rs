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
    Command::new(env!("CARGO_BIN_EXE_snapback"))
        .args(["standalone", "--config"])
        .arg(config)
        .args(["--interval", "1"])
        .env("SNAPBACK_STATE_DIR", &env.state)
        .env("SNAPBACK_CONNECT", connect_uri())
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
    let cfg = env.dir.join("config");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("target.yaml"),
        format!(
            "apiVersion: snapback.dev/v1alpha1\nkind: BackupTarget\nmetadata: {{name: local}}\nspec: {{url: '{}'}}\n",
            env.target
        ),
    )
    .unwrap();
    std::fs::write(
        cfg.join("policy.yaml"),
        format!(
            "apiVersion: snapback.dev/v1alpha1\nkind: BackupPolicy\nmetadata: {{name: every-minute}}\nspec:\n  domainSelector: {{names: [{}]}}\n  targetRef: local\n  schedule: '* * * * *'\n  hooks:\n    onSnapshot:\n    - command: [sleep, '8']\n",
            g.name
        ),
    )
    .unwrap();

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
