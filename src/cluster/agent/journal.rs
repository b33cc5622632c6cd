//! Status writes of the agent: server-side apply of the whole status by the agent's field
//! manager, plus a Kubernetes Event on each phase transition and failure.

use std::sync::Mutex;

use crate::api::{BackupPhase, BackupRun, Failure, RestorePhase, RestoreRequest};
use crate::cluster::store::{reference, EventType, Object, Store};
use crate::lifecycle::Journal;

use super::inventory::FIELD_MANAGER;

/// One journal per run or restore: it remembers the last phase it announced.
pub struct ApiJournal<S: Store> {
    store: S,
    last_phase: Mutex<Option<String>>,
}

impl<S: Store> ApiJournal<S> {
    pub fn new(store: S) -> Self {
        Self {
            store,
            last_phase: Mutex::new(None),
        }
    }

    /// Applies the status; on a phase change publishes an Event: Normal with the phase as
    /// reason, or Warning with the failure's reason word when the phase is a failure.
    async fn record<K: Object>(
        &self,
        obj: &K,
        phase: Option<(String, Option<&Failure>)>,
    ) -> Result<(), String> {
        self.store
            .apply_status(obj, FIELD_MANAGER)
            .await
            .map_err(|e| e.to_string())?;
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
