//! `snapback verify`: backups read back from the target and checked, on a real chain; a
//! damaged volume breaks exactly the points that need it.

mod common;

use std::io::{Seek, SeekFrom, Write};

use common::*;

/// The RESULT column of each line, oldest point first.
fn results(out: &SnapOut) -> Vec<String> {
    out.stdout
        .lines()
        .skip(1)
        .map(|l| {
            if l.contains(" OK") {
                "OK".to_string()
            } else if l.contains("broken (") {
                "broken".to_string()
            } else {
                l.to_string()
            }
        })
        .collect()
}

#[test]
fn verify_reads_every_point_back_and_names_the_points_a_damaged_volume_breaks() {
    let g = Guest::new(
        "sbt-verify",
        GuestOpts {
            prefill_mib: 16,
            write_mib: 8,
            ..Default::default()
        },
    );
    let env = Env::new();
    let mut runs = vec![];
    for _ in 0..3 {
        runs.push(env.backup(&g.name, &[]).assert_ok());
        g.wait_for_writes(g.writes() + 3);
    }

    let out = env.verify(&g.name, &["--all"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(results(&out), ["OK", "OK", "OK"], "{}", out.stdout);
    let out = env.verify(&g.name, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(results(&out), ["OK"], "latest by default: {}", out.stdout);

    // Damage the middle point's (first incremental's) volume on the target.
    let s = env.read_run(&runs[1]).status.unwrap();
    let t = s
        .target_time
        .unwrap()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let vol = env
        .target_files_of(&g.name)
        .into_iter()
        .find(|f| f.starts_with("duplicity-inc.") && f.contains(&format!(".to.{t}.vol1")))
        .expect("the incremental's first volume");
    let path = env
        .target_dir
        .join(snapback::catalog::layout::domain_dir(&g.name))
        .join(&vol);
    let len = std::fs::metadata(&path).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(&[0x5a; 4096]).unwrap();
    drop(f);

    let out = env.verify(&g.name, &["--all"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        results(&out),
        ["OK", "broken", "broken"],
        "the full stays sound; both incrementals need the damaged set:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr
            .lines()
            .last()
            .unwrap_or("")
            .starts_with("VerificationFailed: 2 of 3 points are broken"),
        "{}",
        out.stderr
    );
    // `snapback list` still lists, and names the damaged set.
    let list = env.snapback(&["list", "--domain", &g.name, "--target", &env.target]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(
        list.stdout.contains("(damaged: VerificationFailed)"),
        "{}",
        list.stdout
    );
    // A new chain starts cleanly beside the damaged one.
    let fresh = env.backup(&g.name, &["--type", "full"]).assert_ok();
    let out = env.verify(&g.name, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    // A volume missing from the target (deleted by hand, lost by a storage fault): verify
    // names the point broken, and a restore of it fails with its reason and leaves nothing.
    let t = env
        .read_run(&fresh)
        .status
        .unwrap()
        .target_time
        .unwrap()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let vol = env
        .target_files_of(&g.name)
        .into_iter()
        .find(|f| f.starts_with(&format!("duplicity-full.{t}.vol1.")))
        .expect("the new full's first volume");
    let gone = env
        .target_dir
        .join(snapback::catalog::layout::domain_dir(&g.name))
        .join(&vol);
    std::fs::remove_file(&gone).unwrap();
    let all = env.verify(&g.name, &["--all"]);
    assert_eq!(all.code, 1, "{}\n{}", all.stdout, all.stderr);
    assert_eq!(
        results(&all),
        ["OK", "broken", "broken", "broken"],
        "the set with a missing volume is listed, broken:\n{}",
        all.stdout
    );
    assert!(
        all.stdout.contains("a volume of the set is missing"),
        "{}",
        all.stdout
    );
    let latest = env.verify(&g.name, &[]);
    assert_eq!(latest.code, 1, "{}\n{}", latest.stdout, latest.stderr);
    assert_eq!(
        results(&latest),
        ["broken"],
        "latest is the damaged set, not the point before it:\n{}",
        latest.stdout
    );
    let new_name = format!("{}-from-missing", g.name);
    let _defined = Defined(new_name.clone());
    let restored = env.dir.join("restored-missing");
    std::fs::create_dir_all(&restored).unwrap();
    let out = env.restore_as(&g.name, "latest", &new_name, &restored);
    out.assert_failed_with("VerificationFailed");
    assert!(
        out.last_err_line()
            .contains("a volume of the set is missing"),
        "{}",
        out.stderr
    );
    assert!(
        !virsh_ok(&["list", "--all", "--name"]).contains(&new_name),
        "no domain is left defined"
    );
    let left: Vec<_> = std::fs::read_dir(&restored)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "nothing is left in the storage dir: {left:?}"
    );
    assert!(env.staging_files().is_empty(), "{:?}", env.staging_files());
    // A single point by run name.
    let out = env.verify(&g.name, &["--at", &runs[0]]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(results(&out), ["OK"]);
    // Nothing was left in the state dir's scratch space.
    let left: Vec<_> = std::fs::read_dir(env.state.join("verify-work"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
