//! Secrets (the encryption passphrase, cloud credentials) reach child processes by environment
//! only: never their argv (what /proc/PID/cmdline shows every user of the host), the output,
//! the run records or any file snapback writes. Wrappers first on PATH record the argv of
//! every duplicity and helper process snapback starts, so nothing is left to sampling.

mod common;

use std::path::Path;

use common::*;

const PASSPHRASE: &str = "pass-phrase-7d1f9c";
const AWS_SECRET: &str = "aws-secret-4b2e88";

/// Every file below `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                if b.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    out.push(p.display().to_string());
                }
            }
        }
    }
    out
}

#[test]
fn passphrases_and_cloud_keys_never_reach_argv_output_records_or_files() {
    let s3 = S3Server::start();
    s3.create_bucket("secrets");
    let g = Guest::new(
        "sbt-secret",
        GuestOpts {
            prefill_mib: 8,
            ..Default::default()
        },
    );
    let mut env = Env::new();
    env.target = "boto3+s3://secrets/vms".into();
    let pf = env.dir.join("passphrase");
    std::fs::write(&pf, format!("{PASSPHRASE}\n")).unwrap();

    // Wrappers that log their argv, one line per call, then run the real program.
    let bin = env.dir.join("argv-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = env.dir.join("argv.log");
    for (name, real) in [
        ("duplicity", "/usr/bin/duplicity"),
        ("python3-helper", "/usr/bin/python3"),
    ] {
        let w = bin.join(name);
        std::fs::write(
            &w,
            format!(
                "#!/bin/sh\nprintf '%s ' \"$0\" \"$@\" >>'{}'\necho >>'{}'\nexec {real} \"$@\"\n",
                log.display(),
                log.display()
            ),
        )
        .unwrap();
        run_ok("chmod", &["+x", w.to_str().unwrap()]);
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    env.extra_env = vec![
        ("PATH".into(), path),
        (
            "SNAPBACK_DUPLICITY_PYTHON".into(),
            bin.join("python3-helper").display().to_string(),
        ),
        ("AWS_ACCESS_KEY_ID".into(), "k".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), AWS_SECRET.into()),
        ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
    ];
    let common = [
        "--s3-endpoint-url",
        &s3.endpoint,
        "--encrypt-passphrase-file",
        pf.to_str().unwrap(),
    ];
    let mut outputs = vec![];
    for _ in 0..2 {
        let out = env.backup(&g.name, &common);
        out.assert_ok();
        outputs.push(out);
        g.wait_for_writes(g.writes() + 2);
    }
    let mut verify = vec!["--all"];
    verify.extend_from_slice(&common);
    outputs.push(env.verify(&g.name, &verify));
    let dir = env.dir.join("restored");
    let new = format!("{}-r", g.name);
    let mut restore = vec![
        "restore",
        "--domain",
        &g.name,
        "--target",
        &env.target,
        "--as",
        &new,
        "--storage-dir",
        dir.to_str().unwrap(),
    ];
    restore.extend_from_slice(&common);
    std::fs::create_dir_all(&dir).unwrap();
    let out = env.snapback(&restore);
    let _ = virsh(&["undefine", &new]);
    outputs.push(out);
    for o in &outputs {
        assert_eq!(o.code, 0, "{}", o.stderr);
    }

    let argv = std::fs::read_to_string(&log).unwrap();
    assert!(
        argv.lines().filter(|l| l.contains("duplicity")).count() >= 6
            && argv.contains("python3-helper"),
        "the wrappers saw the calls:\n{argv}"
    );
    for secret in [PASSPHRASE, AWS_SECRET] {
        assert!(
            !argv.contains(secret),
            "{secret} in a child's argv:\n{argv}"
        );
        for o in &outputs {
            assert!(
                !o.stdout.contains(secret) && !o.stderr.contains(secret),
                "{secret} in snapback's output"
            );
        }
        // Run and restore records, the duplicity cache, logs: nothing under the state dir.
        let found = files_containing(&env.state, secret);
        assert!(found.is_empty(), "{secret} written to {found:?}");
    }
}
