//! Block devices named in `targetDevices`: what is on them before anything is written (for
//! `plan::check_devices`), and writing a rebuilt disk onto one and comparing it back.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::api::{FailureReason, RestoreRequest};
use crate::error::StepError;
use crate::lifecycle::Journal;
use crate::qemu_img;
use crate::restore::plan::DeviceFacts;
use crate::restore::RestoreEngine;
use crate::source::Source;

/// What `blkid -p` (low-level probing: superblocks and partition tables, not the cache)
/// recognises on `dev`. Exit 2 is blkid's "nothing found".
async fn signature(dev: &str) -> Result<Option<String>, StepError> {
    let out = tokio::process::Command::new("blkid")
        .args(["-p", "-o", "export", dev])
        .output()
        .await
        .map_err(|e| StepError::new(FailureReason::Internal, format!("cannot run blkid: {e}")))?;
    match out.status.code() {
        Some(2) => Ok(None),
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
            format!(
                "cannot probe {dev}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )),
    }
}

/// The device's size in bytes (a block device's metadata says 0; seeking to its end does not).
fn size_of(dev: &Path) -> u64 {
    std::fs::File::open(dev)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .unwrap_or(0)
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
    /// The facts about every device the spec names; `used_by` from every domain on the host.
    pub(crate) async fn device_facts(&self) -> Result<BTreeMap<String, DeviceFacts>, StepError> {
        let named = &self.lc.record.spec.target_devices;
        let mut users: BTreeMap<String, String> = BTreeMap::new();
        if !named.is_empty() {
            for name in self.source.domain_names().await? {
                let Ok(v) = self.source.domain(&name).await else {
                    continue;
                };
                for d in &v.facts.disks {
                    users.insert(d.source().to_string(), format!("{} of {name}", d.name));
                }
            }
        }
        let mut out = BTreeMap::new();
        for dev in named.values() {
            let path = Path::new(dev);
            let is_block_device = std::fs::metadata(path)
                .map(|m| m.file_type().is_block_device())
                .unwrap_or(false);
            let facts = if is_block_device {
                let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
                let used_by = users.get(dev).or_else(|| {
                    users
                        .iter()
                        .find(|(src, _)| std::fs::canonicalize(src).ok().as_deref() == Some(&real))
                        .map(|(_, u)| u)
                });
                DeviceFacts {
                    is_block_device,
                    size: size_of(path),
                    signature: signature(dev).await?,
                    used_by: used_by.cloned(),
                }
            } else {
                DeviceFacts::default()
            };
            out.insert(dev.clone(), facts);
        }
        Ok(out)
    }
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
    qemu_img::run_qemu_img(
        &argv,
        FailureReason::VerificationFailed,
        FailureReason::StorageFull,
        |_| {},
    )
    .await
    .map_err(|e| {
        StepError::new(
            FailureReason::VerificationFailed,
            format!("{dev} does not hold the restored disk: {}", e.message),
        )
    })
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
