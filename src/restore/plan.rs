//! What Resolving decides once it has the spec, the original domain and the chosen point
//! (pure): whether the destination is well said, which directory gets the restored disks,
//! and what they are called. `steps/resolve.rs` gathers (libvirt, the target) and applies.

use std::path::{Path, PathBuf};

use crate::api::{DiskFormat, FailureReason, RestoreRequestSpec, RestoredDisk, RunDisk};
use crate::catalog::layout;
use crate::catalog::manifest::Manifest;
use crate::error::StepError;
use crate::libvirt::domain_xml::is_cbt_overlay;

/// Where restored disks go when nothing says otherwise.
pub const DEFAULT_STORAGE: &str = "/var/lib/libvirt/images";

fn invalid(message: impl Into<String>) -> StepError {
    StepError::new(FailureReason::InvalidSpec, message)
}

/// Exactly one of a new name and in place, and a new name libvirt can take; or a files
/// restore, well said (`files::check_spec`).
pub fn check_destination(spec: &RestoreRequestSpec) -> Result<(), StepError> {
    if let Some(f) = &spec.files {
        return crate::restore::files::check_spec(spec, f);
    }
    match (&spec.new_name, spec.in_place) {
        (Some(_), true) => Err(invalid("choose one of --as NAME and --in-place")),
        (None, false) => Err(invalid("say where to restore: --as NEWNAME or --in-place")),
        (Some(n), false)
            if n.trim().is_empty() || n.contains('/') || n.chars().any(char::is_control) =>
        {
            // Debug-quoted: a control character in the name must not split the message.
            Err(invalid(format!(
                "{n:?} is not a valid domain name (no '/', no control characters)"
            )))
        }
        _ => Ok(()),
    }
}

/// The spec's storage dir; in place, else the directory of the original's first disk.
pub fn storage_dir(spec: &RestoreRequestSpec, original_first_disk: Option<&str>) -> PathBuf {
    if let Some(d) = &spec.storage_dir {
        return PathBuf::from(d);
    }
    original_first_disk
        .and_then(|p| Path::new(p).parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STORAGE))
}

/// The format a disk's restored file gets: the one the spec asks for, else the disk's own.
/// A raw file or block disk was raw to its user, and so was one under a changed-block
/// tracking overlay (the overlay only held its bitmaps): each comes back raw.
pub fn file_format(spec: &RestoreRequestSpec, disk: &RunDisk) -> DiskFormat {
    if let Some(f) = spec.disk_format {
        return f;
    }
    if disk.format == "raw" || is_cbt_overlay(&disk.source) {
        DiskFormat::Raw
    } else {
        DiskFormat::Qcow2
    }
}

/// One restored disk per disk of the point: `<domain>-<disk>.qcow2` (or `.raw`) for a new
/// domain, with `-restored-<request>` in place, so the original's files are never overwritten.
pub fn restored_disks(
    spec: &RestoreRequestSpec,
    request: &str,
    point: &Manifest,
    storage: &Path,
) -> Vec<RestoredDisk> {
    let base = spec.new_name.clone().unwrap_or_else(|| spec.domain.clone());
    let suffix = if spec.in_place {
        format!("-restored-{request}")
    } else {
        String::new()
    };
    point
        .disks
        .iter()
        .map(|d| {
            let device = spec.target_devices.get(&d.name);
            let format = file_format(spec, d);
            RestoredDisk {
                name: d.name.clone(),
                path: device.cloned().unwrap_or_else(|| {
                    storage
                        .join(format!(
                            "{}-{}{suffix}.{}",
                            layout::domain_dir(&base),
                            d.name,
                            format.qemu_name()
                        ))
                        .display()
                        .to_string()
                }),
                virtual_size: d.virtual_size,
                verified: false,
                device: device.is_some(),
                format: device.is_none().then_some(format),
                ..Default::default()
            }
        })
        .collect()
}

/// The export files each chain member (full first, the point last) must give for the point's
/// disks to be rebuilt: a disk needs the exports from its last whole one on, so a raw or block
/// disk (whole in every point) needs only the point's own, and nothing of a member before a
/// disk's last whole export is fetched for it. An error names a member without a disk the
/// point has.
pub fn exports_needed(
    chain: &[Manifest],
) -> Result<Vec<std::collections::BTreeSet<String>>, String> {
    let mut needed = vec![std::collections::BTreeSet::new(); chain.len()];
    let Some(point) = chain.last() else {
        return Ok(needed);
    };
    for disk in &point.disks {
        let mut exports = Vec::with_capacity(chain.len());
        for m in chain {
            let Some(d) = m.disks.iter().find(|d| d.name == disk.name) else {
                return Err(format!("{} has no disk {}", m.run, disk.name));
            };
            exports.push((d.export_file.clone(), !d.is_incremental(m.type_)));
        }
        let start = exports.iter().rposition(|(_, whole)| *whole).unwrap_or(0);
        for (i, (file, _)) in exports.into_iter().enumerate().skip(start) {
            needed[i].insert(file);
        }
    }
    Ok(needed)
}

/// What Resolving found on a device named in `targetDevices`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    pub is_block_device: bool,
    /// The path with its links resolved: two names of one device are one device.
    pub canonical: String,
    pub size: u64,
    /// What `blkid -p` recognised on it (`ext4`, `gpt`, `LVM2_member`), if anything.
    pub signature: Option<String>,
    /// The domain and disk that use it now, if one does.
    pub used_by: Option<String>,
}

/// Whether every named device may be written: a disk of the point, a block device of at
/// least its size, used by no domain, one disk each, and blank unless `overwrite` says so.
pub fn check_devices(
    spec: &RestoreRequestSpec,
    point: &Manifest,
    facts: &std::collections::BTreeMap<String, DeviceFacts>,
) -> Result<(), StepError> {
    let mut seen = std::collections::BTreeSet::new();
    for (disk, dev) in &spec.target_devices {
        let Some(d) = point.disks.iter().find(|d| &d.name == disk) else {
            return Err(invalid(format!(
                "targetDevices (--to-device) names disk {disk}, which the point does not have"
            )));
        };
        let f = facts.get(dev).cloned().unwrap_or_default();
        let key = if f.canonical.is_empty() {
            dev.clone()
        } else {
            f.canonical.clone()
        };
        if !seen.insert(key) {
            return Err(invalid(format!("{dev} is named for more than one disk")));
        }
        if !f.is_block_device {
            return Err(invalid(format!("{dev} is not a block device")));
        }
        if f.size < d.virtual_size {
            return Err(invalid(format!(
                "{dev} holds {} bytes; disk {disk} needs {}",
                f.size, d.virtual_size
            )));
        }
        if let Some(user) = f.used_by {
            return Err(invalid(format!(
                "{dev} is in use as {user}; name a device no domain uses (in place, the domain is repointed to the new one)"
            )));
        }
        if let (Some(sig), false) = (f.signature, spec.overwrite) {
            return Err(invalid(format!(
                "{dev} holds {sig}; allow writing over it with --overwrite (overwrite: true)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(new_name: Option<&str>, in_place: bool, storage: Option<&str>) -> RestoreRequestSpec {
        let mut s: RestoreRequestSpec =
            serde_json::from_value(serde_json::json!({"domain": "web", "targetRef": "t"})).unwrap();
        s.new_name = new_name.map(String::from);
        s.in_place = in_place;
        s.storage_dir = storage.map(String::from);
        s
    }

    #[test]
    fn a_destination_is_one_of_a_valid_new_name_or_in_place() {
        let table = [
            (spec(Some("copy"), false, None), true),
            (spec(None, true, None), true),
            (spec(Some("copy"), true, None), false),
            (spec(None, false, None), false),
            (spec(Some("a/b"), false, None), false),
            (spec(Some("a\nb"), false, None), false),
            (spec(Some(" "), false, None), false),
        ];
        for (s, ok) in table {
            assert_eq!(check_destination(&s).is_ok(), ok, "{:?}", s.new_name);
        }
    }

    #[test]
    fn disks_go_beside_the_original_in_place_and_never_take_its_file_names() {
        let in_place = spec(None, true, None);
        let dir = storage_dir(&in_place, Some("/data/vms/web.qcow2"));
        assert_eq!(dir, PathBuf::from("/data/vms"));
        assert_eq!(
            storage_dir(
                &spec(Some("c"), false, Some("/x")),
                Some("/data/vms/web.qcow2")
            ),
            PathBuf::from("/x")
        );
        assert_eq!(
            storage_dir(&spec(Some("c"), false, None), None),
            PathBuf::from(DEFAULT_STORAGE)
        );
        let manifest: Manifest = serde_json::from_value(serde_json::json!({
            "apiVersion": "snapback.dev/v1alpha1", "run": "r1", "domain": "web",
            "type": "Full", "chain": "r1", "chainIndex": 0, "online": true,
            "disks": [{"name": "vda", "source": "/data/vms/web.qcow2", "format": "qcow2",
                "virtualSize": 1024, "exportFile": "r1.vda.qcow2"}]
        }))
        .unwrap();
        let d = restored_disks(&in_place, "req", &manifest, &dir);
        assert_eq!(d[0].path, "/data/vms/web-vda-restored-req.qcow2");
        let d = restored_disks(&spec(Some("copy"), false, None), "req", &manifest, &dir);
        assert_eq!(d[0].path, "/data/vms/copy-vda.qcow2");
        let mut onto = spec(None, true, None);
        onto.target_devices
            .insert("vda".into(), "/dev/vg/new".into());
        let d = restored_disks(&onto, "req", &manifest, &dir);
        assert_eq!((d[0].path.as_str(), d[0].device), ("/dev/vg/new", true));
        assert_eq!(d[0].format(), DiskFormat::Raw);
    }

    #[test]
    fn a_disk_comes_back_in_its_own_format_unless_the_spec_names_one() {
        let disk = |format: &str, source: &str| RunDisk {
            name: "vda".into(),
            source: source.into(),
            format: format.into(),
            ..Default::default()
        };
        let qcow2 = disk("qcow2", "/vms/web.qcow2");
        let raw_file = disk("raw", "/vms/web.img");
        let block = disk("raw", "/dev/vg/web");
        let overlay = disk("qcow2", "/cbt/web-vda.snapback-cbt.qcow2");
        let unset = spec(Some("c"), false, None);
        let rows = [
            (&qcow2, None, DiskFormat::Qcow2),
            (&raw_file, None, DiskFormat::Raw),
            (&block, None, DiskFormat::Raw),
            (&overlay, None, DiskFormat::Raw),
            (&raw_file, Some(DiskFormat::Qcow2), DiskFormat::Qcow2),
            (&qcow2, Some(DiskFormat::Raw), DiskFormat::Raw),
        ];
        for (d, asked, want) in rows {
            let mut s = unset.clone();
            s.disk_format = asked;
            assert_eq!(file_format(&s, d), want, "{} asked {asked:?}", d.source);
        }
        let manifest: Manifest = serde_json::from_value(serde_json::json!({
            "apiVersion": "snapback.dev/v1alpha1", "run": "r1", "domain": "web",
            "type": "Full", "chain": "r1", "chainIndex": 0, "online": true,
            "disks": [{"name": "vdb", "source": "/vms/data.img", "format": "raw",
                "virtualSize": 1024, "exportFile": "r1.vdb.qcow2"}]
        }))
        .unwrap();
        let d = restored_disks(&spec(None, true, None), "req", &manifest, Path::new("/vms"));
        assert_eq!(d[0].path, "/vms/web-vdb-restored-req.raw");
        assert_eq!(d[0].format, Some(DiskFormat::Raw));
    }

    #[test]
    fn a_disk_needs_the_exports_from_its_last_whole_one_on_and_nothing_before() {
        let member = |run: &str, type_: &str, disks: &[(&str, Option<&str>)]| -> Manifest {
            let disks: Vec<_> = disks
                .iter()
                .map(|(name, reason)| {
                    let mut d = serde_json::json!({"name": name, "source": "/x",
                        "format": "qcow2", "virtualSize": 1, "exportFile": format!("{run}.{name}")});
                    if let Some(r) = reason {
                        d["fullReason"] = serde_json::json!(r);
                    }
                    d
                })
                .collect();
            serde_json::from_value(serde_json::json!({
                "apiVersion": "snapback.dev/v1alpha1", "run": run, "domain": "web",
                "type": type_, "chain": "r0", "chainIndex": 0, "online": true, "disks": disks
            }))
            .unwrap()
        };
        let raw = Some("NoBitmapSupport");
        // vda (qcow2) incremental; vdb (raw) whole in every point; vdc whole from r1 on (its
        // changed-block tracking overlay's first backup).
        let chain = [
            member("r0", "Full", &[("vda", None), ("vdb", None), ("vdc", None)]),
            member(
                "r1",
                "Incremental",
                &[
                    ("vda", None),
                    ("vdb", raw),
                    ("vdc", Some("CheckpointMissing")),
                ],
            ),
            member(
                "r2",
                "Incremental",
                &[("vda", None), ("vdb", raw), ("vdc", None)],
            ),
        ];
        let names = |v: &std::collections::BTreeSet<String>| v.iter().cloned().collect::<Vec<_>>();
        let needed = exports_needed(&chain).unwrap();
        assert_eq!(names(&needed[0]), ["r0.vda"]);
        assert_eq!(names(&needed[1]), ["r1.vda", "r1.vdc"]);
        assert_eq!(names(&needed[2]), ["r2.vda", "r2.vdb", "r2.vdc"]);
        // A full alone needs all of itself; a member without a disk of the point is an error.
        assert_eq!(names(&exports_needed(&chain[..1]).unwrap()[0]).len(), 3);
        let lacking = [member("r0", "Full", &[("vda", None)]), chain[1].clone()];
        assert!(exports_needed(&lacking)
            .unwrap_err()
            .contains("r0 has no disk vdb"));
    }

    #[test]
    fn a_target_device_must_be_a_blank_unused_block_device_big_enough_for_its_disk() {
        let manifest: Manifest = serde_json::from_value(serde_json::json!({
            "apiVersion": "snapback.dev/v1alpha1", "run": "r1", "domain": "web",
            "type": "Full", "chain": "r1", "chainIndex": 0, "online": true,
            "disks": [{"name": "vdb", "source": "/dev/vg/web", "format": "raw",
                "virtualSize": 1024, "exportFile": "r1.vdb.qcow2"}]
        }))
        .unwrap();
        let blank = DeviceFacts {
            is_block_device: true,
            size: 1024,
            ..Default::default()
        };
        type Change = fn(&mut RestoreRequestSpec, &mut DeviceFacts);
        let rows: [(&str, Change, Option<&str>); 7] = [
            ("a blank device of the disk's size", |_, _| {}, None),
            (
                "a disk the point lacks",
                |s, _| s.target_devices = [("vdz".into(), "/dev/x".into())].into(),
                Some("does not have"),
            ),
            (
                "a regular file",
                |_, f| f.is_block_device = false,
                Some("not a block device"),
            ),
            (
                "a device too small",
                |_, f| f.size = 512,
                Some("needs 1024"),
            ),
            (
                "a device a domain uses",
                |_, f| f.used_by = Some("vdb of web".into()),
                Some("in use"),
            ),
            (
                "a filesystem without --overwrite",
                |_, f| f.signature = Some("ext4".into()),
                Some("--overwrite"),
            ),
            (
                "a filesystem with --overwrite",
                |s, f| {
                    s.overwrite = true;
                    f.signature = Some("ext4".into())
                },
                None,
            ),
        ];
        let mut two = spec(Some("copy"), false, None);
        two.target_devices.insert("vdb".into(), "/dev/x".into());
        two.target_devices.insert("vdc".into(), "/dev/y".into());
        let mut manifest2 = manifest.clone();
        let mut vdc = manifest2.disks[0].clone();
        vdc.name = "vdc".into();
        manifest2.disks.push(vdc);
        let one = DeviceFacts {
            canonical: "/dev/dm-3".into(),
            ..blank.clone()
        };
        let facts = [
            ("/dev/x".to_string(), one.clone()),
            ("/dev/y".to_string(), one),
        ]
        .into();
        let e = check_devices(&two, &manifest2, &facts).unwrap_err();
        assert!(e.message.contains("more than one disk"), "{}", e.message);
        for (case, change, refused) in rows {
            let mut s = spec(Some("copy"), false, None);
            s.target_devices.insert("vdb".into(), "/dev/x".into());
            let mut f = blank.clone();
            change(&mut s, &mut f);
            let facts = [("/dev/x".to_string(), f)].into();
            match (check_devices(&s, &manifest, &facts), refused) {
                (Ok(()), None) => {}
                (Err(e), Some(why)) => {
                    assert_eq!(e.reason, FailureReason::InvalidSpec, "{case}");
                    assert!(e.message.contains(why), "{case}: {}", e.message);
                }
                (got, want) => panic!("{case}: got {got:?}, want refusal {want:?}"),
            }
        }
    }
}
