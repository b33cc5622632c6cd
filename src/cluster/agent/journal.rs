//! Status writes of the agent: server-side apply of the whole status by the agent's field
//! manager, plus a Kubernetes Event on each phase transition and failure.

use std::sync::Mutex;

use crate::api::{BackupPhase, BackupRun, RestorePhase, RestoreRequest};
use crate::cluster::store::{reference, EventType, Store};
use crate::engine::Journal;
use crate::restore::RestoreJournal;

use super::inventory::FIELD_MANAGER;

pub struct ApiJournal<S: Store> {
    store: S,
    last_run_phase: Mutex<Option<BackupPhase>>,
    last_restore_phase: Mutex<Option<RestorePhase>>,
}

impl<S: Store> ApiJournal<S> {
    pub fn new(store: S) -> Self {
        Self {
            store,
            last_run_phase: Mutex::new(None),
            last_restore_phase: Mutex::new(None),
        }
    }

    async fn announce<K: crate::cluster::Object>(
        &self,
        obj: &K,
        phase: String,
        failure: Option<(String, String)>,
    ) {
        let r = reference(obj);
        let (ty, reason, note) = match failure {
            Some((reason, msg)) => (EventType::Warning, reason, msg),
            None => (EventType::Normal, phase.clone(), format!("phase {phase}")),
        };
        if let Err(e) = self.store.event(&r, ty, &reason, &note).await {
            tracing::debug!("event not published: {e}");
        }
    }
}

impl<S: Store> Journal for ApiJournal<S> {
    async fn save(&self, run: &BackupRun) -> Result<(), String> {
        self.store
            .apply_status(run, FIELD_MANAGER)
            .await
            .map_err(|e| e.to_string())?;
        let Some(s) = run.status.as_ref() else {
            return Ok(());
        };
        let changed = {
            let mut last = self.last_run_phase.lock().unwrap();
            let c = *last != Some(s.phase);
            *last = Some(s.phase);
            c
        };
        if changed {
            let failure = s
                .failure
                .as_ref()
                .filter(|_| s.phase == BackupPhase::Failed)
                .map(|f| (f.reason.as_str().to_string(), f.message.clone()));
            self.announce(run, format!("{:?}", s.phase), failure).await;
        }
        Ok(())
    }
}

impl<S: Store> RestoreJournal for ApiJournal<S> {
    async fn save_restore(&self, req: &RestoreRequest) -> Result<(), String> {
        self.store
            .apply_status(req, FIELD_MANAGER)
            .await
            .map_err(|e| e.to_string())?;
        let Some(s) = req.status.as_ref() else {
            return Ok(());
        };
        let changed = {
            let mut last = self.last_restore_phase.lock().unwrap();
            let c = *last != Some(s.phase);
            *last = Some(s.phase);
            c
        };
        if changed {
            let failure = s
                .failure
                .as_ref()
                .filter(|_| s.phase == RestorePhase::Failed)
                .map(|f| (f.reason.as_str().to_string(), f.message.clone()));
            self.announce(req, format!("{:?}", s.phase), failure).await;
        }
        Ok(())
    }
}
