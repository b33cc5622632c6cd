//! What to do about a shut-off domain's logical volume before it is exported (pure): whether
//! to snapshot it, which kind, how large, under what name, and the argv of every LVM call.

use sha2::{Digest, Sha256};

use super::report::{LogicalVolume, COLUMNS};

const MIB: u64 = 1 << 20;

/// The least copy-on-write space a classic snapshot is given. Nothing writes the origin of a
/// shut-off domain, so the space only fills if someone starts the domain during the export.
pub const MIN_COW: u64 = 64 * MIB;
/// The most it is given: a tenth of the volume beyond that would only take the group's room.
pub const MAX_COW: u64 = 8 << 30;

/// How the volume is snapshotted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A thin snapshot in the volume's pool: no size, it grows as the origin diverges.
    Thin,
    /// A classic snapshot with this much copy-on-write space, in bytes.
    Classic { cow: u64 },
}

/// A snapshot to take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub vg: String,
    pub origin: String,
    pub name: String,
    pub kind: Kind,
}

impl Snapshot {
    /// `VG/NAME`, as the run's status records it and as `lvremove` and `lvs` take it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.vg, self.name)
    }

    /// The device the export reads.
    pub fn device(&self) -> String {
        format!("/dev/{}/{}", self.vg, self.name)
    }

    /// `lvcreate` for this snapshot. A thin snapshot is created with LVM's activation-skip
    /// flag set unless told otherwise, and would then not be readable.
    pub fn create_argv(&self) -> Vec<String> {
        let mut argv: Vec<String> = vec!["lvcreate".into(), "--snapshot".into()];
        match self.kind {
            Kind::Thin => argv.extend(["--setactivationskip".into(), "n".into()]),
            Kind::Classic { cow } => argv.extend(["--size".into(), format!("{cow}b")]),
        }
        argv.extend([
            "--activate".into(),
            "y".into(),
            "--name".into(),
            self.name.clone(),
            format!("{}/{}", self.vg, self.origin),
        ]);
        argv
    }
}

/// `lvremove` of a snapshot by its `VG/NAME`. `--force` once: no question asked about an
/// active volume (there is no one to answer it).
pub fn remove_argv(id: &str) -> Vec<String> {
    vec!["lvremove".into(), "--force".into(), id.to_string()]
}

/// `lvs` of one volume, by device path or `VG/NAME`, as `report::parse` reads it.
pub fn lvs_argv(volume: &str) -> Vec<String> {
    [
        "lvs",
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        COLUMNS,
        volume,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Only device-mapper devices can be logical volumes; anything else (a loop device, a
/// partition, an iSCSI disk) is never asked of `lvs`. `canonical` has its links resolved.
pub fn may_be_logical_volume(canonical: &str) -> bool {
    canonical.starts_with("/dev/dm-")
}

/// The snapshot's name: stable for the run and disk, so a resumed run finds its own, and
/// marked as snapback's. LVM allows letters, digits and `+_.-` in names.
pub fn snapshot_name(run: &str, disk: &str) -> String {
    let hash = hex::encode(&Sha256::digest(run.as_bytes())[..4]);
    let disk: String = disk
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+_.-".contains(*c))
        .take(32)
        .collect();
    format!("snapback-{hash}-{disk}")
}

/// The copy-on-write space of a classic snapshot of `lv`: a tenth of the volume within
/// [`MIN_COW`, `MAX_COW`], never more than the volume, and what fits in the group's free space
/// in whole extents (LVM rounds up, which would ask for more than is free). None when even
/// [`MIN_COW`] (or the whole volume, if smaller) does not fit.
pub fn cow_size(lv: &LogicalVolume) -> Option<u64> {
    let want = (lv.size / 10).clamp(MIN_COW, MAX_COW).min(lv.size);
    let extent = lv.extent.max(1);
    let fits = lv.vg_free / extent * extent;
    let size = want.min(fits);
    (size > 0 && size >= MIN_COW.min(lv.size)).then_some(size)
}

/// Whether to snapshot `lv` for the export of disk `disk` of run `run`, and how; or why not.
/// A running domain never gets one: its backup job is already a point-in-time copy, and a
/// snapshot of a volume qemu writes would be taken under a live guest.
pub fn decide(
    lv: &LogicalVolume,
    run: &str,
    disk: &str,
    domain_shut_off: bool,
) -> Result<Snapshot, String> {
    if !domain_shut_off {
        return Err("the domain is not shut off: it is exported by its backup job".into());
    }
    if lv.is_snapshot() {
        return Err(format!(
            "{}/{} is itself a snapshot, which LVM cannot snapshot again",
            lv.vg, lv.name
        ));
    }
    let kind = if lv.is_thin() {
        Kind::Thin
    } else {
        match cow_size(lv) {
            Some(cow) => Kind::Classic { cow },
            None => {
                return Err(format!(
                    "volume group {} has {} bytes free, a snapshot needs at least {}",
                    lv.vg,
                    lv.vg_free,
                    MIN_COW.min(lv.size)
                ))
            }
        }
    };
    Ok(Snapshot {
        vg: lv.vg.clone(),
        origin: lv.name.clone(),
        name: snapshot_name(run, disk),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn lv(size: u64, vg_free: u64) -> LogicalVolume {
        LogicalVolume {
            vg: "vg0".into(),
            name: "web".into(),
            path: "/dev/vg0/web".into(),
            size,
            segtype: "linear".into(),
            attr: "-wi-a-----".into(),
            vg_free,
            extent: 4 * MIB,
            ..Default::default()
        }
    }

    #[test]
    fn a_classic_snapshot_gets_a_tenth_of_its_volume_within_bounds_and_what_the_group_has_free() {
        let rows = [
            ("a tenth of 10 GiB", lv(10 * GIB, 100 * GIB), Some(GIB)),
            ("at least 64 MiB", lv(256 * MIB, 100 * GIB), Some(MIN_COW)),
            ("at most 8 GiB", lv(1000 * GIB, 100 * GIB), Some(MAX_COW)),
            (
                "never more than a small volume",
                lv(16 * MIB, GIB),
                Some(16 * MIB),
            ),
            (
                "what is free, in whole extents",
                lv(10 * GIB, 100 * MIB + 1),
                Some(100 * MIB),
            ),
            ("too little free", lv(10 * GIB, 60 * MIB), None),
            ("nothing free", lv(10 * GIB, 0), None),
        ];
        for (case, v, want) in rows {
            assert_eq!(cow_size(&v), want, "{case}");
        }
    }

    #[test]
    fn only_a_shut_off_domains_volume_is_snapshotted_thin_in_its_pool_or_classic() {
        let classic = decide(&lv(10 * GIB, 100 * GIB), "web-1", "vda", true).unwrap();
        assert_eq!(classic.kind, Kind::Classic { cow: GIB });
        assert_eq!(classic.id(), format!("vg0/{}", classic.name));
        assert_eq!(classic.device(), format!("/dev/vg0/{}", classic.name));

        let mut thin = lv(10 * GIB, 0);
        thin.segtype = "thin".into();
        thin.pool = "pool0".into();
        thin.attr = "Vwi-a-tz--".into();
        assert_eq!(
            decide(&thin, "web-1", "vda", true).unwrap().kind,
            Kind::Thin
        );

        let running = decide(&lv(10 * GIB, 100 * GIB), "web-1", "vda", false);
        assert!(running.unwrap_err().contains("not shut off"));
        let full = decide(&lv(10 * GIB, 0), "web-1", "vda", true);
        assert!(full.unwrap_err().contains("bytes free"));
        let mut snap = lv(10 * GIB, 100 * GIB);
        snap.attr = "swi-a-s---".into();
        assert!(decide(&snap, "web-1", "vda", true)
            .unwrap_err()
            .contains("itself a snapshot"));
    }

    #[test]
    fn snapshot_names_are_stable_per_run_and_disk_and_valid_for_lvm() {
        let a = snapshot_name("web-20261130-0200", "vda");
        assert_eq!(a, snapshot_name("web-20261130-0200", "vda"));
        assert_ne!(a, snapshot_name("web-20261201-0200", "vda"));
        assert_ne!(a, snapshot_name("web-20261130-0200", "vdb"));
        assert!(a.starts_with("snapback-") && a.ends_with("-vda"), "{a}");
        let odd = snapshot_name("r", "v d/a$");
        assert!(
            odd.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+_.-".contains(c)),
            "{odd}"
        );
    }

    #[test]
    fn lvm_is_called_with_argv_vectors_that_say_everything() {
        let s = Snapshot {
            vg: "vg0".into(),
            origin: "web".into(),
            name: "snapback-0a1b2c3d-vda".into(),
            kind: Kind::Classic { cow: GIB },
        };
        assert_eq!(
            s.create_argv(),
            [
                "lvcreate",
                "--snapshot",
                "--size",
                "1073741824b",
                "--activate",
                "y",
                "--name",
                "snapback-0a1b2c3d-vda",
                "vg0/web"
            ]
        );
        let thin = Snapshot {
            kind: Kind::Thin,
            ..s.clone()
        };
        assert_eq!(
            thin.create_argv()[..4],
            ["lvcreate", "--snapshot", "--setactivationskip", "n"]
        );
        assert!(!thin.create_argv().contains(&"--size".to_string()));
        assert_eq!(
            remove_argv(&s.id()),
            ["lvremove", "--force", "vg0/snapback-0a1b2c3d-vda"]
        );
        let lvs = lvs_argv("/dev/vg0/web");
        assert_eq!(lvs[0], "lvs");
        assert_eq!(lvs.last().unwrap(), "/dev/vg0/web");
        assert!(lvs.windows(2).any(|w| w == ["--units", "b"]));
    }

    #[test]
    fn only_device_mapper_devices_are_asked_of_lvs() {
        assert!(may_be_logical_volume("/dev/dm-3"));
        for not in ["/dev/loop0", "/dev/sda2", "/dev/nvme0n1", "/var/lib/x.img"] {
            assert!(!may_be_logical_volume(not), "{not}");
        }
    }
}
