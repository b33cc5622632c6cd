//! Bad input, failures, interruptions and hooks: whatever happens, the domain is left as it
//! was found and earlier backups stay intact.

mod common;

use std::time::{Duration, Instant};

use common::*;
use snapback::api::{BackupPhase, BackupType, FailureReason, FullReason};

#[test]
fn bad_input_gets_a_clear_reason_and_leaves_the_domain_untouched() {
    let g = Guest::new("sbt-bad", GuestOpts::default());
    let mut env = Env::new();
    env.backup("no-such-domain-snapback", &[])
        .assert_failed_with("DomainNotFound");

    let marker = env.dir.join("pwned");
    let hostile = format!(
        "x; touch {} #$(touch {})`touch {}`",
        marker.display(),
        marker.display(),
        marker.display()
    );
    env.backup(&hostile, &[])
        .assert_failed_with("DomainNotFound");
    assert!(!marker.exists(), "a domain name must never reach a shell");

    let good_target = env.target.clone();
    for bad in ["/just/a/path", "gopher://host/x", "file://relative/path"] {
        env.target = bad.into();
        env.backup(&g.name, &[]).assert_failed_with("TargetInvalid");
    }
    env.target = "boto3+s3://snapback-test/x".into();
    env.extra_env.push(("AWS_ACCESS_KEY_ID".into(), "k".into()));
    env.extra_env
        .push(("AWS_SECRET_ACCESS_KEY".into(), "s".into()));
    env.backup(
        &g.name,
        &[
            "--s3-endpoint-url",
            "http://127.0.0.1:1",
            "--num-retries",
            "1",
        ],
    )
    .assert_failed_with("TargetUnreachable");
    env.target = good_target;
    env.backup(&g.name, &["--encrypt-passphrase-file", "/nonexistent"])
        .assert_failed_with("EncryptionKeyError");
    env.backup(&g.name, &["--full-every", "7x"])
        .assert_failed_with("InvalidSpec");

    assert_left_clean(&g, &env, true, &[]);
    assert!(env.target_files().is_empty());
    // Every attempt is recorded with its reason.
    let table = env.snapback(&["get", "backupruns"]).stdout;
    assert!(
        table.contains("Failed (TargetUnreachable)") && table.contains("Failed (DomainNotFound)"),
        "{table}"
    );
}

#[test]
fn a_domain_named_with_shell_metacharacters_is_backed_up_like_any_other() {
    let env = Env::new();
    // libvirt refuses '/' in names, so the would-be marker is relative to snapback's cwd.
    let name = format!(
        "{}-$(touch sb-pwned);`touch sb-pwned2`&|>x",
        unique("sbt meta")
    );
    let g = Guest::named(&name, GuestOpts::default());
    let run = env.backup(&g.name, &[]).assert_ok();
    assert!(
        run.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "{run}"
    );
    let cwd = std::env::current_dir().unwrap();
    assert!(
        !cwd.join("sb-pwned").exists()
            && !cwd.join("sb-pwned2").exists()
            && !cwd.join("x").exists()
    );
    assert_left_clean(
        &g,
        &env,
        true,
        &[env.read_run(&run).status.unwrap().checkpoint.unwrap()],
    );
}

#[test]
fn a_shut_off_domain_is_exported_from_its_files_or_skipped_when_asked() {
    let g = Guest::new(
        "sbt-off",
        GuestOpts {
            prefill_mib: 32,
            start: false,
            ..Default::default()
        },
    );
    let env = Env::new();
    let name = env.backup(&g.name, &[]).assert_ok();
    let s = env.read_run(&name).status.unwrap();
    assert!(!s.online);
    assert_eq!(
        (s.type_, s.full_reason),
        (Some(BackupType::Full), Some(FullReason::DomainShutOff))
    );
    assert_eq!(
        s.checkpoint, None,
        "no checkpoint can be made on a shut-off domain"
    );
    assert_eq!(g.state(), "shut off", "the domain is not started");

    let (ok, dir, log) = env.duplicity_restore(&g.name, None, &["--no-encryption"], &[]);
    assert!(ok, "{log}");
    let export = dir.join(&s.disks[0].export_file);
    run_ok(
        "qemu-img",
        &[
            "compare",
            g.disk.to_str().unwrap(),
            export.to_str().unwrap(),
        ],
    );

    let skipped = env.backup(&g.name, &["--offline", "skip"]);
    let sname = skipped.assert_ok();
    assert!(
        skipped
            .last_err_line()
            .starts_with("Skipped: DomainShutOff"),
        "{}",
        skipped.stderr
    );
    let ss = env.read_run(&sname).status.unwrap();
    assert_eq!(ss.phase, BackupPhase::Skipped);
    assert_eq!(ss.failure.unwrap().reason, FailureReason::DomainShutOff);
    assert_left_clean(&g, &env, false, &[]);
}

#[test]
fn depth_limits_a_shut_off_export_to_the_top_of_the_backing_chain() {
    let env = Env::new();
    let g = Guest::new(
        "sbt-depth",
        GuestOpts {
            prefill_mib: 16,
            start: false,
            ..Default::default()
        },
    );
    // Turn the disk into base <- top, with new data only in top.
    let base = g.dir.join("base.qcow2");
    std::fs::rename(&g.disk, &base).unwrap();
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            g.disk.to_str().unwrap(),
        ],
    );
    run_ok(
        "qemu-io",
        &["-c", "write -P 0x5a 1M 1M", g.disk.to_str().unwrap()],
    );

    let top_only = env.backup(&g.name, &["--depth", "1"]).assert_ok();
    let s = env.read_run(&top_only).status.unwrap();
    assert!(
        s.size_bytes < 8 << 20,
        "only the top image's data: {}",
        s.size_bytes
    );
    let whole = env.backup(&g.name, &["--depth", "0"]).assert_ok();
    let w = env.read_run(&whole).status.unwrap();
    assert!(w.size_bytes > 16 << 20, "the whole chain: {}", w.size_bytes);

    let (ok, dir, log) = env.duplicity_restore(&g.name, None, &["--no-encryption"], &[]);
    assert!(ok, "{log}");
    run_ok(
        "qemu-img",
        &[
            "compare",
            g.disk.to_str().unwrap(),
            dir.join(&w.disks[0].export_file).to_str().unwrap(),
        ],
    );
}

fn hooks_file(env: &Env, yaml: &str) -> String {
    let p = env.dir.join(unique("hooks")).with_extension("yaml");
    std::fs::write(&p, yaml).unwrap();
    p.display().to_string()
}

#[test]
fn hooks_run_in_order_with_context_and_their_failures_follow_on_error() {
    let g = Guest::new("sbt-hooks", GuestOpts::default());
    let env = Env::new();
    let log = env.dir.join("hooks.log");
    let yaml = format!(
        "preSnapshot:\n- command: [sh, -c, 'echo \"pre $SNAPBACK_STAGE $SNAPBACK_DOMAIN\" >> {l}']\n\
onSnapshot:\n- command: [sh, -c, 'echo on >> {l}']\n\
postSnapshot:\n- command: [sh, -c, 'echo post >> {l}; echo done-output']\n",
        l = log.display()
    );
    let name = env
        .backup(&g.name, &["--hooks-file", &hooks_file(&env, &yaml)])
        .assert_ok();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text, format!("pre preSnapshot {}\non\npost\n", g.name));
    let s = env.read_run(&name).status.unwrap();
    assert_eq!(s.hooks.len(), 3);
    assert!(s.hooks[2].output.contains("done-output") && s.hooks.iter().all(|h| h.succeeded));
    let cp = s.checkpoint.unwrap();

    // A failing hook with onError Fail fails the run, and everything is undone.
    let failing = "onSnapshot:\n- command: [sh, -c, 'echo boom >&2; exit 3']\n";
    let out = env.backup(&g.name, &["--hooks-file", &hooks_file(&env, failing)]);
    let fname = out.assert_failed_with("HookFailed");
    let fs = env.read_run(&fname).status.unwrap();
    assert_eq!(fs.hooks[0].exit_code, Some(3));
    assert!(fs.hooks[0].output.contains("boom"));
    assert_left_clean(&g, &env, true, std::slice::from_ref(&cp));

    // With onError Continue the run goes on.
    let cont = "preSnapshot:\n- command: [/bin/false]\n  onError: Continue\n";
    let cname = env
        .backup(&g.name, &["--hooks-file", &hooks_file(&env, cont)])
        .assert_ok();
    assert_eq!(
        env.read_run(&cname).status.unwrap().type_,
        Some(BackupType::Incremental)
    );

    // Guest hooks run inside the guest through the guest agent, output and exit code captured.
    let guest = "onSnapshot:\n- command: [/bin/sh, -c, 'echo from-guest; cat /proc/sys/kernel/hostname']\n  runIn: Guest\n  timeoutSeconds: 10\n";
    let gname = env
        .backup(&g.name, &["--hooks-file", &hooks_file(&env, guest)])
        .assert_ok();
    let gh = &env.read_run(&gname).status.unwrap().hooks[0];
    assert!(gh.succeeded && gh.output.contains("from-guest"), "{gh:?}");
    let guest_fail = "preSnapshot:\n- command: [/bin/sh, -c, 'exit 4']\n  runIn: Guest\n";
    let fname = env
        .backup(&g.name, &["--hooks-file", &hooks_file(&env, guest_fail)])
        .assert_failed_with("HookFailed");
    assert_eq!(
        env.read_run(&fname).status.unwrap().hooks[0].exit_code,
        Some(4)
    );
    // A hook that outlives its timeout is stopped and fails.
    let slow = "preSnapshot:\n- command: [sleep, '30']\n  timeoutSeconds: 1\n";
    let started = Instant::now();
    env.backup(&g.name, &["--hooks-file", &hooks_file(&env, slow)])
        .assert_failed_with("HookFailed");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn required_quiesce_without_a_guest_agent_fails_and_preferred_warns() {
    let g = Guest::new(
        "sbt-quiesce",
        GuestOpts {
            agent_channel: false,
            ..Default::default()
        },
    );
    let env = Env::new();
    env.backup(&g.name, &["--quiesce", "required"])
        .assert_failed_with("QuiesceFailed");
    assert_left_clean(&g, &env, true, &[]);
    assert!(env.target_files().is_empty());

    let name = env.backup(&g.name, &[]).assert_ok();
    let s = env.read_run(&name).status.unwrap();
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Quiesced")
        .expect("a Quiesced condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "GuestAgentUnavailable")
    );
    assert!(!s.quiesced);

    // A guest hook needs the guest agent; without one it fails clearly.
    let guest = "preSnapshot:\n- command: [/bin/true]\n  runIn: Guest\n  timeoutSeconds: 3\n";
    let gname = env
        .backup(&g.name, &["--hooks-file", &hooks_file(&env, guest)])
        .assert_failed_with("HookFailed");
    assert!(env.read_run(&gname).status.unwrap().hooks[0]
        .output
        .contains("agent"));
}

#[test]
fn required_quiesce_with_a_guest_agent_freezes_and_thaws_within_a_short_window() {
    let g = Guest::new("sbt-agent", GuestOpts::default());
    let env = Env::new();
    let name = env.backup(&g.name, &["--quiesce", "required"]).assert_ok();
    let s = env.read_run(&name).status.unwrap();
    assert!(s.quiesced && !s.guest_frozen);
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Quiesced")
        .expect("a Quiesced condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "FilesystemsFrozen")
    );
    let window = s.freeze_window_ms.expect("the freeze window is recorded");
    assert!(window < 1000, "freeze window {window} ms");
    // The agent answers after the thaw: the guest is not left frozen.
    let ans = virsh_ok(&[
        "qemu-agent-command",
        &g.name,
        r#"{"execute":"guest-fsfreeze-status"}"#,
    ]);
    assert!(ans.contains("thawed"), "{ans}");
    let w = g.writes();
    g.wait_for_writes(w + 2);
    assert_left_clean(&g, &env, true, &[s.checkpoint.unwrap()]);
}

/// Starts `snapback backup` in the background.
fn spawn_backup(env: &Env, domain: &str, extra: &[&str]) -> std::process::Child {
    let mut args = vec!["backup", "--domain", domain, "--target", &env.target];
    args.extend_from_slice(extra);
    env.spawn(&args)
}

/// Waits until the only run in the store satisfies `pred`.
fn wait_for_run(
    env: &Env,
    what: &str,
    pred: impl Fn(&snapback::api::BackupRunStatus) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let store = snapback::store::FileStore::new(&env.state);
        if let Some(r) = store
            .backup_runs()
            .unwrap_or_default()
            .into_iter()
            .find(|r| r.status.as_ref().is_some_and(&pred))
        {
            return r.metadata.name.unwrap();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_run_on_the_same_domain_and_target_is_refused_as_busy() {
    let g = Guest::new("sbt-busy", GuestOpts::default());
    let env = Env::new();
    let slow = hooks_file(&env, "preSnapshot:\n- command: [sleep, '4']\n");
    let mut first = spawn_backup(&env, &g.name, &["--hooks-file", &slow]);
    wait_for_run(&env, "the first run to snapshot", |s| {
        s.phase == BackupPhase::Snapshotting
    });
    env.backup(&g.name, &[]).assert_failed_with("Busy");
    assert!(first.wait().unwrap().success(), "the first run is unharmed");
    let runs = snapback::store::FileStore::new(&env.state)
        .backup_runs()
        .unwrap();
    let ok: Vec<_> = runs
        .iter()
        .filter(|r| r.status.as_ref().unwrap().phase == BackupPhase::Succeeded)
        .collect();
    assert_eq!(ok.len(), 1);
    assert_left_clean(
        &g,
        &env,
        true,
        &[ok[0].status.clone().unwrap().checkpoint.unwrap()],
    );
}

#[test]
fn sigterm_mid_run_cleans_up_and_fails_as_interrupted() {
    let g = Guest::new("sbt-term", GuestOpts::default());
    let env = Env::new();
    let first = env.backup(&g.name, &[]).assert_ok();
    let cp = env.read_run(&first).status.unwrap().checkpoint.unwrap();

    let slow = hooks_file(&env, "onSnapshot:\n- command: [sleep, '30']\n");
    let child = spawn_backup(&env, &g.name, &["--hooks-file", &slow]);
    let name = wait_for_run(&env, "the job to begin", |s| {
        s.phase == BackupPhase::Snapshotting && s.snapshot_time.is_some()
    });
    run_ok("kill", &["-TERM", &child.id().to_string()]);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or("")
            .starts_with("Interrupted"),
        "{stderr}"
    );
    let s = env.read_run(&name).status.unwrap();
    assert_eq!(s.failure.unwrap().reason, FailureReason::Interrupted);
    // The interrupted run's checkpoint is gone (merged into the previous one), which stays valid.
    assert_left_clean(&g, &env, true, &[cp]);
    let next = env.backup(&g.name, &[]).assert_ok();
    assert_eq!(
        env.read_run(&next).status.unwrap().type_,
        Some(BackupType::Incremental)
    );
}

#[test]
fn a_run_killed_after_the_snapshot_resumes_where_it_stopped() {
    let g = Guest::new(
        "sbt-kill",
        GuestOpts {
            prefill_mib: 32,
            ..Default::default()
        },
    );
    let env = Env::new();
    let slow = hooks_file(&env, "onSnapshot:\n- command: [sleep, '10']\n");
    let mut child = spawn_backup(&env, &g.name, &["--hooks-file", &slow]);
    let name = wait_for_run(&env, "the job to begin", |s| {
        s.phase == BackupPhase::Snapshotting && s.snapshot_time.is_some()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        env.read_run(&name).status.unwrap().phase,
        BackupPhase::Snapshotting
    );

    let out = env.snapback(&["resume", "--target", &env.target]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(&name));
    let s = env.read_run(&name).status.unwrap();
    assert_eq!(s.phase, BackupPhase::Succeeded, "{:?}", s.failure);
    assert_eq!(s.upload_attempts, 1);
    // The onSnapshot hook the kill interrupted ran to completion on resume.
    assert!(
        s.hooks
            .iter()
            .any(|h| h.stage == "onSnapshot" && h.succeeded),
        "{:?}",
        s.hooks
    );
    assert_left_clean(&g, &env, true, &[s.checkpoint.clone().unwrap()]);
    let (ok, dir, log) = env.duplicity_restore(&g.name, None, &["--no-encryption"], &[]);
    assert!(ok, "{log}");
    assert_eq!(
        snapback::state_dir::sha256_file(&dir.join(&s.disks[0].export_file)).unwrap(),
        s.disks[0].sha256.clone().unwrap()
    );
}

#[test]
fn a_run_killed_during_upload_is_finished_by_the_next_backup_and_restores_intact() {
    let g = Guest::new(
        "sbt-kill-up",
        GuestOpts {
            prefill_mib: 200,
            ..Default::default()
        },
    );
    let env = Env::new();
    // Killed (SIGKILL) once the first volumes are on the target and more are to come.
    env.backup_with_crash(&g.name, &["--volsize", "16"], "backup:uploading:partial");
    let name = snapback::store::FileStore::new(&env.state)
        .backup_runs()
        .unwrap()
        .remove(0)
        .metadata
        .name
        .unwrap();

    // The next backup of the domain first finishes the interrupted run.
    let next = env.backup(&g.name, &[]);
    let next_name = next.assert_ok();
    assert!(
        next.stderr.contains(&format!("{name}: resuming")),
        "{}",
        next.stderr
    );
    let s = env.read_run(&name).status.unwrap();
    assert_eq!(s.phase, BackupPhase::Succeeded, "{:?}", s.failure);
    assert_eq!(s.upload_attempts, 2, "the upload was resumed, not skipped");
    let (ok, dir, log) = env.duplicity_restore(
        &g.name,
        Some(&duplicity_time(&s)),
        &["--no-encryption"],
        &[],
    );
    assert!(ok, "{log}");
    assert_eq!(
        snapback::state_dir::sha256_file(&dir.join(&s.disks[0].export_file)).unwrap(),
        s.disks[0].sha256.clone().unwrap(),
        "the resumed upload holds exactly the export"
    );
    let n = env.read_run(&next_name).status.unwrap();
    assert_eq!(n.type_, Some(BackupType::Incremental));
    assert_eq!(n.parent_checkpoint, s.checkpoint);
    assert_left_clean(&g, &env, true, &[n.checkpoint.unwrap()]);
}

#[test]
fn a_run_that_died_with_the_guest_frozen_and_paused_gives_it_back_on_resume() {
    let g = Guest::new("sbt-frozen", GuestOpts::default());
    let env = Env::new();
    let first = env.backup(&g.name, &[]).assert_ok();

    // The state a run leaves when it is killed between freeze and thaw: recorded as frozen and
    // paused in Snapshotting, the guest really frozen and paused.
    let store = snapback::store::FileStore::new(&env.state);
    let mut run = env.read_run(&first);
    let crashed = format!("{first}-crashed");
    run.metadata.name = Some(crashed.clone());
    let s = run.status.as_mut().unwrap();
    s.phase = BackupPhase::Snapshotting;
    s.guest_frozen = true;
    s.guest_paused = true;
    s.type_ = Some(BackupType::Incremental);
    s.parent_checkpoint = s.checkpoint.clone();
    s.checkpoint = Some(format!("snapback-{crashed}"));
    s.chain_index = 1;
    s.uploaded = false;
    s.completion_time = None;
    s.target_time = None;
    for d in &mut s.disks {
        d.export_file = format!("{crashed}.{}.qcow2", d.name);
    }
    store.write("backupruns", &crashed, &run).unwrap();
    let ans = virsh_ok(&[
        "qemu-agent-command",
        &g.name,
        r#"{"execute":"guest-fsfreeze-freeze"}"#,
    ]);
    assert!(ans.contains("return"), "{ans}");
    virsh_ok(&["suspend", &g.name]);

    let out = env.snapback(&["resume", "--target", &env.target]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("thawing/resuming"), "{}", out.stderr);
    let r = env.read_run(&crashed).status.unwrap();
    assert_eq!(r.phase, BackupPhase::Succeeded, "{:?}", r.failure);
    assert!(!r.guest_frozen && !r.guest_paused);
    let st = virsh_ok(&[
        "qemu-agent-command",
        &g.name,
        r#"{"execute":"guest-fsfreeze-status"}"#,
    ]);
    assert!(st.contains("thawed"), "{st}");
    let w = g.writes();
    g.wait_for_writes(w + 2);
    assert_left_clean(&g, &env, true, &[r.checkpoint.unwrap()]);
}
