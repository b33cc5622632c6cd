//! The effectful steps of a backup run, one file each. Every step is idempotent: it can be
//! run again after the process died in the middle of it.

mod cbt;
mod cleanup;
mod export;
mod files;
mod finalize;
mod firmware;
mod lvm;
mod memory;
mod prepare;
mod reconcile;
mod snapshot;
mod upload;

use std::path::PathBuf;

use super::BackupEngine;
use crate::api::{BackupRun, Hook};
use crate::error::StepError;
use crate::hooks::HookStage;
use crate::lifecycle::Journal;
use crate::source::Source;

pub(crate) use crate::catalog::manifest::manifest_name;

impl<J: Journal<BackupRun>, S: Source> BackupEngine<'_, J, S> {
    pub(crate) fn staging(&self) -> PathBuf {
        PathBuf::from(self.lc.status().staging_dir.clone().unwrap_or_default())
    }

    /// Runs hooks of a stage with this run's domain in their environment.
    pub(crate) async fn run_hooks(
        &mut self,
        stage: HookStage,
        hooks: &[Hook],
    ) -> Result<(), StepError> {
        let domain = self.lc.record.spec.domain.clone();
        self.lc
            .run_hooks(self.source, stage, hooks, &domain, vec![])
            .await
    }
}
