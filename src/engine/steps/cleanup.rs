//! Cleanup after a failure: the domain is left as it was found.

use std::time::{Duration, Instant};

use crate::api::BackupRun;
use crate::api::FailureReason;
use crate::engine::BackupEngine;
use crate::error::StepError;
use crate::libvirt::{JobState, VirtErrorKind};
use crate::lifecycle::Journal;
use crate::source::Source;
use crate::state_dir;

impl<J: Journal<BackupRun>, S: Source> BackupEngine<'_, J, S> {
    /// Aborts our job, thaws and resumes the guest, deletes the checkpoint of a run that never
    /// reached the target (its bitmap merges back into the parent, so the chain stays valid),
    /// and empties staging. Earlier backups on the target are never touched.
    pub(crate) async fn cleanup(&mut self) -> Result<(), StepError> {
        let s = self.lc.status().clone();
        // A memory state not taken by now never will be (staging is emptied below).
        self.lc.status_mut().memory_pending = false;
        if s.domain_uuid.is_none() {
            return Ok(());
        }
        let id = self.domain_id();
        let mut problems: Vec<String> = Vec::new();
        let exists = match self.source.domain(&id).await {
            Ok(_) => true,
            Err(e) if e.kind == VirtErrorKind::DomainNotFound => false,
            Err(e) => {
                problems.push(format!("libvirt: {e}"));
                false
            }
        };
        if exists && s.online {
            if let Ok(JobState::Active { .. }) = self.source.job(&id).await {
                if let Err(e) = self.source.abort_job(&id).await {
                    problems.push(format!("abort job: {e}"));
                }
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    if !matches!(self.source.job(&id).await, Ok(JobState::Active { .. })) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            if s.guest_paused {
                let _ = self.source.resume(&id).await;
                self.lc.status_mut().guest_paused = false;
            }
            if s.guest_frozen {
                let _ = self.source.thaw(&id).await;
                self.lc.status_mut().guest_frozen = false;
            }
        }
        if let Err(e) = self.remove_lvm_snapshots().await {
            problems.push(e.message);
        }
        if let Err(e) = self.source.release(&id).await {
            problems.push(format!("remove what the job was given: {e}"));
        }
        // Also when the domain was shut off or destroyed during the run: its checkpoint and
        // bitmap stay behind otherwise (delete_checkpoint handles inactive domains).
        if exists {
            if let (Some(cp), false) = (&s.checkpoint, s.uploaded) {
                match self.source.checkpoints(&id).await {
                    Ok(list) if list.contains(cp) => {
                        if let Err(e) = self.source.delete_checkpoint(&id, cp).await {
                            problems.push(format!("delete checkpoint {cp}: {e}"));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => problems.push(format!("list checkpoints: {e}")),
                }
            }
        }
        // A failed upload leaves a partial set on the target; duplicity would list it as a
        // point of the chain (its volumes cut short) until something removes it.
        if s.upload_attempts > 0 && !s.uploaded {
            if let Err(e) = self.remove_partial_sets().await {
                problems.push(format!("remove the partial set from the target: {e}"));
            }
        }
        if s.staging_dir.is_some() {
            if self.files_mode() {
                let layout = crate::files::attach::Layout::for_staging(&self.staging());
                if let Err(e) = crate::files::attach::detach(&layout).await {
                    problems.push(e.message);
                }
            }
            if let Err(e) = state_dir::empty_dir(&self.staging()) {
                problems.push(format!("empty staging: {e}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StepError::new(FailureReason::Internal, problems.join("; ")))
        }
    }
}
