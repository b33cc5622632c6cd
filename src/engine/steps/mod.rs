//! The effectful steps of a backup run, one file each. Every step is idempotent: it can be
//! run again after the process died in the middle of it.

mod cleanup;
mod export;
mod files;
mod finalize;
mod prepare;
mod reconcile;
mod snapshot;
mod upload;

use std::path::PathBuf;

use super::{BackupEngine, Journal, StepError};
use crate::api::{FailureReason, Hook, HookOnError};
use crate::engine::hooks::{run_hook, HookEnv};

pub(crate) use crate::engine::manifest::manifest_name;

impl<J: Journal> BackupEngine<'_, J> {
    pub(crate) fn staging(&self) -> PathBuf {
        PathBuf::from(self.status().staging_dir.clone().unwrap_or_default())
    }

    /// Runs a list of hooks in order, recording each result. A failing hook with
    /// `onError: Fail` stops the list and fails the step.
    pub(crate) async fn run_hooks(&mut self, stage: &str, hooks: &[Hook]) -> Result<(), StepError> {
        for hook in hooks {
            let domain = self.run.spec.domain.clone();
            let run = self.name();
            let env = HookEnv {
                stage,
                domain: &domain,
                run: &run,
                extra: vec![],
            };
            let mut cancel = self.cancel.clone();
            // A signal stops a hook too: dropping its future kills the child process.
            let result = tokio::select! {
                r = run_hook(self.host, hook, &env) => r,
                _ = cancel.changed() => {
                    return Err(StepError::new(FailureReason::Interrupted, format!("interrupted during {stage} hook")));
                }
            };
            let ok = result.succeeded;
            let detail = format!(
                "hook '{}' ({stage}) failed: exit {:?}: {}",
                result.hook,
                result.exit_code,
                result.output.trim()
            );
            self.status_mut().hooks.push(result);
            self.save().await?;
            if !ok {
                match hook.on_error {
                    HookOnError::Fail => {
                        return Err(StepError::new(FailureReason::HookFailed, detail))
                    }
                    HookOnError::Continue => tracing::warn!("{detail} (onError: Continue)"),
                }
            }
        }
        Ok(())
    }
}
