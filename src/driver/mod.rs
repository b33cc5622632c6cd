//! The driver: runs one backup or one restore for any front-end (the CLI, the single-host
//! daemon, the node agent). It resolves the target, runs the engine, prunes after a success,
//! marks the runs of pruned chains expired and records metrics. What differs between the
//! front-ends is only their `Site`: where records are kept and where targets, policies and
//! other runs are read.

pub mod admission;
pub mod held;
pub mod local;
pub mod local_due;
pub mod local_revert;
mod outcome;
pub mod staging_need;
pub mod target;
pub mod tick;
pub mod verify;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{BackupPhase, BackupPolicySpec, BackupRun, RestoreRequest};
use crate::duplicity::TargetConfig;
use crate::engine::{BackupEngine, RunContext};
use crate::error::StepError;
use crate::lifecycle::{Journal, Lifecycle, Reporter};
use crate::metrics::Metrics;
use crate::restore::{RestoreContext, RestoreEngine};
use crate::retention::prune::{expired, prune_after_run};
use crate::source::Source;

pub use outcome::{BackupOutcome, Pruned};

/// What a front-end gives the driver. Namespaces are `None` on a single host.
pub trait Site: Journal<BackupRun> + Journal<RestoreRequest> {
    /// The target a run or restore names, with its secrets resolved.
    fn target(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> impl Future<Output = Result<TargetConfig, StepError>> + Send;

    /// The runs kept in a namespace: a backup's chain continues from one of them.
    fn runs(&self, namespace: Option<&str>) -> impl Future<Output = Vec<BackupRun>> + Send;

    /// A policy's spec, for its retention after a run; `None` when it is gone.
    fn policy(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> impl Future<Output = Option<BackupPolicySpec>> + Send;

    /// Writes a finished run's status: its chain deleted by retention (an `Expired`
    /// condition), or its point read back by a verify (`Verified`).
    fn save_finished(&self, run: &BackupRun) -> impl Future<Output = Result<(), String>> + Send;
}

pub struct Driver<'a, S: Source> {
    /// Where the VMs are: the local libvirt.
    pub host: &'a S,
    pub state_dir: &'a Path,
    /// How often a running libvirt job is polled.
    pub poll: Duration,
    pub metrics: Option<&'a Metrics>,
}

impl<S: Source> Driver<'_, S> {
    /// Runs a backup to a terminal phase (a resumed one from where it stopped), then applies
    /// its policy's retention when it succeeded.
    pub async fn backup<T: Site>(
        &self,
        site: &T,
        run: BackupRun,
        report: Reporter,
        cancel: watch::Receiver<bool>,
    ) -> BackupOutcome {
        let ns = run.metadata.namespace.clone();
        let _active = self
            .metrics
            // Fresh: no phase entered yet (a run that waited for admission has a status
            // with its Admitted condition, and no phase).
            .map(|m| {
                outcome::Active::new(
                    m,
                    run.status.as_ref().is_none_or(|s| s.phases.is_empty()),
                    true,
                )
            });
        let target = match site.target(ns.as_deref(), &run.spec.target_ref).await {
            Ok(t) => t,
            Err(e) => {
                // Nothing was touched: the run fails with the reason and no cleanup.
                let mut lc = Lifecycle::new(run, site, report, cancel);
                lc.fail(e).await;
                return self.backup_ended(lc.record, None);
            }
        };
        let ctx = RunContext {
            target: target.clone(),
            state_dir: self.state_dir.to_path_buf(),
            history: site.runs(ns.as_deref()).await,
            poll: self.poll,
        };
        let done = BackupEngine::new(self.host, site, ctx, run, report, cancel)
            .run()
            .await;
        let (done, pruned) = self.prune_after(site, done, &target).await;
        self.backup_ended(done, pruned)
    }

    /// What holds back a resumed run now (see `held.rs`), so that a front-end that polls
    /// leaves it for its next look instead of failing it `Busy`.
    pub async fn held_elsewhere<T: Site>(&self, site: &T, run: &BackupRun) -> Option<String> {
        let ns = run.metadata.namespace.as_deref();
        let target = site.target(ns, &run.spec.target_ref).await.ok()?;
        held::held_elsewhere(self.state_dir, target.url.as_str(), run)
    }

    fn backup_ended(&self, run: BackupRun, pruned: Option<Pruned>) -> BackupOutcome {
        if let Some(m) = self.metrics {
            outcome::record_backup(m, &run);
        }
        BackupOutcome { run, pruned }
    }

    /// The policy's retention after a successful run: whole chains are deleted from the
    /// target, the outcome is the run's `Pruned` condition, and the runs of deleted chains are
    /// marked `Expired`.
    async fn prune_after<T: Site>(
        &self,
        site: &T,
        mut done: BackupRun,
        target: &TargetConfig,
    ) -> (BackupRun, Option<Pruned>) {
        let succeeded = done
            .status
            .as_ref()
            .is_some_and(|s| s.phase == BackupPhase::Succeeded);
        let (true, Some(pname)) = (succeeded, done.spec.policy_ref.clone()) else {
            return (done, None);
        };
        let ns = done.metadata.namespace.clone();
        let Some(policy) = site.policy(ns.as_deref(), &pname).await else {
            return (done, None);
        };
        let Some(after) = prune_after_run(target, &done.spec.domain, &policy, self.state_dir).await
        else {
            return (done, None);
        };
        let pruned = if after.condition.status == "True" {
            Pruned::Chains(after.deleted.chains.len())
        } else {
            Pruned::Failed
        };
        if let Some(s) = done.status.as_mut() {
            crate::api::set_condition(&mut s.conditions, after.condition);
        }
        if let Err(e) = Journal::<BackupRun>::save(site, &done).await {
            tracing::warn!(run = ?done.metadata.name, "cannot record the prune: {e}");
        }
        if !after.deleted.is_empty() {
            for r in site
                .runs(ns.as_deref())
                .await
                .iter()
                .filter_map(|r| expired(r, &after.deleted))
            {
                if let Err(e) = site.save_finished(&r).await {
                    tracing::warn!(run = ?r.metadata.name, "cannot mark expired: {e}");
                }
            }
        }
        (done, Some(pruned))
    }

    /// A scheduled verify of one domain of a policy (see `verify_due`).
    pub async fn verify<T: Site>(
        &self,
        site: &T,
        policy: (Option<&str>, &str, &BackupPolicySpec),
        due: &verify::VerifyDue,
        runs: &[&BackupRun],
    ) -> usize {
        verify_due(site, self.state_dir, self.metrics, policy, due, runs).await
    }

    /// Runs a restore to Succeeded or Failed (a resumed one from where it stopped).
    pub async fn restore<T: Site>(
        &self,
        site: &T,
        req: RestoreRequest,
        report: Reporter,
        cancel: watch::Receiver<bool>,
    ) -> RestoreRequest {
        let ns = req.metadata.namespace.clone();
        let _active = self
            .metrics
            .map(|m| outcome::Active::new(m, req.status.is_none(), false));
        if req.spec.source == crate::api::RestoreSource::Local {
            let done = self.revert_local(site, req).await;
            if let Some(m) = self.metrics {
                outcome::record_restore(m, &done);
            }
            return done;
        }
        let done = match site.target(ns.as_deref(), &req.spec.target_ref).await {
            Err(e) => {
                let mut lc = Lifecycle::new(req, site, report, cancel);
                lc.fail(e).await;
                lc.record
            }
            Ok(target) => {
                let ctx = RestoreContext {
                    target,
                    state_dir: self.state_dir.to_path_buf(),
                };
                RestoreEngine::new(self.host, site, ctx, req, report, cancel)
                    .run()
                    .await
            }
        };
        if let Some(m) = self.metrics {
            outcome::record_restore(m, &done);
        }
        done
    }
}

/// A scheduled verify of one domain of a policy: reads the newest point (or, with `all`,
/// every point) back from the target and writes the verdicts on the runs. Answers how many
/// points were broken (a target that could not be read counts as one).
///
/// It needs only the target, not the VM: the kubevirt-worker, which has no libvirt, runs it
/// too.
pub async fn verify_due<T: Site>(
    site: &T,
    state_dir: &Path,
    metrics: Option<&Metrics>,
    policy: (Option<&str>, &str, &BackupPolicySpec),
    due: &verify::VerifyDue,
    runs: &[&BackupRun],
) -> usize {
    use crate::restore::verify::{verify as read_back, Which};
    let (ns, pname, spec) = policy;
    let all = spec.verify.as_ref().is_some_and(|v| v.all);
    let outcome = match site.target(ns, &spec.target_ref).await {
        Err(e) => Err(e),
        Ok(t) => {
            let target = crate::catalog::layout::domain_target(&t, &due.domain);
            let which = if all {
                Which::All
            } else {
                Which::One(crate::catalog::select::At::Latest)
            };
            let scratch = state_dir.join("verify-work").join(format!(
                "{pname}-{}-{}",
                due.domain.replace('/', "-"),
                std::process::id()
            ));
            read_back(&target, &which, &scratch).await
        }
    };
    let now = jiff::Timestamp::now();
    for r in verify::record_verify(runs, due, &outcome, now) {
        if let Err(e) = site.save_finished(&r).await {
            tracing::warn!(run = ?r.metadata.name, "cannot record the verify: {e}");
        }
    }
    let broken = verify::broken_count(&outcome);
    if let Some(m) = metrics {
        outcome::record_verify(m, pname, &due.domain, &outcome, broken, now);
    }
    broken
}
