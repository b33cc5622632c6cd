//! Restore: bring a domain back from its backups on the target, as a new domain or in place.

mod fetch;
pub mod points;
pub mod select;
mod steps;
pub mod verify;
pub mod xml;

use std::future::Future;
use std::path::PathBuf;

use jiff::Timestamp;
use tokio::sync::watch;

use crate::api::{
    Condition, Failure, FailureReason, RestorePhase, RestoreRequest, RestoreRequestStatus,
};
use crate::duplicity::TargetConfig;
use crate::engine::{human_duration, staging, Event, Reporter, StepError};
use crate::libvirt::LibvirtHost;

/// Where restore status is recorded.
pub trait RestoreJournal: Send + Sync {
    fn save_restore(&self, req: &RestoreRequest)
        -> impl Future<Output = Result<(), String>> + Send;
}

pub struct RestoreContext {
    /// The target (base URL) with secrets resolved.
    pub target: TargetConfig,
    pub state_dir: PathBuf,
}

pub struct RestoreEngine<'a, J: RestoreJournal> {
    pub(crate) host: &'a LibvirtHost,
    pub(crate) journal: &'a J,
    pub(crate) ctx: RestoreContext,
    pub(crate) report: Reporter,
    pub(crate) req: RestoreRequest,
    pub(crate) cancel: watch::Receiver<bool>,
}

impl<'a, J: RestoreJournal> RestoreEngine<'a, J> {
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
            journal,
            ctx,
            report,
            req,
            cancel,
        }
    }

    pub(crate) fn status(&self) -> &RestoreRequestStatus {
        self.req.status.as_ref().expect("status is set in run()")
    }

    pub(crate) fn status_mut(&mut self) -> &mut RestoreRequestStatus {
        self.req.status.get_or_insert_with(Default::default)
    }

    pub(crate) fn name(&self) -> String {
        self.req.metadata.name.clone().unwrap_or_default()
    }

    /// The duplicity target of the domain being restored (`<target>/<domain>`).
    pub(crate) fn domain_target(&self) -> TargetConfig {
        let mut t = staging::domain_target(&self.ctx.target, &self.req.spec.domain);
        t.archive_dir = staging::archive_dir(&self.ctx.state_dir)
            .display()
            .to_string();
        t
    }

    pub(crate) async fn save(&mut self) -> Result<(), StepError> {
        self.journal.save_restore(&self.req).await.map_err(|e| {
            StepError::new(
                FailureReason::Internal,
                format!("cannot record status: {e}"),
            )
        })
    }

    pub(crate) async fn enter(&mut self, phase: RestorePhase) -> Result<(), StepError> {
        self.status_mut().phase = phase;
        self.status_mut().progress = None;
        (self.report)(Event::Note(format!("{phase:?}")));
        crate::process::crash_point(&format!("restore:before:{phase:?}"));
        self.save().await?;
        crate::process::crash_point(&format!("restore:{phase:?}"));
        Ok(())
    }

    pub(crate) fn condition(&mut self, type_: &str, status: bool, reason: &str, message: String) {
        let c = Condition::now(type_, status, reason, message, self.req.metadata.generation);
        crate::api::set_condition(&mut self.status_mut().conditions, c);
    }

    /// Runs the restore to Succeeded or Failed. Each phase is idempotent, so a restore whose
    /// process died is continued by running it again.
    pub async fn run(mut self) -> RestoreRequest {
        if self.req.status.is_none() {
            self.req.status = Some(RestoreRequestStatus::default());
        }
        if self.status().start_time.is_none() {
            self.status_mut().start_time = Some(Timestamp::now());
        }
        // One process per request: a second one (a resume while the first still runs) leaves it alone.
        let _lock = match staging::lock(&self.ctx.state_dir, "restore", &self.name()) {
            Ok(Some(l)) => l,
            Ok(None) => {
                (self.report)(Event::Note(
                    "another snapback process is running this restore".into(),
                ));
                return self.req;
            }
            Err(e) => {
                self.fail(StepError::new(
                    FailureReason::Internal,
                    format!("cannot create lock: {e}"),
                ))
                .await;
                return self.req;
            }
        };
        // In place, the domain is shut down and swapped: no backup may be running on it, and
        // none starts until the restore is done (see staging::domain_lock).
        let _domain_lock = if self.req.spec.in_place {
            match self.host.domain(&self.req.spec.domain).await {
                Ok(view) => {
                    match staging::domain_lock(&self.ctx.state_dir, &view.facts.uuid, true) {
                        Ok(Some(l)) => Some(l),
                        Ok(None) if self.status().phase == RestorePhase::Pending => {
                            // Nothing was touched: refuse without rolling anything back.
                            let message = format!(
                                "a backup of domain '{}' is running; restore it in place when it is done",
                                self.req.spec.domain
                            );
                            let s = self.status_mut();
                            s.failure = Some(Failure {
                                reason: FailureReason::Busy,
                                message,
                            });
                            s.completion_time = Some(Timestamp::now());
                            let _ = self.enter(RestorePhase::Failed).await;
                            return self.req;
                        }
                        // A restore already under way is finished.
                        Ok(None) => None,
                        Err(e) => {
                            self.fail(StepError::new(
                                FailureReason::Internal,
                                format!("cannot create lock: {e}"),
                            ))
                            .await;
                            return self.req;
                        }
                    }
                }
                Err(_) => None,
            }
        } else {
            None
        };
        loop {
            let phase = self.status().phase;
            if phase.is_terminal() {
                break;
            }
            if *self.cancel.borrow() {
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
        self.req
    }

    async fn fail(&mut self, e: StepError) {
        tracing::warn!(reason = %e.reason, message = %e.message, "restore failed; rolling back");
        if let Err(c) = self.rollback().await {
            (self.report)(Event::Note(format!("rollback incomplete: {c}")));
        }
        let now = Timestamp::now();
        let s = self.status_mut();
        s.failure = Some(Failure {
            reason: e.reason,
            message: e.message,
        });
        s.completion_time = Some(now);
        s.duration = s.start_time.map(|t| human_duration(now.duration_since(t)));
        let _ = self.enter(RestorePhase::Failed).await;
    }
}
