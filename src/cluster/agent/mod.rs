//! The node agent: publishes its VirtHost and drives the BackupRuns and RestoreRequests
//! labelled with its node through the engine. Runs resume after a restart because the engine
//! decides from the recorded status; a run is only ever driven by the agent of its node.

pub mod inventory;
pub mod journal;
pub mod target;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::{
    set_condition, BackupPhase, BackupPolicy, BackupRun, Failure, RestorePhase, RestoreRequest,
};
use crate::cluster::labels;
use crate::cluster::store::{ApiErrorKind, ApiResult, Object, Store};
use crate::engine::{BackupEngine, RunContext};
use crate::error::StepError;
use crate::libvirt::LibvirtHost;
use crate::lifecycle::{Event, Journal, Reporter};
use crate::metrics::{Health, Metrics, PolicyDomain, ReasonLabel};
use crate::restore::{RestoreContext, RestoreEngine};
use crate::retention::prune::{expired, prune_after_run};

use journal::ApiJournal;
use target::resolve_target;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: String,
    /// `None`: runs in every namespace.
    pub namespace: Option<String>,
    pub state_dir: PathBuf,
    pub heartbeat_every: Duration,
    /// How often the API is polled for new work.
    pub poll: Duration,
}

struct Task {
    domain: String,
    cancel: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

pub struct Agent<S: Store> {
    store: S,
    host: LibvirtHost,
    cfg: AgentConfig,
    metrics: Arc<Metrics>,
    health: Health,
    tasks: Mutex<HashMap<String, Task>>,
}

fn key<K: Object>(o: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default()
    )
}

fn log_reporter(name: String) -> Reporter {
    let last = Mutex::new(Instant::now() - Duration::from_secs(60));
    Box::new(move |ev| match ev {
        Event::Phase(p) => info!(run = %name, phase = %p, "phase"),
        Event::Note(n) => info!(run = %name, "{n}"),
        Event::Progress { stage, done, total } => {
            let mut l = last.lock().unwrap();
            if l.elapsed() >= Duration::from_secs(10) {
                *l = Instant::now();
                info!(run = %name, stage, done, total, "progress");
            }
        }
    })
}

impl<S: Store> Agent<S> {
    pub fn new(
        store: S,
        host: LibvirtHost,
        cfg: AgentConfig,
        metrics: Arc<Metrics>,
        health: Health,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            host,
            cfg,
            metrics,
            health,
            tasks: Mutex::new(HashMap::new()),
        })
    }

    /// Publishes the VirtHost with a fresh heartbeat.
    pub async fn heartbeat(&self) -> Result<(), String> {
        let status = inventory::host_status(&self.host, Timestamp::now()).await?;
        inventory::publish(&self.store, &self.cfg.node, status).await?;
        self.health.set_ready(true);
        Ok(())
    }

    /// How many runs and restores are being driven now.
    pub fn in_flight(&self) -> usize {
        self.tasks.lock().unwrap().len()
    }

    /// One look at the API: starts what is new, cancels what was deleted, releases what ended.
    pub async fn tick(self: &Arc<Self>) -> ApiResult<()> {
        self.tasks
            .lock()
            .unwrap()
            .retain(|_, t| !t.handle.is_finished());
        let node = labels::label_value(&self.cfg.node);
        let sel = [(labels::NODE, node.as_str())];
        let ns = self.cfg.namespace.as_deref();
        let mut runs: Vec<BackupRun> = self.store.list(ns, &sel).await?;
        runs.sort_by_key(|r| r.metadata.creation_timestamp.as_ref().map(|t| t.0));
        for r in runs {
            self.consider_run(r).await?;
        }
        let mut restores: Vec<RestoreRequest> = self.store.list(ns, &sel).await?;
        restores.sort_by_key(|r| r.metadata.creation_timestamp.as_ref().map(|t| t.0));
        for r in restores {
            self.consider_restore(r);
        }
        Ok(())
    }

    /// Heartbeats and ticks until `stop` turns true, then cancels the work in flight (each run
    /// cleans up and fails as Interrupted) and waits for it.
    pub async fn run_until(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last_beat: Option<Instant> = None;
        loop {
            if last_beat.is_none_or(|t| t.elapsed() >= self.cfg.heartbeat_every) {
                match self.heartbeat().await {
                    Ok(()) => last_beat = Some(Instant::now()),
                    Err(e) => warn!("heartbeat failed: {e}"),
                }
            }
            if let Err(e) = self.tick().await {
                warn!("cannot read work from the API: {e}");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
        }
        let tasks: Vec<Task> = self.tasks.lock().unwrap().drain().map(|(_, t)| t).collect();
        for t in &tasks {
            let _ = t.cancel.send(true);
        }
        for t in tasks {
            let _ = t.handle.await;
        }
    }

    /// Drops all work in flight without cancelling it, as a killed process would. The next
    /// agent resumes each run from its recorded status. Used by tests of that promise.
    /// Returns once every task is gone: like a dead process, it then holds no lock any more
    /// (an abort alone takes effect whenever the runtime next polls the task).
    pub async fn abandon(&self) {
        let tasks: Vec<Task> = self.tasks.lock().unwrap().drain().map(|(_, t)| t).collect();
        for t in &tasks {
            t.handle.abort();
        }
        for t in tasks {
            let _ = t.handle.await;
        }
    }

    async fn consider_run(self: &Arc<Self>, run: BackupRun) -> ApiResult<()> {
        let k = key(&run);
        let deleting = run.metadata.deletion_timestamp.is_some();
        let ours = labels::has_finalizer(&run.metadata, labels::RUN_FINALIZER);
        let terminal = run.status.as_ref().is_some_and(|s| s.phase.is_terminal());
        {
            let tasks = self.tasks.lock().unwrap();
            if let Some(t) = tasks.get(&k) {
                if deleting {
                    let _ = t.cancel.send(true);
                }
                return Ok(());
            }
            let startable = !terminal && (ours || !deleting);
            if startable && tasks.values().any(|t| t.domain == run.spec.domain) {
                // One run per domain at a time; this one waits for the next tick.
                return Ok(());
            }
        }
        if terminal || (deleting && !ours) {
            if ours {
                self.release::<BackupRun>(&run).await?;
            }
            return Ok(());
        }
        let (tx, rx) = watch::channel(deleting);
        let me = self.clone();
        let domain = run.spec.domain.clone();
        let handle = tokio::spawn(async move { me.drive_run(run, rx).await });
        self.tasks.lock().unwrap().insert(
            k,
            Task {
                domain,
                cancel: tx,
                handle,
            },
        );
        Ok(())
    }

    fn consider_restore(self: &Arc<Self>, req: RestoreRequest) {
        let k = key(&req);
        let terminal = req.status.as_ref().is_some_and(|s| s.phase.is_terminal());
        let mut tasks = self.tasks.lock().unwrap();
        if let Some(t) = tasks.get(&k) {
            if req.metadata.deletion_timestamp.is_some() {
                let _ = t.cancel.send(true);
            }
            return;
        }
        if terminal
            || req.metadata.deletion_timestamp.is_some()
            || tasks.values().any(|t| t.domain == req.spec.domain)
        {
            return;
        }
        let (tx, rx) = watch::channel(false);
        let me = self.clone();
        let domain = req.spec.domain.clone();
        let handle = tokio::spawn(async move { me.drive_restore(req, rx).await });
        tasks.insert(
            k,
            Task {
                domain,
                cancel: tx,
                handle,
            },
        );
    }

    /// Adds (`add`) or removes the run finalizer on the newest version, retrying conflicts.
    async fn set_finalizer<K: Object>(&self, obj: &K, add: bool) -> ApiResult<Option<K>> {
        let ns = obj.meta().namespace.clone();
        let name = obj.meta().name.clone().unwrap_or_default();
        for _ in 0..5 {
            let Some(mut cur) = self.store.get::<K>(ns.as_deref(), &name).await? else {
                return Ok(None);
            };
            let has = labels::has_finalizer(cur.meta(), labels::RUN_FINALIZER);
            if has == add {
                return Ok(Some(cur));
            }
            if add {
                labels::add_finalizer(cur.meta_mut(), labels::RUN_FINALIZER);
            } else {
                labels::remove_finalizer(cur.meta_mut(), labels::RUN_FINALIZER);
            }
            match self.store.replace(&cur).await {
                Ok(v) => return Ok(Some(v)),
                Err(e) if e.is(ApiErrorKind::Conflict) => continue,
                Err(e) if e.is(ApiErrorKind::NotFound) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Err(crate::cluster::ApiError::new(
            ApiErrorKind::Conflict,
            format!("{name}: finalizer update kept conflicting"),
        ))
    }

    async fn release<K: Object>(&self, obj: &K) -> ApiResult<()> {
        self.set_finalizer(obj, false).await.map(|_| ())
    }

    async fn drive_run(self: Arc<Self>, run: BackupRun, cancel: watch::Receiver<bool>) {
        let name = run.metadata.name.clone().unwrap_or_default();
        let ns = run.metadata.namespace.clone().unwrap_or_default();
        let fresh = run.status.is_none();
        let run = match self.set_finalizer(&run, true).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                warn!(run = %name, "cannot take the run: {e}");
                return;
            }
        };
        let journal = ApiJournal::new(self.store.clone());
        self.metrics.active_runs.inc();
        if fresh {
            self.metrics.backup_attempts.inc();
        }
        let done = match resolve_target(&self.store, &ns, &run.spec.target_ref, &self.cfg.state_dir)
            .await
        {
            Err(e) => fail_before_start(&journal, run, e).await,
            Ok(target) => {
                let base = target.clone();
                let history: Vec<BackupRun> =
                    self.store.list(Some(&ns), &[]).await.unwrap_or_default();
                let ctx = RunContext {
                    target,
                    state_dir: self.cfg.state_dir.clone(),
                    history,
                    poll: Duration::from_millis(500),
                };
                let done = BackupEngine::new(
                    &self.host,
                    &journal,
                    ctx,
                    run,
                    log_reporter(name.clone()),
                    cancel,
                )
                .run()
                .await;
                self.apply_retention(&journal, done, &base).await
            }
        };
        self.metrics.active_runs.dec();
        let s = done.status.clone().unwrap_or_default();
        match (s.phase, &s.failure) {
            (BackupPhase::Succeeded, _) => {
                self.metrics.backup_success.inc();
                self.metrics.backup_bytes.observe(s.size_bytes as f64);
                if let Some(t) = s.completion_time {
                    self.metrics
                        .last_success
                        .get_or_create(&PolicyDomain {
                            policy: done.spec.policy_ref.clone().unwrap_or_default(),
                            domain: done.spec.domain.clone(),
                        })
                        .set(t.as_millisecond() as f64 / 1000.0);
                }
            }
            (BackupPhase::Failed, Some(f)) => {
                self.metrics
                    .backup_failure
                    .get_or_create(&ReasonLabel {
                        reason: f.reason.as_str().to_string(),
                    })
                    .inc();
            }
            _ => {}
        }
        if let (Some(a), Some(b)) = (s.start_time, s.completion_time) {
            self.metrics
                .backup_duration
                .observe((b.as_millisecond() - a.as_millisecond()) as f64 / 1000.0);
        }
        if s.phase.is_terminal() {
            if let Err(e) = self.release(&done).await {
                warn!(run = %name, "cannot release the run: {e}");
            }
        }
        info!(run = %name, phase = ?s.phase, "run finished");
    }

    /// The policy's retention after a successful run: whole chains are deleted from the target,
    /// the outcome is a `Pruned` condition on the run, and the runs of deleted chains are marked
    /// `Expired`.
    async fn apply_retention(
        &self,
        journal: &ApiJournal<S>,
        mut done: BackupRun,
        base: &crate::duplicity::TargetConfig,
    ) -> BackupRun {
        let succeeded = done
            .status
            .as_ref()
            .is_some_and(|s| s.phase == BackupPhase::Succeeded);
        let (true, Some(pname)) = (succeeded, done.spec.policy_ref.clone()) else {
            return done;
        };
        let ns = done.metadata.namespace.clone().unwrap_or_default();
        let Ok(Some(policy)) = self.store.get::<BackupPolicy>(Some(&ns), &pname).await else {
            return done;
        };
        let Some(after) =
            prune_after_run(base, &done.spec.domain, &policy.spec, &self.cfg.state_dir).await
        else {
            return done;
        };
        if let Some(s) = done.status.as_mut() {
            set_condition(&mut s.conditions, after.condition);
        }
        if let Err(e) = Journal::save(journal, &done).await {
            warn!(run = ?done.metadata.name, "cannot record the prune: {e}");
        }
        if !after.deleted_chains.is_empty() {
            let runs: Vec<BackupRun> = self.store.list(Some(&ns), &[]).await.unwrap_or_default();
            for r in runs
                .iter()
                .filter_map(|r| expired(r, &after.deleted_chains))
            {
                if let Err(e) = self.store.apply_status(&r, inventory::FIELD_MANAGER).await {
                    warn!(run = ?r.metadata.name, "cannot mark expired: {e}");
                }
            }
        }
        done
    }

    async fn drive_restore(self: Arc<Self>, req: RestoreRequest, cancel: watch::Receiver<bool>) {
        let name = req.metadata.name.clone().unwrap_or_default();
        let ns = req.metadata.namespace.clone().unwrap_or_default();
        let journal = ApiJournal::new(self.store.clone());
        self.metrics.active_runs.inc();
        if req.status.is_none() {
            self.metrics.restore_attempts.inc();
        }
        let done = match resolve_target(&self.store, &ns, &req.spec.target_ref, &self.cfg.state_dir)
            .await
        {
            Err(e) => {
                let mut r = req;
                let s = r.status.get_or_insert_with(Default::default);
                s.phase = RestorePhase::Failed;
                s.failure = Some(Failure {
                    reason: e.reason,
                    message: e.message,
                });
                s.completion_time = Some(Timestamp::now());
                let _ = Journal::save(&journal, &r).await;
                r
            }
            Ok(target) => {
                let ctx = RestoreContext {
                    target,
                    state_dir: self.cfg.state_dir.clone(),
                };
                RestoreEngine::new(
                    &self.host,
                    &journal,
                    ctx,
                    req,
                    log_reporter(name.clone()),
                    cancel,
                )
                .run()
                .await
            }
        };
        self.metrics.active_runs.dec();
        let s = done.status.unwrap_or_default();
        match (s.phase, &s.failure) {
            (RestorePhase::Succeeded, _) => self.metrics.restore_success.inc(),
            (RestorePhase::Failed, Some(f)) => self
                .metrics
                .restore_failure
                .get_or_create(&ReasonLabel {
                    reason: f.reason.as_str().to_string(),
                })
                .inc(),
            _ => 0,
        };
        if let (Some(a), Some(b)) = (s.start_time, s.completion_time) {
            self.metrics
                .restore_duration
                .observe((b.as_millisecond() - a.as_millisecond()) as f64 / 1000.0);
        }
        info!(restore = %name, phase = ?s.phase, "restore finished");
    }
}

/// A run that cannot start (its target or Secrets are missing) fails with the reason, without
/// touching the domain.
async fn fail_before_start<S: Store>(
    j: &ApiJournal<S>,
    mut run: BackupRun,
    e: StepError,
) -> BackupRun {
    let now = Timestamp::now();
    let s = run.status.get_or_insert_with(Default::default);
    s.phase = BackupPhase::Failed;
    s.start_time.get_or_insert(now);
    s.completion_time = Some(now);
    s.failure = Some(Failure {
        reason: e.reason,
        message: e.message,
    });
    let _ = Journal::save(j, &run).await;
    run
}
