//! Finalizing: drop checkpoints the chain no longer needs, empty staging, postSnapshot hooks.

use jiff::Timestamp;

use crate::api::{BackupPhase, FailureReason};
use crate::engine::{human_duration, staging, BackupEngine, Journal, StepError};

impl<J: Journal> BackupEngine<'_, J> {
    pub(crate) async fn finalize(&mut self) -> Result<(), StepError> {
        if self.status().online && self.status().checkpoint.is_some() {
            self.prune_checkpoints().await?;
        }
        staging::empty_dir(&self.staging()).map_err(|e| {
            StepError::new(
                FailureReason::Internal,
                format!("cannot empty staging: {e}"),
            )
        })?;
        let hooks = self.run.spec.hooks.post_snapshot.clone();
        self.run_hooks("postSnapshot", &hooks).await?;
        let now = Timestamp::now();
        let s = self.status_mut();
        s.completion_time = Some(now);
        s.duration = s.start_time.map(|t| human_duration(now.duration_since(t)));
        s.progress = None;
        self.enter(BackupPhase::Succeeded).await
    }

    /// Only the newest checkpoint is needed for the next incremental. Older ones that runs of
    /// this domain and target created are deleted (libvirt merges their bitmaps). Checkpoints
    /// this run does not know of (another target's chain, another tool) are left alone.
    async fn prune_checkpoints(&mut self) -> Result<(), StepError> {
        let id = self.domain_id();
        let s = self.status().clone();
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
        for cp in self.host.checkpoints(&id).await? {
            if Some(&cp) != ours.as_ref() && known.contains(&cp) {
                self.host.delete_checkpoint(&id, &cp).await?;
            }
        }
        Ok(())
    }
}
