//! Recovery without snapback: the README's duplicity and qemu-img commands, run exactly as
//! the README writes them, bring back a point of a real encrypted chain byte for byte.

mod common;

use std::process::Command;

use common::*;
use snapback::api::BackupType;

/// The shell block of the README's "Recovery without snapback" section.
fn readme_recovery_block() -> String {
    let readme = include_str!("../README.md");
    let section = readme
        .split("### Recovery without snapback")
        .nth(1)
        .expect("the README has a 'Recovery without snapback' section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section has a sh code block");
    block.to_string()
}

/// duplicity's time of a run's set, as the set's file names carry it.
fn set_time(env: &Env, run: &str) -> String {
    env.read_run(run)
        .status
        .unwrap()
        .target_time
        .expect("the run records duplicity's time")
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string()
}

#[test]
fn the_readme_recovery_commands_restore_an_encrypted_incremental_point_with_duplicity_and_qemu_img_alone(
) {
    let g = Guest::new(
        "sbt-recov",
        GuestOpts {
            prefill_mib: 32,
            write_mib: 16,
            ..Default::default()
        },
    );
    let env = Env::new();
    let pass = env.dir.join("passphrase");
    std::fs::write(&pass, "correct horse battery").unwrap();
    let enc = ["--encrypt-passphrase-file", pass.to_str().unwrap()];
    let mut points = vec![];
    for _ in 0..3 {
        points.push(backup_paused(&env, &g, &enc));
        let w = g.writes();
        g.wait_for_writes(w + 4);
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

    // Recover the middle point (full + first incremental) and the newest (the whole chain).
    for upto in [2, 3] {
        let work = env.dir.join(unique("recover"));
        let home = work.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let times: Vec<String> = points[..upto]
            .iter()
            .map(|(r, _)| set_time(&env, r))
            .collect();
        let (run, reference) = &points[upto - 1];
        let disk = &env.read_run(run).status.unwrap().disks[0].export_file;
        let target = format!(
            "{}/{}",
            env.target,
            snapback::catalog::layout::domain_dir(&g.name)
        );
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &readme_recovery_block()])
            .current_dir(&work)
            .env("HOME", &home)
            .env("TARGET", &target)
            .env("TIMES", times.join(" "))
            .env("DISK", disk)
            .env("PASSPHRASE", "correct horse battery")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the README's commands failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let restored = work.join("restored.qcow2");
        run_ok(
            "qemu-img",
            &[
                "compare",
                reference.to_str().unwrap(),
                restored.to_str().unwrap(),
            ],
        );
        // The restored image stands alone: no backing file, least of all the live disk.
        let info = run_ok(
            "qemu-img",
            &["info", "--output=json", restored.to_str().unwrap()],
        );
        assert!(!info.contains("backing-filename"), "{info}");
    }
}

#[test]
fn an_incremental_export_names_its_parent_export_as_a_relative_backing_file() {
    let g = Guest::new(
        "sbt-rebase",
        GuestOpts {
            prefill_mib: 16,
            ..Default::default()
        },
    );
    let env = Env::new();
    let full = env.backup(&g.name, &[]).assert_ok();
    g.wait_for_writes(g.writes() + 2);
    let inc = env.backup(&g.name, &[]).assert_ok();
    let (ok, dir, log) = env.duplicity_restore(&g.name, None, &["--no-encryption"], &[]);
    assert!(ok, "duplicity restore failed: {log}");
    let full_export = env.read_run(&full).status.unwrap().disks[0]
        .export_file
        .clone();
    let inc_status = env.read_run(&inc).status.unwrap();
    assert_eq!(inc_status.type_, Some(BackupType::Incremental));
    let export = dir.join(&inc_status.disks[0].export_file);
    let info = run_ok(
        "qemu-img",
        &["info", "-U", "--output=json", export.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["backing-filename"], full_export.as_str(), "{info}");
    // The checksum recorded at backup time is that of the rebased file on the target.
    assert_eq!(
        snapback::state_dir::sha256_file(&export).unwrap(),
        inc_status.disks[0].sha256.clone().unwrap()
    );
}
