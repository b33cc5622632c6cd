//! Encrypted and remote targets: real gpg, real duplicity, a real S3-compatible server.

mod common;

use std::process::Command;

use common::*;
use snapback::api::BackupType;

/// No volume on the target may reveal the guest's data, a qcow2 header or a tar header.
/// (Patterns are 8+ bytes long: a 4-byte one turns up by chance in ~20 MB of ciphertext.)
fn assert_volumes_unreadable(env: &Env, domain: &str) {
    let dir = env
        .target_dir
        .join(snapback::catalog::layout::domain_dir(domain));
    let vols: Vec<String> = env
        .target_files_of(domain)
        .into_iter()
        .filter(|f| f.contains(".vol"))
        .collect();
    assert!(!vols.is_empty());
    for v in vols {
        assert!(v.ends_with(".gpg"), "volume {v} is not encrypted");
        let data = std::fs::read(dir.join(&v)).unwrap();
        assert!(
            !data.windows(8).any(|w| w == b"QFI\xfb\x00\x00\x00\x03"),
            "{v} holds a plain qcow2 header"
        );
        assert!(
            !data.windows(8).any(|w| w == b"ustar\x0000"),
            "{v} holds a plain tar header"
        );
        assert!(
            !data.windows(15).any(|w| w == b"SNAPBACK-WRITER"),
            "{v} holds plain guest data"
        );
    }
}

#[test]
fn gpg_encrypted_backups_cannot_be_read_without_the_key() {
    let g = Guest::new(
        "sbt-gpg",
        GuestOpts {
            prefill_mib: 16,
            ..Default::default()
        },
    );
    let mut env = Env::new();
    let home = env.dir.join("gnupg");
    let fpr = gpg_home(&home);
    env.extra_env
        .push(("GNUPGHOME".into(), home.display().to_string()));

    let full = env.backup(&g.name, &["--gpg-recipient", &fpr]).assert_ok();
    let w = g.writes();
    g.wait_for_writes(w + 3);
    let inc = env.backup(&g.name, &["--gpg-recipient", &fpr]).assert_ok();
    assert_eq!(
        env.read_run(&inc).status.unwrap().type_,
        Some(BackupType::Incremental)
    );
    assert_volumes_unreadable(&env, &g.name);

    let home_s = home.display().to_string();
    let (ok, dir, log) = env.duplicity_restore(&g.name, None, &[], &[("GNUPGHOME", &home_s)]);
    assert!(ok, "restore with the key failed: {log}");
    assert!(dir.join(format!("{inc}.manifest.json")).exists());

    let empty = env.dir.join("empty-gnupg");
    std::fs::create_dir_all(&empty).unwrap();
    let empty_s = empty.display().to_string();
    let (ok, _, _) = env.duplicity_restore(
        &g.name,
        None,
        &["--archive-dir", "/nonexistent-cache"],
        &[("GNUPGHOME", &empty_s)],
    );
    assert!(!ok, "restore without the key must fail");
    assert_left_clean(
        &g,
        &env,
        true,
        &[env.read_run(&inc).status.unwrap().checkpoint.unwrap()],
    );
    let _ = full;
}

#[test]
fn passphrase_encrypted_backups_keep_the_passphrase_out_of_status_and_output() {
    let g = Guest::new("sbt-pass", GuestOpts::default());
    let env = Env::new();
    let secret = "correct horse battery staple 42";
    let pf = env.dir.join("passphrase");
    std::fs::write(&pf, format!("{secret}\n")).unwrap();
    let out = env.backup(
        &g.name,
        &["--encrypt-passphrase-file", pf.to_str().unwrap()],
    );
    let name = out.assert_ok();
    assert!(!out.stderr.contains(secret) && !out.stdout.contains(secret));
    assert_volumes_unreadable(&env, &g.name);
    let yaml =
        std::fs::read_to_string(env.state.join("backupruns").join(format!("{name}.yaml"))).unwrap();
    assert!(!yaml.contains(secret), "the passphrase leaked into status");

    let (ok, dir, log) = env.duplicity_restore(&g.name, None, &[], &[("PASSPHRASE", secret)]);
    assert!(ok, "{log}");
    assert!(dir.join(format!("{name}.manifest.json")).exists());
    let (ok, _, _) = env.duplicity_restore(&g.name, None, &[], &[("PASSPHRASE", "wrong")]);
    assert!(!ok, "a wrong passphrase must not restore");

    // A missing passphrase file is a clear error that touches nothing.
    let missing = env.backup(&g.name, &["--encrypt-passphrase-file", "/nonexistent/pass"]);
    missing.assert_failed_with("EncryptionKeyError");
    assert_left_clean(
        &g,
        &env,
        true,
        &[env.read_run(&name).status.unwrap().checkpoint.unwrap()],
    );
}

#[test]
fn an_s3_target_on_a_local_s3_compatible_server_takes_full_and_incremental_backups() {
    let s3 = S3Server::start();
    s3.create_bucket("snapback-test");
    let g = Guest::new("sbt-s3", GuestOpts::default());
    let mut env = Env::new();
    env.target = "boto3+s3://snapback-test/vms".into();
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "k"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ] {
        env.extra_env.push((k.into(), v.into()));
    }
    let full = env
        .backup(&g.name, &["--s3-endpoint-url", &s3.endpoint])
        .assert_ok();
    let w = g.writes();
    g.wait_for_writes(w + 3);
    let inc = env
        .backup(&g.name, &["--s3-endpoint-url", &s3.endpoint])
        .assert_ok();
    assert_eq!(
        env.read_run(&full).status.unwrap().type_,
        Some(BackupType::Full)
    );
    assert_eq!(
        env.read_run(&inc).status.unwrap().type_,
        Some(BackupType::Incremental)
    );

    let listing = Command::new("duplicity")
        .args([
            "collection-status",
            "--archive-dir",
            env.dir.join("c").to_str().unwrap(),
            "--s3-endpoint-url",
            &s3.endpoint,
            &format!("{}/{}", env.target, g.name),
        ])
        .env("PASSPHRASE", "")
        .envs(env.extra_env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.contains("Full") && text.contains("Incremental"),
        "the bucket holds one chain: {text}"
    );
    assert_left_clean(
        &g,
        &env,
        true,
        &[env.read_run(&inc).status.unwrap().checkpoint.unwrap()],
    );

    // The server goes away: the run fails as TargetUnreachable and leaves the chain intact.
    drop(s3);
    let before = g.checkpoints();
    let out = env.backup(
        &g.name,
        &[
            "--s3-endpoint-url",
            "http://127.0.0.1:1",
            "--num-retries",
            "1",
        ],
    );
    out.assert_failed_with("TargetUnreachable");
    assert_left_clean(&g, &env, true, &before);
}
