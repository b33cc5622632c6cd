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

/// Deletes volume 1 of the backup set `run` took (as a storage fault or a hand would) and
/// returns that set's time as `snapback list` prints it.
fn lose_first_volume(env: &Env, domain: &str, run: &str) -> String {
    let t = env.read_run(run).status.unwrap().target_time.unwrap();
    let stamp = t.strftime("%Y%m%dT%H%M%SZ").to_string();
    let vol = env
        .target_files_of(domain)
        .into_iter()
        .find(|f| {
            f.starts_with(&format!("duplicity-full.{stamp}.vol1."))
                || (f.starts_with("duplicity-inc.") && f.contains(&format!(".to.{stamp}.vol1.")))
        })
        .unwrap_or_else(|| panic!("the first volume of {run}'s set"));
    std::fs::remove_file(
        env.target_dir
            .join(snapback::catalog::layout::domain_dir(domain))
            .join(vol),
    )
    .unwrap();
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The verify line of a run (or of a set time, for a set whose run cannot be read).
fn line_of<'a>(out: &'a SnapOut, key: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no line for {key}:\n{}", out.stdout))
}

#[test]
fn the_whole_sets_after_a_damaged_one_are_reported_as_needing_it_and_earlier_points_still_restore()
{
    let g = Guest::new("sbt-vchain", GuestOpts::default());
    let env = Env::new();
    let mut runs = vec![];
    for _ in 0..4 {
        runs.push(env.backup(&g.name, &[]).assert_ok());
        g.wait_for_writes(g.writes() + 2);
    }
    // The first incremental loses its volume: the two after it are whole but cannot be
    // restored, and must say so, not that they lost a volume or that their chain is "incomplete".
    let damaged_at = lose_first_volume(&env, &g.name, &runs[1]);
    let all = env.verify(&g.name, &["--all"]);
    assert_eq!(all.code, 1, "{}\n{}", all.stdout, all.stderr);
    assert_eq!(
        results(&all),
        ["OK", "broken", "broken", "broken"],
        "{}",
        all.stdout
    );
    assert!(
        line_of(&all, &damaged_at).contains("a volume of the set is missing"),
        "the damaged set names its own damage, not a duplicity traceback:\n{}",
        all.stdout
    );
    let needs = format!("its chain needs the damaged set at {damaged_at}");
    for r in &runs[2..] {
        let l = line_of(&all, r);
        assert!(
            l.contains("VerificationFailed") && l.contains(&needs),
            "{l}"
        );
        assert!(!l.contains("volume of the set is missing"), "{l}");
    }
    let list = env.snapback(&["list", "--domain", &g.name, "--target", &env.target]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(
        line_of(&list, &damaged_at).contains("(damaged: VerificationFailed)"),
        "{}",
        list.stdout
    );
    assert!(
        list.stderr
            .contains("1 backup set(s) cannot be read from the target, and 2 later set(s)"),
        "{}",
        list.stderr
    );
    // A restore of the latest is refused for that reason; of the full before it, it works.
    let new_name = format!("{}-latest", g.name);
    let _latest = Defined(new_name.clone());
    let dir = env.dir.join("restored-latest");
    std::fs::create_dir_all(&dir).unwrap();
    let out = env.restore_as(&g.name, "latest", &new_name, &dir);
    out.assert_failed_with("VerificationFailed");
    assert!(out.last_err_line().contains(&needs), "{}", out.stderr);
    let new_name = format!("{}-full", g.name);
    let _full = Defined(new_name.clone());
    let dir = env.dir.join("restored-full");
    std::fs::create_dir_all(&dir).unwrap();
    env.restore_as(&g.name, &runs[0], &new_name, &dir)
        .assert_ok();

    // A full that loses its only volume takes its whole chain out of duplicity's collection:
    // the whole incrementals after it still need it, and are named so.
    let full = env.backup(&g.name, &["--type", "full"]).assert_ok();
    g.wait_for_writes(g.writes() + 2);
    let inc = env.backup(&g.name, &[]).assert_ok();
    let full_at = lose_first_volume(&env, &g.name, &full);
    let inc_at = env
        .read_run(&inc)
        .status
        .unwrap()
        .target_time
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let all = env.verify(&g.name, &["--all"]);
    assert_eq!(
        results(&all),
        ["OK", "broken", "broken", "broken", "broken", "broken"],
        "{}",
        all.stdout
    );
    assert!(
        line_of(&all, &full_at).contains("a volume of the set is missing"),
        "{}",
        all.stdout
    );
    let l = line_of(&all, &inc_at);
    assert!(
        l.contains(&format!("its chain needs the damaged set at {full_at}"))
            && !l.contains("volume of the set is missing"),
        "{l}"
    );
    let latest = env.verify(&g.name, &[]);
    assert_eq!(results(&latest), ["broken"], "{}", latest.stdout);
    assert!(latest.stdout.contains(&inc_at), "{}", latest.stdout);
    let list = env.snapback(&["list", "--domain", &g.name, "--target", &env.target]);
    assert!(
        line_of(&list, &inc_at).contains(&format!("(needs damaged set {full_at})")),
        "{}",
        list.stdout
    );
}
