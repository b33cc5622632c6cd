//! Rebuilding: rebase each incremental onto its parent, flatten the chain into one qcow2 per
//! disk, and check it; then the endRecovery hooks.

use super::io_err;
use crate::api::{DiskFormat, FailureReason, RestorePhase, RestoreRequest};
use crate::error::StepError;
use crate::hooks::HookStage;
use crate::lifecycle::{Event, Journal};
use crate::qemu_img;
use crate::restore::RestoreEngine;
use crate::source::Source;

impl<J: Journal<RestoreRequest>, S: Source> RestoreEngine<'_, J, S> {
    /// Rebuilds the disks `todo` (indexes into `disks`); the others were rebuilt and checked
    /// before a crash.
    pub(crate) async fn rebuild(&mut self, todo: Vec<usize>) -> Result<(), StepError> {
        let members = self.lc.status().chain_runs.clone();
        let mut disks = self.lc.status().disks.clone();
        let total: u64 = disks.iter().map(|d| d.virtual_size).sum();
        let mut base_done = 0u64;
        for (i, d) in disks.iter_mut().enumerate() {
            if !todo.contains(&i) {
                base_done += d.virtual_size;
                continue;
            }
            let mut images = Vec::new();
            for m in &members {
                let man = self.read_manifest(&m.run).await?;
                let Some(md) = man.disks.iter().find(|x| x.name == d.name) else {
                    return Err(StepError::new(
                        FailureReason::VerificationFailed,
                        format!("{} has no disk {}", m.run, d.name),
                    ));
                };
                if !md.is_incremental(man.type_) {
                    // A disk exported whole (a raw or block disk, in every run) needs nothing
                    // from the points before it.
                    images.clear();
                }
                images.push(self.member_dir(&m.run).join(&md.export_file));
            }
            for pair in images.windows(2) {
                let argv = ["rebase", "-u", "-F", "qcow2", "-b"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([pair[0].display().to_string(), pair[1].display().to_string()]);
                qemu_img::run_qemu_img(
                    &argv.collect::<Vec<_>>(),
                    FailureReason::VerificationFailed,
                    FailureReason::StorageFull,
                    |_| {},
                )
                .await?;
            }
            let top = images
                .last()
                .expect("a chain has a full")
                .display()
                .to_string();
            let report = &self.lc.report;
            let vsize = d.virtual_size;
            let progress = |pct: f64| {
                if pct > 0.0 {
                    crate::process::crash_point("restore:rebuilding:converting");
                }
                report(Event::Progress {
                    stage: "Rebuilding",
                    done: base_done + (vsize as f64 * pct / 100.0) as u64,
                    total,
                })
            };
            if d.device {
                // Checked again now, not only when the request was resolved: it may have been
                // long ago, or before a crash this run resumes from.
                if let Some(user) = self.device_user(&d.path).await? {
                    return Err(StepError::new(
                        FailureReason::InvalidSpec,
                        format!(
                            "{} is now in use ({user}); nothing was written to it",
                            d.path
                        ),
                    ));
                }
                super::devices::write_onto_device(&top, &d.path, vsize, progress).await?;
                d.verified = true;
                base_done += vsize;
                continue;
            }
            let part = format!("{}.part", d.path);
            let _ = std::fs::remove_file(&part);
            let format = d.format().qemu_name();
            let merged = d.format() == DiskFormat::Qcow2
                && merge_into_full(&images, &part, &progress).await?;
            if merged {
                self.lc.report(Event::Note(format!(
                    "{}: the fetched full is the disk{}",
                    d.name,
                    match images.len() - 1 {
                        0 => String::new(),
                        n => format!(", {n} incremental(s) committed into it"),
                    }
                )));
            } else {
                // Converted into a new file, so qemu-img leaves every zero region of a raw
                // one as a hole: the file takes the disk's data, not its size.
                let argv: Vec<String> = ["convert", "-p", "-O", format, "-f", "qcow2"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([top.clone(), part.clone()])
                    .collect();
                qemu_img::run_qemu_img(
                    &argv,
                    FailureReason::VerificationFailed,
                    FailureReason::StorageFull,
                    &progress,
                )
                .await?;
            }
            if d.format() == DiskFormat::Raw {
                // A raw file has no metadata for `qemu-img check` to read: its content is
                // compared with the rebuilt chain instead.
                compare(&top, &part).await?;
            } else {
                qemu_img::check(&part).await?;
            }
            std::fs::rename(&part, &d.path)
                .map_err(|e| io_err("cannot move the rebuilt disk in place", e))?;
            d.verified = true;
            base_done += vsize;
        }
        self.lc.status_mut().disks = disks.clone();
        self.lc.save().await?;
        let list = disks
            .iter()
            .map(|d| format!("{}={}", d.name, d.path))
            .collect::<Vec<_>>()
            .join(",");
        self.hooks(
            HookStage::EndRecovery,
            vec![("SNAPBACK_RESTORED_DISKS".into(), list)],
        )
        .await?;
        self.lc.enter(RestorePhase::Defining).await
    }
}

/// Makes the fetched full export of a qcow2 disk the restored disk (`part`), with every
/// incremental after it committed into it, so the disk's data is written once (by the fetch)
/// and only the clusters the incrementals changed are written again. A converted copy would
/// write all of it a second time.
///
/// `part` is a hard link to the fetched full, not a rename: the fetch dir keeps its chain
/// whole, so a rebuild resumed after a crash (even one after `part` was moved in place)
/// commits again into the same file, which gives the same bytes. The incrementals are
/// left as they were (`commit -b` does not empty the top image).
///
/// Answers false, having written nothing, where this does not apply and the caller converts:
/// the full is not self-contained (an offline export kept its shared base out), or the
/// fetch dir and the disk's directory are on different filesystems.
async fn merge_into_full(
    images: &[std::path::PathBuf],
    part: &str,
    progress: &impl Fn(f64),
) -> Result<bool, StepError> {
    let full = images
        .first()
        .expect("a chain has a full")
        .display()
        .to_string();
    if qemu_img::probe_chain(&full).await?.len() != 1 {
        return Ok(false);
    }
    if let Some(top) = images.last().filter(|_| images.len() > 1) {
        // A commit killed mid-way leaves clusters it had allocated but not yet mapped: leaked,
        // harmless, but `qemu-img check` fails on them. Freed first, then committed again.
        let repair: Vec<String> = ["check", "-q", "-r", "leaks", "-f", "qcow2", &full]
            .iter()
            .map(|s| s.to_string())
            .collect();
        qemu_img::run_qemu_img(
            &repair,
            FailureReason::VerificationFailed,
            FailureReason::StorageFull,
            |_| {},
        )
        .await?;
        let argv: Vec<String> = ["commit", "-p", "-f", "qcow2", "-b"]
            .iter()
            .map(|s| s.to_string())
            .chain([full.clone(), top.display().to_string()])
            .collect();
        qemu_img::run_qemu_img(
            &argv,
            FailureReason::VerificationFailed,
            FailureReason::StorageFull,
            progress,
        )
        .await?;
    }
    // A full alone has nothing to commit: its crash point is here, mid-rebuild all the same.
    crate::process::crash_point("restore:rebuilding:converting");
    match std::fs::hard_link(&full, part) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Ok(false),
        Err(e) => Err(io_err("cannot link the rebuilt disk into place", e)),
    }
}

/// Whether the raw file `raw` holds exactly what the qcow2 image `top` does.
async fn compare(top: &str, raw: &str) -> Result<(), StepError> {
    let argv: Vec<String> = ["compare", "-f", "qcow2", "-F", "raw"]
        .iter()
        .map(|s| s.to_string())
        .chain([top.to_string(), raw.to_string()])
        .collect();
    super::run_compare(&argv, raw).await
}
