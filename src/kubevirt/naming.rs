//! Names and paths of what a run of a KubeVirt VM creates, decided purely. Every name is a
//! function of the run (or the target and the VM), so a resumed run finds and adopts what
//! its dead predecessor created instead of making a second one.

use jiff::Timestamp;

use crate::api::VmRef;

/// A Kubernetes object name from `base`: lower-case, at most 63 characters (a hash of the
/// whole keeps cut names apart).
pub fn object_name(base: &str) -> String {
    let clean: String = base
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let clean = clean.trim_matches('-').to_string();
    if clean.len() <= 63 && clean == base {
        return clean;
    }
    use sha2::Digest;
    let h = hex::encode(&sha2::Sha256::digest(base.as_bytes())[..3]);
    let keep: String = clean.chars().take(56).collect();
    format!("{}-{h}", keep.trim_end_matches('-'))
}

/// The VirtualMachineBackup, its PVC, the VirtualMachineExport of that PVC and the export's
/// token Secret of one run: all one name, the run's own.
pub fn run_objects(run: &str) -> String {
    object_name(&format!("snapback-{run}"))
}

/// The token Secret of a run's export.
pub fn token_secret(run: &str) -> String {
    object_name(&format!("snapback-{run}-token"))
}

/// The VirtualMachineBackupTracker of one VM's chain on one target: it carries the chain's
/// latest checkpoint from run to run (KubeVirt advances it when a backup succeeds).
pub fn tracker(target: &str, vm: &VmRef) -> String {
    // A hash of the pair keeps `s3` + `eu-web` and `s3-eu` + `web` apart.
    use sha2::Digest;
    let h = hex::encode(&sha2::Sha256::digest(format!("{target}\0{}", vm.name).as_bytes())[..3]);
    let readable: String = object_name(&format!("snapback-{target}-{}", vm.name))
        .chars()
        .take(55)
        .collect();
    format!("{}-{h}", readable.trim_end_matches('-'))
}

/// The DataVolume a restore fills for one volume: `<new VM>-<volume>` for a new VM; in place
/// `<vm>-<volume>-<request>`, beside the claim it replaces (kept, so its name stays taken).
pub fn restored_volume(vm: &str, volume: &str, in_place_request: Option<&str>) -> String {
    match in_place_request {
        None => object_name(&format!("{vm}-{volume}")),
        Some(r) => object_name(&format!("{vm}-{volume}-{r}")),
    }
}

/// KubeVirt's timestamp in names and paths: the backup's creation time in UTC, Go layout
/// `2006-01-02_15-04-05` (pkg/virt-launcher/virtwrap/storage/backup.go).
fn stamp(created: Timestamp) -> String {
    created.strftime("%Y-%m-%d_%H-%M-%S").to_string()
}

/// The checkpoint KubeVirt creates for a backup: `<backup>-<stamp>`.
pub fn checkpoint(backup: &str, created: Timestamp) -> String {
    format!("{backup}-{}", stamp(created))
}

/// Where a push-mode backup writes one volume, relative to the PVC's root:
/// `<vm>/<backup>-<stamp>/<backup>-<volume>.qcow2`, lower-cased as KubeVirt lower-cases the
/// whole backup XML.
pub fn export_path(vm: &str, backup: &str, created: Timestamp, volume: &str) -> String {
    format!("{vm}/{backup}-{}/{backup}-{volume}.qcow2", stamp(created)).to_lowercase()
}

/// A Kubernetes quantity (`10Gi`, `1500M`, `2e3`, `512`) in bytes; `None` when it is not one
/// or holds a fraction of a byte that matters (`0.5`).
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "m" => 1e-3,
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    let bytes = n * mult;
    (bytes.is_finite() && bytes >= 0.0).then(|| bytes.ceil() as u64)
}

/// A quantity of bytes as Kubernetes writes it, in whole MiB rounded up.
pub fn quantity_of(bytes: u64) -> String {
    let mib = bytes.div_ceil(1024 * 1024).max(1);
    format!("{mib}Mi")
}

/// How big the PVC for a backup of disks of these virtual sizes must be: a full backup is
/// about disk-sized (KubeVirt makes no size estimate and a PVC too small fails the backup
/// with "No space left on device"), plus qcow2 metadata and filesystem overhead.
pub fn pvc_bytes(disk_sizes: &[u64]) -> u64 {
    let total: u64 = disk_sizes.iter().sum();
    total + total / 10 + 256 * 1024 * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn names_are_the_runs_own_and_stay_valid_object_names() {
        assert_eq!(
            run_objects("vms-apps-web-20261130-0200"),
            "snapback-vms-apps-web-20261130-0200"
        );
        let long = "p".repeat(80);
        let n = run_objects(&long);
        assert!(n.len() <= 63, "{n}");
        assert_ne!(n, run_objects(&"p".repeat(81)), "cut names stay apart");
        let t = tracker(
            "Offsite_S3",
            &VmRef {
                namespace: "apps".into(),
                name: "web".into(),
            },
        );
        assert!(t.starts_with("snapback-offsite-s3-web-"), "{t}");
    }

    #[test]
    fn the_checkpoint_and_the_export_path_follow_kubevirts_layout() {
        let at = ts("2026-11-30T02:00:07Z");
        assert_eq!(
            checkpoint("snapback-r1", at),
            "snapback-r1-2026-11-30_02-00-07"
        );
        assert_eq!(
            export_path("Web", "snapback-r1", at, "rootDisk"),
            "web/snapback-r1-2026-11-30_02-00-07/snapback-r1-rootdisk.qcow2"
        );
    }

    #[test]
    fn quantities_read_as_bytes() {
        assert_eq!(quantity_bytes("10Gi"), Some(10 << 30));
        assert_eq!(quantity_bytes("1500M"), Some(1_500_000_000));
        assert_eq!(quantity_bytes("2e3"), Some(2000));
        assert_eq!(quantity_bytes("512"), Some(512));
        assert_eq!(quantity_bytes("ten"), None);
        assert_eq!(quantity_bytes("5Xi"), None);
        assert_eq!(quantity_of(10 << 30), "10240Mi");
        assert!(pvc_bytes(&[1 << 30]) > 1 << 30);
    }
}
