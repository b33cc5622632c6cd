//! Uploading: one duplicity run over the staging dir, aligned with the image chain.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::BackupRun;
use crate::api::{BackupPhase, BackupType, FailureReason, Progress};
use crate::duplicity::{self, Action};
use crate::engine::BackupEngine;
use crate::error::StepError;
use crate::lifecycle::{Event, Journal};
use crate::source::Source;

impl<J: Journal<BackupRun>, S: Source> BackupEngine<'_, J, S> {
    pub(crate) async fn upload(&mut self) -> Result<(), StepError> {
        // A resumed upload simply runs duplicity again: duplicity finds the partial set in its
        // archive dir and continues it. (Asking the target first is not reliable: duplicity
        // lists the files of a partial set from its local cache as if they were uploaded.)
        if self.lc.status().upload_attempts > 0 {
            self.lc
                .report(Event::Note("resuming the interrupted upload".into()));
        } else {
            self.remove_partial_sets().await?;
        }
        self.lc.status_mut().upload_attempts += 1;
        self.lc.save().await?;
        if self.files_mode() {
            self.upload_files().await?;
        } else {
            self.run_duplicity().await?;
        }
        self.lc.status_mut().uploaded = true;
        self.lc.enter(BackupPhase::Finalizing).await
    }

    /// A partial set on the target is what a failed run left (a run that was only killed is
    /// resumed before a new run of its domain and target starts, and holds its lock till
    /// then). Left there, duplicity would "restart" it with this run's files, so it goes.
    pub(crate) async fn remove_partial_sets(&mut self) -> Result<(), StepError> {
        let target = self.domain_target();
        let names = duplicity::backend::list(&target).await?;
        if duplicity::names::newest_time(&names) == duplicity::names::newest_complete_time(&names) {
            return Ok(());
        }
        self.lc.report(Event::Note(
            "removing the partial set a failed run left on the target".into(),
        ));
        duplicity::run(&target, &Action::Cleanup, |_| {})
            .await
            .map(|_| ())
            .map_err(StepError::from)
    }

    async fn run_duplicity(&mut self) -> Result<(), StepError> {
        let source = self.staging().display().to_string();
        // duplicity's chain mirrors the image chain: image full = duplicity full.
        let action = match self.lc.status().type_ {
            Some(BackupType::Incremental) => Action::Incremental {
                source,
                current_time: None,
            },
            _ => Action::Full {
                source,
                current_time: None,
            },
        };
        // Everything in staging goes up: the exports plus the small XML and manifest files.
        let total: u64 = std::fs::read_dir(self.staging())
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(self.lc.status().size_bytes);
        self.duplicity_with_progress(action, total).await
    }

    /// Runs a backup action with progress in status, cancellable; records duplicity's time.
    pub(crate) async fn duplicity_with_progress(
        &mut self,
        action: Action,
        total: u64,
    ) -> Result<(), StepError> {
        let target = self.domain_target();
        // The set's time comes after everything already on the target, whatever the clock
        // says. A resumed partial set keeps its own time: duplicity ignores this then.
        let names = duplicity::backend::list(&target).await?;
        let action = action.at(duplicity::names::next_set_time(
            jiff::Timestamp::now(),
            &names,
        ));
        let latest: Arc<Mutex<Option<u64>>> = Arc::default();
        let seen = latest.clone();
        let result = {
            let report = &self.lc.report;
            let fut = duplicity::run(&target, &action, move |t| {
                // A volume is on the target and more are to come.
                if t.bytes < total {
                    crate::process::crash_point("backup:uploading:partial");
                }
                *seen.lock().unwrap() = Some(t.bytes);
                report(Event::Progress {
                    stage: "Uploading",
                    done: t.bytes,
                    total,
                });
            });
            tokio::pin!(fut);
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            let mut cancel = self.lc.cancel.clone();
            loop {
                tokio::select! {
                    r = &mut fut => break r,
                    _ = tick.tick() => {
                        let done = *latest.lock().unwrap();
                        if let Some(done) = done {
                            let s = self.lc.record.status.get_or_insert_with(Default::default);
                            s.progress = Some(Progress { bytes_done: done, bytes_total: total });
                            // Status saves are best effort here; the phase record is what resumes.
                            let _ = self.lc.save().await;
                        }
                    }
                    _ = cancel.changed() => {
                        return Err(StepError::new(FailureReason::Interrupted, "interrupted during upload"));
                    }
                }
            }
        };
        result.map_err(StepError::from)?;
        // The set's time as the target names it (the one restore asks duplicity for): we hold
        // the lock of this domain and target, so the newest complete set is the one just
        // written, be it new or a resumed partial set with its original time. (duplicity's
        // StartTime statistic is its wall clock, not the set's time.)
        let after = duplicity::backend::list(&target).await?;
        self.lc.status_mut().target_time = duplicity::names::newest_complete_time(&after);
        Ok(())
    }
}
