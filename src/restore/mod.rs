//! Restore: bring a domain back from its backups on the target, as a new domain or in place.

pub mod decide;
#[cfg(test)]
mod fake_tests;
mod fetch;
pub mod files;
pub mod plan;
mod steps;
pub mod verify;

use std::path::{Path, PathBuf};

use decide::{decide, Observed, Step};
use steps::Fetched;

use tokio::sync::watch;

use crate::api::{FailureReason, RestorePhase, RestoreRequest};
use crate::catalog::layout;
use crate::duplicity::TargetConfig;
use crate::error::StepError;
use crate::libvirt::VirtErrorKind;
use crate::lifecycle::{run_steps, Journal, Lifecycle, Reporter, Stepper};
use crate::source::Source;
use crate::state_dir;

fn lock_failed(e: std::io::Error) -> StepError {
    StepError::new(FailureReason::Internal, format!("cannot create lock: {e}"))
}

pub struct RestoreContext {
    /// The target (base URL) with secrets resolved.
    pub target: TargetConfig,
    pub state_dir: PathBuf,
}

pub struct RestoreEngine<'a, J: Journal<RestoreRequest>, S: Source> {
    pub(crate) source: &'a S,
    pub(crate) lc: Lifecycle<'a, RestoreRequest, J>,
    pub(crate) ctx: RestoreContext,
}

impl<'a, J: Journal<RestoreRequest>, S: Source> RestoreEngine<'a, J, S> {
    pub fn new(
        source: &'a S,
        journal: &'a J,
        ctx: RestoreContext,
        req: RestoreRequest,
        report: Reporter,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        Self {
            source,
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
                self.fail(lock_failed(e)).await;
                return self.lc.record;
            }
        };
        // In place, the domain is shut down and swapped: no backup may be running on it, and
        // none starts until the restore is done (see state_dir::domain_lock).
        let _domain_lock = if self.lc.record.spec.in_place {
            match self.source.domain(&self.lc.record.spec.domain).await {
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
                            self.fail(lock_failed(e)).await;
                            return self.lc.record;
                        }
                    }
                }
                Err(_) => None,
            }
        } else {
            None
        };
        run_steps(&mut self).await;
        self.lc.record
    }

    /// Looks at what the current phase's decision needs: fetched members, rebuilt disks, the
    /// defined domain.
    async fn observe(&self) -> Result<Observed, StepError> {
        let s = self.lc.status();
        let mut o = Observed::default();
        match s.phase {
            RestorePhase::Fetching if s.files.is_some() => {
                o.files_present = s
                    .files
                    .iter()
                    .flat_map(|f| &f.paths)
                    .map(|p| std::fs::symlink_metadata(&p.path).is_ok())
                    .collect();
            }
            RestorePhase::Fetching => {
                for m in &s.chain_runs {
                    let fetched = self.member_fetched(&m.run).await? == Fetched::Verified;
                    o.members_fetched.push(fetched);
                }
            }
            RestorePhase::Rebuilding => {
                o.disks_present = s
                    .disks
                    .iter()
                    .map(|d| Path::new(&d.path).exists())
                    .collect();
            }
            RestorePhase::Defining | RestorePhase::Starting => {
                if let Some(uuid) = &s.defined_uuid {
                    match self.source.domain(uuid).await {
                        Ok(v) => o.defined = Some(v.state),
                        Err(e) if e.kind == VirtErrorKind::DomainNotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            _ => {}
        }
        Ok(o)
    }
}

impl<J: Journal<RestoreRequest>, S: Source> Stepper for RestoreEngine<'_, J, S> {
    type Step = Step;
    const ON_SIGNAL: &'static str = "rolled back";

    fn finished(&self) -> bool {
        self.lc.status().phase.is_terminal()
    }

    fn cancelled(&self) -> bool {
        self.lc.cancelled()
    }

    async fn next(&mut self) -> Result<Option<Step>, StepError> {
        let observed = self.observe().await?;
        Ok(
            match decide(&self.lc.record.spec, self.lc.status(), &observed) {
                Step::Done => None,
                step => Some(step),
            },
        )
    }

    async fn take(&mut self, step: Step) -> Result<(), StepError> {
        match step {
            Step::Resolve => self.resolve().await,
            Step::Fetch(todo) => self.fetch(todo).await,
            Step::RestoreFiles(todo) => self.restore_files(todo).await,
            Step::Rebuild(todo) => self.rebuild(todo).await,
            Step::Place(todo) => self.place(todo).await,
            Step::DefineNew => self.define_new().await,
            Step::Swap => self.swap().await,
            Step::Defined => self.defined().await,
            Step::Start { running } => self.start(running).await,
            Step::Recover { rename_old } => self.recover(rename_old).await,
            Step::Done => Ok(()),
        }
    }

    /// Rolls back what the restore did and records the failure.
    async fn fail(&mut self, e: StepError) {
        if let Err(c) = self.rollback().await {
            self.lc.note(format!("rollback incomplete: {c}"));
        }
        self.lc.fail(e).await;
    }
}
