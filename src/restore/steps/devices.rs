//! Block devices named in `targetDevices`: what is on them before anything is written (for
//! `plan::check_devices`), and writing a rebuilt disk onto one and comparing it back.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::api::{FailureReason, RestoreRequest};
use crate::error::StepError;
use crate::libvirt::domain_xml::{every_disk_source, is_cbt_overlay};
use crate::lifecycle::Journal;
use crate::qemu_img;
use crate::restore::plan::DeviceFacts;
use crate::restore::RestoreEngine;
use crate::source::Source;

/// What `blkid -p` (low-level probing: superblocks and partition tables, not the cache)
/// recognises on `dev`. Exit 2 without a word is blkid's "nothing found" (with one, it could
/// not read the device); exit 8 is several signatures at once.
async fn signature(dev: &str) -> Result<Option<String>, StepError> {
    let out = tokio::process::Command::new("blkid")
        .args(["-p", "-o", "export", dev])
        .output()
        .await
        .map_err(|e| StepError::new(FailureReason::Internal, format!("cannot run blkid: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(2) if stderr.trim().is_empty() => Ok(None),
        Some(8) => Ok(Some("several signatures".into())),
        Some(0) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let found: Vec<&str> = text
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("TYPE=")
                        .or_else(|| l.strip_prefix("PTTYPE="))
                })
                .collect();
            Ok(Some(if found.is_empty() {
                "a signature".to_string()
            } else {
                found.join(", ")
            }))
        }
        _ => Err(StepError::new(
            FailureReason::InvalidSpec,
            format!("cannot probe {dev}: {}", stderr.trim()),
        )),
    }
}

/// The path with its links resolved (`/dev/vg/x` and `/dev/dm-3` are one device).
fn canonical(path: &str) -> String {
    std::fs::canonicalize(path)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.to_string())
}

/// Whether the kernel holds the device (mounted, an LVM physical volume in use, swap, a
/// RAID member): an exclusive open of a block device then fails with EBUSY.
fn held_by_kernel(dev: &str) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    matches!(
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(dev),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY)
    )
}

/// The device's size in bytes (a block device's metadata says 0; seeking to its end does not).
fn size_of(dev: &Path) -> Result<u64, StepError> {
    std::fs::File::open(dev)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(|e| {
            StepError::new(
                FailureReason::InvalidSpec,
                format!("cannot read the size of {}: {e}", dev.display()),
            )
        })
}

/// The `raw` image options that show only the first `size` bytes of `dev`: a device larger
/// than the disk keeps whatever lies past it, which is not the disk's.
fn sized_raw(dev: &str, size: u64) -> String {
    format!(
        "driver=raw,size={size},file.driver=host_device,file.filename={}",
        dev.replace(',', ",,")
    )
}

impl<J: Journal<RestoreRequest>, S: Source> RestoreEngine<'_, J, S> {
    /// Every file or device a domain of this host uses now or from its next start (read-only,
    /// shared and backing images, and the data behind a changed-block tracking overlay),
    /// canonical, with who uses it. A domain that cannot be read is an error, not a pass.
    async fn disk_users(&self) -> Result<BTreeMap<String, String>, StepError> {
        let mut users = BTreeMap::new();
        for name in self.source.domain_names().await? {
            let v = self.source.domain(&name).await?;
            for xml in [&v.xml, &v.inactive_xml] {
                let sources = every_disk_source(xml)
                    .map_err(|e| StepError::new(FailureReason::Internal, e.to_string()))?;
                for src in sources {
                    if is_cbt_overlay(&src) {
                        if let Ok(Some(data)) = qemu_img::data_file(&src).await {
                            users.insert(
                                canonical(&data),
                                format!("the data of {src}, a disk of {name}"),
                            );
                        }
                    }
                    users.insert(canonical(&src), format!("a disk of {name}"));
                }
            }
        }
        Ok(users)
    }

    /// Who uses `dev` now, if anyone: a domain, or the host's kernel.
    pub(crate) async fn device_user(&self, dev: &str) -> Result<Option<String>, StepError> {
        Ok(user_of(dev, &self.disk_users().await?))
    }

    /// The facts about every device the spec names.
    pub(crate) async fn device_facts(&self) -> Result<BTreeMap<String, DeviceFacts>, StepError> {
        let named = &self.lc.record.spec.target_devices;
        // Every domain is read once, whatever the number of devices named.
        let users = if named.is_empty() {
            BTreeMap::new()
        } else {
            self.disk_users().await?
        };
        let mut out = BTreeMap::new();
        for dev in named.values() {
            let path = Path::new(dev);
            let is_block_device = std::fs::metadata(path)
                .map(|m| m.file_type().is_block_device())
                .unwrap_or(false);
            let facts = if is_block_device {
                DeviceFacts {
                    is_block_device,
                    canonical: canonical(dev),
                    size: size_of(path)?,
                    signature: signature(dev).await?,
                    used_by: user_of(dev, &users),
                }
            } else {
                DeviceFacts::default()
            };
            out.insert(dev.clone(), facts);
        }
        Ok(out)
    }
}

/// Who uses `dev`: the host's kernel, or a domain among `users` (from `disk_users`).
fn user_of(dev: &str, users: &BTreeMap<String, String>) -> Option<String> {
    if held_by_kernel(dev) {
        return Some("held by the host (mounted, or an LVM, RAID or swap member)".into());
    }
    users.get(&canonical(dev)).cloned()
}

/// Writes the rebuilt image `top` (qcow2) onto `dev` and compares the device's first `size`
/// bytes with it, so a device is called verified only for what it holds.
pub(crate) async fn write_onto_device(
    top: &str,
    dev: &str,
    size: u64,
    progress: impl Fn(f64),
) -> Result<(), StepError> {
    let argv: Vec<String> = ["convert", "-p", "-n", "-f", "qcow2", "-O", "raw"]
        .iter()
        .map(|s| s.to_string())
        .chain([top.to_string(), dev.to_string()])
        .collect();
    qemu_img::run_qemu_img(
        &argv,
        FailureReason::VerificationFailed,
        FailureReason::StorageFull,
        progress,
    )
    .await?;
    let argv: Vec<String> = vec![
        "compare".into(),
        "--image-opts".into(),
        format!("driver=qcow2,file.filename={}", top.replace(',', ",,")),
        sized_raw(dev, size),
    ];
    super::run_compare(&argv, dev).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_seen_only_up_to_the_disks_size_and_commas_in_its_path_are_escaped() {
        assert_eq!(
            sized_raw("/dev/disk/by-id/a,b", 4096),
            "driver=raw,size=4096,file.driver=host_device,file.filename=/dev/disk/by-id/a,,b"
        );
    }
}
