//! Restore: bring a domain back from its backups on the target, as a new domain or in place.

mod fetch;
mod steps;
pub mod verify;
pub mod xml;

use std::path::PathBuf;

use tokio::sync::watch;

use crate::api::{FailureReason, RestorePhase, RestoreRequest};
use crate::catalog::layout;
use crate::duplicity::TargetConfig;
use crate::error::StepError;
use crate::libvirt::LibvirtHost;
use crate::lifecycle::{Journal, Lifecycle, Reporter};
use crate::state_dir;

pub struct RestoreContext {
    /// The target (base URL) with secrets resolved.
    pub target: TargetConfig,
    pub state_dir: PathBuf,
}

pub struct RestoreEngine<'a, J: Journal<RestoreRequest>> {
    pub(crate) host: &'a LibvirtHost,
    pub(crate) lc: Lifecycle<'a, RestoreRequest, J>,
    pub(crate) ctx: RestoreContext,
}

impl<'a, J: Journal<RestoreRequest>> RestoreEngine<'a, J> {
    pub fn new(
        host: &'a LibvirtHost,
        journal: &'a J,
        ctx: RestoreContext,
        req: RestoreRequest,
        report: Reporter,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        Self {
            host,
            lc: Lifecycle::new(req, journal, report, cancel),
            ctx,
        }
    }

    /// The duplicity target of the domain being restored (`<target>/<domain>`).
    pub(crate) fn domain_target(&self) -> TargetConfig {
        let mut t = layout::domain_target(&self.ctx.target, &self.lc.record.spec.domain);
        t.archive_dir = state_dir::archive_dir(&self.ctx.state_dir)
            .display()
            .to_string();
        t
    }

    /// Runs the restore to Succeeded or Failed. Each phase is idempotent, so a restore whose
    /// process died is continued by running it again.
    pub async fn run(mut self) -> RestoreRequest {
        // One process per request: a second one (a resume while the first still runs) leaves it alone.
        let _lock = match state_dir::lock(&self.ctx.state_dir, "restore", &self.lc.name()) {
            Ok(Some(l)) => l,
            Ok(None) => {
                self.lc
                    .note("another snapback process is running this restore");
                return self.lc.record;
            }
            Err(e) => {
                self.fail(StepError::new(
                    FailureReason::Internal,
                    format!("cannot create lock: {e}"),
                ))
                .await;
                return self.lc.record;
            }
        };
        // In place, the domain is shut down and swapped: no backup may be running on it, and
        // none starts until the restore is done (see state_dir::domain_lock).
        let _domain_lock = if self.lc.record.spec.in_place {
            match self.host.domain(&self.lc.record.spec.domain).await {
                Ok(view) => {
                    match state_dir::domain_lock(&self.ctx.state_dir, &view.facts.uuid, true) {
                        Ok(Some(l)) => Some(l),
                        Ok(None) if self.lc.status().phase == RestorePhase::Pending => {
                            // Nothing was touched: refuse without rolling anything back.
                            let message = format!(
                                "a backup of domain '{}' is running; restore it in place when it is done",
                                self.lc.record.spec.domain
                            );
                            self.lc
                                .fail(StepError::new(FailureReason::Busy, message))
                                .await;
                            return self.lc.record;
                        }
                        // A restore already under way is finished.
                        Ok(None) => None,
                        Err(e) => {
                            self.fail(StepError::new(
                                FailureReason::Internal,
                                format!("cannot create lock: {e}"),
                            ))
                            .await;
                            return self.lc.record;
                        }
                    }
                }
                Err(_) => None,
            }
        } else {
            None
        };
        loop {
            let phase = self.lc.status().phase;
            if phase.is_terminal() {
                break;
            }
            if *self.lc.cancel.borrow() {
                self.fail(StepError::new(
                    FailureReason::Interrupted,
                    "interrupted by a signal; rolled back",
                ))
                .await;
                break;
            }
            let result = match phase {
                RestorePhase::Pending | RestorePhase::Resolving => self.resolve().await,
                RestorePhase::Fetching => self.fetch().await,
                RestorePhase::Rebuilding => self.rebuild().await,
                RestorePhase::Defining => self.define().await,
                RestorePhase::Starting => self.start().await,
                RestorePhase::Recovering => self.recover().await,
                RestorePhase::Succeeded | RestorePhase::Failed => break,
            };
            if let Err(e) = result {
                self.fail(e).await;
                break;
            }
        }
        self.lc.record
    }

    /// Rolls back what the restore did and records the failure.
    async fn fail(&mut self, e: StepError) {
        if let Err(c) = self.rollback().await {
            self.lc.note(format!("rollback incomplete: {c}"));
        }
        self.lc.fail(e).await;
    }
}
