//! The backup engine: a loop of observe → decide (pure) → one idempotent step → journal.
//!
//! The same engine serves the single-host CLI and the Kubernetes agent; they differ only in
//! the `Journal` that records status and in how the `RunContext` is assembled.

pub mod decide;
pub mod history;
pub mod hooks;
pub mod manifest;
pub mod staging;
mod steps;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

use crate::api::{
    BackupPhase, BackupRun, BackupRunStatus, Condition, Failure, FailureReason, PhaseRecord,
};
use crate::duplicity::TargetConfig;
use crate::libvirt::{JobState, LibvirtHost, VirtErrorKind};

use decide::{decide, Observed, Step};

/// The engine layer's error: a stable reason word and a message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct StepError {
    pub reason: FailureReason,
    pub message: String,
}

impl StepError {
    pub fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl From<crate::libvirt::LibvirtError> for StepError {
    fn from(e: crate::libvirt::LibvirtError) -> Self {
        let reason = match e.kind {
            VirtErrorKind::Unavailable => FailureReason::LibvirtUnavailable,
            VirtErrorKind::DomainNotFound => FailureReason::DomainNotFound,
            VirtErrorKind::CheckpointInconsistent => FailureReason::CheckpointInconsistent,
            _ => FailureReason::LibvirtError,
        };
        Self::new(reason, e.message)
    }
}

impl From<crate::duplicity::DuplicityError> for StepError {
    fn from(e: crate::duplicity::DuplicityError) -> Self {
        Self::new(e.reason, e.message)
    }
}

/// Where run status is recorded: the Kubernetes API or the state dir's YAML files.
pub trait Journal: Send + Sync {
    fn save(&self, run: &BackupRun) -> impl Future<Output = Result<(), String>> + Send;
}

/// Something the engine tells a watcher (CLI progress on stderr, events).
#[derive(Clone, Debug)]
pub enum Event {
    Phase(BackupPhase),
    /// Bytes done of total in a long step (`stage`: Exporting, Uploading, Rebuilding ...).
    Progress {
        stage: &'static str,
        done: u64,
        total: u64,
    },
    Note(String),
}

pub type Reporter = Box<dyn Fn(Event) + Send + Sync>;

/// Everything a run needs besides its own resource.
pub struct RunContext {
    /// The target with secrets resolved. `name` is filled in per domain by the engine.
    pub target: TargetConfig,
    pub state_dir: PathBuf,
    /// Other runs in the store: the previous run of the chain is found among them.
    pub history: Vec<BackupRun>,
    /// How often a running job is polled.
    pub poll: Duration,
}

pub struct BackupEngine<'a, J: Journal> {
    pub(crate) host: &'a LibvirtHost,
    pub(crate) journal: &'a J,
    pub(crate) ctx: RunContext,
    pub(crate) report: Reporter,
    pub(crate) run: BackupRun,
    /// The domain+target lock, and the shared lock on the domain (see `staging::domain_lock`).
    pub(crate) lock: Option<(std::fs::File, std::fs::File)>,
    pub(crate) cancel: watch::Receiver<bool>,
}

impl<'a, J: Journal> BackupEngine<'a, J> {
    pub fn new(
        host: &'a LibvirtHost,
        journal: &'a J,
        ctx: RunContext,
        run: BackupRun,
        report: Reporter,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        Self {
            host,
            journal,
            ctx,
            report,
            run,
            lock: None,
            cancel,
        }
    }

    pub(crate) fn status(&self) -> &BackupRunStatus {
        self.run.status.as_ref().expect("status is set in run()")
    }

    pub(crate) fn status_mut(&mut self) -> &mut BackupRunStatus {
        self.run.status.get_or_insert_with(Default::default)
    }

    pub(crate) fn name(&self) -> String {
        self.run.metadata.name.clone().unwrap_or_default()
    }

    /// The domain as addressed after Preparing: by UUID, so a rename cannot confuse the run.
    pub(crate) fn domain_id(&self) -> String {
        self.status()
            .domain_uuid
            .clone()
            .unwrap_or_else(|| self.run.spec.domain.clone())
    }

    /// The duplicity target of this run: the domain's own directory under the target URL, so
    /// one target can hold many domains, and one archive-dir cache per target and domain.
    pub(crate) fn domain_target(&self) -> TargetConfig {
        let domain = self
            .status()
            .domain_name
            .as_deref()
            .unwrap_or(&self.run.spec.domain);
        if self.files_mode() {
            staging::files_target(&self.ctx.target, domain)
        } else {
            staging::domain_target(&self.ctx.target, domain)
        }
    }

    pub(crate) fn files_mode(&self) -> bool {
        self.run.spec.mode == crate::api::BackupMode::Files
    }

    pub(crate) async fn save(&mut self) -> Result<(), StepError> {
        self.journal.save(&self.run).await.map_err(|e| {
            StepError::new(
                FailureReason::Internal,
                format!("cannot record status: {e}"),
            )
        })
    }

    /// Ends the current phase record and starts `phase`; records it before anything else happens.
    pub(crate) async fn enter(&mut self, phase: BackupPhase) -> Result<(), StepError> {
        let now = Timestamp::now();
        let s = self.status_mut();
        if let Some(last) = s.phases.last_mut() {
            if last.end_time.is_none() {
                last.end_time = Some(now);
            }
        }
        s.phase = phase;
        s.progress = None;
        if !phase.is_terminal() {
            s.phases.push(PhaseRecord {
                phase,
                start_time: now,
                end_time: None,
            });
        }
        (self.report)(Event::Phase(phase));
        crate::process::crash_point(&format!("backup:before:{phase:?}"));
        self.save().await?;
        crate::process::crash_point(&format!("backup:{phase:?}"));
        Ok(())
    }

    pub(crate) fn condition(&mut self, type_: &str, status: bool, reason: &str, message: String) {
        let c = Condition::now(type_, status, reason, message, self.run.metadata.generation);
        crate::api::set_condition(&mut self.status_mut().conditions, c);
    }

    pub(crate) fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Runs the run to a terminal phase and returns it.
    pub async fn run(mut self) -> BackupRun {
        if self.run.status.is_none() {
            self.run.status = Some(BackupRunStatus::default());
        }
        if self.status().start_time.is_none() {
            self.status_mut().start_time = Some(Timestamp::now());
        }
        loop {
            if self.cancelled() && !self.status().phase.is_terminal() {
                self.fail(StepError::new(
                    FailureReason::Interrupted,
                    "interrupted by a signal; cleaned up",
                ))
                .await;
                break;
            }
            let observed = match self.observe().await {
                Ok(o) => o,
                Err(e) => {
                    self.fail(e).await;
                    break;
                }
            };
            let step = decide(self.status(), &observed);
            tracing::debug!(?step, phase = ?self.status().phase, "next step");
            let result = match step {
                Step::Done => break,
                Step::Prepare => self.prepare().await,
                Step::Recover => self.recover().await,
                Step::Snapshot => self.snapshot().await,
                Step::FinishSnapshot => self.finish_snapshot().await,
                Step::Export => self.export().await,
                Step::Upload => self.upload().await,
                Step::Finalize => self.finalize().await,
                Step::Fail(reason, message) => Err(StepError::new(reason, message)),
            };
            if let Err(e) = result {
                self.fail(e).await;
                break;
            }
        }
        self.lock = None;
        self.run
    }

    /// Looks at libvirt and staging. Only what the current phase needs is asked.
    async fn observe(&mut self) -> Result<Observed, StepError> {
        let s = self.status().clone();
        let mut o = Observed {
            domain_exists: true,
            job: JobState::None,
            checkpoint_exists: false,
            exports_present: false,
        };
        if s.phase == BackupPhase::Pending || s.phase.is_terminal() || s.domain_uuid.is_none() {
            return Ok(o);
        }
        self.ensure_lock()?;
        let id = self.domain_id();
        match self.host.domain(&id).await {
            Ok(_) => {}
            Err(e) if e.kind == VirtErrorKind::DomainNotFound => {
                o.domain_exists = false;
                return Ok(o);
            }
            Err(e) => return Err(e.into()),
        }
        if s.online && matches!(s.phase, BackupPhase::Snapshotting | BackupPhase::Exporting) {
            o.job = self.host.job(&id).await?;
            if let Some(cp) = &s.checkpoint {
                o.checkpoint_exists = self.host.checkpoints(&id).await?.contains(cp);
            }
        }
        if let Some(dir) = &s.staging_dir {
            let dir = PathBuf::from(dir);
            o.exports_present =
                !s.disks.is_empty() && s.disks.iter().all(|d| dir.join(&d.export_file).is_file());
        }
        Ok(o)
    }

    /// Takes the domain+target lock (once the domain's UUID is known).
    pub(crate) fn ensure_lock(&mut self) -> Result<(), StepError> {
        if self.lock.is_some() {
            return Ok(());
        }
        let Some(uuid) = self.status().domain_uuid.clone() else {
            return Ok(());
        };
        let tkey = staging::target_key(self.ctx.target.url.as_str());
        let busy = |what: String| StepError::new(FailureReason::Busy, what);
        let internal = |e: std::io::Error| {
            StepError::new(FailureReason::Internal, format!("cannot create lock: {e}"))
        };
        let Some(run_lock) = staging::lock(&self.ctx.state_dir, &tkey, &uuid).map_err(internal)?
        else {
            return Err(busy(format!(
                "another snapback run is backing up domain {uuid} to this target"
            )));
        };
        let Some(domain_lock) =
            staging::domain_lock(&self.ctx.state_dir, &uuid, false).map_err(internal)?
        else {
            return Err(busy(format!(
                "an in-place restore of domain {uuid} is running; back it up when it is done"
            )));
        };
        self.lock = Some((run_lock, domain_lock));
        Ok(())
    }

    /// Cleans up whatever the run left and records the failure.
    async fn fail(&mut self, e: StepError) {
        tracing::warn!(reason = %e.reason, message = %e.message, "run failed; cleaning up");
        // A Busy run never touched anything: it must not clean up another run's work.
        if e.reason != FailureReason::Busy {
            if let Err(c) = self.cleanup().await {
                tracing::error!(error = %c, "cleanup after failure was incomplete");
                (self.report)(Event::Note(format!("cleanup incomplete: {c}")));
            }
        }
        let now = Timestamp::now();
        let s = self.status_mut();
        s.failure = Some(Failure {
            reason: e.reason,
            message: e.message,
        });
        s.completion_time = Some(now);
        s.duration = s.start_time.map(|t| human_duration(now.duration_since(t)));
        let _ = self.enter(BackupPhase::Failed).await;
    }
}

/// `1h2m`, `3m4s`, `5.2s`: short durations for the printer column.
pub fn human_duration(d: jiff::SignedDuration) -> String {
    let ms = d.as_millis().max(0) as u64;
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{}.{}s", s, (ms % 1000) / 100)
    }
}

/// `1.5GiB`, `12.0MiB`, `512B`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units_read_like_kubectl_columns() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536 * 1024 * 1024), "1.5GiB");
        assert_eq!(
            human_duration(jiff::SignedDuration::from_millis(5200)),
            "5.2s"
        );
        assert_eq!(human_duration(jiff::SignedDuration::from_secs(184)), "3m4s");
        assert_eq!(
            human_duration(jiff::SignedDuration::from_secs(3720)),
            "1h2m"
        );
    }
}
