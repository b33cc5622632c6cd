//! Firmware state on restore. A new domain gets its own UEFI variable store (at libvirt's
//! path for its name) and TPM state (under its UUID), written from the point before it is
//! defined, so it never shares a writable file with the original. In place, the domain's
//! files are replaced after it is shut down, the old ones kept beside them until the end.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::io_err;
use crate::api::{reason, ConditionType, FirmwareFile, FirmwareKind, RestoreRequest};
use crate::error::StepError;
use crate::libvirt::domain_xml::Firmware;
use crate::lifecycle::Journal;
use crate::restore::RestoreEngine;
use crate::source::Source;

/// Writes `from` to `to` through `to.part`, so `to` is never half written. The file, and the
/// directory it needed made, belong to `owner` (swtpm locks its state directory as its own
/// account) or, without one, to the directory above them. As libvirt makes swtpm's, that
/// directory is private and the ones above it let others pass (0711): swtpm must reach it.
fn place(from: &Path, to: &Path, owner: Option<(u32, u32)>) -> Result<(), StepError> {
    if let Some(dir) = to.parent() {
        if !dir.exists() {
            let made = |d: &Path, mode: u32, recursive: bool| {
                std::fs::DirBuilder::new()
                    .recursive(recursive)
                    .mode(mode)
                    .create(d)
                    .map_err(|e| io_err(&format!("cannot create {}", d.display()), e))
            };
            if let Some(above) = dir.parent() {
                made(above, 0o711, true)?;
            }
            made(dir, 0o700, false)?;
            give(dir, owner)?;
        }
    }
    let part = PathBuf::from(format!("{}.part", to.display()));
    std::fs::copy(from, &part)
        .map_err(|e| io_err(&format!("cannot write {}", part.display()), e))?;
    give(&part, owner)?;
    std::fs::rename(&part, to).map_err(|e| io_err(&format!("cannot write {}", to.display()), e))
}

/// Gives `path` to `owner`, or to the owner of the directory above it.
fn give(path: &Path, owner: Option<(u32, u32)>) -> Result<(), StepError> {
    let owner = owner.or_else(|| {
        let m = path
            .ancestors()
            .skip(1)
            .find_map(|a| std::fs::metadata(a).ok())?;
        Some((m.uid(), m.gid()))
    });
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| io_err(&format!("cannot give {} to {uid}:{gid}", path.display()), e))
}

fn saved(manifest: &[FirmwareFile], kind: FirmwareKind) -> Option<&FirmwareFile> {
    manifest.iter().find(|f| f.kind == kind)
}

impl<J: Journal<RestoreRequest>, S: Source> RestoreEngine<'_, J, S> {
    /// The firmware state saved with the point (empty for BIOS domains and older points).
    async fn point_firmware(&self) -> Result<Vec<FirmwareFile>, StepError> {
        Ok(self.read_manifest(&self.point_run()).await?.firmware)
    }

    /// The point's copy of a firmware file, once it is known to hold what was saved.
    fn point_file(&self, f: &FirmwareFile) -> Result<PathBuf, StepError> {
        let path = self.member_dir(&self.point_run()).join(&f.file);
        let sum = crate::state_dir::sha256_file(&path)
            .map_err(|e| io_err(&format!("cannot read {}", path.display()), e))?;
        if sum != f.sha256 {
            return Err(StepError::new(
                crate::api::FailureReason::VerificationFailed,
                format!(
                    "{}: the fetched copy does not match the SHA-256 recorded at backup time",
                    f.file
                ),
            ));
        }
        Ok(path)
    }

    /// Says, on the request, whether the firmware state came from the backup.
    fn firmware_condition(&mut self, restored: Vec<String>, missing: Vec<String>) {
        if missing.is_empty() && restored.is_empty() {
            return;
        }
        let (ok, why, message) = if missing.is_empty() {
            (
                true,
                reason::RESTORED,
                format!("restored from the backup: {}", restored.join(", ")),
            )
        } else {
            (
                false,
                reason::NOT_IN_BACKUP,
                format!(
                    "the backup holds no {}: it was taken before snapback saved firmware state; libvirt starts the domain with fresh state",
                    missing.join(" or ")
                ),
            )
        };
        self.lc
            .condition(ConditionType::FirmwareRestored, ok, why, message);
    }

    /// Names, in a condition set before anything is defined, the read-only files the domain
    /// needs and this host lacks: boot files (loader, kernel, initrd, DTB) and the files its
    /// devices only read (an rng source, a read-only share). They are shared, not saved with
    /// the point, and the domain will not start without them.
    pub(crate) fn check_boot_files(&mut self, fw: &Firmware, xml: &str) {
        let devices = crate::libvirt::host_files::host_files(xml).unwrap_or_default();
        let files: Vec<(&str, &str)> = fw
            .read_only_files()
            .into_iter()
            .chain(
                devices
                    .iter()
                    .filter(|f| f.used == crate::libvirt::host_files::Use::Reads)
                    .map(|f| (f.role.as_str(), f.path.as_str())),
            )
            .collect();
        if files.is_empty() {
            return;
        }
        let missing: Vec<String> = files
            .iter()
            .filter(|(_, p)| !Path::new(p).exists())
            .map(|(role, p)| format!("{role} {p}"))
            .collect();
        let (ok, why, message) = if missing.is_empty() {
            (
                true,
                reason::FOUND,
                "every boot file is on this host".to_string(),
            )
        } else {
            (
                false,
                reason::MISSING_ON_HOST,
                format!(
                    "not on this host (they are shared, not saved with backups): {}",
                    missing.join(", ")
                ),
            )
        };
        self.lc
            .condition(ConditionType::BootFilesPresent, ok, why, message);
    }

    /// For a new domain `name` with UUID `uuid`: writes its own variable store and TPM state
    /// from the point, and answers the variable store's path for its XML.
    pub(crate) async fn firmware_for_new(
        &mut self,
        fw: &Firmware,
        name: &str,
        uuid: &str,
    ) -> Result<Option<String>, StepError> {
        let point = self.point_firmware().await?;
        let (mut restored, mut missing) = (Vec::new(), Vec::new());
        let mut nvram = None;
        for (kind, wanted) in [
            (FirmwareKind::Nvram, fw.efi),
            (FirmwareKind::TpmState, fw.tpm_emulator),
        ] {
            if !wanted {
                continue;
            }
            let home = self.source.firmware_home(kind, name, uuid);
            if kind == FirmwareKind::Nvram {
                nvram = Some(home.display().to_string());
            }
            let Some(f) = saved(&point, kind) else {
                missing.push(format!("{kind:?}"));
                continue;
            };
            let written = home.display().to_string();
            if home.exists() && !self.lc.status().firmware_written.contains(&written) {
                return Err(StepError::new(
                    crate::api::FailureReason::InvalidSpec,
                    format!(
                        "{} already exists and is not this restore's; remove it or choose another name",
                        home.display()
                    ),
                ));
            }
            // Recorded first: a rollback then removes even a half-placed file.
            if !self.lc.status().firmware_written.contains(&written) {
                self.lc.status_mut().firmware_written.push(written);
                self.lc.save().await?;
            }
            place(
                &self.point_file(f)?,
                &home,
                self.source.firmware_owner(kind),
            )?;
            crate::process::crash_point("restore:defining:firmware-placed");
            restored.push(format!("{kind:?}"));
        }
        self.firmware_condition(restored, missing);
        Ok(nvram)
    }

    /// In place, with the domain shut down: each saved state file replaces the domain's own,
    /// whose old content is kept beside it as `<file>.snapback-replaced-<request>`.
    pub(crate) async fn firmware_in_place(
        &mut self,
        files: Vec<(FirmwareKind, PathBuf)>,
    ) -> Result<(), StepError> {
        let point = self.point_firmware().await?;
        let (mut restored, mut missing) = (Vec::new(), Vec::new());
        for (kind, home) in files {
            let Some(f) = saved(&point, kind) else {
                missing.push(format!("{kind:?}"));
                continue;
            };
            let kept = PathBuf::from(format!(
                "{}.snapback-replaced-{}",
                home.display(),
                self.lc.name()
            ));
            let entry = format!("{}={}", home.display(), kept.display());
            if !self.lc.status().replaced_firmware.contains(&entry) {
                self.lc.status_mut().replaced_firmware.push(entry);
                self.lc.save().await?;
            }
            if home.exists() && !kept.exists() {
                std::fs::rename(&home, &kept)
                    .map_err(|e| io_err("cannot keep the replaced firmware state", e))?;
                crate::process::crash_point("restore:defining:firmware-replaced");
            }
            // The replacement belongs to whoever owned the file it replaces.
            let owner = std::fs::metadata(&kept)
                .map(|m| (m.uid(), m.gid()))
                .ok()
                .or_else(|| self.source.firmware_owner(kind));
            place(&self.point_file(f)?, &home, owner)?;
            restored.push(format!("{kind:?}"));
        }
        self.firmware_condition(restored, missing);
        Ok(())
    }

    /// Undoes the firmware part of a failed restore: written files removed, replaced ones put
    /// back. Answers what could not be undone.
    pub(crate) fn rollback_firmware(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for written in std::mem::take(&mut self.lc.status_mut().firmware_written) {
            let _ = std::fs::remove_file(format!("{written}.part"));
            match std::fs::remove_file(&written) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => problems.push(format!("remove {written}: {e}")),
            }
        }
        for entry in std::mem::take(&mut self.lc.status_mut().replaced_firmware) {
            let Some((home, kept)) = entry.split_once('=') else {
                continue;
            };
            if Path::new(kept).exists() {
                if let Err(e) = std::fs::rename(kept, home) {
                    problems.push(format!("put back {home}: {e}"));
                }
            }
        }
        problems
    }
}
