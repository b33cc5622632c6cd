//! The whole VM, not only its disks: a q35 guest booting through OVMF, with its own UEFI
//! variable store and an emulated TPM 2.0, on real libvirt, qemu (TCG) and swtpm. Every point
//! saves both; a restore as new gives the copy its own files, equal to the saved ones, and
//! leaves the original's alone; an in-place restore puts the saved ones back and keeps the
//! replaced ones beside them.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use snapback::api::{BackupRun, FirmwareKind, RestoreRequest};
use snapback::store::FileStore;

fn sha(p: &Path) -> String {
    snapback::state_dir::sha256_file(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn nvram_of(name: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/libvirt/qemu/nvram/{name}_VARS.fd"))
}

fn uuid_of(name: &str) -> String {
    virsh_ok(&["domuuid", name]).trim().to_string()
}

fn tpm_of(uuid: &str) -> PathBuf {
    PathBuf::from(format!(
        "/var/lib/libvirt/swtpm/{uuid}/tpm2/tpm2-00.permall"
    ))
}

/// The firmware state a run saved: (kind, sha256).
fn saved(env: &Env, run: &str) -> Vec<(FirmwareKind, String)> {
    let r: BackupRun = FileStore::new(&env.state).read("backupruns", run).unwrap();
    r.status
        .unwrap()
        .firmware
        .into_iter()
        .map(|f| (f.kind, f.sha256))
        .collect()
}

fn saved_sha(saved: &[(FirmwareKind, String)], kind: FirmwareKind) -> String {
    saved
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, s)| s.clone())
        .unwrap_or_else(|| panic!("no {kind:?} saved: {saved:?}"))
}

/// `restore --as COPY` of `domain` into a storage dir of the test's own; with `crash_at`,
/// killed at that crash point.
fn restore_as_new(env: &Env, domain: &str, copy: &str, crash_at: Option<&str>) -> SnapOut {
    let storage = env.dir.join("restored");
    std::fs::create_dir_all(&storage).unwrap();
    let args = [
        "restore",
        "--domain",
        domain,
        "--target",
        &env.target,
        "--as",
        copy,
        "--storage-dir",
        storage.to_str().unwrap(),
    ];
    match crash_at {
        Some(point) => env.snapback_crash(&args, point),
        None => env.snapback(&args),
    }
}

fn uefi_guest(name: &str) -> Guest {
    Guest::new(
        name,
        GuestOpts {
            uefi_tpm: true,
            ..Default::default()
        },
    )
}

#[test]
fn a_uefi_guest_with_a_tpm_restores_as_new_with_its_own_copies_of_the_saved_firmware_state() {
    let g = uefi_guest("sbt-uefi");
    let env = Env::new();
    let nvram = nvram_of(&g.name);
    let tpm = tpm_of(&uuid_of(&g.name));
    assert!(
        nvram.is_file() && tpm.is_file(),
        "libvirt made both at start"
    );

    // Paused around the snapshot point: the guest changes neither file while they are copied.
    let b = env.backup(&g.name, &["--type", "full", "--pause"]);
    assert_eq!(b.code, 0, "{}", b.stderr);
    let run = b.stdout.trim().to_string();
    let saved = saved(&env, &run);
    assert_eq!(saved.len(), 2, "{saved:?}");

    let original_before = (sha(&nvram), sha(&tpm));
    let copy = format!("{}-c", g.name);
    let defined = Defined(copy.clone());
    let r = restore_as_new(&env, &g.name, &copy, None);
    assert_eq!(r.code, 0, "restore failed: {}", r.stderr);
    // Compared before the copy first starts: OVMF and swtpm write to their state at boot.
    let copy_nvram = nvram_of(&copy);
    let copy_tpm = tpm_of(&uuid_of(&copy));
    let xml = virsh_ok(&["dumpxml", "--inactive", &copy]);
    assert!(
        xml.contains(&copy_nvram.display().to_string())
            && !xml.contains(&nvram.display().to_string()),
        "the copy has its own variable store:\n{xml}"
    );
    assert_eq!(sha(&copy_nvram), saved_sha(&saved, FirmwareKind::Nvram));
    assert_eq!(sha(&copy_tpm), saved_sha(&saved, FirmwareKind::TpmState));
    assert_eq!(
        (sha(&nvram), sha(&tpm)),
        original_before,
        "the original's firmware state is untouched"
    );
    let req: RestoreRequest = FileStore::new(&env.state)
        .list::<RestoreRequest>("restorerequests")
        .unwrap()
        .pop()
        .unwrap();
    let conditions = req.status.unwrap().conditions;
    for want in ["FirmwareRestored", "BootFilesPresent"] {
        let c = conditions
            .iter()
            .find(|c| c.type_ == want)
            .unwrap_or_else(|| panic!("a {want} condition: {conditions:?}"));
        assert_eq!(c.status, "True", "{c:?}");
    }
    virsh_ok(&["start", &copy]);
    assert_eq!(virsh_ok(&["domstate", &copy]).trim(), "running");
    assert_eq!(g.state(), "running", "both run");

    // Removing the copy with its firmware state leaves the original's in place.
    drop(defined);
    assert!(!copy_nvram.exists() && !copy_tpm.exists());
    assert!(nvram.is_file() && tpm.is_file());
    assert_eq!(g.state(), "running");
}

#[test]
fn an_in_place_restore_puts_the_saved_firmware_state_back_and_keeps_the_replaced_files() {
    let g = uefi_guest("sbt-uefi-ip");
    let env = Env::new();
    let nvram = nvram_of(&g.name);
    let tpm = tpm_of(&uuid_of(&g.name));
    let b = env.backup(&g.name, &["--type", "full", "--pause"]);
    assert_eq!(b.code, 0, "{}", b.stderr);
    let saved = saved(&env, b.stdout.trim());

    // The variable store changes after the point: it is reset to the firmware's template
    // while the domain is off (booting would write to it again).
    virsh_ok(&["destroy", &g.name]);
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &nvram).unwrap();
    let changed = sha(&nvram);
    assert_ne!(changed, saved_sha(&saved, FirmwareKind::Nvram));

    // Killed right after the store was moved aside, before the saved one is placed: the
    // replaced store is kept whole, and resume finishes the restore.
    env.snapback_crash(
        &[
            "restore",
            "--domain",
            &g.name,
            "--target",
            &env.target,
            "--in-place",
        ],
        "restore:defining:firmware-replaced",
    );
    let aside = std::fs::read_dir(nvram.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.display()
                .to_string()
                .starts_with(&format!("{}.snapback-replaced-", nvram.display()))
        })
        .expect("the replaced store kept aside");
    assert_eq!(sha(&aside), changed, "kept whole by the killed restore");
    let r = env.snapback(&["resume", "--target", &env.target]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Compared before the domain starts again: OVMF and swtpm write to their state at boot.
    assert_eq!(sha(&nvram), saved_sha(&saved, FirmwareKind::Nvram));
    assert_eq!(sha(&tpm), saved_sha(&saved, FirmwareKind::TpmState));
    virsh_ok(&["start", &g.name]);
    assert_eq!(g.state(), "running");
    let kept: Vec<PathBuf> = std::fs::read_dir(nvram.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.display()
                .to_string()
                .starts_with(&format!("{}.snapback-replaced-", nvram.display()))
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        sha(&kept[0]),
        changed,
        "the replaced store is kept as it was"
    );
    let _ = std::fs::remove_file(&kept[0]);
    for f in std::fs::read_dir(tpm.parent().unwrap()).unwrap().flatten() {
        if f.file_name()
            .to_string_lossy()
            .contains(".snapback-replaced-")
        {
            let _ = std::fs::remove_file(f.path());
        }
    }
}

#[test]
fn a_kill_while_firmware_state_is_copied_or_placed_leaves_the_original_alone_and_resume_finishes() {
    let g = uefi_guest("sbt-uefi-kill");
    let env = Env::new();
    let nvram = nvram_of(&g.name);

    // Killed with the guest paused, right after its firmware state was copied to staging.
    env.backup_with_crash(
        &g.name,
        &["--type", "full", "--pause"],
        "backup:snapshotting:firmware-copied",
    );
    let out = env.snapback(&["resume", "--target", &env.target]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(g.state(), "running", "resumed and thawed");
    let run = out.stdout.lines().next().unwrap().to_string();
    let saved = saved(&env, &run);
    assert_eq!(
        saved.len(),
        2,
        "the resumed run names both files: {saved:?}"
    );

    // Killed after the copy's firmware state was placed, before it was defined.
    let before = sha(&nvram);
    let copy = format!("{}-c", g.name);
    restore_as_new(
        &env,
        &g.name,
        &copy,
        Some("restore:defining:firmware-placed"),
    );
    let defined = Defined(copy.clone());
    let out = env.snapback(&["resume", "--target", &env.target]);
    assert_eq!(out.code, 0, "resume failed: {}", out.stderr);
    let copy_nvram = nvram_of(&copy);
    let copy_tpm = tpm_of(&uuid_of(&copy));
    let ok = (sha(&copy_nvram), sha(&copy_tpm))
        == (
            saved_sha(&saved, FirmwareKind::Nvram),
            saved_sha(&saved, FirmwareKind::TpmState),
        );
    let listed = virsh_ok(&["list", "--all", "--name"]);
    drop(defined);
    assert!(ok, "the copy's firmware state is the saved one");
    assert_eq!(listed.lines().filter(|l| l.trim() == copy).count(), 1);
    assert_eq!(sha(&nvram), before, "the original's store is untouched");
    assert_eq!(g.state(), "running");
}

#[test]
fn a_files_mode_point_of_a_uefi_guest_holds_its_firmware_state_and_manifest_under_at_snapback() {
    let env = Env::new();
    // A data disk with an ext4 filesystem for files mode to mount (the writer guest's own disk
    // holds none).
    let tree = env.dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), b"uefi-files\n").unwrap();
    let data = ext4_raw_disk(&tree, &env.dir.join("data.raw"));
    let g = Guest::new(
        "sbt-uefi-files",
        GuestOpts {
            uefi_tpm: true,
            extra_disks: vec![data],
            ..Default::default()
        },
    );

    let b = env.backup(
        &g.name,
        &["--mode", "files", "--pause", "--include", "/etc"],
    );
    let run = b.assert_ok();
    let saved = saved(&env, &run);
    assert_eq!(saved.len(), 2, "both kinds saved in files mode: {saved:?}");

    // A guest path never finds the point's own files; naming `@snapback` does.
    let out_dir = env.dir.join("out");
    let r = env.snapback(&[
        "restore",
        "--domain",
        &g.name,
        "--target",
        &env.target,
        "--to",
        out_dir.to_str().unwrap(),
        "--files",
        "/etc/hostname",
        "@snapback:/",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read(out_dir.join("etc/hostname")).unwrap(),
        b"uefi-files\n"
    );
    let nvram = out_dir.join(format!("{run}.nvram.fd"));
    let tpm = out_dir.join(format!("{run}.tpm2-00.permall"));
    assert_eq!(sha(&nvram), saved_sha(&saved, FirmwareKind::Nvram));
    assert_eq!(sha(&tpm), saved_sha(&saved, FirmwareKind::TpmState));
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out_dir.join(format!("{run}.manifest.json"))).unwrap(),
    )
    .unwrap();
    let listed: Vec<&str> = manifest["firmware"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["sha256"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            saved_sha(&saved, FirmwareKind::Nvram),
            saved_sha(&saved, FirmwareKind::TpmState)
        ],
        "the manifest in the tree names the saved state"
    );
    assert!(
        out_dir.join(format!("{run}.domain.xml")).is_file(),
        "the domain XML is in the point"
    );
    assert!(
        !out_dir.join(format!("{run}.vdb.qcow2")).exists(),
        "no disk export in a files point"
    );
    assert_eq!(g.state(), "running");
}

#[test]
fn a_copy_restored_as_new_shares_no_writable_host_file_with_the_original() {
    let env = Env::new();
    let share = env.dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let sock = env.dir.join("app.sock");
    let out = env.dir.join("out.log");
    let devices = format!(
        "<filesystem type='mount' accessmode='mapped'><source dir='{}'/><target dir='share'/></filesystem>
    <channel type='unix'><source mode='bind' path='{}'/><target type='virtio' name='app.0'/></channel>
    <channel type='file'><source path='{}'/><target type='virtio' name='out.0'/></channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>",
        share.display(),
        sock.display(),
        out.display()
    );
    let g = Guest::new(
        "sbt-hostfiles",
        GuestOpts {
            extra_devices: devices,
            ..Default::default()
        },
    );
    env.backup(&g.name, &["--type", "full"]).assert_ok();

    let copy = format!("{}-c", g.name);
    let defined = Defined(copy.clone());
    let r = restore_as_new(&env, &g.name, &copy, None);
    assert_eq!(r.code, 0, "restore failed: {}", r.stderr);
    let xml = virsh_ok(&["dumpxml", "--inactive", &copy]);
    let own = |p: &Path| {
        p.with_file_name(format!(
            "{copy}-{}",
            p.file_name().unwrap().to_str().unwrap()
        ))
        .display()
        .to_string()
    };
    assert!(xml.contains(&own(&sock)), "its own socket:\n{xml}");
    assert!(xml.contains(&own(&out)), "its own output file:\n{xml}");
    assert!(
        !xml.contains(&format!("'{}'", sock.display()))
            && !xml.contains(&format!("'{}'", out.display())),
        "none of the original's:\n{xml}"
    );
    let fs_element = &xml[xml.find("<filesystem").unwrap()..xml.find("</filesystem>").unwrap()];
    assert!(fs_element.contains("<readonly/>"), "{fs_element}");
    assert!(xml.contains("/dev/urandom"), "read-only sources stay");

    let req: RestoreRequest = FileStore::new(&env.state)
        .list::<RestoreRequest>("restorerequests")
        .unwrap()
        .pop()
        .unwrap();
    let conditions = req.status.unwrap().conditions;
    let sep = conditions
        .iter()
        .find(|c| c.type_ == "HostFilesSeparate")
        .unwrap_or_else(|| panic!("a HostFilesSeparate condition: {conditions:?}"));
    assert_eq!(
        (sep.status.as_str(), sep.reason.as_str()),
        ("False", "DevicesChanged"),
        "{sep:?}"
    );
    assert!(sep.message.contains("made read-only"), "{sep:?}");
    let boot = conditions
        .iter()
        .find(|c| c.type_ == "BootFilesPresent")
        .unwrap();
    assert_eq!(boot.status, "True", "{boot:?}");

    // Both run at once, each on its own socket and output file.
    virsh_ok(&["start", &copy]);
    assert_eq!(virsh_ok(&["domstate", &copy]).trim(), "running");
    assert_eq!(g.state(), "running", "both run");
    assert!(Path::new(&own(&sock)).exists() && sock.exists());
    assert!(Path::new(&own(&out)).exists() && out.exists());
    drop(defined);
    assert_eq!(g.state(), "running");
}
