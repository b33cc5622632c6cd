//! The crash campaign: `kill -9` at every step of a backup and of a restore, then `snapback
//! resume`. The process is killed at named crash points (`SNAPBACK_CRASH_AT`, see
//! `snapback::process::crash_point`), so each moment is hit on purpose, not by timing.
//!
//! docs/reliability.md is rendered from the tables below; a test fails when it is stale
//! (`SNAPBACK_WRITE_DOCS=1 cargo test --test crash_campaign reliability` rewrites it).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use snapback::api::{BackupPhase, RestorePhase, RestoreRequest};

/// A kill -9 at a crash point, what the test checks afterwards, and the outcome.
struct Crash {
    point: &'static str,
    when: &'static str,
}

const BACKUP_CRASHES: &[Crash] = &[
    Crash {
        point: "backup:Preparing",
        when: "the run is recorded, nothing is decided yet",
    },
    Crash {
        point: "backup:before:Snapshotting",
        when: "full or incremental decided, not yet recorded",
    },
    Crash {
        point: "backup:Snapshotting",
        when: "Snapshotting recorded, before hooks, freeze and the job",
    },
    Crash {
        point: "backup:snapshotting:job-begun",
        when: "the push-mode job has just begun (its checkpoint exists), the guest not yet thawed or resumed, nothing recorded of it",
    },
    Crash {
        point: "backup:Exporting",
        when: "Exporting recorded, job running or done",
    },
    Crash {
        point: "backup:Uploading",
        when: "exports sealed (checksums, manifest), before duplicity",
    },
    Crash {
        point: "backup:uploading:partial",
        when: "mid-upload: some volumes on the target, more to come",
    },
    Crash {
        point: "backup:Finalizing",
        when: "the set is on the target, old checkpoints not yet pruned",
    },
    Crash {
        point: "backup:before:Succeeded",
        when: "staging emptied and hooks run, success not yet recorded",
    },
];

/// The kubevirt-worker killed in a KubeVirt backup, then the next worker (tests/kubevirt_worker.rs,
/// against the fake KubeVirt); each point must be named there.
const KUBEVIRT_CRASHES: &[Crash] = &[
    Crash {
        point: "backup:Preparing",
        when: "the run is taken and recorded, the VM not yet read",
    },
    Crash {
        point: "backup:Snapshotting",
        when: "full or incremental decided and recorded, no PVC or VirtualMachineBackup yet",
    },
    Crash {
        point: "backup:snapshotting:job-begun",
        when: "KubeVirt's VirtualMachineBackup created, nothing recorded of it",
    },
    Crash {
        point: "backup:Exporting",
        when: "KubeVirt's backup created and recorded, not yet waited for or exported",
    },
    Crash {
        point: "kubevirt:export-served",
        when: "the VirtualMachineExport serves the PVC, no file fetched",
    },
    Crash {
        point: "backup:Uploading",
        when: "the files fetched into staging and sealed, before duplicity",
    },
    Crash {
        point: "backup:Finalizing",
        when: "the set is on the target; the backup, export, token Secret and PVC not yet deleted",
    },
    Crash {
        point: "backup:before:Succeeded",
        when: "everything KubeVirt-side deleted, success not yet recorded",
    },
];

/// Checked after every kubevirt-worker crash and the next worker.
const KUBEVIRT_CHECKS: &str = "the next worker ends the run Succeeded and incremental, on the previous run's checkpoint; KubeVirt took one backup for it (the tracker holds its checkpoint, the domain gained that one checkpoint only); no PVC, VirtualMachineBackup, VirtualMachineExport or token Secret of a run is left; staging is empty; at the end every point verifies";

const RESTORE_CRASHES: &[Crash] = &[
    Crash {
        point: "restore:Resolving",
        when: "the request is recorded, the point not yet chosen",
    },
    Crash {
        point: "restore:Fetching",
        when: "point and chain chosen, nothing fetched",
    },
    Crash {
        point: "restore:fetching:file",
        when: "mid-fetch: one file of the chain fetched",
    },
    Crash {
        point: "restore:rebuilding:converting",
        when: "mid-rebuild: the disk is being written (as .part)",
    },
    Crash {
        point: "restore:Defining",
        when: "disks rebuilt and checked, nothing defined",
    },
    Crash {
        point: "restore:defining:defined",
        when: "the new domain is defined, its UUID not yet recorded",
    },
    Crash {
        point: "restore:before:Succeeded",
        when: "everything done, success not yet recorded",
    },
];

/// Checked after every backup crash and its resume.
const BACKUP_CHECKS: &str = "resume ends the run Succeeded; the domain runs on its original disk with no job; only the chain's newest checkpoint is left in libvirt and no bitmap of another run in the image; staging is empty; `snapback verify` reads the newest point back intact; the next backup succeeds; at the end every point verifies and the newest restores byte-exact";
/// Checked after every restore crash and its resume.
const RESTORE_CHECKS: &str = "resume ends the request Succeeded; exactly one new domain is defined, on the final disk path, and the disk equals the paused source at the point byte for byte; no `.part` file is left; the original domain is untouched";

/// Other failures, each covered by the named test.
const FAULTS: &[(&str, &str, &str)] = &[
    (
        "KubeVirt: the kubevirt-worker killed by SIGKILL mid-upload of a restored disk into its DataVolume (fake KubeVirt and CDI)",
        "the next worker adopts the DataVolume it had named in status, uploads again with a new token and Succeeds; the disk byte-exact to the point, booting; nothing left in its work dir",
        "kubevirt_restore.rs: a_kubevirt_vm_is_restored_as_a_new_vm_that_holds_the_point_and_boots_after_a_kill_mid_upload_then_in_place",
    ),
    (
        "KubeVirt: the worker killed right after it created the new VM (or, in place, repointed the VM), then the RestoreRequest deleted",
        "the next worker rolls back: the new VM and its DataVolume (and claim) deleted; in place, the VM back on its previous disk and running, the DataVolume made deleted",
        "kubevirt_restore.rs: a_kubevirt_vm_is_restored_as_a_new_vm_that_holds_the_point_and_boots_after_a_kill_mid_upload_then_in_place",
    ),
    (
        "libvirtd restarted (stopped and started) during an export, the job held in qemu across the restart",
        "libvirt 9.0 keeps the job as the domain's active backup job; snapback reconnects and the run Succeeds; no job, frozen filesystem, stray checkpoint or bitmap, staging or lock left; the next incremental works; every point verifies",
        "host_faults.rs: a_libvirtd_restart_during_an_export_lets_the_backup_finish_and_leaves_nothing_behind",
    ),
    (
        "the staging filesystem fills up mid-export (a 64 MiB tmpfs, a compressed image that passes Preparing's check)",
        "Failed StagingFull; its checkpoint and bitmap removed, no job, staging empty; with room the next full restores byte-exact",
        "host_faults.rs: staging_that_fills_up_mid_export_fails_the_run_as_staging_full_and_the_next_backup_is_whole",
    ),
    (
        "kill -9 right after a UEFI guest's NVRAM and TPM state are copied (guest paused); then during a restore, right after the copy's own are placed",
        "resume thaws the guest and finishes both; the point names both files; the copy gets the saved state and is defined once; the original's store is untouched",
        "firmware.rs: a_kill_while_firmware_state_is_copied_or_placed_leaves_the_original_alone_and_resume_finishes",
    ),
    (
        "kill -9 during an in-place restore of a raw-file disk, while the rebuilt chain is written into the new sparse raw file",
        "the domain still runs on its old file, whose SHA-256 is unchanged; resume finishes, byte-exact, and keeps the old file renamed aside, unchanged",
        "raw_disks.rs: a_raw_file_disk_restores_in_place_into_a_sparse_raw_file_and_the_old_file_stays_until_the_new_one_is_verified",
    ),
    (
        "kill -9 during an in-place restore of a UEFI guest, right after its own variable store was moved aside and before the saved one is placed",
        "the moved-aside store is whole and unchanged; resume places the saved NVRAM and TPM state, keeps the replaced ones, and the domain boots",
        "firmware.rs: an_in_place_restore_puts_the_saved_firmware_state_back_and_keeps_the_replaced_files",
    ),
    (
        "the VM is destroyed while the backup job runs",
        "Failed (BackupJobFailed); the failed run's checkpoint and bitmap are removed though the domain is shut off; the next backup is clean",
        "leftovers.rs: a_vm_destroyed_during_a_backup_keeps_no_checkpoint_or_bitmap_of_the_failed_run",
    ),
    (
        "the VM's qemu is killed (kill -9) while the backup job runs",
        "Failed; its checkpoint is removed; the lost bitmaps make the next run a full that says why; every point verifies",
        "leftovers.rs: a_vm_whose_qemu_is_killed_during_a_backup_gets_a_clean_full_next_time",
    ),
    (
        "the target filesystem fills up during the upload; then turns read-only",
        "Failed TargetFull, then TargetUnreachable; the VM is as it was; earlier points verify; the chain goes on once there is room",
        "target_faults.rs: a_full_or_read_only_target_filesystem_fails_the_run_with_its_reason_and_harms_nothing",
    ),
    (
        "the S3 server goes away between two backups",
        "Failed TargetUnreachable; the VM is as it was",
        "target_faults.rs: an_s3_server_that_goes_away_fails_the_run_as_target_unreachable_and_harms_nothing",
    ),
    (
        "secrets: passphrase and cloud keys through backup, verify and restore",
        "never in a child's argv (recorded by wrappers), the output, the run records or any file under the state dir",
        "secrets.rs: passphrases_and_cloud_keys_never_reach_argv_output_records_or_files",
    ),
    (
        "arbitrary input to every parser (duplicity logs, manifests, URLs, cron, durations, sizes, retention, hooks, config dirs, names)",
        "no panic; refusals say what is wrong; a domain name never leaves its directory on the target",
        "parsers_never_panic.rs: a_domain_name_never_leaves_its_directory_on_the_target",
    ),
    (
        "a bitmap an earlier failed run left without a checkpoint",
        "removed by the next run (QMP while running); another tool's bitmap is kept",
        "leftovers.rs: a_bitmap_a_failed_run_left_without_a_checkpoint_is_removed_by_the_next_run",
    ),
    (
        "qemu crashes: the bitmap is lost",
        "the next run is a full with fullReason CheckpointInconsistent",
        "backup_live.rs: auto_takes_a_full_and_says_why_when_the_bitmap_is_lost_in_a_qemu_crash",
    ),
    (
        "several backups in one second; the clock steps back and stands still",
        "each set gets its own time after the target's newest; all restore; the chain goes on",
        "target_clock.rs: backups_in_one_frozen_second_after_the_clock_stepped_back_each_keep_their_own_restorable_set",
    ),
    (
        "the single-host daemon's clock jumps over a tick, back before it and over it again, then two days ahead",
        "one run for the tick, none doubled; after the jump ahead the newest tick runs and the one between is counted in missedSchedules",
        "standalone_daemon.rs: the_daemon_loses_and_doubles_no_run_when_its_clock_jumps_back_and_forth",
    ),
    (
        "restore names that would leave the storage dir (`--as ../x`, `a/b`, control characters)",
        "refused InvalidSpec; nothing defined or written",
        "restore.rs: bad_restore_input_gets_a_clear_reason_and_changes_nothing",
    ),
    (
        "a volume on the target is damaged",
        "verify names the broken points (VerificationFailed) and the sound ones; list still lists; a new full starts a sound chain",
        "verify.rs: verify_reads_every_point_back_and_names_the_points_a_damaged_volume_breaks",
    ),
    (
        "a volume of the newest set is missing from the target",
        "verify --all and verify of the latest name that set broken (its manifest says it was uploaded whole); a restore of the latest fails VerificationFailed instead of bringing back the point before it, and leaves nothing",
        "verify.rs: verify_reads_every_point_back_and_names_the_points_a_damaged_volume_breaks",
    ),
    (
        "a scheduled verify (daemon, faked clock) finds the only full's volume damaged",
        "the run gets Verified=False VerificationFailed at the verify tick after it (not at a tick before it finished), having had Verified=True ReadBackOK at the tick before the damage; each tick is answered once (status.lastVerifyTick)",
        "standalone_daemon.rs: the_daemon_verifies_on_its_verify_schedule_and_marks_a_damaged_point_on_its_run",
    ),
    (
        "a scheduled verify in the node agent",
        "due only after a verify tick later than the run's end; one verify per domain, Verified=True on the run, metrics verified_points and verify_broken_points; nothing left under the state dir",
        "agent_live.rs: the_agent_verifies_its_domains_when_the_policy_verify_tick_is_due_and_records_the_verdict",
    ),
    (
        "a scheduled verify in the kubevirt-worker (no libvirt: only the target is read)",
        "due only after a verify tick later than the run's end; the VM's chain read back once, Verified=True on its run, the tick answered once; metrics verified_points and verify_broken_points; nothing left under the state dir",
        "kubevirt_backup.rs: the_kubevirt_worker_reads_a_vms_chain_back_when_its_policy_verify_tick_is_due_and_records_the_verdict",
    ),
    (
        "KubeVirt: a VM without a guest agent, backed up by the kubevirt-worker (KubeVirt completes with a quiesce warning)",
        "Succeeded, Quiesced=False GuestAgentUnavailable with KubeVirt's words; with quiesce: Required, Failed QuiesceFailed, and nothing of the run left in the cluster, in staging or on the target",
        "kubevirt_worker.rs: a_kubevirt_vm_without_a_guest_agent_is_backed_up_unfrozen_and_a_run_that_requires_freezing_fails_clean",
    ),
    (
        "SIGTERM during a run",
        "Failed (Interrupted); cleaned up; the next backup is incremental",
        "backup_safety.rs: sigterm_mid_run_cleans_up_and_fails_as_interrupted",
    ),
    (
        "a restore as a new domain while a backup of the same domain runs; an in-place restore meanwhile",
        "the restore as new succeeds byte-exact beside the backup; in place is refused Busy and touches nothing; the backup succeeds",
        "concurrency.rs: a_restore_as_new_runs_beside_a_backup_and_an_in_place_restore_is_refused_busy_meanwhile",
    ),
    (
        "a prune while a backup extends the newest chain",
        "the old chain goes, the extended chain reads back intact, the backup succeeds",
        "concurrency.rs: a_prune_during_a_backup_deletes_old_chains_only_and_both_finish_sound",
    ),
    (
        "a second run on the same domain and target",
        "refused Busy; the first is unharmed",
        "backup_safety.rs: a_second_run_on_the_same_domain_and_target_is_refused_as_busy",
    ),
    (
        "killed with the guest frozen and paused",
        "resume thaws and resumes the guest first",
        "backup_safety.rs: a_run_that_died_with_the_guest_frozen_and_paused_gives_it_back_on_resume",
    ),
    (
        "a files-mode run killed while the guest disks are mounted",
        "the next start detaches everything and finishes the run",
        "files_mode.rs: a_files_run_killed_while_mounted_is_cleaned_up_and_finished_by_the_next_start",
    ),
    (
        "a restore interrupted (SIGTERM)",
        "rolled back: no half-written disk, nothing defined",
        "restore.rs: an_interrupted_restore_rolls_back_and_leaves_no_half_written_disk",
    ),
    (
        "kill -9 in `snapback cbt enable` (overlay made, not yet defined) and in `cbt disable` (the raw device defined again, the overlay still in use)",
        "the definition is one or the other, never half; the domain boots; enable runs again; the overlay is removed once nothing uses it",
        "raw_disks.rs: changed_block_tracking_makes_a_block_disks_backups_incremental_from_the_next_start_and_a_kill_while_switching_leaves_a_domain_that_boots",
    ),
    (
        "a restore onto a block device that holds a filesystem",
        "refused InvalidSpec without --overwrite, nothing touched; with it, the domain is repointed and its old device left as it was",
        "raw_disks.rs: a_block_disk_restores_in_place_onto_a_new_device_that_holds_a_filesystem_only_with_overwrite_and_the_old_device_is_left_alone",
    ),
    (
        "the agent dies mid-run (Kubernetes mode)",
        "the next agent resumes the run; one upload",
        "agent_live.rs: a_run_in_flight_when_its_agent_dies_is_resumed_by_the_next_agent_and_runs_once",
    ),
];

fn render_doc() -> String {
    let mut s = String::from(
        "# Reliability: what was tried, and what happened\n\n\
         Generated from `tests/crash_campaign.rs` (`SNAPBACK_WRITE_DOCS=1 cargo test --test \
         crash_campaign reliability`); a test fails when this file and the tests disagree.\n\
         Every row is an automated test on a real libvirtd, qemu, duplicity and target.\n\n\
         ## kill -9 at every step of a backup, then `snapback resume`\n\n",
    );
    s.push_str(&format!("Checked every time: {BACKUP_CHECKS}.\n\n"));
    s.push_str("| crash point | the moment |\n|---|---|\n");
    for c in BACKUP_CRASHES {
        s.push_str(&format!("| `{}` | {} |\n", c.point, c.when));
    }
    s.push_str(
        "\n## kill -9 of the kubevirt-worker at every step of a KubeVirt backup, then the next \
         worker\n\nAgainst the fake KubeVirt of `tests/kubevirt_fake/` (a real libvirt push \
         backup underneath), in `tests/kubevirt_worker.rs`.\n\n",
    );
    s.push_str(&format!("Checked every time: {KUBEVIRT_CHECKS}.\n\n"));
    s.push_str("| crash point | the moment |\n|---|---|\n");
    for c in KUBEVIRT_CRASHES {
        s.push_str(&format!("| `{}` | {} |\n", c.point, c.when));
    }
    s.push_str(
        "\n## kill -9 at every step of a restore as a new domain, then `snapback resume`\n\n",
    );
    s.push_str(&format!("Checked every time: {RESTORE_CHECKS}.\n\n"));
    s.push_str("| crash point | the moment |\n|---|---|\n");
    for c in RESTORE_CRASHES {
        s.push_str(&format!("| `{}` | {} |\n", c.point, c.when));
    }
    s.push_str("\n## Faults\n\n| what happens | outcome | test |\n|---|---|---|\n");
    for (what, outcome, test) in FAULTS {
        s.push_str(&format!("| {what} | {outcome} | `{test}` |\n"));
    }
    s
}

#[test]
fn reliability_doc_matches_the_campaign_and_names_only_tests_that_exist() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reliability.md");
    let doc = render_doc();
    if std::env::var_os("SNAPBACK_WRITE_DOCS").is_some() {
        std::fs::write(&path, &doc).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == doc,
        "docs/reliability.md is stale: SNAPBACK_WRITE_DOCS=1 cargo test --test crash_campaign reliability"
    );
    let worker = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kubevirt_worker.rs"),
    )
    .unwrap();
    for c in KUBEVIRT_CRASHES {
        assert!(
            worker.contains(&format!("\"{}\"", c.point)),
            "kubevirt_worker.rs never crashes at {}",
            c.point
        );
    }
    for (_, _, test) in FAULTS {
        let (file, name) = test.split_once(": ").unwrap();
        let src = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join(file),
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            src.contains(&format!("fn {name}(")),
            "{file} has no test {name}"
        );
    }
}

fn resume(env: &Env, point: &str) {
    let out = env.snapback(&["resume", "--target", &env.target]);
    assert_eq!(
        out.code, 0,
        "{point}: resume failed:\n{}\n{}",
        out.stdout, out.stderr
    );
}

fn newest_succeeded_checkpoint(env: &Env) -> String {
    snapback::store::FileStore::new(&env.state)
        .backup_runs()
        .unwrap()
        .into_iter()
        .filter_map(|r| r.status)
        .filter(|s| s.phase == BackupPhase::Succeeded)
        .max_by_key(|s| s.target_time)
        .and_then(|s| s.checkpoint)
        .unwrap()
}

#[test]
fn a_backup_killed_at_any_step_is_finished_by_resume_and_leaves_the_vm_and_target_sound() {
    let g = Guest::new(
        "sbt-crashb",
        GuestOpts {
            prefill_mib: 24,
            write_mib: 8,
            ..Default::default()
        },
    );
    let env = Env::new();
    env.backup(&g.name, &[]).assert_ok();
    for c in BACKUP_CRASHES {
        g.wait_for_writes(g.writes() + 2);
        // Small volumes and a full make several volumes, so an upload can be cut mid-way.
        let mut args = vec![
            "backup",
            "--domain",
            &g.name,
            "--target",
            &env.target,
            "--volsize",
            "1",
        ];
        if c.point == "backup:uploading:partial" || c.point == "backup:snapshotting:job-begun" {
            args.extend(["--type", "full"]);
        }
        env.snapback_crash(&args, c.point);
        resume(&env, c.point);
        let runs = snapback::store::FileStore::new(&env.state)
            .backup_runs()
            .unwrap();
        for r in &runs {
            let s = r.status.clone().unwrap_or_default();
            assert_eq!(
                s.phase,
                BackupPhase::Succeeded,
                "{}: run {:?} ended {:?} {:?}",
                c.point,
                r.metadata.name,
                s.phase,
                s.failure
            );
        }
        let newest = newest_succeeded_checkpoint(&env);
        assert_left_clean(&g, &env, true, std::slice::from_ref(&newest));
        let stray: Vec<String> = image_bitmaps(&g.disk)
            .into_iter()
            .filter(|b| b.starts_with("snapback-") && *b != newest)
            .collect();
        assert!(stray.is_empty(), "{}: bitmaps left {stray:?}", c.point);
        let v = env.verify(&g.name, &[]);
        assert_eq!(v.code, 0, "{}: {}\n{}", c.point, v.stdout, v.stderr);
    }
    let v = env.verify(&g.name, &["--all"]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert_eq!(v.stdout.lines().count(), BACKUP_CRASHES.len() + 2);
    // The chain goes on, and its newest point restores byte for byte.
    let (_, reference) = backup_paused(&env, &g, &[]);
    assert_restores_as_new_byte_exact(&env, &g.name, &[], &reference);
}

fn restore_requests(env: &Env) -> Vec<RestoreRequest> {
    let dir = env.state.join("restorerequests");
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    serde_saphyr::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every `.part` file below `dir`.
fn part_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "part") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_restore_killed_at_any_step_is_finished_by_resume_byte_exact_and_defines_one_domain() {
    let g = Guest::new(
        "sbt-crashr",
        GuestOpts {
            prefill_mib: 24,
            write_mib: 8,
            ..Default::default()
        },
    );
    let env = Env::new();
    env.backup(&g.name, &["--volsize", "1"]).assert_ok();
    g.wait_for_writes(g.writes() + 3);
    let (_, reference) = backup_paused(&env, &g, &["--volsize", "1"]);
    for (i, c) in RESTORE_CRASHES.iter().enumerate() {
        let new = format!("{}-r{i}", g.name);
        let dir = env.dir.join(format!("storage-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        env.snapback_crash(
            &[
                "restore",
                "--domain",
                &g.name,
                "--target",
                &env.target,
                "--as",
                &new,
                "--storage-dir",
                dir.to_str().unwrap(),
            ],
            c.point,
        );
        resume(&env, c.point);
        let req = restore_requests(&env)
            .into_iter()
            .find(|r| r.spec.new_name.as_deref() == Some(new.as_str()))
            .unwrap_or_else(|| panic!("{}: no request for {new}", c.point));
        let s = req.status.unwrap();
        assert_eq!(
            s.phase,
            RestorePhase::Succeeded,
            "{}: {:?}",
            c.point,
            s.failure
        );
        let defined: Vec<String> = virsh_ok(&["list", "--all", "--name"])
            .lines()
            .filter(|l| l.trim() == new)
            .map(str::to_string)
            .collect();
        assert_eq!(defined.len(), 1, "{}: one domain {new}", c.point);
        let disk = dir.join(format!("{new}-vda.qcow2"));
        let xml = virsh_ok(&["dumpxml", &new]);
        assert!(
            xml.contains(&format!("file='{}'", disk.display())),
            "{}: the domain must use the final disk:\n{xml}",
            c.point
        );
        run_ok(
            "qemu-img",
            &[
                "compare",
                reference.to_str().unwrap(),
                disk.to_str().unwrap(),
            ],
        );
        assert!(
            part_files(&dir).is_empty(),
            "{}: {:?}",
            c.point,
            part_files(&dir)
        );
        let _ = virsh(&["undefine", &new]);
    }
    // The source domain was never touched.
    assert_eq!(g.state(), "running");
    assert_eq!(g.disk_sources(), vec![g.disk.display().to_string()]);
}
