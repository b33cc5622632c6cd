//! Raw file and block-device disks on a real libvirt host (issue 20): one job backs up a
//! qcow2, a raw file and a loop-device disk at one instant; the qcow2 disk goes incremental,
//! the others whole with their reason and without their zeros; shut off, all three are
//! exported from their files; and every point restores byte-exact.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use snapback::api::{BackupType, FullReason, RestorePhase};

/// Writes `mib` MiB of random bytes into `path` (file or device) at `at_mib`, through to it.
fn scribble(path: &Path, at_mib: u64, mib: u64) {
    run_ok(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", path.display()),
            "bs=1M",
            &format!("seek={at_mib}"),
            &format!("count={mib}"),
            "conv=notrunc,fsync",
            "status=none",
        ],
    );
}

/// A raw copy of every disk as it is now.
fn copies(env: &Env, disks: &[(&str, &Path)]) -> Vec<PathBuf> {
    disks
        .iter()
        .map(|(name, path)| {
            let copy = env.dir.join(unique(&format!("ref-{name}")));
            let format = if *name == "vda" { "qcow2" } else { "raw" };
            run_ok(
                "qemu-img",
                &[
                    "convert",
                    "-U",
                    "-f",
                    format,
                    "-O",
                    "raw",
                    path.to_str().unwrap(),
                    copy.to_str().unwrap(),
                ],
            );
            copy
        })
        .collect()
}

/// Pauses the guest, copies every disk as it is, backs up, resumes: (run, disk copies).
fn backup_all_paused(env: &Env, g: &Guest, disks: &[(&str, &Path)]) -> (String, Vec<PathBuf>) {
    virsh_ok(&["suspend", &g.name]);
    let copies = copies(env, disks);
    let run = env.backup(&g.name, &[]).assert_ok();
    virsh_ok(&["resume", &g.name]);
    (run, copies)
}

#[test]
fn qcow2_raw_file_and_block_disks_back_up_in_one_job_each_its_own_way_and_every_point_restores_byte_exact(
) {
    let env = Env::new();
    let raw = env.dir.join("data.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    scribble(&raw, 10, 4);
    let lo = LoopDevice::new(&env.dir.join("volume.img"), 64);
    scribble(&lo.dev, 0, 8);
    let g = Guest::new(
        "sbt-raw",
        GuestOpts {
            prefill_mib: 16,
            write_mib: 8,
            extra_disks: vec![raw.clone(), lo.dev.clone()],
            ..Default::default()
        },
    );
    let disks = [
        ("vda", g.disk.as_path()),
        ("vdb", raw.as_path()),
        ("vdc", lo.dev.as_path()),
    ];

    let mut points = vec![backup_all_paused(&env, &g, &disks)];
    scribble(&raw, 30, 2);
    scribble(&lo.dev, 20, 2);
    let w = g.writes();
    g.wait_for_writes(w + 4);
    points.push(backup_all_paused(&env, &g, &disks));

    // The first run is a full of everything; the second exports only vda's changes, and the
    // raw and block disks whole, each with its reason.
    let runs: Vec<_> = points
        .iter()
        .map(|(r, _)| env.read_run(r).status.unwrap())
        .collect();
    assert_eq!(runs[0].type_, Some(BackupType::Full));
    assert_eq!(runs[1].type_, Some(BackupType::Incremental));
    let reasons: Vec<(String, Option<FullReason>)> = runs[1]
        .disks
        .iter()
        .map(|d| (d.name.clone(), d.full_reason))
        .collect();
    assert_eq!(
        reasons,
        [
            ("vda".to_string(), None),
            ("vdb".to_string(), Some(FullReason::NoBitmapSupport)),
            ("vdc".to_string(), Some(FullReason::NoBitmapSupport)),
        ]
    );
    let cp = runs[1].checkpoint.clone().unwrap();
    let cp_xml = virsh_ok(&["checkpoint-dumpxml", &g.name, &cp]);
    assert!(
        cp_xml.contains("<disk name='vdc' checkpoint='no'/>"),
        "the checkpoint holds no bitmap for the block disk:\n{cp_xml}"
    );
    // The block device is 64 MiB with 10 MiB written: its zeros are not stored.
    let vdc = runs[1].disks.iter().find(|d| d.name == "vdc").unwrap();
    assert_eq!(vdc.virtual_size, 64 * MIB);
    assert!(
        vdc.export_bytes < 16 * MIB,
        "the block disk's export holds {} bytes",
        vdc.export_bytes
    );

    // Shut off, every disk is exported from its file or device with qemu-img.
    virsh_ok(&["destroy", &g.name]);
    scribble(&lo.dev, 40, 1);
    let off = copies(&env, &disks);
    points.push((env.backup(&g.name, &[]).assert_ok(), off));
    let run = env.read_run(&points[2].0).status.unwrap();
    assert_eq!(run.full_reason, Some(FullReason::DomainShutOff));

    // Each disk comes back in its own format: the raw file and the block device as sparse
    // raw files. The first point is asked for qcow2 throughout (`--format qcow2`).
    for (i, (run, copies)) in points.iter().enumerate() {
        let new = format!("{}-r{i}", g.name);
        let _cleanup = Defined(new.clone());
        let dir = env.dir.join(unique("restored"));
        std::fs::create_dir_all(&dir).unwrap();
        let at = env
            .read_run(run)
            .status
            .unwrap()
            .snapshot_time
            .unwrap()
            .to_string();
        let mut argv = vec![
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
            dir.to_str().unwrap(),
        ];
        if i == 0 {
            argv.extend(["--format", "qcow2"]);
        }
        let name = if i == 1 {
            // Stopped once its disks are rebuilt, while what it fetched is still there: of
            // the full, only vda's export was fetched (vdb and vdc are whole in the point).
            let killed = env.snapback_crash(&argv, "restore:Defining");
            let name = killed.stdout.lines().next().unwrap().trim().to_string();
            let full = &points[0].0;
            let dir = env.state.join("restore-work").join(&name).join("fetch");
            let mut fetched: Vec<String> = std::fs::read_dir(dir.join(full))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            fetched.sort();
            assert!(
                fetched.contains(&format!("{full}.vda.qcow2"))
                    && !fetched
                        .iter()
                        .any(|f| f.contains(".vdb.") || f.contains(".vdc.")),
                "{fetched:?}"
            );
            let out = env.snapback(&["resume", "--target", &env.target]);
            assert_eq!(out.code, 0, "{}", out.stderr);
            name
        } else {
            let out = env.snapback(&argv);
            assert_eq!(out.code, 0, "restore {i} failed:\n{}", out.stderr);
            out.stdout.trim().to_string()
        };
        let s = env.read_restore(&name).status.unwrap();
        assert_eq!(s.phase, RestorePhase::Succeeded);
        for ((name, _), copy) in disks.iter().zip(copies) {
            let restored = &s.disks.iter().find(|d| d.name == *name).unwrap().path;
            let want = if i == 0 || *name == "vda" {
                "qcow2"
            } else {
                "raw"
            };
            assert!(restored.ends_with(&format!(".{want}")), "{restored}");
            assert!(
                defined_disk(&new, name).contains(&format!("type='{want}'")),
                "{new} {name}: {}",
                defined_disk(&new, name)
            );
            compare_raw_with(copy, want, Path::new(restored));
            if want == "raw" {
                assert_sparse(Path::new(restored), 64 * MIB, 24 * MIB);
            }
        }
    }
}

/// Fails unless the image at `image` (of `format`) holds exactly the raw file `raw`.
fn compare_raw_with(raw: &Path, format: &str, image: &Path) {
    run_ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            format,
            raw.to_str().unwrap(),
            image.to_str().unwrap(),
        ],
    );
}

/// Fails unless the file is `size` bytes long and takes at most `most` bytes on disk.
fn assert_sparse(file: &Path, size: u64, most: u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(file).unwrap();
    assert_eq!(m.len(), size, "{}", file.display());
    assert!(
        m.blocks() * 512 <= most,
        "{} takes {} bytes on disk",
        file.display(),
        m.blocks() * 512
    );
}

/// The `<disk>` element of `dev` in the domain's persistent definition.
fn defined_disk(domain: &str, dev: &str) -> String {
    let xml = virsh_ok(&["dumpxml", "--inactive", domain]);
    let at = xml
        .find(&format!("<target dev='{dev}'"))
        .unwrap_or_else(|| panic!("{domain} has no disk {dev}:\n{xml}"));
    let start = xml[..at].rfind("<disk ").unwrap();
    xml[start..at].to_string()
}

#[test]
fn a_raw_file_disk_restores_in_place_into_a_sparse_raw_file_and_the_old_file_stays_until_the_new_one_is_verified(
) {
    let env = Env::new();
    let raw = env.dir.join("data.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    scribble(&raw, 10, 4);
    let g = Guest::new(
        "sbt-rawfile",
        GuestOpts {
            extra_disks: vec![raw.clone()],
            ..Default::default()
        },
    );
    let disks = [("vda", g.disk.as_path()), ("vdb", raw.as_path())];
    let (_, refs) = backup_all_paused(&env, &g, &disks);
    scribble(&raw, 30, 2);
    let after_point = sha256(&raw);
    let argv = [
        "restore",
        "--domain",
        &g.name,
        "--target",
        &env.target,
        "--in-place",
        "--shutdown-timeout",
        "2",
    ];

    // Killed while the disks are being rebuilt: the domain still runs on its old file,
    // which nothing has written.
    let killed = env.snapback_crash(&argv, "restore:rebuilding:converting");
    let name = killed.stdout.lines().next().unwrap().trim().to_string();
    assert_eq!(g.state(), "running");
    assert!(defined_disk(&g.name, "vdb").contains(&format!("file='{}'", raw.display())));
    assert_eq!(sha256(&raw), after_point);

    let out = env.snapback(&["resume", "--target", &env.target]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = env.read_restore(&name).status.unwrap();
    assert_eq!(s.phase, RestorePhase::Succeeded, "{:?}", s.failure);
    let vdb = s.disks.iter().find(|d| d.name == "vdb").unwrap();
    let restored = Path::new(&vdb.path);
    assert_eq!(
        restored.parent(),
        g.disk.parent(),
        "beside the domain's first disk, as every in-place restore"
    );
    let xml = defined_disk(&g.name, "vdb");
    assert!(
        xml.contains(&format!("file='{}'", restored.display())) && xml.contains("type='raw'"),
        "the domain is repointed to a raw file:\n{xml}"
    );
    compare_raw_with(&refs[1], "raw", restored);
    assert_sparse(restored, 64 * MIB, 16 * MIB);
    // The old file was renamed aside only once the new one was verified, and never written.
    let kept = PathBuf::from(format!("{}.snapback-replaced-{name}", raw.display()));
    assert!(s.replaced_disks.contains(&kept.display().to_string()));
    assert_eq!(sha256(&kept), after_point);
    assert!(!raw.exists());
}

fn sha256(path: &Path) -> String {
    run_ok("sha256sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_block_disk_restores_in_place_onto_a_new_device_that_holds_a_filesystem_only_with_overwrite_and_the_old_device_is_left_alone(
) {
    let env = Env::new();
    let old = LoopDevice::new(&env.dir.join("old.img"), 32);
    scribble(&old.dev, 0, 6);
    // Larger than the disk, and formatted: what lies past the disk's 32 MiB is not compared.
    let new = LoopDevice::new(&env.dir.join("new.img"), 40);
    run_ok("mkfs.ext4", &["-q", new.dev.to_str().unwrap()]);
    let g = Guest::new(
        "sbt-rawdev",
        GuestOpts {
            extra_disks: vec![old.dev.clone()],
            ..Default::default()
        },
    );
    let disks = [("vda", g.disk.as_path()), ("vdb", old.dev.as_path())];
    let (_, refs) = backup_all_paused(&env, &g, &disks);
    scribble(&old.dev, 8, 2);
    let old_after_point = sha256(&old.dev);
    let dir = env.dir.join("restored");
    std::fs::create_dir_all(&dir).unwrap();
    let restore = |device: &Path, extra: &[&str]| {
        let onto = format!("vdb={}", device.display());
        let mut argv = vec![
            "restore",
            "--domain",
            &g.name,
            "--target",
            &env.target,
            "--in-place",
            "--storage-dir",
            dir.to_str().unwrap(),
            "--to-device",
            &onto,
            "--shutdown-timeout",
            "2",
        ];
        argv.extend_from_slice(extra);
        env.snapback(&argv)
    };

    // The device the domain runs on is never a target, --overwrite or not.
    let own = restore(&old.dev, &["--overwrite"]);
    assert_ne!(own.code, 0);
    assert!(
        own.stderr.contains("InvalidSpec") && own.stderr.contains("in use"),
        "{}",
        own.stderr
    );
    assert_eq!(sha256(&old.dev), old_after_point);

    let refused = restore(&new.dev, &[]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("InvalidSpec")
            && refused.stderr.contains("ext4")
            && refused.stderr.contains("--overwrite"),
        "{}",
        refused.stderr
    );
    assert_eq!(g.state(), "running", "a refused restore touches nothing");
    assert!(run_ok("blkid", &["-p", new.dev.to_str().unwrap()]).contains("ext4"));

    let out = restore(&new.dev, &["--overwrite"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let xml = virsh_ok(&["dumpxml", "--inactive", &g.name]);
    assert!(
        xml.contains(&format!("<source dev='{}'", new.dev.display())),
        "the domain is repointed to the new device:\n{xml}"
    );
    run_ok(
        "qemu-img",
        &[
            "compare",
            "--image-opts",
            &format!("driver=raw,file.filename={}", refs[1].display()),
            &format!(
                "driver=raw,size={},file.driver=host_device,file.filename={}",
                32 * MIB,
                new.dev.display()
            ),
        ],
    );
    assert_eq!(
        sha256(&old.dev),
        old_after_point,
        "the old device is left as it was"
    );
}

/// A raw copy of a raw file or device as it is now.
fn raw_copy(env: &Env, path: &Path) -> PathBuf {
    let copy = env.dir.join(unique("ref"));
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-f",
            "raw",
            "-O",
            "raw",
            path.to_str().unwrap(),
            copy.to_str().unwrap(),
        ],
    );
    copy
}

/// The disk vda of the domain's persistent definition.
fn defined_vda(g: &Guest) -> String {
    defined_disk(&g.name, "vda")
}

fn restart(g: &Guest) {
    virsh_ok(&["destroy", &g.name]);
    g.start();
}

#[test]
fn changed_block_tracking_makes_a_block_disks_backups_incremental_from_the_next_start_and_a_kill_while_switching_leaves_a_domain_that_boots(
) {
    let env = Env::new();
    let lo = LoopDevice::new(&env.dir.join("vda.img"), 128);
    scribble(&lo.dev, 0, 16);
    let g = Guest::new(
        "sbt-cbt",
        GuestOpts {
            own_disk: Some(lo.dev.clone()),
            write_mib: 4,
            write_offset_mib: 64,
            ..Default::default()
        },
    );
    let overlays = env.dir.join("overlays");
    std::fs::create_dir_all(&overlays).unwrap();
    let dir = overlays.to_str().unwrap();
    let cbt = |action: &'static str| {
        let mut argv = vec!["cbt", action, "--domain", g.name.as_str()];
        if action == "enable" {
            argv.extend(["--overlay-dir", dir]);
        }
        argv
    };
    let state_of = |out: &SnapOut| {
        assert_eq!(out.code, 0, "{}", out.stderr);
        let line = out.stdout.lines().find(|l| l.starts_with("vda")).unwrap();
        line.split_whitespace().nth(1).unwrap().to_string()
    };
    assert_eq!(state_of(&env.snapback(&cbt("status"))), "Disabled");

    // Killed with the overlay made but not yet defined: the definition is as it was.
    env.snapback_crash(&cbt("enable"), "cbt:overlay-created");
    assert!(defined_vda(&g).contains(&format!("dev='{}'", lo.dev.display())));
    restart(&g);

    // A backup that enables it (as `changedBlockTracking: Enable` in a policy does), while
    // running: from the next start, so this run still exports the device whole. Neither
    // enabling nor the backup writes the device.
    let enable_cbt = ["--enable-cbt", "--cbt-dir", dir];
    let cbt_condition = |run: &str| {
        let s = env.read_run(run).status.unwrap();
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "ChangedBlockTracking")
            .unwrap_or_else(|| panic!("a ChangedBlockTracking condition: {:?}", s.conditions));
        (c.status.clone(), c.reason.clone())
    };
    virsh_ok(&["suspend", &g.name]);
    let before = sha256(&lo.dev);
    let bare = env.backup(&g.name, &enable_cbt).assert_ok();
    assert_eq!(sha256(&lo.dev), before, "enabling never writes the device");
    virsh_ok(&["resume", &g.name]);
    assert_eq!(
        cbt_condition(&bare),
        ("False".into(), "PendingRestart".into())
    );
    assert_eq!(state_of(&env.snapback(&cbt("status"))), "PendingRestart");
    let bare = env.read_run(&bare).status.unwrap();
    assert_eq!(bare.disks[0].full_reason, Some(FullReason::NoBitmapSupport));

    restart(&g);
    assert_eq!(state_of(&env.snapback(&cbt("status"))), "Enabled");
    let first = env.backup(&g.name, &enable_cbt).assert_ok();
    assert_eq!(cbt_condition(&first), ("True".into(), "Enabled".into()));
    let first = env.read_run(&first).status.unwrap();
    assert_eq!(first.type_, Some(BackupType::Full));
    assert!(
        first.disks[0].export_bytes < 48 * MIB,
        "a full through the overlay stores the data, not the device: {}",
        first.disks[0].export_bytes
    );
    let w = g.writes();
    g.wait_for_writes(w + 4);
    virsh_ok(&["suspend", &g.name]);
    let reference = raw_copy(&env, &lo.dev);
    let inc = env.backup(&g.name, &[]).assert_ok();
    virsh_ok(&["resume", &g.name]);
    let s = env.read_run(&inc).status.unwrap();
    assert_eq!(s.type_, Some(BackupType::Incremental));
    assert_eq!(s.disks[0].full_reason, None);
    assert!(
        s.disks[0].export_bytes < 16 * MIB,
        "only the guest's changes: {}",
        s.disks[0].export_bytes
    );

    let copy = format!("{}-c", g.name);
    let _cleanup = Defined(copy.clone());
    let restored_dir = env.dir.join("restored");
    std::fs::create_dir_all(&restored_dir).unwrap();
    let at = s.snapshot_time.unwrap().to_string();
    let out = env.restore_as(&g.name, &at, &copy, &restored_dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The disk under the overlay was raw to its user, so it comes back raw.
    let restored = restored_dir.join(format!("{copy}-vda.raw"));
    compare_raw_with(&reference, "raw", &restored);

    // Killed right after the bare device is defined again: the domain keeps running on the
    // overlay until it restarts, then boots on the device, and the overlay is removed.
    env.snapback_crash(&cbt("disable"), "cbt:undefined");
    assert!(defined_vda(&g).contains(&format!("dev='{}'", lo.dev.display())));
    assert_eq!(
        state_of(&env.snapback(&cbt("status"))),
        "DisablePendingRestart"
    );
    restart(&g);
    assert_eq!(state_of(&env.snapback(&cbt("status"))), "Disabled");
    let left: Vec<_> = std::fs::read_dir(&overlays).unwrap().flatten().collect();
    assert!(left.is_empty(), "the overlay is removed: {left:?}");

    // Enabled and disabled again before any restart: the domain never used that overlay.
    assert_eq!(state_of(&env.snapback(&cbt("enable"))), "PendingRestart");
    assert_eq!(state_of(&env.snapback(&cbt("disable"))), "Disabled");
    let left: Vec<_> = std::fs::read_dir(&overlays).unwrap().flatten().collect();
    assert!(left.is_empty(), "the unused overlay is removed: {left:?}");
    assert!(defined_vda(&g).contains(&format!("dev='{}'", lo.dev.display())));
}
