//! Finalizing: drop checkpoints the chain no longer needs, empty staging, postSnapshot hooks.

use crate::api::BackupRun;
use crate::api::{BackupPhase, FailureReason};
use crate::engine::BackupEngine;
use crate::error::StepError;
use crate::hooks::HookStage;
use crate::lifecycle::Journal;
use crate::source::Source;
use crate::state_dir;

impl<J: Journal<BackupRun>, S: Source> BackupEngine<'_, J, S> {
    pub(crate) async fn finalize(&mut self) -> Result<(), StepError> {
        // Each is removed after its export; one is left only by a run that died in between.
        self.remove_lvm_snapshots().await?;
        if self.lc.status().online && self.lc.status().checkpoint.is_some() {
            self.prune_checkpoints().await?;
        }
        // What the source made for the job (KubeVirt: the backup, its volume, the export).
        // The point is safe on the target by now: a release that keeps failing is said, and
        // does not fail the run; what is left carries the run's label for whoever removes it.
        let mut released = Err(String::new());
        for _ in 0..3 {
            released = self
                .source
                .release(&self.domain_id())
                .await
                .map_err(|e| e.message);
            if released.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
        if let Err(e) = released {
            self.lc.report(crate::lifecycle::Event::Note(format!(
                "warning: could not remove what the backup job was given: {e}"
            )));
        }
        state_dir::empty_dir(&self.staging()).map_err(|e| {
            StepError::new(
                FailureReason::Internal,
                format!("cannot empty staging: {e}"),
            )
        })?;
        let hooks = self.lc.record.spec.hooks.post_snapshot.clone();
        self.run_hooks(HookStage::PostSnapshot, &hooks).await?;
        self.lc.finish(BackupPhase::Succeeded, None).await
    }

    /// Only the newest checkpoint is needed for the next incremental. Older ones that runs of
    /// this domain and target created are deleted (libvirt merges their bitmaps). Checkpoints
    /// this run does not know of (another target's chain, another tool) are left alone.
    async fn prune_checkpoints(&mut self) -> Result<(), StepError> {
        let id = self.domain_id();
        let s = self.lc.status().clone();
        let ours = s.checkpoint.clone();
        let known: Vec<String> = self
            .ctx
            .history
            .iter()
            .filter_map(|r| r.status.as_ref())
            .filter(|h| h.domain_uuid == s.domain_uuid && h.target_url == s.target_url)
            .filter_map(|h| h.checkpoint.clone())
            .chain(s.parent_checkpoint.clone())
            .collect();
        for cp in self.source.checkpoints(&id).await? {
            if Some(&cp) != ours.as_ref() && known.contains(&cp) {
                self.source.delete_checkpoint(&id, &cp).await?;
            }
        }
        Ok(())
    }
}
