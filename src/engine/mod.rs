//! The backup engine: a loop of observe → decide (pure) → one idempotent step → journal.
//!
//! The same engine serves the single-host CLI and the Kubernetes agent; they differ only in
//! the `Journal` that records status and in how the `RunContext` is assembled.

pub mod decide;
#[cfg(test)]
mod fake_tests;
pub mod history;
pub mod lvm;
pub mod plan;
mod steps;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{BackupPhase, BackupRun, FailureReason};
use crate::catalog::layout;
use crate::duplicity::TargetConfig;
use crate::error::StepError;
use crate::libvirt::{JobState, VirtErrorKind};
use crate::lifecycle::{run_steps, Journal, Lifecycle, Reporter, Stepper};
use crate::source::Source;
use crate::state_dir;

use decide::{decide, Observed, Step};

/// The staging a whole export of one disk needs at most: its allocated data. A block device,
/// or a raw disk read through a tracking overlay, reports every byte as allocated: its export
/// first takes its whole virtual size, and (online, image mode) the copy without its zeros up
/// to that again. Preparing refuses a run the staging filesystem cannot hold by this figure;
/// admission (driver/admission.rs) counts runs by it.
pub fn whole_export_need(d: &crate::libvirt::Disk, size: u64, online: bool, files: bool) -> u64 {
    let overlay = crate::libvirt::domain_xml::is_cbt_overlay(d.source());
    let raw_data = overlay || !crate::api::RunDisk::tracks_changes(d.format());
    let export = if overlay || d.kind == crate::libvirt::DiskKind::Block {
        size
    } else {
        d.chain
            .iter()
            .map(|c| state_dir::allocated_bytes(c.path.as_ref()))
            .sum()
    };
    if raw_data && online && !files {
        export.saturating_mul(2)
    } else {
        export
    }
}

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

pub struct BackupEngine<'a, J: Journal<BackupRun>, S: Source> {
    pub(crate) source: &'a S,
    pub(crate) lc: Lifecycle<'a, BackupRun, J>,
    pub(crate) ctx: RunContext,
    /// The domain+target lock, and the shared lock on the domain (see `state_dir::domain_lock`).
    pub(crate) lock: Option<(std::fs::File, std::fs::File)>,
}

impl<'a, J: Journal<BackupRun>, S: Source> BackupEngine<'a, J, S> {
    pub fn new(
        source: &'a S,
        journal: &'a J,
        ctx: RunContext,
        run: BackupRun,
        report: Reporter,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        Self {
            source,
            lc: Lifecycle::new(run, journal, report, cancel),
            ctx,
            lock: None,
        }
    }

    /// The domain as addressed after Preparing: by UUID, so a rename cannot confuse the run.
    pub(crate) fn domain_id(&self) -> String {
        self.lc
            .status()
            .domain_uuid
            .clone()
            .unwrap_or_else(|| self.lc.record.spec.domain.clone())
    }

    /// The duplicity target of this run: the domain's own directory under the target URL, so
    /// one target can hold many domains, and one archive-dir cache per target and domain.
    pub(crate) fn domain_target(&self) -> TargetConfig {
        let domain = self
            .lc
            .status()
            .domain_name
            .as_deref()
            .unwrap_or(&self.lc.record.spec.domain);
        if self.files_mode() {
            layout::files_target(&self.ctx.target, domain)
        } else {
            layout::domain_target(&self.ctx.target, domain)
        }
    }

    pub(crate) fn files_mode(&self) -> bool {
        self.lc.record.spec.mode == crate::api::BackupMode::Files
    }

    /// Runs the run to a terminal phase and returns it.
    pub async fn run(mut self) -> BackupRun {
        run_steps(&mut self).await;
        self.lock = None;
        self.lc.record
    }

    /// Looks at libvirt and staging. Only what the current phase needs is asked.
    async fn observe(&mut self) -> Result<Observed, StepError> {
        let s = self.lc.status().clone();
        let mut o = Observed {
            domain_exists: true,
            job: JobState::None,
            checkpoint_exists: false,
            exports_present: false,
            exports_fetched: self.source.fetches_exports(),
        };
        if s.phase == BackupPhase::Pending || s.phase.is_terminal() || s.domain_uuid.is_none() {
            return Ok(o);
        }
        self.ensure_lock()?;
        let id = self.domain_id();
        match self.source.domain(&id).await {
            Ok(_) => {}
            Err(e) if e.kind == VirtErrorKind::DomainNotFound => {
                o.domain_exists = false;
                return Ok(o);
            }
            Err(e) => return Err(e.into()),
        }
        if s.online && matches!(s.phase, BackupPhase::Snapshotting | BackupPhase::Exporting) {
            o.job = self.source.job(&id).await?;
            if let Some(cp) = &s.checkpoint {
                o.checkpoint_exists = self.source.checkpoints(&id).await?.contains(cp);
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
        let Some(uuid) = self.lc.status().domain_uuid.clone() else {
            return Ok(());
        };
        let tkey = layout::target_key(self.ctx.target.url.as_str());
        let busy = |what: String| StepError::new(FailureReason::Busy, what);
        let internal = |e: std::io::Error| {
            StepError::new(FailureReason::Internal, format!("cannot create lock: {e}"))
        };
        let Some(run_lock) =
            state_dir::lock(&self.ctx.state_dir, &tkey, &uuid).map_err(internal)?
        else {
            return Err(busy(format!(
                "another snapback run is backing up domain {uuid} to this target"
            )));
        };
        let Some(domain_lock) =
            state_dir::domain_lock(&self.ctx.state_dir, &uuid, false).map_err(internal)?
        else {
            return Err(busy(format!(
                "an in-place restore of domain {uuid} is running; back it up when it is done"
            )));
        };
        self.lock = Some((run_lock, domain_lock));
        Ok(())
    }
}

impl<J: Journal<BackupRun>, S: Source> Stepper for BackupEngine<'_, J, S> {
    type Step = Step;
    const ON_SIGNAL: &'static str = "cleaned up";

    fn finished(&self) -> bool {
        self.lc.status().phase.is_terminal()
    }

    fn cancelled(&self) -> bool {
        self.lc.cancelled()
    }

    async fn next(&mut self) -> Result<Option<Step>, StepError> {
        let observed = self.observe().await?;
        match decide(self.lc.status(), &observed) {
            Step::Done => Ok(None),
            Step::Fail(reason, message) => Err(StepError::new(reason, message)),
            step => Ok(Some(step)),
        }
    }

    async fn take(&mut self, step: Step) -> Result<(), StepError> {
        match step {
            Step::Prepare => self.prepare().await,
            Step::Recover => self.recover().await,
            Step::Snapshot => self.snapshot().await,
            Step::FinishSnapshot => self.finish_snapshot().await,
            Step::Export => self.export().await,
            Step::Upload => self.upload().await,
            Step::Finalize => self.finalize().await,
            Step::Done => Ok(()),
            Step::Fail(reason, message) => Err(StepError::new(reason, message)),
        }
    }

    /// Cleans up whatever the run left and records the failure.
    async fn fail(&mut self, e: StepError) {
        // A Busy run never touched anything: it must not clean up another run's work.
        if e.reason != FailureReason::Busy {
            if let Err(c) = self.cleanup().await {
                tracing::error!(error = %c, "cleanup after failure was incomplete");
                self.lc.note(format!("cleanup incomplete: {c}"));
            }
        }
        self.lc.fail(e).await;
    }
}
