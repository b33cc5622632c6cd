//! A target that fills up, turns read-only or goes away during a run: the run fails with the
//! reason that names the target, the VM is left as it was, and every earlier backup on the
//! target still reads back intact.

mod common;

use common::*;

struct Tmpfs(std::path::PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_or_read_only_target_filesystem_fails_the_run_with_its_reason_and_harms_nothing() {
    let g = Guest::new(
        "sbt-tfull",
        GuestOpts {
            prefill_mib: 8,
            ..Default::default()
        },
    );
    let env = Env::new();
    std::fs::create_dir_all(&env.target_dir).unwrap();
    run_ok(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=48m",
            "tmpfs",
            env.target_dir.to_str().unwrap(),
        ],
    );
    let _mount = Tmpfs(env.target_dir.clone());
    let first = env.backup(&g.name, &["--volsize", "2"]).assert_ok();
    let cp = env.read_run(&first).status.unwrap().checkpoint.unwrap();

    // Fill the target, leaving room for less than a full's volumes.
    let filler = env.target_dir.join("filler");
    let free = {
        let out = run_ok(
            "df",
            &["--output=avail", "-B1", env.target_dir.to_str().unwrap()],
        );
        out.lines().nth(1).unwrap().trim().parse::<u64>().unwrap()
    };
    run_ok(
        "fallocate",
        &[
            "-l",
            &(free - (3 << 20)).to_string(),
            filler.to_str().unwrap(),
        ],
    );
    // One attempt: duplicity waits 30 s between retries.
    env.backup(
        &g.name,
        &["--type", "full", "--volsize", "2", "--num-retries", "1"],
    )
    .assert_failed_with("TargetFull");
    assert_left_clean(&g, &env, true, std::slice::from_ref(&cp));
    std::fs::remove_file(&filler).unwrap();
    let v = env.verify(&g.name, &["--all"]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);

    // Read-only: refused with the target's reason, nothing changes.
    run_ok(
        "mount",
        &["-o", "remount,ro", env.target_dir.to_str().unwrap()],
    );
    let out = env.backup(&g.name, &["--volsize", "2", "--num-retries", "1"]);
    out.assert_failed_with("TargetUnreachable");
    assert_left_clean(&g, &env, true, std::slice::from_ref(&cp));
    run_ok(
        "mount",
        &["-o", "remount,rw", env.target_dir.to_str().unwrap()],
    );

    // Space and write access back: the chain goes on, and everything reads back.
    g.wait_for_writes(g.writes() + 2);
    env.backup(&g.name, &["--volsize", "2"]).assert_ok();
    let v = env.verify(&g.name, &["--all"]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert_eq!(v.stdout.lines().count(), 3, "{}", v.stdout);
}

#[test]
fn an_s3_server_that_goes_away_fails_the_run_as_target_unreachable_and_harms_nothing() {
    let g = Guest::new(
        "sbt-s3gone",
        GuestOpts {
            prefill_mib: 8,
            ..Default::default()
        },
    );
    let mut env = Env::new();
    env.target = "boto3+s3://gone/vms".into();
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "k"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ] {
        env.extra_env.push((k.into(), v.into()));
    }
    let s3 = S3Server::start();
    s3.create_bucket("gone");
    let endpoint = s3.endpoint.clone();
    let args = ["--s3-endpoint-url", endpoint.as_str(), "--num-retries", "1"];
    let first = env.backup(&g.name, &args).assert_ok();
    let cp = env.read_run(&first).status.unwrap().checkpoint.unwrap();
    drop(s3);
    env.backup(&g.name, &args)
        .assert_failed_with("TargetUnreachable");
    assert_left_clean(&g, &env, true, std::slice::from_ref(&cp));
}
