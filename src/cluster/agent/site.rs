//! The cluster as the driver's site for one run or restore: status written to the API,
//! targets and their Secrets, policies and other runs read from it.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{BackupPolicy, BackupPolicySpec, BackupRun, RestoreRequest};
use crate::cluster::store::{Object, Store};
use crate::driver::Site;
use crate::duplicity::TargetConfig;
use crate::error::StepError;
use crate::lifecycle::Journal;

use super::inventory::FIELD_MANAGER;
use super::journal::ApiJournal;
use super::target::resolve_target;

/// One site per run or restore: its journal remembers the last phase it announced.
pub struct AgentSite<S: Store> {
    store: S,
    journal: ApiJournal<S>,
    state_dir: PathBuf,
}

impl<S: Store> AgentSite<S> {
    pub fn new(store: S, state_dir: PathBuf) -> Self {
        Self {
            journal: ApiJournal::new(store.clone()),
            store,
            state_dir,
        }
    }

    /// Writes the final status of a run or restore until it lands (`ApiJournal::settle`).
    pub async fn settle<K: Object>(
        &self,
        obj: &K,
        stop: &mut watch::Receiver<bool>,
        pause: Duration,
    ) -> bool
    where
        ApiJournal<S>: Journal<K>,
    {
        self.journal.settle(obj, stop, pause).await
    }
}

impl<S: Store> Journal<BackupRun> for AgentSite<S> {
    async fn save(&self, run: &BackupRun) -> Result<(), String> {
        Journal::<BackupRun>::save(&self.journal, run).await
    }
}

impl<S: Store> Journal<RestoreRequest> for AgentSite<S> {
    async fn save(&self, req: &RestoreRequest) -> Result<(), String> {
        Journal::<RestoreRequest>::save(&self.journal, req).await
    }
}

impl<S: Store> Site for AgentSite<S> {
    async fn target(&self, ns: Option<&str>, name: &str) -> Result<TargetConfig, StepError> {
        resolve_target(&self.store, ns.unwrap_or_default(), name, &self.state_dir).await
    }

    async fn runs(&self, ns: Option<&str>) -> Vec<BackupRun> {
        self.store.list(ns, &[]).await.unwrap_or_default()
    }

    async fn policy(&self, ns: Option<&str>, name: &str) -> Option<BackupPolicySpec> {
        let p: Option<BackupPolicy> = self.store.get(ns, name).await.ok().flatten();
        p.map(|p| p.spec)
    }

    async fn save_finished(&self, run: &BackupRun) -> Result<(), String> {
        self.store
            .apply_status(run, FIELD_MANAGER)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
