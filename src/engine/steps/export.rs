//! Exporting: wait for the push-mode job (running domain) or convert the disk files (shut-off
//! domain); then checksum the exports and write the manifest next to them.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::api::BackupRun;
use crate::api::{BackupPhase, DomainFile, FailureReason, RunDisk};
use crate::engine::BackupEngine;
use crate::error::StepError;
use crate::libvirt::domain_xml::depth_images;
use crate::libvirt::JobState;
use crate::lifecycle::{Event, Journal};
use crate::qemu_img::{probe_chain, run_qemu_img};
use crate::source::Source;
use crate::state_dir;
use crate::units::human_bytes;

use super::manifest_name;
use crate::catalog::manifest::Manifest;

/// How often progress is written to status during long waits.
const SAVE_EVERY: Duration = Duration::from_secs(2);

impl<J: Journal<BackupRun>, S: Source> BackupEngine<'_, J, S> {
    pub(crate) async fn export(&mut self) -> Result<(), StepError> {
        if self.lc.status().online {
            self.wait_for_job().await?;
        } else {
            self.export_offline().await?;
        }
        self.seal_exports().await?;
        self.lc.enter(BackupPhase::Uploading).await
    }

    async fn wait_for_job(&mut self) -> Result<(), StepError> {
        let id = self.domain_id();
        let mut last_save = Instant::now();
        crate::process::pause_point("backup:exporting:job-running").await;
        loop {
            match self.source.job(&id).await? {
                JobState::Active { done, total } => {
                    self.lc.report(Event::Progress {
                        stage: "Exporting",
                        done,
                        total,
                    });
                    self.lc.status_mut().progress = Some(crate::api::Progress {
                        bytes_done: done,
                        bytes_total: total,
                    });
                    if last_save.elapsed() >= SAVE_EVERY {
                        self.lc.save().await?;
                        last_save = Instant::now();
                    }
                }
                JobState::Completed => return self.after_job().await,
                JobState::Failed(m) => return Err(job_failed(m)),
                JobState::None => {
                    return Err(StepError::new(
                        FailureReason::BackupJobFailed,
                        "the backup job vanished",
                    ));
                }
            }
            let mut cancel = self.lc.cancel.clone();
            tokio::select! {
                _ = tokio::time::sleep(self.ctx.poll) => {}
                _ = cancel.changed() => return Err(StepError::new(FailureReason::Interrupted, "interrupted during export")),
            }
        }
    }

    /// A completed job: the quiesce outcome of a source that froze the guest itself, and
    /// exports the source fetches from elsewhere (KubeVirt's backup volume) into staging.
    async fn after_job(&mut self) -> Result<(), StepError> {
        let id = self.domain_id();
        if let Some(o) = self.source.job_outcome(&id).await? {
            // The source decided the job itself: it must be the one planned, or the chain
            // would be wrong (a whole export rebased onto a parent reads the parent's data
            // where it wrote none).
            let s = self.lc.status();
            let planned_full = s.type_ != Some(crate::api::BackupType::Incremental);
            if o.full.is_some_and(|full| full != planned_full) {
                return Err(StepError::new(
                    FailureReason::CheckpointInconsistent,
                    format!(
                        "the hypervisor took {} backup where {} was planned (its checkpoint was lost meanwhile); the next run starts a new chain",
                        if planned_full { "an incremental" } else { "a full" },
                        if planned_full { "a full" } else { "an incremental" },
                    ),
                ));
            }
            // The name the source reports wins over the one its rule gave at the start.
            if o.checkpoint.is_some() && o.checkpoint != s.checkpoint {
                self.lc.status_mut().checkpoint = o.checkpoint;
            }
        }
        if self.source.quiesces_itself() {
            let required = self.lc.record.spec.consistency.quiesce == crate::api::Quiesce::Required;
            let outcome = self.source.quiesce_outcome(&id).await?;
            if outcome.is_none() && required {
                return Err(StepError::new(
                    FailureReason::QuiesceFailed,
                    "the hypervisor did not say whether it froze the guest (quiesce: Required)",
                ));
            }
            if let Some((frozen, msg)) = outcome {
                if !frozen && required {
                    return Err(StepError::new(FailureReason::QuiesceFailed, msg));
                }
                self.lc.status_mut().quiesced = frozen;
                let skipped = self.lc.record.spec.consistency.quiesce == crate::api::Quiesce::None;
                let reason = if frozen {
                    crate::api::reason::FILESYSTEMS_FROZEN
                } else if skipped {
                    crate::api::reason::QUIESCE_SKIPPED
                } else {
                    crate::api::reason::GUEST_AGENT_UNAVAILABLE
                };
                self.lc
                    .condition(crate::api::ConditionType::Quiesced, frozen, reason, msg);
            }
        }
        if !self.source.fetches_exports() {
            return Ok(());
        }
        let dir = self.staging();
        let exports: Vec<crate::source::DiskExport> = self
            .lc
            .status()
            .disks
            .iter()
            .map(|d| crate::source::DiskExport {
                disk: d.name.clone(),
                file: dir.join(&d.export_file),
                tracked: RunDisk::tracks_changes(&d.format),
                whole: d.full_reason.is_some(),
            })
            .collect();
        let report = &self.lc.report;
        let progress = |done: u64, total: u64| {
            report(Event::Progress {
                stage: "Fetching",
                done,
                total,
            })
        };
        self.source
            .fetch_exports(&id, &exports, &progress)
            .await
            .map_err(|e| {
                // A full staging is the user's to fix there, not the hypervisor's.
                StepError::new(
                    crate::engine::decide::job_failure_reason(&e.message),
                    format!("cannot fetch the exports: {}", e.message),
                )
            })?;
        self.lc.save().await
    }

    /// Exports each disk of a shut-off domain with qemu-img, honouring the depth rule.
    async fn export_offline(&mut self) -> Result<(), StepError> {
        // Snapshots an earlier attempt of this run took (it died or failed mid-export).
        self.remove_lvm_snapshots().await?;
        let view = self.source.domain(&self.domain_id()).await?;
        let dir = self.staging();
        let depth = self.lc.record.spec.depth;
        let disks = self.lc.status().disks.clone();
        let total: u64 = disks.iter().map(|d| d.virtual_size).sum();
        let mut base_done = 0u64;
        for d in &disks {
            let Some(disk) = view.facts.disks.iter().find(|x| x.name == d.name) else {
                return Err(StepError::new(
                    FailureReason::BackupJobFailed,
                    format!("disk {} disappeared", d.name),
                ));
            };
            // An inactive domain's XML has no <backingStore>: ask qemu-img for the chain.
            let chain = if disk.chain.len() == 1 {
                probe_chain(disk.source()).await?
            } else {
                disk.chain.clone()
            };
            let disk = crate::libvirt::Disk {
                chain,
                ..disk.clone()
            };
            let n = depth_images(disk.chain.len(), depth);
            let dest = dir.join(&d.export_file);
            let part = dir.join(format!("{}.part", d.export_file));
            let mut argv: Vec<String> =
                vec!["convert".into(), "-p".into(), "-O".into(), "qcow2".into()];
            if n < disk.chain.len() {
                // Leave the shared base out: the export keeps only the top `n` images' data.
                let base = &disk.chain[n];
                argv.extend([
                    "-B".into(),
                    base.path.clone(),
                    "-F".into(),
                    base.format.clone(),
                ]);
            }
            let snapshot = self.lvm_snapshot(&disk).await?;
            let read = snapshot
                .as_ref()
                .map(|s| s.device())
                .unwrap_or_else(|| disk.source().to_string());
            argv.extend([
                "-f".into(),
                disk.format().to_string(),
                read,
                part.display().to_string(),
            ]);
            let report = &self.lc.report;
            let vsize = d.virtual_size;
            let exported = run_qemu_img(
                &argv,
                FailureReason::BackupJobFailed,
                FailureReason::StagingFull,
                |pct| {
                    let done = base_done + (vsize as f64 * pct / 100.0) as u64;
                    report(Event::Progress {
                        stage: "Exporting",
                        done,
                        total,
                    });
                },
            )
            .await;
            let checked = match &snapshot {
                Some(snap) => self.after_lvm_export(snap).await,
                None => Ok(()),
            };
            // The export's own failure first: it says more than the snapshot's.
            exported?;
            checked?;
            std::fs::rename(&part, &dest)
                .map_err(|e| StepError::new(FailureReason::Internal, e.to_string()))?;
            base_done += vsize;
        }
        Ok(())
    }

    /// The export file of each disk of the run whose checkpoint this incremental starts from.
    fn parent_exports(&self) -> Vec<(String, String)> {
        let s = self.lc.status();
        let (Some(crate::api::BackupType::Incremental), Some(parent)) =
            (s.type_, s.parent_checkpoint.as_ref())
        else {
            return vec![];
        };
        self.ctx
            .history
            .iter()
            .filter_map(|r| r.status.as_ref())
            .find(|h| h.checkpoint.as_ref() == Some(parent) && h.domain_uuid == s.domain_uuid)
            .map(|h| {
                h.disks
                    .iter()
                    .map(|d| (d.name.clone(), d.export_file.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Checksums each export, saves the checkpoint XML and writes the run's manifest.
    async fn seal_exports(&mut self) -> Result<(), StepError> {
        let dir = self.staging();
        let name = self.lc.name();
        let mut disks = self.lc.status().disks.clone();
        let parents = self.parent_exports();
        let run_type = self
            .lc
            .status()
            .type_
            .unwrap_or(crate::api::BackupType::Full);
        // Files mode reads the exports through qemu-storage-daemon, not the target: no need.
        let sparse = self.lc.status().online && !self.files_mode();
        for d in disks.iter_mut() {
            let path = dir.join(&d.export_file);
            // A raw disk's whole export, also through a changed-block tracking overlay (whose
            // every cluster maps to the device, so the job copies all of them).
            let raw_data = !RunDisk::tracks_changes(&d.format)
                || (crate::libvirt::domain_xml::is_cbt_overlay(&d.source)
                    && !d.is_incremental(run_type));
            if sparse && raw_data {
                sparsify(&path).await?;
            }
            // libvirt writes an incremental export with the live disk as its backing file.
            // Naming the parent's export instead (relative, header only) makes the files of a
            // chain, restored into one directory with plain duplicity, a working qcow2 chain by
            // themselves: see the README's "Recovery without snapback". Done before hashing,
            // and idempotent, so a resumed run hashes the same bytes.
            let parent = parents
                .iter()
                .find(|(n, _)| *n == d.name)
                .filter(|_| d.is_incremental(run_type));
            if let Some((_, parent)) = parent {
                let argv: Vec<String> = ["rebase", "-u", "-F", "qcow2", "-b", parent]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([path.display().to_string()])
                    .collect();
                run_qemu_img(
                    &argv,
                    FailureReason::BackupJobFailed,
                    FailureReason::StagingFull,
                    |_| {},
                )
                .await?;
            }
        }
        // Every disk's export hashed at once: each hash is a pass over a whole export, one
        // core each, and the exports are independent.
        let sums = futures::future::try_join_all(
            disks.iter().map(|d| hash_export(dir.join(&d.export_file))),
        )
        .await?;
        for (d, sum) in disks.iter_mut().zip(sums) {
            d.sha256 = Some(sum);
            d.export_bytes = state_dir::allocated_bytes(&dir.join(&d.export_file));
        }
        if let Some(cp) = self.lc.status().checkpoint.clone() {
            let xml = self.source.checkpoint_xml(&self.domain_id(), &cp).await?;
            write(&dir.join(format!("{name}.checkpoint.xml")), xml.as_bytes())?;
        }
        let total: u64 = disks.iter().map(|d| d.export_bytes).sum();
        let s = self.lc.status_mut();
        s.disks = disks;
        s.size_bytes = total;
        s.size = Some(human_bytes(total));
        let s = self.lc.status().clone();
        let manifest = Manifest {
            api_version: "snapback.dev/v1alpha1".into(),
            run: name.clone(),
            domain: s
                .domain_name
                .clone()
                .unwrap_or_else(|| self.lc.record.spec.domain.clone()),
            domain_uuid: s.domain_uuid.clone(),
            type_: s.type_.unwrap_or(crate::api::BackupType::Full),
            full_reason: s.full_reason,
            chain: s.chain.clone().unwrap_or_else(|| name.clone()),
            chain_index: s.chain_index,
            checkpoint: s.checkpoint.clone(),
            parent_checkpoint: s.parent_checkpoint.clone(),
            snapshot_time: s.snapshot_time,
            online: s.online,
            disks: s.disks.clone(),
            firmware: s.firmware.clone(),
            memory: s.memory_state.clone(),
            domain_files: domain_files(&dir.join(format!("{name}.domain.xml")), &s.firmware),
        };
        let text = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| StepError::new(FailureReason::Internal, e.to_string()))?;
        write(&dir.join(manifest_name(&name)), &text)?;
        self.lc.save().await
    }
}

/// The SHA-256 of an export, computed off the async threads.
async fn hash_export(path: std::path::PathBuf) -> Result<String, StepError> {
    let p2 = path.clone();
    tokio::task::spawn_blocking(move || state_dir::sha256_file(&p2))
        .await
        .map_err(|e| StepError::new(FailureReason::Internal, e.to_string()))?
        .map_err(|e| {
            StepError::new(
                FailureReason::BackupJobFailed,
                format!("cannot read export {}: {e}", path.display()),
            )
        })
}

/// The failure of a push-mode job that ended in error (`decide::job_failure_reason`).
fn job_failed(message: String) -> StepError {
    StepError::new(crate::engine::decide::job_failure_reason(&message), message)
}

/// Rewrites a whole export of a raw or block disk without its zeros. A push-mode job copies
/// a block device's every byte (it reports all of it as allocated), so a mostly empty volume
/// would otherwise be stored, and uploaded, at its full size. `qemu-img convert` leaves
/// zeroed clusters unallocated. Through `.sparse` and a rename, so a crash leaves the export
/// whole, and running it again gives the same image.
async fn sparsify(export: &Path) -> Result<(), StepError> {
    let sparse = export.with_extension("sparse");
    let _ = std::fs::remove_file(&sparse);
    let argv: Vec<String> = ["convert", "-O", "qcow2", "-f", "qcow2"]
        .iter()
        .map(|s| s.to_string())
        .chain([export.display().to_string(), sparse.display().to_string()])
        .collect();
    run_qemu_img(
        &argv,
        FailureReason::BackupJobFailed,
        FailureReason::StagingFull,
        |_| {},
    )
    .await?;
    std::fs::rename(&sparse, export).map_err(|e| {
        StepError::new(
            FailureReason::Internal,
            format!("cannot replace {}: {e}", export.display()),
        )
    })
}

/// The files the saved domain XML names beside its disks: the shared read-only boot files,
/// the files its devices name (output files, sockets, shares; not saved), and the domain's
/// own firmware state (saved with the point).
fn domain_files(saved_xml: &Path, firmware: &[crate::api::FirmwareFile]) -> Vec<DomainFile> {
    let facts = std::fs::read_to_string(saved_xml)
        .ok()
        .and_then(|x| crate::libvirt::domain_xml::parse_domain(&x).ok());
    let shared = facts
        .iter()
        .flat_map(|f| f.firmware.read_only_files())
        .map(|(role, path)| DomainFile {
            role: role.into(),
            path: path.into(),
            writable: false,
        });
    let devices = std::fs::read_to_string(saved_xml)
        .ok()
        .and_then(|x| crate::libvirt::host_files::host_files(&x).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|f| DomainFile {
            writable: f.used.writable(),
            role: f.role,
            path: f.path,
        });
    let own = firmware.iter().map(|f| DomainFile {
        role: match f.kind {
            crate::api::FirmwareKind::Nvram => "nvram".into(),
            crate::api::FirmwareKind::TpmState => "tpm".into(),
        },
        path: f.source.clone(),
        writable: true,
    });
    shared.chain(devices).chain(own).collect()
}

fn write(path: &Path, data: &[u8]) -> Result<(), StepError> {
    std::fs::write(path, data).map_err(|e| {
        let reason = if e.raw_os_error() == Some(libc::ENOSPC) {
            FailureReason::StagingFull
        } else {
            FailureReason::Internal
        };
        StepError::new(reason, format!("cannot write {}: {e}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_that_ran_out_of_space_fails_as_staging_full_and_any_other_as_a_job_failure() {
        let full = job_failed("No space left on device".into());
        assert_eq!(full.reason, FailureReason::StagingFull);
        let other = job_failed("Input/output error".into());
        assert_eq!(other.reason, FailureReason::BackupJobFailed);
    }
    use crate::api::{FirmwareFile, FirmwareKind};

    #[test]
    fn the_manifest_lists_shared_boot_files_read_only_and_the_domains_own_state_writable() {
        let dir = tempfile::tempdir().unwrap();
        let xml = dir.path().join("r.domain.xml");
        std::fs::write(
            &xml,
            "<domain><name>web</name><os><loader readonly='yes' type='pflash'>/fw/CODE.fd</loader>\
             <nvram>/nv/web_VARS.fd</nvram><kernel>/boot/vmlinuz</kernel></os><devices/></domain>",
        )
        .unwrap();
        let saved = [FirmwareFile {
            kind: FirmwareKind::Nvram,
            file: "r.nvram.fd".into(),
            source: "/nv/web_VARS.fd".into(),
            sha256: "00".into(),
        }];
        let files: Vec<(String, String, bool)> = domain_files(&xml, &saved)
            .into_iter()
            .map(|f| (f.role, f.path, f.writable))
            .collect();
        assert_eq!(
            files,
            [
                ("loader".into(), "/fw/CODE.fd".into(), false),
                ("kernel".into(), "/boot/vmlinuz".into(), false),
                ("nvram".into(), "/nv/web_VARS.fd".into(), true),
            ]
        );
    }
}
