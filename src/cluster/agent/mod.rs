//! The node agent: publishes its VirtHost and drives the BackupRuns and RestoreRequests
//! labelled with its node through the engine. Runs resume after a restart because the engine
//! decides from the recorded status; a run is only ever driven by the agent of its node.

pub mod inventory;
pub mod journal;
mod local_expiry;
pub mod site;
#[cfg(test)]
mod status_write_tests;
pub mod target;
#[cfg(test)]
mod target_tests;
mod verifies;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::{BackupRun, RestoreRequest};
use crate::cluster::labels;
use crate::cluster::store::{ApiErrorKind, ApiResult, Object, Store};
use crate::driver::{admission, staging_need, Driver};
use crate::libvirt::LibvirtHost;
use crate::lifecycle::{Event, Journal, Phase, Record, Reporter, Status};
use crate::metrics::{Health, Metrics};

use inventory::FIELD_MANAGER;
use journal::ApiJournal;
use site::AgentSite;

/// How long a finished run waits between writes of its final status while the API is away.
const SETTLE_PAUSE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: String,
    /// `None`: runs in every namespace.
    pub namespace: Option<String>,
    pub state_dir: PathBuf,
    pub heartbeat_every: Duration,
    /// How often the API is polled for new work.
    pub poll: Duration,
    /// How many backup runs start at once on the node, and the staging they may hold.
    pub limits: crate::driver::admission::Limits,
}

/// What the agent drives runs on: the node's libvirt, or KubeVirt (the kubevirt-worker:
/// runs labelled `snapback.dev/kubevirt`, backed up through KubeVirt's API, no node access).
pub enum Host {
    Libvirt(LibvirtHost),
    /// With the storage class of the backup volumes (the cluster's default when `None`) and
    /// the namespace snapback runs in (only its runs may name VMs of other namespaces).
    KubeVirt {
        storage_class: Option<String>,
        own_namespace: Option<String>,
    },
}

struct Task {
    domain: String,
    cancel: watch::Sender<bool>,
    handle: JoinHandle<()>,
    /// A verify: it changes nothing, so stopping ends it at once instead of waiting.
    abort_on_stop: bool,
    /// A backup run admitted within the node's limits: the staging it counts for. Restores
    /// and verifies are not counted (driver/admission.rs).
    staging: Option<u64>,
}

pub struct Agent<S: Store> {
    store: S,
    host: Host,
    cfg: AgentConfig,
    metrics: Arc<Metrics>,
    health: Health,
    tasks: Mutex<HashMap<String, Task>>,
    /// When the last look for due verifies was.
    verify_looked: Mutex<Option<Instant>>,
    /// Turns true when the agent stops: a run's end that cannot be written is left then.
    stopping: watch::Sender<bool>,
    /// In this look at the API, an older run was told to wait for staging: newer ones queue
    /// behind it rather than take the space as it frees.
    staging_queue: AtomicBool,
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
        Self::with_host(store, Host::Libvirt(host), cfg, metrics, health)
    }

    /// The kubevirt-worker: drives the runs of KubeVirt VMs (`cfg.node` only names it).
    pub fn kubevirt(
        store: S,
        cfg: AgentConfig,
        host: Host,
        metrics: Arc<Metrics>,
        health: Health,
    ) -> Arc<Self> {
        Self::with_host(store, host, cfg, metrics, health)
    }

    fn with_host(
        store: S,
        host: Host,
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
            verify_looked: Mutex::new(None),
            stopping: watch::channel(false).0,
            staging_queue: AtomicBool::new(false),
        })
    }

    /// Publishes the VirtHost with a fresh heartbeat.
    pub async fn heartbeat(&self) -> Result<(), String> {
        if let Host::Libvirt(host) = &self.host {
            let status = inventory::host_status(host, Timestamp::now()).await?;
            inventory::publish(&self.store, &self.cfg.node, status).await?;
        }
        self.health.set_ready(true);
        Ok(())
    }

    /// The label that marks this agent's runs and restores.
    fn selector(&self) -> (&'static str, String) {
        match self.host {
            Host::Libvirt(_) => (labels::NODE, labels::label_value(&self.cfg.node)),
            Host::KubeVirt { .. } => (labels::KUBEVIRT, "true".into()),
        }
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
        self.staging_queue.store(false, Ordering::SeqCst);
        let (label, value) = self.selector();
        let sel = [(label, value.as_str())];
        let ns = self.cfg.namespace.as_deref();
        let mut runs: Vec<BackupRun> = self.store.list(ns, &sel).await?;
        runs.sort_by_key(|r| r.metadata.creation_timestamp.as_ref().map(|t| t.0));
        // One object the agent cannot take or release does not hold up the others.
        for r in runs {
            let k = key(&r);
            if let Err(e) = self.consider(r).await {
                warn!(object = %k, "{e}");
            }
        }
        let mut restores: Vec<RestoreRequest> = self.store.list(ns, &sel).await?;
        restores.sort_by_key(|r| r.metadata.creation_timestamp.as_ref().map(|t| t.0));
        for r in restores {
            let k = key(&r);
            if let Err(e) = self.consider(r).await {
                warn!(object = %k, "{e}");
            }
        }
        let look = {
            let mut l = self.verify_looked.lock().unwrap();
            let due = l.is_none_or(|t| t.elapsed() >= verifies::VERIFY_LOOK_EVERY);
            if due {
                *l = Some(Instant::now());
            }
            due
        };
        if look {
            if let Err(e) = self.verify_pass(Timestamp::now()).await {
                warn!("cannot look for due verifies: {e}");
            }
            if let Err(e) = self.expiry_pass(Timestamp::now()).await {
                warn!("cannot expire local points: {e}");
            }
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
            // A change seen by the store's watches (a new run, a deletion) is looked at at
            // once; the poll is the resync that catches anything else.
            let wake = self.store.changes();
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll) => {}
                _ = async { match &wake { Some(n) => n.notified().await, None => std::future::pending().await } } => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
        }
        self.stopping.send_replace(true);
        let tasks: Vec<Task> = self.tasks.lock().unwrap().drain().map(|(_, t)| t).collect();
        for t in &tasks {
            let _ = t.cancel.send(true);
            if t.abort_on_stop {
                t.handle.abort();
            }
        }
        for t in tasks {
            let _ = t.handle.await;
        }
    }

    /// Waits for the work in flight to end by itself (nothing is cancelled). For tests that
    /// need to know a look at the API has been acted on in full.
    pub async fn wait_in_flight(&self) {
        let tasks: Vec<Task> = self.tasks.lock().unwrap().drain().map(|(_, t)| t).collect();
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

    /// Starts, cancels or releases one run or restore. A started one carries the agent's
    /// finalizer, so deleting it cancels the work, which cleans up (or rolls back) before the
    /// object goes.
    async fn consider<K: Work>(self: &Arc<Self>, obj: K) -> ApiResult<()>
    where
        ApiJournal<S>: Journal<K>,
    {
        let k = key(&obj);
        let deleting = obj.meta().deletion_timestamp.is_some();
        let ours = labels::has_finalizer(obj.meta(), labels::RUN_FINALIZER);
        let terminal = obj.terminal();
        {
            let tasks = self.tasks.lock().unwrap();
            if let Some(t) = tasks.get(&k) {
                if deleting {
                    let _ = t.cancel.send(true);
                }
                return Ok(());
            }
            let startable = !terminal && (ours || !deleting);
            if startable && tasks.values().any(|t| t.domain == obj.domain()) {
                // One run or restore per domain at a time; this one waits for the next tick.
                return Ok(());
            }
        }
        if terminal || (deleting && !ours) {
            if ours {
                self.release(&obj).await?;
            }
            return Ok(());
        }
        // A run being deleted goes on at once: it only cleans up.
        let admitted = match (obj.as_backup_run(), &self.host) {
            (Some(run), Host::Libvirt(host)) if !deleting => match self.admit(host, run).await? {
                Some(a) => Some(a),
                None => return Ok(()),
            },
            _ => None,
        };
        let (tx, rx) = watch::channel(deleting);
        let me = self.clone();
        let domain = obj.domain().to_string();
        let staging = admitted.as_ref().map(|(counted, _)| *counted);
        let condition = admitted.map(|(_, c)| c);
        let handle = tokio::spawn(async move { me.drive(obj, rx, condition).await });
        self.tasks.lock().unwrap().insert(
            k,
            Task {
                domain,
                cancel: tx,
                handle,
                abort_on_stop: false,
                staging,
            },
        );
        Ok(())
    }

    /// Whether a backup run may start now within the node's limits (driver/admission.rs):
    /// `Some` with the staging it counts for and its `Admitted=True` condition; `None` when
    /// it waits, its `Admitted=False` condition written (only when it changed, so a waiting
    /// run does not wake the agent's watches on every look).
    async fn admit(
        &self,
        host: &LibvirtHost,
        run: &BackupRun,
    ) -> ApiResult<Option<(u64, crate::api::Condition)>> {
        let limits = self.cfg.limits;
        let candidate = staging_need::candidate(host, run, limits.staging_budget.is_some()).await;
        let held: Vec<u64> = self
            .tasks
            .lock()
            .unwrap()
            .values()
            .filter_map(|t| t.staging)
            .collect();
        let queue = self.staging_queue.load(Ordering::SeqCst);
        let decision = admission::admit_next(limits, &held, queue, candidate);
        let condition =
            admission::admitted_condition(&decision, run.metadata.generation, Timestamp::now());
        let admission::Decision::Wait(wait) = &decision else {
            return Ok(Some((candidate.counted(), condition)));
        };
        if matches!(wait, admission::Wait::Staging { .. }) {
            self.staging_queue.store(true, Ordering::SeqCst);
        }
        // Read fresh: the look may come from a watch cache behind the API, and a run that
        // has started since must not be written back to Pending.
        let ns = run.metadata.namespace.as_deref();
        let name = run.metadata.name.clone().unwrap_or_default();
        let Some(mut fresh) = self.store.get::<BackupRun>(ns, &name).await? else {
            return Ok(None);
        };
        let pending = fresh
            .status
            .as_ref()
            .is_none_or(|s| s.phase == crate::api::BackupPhase::Pending);
        if pending && admission::set_admitted(&mut fresh, condition) {
            info!(run = %name, reason = wait.reason(), "{}", wait.message());
            self.store.apply_status(&fresh, FIELD_MANAGER).await?;
        }
        Ok(None)
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

    /// Takes the object (its finalizer), drives it to the end and releases it.
    /// A finished one is released only once its final status is written: released while
    /// recorded in an earlier phase, it would look unfinished and be started again.
    async fn drive<K: Work>(
        self: Arc<Self>,
        obj: K,
        cancel: watch::Receiver<bool>,
        admitted: Option<crate::api::Condition>,
    ) where
        ApiJournal<S>: Journal<K>,
    {
        let name = obj.meta().name.clone().unwrap_or_default();
        // The look that started this may have come from a watch cache behind the API: read
        // it fresh, and leave a finished one alone (its end was written; at most our
        // finalizer is left, from an agent that stopped before releasing it).
        let fresh = match self
            .store
            .get::<K>(obj.meta().namespace.as_deref(), &name)
            .await
        {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                warn!(name = %name, "cannot read it: {e}");
                return;
            }
        };
        if fresh.terminal() {
            if let Err(e) = self.release(&fresh).await {
                warn!(name = %name, "cannot release it: {e}");
            }
            return;
        }
        let mut obj = match self.set_finalizer(&fresh, true).await {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                warn!(name = %name, "cannot take it: {e}");
                return;
            }
        };
        // Recorded with the run's first status write.
        if let Some(c) = admitted {
            obj.set_admitted(c);
        }
        let site = AgentSite::new(self.store.clone(), self.cfg.state_dir.clone());
        // Not the run's cancel, which also turns true when it is deleted: a deleted run's end
        // is still written before its finalizer goes. Only the agent stopping gives it up.
        let mut stop = self.stopping.subscribe();
        let report = log_reporter(name.clone());
        let done = match &self.host {
            Host::Libvirt(host) => {
                let driver = Driver {
                    host,
                    state_dir: &self.cfg.state_dir,
                    poll: Duration::from_millis(500),
                    metrics: Some(&self.metrics),
                };
                obj.drive(&driver, &site, report, cancel).await
            }
            Host::KubeVirt {
                storage_class,
                own_namespace,
            } => {
                let at = KubeVirtAt {
                    state_dir: &self.cfg.state_dir,
                    storage_class: storage_class.clone(),
                    metrics: &self.metrics,
                    own_namespace: own_namespace.clone(),
                };
                obj.drive_kubevirt(&self.store, &at, report, cancel).await
            }
        };
        if done.terminal() {
            if !site.settle(&done, &mut stop, SETTLE_PAUSE).await {
                warn!(name = %name, "its end is not recorded; it keeps its finalizer and is resumed");
            } else if let Err(e) = self.release(&done).await {
                warn!(name = %name, "cannot release it: {e}");
            }
        }
        info!(name = %name, kind = K::KIND, "finished");
    }
}

/// Where the kubevirt-worker drives a run.
struct KubeVirtAt<'a> {
    state_dir: &'a std::path::Path,
    storage_class: Option<String>,
    metrics: &'a Metrics,
    own_namespace: Option<String>,
}

/// What the agent drives: BackupRuns and RestoreRequests.
trait Work: Object + Record {
    fn domain(&self) -> &str;
    /// A backup run, which admission counts; restores are not.
    fn as_backup_run(&self) -> Option<&BackupRun> {
        None
    }
    fn set_admitted(&mut self, _c: crate::api::Condition) {}
    fn terminal(&self) -> bool {
        self.status().is_some_and(|s| s.phase().is_terminal())
    }
    fn drive<S: Store>(
        self,
        driver: &Driver<'_, LibvirtHost>,
        site: &AgentSite<S>,
        report: Reporter,
        cancel: watch::Receiver<bool>,
    ) -> impl Future<Output = Self> + Send;
    /// Through KubeVirt's API instead of the node's libvirt (the kubevirt-worker).
    fn drive_kubevirt<S: Store>(
        self,
        store: &S,
        at: &KubeVirtAt<'_>,
        report: Reporter,
        cancel: watch::Receiver<bool>,
    ) -> impl Future<Output = Self> + Send;
}

impl Work for BackupRun {
    fn domain(&self) -> &str {
        &self.spec.domain
    }
    fn as_backup_run(&self) -> Option<&BackupRun> {
        Some(self)
    }
    fn set_admitted(&mut self, c: crate::api::Condition) {
        admission::set_admitted(self, c);
    }
    async fn drive<S: Store>(
        self,
        driver: &Driver<'_, LibvirtHost>,
        site: &AgentSite<S>,
        report: Reporter,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        // A run resumed while another process holds its locks is left as it is: the next
        // look tries again (nothing is written, so no watch event wakes the agent for it).
        if self.spec.is_local() {
            return driver.local_point(site, self).await;
        }
        if let Some(why) = driver.held_elsewhere(site, &self).await {
            tracing::info!(run = ?self.metadata.name, "waiting: {why}");
            return self;
        }
        driver.backup(site, self, report, cancel).await.run
    }
    async fn drive_kubevirt<S: Store>(
        self,
        store: &S,
        at: &KubeVirtAt<'_>,
        report: Reporter,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        let place = crate::cluster::kubevirt::Place {
            state_dir: at.state_dir,
            storage_class: at.storage_class.clone(),
            metrics: Some(at.metrics),
            own_namespace: at.own_namespace.clone(),
        };
        crate::cluster::kubevirt::drive_run(store, self, &place, report, cancel).await
    }
}

impl Work for RestoreRequest {
    fn domain(&self) -> &str {
        &self.spec.domain
    }
    async fn drive<S: Store>(
        self,
        driver: &Driver<'_, LibvirtHost>,
        site: &AgentSite<S>,
        report: Reporter,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        driver.restore(site, self, report, cancel).await
    }
    async fn drive_kubevirt<S: Store>(
        self,
        store: &S,
        at: &KubeVirtAt<'_>,
        report: Reporter,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        let place = crate::cluster::kubevirt::Place {
            state_dir: at.state_dir,
            storage_class: at.storage_class.clone(),
            metrics: Some(at.metrics),
            own_namespace: at.own_namespace.clone(),
        };
        crate::cluster::kubevirt::drive_restore(store, self, &place, report, cancel).await
    }
}
