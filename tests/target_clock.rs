//! Backups that the clock cannot mix up: several in one second, or after the clock stepped
//! back, each keep their own set on the target. libfaketime pins the clock of snapback and of
//! duplicity to one instant, so these tests cannot pass by luck on a slow machine.

mod common;

use std::path::Path;

use common::*;
use snapback::api::{BackupPhase, BackupType};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// Eleven months before the tests' real clock: a clock stepped back, and frozen.
const FROZEN: &str = "2026-01-01 00:00:00";

/// Makes every later `env.backup` run snapback, and the duplicity it starts, with the clock
/// frozen at FROZEN. (snapback gives duplicity a cleared environment, so duplicity gets the
/// clock from a wrapper found first on PATH.)
fn freeze_clock(env: &mut Env) {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "libfaketime (scripts/setup-host.sh installs it)"
    );
    let bin = env.dir.join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("duplicity");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport LD_PRELOAD={LIBFAKETIME} FAKETIME='{FROZEN}' FAKETIME_DONT_FAKE_MONOTONIC=1\nexec /usr/bin/duplicity \"$@\"\n"
        ),
    )
    .unwrap();
    run_ok("chmod", &["+x", wrapper.to_str().unwrap()]);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    env.extra_env = vec![
        ("PATH".into(), path),
        ("LD_PRELOAD".into(), LIBFAKETIME.into()),
        ("FAKETIME".into(), FROZEN.into()),
        // tokio's timers run on the monotonic clock: leave it running.
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
}

/// The distinct set times among the target's duplicity manifests.
fn set_times(env: &Env, domain: &str) -> Vec<String> {
    let mut times: Vec<String> = env
        .target_files_of(domain)
        .iter()
        .filter(|f| f.ends_with(".manifest"))
        .filter_map(|f| snapback::duplicity::names::parse(f))
        .map(|s| s.end.to_string())
        .collect();
    times.sort();
    times
}

#[test]
fn backups_in_one_frozen_second_after_the_clock_stepped_back_each_keep_their_own_restorable_set() {
    let g = Guest::new(
        "sbt-clock",
        GuestOpts {
            prefill_mib: 16,
            write_mib: 8,
            ..Default::default()
        },
    );
    let mut env = Env::new();
    // A full on the real clock, then the clock steps back eleven months and stops.
    let first = env.backup(&g.name, &[]).assert_ok();
    freeze_clock(&mut env);
    let mut runs = vec![first];
    for extra in [
        &["--type", "full"][..],
        &[][..],
        &["--type", "full"][..],
        &[][..],
    ] {
        g.wait_for_writes(g.writes() + 2);
        runs.push(env.backup(&g.name, extra).assert_ok());
    }
    // The last one again, paused, as the reference of the newest point.
    let (last, reference) = backup_paused(&env, &g, &[]);
    runs.push(last);
    env.extra_env.clear();

    let types: Vec<BackupType> = runs
        .iter()
        .map(|r| env.read_run(r).status.unwrap().type_.unwrap())
        .collect();
    assert_eq!(
        types,
        [
            BackupType::Full,
            BackupType::Full,
            BackupType::Incremental,
            BackupType::Full,
            BackupType::Incremental,
            BackupType::Incremental
        ]
    );
    let times = set_times(&env, &g.name);
    assert_eq!(times.len(), 6, "one set per run on the target: {times:?}");
    let mut recorded: Vec<String> = runs
        .iter()
        .map(|r| {
            env.read_run(r)
                .status
                .unwrap()
                .target_time
                .unwrap()
                .to_string()
        })
        .collect();
    recorded.sort();
    recorded.dedup();
    assert_eq!(recorded, times, "each run recorded its own set's time");

    // duplicity still reads the target: every point is listed ...
    let list = env.snapback(&["list", "--domain", &g.name, "--target", &env.target]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert_eq!(list.stdout.lines().count(), 7, "{}", list.stdout);
    // ... the next backup works ...
    g.wait_for_writes(g.writes() + 2);
    let next = env.backup(&g.name, &[]).assert_ok();
    assert_eq!(
        env.read_run(&next).status.unwrap().phase,
        BackupPhase::Succeeded
    );
    // ... and the newest frozen-clock point restores byte for byte.
    let at = env
        .read_run(&runs[5])
        .status
        .unwrap()
        .snapshot_time
        .unwrap()
        .to_string();
    assert_restores_as_new_byte_exact(&env, &g.name, &["--at", &at], &reference);
}
