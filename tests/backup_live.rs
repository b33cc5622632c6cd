//! Image backups of live guests on a real libvirtd + qemu, uploaded with real duplicity.

mod common;

use common::*;
use snapback::api::{BackupPhase, BackupType, FullReason};

/// The time string duplicity restores a run's backup set at.
fn duplicity_time(s: &snapback::api::BackupRunStatus) -> String {
    s.target_time
        .expect("the run records duplicity's backup time")
        .strftime("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string()
}

fn checkpoint_of(env: &Env, run: &str) -> String {
    env.read_run(run).status.unwrap().checkpoint.unwrap()
}

#[test]
fn a_full_backup_of_a_writing_guest_uploads_a_verifiable_export_and_leaves_the_guest_as_it_was() {
    let g = Guest::new(
        "sbt-full",
        GuestOpts {
            prefill_mib: 64,
            ..Default::default()
        },
    );
    let env = Env::new();
    let before = g.writes();
    let out = env.backup(&g.name, &[]);
    let name = out.assert_ok();
    assert!(
        out.stderr.contains("Exporting") && out.stderr.contains("Uploading"),
        "progress on stderr:\n{}",
        out.stderr
    );

    let run = env.read_run(&name);
    let s = run.status.clone().unwrap();
    assert_eq!(s.phase, BackupPhase::Succeeded);
    assert_eq!(s.type_, Some(BackupType::Full));
    assert_eq!(s.full_reason, Some(FullReason::NoChain));
    assert!(s.online);
    assert!(
        s.size_bytes >= 64 << 20,
        "the export holds the allocated data: {}",
        s.size_bytes
    );
    assert_eq!(s.disks.len(), 1);
    let phases: Vec<BackupPhase> = s.phases.iter().map(|p| p.phase).collect();
    assert_eq!(
        phases,
        [
            BackupPhase::Preparing,
            BackupPhase::Snapshotting,
            BackupPhase::Exporting,
            BackupPhase::Uploading,
            BackupPhase::Finalizing
        ]
    );
    assert!(s.phases.iter().all(|p| p.end_time.is_some()));

    // The guest kept writing through the backup.
    g.wait_for_writes(before + 3);
    assert_left_clean(&g, &env, true, &[s.checkpoint.clone().unwrap()]);
    assert!(env
        .target_files_of(&g.name)
        .iter()
        .any(|f| f.starts_with("duplicity-full.") && f.ends_with(".manifest")));

    // What is on the target is the export whose checksum the run recorded, and a sound qcow2.
    let (ok, dir, log) = env.duplicity_restore(&g.name, None, &["--no-encryption"], &[]);
    assert!(ok, "duplicity restore failed: {log}");
    let export = dir.join(&s.disks[0].export_file);
    assert_eq!(
        snapback::state_dir::sha256_file(&export).unwrap(),
        s.disks[0].sha256.clone().unwrap()
    );
    run_ok("qemu-img", &["check", export.to_str().unwrap()]);
    let info = run_ok(
        "qemu-img",
        &["info", "--output=json", export.to_str().unwrap()],
    );
    assert!(
        info.contains(&format!("\"virtual-size\": {}", 512u64 << 20)),
        "{info}"
    );
    assert!(
        dir.join(format!("{name}.domain.xml")).exists(),
        "the domain XML travels with the backup"
    );
    assert!(dir.join(format!("{name}.checkpoint.xml")).exists());
    assert!(dir.join(format!("{name}.manifest.json")).exists());

    let table = env.snapback(&["get", "backupruns"]);
    assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);
    let row = table.stdout.lines().find(|l| l.starts_with(&name)).unwrap();
    for col in [g.name.as_str(), "Full", "Succeeded", "MiB"] {
        assert!(row.contains(col), "row {row:?} lacks {col}");
    }
}

#[test]
fn an_incremental_after_writes_exports_about_the_changed_data_not_the_disk() {
    let g = Guest::new(
        "sbt-inc",
        GuestOpts {
            prefill_mib: 200,
            write_mib: 8,
            ..Default::default()
        },
    );
    let env = Env::new();
    let full = env.backup(&g.name, &[]).assert_ok();
    let w = g.writes();
    g.wait_for_writes(w + 12);
    let inc = env.backup(&g.name, &[]).assert_ok();

    let f = env.read_run(&full).status.unwrap();
    let i = env.read_run(&inc).status.unwrap();
    assert_eq!(
        i.type_,
        Some(BackupType::Incremental),
        "auto gives an incremental on a valid chain"
    );
    assert_eq!(i.full_reason, None);
    assert_eq!(i.parent_checkpoint, f.checkpoint);
    assert_eq!(i.chain.as_deref(), Some(full.as_str()));
    assert_eq!(i.chain_index, 1);
    assert!(f.disks[0].export_bytes > 200 << 20);
    assert!(
        i.disks[0].export_bytes > 1 << 20,
        "the changed blocks are in the export"
    );
    assert!(
        i.disks[0].export_bytes < f.disks[0].export_bytes / 10,
        "incremental {} should be far below full {}",
        i.disks[0].export_bytes,
        f.disks[0].export_bytes
    );
    assert!(
        env.target_files_of(&g.name)
            .iter()
            .any(|f| f.starts_with("duplicity-inc.")),
        "an image incremental is a duplicity incremental"
    );
    // Only the newest checkpoint is kept.
    assert_left_clean(&g, &env, true, &[i.checkpoint.clone().unwrap()]);

    // Rebased onto the full, the incremental reads as a whole disk holding the guest's writes.
    let (ok, dir, log) = env.duplicity_restore(&g.name, None, &["--no-encryption"], &[]);
    assert!(ok, "{log}");
    let (ok, full_dir, log) = env.duplicity_restore(
        &g.name,
        Some(&duplicity_time(&f)),
        &["--no-encryption"],
        &[],
    );
    assert!(ok, "{log}");
    let inc_img = dir.join(&i.disks[0].export_file);
    let full_img = full_dir.join(&f.disks[0].export_file);
    run_ok(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-F",
            "qcow2",
            "-b",
            full_img.to_str().unwrap(),
            inc_img.to_str().unwrap(),
        ],
    );
    let raw = env.dir.join("flat.raw");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            inc_img.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let data = std::fs::read(&raw).unwrap();
    let region = &data[64 << 20..72 << 20];
    assert!(
        region.windows(22).any(|w| w == b"SNAPBACK-WRITER block "),
        "the writer's blocks are in the restored image"
    );
}

#[test]
fn auto_takes_a_full_and_says_why_when_the_bitmap_is_lost_in_a_qemu_crash() {
    let g = Guest::new("sbt-crash", GuestOpts::default());
    let env = Env::new();
    let first = env.backup(&g.name, &[]).assert_ok();
    let old_cp = checkpoint_of(&env, &first);

    g.kill_qemu();
    g.start();
    let after = env.backup(&g.name, &[]).assert_ok();
    let s = env.read_run(&after).status.unwrap();
    assert_eq!(s.type_, Some(BackupType::Full));
    assert_eq!(s.full_reason, Some(FullReason::CheckpointInconsistent));
    // The broken checkpoint is gone, the new one is the chain's base.
    assert_left_clean(&g, &env, true, &[s.checkpoint.clone().unwrap()]);
    assert!(!g.checkpoints().contains(&old_cp));

    let next = env.backup(&g.name, &[]).assert_ok();
    assert_eq!(
        env.read_run(&next).status.unwrap().type_,
        Some(BackupType::Incremental)
    );
}

#[test]
fn auto_takes_a_full_when_the_checkpoint_is_missing_the_disk_grew_or_the_cadence_passed() {
    let g = Guest::new("sbt-reasons", GuestOpts::default());
    let env = Env::new();
    let a = env.backup(&g.name, &[]).assert_ok();

    // Someone deleted the checkpoint.
    virsh_ok(&["checkpoint-delete", &g.name, &checkpoint_of(&env, &a)]);
    let b = env.backup(&g.name, &[]).assert_ok();
    assert_eq!(
        env.read_run(&b).status.unwrap().full_reason,
        Some(FullReason::CheckpointMissing)
    );

    // The disk was resized.
    virsh_ok(&["blockresize", &g.name, "vda", "600M"]);
    let c = env.backup(&g.name, &[]).assert_ok();
    let cs = env.read_run(&c).status.unwrap();
    assert_eq!(cs.full_reason, Some(FullReason::DiskSizeChanged));
    assert_eq!(cs.disks[0].virtual_size, 600 << 20);

    // maxIncrementals 1: one incremental, then the cadence forces a full.
    let d = env
        .backup(&g.name, &["--max-incrementals", "1"])
        .assert_ok();
    assert_eq!(
        env.read_run(&d).status.unwrap().type_,
        Some(BackupType::Incremental)
    );
    let e = env
        .backup(&g.name, &["--max-incrementals", "1"])
        .assert_ok();
    let es = env.read_run(&e).status.unwrap();
    assert_eq!(
        (es.type_, es.full_reason),
        (Some(BackupType::Full), Some(FullReason::FullCadence))
    );

    // --type full is honoured and recorded as requested.
    let f = env.backup(&g.name, &["--type", "full"]).assert_ok();
    assert_eq!(
        env.read_run(&f).status.unwrap().full_reason,
        Some(FullReason::Requested)
    );
    assert_left_clean(&g, &env, true, &[checkpoint_of(&env, &f)]);
}

#[test]
fn an_explicit_incremental_without_a_chain_fails_and_changes_nothing() {
    let g = Guest::new("sbt-noinc", GuestOpts::default());
    let env = Env::new();
    let out = env.backup(&g.name, &["--type", "incremental"]);
    out.assert_failed_with("CheckpointInconsistent");
    assert_left_clean(&g, &env, true, &[]);
    assert!(env.target_files().is_empty(), "nothing was uploaded");
}

#[test]
fn pausing_around_the_snapshot_records_a_short_window_and_resumes_the_guest() {
    let g = Guest::new("sbt-pause", GuestOpts::default());
    let env = Env::new();
    let name = env
        .backup(&g.name, &["--pause", "--quiesce", "none"])
        .assert_ok();
    let s = env.read_run(&name).status.unwrap();
    let window = s.freeze_window_ms.expect("the pause window is recorded");
    assert!(window < 1000, "pause window {window} ms");
    assert!(!s.guest_paused);
    assert!(
        s.conditions.iter().all(|c| c.type_ != "Quiesced"),
        "quiesce none does not try the agent"
    );
    let w = g.writes();
    g.wait_for_writes(w + 2);
    assert_left_clean(&g, &env, true, &[s.checkpoint.unwrap()]);
}
