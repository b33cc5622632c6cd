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
use std::time::{Duration, Instant};

use serde_json::Value;

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
    /// The last status written, without its progress, and when.
    last_written: Mutex<Option<(Value, Instant)>>,
}

/// Progress alone (bytes exported or uploaded so far) is written at most this often: the
/// engines report it every 2 s, and with many runs that is load on the apiserver that says
/// little. Any other change of the status is written at once.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Whether `status` (without its progress) is worth a write after `last`.
pub fn worth_writing(last: Option<&(Value, Instant)>, status: &Value, now: Instant) -> bool {
    match last {
        None => true,
        Some((before, at)) => before != status || now.duration_since(*at) >= PROGRESS_EVERY,
    }
}

fn without_progress<K: Object>(obj: &K) -> Value {
    let mut status = serde_json::to_value(obj)
        .ok()
        .and_then(|v| v.get("status").cloned())
        .unwrap_or(Value::Null);
    if let Some(m) = status.as_object_mut() {
        m.remove("progress");
    }
    status
}

impl<S: Store> ApiJournal<S> {
    pub fn new(store: S) -> Self {
        Self {
            store,
            last_phase: Mutex::new(None),
            behind: AtomicBool::new(false),
            last_written: Mutex::new(None),
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
        let status = without_progress(obj);
        let now = Instant::now();
        if !self.behind()
            && !worth_writing(self.last_written.lock().unwrap().as_ref(), &status, now)
        {
            return Ok(());
        }
        match self.store.apply_status(obj, FIELD_MANAGER).await {
            Ok(_) => {
                self.behind.store(false, Ordering::SeqCst);
                *self.last_written.lock().unwrap() = Some((status, now));
            }
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
            Err(e) => {
                // Not written: the API is behind the run, so `settle` keeps trying (or keeps
                // the finalizer) rather than release a run recorded in an earlier phase. A
                // run that is gone has nothing to be behind on.
                if !e.is(ApiErrorKind::NotFound) {
                    self.behind.store(true, Ordering::SeqCst);
                }
                return Err(e.to_string());
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_alone_is_written_at_most_every_ten_seconds_and_anything_else_at_once() {
        let t0 = Instant::now();
        let s = serde_json::json!({"phase": "Uploading"});
        let last = (s.clone(), t0);
        assert!(worth_writing(None, &s, t0));
        assert!(!worth_writing(Some(&last), &s, t0 + Duration::from_secs(2)));
        assert!(worth_writing(Some(&last), &s, t0 + PROGRESS_EVERY));
        let next = serde_json::json!({"phase": "Finalizing"});
        assert!(worth_writing(
            Some(&last),
            &next,
            t0 + Duration::from_secs(1)
        ));
    }
}
