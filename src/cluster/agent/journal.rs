//! Status writes of the agent: server-side apply of the whole status by the agent's field
//! manager, plus a Kubernetes Event on each phase transition and failure.
//!
//! The API being unavailable does not fail a run. The store retries a write for a while; when
//! it still fails the run goes on, since each write carries the whole status and the next
//! one that lands records everything the lost one held. Before the run is released its
//! final status is written again until it lands (`settle`), so a finished run is never left
//! recorded in an earlier phase without its finalizer, where it would be started again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{BackupPhase, BackupRun, Failure, RestorePhase, RestoreRequest};
use crate::cluster::store::{reference, ApiErrorKind, EventType, Object, Store};
use crate::lifecycle::Journal;

use super::inventory::FIELD_MANAGER;

/// One journal per run or restore: it remembers the last phase it announced.
pub struct ApiJournal<S: Store> {
    store: S,
    last_phase: Mutex<Option<String>>,
    /// The newest status was not written: the API is behind the run.
    behind: AtomicBool,
}

impl<S: Store> ApiJournal<S> {
    pub fn new(store: S) -> Self {
        Self {
            store,
            last_phase: Mutex::new(None),
            behind: AtomicBool::new(false),
        }
    }

    /// Whether the last status write was lost to an unavailable API.
    pub fn behind(&self) -> bool {
        self.behind.load(Ordering::SeqCst)
    }

    /// Writes `obj` (a run or restore at its end) again and again, `pause` apart, while the
    /// API is behind it. `false` when it could not: `stop` turned true (the agent is going
    /// away, or the object is being deleted) or the API refused for good (the object is gone).
    /// The caller then keeps the finalizer, and the run resumes from its last recorded status
    /// in the next agent, as after a crash.
    pub async fn settle<K: Object>(
        &self,
        obj: &K,
        stop: &mut watch::Receiver<bool>,
        pause: Duration,
    ) -> bool
    where
        Self: Journal<K>,
    {
        while self.behind() {
            if *stop.borrow() {
                return false;
            }
            if let Err(e) = self.save(obj).await {
                tracing::warn!(name = ?obj.meta().name, "its final status cannot be written: {e}");
                return false;
            }
            if self.behind() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        true
    }

    /// Applies the status; on a phase change publishes an Event: Normal with the phase as
    /// reason, or Warning with the failure's reason word when the phase is a failure.
    async fn record<K: Object>(
        &self,
        obj: &K,
        phase: Option<(String, Option<&Failure>)>,
    ) -> Result<(), String> {
        match self.store.apply_status(obj, FIELD_MANAGER).await {
            Ok(_) => self.behind.store(false, Ordering::SeqCst),
            Err(e) if e.is(ApiErrorKind::Unavailable) => {
                // The store retried already. Failing the run for it would lose more than the
                // write: the next write carries this status too. No Event either: the phase
                // is announced with the first write that lands.
                self.behind.store(true, Ordering::SeqCst);
                tracing::warn!(
                    kind = %K::kind(&()),
                    name = ?obj.meta().name,
                    "status not written, the API is unavailable ({e}); the run goes on"
                );
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        }
        let Some((phase, failure)) = phase else {
            return Ok(());
        };
        let changed = {
            let mut last = self.last_phase.lock().unwrap();
            let c = last.as_deref() != Some(phase.as_str());
            *last = Some(phase.clone());
            c
        };
        if !changed {
            return Ok(());
        }
        let (ty, reason, note) = match failure {
            Some(f) => (
                EventType::Warning,
                f.reason.as_str().to_string(),
                f.message.clone(),
            ),
            None => (EventType::Normal, phase.clone(), format!("phase {phase}")),
        };
        if let Err(e) = self.store.event(&reference(obj), ty, &reason, &note).await {
            tracing::debug!("event not published: {e}");
        }
        Ok(())
    }
}

impl<S: Store> Journal<BackupRun> for ApiJournal<S> {
    async fn save(&self, run: &BackupRun) -> Result<(), String> {
        let phase = run.status.as_ref().map(|s| {
            let failed = s
                .failure
                .as_ref()
                .filter(|_| s.phase == BackupPhase::Failed);
            (format!("{:?}", s.phase), failed)
        });
        self.record(run, phase).await
    }
}

impl<S: Store> Journal<RestoreRequest> for ApiJournal<S> {
    async fn save(&self, req: &RestoreRequest) -> Result<(), String> {
        let phase = req.status.as_ref().map(|s| {
            let failed = s
                .failure
                .as_ref()
                .filter(|_| s.phase == RestorePhase::Failed);
            (format!("{:?}", s.phase), failed)
        });
        self.record(req, phase).await
    }
}
