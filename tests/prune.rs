//! Retention on a real target: several chains form, pruning removes exactly the planned
//! whole chains, and every kept point still restores.

mod common;

use std::process::Command;

use common::*;
use snapback::api::BackupType;

/// How many complete chains duplicity's collection status reports for the domain (from a
/// fresh cache, so only the target's files count).
fn chains_on_target(env: &Env, domain: &str) -> usize {
    chains_at(env, &snapback::catalog::layout::domain_dir(domain))
}

/// The same for one directory of the target (`web.files`: a domain's files chains).
fn chains_at(env: &Env, dir: &str) -> usize {
    let url = format!("{}/{dir}", env.target);
    let out = Command::new("duplicity")
        .args([
            "collection-status",
            "--archive-dir",
            env.dir.join(unique("status-cache")).to_str().unwrap(),
            &url,
        ])
        .env("PASSPHRASE", "")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let primary = usize::from(text.contains("Found primary backup chain"));
    // "Found 2 secondary backup chains." / "Found 1 secondary backup chain."
    let secondary = text
        .lines()
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 3 && w[0] == "Found" && w[2] == "secondary")
                .then(|| w[1].parse::<usize>().ok())?
        })
        .unwrap_or(0);
    primary + secondary
}

fn prune_config(env: &Env, domain: &str, retention: &str) -> std::path::PathBuf {
    write_config(
        env,
        "nightly",
        domain,
        "0 2 * * *",
        &format!("  retention: {retention}\n"),
    )
}

#[test]
fn pruning_removes_exactly_the_planned_whole_chains_and_kept_points_still_restore() {
    let g = Guest::new("sbt-prune", GuestOpts::default());
    let env = Env::new();
    let mut runs = vec![];
    for _ in 0..5 {
        runs.push(
            env.backup(&g.name, &["--max-incrementals", "1"])
                .assert_ok(),
        );
        let w = g.writes();
        g.wait_for_writes(w + 2);
    }
    let types: Vec<_> = runs
        .iter()
        .map(|r| env.read_run(r).status.unwrap().type_.unwrap())
        .collect();
    use BackupType::*;
    assert_eq!(
        types,
        [Full, Incremental, Full, Incremental, Full],
        "three chains"
    );
    assert_eq!(chains_on_target(&env, &g.name), 3);

    // keepLast 3 keeps runs 3..5, i.e. the last two chains; the first chain goes whole.
    let config = prune_config(&env, &g.name, "{keepLast: 3}");
    let dry = env.snapback(&["prune", "--config", config.to_str().unwrap(), "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let would: Vec<&str> = dry
        .stdout
        .lines()
        .filter(|l| l.contains("would delete"))
        .collect();
    assert_eq!(would.len(), 2, "{}", dry.stdout);
    assert!(would[0].contains(&runs[0]) && would[1].contains(&runs[1]));
    assert!(dry
        .stdout
        .lines()
        .any(|l| l.contains(&runs[2]) && l.contains("keepLast")));
    assert!(dry
        .stdout
        .lines()
        .any(|l| l.contains(&runs[3]) && l.contains("keepLast")));
    assert_eq!(
        chains_on_target(&env, &g.name),
        3,
        "a dry run deletes nothing"
    );

    let out = env.snapback(&["prune", "--config", config.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout.lines().filter(|l| l.contains("deleted")).count(),
        2,
        "{}",
        out.stdout
    );
    assert_eq!(
        chains_on_target(&env, &g.name),
        2,
        "exactly the planned chains remain"
    );
    let table = env.snapback(&["get", "backupruns"]).stdout;
    for (i, r) in runs.iter().enumerate() {
        let row = table.lines().find(|l| l.starts_with(r.as_str())).unwrap();
        assert_eq!(row.contains("Expired"), i < 2, "{row}");
    }

    // Every kept point still restores.
    for r in &runs[2..] {
        let at = env
            .read_run(r)
            .status
            .unwrap()
            .snapshot_time
            .unwrap()
            .to_string();
        let storage = env.dir.join(unique("st"));
        std::fs::create_dir_all(&storage).unwrap();
        let new = format!("{}-{}", g.name, &r[r.len() - 4..]);
        let o = env.snapback(&[
            "restore",
            "--domain",
            &g.name,
            "--target",
            &env.target,
            "--at",
            &at,
            "--as",
            &new,
            "--storage-dir",
            storage.to_str().unwrap(),
        ]);
        let _ = virsh(&["undefine", &new]);
        assert_eq!(o.code, 0, "restore of kept point {r}: {}", o.stderr);
    }
    // The chain being written next is safe, and the next backup continues the newest chain.
    let next = env
        .backup(&g.name, &["--max-incrementals", "1"])
        .assert_ok();
    assert_eq!(env.read_run(&next).status.unwrap().type_, Some(Incremental));
}

#[test]
fn bad_retention_rules_are_refused_before_anything_is_deleted() {
    let env = Env::new();
    let config = prune_config(&env, "sbt-none", "{keepDaily: -1}");
    let out = env.snapback(&["prune", "--config", config.to_str().unwrap()]);
    assert_ne!(out.code, 0);
    assert!(
        out.last_err_line().starts_with("InvalidSpec")
            && out.stderr.contains("policy.yaml")
            && out.stderr.contains("keepDaily is -1"),
        "{}",
        out.stderr
    );
    let config = prune_config(&env, "sbt-none", "{keepLast: 0}");
    let out = env.snapback(&["prune", "--config", config.to_str().unwrap()]);
    assert!(
        out.stderr.contains("every retention rule is zero"),
        "{}",
        out.stderr
    );
    let config = prune_config(&env, "sbt-none", "{maxAge: 3X}");
    let out = env.snapback(&["prune", "--config", config.to_str().unwrap()]);
    assert!(out.stderr.contains("unknown unit 'X'"), "{}", out.stderr);
    // No retention at all means keep everything: listed, nothing deleted, no error.
    let config = prune_config(&env, "sbt-none", "{}");
    let out = env.snapback(&["prune", "--config", config.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("no retention rules"), "{}", out.stdout);
}

#[test]
fn standalone_once_runs_each_policy_and_prunes_after_each_successful_run() {
    let g = Guest::new("sbt-once", GuestOpts::default());
    let env = Env::new();
    let config = prune_config(&env, &g.name, "{keepLast: 2}");
    // A full cadence of one incremental per chain: full, inc, full, inc ...
    let policy = config.join("policy.yaml");
    let text = std::fs::read_to_string(&policy).unwrap().replace(
        "  retention:",
        "  fullCadence: {maxIncrementals: 1}\n  retention:",
    );
    std::fs::write(&policy, text).unwrap();

    let mut names = vec![];
    for _ in 0..4 {
        let out = env.snapback(&["standalone", "--config", config.to_str().unwrap(), "--once"]);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        let row = out
            .stdout
            .lines()
            .find(|l| l.starts_with("nightly"))
            .expect("a row per policy and domain")
            .to_string();
        assert!(row.contains("Succeeded"), "{row}");
        names.push(row.split_whitespace().nth(2).unwrap().to_string());
        let w = g.writes();
        g.wait_for_writes(w + 2);
    }
    let runs: Vec<_> = names.iter().map(|n| env.read_run(n)).collect();
    assert!(runs
        .iter()
        .all(|r| r.spec.policy_ref.as_deref() == Some("nightly")));
    use BackupType::*;
    let types: Vec<_> = runs
        .iter()
        .map(|r| r.status.clone().unwrap().type_.unwrap())
        .collect();
    assert_eq!(types, [Full, Incremental, Full, Incremental]);
    // After the 4th run keepLast 2 keeps only the second chain: the first went whole.
    assert_eq!(chains_on_target(&env, &g.name), 1);
    let table = env.snapback(&["get", "backupruns"]).stdout;
    for (i, n) in names.iter().enumerate() {
        let row = table.lines().find(|l| l.starts_with(n.as_str())).unwrap();
        assert_eq!(row.contains("Expired"), i < 2, "{row}");
    }
    let last = runs[3].status.clone().unwrap();
    let c = last
        .conditions
        .iter()
        .find(|c| c.type_ == "Pruned")
        .expect("prune recorded on the run");
    assert_eq!(c.status, "True");

    // A schedule that is not cron is refused up front, with the file and field named.
    std::fs::write(
        &policy,
        std::fs::read_to_string(&policy)
            .unwrap()
            .replace("'0 2 * * *'", "'at two'"),
    )
    .unwrap();
    let bad = env.snapback(&["standalone", "--config", config.to_str().unwrap()]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.starts_with("InvalidSpec")
            && bad.stderr.contains("policy.yaml")
            && bad.stderr.contains("spec.schedule"),
        "{}",
        bad.stderr
    );
}

#[test]
fn a_damaged_set_and_the_whole_sets_that_need_it_are_pruned_with_their_chain() {
    let g = Guest::new("sbt-prdmg", GuestOpts::default());
    let env = Env::new();
    let mut runs = vec![];
    for _ in 0..3 {
        runs.push(env.backup(&g.name, &[]).assert_ok());
        g.wait_for_writes(g.writes() + 2);
    }
    // The full loses its volume: duplicity then leaves the whole chain out of its collection,
    // and before, prune never saw it and kept it on the target for good.
    let stamp = env
        .read_run(&runs[0])
        .status
        .unwrap()
        .target_time
        .unwrap()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let vol = env
        .target_files_of(&g.name)
        .into_iter()
        .find(|f| f.starts_with(&format!("duplicity-full.{stamp}.vol1.")))
        .unwrap();
    std::fs::remove_file(
        env.target_dir
            .join(snapback::catalog::layout::domain_dir(&g.name))
            .join(vol),
    )
    .unwrap();
    let before = env.target_files_of(&g.name);
    let config = prune_config(&env, &g.name, "{keepLast: 1}");
    // While it is the newest chain, it stays (the newest set is never deleted).
    let out = env.snapback(&["prune", "--config", config.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("deleted"), "{}", out.stdout);
    assert_eq!(env.target_files_of(&g.name), before, "{}", out.stdout);

    let fresh = env.backup(&g.name, &["--type", "full"]).assert_ok();
    let dry = env.snapback(&["prune", "--config", config.to_str().unwrap(), "--dry-run"]);
    let would: Vec<&str> = dry
        .stdout
        .lines()
        .filter(|l| l.contains("would delete"))
        .collect();
    assert_eq!(
        would.len(),
        3,
        "the damaged full and both incrementals:\n{}",
        dry.stdout
    );
    assert!(
        would.iter().all(|l| l.contains("cannot be restored")),
        "{}",
        dry.stdout
    );
    let out = env.snapback(&["prune", "--config", config.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let left = env.target_files_of(&g.name);
    assert!(
        left.iter().all(|f| !f.contains(&stamp)),
        "nothing of the damaged chain is left: {left:?}"
    );
    let list = env.snapback(&["list", "--domain", &g.name, "--target", &env.target]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(
        list.stdout.contains(&fresh) && !list.stdout.contains("damaged"),
        "{}",
        list.stdout
    );
    assert!(list.stderr.is_empty(), "{}", list.stderr);
}

#[test]
fn files_chains_are_pruned_whole_by_the_policy_rules_and_the_kept_point_still_restores() {
    let env = Env::new();
    let tree = env.dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("hello.txt"), b"kept\n").unwrap();
    let data = ext4_raw_disk(&tree, &env.dir.join("data.raw"));
    let g = Guest::new(
        "sbt-prfiles",
        GuestOpts {
            extra_disks: vec![data],
            ..Default::default()
        },
    );
    // Two files chains of two sets each.
    let mut runs = Vec::new();
    for t in ["full", "auto", "full", "auto"] {
        let out = env.backup(&g.name, &["--mode", "files", "--type", t]);
        runs.push(out.assert_ok());
    }
    let files_dir = format!("{}.files", snapback::catalog::layout::domain_dir(&g.name));
    assert_eq!(chains_at(&env, &files_dir), 2);

    let config = write_config(
        &env,
        "files",
        &g.name,
        "0 2 * * *",
        "  mode: Files\n  retention: {keepLast: 1}\n",
    );
    let dry = env.snapback(&["prune", "--config", config.to_str().unwrap(), "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(
        dry.stdout.matches("would delete").count(),
        2,
        "the older chain's two sets:\n{}",
        dry.stdout
    );
    assert_eq!(chains_at(&env, &files_dir), 2, "a dry run deletes nothing");

    let out = env.snapback(&["prune", "--config", config.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(chains_at(&env, &files_dir), 1, "{}", out.stdout);
    let expired: Vec<bool> = runs
        .iter()
        .map(|r| {
            env.read_run(r)
                .status
                .unwrap()
                .conditions
                .iter()
                .any(|c| c.type_ == "Expired" && c.status == "True")
        })
        .collect();
    assert_eq!(expired, [true, true, false, false]);

    let to = env.dir.join("out");
    let r = env.snapback(&[
        "restore",
        "--domain",
        &g.name,
        "--target",
        &env.target,
        "--files",
        "/hello.txt",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(to.join("hello.txt")).unwrap(), b"kept\n");
}
