//! The life of one backup run or one restore, shared by both engines: the record and where it
//! is journaled, the watcher that is told what happens, and the cancel signal. Phases are
//! entered with their timings, conditions set, hooks run by stage, and the end (success or
//! failure) stamped in one place.

#[cfg(test)]
pub mod memory;
pub mod record;

use std::future::Future;

use jiff::Timestamp;
use tokio::sync::watch;

pub use record::{Phase, Record, Shared, Status};

use crate::api::{
    Condition, ConditionType, Failure, FailureReason, Hook, HookOnError, PhaseRecord,
};
use crate::error::StepError;
use crate::hooks::{run_hook, HookEnv, HookStage};
use crate::source::Source;
use crate::units::human_duration;

/// Where a record is kept: the Kubernetes API, or the state dir's YAML files.
pub trait Journal<R>: Send + Sync {
    fn save(&self, record: &R) -> impl Future<Output = Result<(), String>> + Send;
}

/// Something an engine tells a watcher (CLI progress on stderr, agent logs).
#[derive(Clone, Debug)]
pub enum Event {
    /// A phase was entered (its name as in status).
    Phase(String),
    /// Bytes done of total in a long step (`stage`: Exporting, Uploading, Rebuilding ...).
    Progress {
        stage: &'static str,
        done: u64,
        total: u64,
    },
    Note(String),
}

pub type Reporter = Box<dyn Fn(Event) + Send + Sync>;

/// An engine as its loop sees it: what to do next (observed and decided), doing it, failing.
pub trait Stepper: Send {
    type Step: std::fmt::Debug + Send;
    /// What a signal's failure message says was done about it: `cleaned up`, `rolled back`.
    const ON_SIGNAL: &'static str;
    fn finished(&self) -> bool;
    fn cancelled(&self) -> bool;
    /// Observes and decides; `None` when nothing is left to do.
    fn next(&mut self) -> impl Future<Output = Result<Option<Self::Step>, StepError>> + Send;
    fn take(&mut self, step: Self::Step) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Cleans up (or rolls back) and records the failure.
    fn fail(&mut self, e: StepError) -> impl Future<Output = ()> + Send;
}

/// Runs an engine until it ends: one step at a time, each decided afresh from what is
/// observed, so a resumed record goes on from where it stopped. A signal or an error
/// fails it, after its cleanup.
pub async fn run_steps<E: Stepper>(engine: &mut E) {
    while !engine.finished() {
        if engine.cancelled() {
            let message = format!("interrupted by a signal; {}", E::ON_SIGNAL);
            engine
                .fail(StepError::new(FailureReason::Interrupted, message))
                .await;
            return;
        }
        let step = match engine.next().await {
            Ok(Some(step)) => step,
            Ok(None) => return,
            Err(e) => return engine.fail(e).await,
        };
        tracing::debug!(?step, "next step");
        if let Err(e) = engine.take(step).await {
            return engine.fail(e).await;
        }
    }
}

pub struct Lifecycle<'a, R: Record, J: Journal<R>> {
    pub record: R,
    journal: &'a J,
    pub report: Reporter,
    pub cancel: watch::Receiver<bool>,
}

impl<'a, R: Record, J: Journal<R>> Lifecycle<'a, R, J> {
    /// Takes the record as found; a record seen for the first time gets a status and a start
    /// time, a resumed one keeps its own.
    pub fn new(
        mut record: R,
        journal: &'a J,
        report: Reporter,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        let s = record.status_slot().get_or_insert_with(Default::default);
        s.shared().start_time.get_or_insert_with(Timestamp::now);
        Self {
            record,
            journal,
            report,
            cancel,
        }
    }

    pub fn status(&self) -> &R::Status {
        self.record
            .status()
            .expect("Lifecycle::new sets the status")
    }

    pub fn status_mut(&mut self) -> &mut R::Status {
        self.record
            .status_slot()
            .get_or_insert_with(Default::default)
    }

    pub fn name(&self) -> String {
        self.record.name()
    }

    pub fn report(&self, event: Event) {
        (self.report)(event)
    }

    pub fn note(&self, message: impl Into<String>) {
        (self.report)(Event::Note(message.into()))
    }

    pub fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    pub async fn save(&self) -> Result<(), StepError> {
        self.journal.save(&self.record).await.map_err(|e| {
            StepError::new(
                FailureReason::Internal,
                format!("cannot record status: {e}"),
            )
        })
    }

    /// Ends the current phase's record and starts `phase`; the new phase is journaled before
    /// anything of it happens, so a crash resumes in it.
    pub async fn enter(&mut self, phase: <R::Status as Status>::Phase) -> Result<(), StepError> {
        let now = Timestamp::now();
        let sh = self.status_mut().shared();
        if let Some(last) = sh.phases.last_mut() {
            last.end_time.get_or_insert(now);
        }
        *sh.phase = phase;
        *sh.progress = None;
        if !phase.is_terminal() {
            sh.phases.push(PhaseRecord {
                phase,
                start_time: now,
                end_time: None,
            });
        }
        (self.report)(Event::Phase(format!("{phase:?}")));
        crate::process::crash_point(&format!("{}:before:{phase:?}", R::KIND));
        self.save().await?;
        crate::process::crash_point(&format!("{}:{phase:?}", R::KIND));
        Ok(())
    }

    pub fn condition(&mut self, type_: ConditionType, status: bool, reason: &str, message: String) {
        let c = Condition::now(type_, status, reason, message, self.record.generation());
        crate::api::set_condition(self.status_mut().shared().conditions, c);
    }

    /// Ends the record in a terminal phase: completion time, duration, and the failure (also
    /// the reason of a Skipped run) if there is one.
    pub async fn finish(
        &mut self,
        phase: <R::Status as Status>::Phase,
        failure: Option<StepError>,
    ) -> Result<(), StepError> {
        let now = Timestamp::now();
        let sh = self.status_mut().shared();
        *sh.completion_time = Some(now);
        *sh.duration = sh.start_time.map(|t| human_duration(now.duration_since(t)));
        if let Some(e) = failure {
            *sh.failure = Some(Failure {
                reason: e.reason,
                message: e.message,
            });
        }
        self.enter(phase).await
    }

    /// Records a failure (after the engine has cleaned up or rolled back). A journal that
    /// cannot be written now is written by the next look at the record.
    pub async fn fail(&mut self, e: StepError) {
        tracing::warn!(kind = R::KIND, reason = %e.reason, message = %e.message, "failed");
        let _ = self
            .finish(<R::Status as Status>::Phase::failed(), Some(e))
            .await;
    }

    /// Runs a stage's hooks in order, recording each result. A failing hook with
    /// `onError: Fail` stops the list and fails the step; a signal kills the running hook.
    pub async fn run_hooks<S: Source>(
        &mut self,
        source: &S,
        stage: HookStage,
        hooks: &[Hook],
        domain: &str,
        extra: Vec<(String, String)>,
    ) -> Result<(), StepError> {
        let run = self.name();
        for hook in hooks {
            let env = HookEnv {
                stage,
                domain,
                run: &run,
                extra: extra.clone(),
            };
            let mut cancel = self.cancel.clone();
            // Dropping the hook's future kills its child process.
            let result = tokio::select! {
                r = run_hook(source, hook, &env) => r,
                _ = cancel.changed() => {
                    return Err(StepError::new(
                        FailureReason::Interrupted,
                        format!("interrupted during {} hook", stage.as_str()),
                    ));
                }
            };
            let ok = result.succeeded;
            let detail = format!(
                "hook '{}' ({}) failed: exit {:?}: {}",
                result.hook,
                stage.as_str(),
                result.exit_code,
                result.output.trim()
            );
            self.status_mut().shared().hooks.push(result);
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
