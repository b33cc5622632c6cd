//! The domain's RAM and device state as one more file of the point (`memory: Include`),
//! taken at the disks' instant.
//!
//! The vCPUs are paused before the push-mode job begins and stay paused until the job has
//! ended and the state is saved: libvirt 9.0 runs the save (a memory-only external snapshot,
//! see `libvirt::memory_state`) only after the job, and saving before the job begins leaves
//! qemu's disks inactive under it (qemu crashed on resume when tried). So the guest's downtime
//! is the job's duration plus the save's; it is measured and recorded as `pausedSeconds`.

use std::time::Duration;

use crate::api::{BackupRun, FailureReason, MemoryFile};
use crate::engine::BackupEngine;
use crate::error::StepError;
use crate::libvirt::JobState;
use crate::lifecycle::{Event, Journal};
use crate::source::Source;
use crate::state_dir;

/// The file name of a point's memory state.
pub(crate) fn memory_file_name(run: &str) -> String {
    format!("{run}.memory.state")
}

/// How often the job is looked at while the guest waits for it, paused.
const PAUSED_POLL: Duration = Duration::from_millis(50);

/// How long a resumed run waits for a job that is still running before it resumes the guest
/// anyway (a save of the memory state takes seconds; a job may take long).
const RECOVER_WAIT: Duration = Duration::from_secs(30 * 60);

impl<J: Journal<BackupRun>, S: Source> BackupEngine<'_, J, S> {
    /// Waits for the job with the guest paused, then saves the memory state into staging and
    /// records it. The caller resumes the guest whatever this returns.
    pub(crate) async fn capture_memory(&mut self) -> Result<(), StepError> {
        let id = self.domain_id();
        self.lc.report(Event::Note(
            "memory: Include: the guest stays paused until the job has ended and its memory is saved"
                .into(),
        ));
        loop {
            match self.source.job(&id).await? {
                JobState::Active { done, total } => self.lc.report(Event::Progress {
                    stage: "Exporting (guest paused)",
                    done,
                    total,
                }),
                JobState::Completed => break,
                JobState::Failed(m) => {
                    return Err(StepError::new(
                        crate::engine::decide::job_failure_reason(&m),
                        m,
                    ))
                }
                JobState::None => {
                    return Err(StepError::new(
                        FailureReason::BackupJobFailed,
                        "the backup job vanished",
                    ))
                }
            }
            // Polled often: every poll interval is the guest's downtime.
            let mut cancel = self.lc.cancel.clone();
            tokio::select! {
                _ = tokio::time::sleep(self.ctx.poll.min(PAUSED_POLL)) => {}
                _ = cancel.changed() => return Err(StepError::new(FailureReason::Interrupted, "interrupted while the guest was paused for its memory state")),
            }
        }
        crate::process::crash_point("backup:snapshotting:memory-job-done");
        let file = memory_file_name(&self.lc.name());
        let path = self.staging().join(&file);
        self.source.save_memory(&id, &path).await.map_err(|e| {
            let reason = if e.message.to_lowercase().contains("no space left") {
                FailureReason::StagingFull
            } else {
                FailureReason::LibvirtError
            };
            StepError::new(
                reason,
                format!("cannot save the guest's memory state: {}", e.message),
            )
        })?;
        crate::process::crash_point("backup:snapshotting:memory-saved");
        let p2 = path.clone();
        let sha256 = tokio::task::spawn_blocking(move || state_dir::sha256_file(&p2))
            .await
            .map_err(|e| StepError::new(FailureReason::Internal, e.to_string()))?
            .map_err(|e| {
                StepError::new(
                    FailureReason::Internal,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let s = self.lc.status_mut();
        s.memory_state = Some(MemoryFile {
            file,
            sha256,
            bytes,
        });
        s.memory_pending = false;
        self.lc.save().await
    }

    /// A run that died while capturing the memory state may have left libvirt saving it (the
    /// save goes on without its caller): resuming the guest in the middle would leave it
    /// paused when the save ends. Wait for the domain's job to end first.
    pub(crate) async fn wait_for_memory_save(&mut self) {
        if !self.lc.status().memory_pending {
            return;
        }
        let id = self.domain_id();
        let deadline = tokio::time::Instant::now() + RECOVER_WAIT;
        while tokio::time::Instant::now() < deadline {
            match self.source.job(&id).await {
                Ok(JobState::Active { .. }) => tokio::time::sleep(self.ctx.poll).await,
                _ => return,
            }
        }
        self.lc.note(
            "a job of the domain is still running after 30 minutes; resuming the guest anyway",
        );
    }
}
