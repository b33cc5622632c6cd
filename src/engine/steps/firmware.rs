//! The domain's firmware state (UEFI variable store, emulated TPM state) copied whole into
//! staging with the disks' exports: small files, so every point holds its own. Their
//! checksums go into the manifest like the disks'.

use std::path::Path;

use crate::api::{BackupRun, FailureReason, FirmwareFile, FirmwareKind};
use crate::engine::BackupEngine;
use crate::error::StepError;
use crate::libvirt::DomainView;
use crate::lifecycle::Journal;
use crate::source::Source;
use crate::state_dir;

/// The file name of a piece of firmware state in a point.
fn firmware_file_name(run: &str, kind: FirmwareKind) -> String {
    match kind {
        FirmwareKind::Nvram => format!("{run}.nvram.fd"),
        FirmwareKind::TpmState => format!("{run}.tpm2-00.permall"),
    }
}

fn copy_in(from: &Path, to: &Path) -> Result<String, StepError> {
    std::fs::copy(from, to).map_err(|e| {
        let reason = if e.raw_os_error() == Some(libc::ENOSPC) {
            FailureReason::StagingFull
        } else {
            FailureReason::Internal
        };
        StepError::new(reason, format!("cannot copy {}: {e}", from.display()))
    })?;
    state_dir::sha256_file(to).map_err(|e| {
        StepError::new(
            FailureReason::Internal,
            format!("cannot read {}: {e}", to.display()),
        )
    })
}

impl<J: Journal<BackupRun>, S: Source> BackupEngine<'_, J, S> {
    /// Copies the firmware state into staging and records it. Online it is called inside the
    /// freeze (and pause) window, just before the job begins, so it is of the disks' instant.
    /// A state file that does not exist yet (a UEFI domain never started) is noted, not an
    /// error: libvirt creates it from its template at the first start.
    pub(crate) async fn capture_firmware(&mut self, view: &DomainView) -> Result<(), StepError> {
        let dir = self.staging();
        let run = self.lc.name();
        let mut saved = Vec::new();
        for (kind, source) in self.source.firmware_state(view) {
            if !source.is_file() {
                self.lc.note(format!(
                    "no {kind:?} state at {} yet; nothing to save",
                    source.display()
                ));
                continue;
            }
            let file = firmware_file_name(&run, kind);
            let sha256 = copy_in(&source, &dir.join(&file))?;
            crate::process::crash_point("backup:snapshotting:firmware-copied");
            saved.push(FirmwareFile {
                kind,
                file,
                source: source.display().to_string(),
                sha256,
            });
        }
        self.lc.status_mut().firmware = saved;
        // Recorded before the job begins: a run resumed after it must still name the files.
        self.lc.save().await
    }
}
