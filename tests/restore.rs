//! Restores on a real libvirtd: byte-exact round trips, new and in-place domains, encrypted
//! and S3 targets, a fresh host, bad input and interruptions.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use snapback::api::{BackupType, FailureReason, RestorePhase, RestoreRequest};

fn read_restore(env: &Env, name: &str) -> RestoreRequest {
    env.read_restore(name)
}

fn storage(env: &Env) -> PathBuf {
    let d = env.dir.join(unique("storage"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A domain created by a restore, removed on drop.
struct Defined(String);
impl Drop for Defined {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
        let _ = virsh(&["undefine", &self.0, "--checkpoints-metadata"]);
    }
}

fn snapshot_rfc3339(env: &Env, run: &str) -> String {
    env.read_run(run)
        .status
        .unwrap()
        .snapshot_time
        .unwrap()
        .to_string()
}

#[test]
fn every_point_of_a_full_and_two_incrementals_restores_byte_exact_as_a_new_domain() {
    let g = Guest::new(
        "sbt-rt",
        GuestOpts {
            prefill_mib: 48,
            write_mib: 16,
            ..Default::default()
        },
    );
    let env = Env::new();
    let mut points = vec![];
    for _ in 0..3 {
        points.push(backup_paused(&env, &g, &[]));
        let w = g.writes();
        g.wait_for_writes(w + 6);
    }
    let types: Vec<_> = points
        .iter()
        .map(|(r, _)| env.read_run(r).status.unwrap().type_.unwrap())
        .collect();
    assert_eq!(
        types,
        [
            BackupType::Full,
            BackupType::Incremental,
            BackupType::Incremental
        ]
    );

    let list = env.snapback(&["list", "--domain", &g.name, "--target", &env.target]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert!(
        lines[0].starts_with("TIME")
            && lines[0].contains("TYPE")
            && lines[0].contains("CHAIN")
            && lines[0].contains("SIZE")
    );
    assert_eq!(lines.len(), 4, "{}", list.stdout);
    assert!(
        lines[1].contains("full")
            && lines[2].contains("incremental")
            && lines[3].contains("incremental")
    );

    for (i, (run, reference)) in points.iter().enumerate() {
        let new = format!("{}-r{i}", g.name);
        let _cleanup = Defined(new.clone());
        let dir = storage(&env);
        let at = snapshot_rfc3339(&env, run);
        let out = env.restore_as(&g.name, &at, &new, &dir);
        assert_eq!(out.code, 0, "restore {i} failed:\n{}", out.stderr);
        let req = read_restore(&env, out.stdout.trim());
        let s = req.status.unwrap();
        assert_eq!(s.phase, RestorePhase::Succeeded);
        assert_eq!(s.point.as_ref().unwrap().run, *run, "point {i}");
        assert_eq!(
            s.chain_runs.len(),
            i + 1,
            "a point needs its full and every incremental before it"
        );
        assert!(s.disks.iter().all(|d| d.verified));
        let restored = &s.disks[0].path;
        run_ok(
            "qemu-img",
            &["compare", reference.to_str().unwrap(), restored],
        );
        let info = run_ok("qemu-img", &["info", restored]);
        assert!(
            !info.contains("backing file"),
            "the restored disk stands alone: {info}"
        );
        // A new domain: new name, new UUID, its own disk.
        let xml = virsh_ok(&["dumpxml", &new]);
        let old_xml = virsh_ok(&["dumpxml", &g.name]);
        let uuid = |x: &str| {
            x.lines()
                .find(|l| l.contains("<uuid>"))
                .unwrap()
                .trim()
                .to_string()
        };
        assert_ne!(uuid(&xml), uuid(&old_xml));
        assert!(xml.contains(restored.as_str()));
        assert_eq!(g.state(), "running", "the original is untouched");
    }
    let table = env.snapback(&["get", "restorerequests"]).stdout;
    assert_eq!(
        table.lines().filter(|l| l.contains("Succeeded")).count(),
        3,
        "{table}"
    );
}

#[test]
fn a_restored_writer_guest_boots_as_a_new_domain_and_writes_beside_the_original() {
    let g = Guest::new("sbt-boot", GuestOpts::default());
    let env = Env::new();
    env.backup(&g.name, &[]).assert_ok();
    let new = format!("{}-copy", g.name);
    let _cleanup = Defined(new.clone());
    let dir = storage(&env);
    let out = env.snapback(&[
        "restore",
        "--domain",
        &g.name,
        "--target",
        &env.target,
        "--as",
        &new,
        "--storage-dir",
        dir.to_str().unwrap(),
        "--start",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("Fetching") && out.stderr.contains("Rebuilding"),
        "progress on stderr: {}",
        out.stderr
    );
    assert_eq!(virsh_ok(&["domstate", &new]).trim(), "running");
    // The new domain logs to its own file in the storage dir and keeps writing.
    let log = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("its own serial log");
    let copy = Guest {
        name: new.clone(),
        dir: dir.clone(),
        disk: PathBuf::new(),
        log,
    };
    copy.wait_for_writes(3);
    std::mem::forget(copy); // `_cleanup` removes the domain; the env removes the files
    let w = g.writes();
    g.wait_for_writes(w + 2);
    assert_eq!(g.state(), "running");
}

#[test]
fn an_in_place_restore_runs_the_recovery_hooks_and_keeps_the_old_disk_until_verified() {
    let g = Guest::new("sbt-inplace", GuestOpts::default());
    let env = Env::new();
    let (_, reference) = backup_paused(&env, &g, &[]);
    let w = g.writes();
    g.wait_for_writes(w + 5);
    let hook_log = env.dir.join("hooks.log");
    let hooks = env.dir.join("hooks.yaml");
    std::fs::write(
        &hooks,
        format!(
            "preRecovery:\n- command: [sh, -c, 'echo pre >> {l}']\nendRecovery:\n- command: [sh, -c, 'echo \"end $SNAPBACK_RESTORED_DISKS\" >> {l}']\npostRecovery:\n- command: [sh, -c, 'echo post >> {l}']\n",
            l = hook_log.display()
        ),
    )
    .unwrap();
    let dir = storage(&env);
    let out = env.snapback(&[
        "restore",
        "--domain",
        &g.name,
        "--target",
        &env.target,
        "--in-place",
        "--storage-dir",
        dir.to_str().unwrap(),
        "--hooks-file",
        hooks.to_str().unwrap(),
        "--shutdown-timeout",
        "2",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = read_restore(&env, out.stdout.trim()).status.unwrap();
    let restored = s.disks[0].path.clone();
    let log = std::fs::read_to_string(&hook_log).unwrap();
    assert_eq!(
        log,
        format!("end vda={restored}\npre\npost\n"),
        "endRecovery after the rebuild, preRecovery before the swap, postRecovery last"
    );
    // The old disk is kept, renamed, and still readable; the domain now uses the restored disk.
    assert_eq!(s.replaced_disks.len(), 1);
    assert!(Path::new(&s.replaced_disks[0]).exists());
    run_ok("qemu-img", &["check", "-U", &s.replaced_disks[0]]);
    assert!(!g.disk.exists());
    assert_eq!(g.disk_sources(), vec![restored.clone()]);
    assert_eq!(g.state(), "shut off");
    run_ok(
        "qemu-img",
        &["compare", reference.to_str().unwrap(), &restored],
    );
    assert!(
        g.checkpoints().is_empty(),
        "the old checkpoints' bitmaps live in the old disk"
    );
    virsh_ok(&["start", &g.name]);
    // The next backup starts a new chain.
    let next = env.backup(&g.name, &[]).assert_ok();
    assert_eq!(
        env.read_run(&next).status.unwrap().type_,
        Some(BackupType::Full)
    );
}

#[test]
fn a_gpg_encrypted_target_restores_with_the_key_and_refuses_without_it() {
    let g = Guest::new("sbt-rgpg", GuestOpts::default());
    let mut env = Env::new();
    let home = env.dir.join("gnupg");
    let fpr = gpg_home(&home);
    env.extra_env
        .push(("GNUPGHOME".into(), home.display().to_string()));
    let (_, reference) = backup_paused(&env, &g, &["--gpg-recipient", &fpr]);
    let new = format!("{}-g", g.name);
    let _cleanup = Defined(new.clone());
    let dir = storage(&env);
    let out = env.snapback(&[
        "restore",
        "--domain",
        &g.name,
        "--target",
        &env.target,
        "--gpg-recipient",
        &fpr,
        "--as",
        &new,
        "--storage-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = read_restore(&env, out.stdout.trim()).status.unwrap();
    run_ok(
        "qemu-img",
        &["compare", reference.to_str().unwrap(), &s.disks[0].path],
    );

    // Without the secret key, on a fresh state dir (no cached metadata): a clear key error.
    let mut fresh = Env::new();
    fresh.target = env.target.clone();
    let empty = fresh.dir.join("empty-gnupg");
    std::fs::create_dir_all(&empty).unwrap();
    fresh
        .extra_env
        .push(("GNUPGHOME".into(), empty.display().to_string()));
    let out = fresh.snapback(&[
        "restore",
        "--domain",
        &g.name,
        "--target",
        &fresh.target,
        "--gpg-recipient",
        &fpr,
        "--as",
        "sbt-never",
        "--storage-dir",
        dir.to_str().unwrap(),
    ]);
    assert_ne!(out.code, 0);
    assert!(
        out.last_err_line().starts_with("EncryptionKeyError"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_s3_target_restores_on_a_fresh_host_with_only_the_url_and_the_passphrase() {
    let s3 = S3Server::start();
    s3.create_bucket("snapback-restore");
    let g = Guest::new("sbt-rs3", GuestOpts::default());
    let mut env = Env::new();
    env.target = "boto3+s3://snapback-restore/vms".into();
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "k"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ] {
        env.extra_env.push((k.into(), v.into()));
    }
    let pass = env.dir.join("pass");
    std::fs::write(&pass, "s3 restore secret\n").unwrap();
    let p = pass.to_str().unwrap().to_string();
    let (_, r1) = backup_paused(
        &env,
        &g,
        &[
            "--s3-endpoint-url",
            &s3.endpoint,
            "--encrypt-passphrase-file",
            &p,
        ],
    );
    let w = g.writes();
    g.wait_for_writes(w + 4);
    let (_, r2) = backup_paused(
        &env,
        &g,
        &[
            "--s3-endpoint-url",
            &s3.endpoint,
            "--encrypt-passphrase-file",
            &p,
        ],
    );
    let _ = r1;

    // The host is lost: the domain is gone and so is the state dir.
    let name = g.name.clone();
    virsh_ok(&["destroy", &name]);
    virsh_ok(&["undefine", &name, "--checkpoints-metadata"]);
    let mut fresh = Env::new();
    fresh.target = env.target.clone();
    fresh.extra_env = env.extra_env.clone();
    let dir = storage(&fresh);
    let _cleanup = Defined(name.clone());
    let wrong = fresh.dir.join("wrong");
    std::fs::write(&wrong, "not it\n").unwrap();
    let bad = fresh.snapback(&[
        "restore",
        "--domain",
        &name,
        "--target",
        &fresh.target,
        "--s3-endpoint-url",
        &s3.endpoint,
        "--decrypt-passphrase-file",
        wrong.to_str().unwrap(),
        "--as",
        &name,
        "--storage-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(
        bad.last_err_line().starts_with("EncryptionKeyError"),
        "{}",
        bad.stderr
    );
    assert!(
        virsh(&["dominfo", &name]).status.code() != Some(0),
        "nothing was defined"
    );

    let list = fresh.snapback(&[
        "list",
        "--domain",
        &name,
        "--target",
        &fresh.target,
        "--s3-endpoint-url",
        &s3.endpoint,
        "--decrypt-passphrase-file",
        &p,
    ]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert_eq!(list.stdout.lines().count(), 3, "{}", list.stdout);
    let out = fresh.snapback(&[
        "restore",
        "--domain",
        &name,
        "--target",
        &fresh.target,
        "--s3-endpoint-url",
        &s3.endpoint,
        "--decrypt-passphrase-file",
        &p,
        "--as",
        &name,
        "--storage-dir",
        dir.to_str().unwrap(),
        "--start",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = read_restore(&fresh, out.stdout.trim()).status.unwrap();
    assert_eq!(s.chain_runs.len(), 2);
    virsh_ok(&["destroy", &name]);
    run_ok(
        "qemu-img",
        &["compare", r2.to_str().unwrap(), &s.disks[0].path],
    );
}

#[test]
fn bad_restore_input_gets_a_clear_reason_and_changes_nothing() {
    let g = Guest::new("sbt-rbad", GuestOpts::default());
    let env = Env::new();
    let first = env.backup(&g.name, &[]).assert_ok();
    let dir = storage(&env);
    let d = dir.to_str().unwrap();
    let restore = |extra: &[&str]| {
        let mut a = vec!["restore", "--target", env.target.as_str()];
        a.extend_from_slice(extra);
        env.snapback(&a)
    };
    let expect = |out: SnapOut, reason: &str| {
        assert_ne!(out.code, 0, "{}", out.stderr);
        assert!(
            out.last_err_line().starts_with(reason),
            "want {reason}: {}",
            out.stderr
        );
    };
    let before = snapshot_rfc3339(&env, &first);
    let early = (before.parse::<jiff::Timestamp>().unwrap() - jiff::SignedDuration::from_hours(1))
        .to_string();
    expect(
        restore(&[
            "--domain",
            &g.name,
            "--at",
            &early,
            "--as",
            "sbt-x1",
            "--storage-dir",
            d,
        ]),
        "InvalidSpec",
    );
    expect(
        restore(&[
            "--domain",
            "sbt-never-backed-up",
            "--as",
            "sbt-x2",
            "--storage-dir",
            d,
        ]),
        "DomainNotFound",
    );
    expect(
        restore(&["--domain", &g.name, "--as", &g.name, "--storage-dir", d]),
        "InvalidSpec",
    );
    expect(
        restore(&[
            "--domain",
            &g.name,
            "--as",
            "sbt-x3",
            "--storage-dir",
            "/nonexistent/dir",
        ]),
        "InvalidSpec",
    );
    expect(
        restore(&[
            "--domain",
            &g.name,
            "--at",
            "yesterday",
            "--as",
            "sbt-x4",
            "--storage-dir",
            d,
        ]),
        "InvalidSpec",
    );
    // Names that would leave the storage dir, or a domain name libvirt would take apart.
    for bad in ["../sbt-x7", "sbt/x7", "sbt-x7\n"] {
        expect(
            restore(&["--domain", &g.name, "--as", bad, "--storage-dir", d]),
            "InvalidSpec",
        );
    }
    // A storage dir too small for the disk.
    let small = env.dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    run_ok(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "tmpfs",
            small.to_str().unwrap(),
        ],
    );
    let out = restore(&[
        "--domain",
        &g.name,
        "--as",
        "sbt-x5",
        "--storage-dir",
        small.to_str().unwrap(),
    ]);
    let _ = run("umount", &[small.to_str().unwrap()]);
    expect(out, "StorageFull");
    // An unreachable target.
    let mut s3env = Env::new();
    s3env
        .extra_env
        .push(("AWS_ACCESS_KEY_ID".into(), "k".into()));
    s3env
        .extra_env
        .push(("AWS_SECRET_ACCESS_KEY".into(), "s".into()));
    let out = s3env.snapback(&[
        "restore",
        "--domain",
        &g.name,
        "--target",
        "boto3+s3://nowhere/x",
        "--s3-endpoint-url",
        "http://127.0.0.1:1",
        "--num-retries",
        "1",
        "--as",
        "sbt-x6",
        "--storage-dir",
        d,
    ]);
    expect(out, "TargetUnreachable");

    for n in ["sbt-x1", "sbt-x2", "sbt-x3", "sbt-x4", "sbt-x5", "sbt-x6"] {
        assert!(
            virsh(&["dominfo", n]).status.code() != Some(0),
            "{n} must not exist"
        );
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing written to the storage dir"
    );
    assert_eq!(g.state(), "running");
}

/// Starts `snapback restore --as NEW` in the background with an endRecovery hook that sleeps.
fn spawn_slow_restore(
    env: &Env,
    domain: &str,
    new: &str,
    dir: &Path,
    hook_secs: u32,
) -> std::process::Child {
    let hooks = env.dir.join(unique("slow")).with_extension("yaml");
    std::fs::write(
        &hooks,
        format!("endRecovery:\n- command: [sleep, '{hook_secs}']\n"),
    )
    .unwrap();
    env.spawn(&[
        "restore",
        "--domain",
        domain,
        "--target",
        &env.target,
        "--as",
        new,
        "--storage-dir",
        dir.to_str().unwrap(),
        "--hooks-file",
        hooks.to_str().unwrap(),
    ])
}

/// Waits until the (only) restore has rebuilt and verified a disk; returns its name.
fn wait_until_rebuilt(env: &Env) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let reqs: Vec<RestoreRequest> = snapback::store::FileStore::new(&env.state)
            .list("restorerequests")
            .unwrap_or_default();
        if let Some(r) = reqs.iter().find(|r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.disks.iter().any(|d| d.verified))
        }) {
            return r.metadata.name.clone().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restore never rebuilt its disk"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_interrupted_restore_rolls_back_and_leaves_no_half_written_disk() {
    let g = Guest::new("sbt-rint", GuestOpts::default());
    let env = Env::new();
    env.backup(&g.name, &[]).assert_ok();
    let dir = storage(&env);
    let new = format!("{}-int", g.name);
    let child = spawn_slow_restore(&env, &g.name, &new, &dir, 30);
    wait_until_rebuilt(&env);
    run_ok("kill", &["-TERM", &child.id().to_string()]);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or("")
            .starts_with("Interrupted"),
        "{stderr}"
    );
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let s = read_restore(&env, &name).status.unwrap();
    assert_eq!(s.failure.unwrap().reason, FailureReason::Interrupted);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "the rebuilt disk was removed"
    );
    assert!(virsh(&["dominfo", &new]).status.code() != Some(0));
    assert!(!env.state.join("restore-work").join(&name).exists());
}

#[test]
fn a_restore_killed_mid_way_is_finished_by_snapback_resume() {
    let g = Guest::new("sbt-rkill", GuestOpts::default());
    let env = Env::new();
    let (_, reference) = backup_paused(&env, &g, &[]);
    let dir = storage(&env);
    let new = format!("{}-res", g.name);
    let _cleanup = Defined(new.clone());
    let mut child = spawn_slow_restore(&env, &g.name, &new, &dir, 3);
    let name = wait_until_rebuilt(&env);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!read_restore(&env, &name)
        .status
        .unwrap()
        .phase
        .is_terminal());

    let out = env.snapback(&["resume", "--target", &env.target]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(&name), "{}", out.stdout);
    let s = read_restore(&env, &name).status.unwrap();
    assert_eq!(s.phase, RestorePhase::Succeeded, "{:?}", s.failure);
    run_ok(
        "qemu-img",
        &["compare", reference.to_str().unwrap(), &s.disks[0].path],
    );
    assert!(virsh(&["dominfo", &new]).status.success());
    assert!(!env.state.join("restore-work").join(&name).exists());
}
