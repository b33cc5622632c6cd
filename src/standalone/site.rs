//! The single host as the driver's site: records in the state dir, targets from the command
//! line or the config dir, policies from the config dir.

use std::future::Future;

use crate::api::{BackupPolicySpec, BackupRun, RestoreRequest};
use crate::driver::Site;
use crate::duplicity::TargetConfig;
use crate::error::StepError;
use crate::lifecycle::Journal;
use crate::store::FileStore;

use super::config::Config;

/// Where a single-host run's target comes from.
pub enum Targets<'a> {
    /// The one target of a command line, already resolved (or why it could not be).
    Given(Box<Result<TargetConfig, StepError>>),
    /// The BackupTargets of a config dir, their secrets read from files.
    Config(&'a Config),
}

pub struct LocalSite<'a> {
    pub store: &'a FileStore,
    pub targets: Targets<'a>,
}

impl Journal<BackupRun> for LocalSite<'_> {
    fn save(&self, run: &BackupRun) -> impl Future<Output = Result<(), String>> + Send {
        Journal::<BackupRun>::save(self.store, run)
    }
}

impl Journal<RestoreRequest> for LocalSite<'_> {
    fn save(&self, req: &RestoreRequest) -> impl Future<Output = Result<(), String>> + Send {
        Journal::<RestoreRequest>::save(self.store, req)
    }
}

impl Site for LocalSite<'_> {
    async fn target(&self, _ns: Option<&str>, name: &str) -> Result<TargetConfig, StepError> {
        match &self.targets {
            Targets::Given(t) => t.as_ref().clone(),
            Targets::Config(cfg) => {
                let t = cfg.target(name).ok_or_else(|| {
                    StepError::new(
                        crate::api::FailureReason::TargetInvalid,
                        format!("BackupTarget '{name}' is not in the config dir"),
                    )
                })?;
                crate::driver::target::target_config(t, self.store.root())
            }
        }
    }

    async fn runs(&self, _ns: Option<&str>) -> Vec<BackupRun> {
        self.store.backup_runs().unwrap_or_default()
    }

    async fn policy(&self, _ns: Option<&str>, name: &str) -> Option<BackupPolicySpec> {
        match &self.targets {
            Targets::Given(_) => None,
            Targets::Config(cfg) => cfg.policy(name).map(|p| p.spec.clone()),
        }
    }

    async fn save_finished(&self, run: &BackupRun) -> Result<(), String> {
        let name = run.metadata.name.clone().unwrap_or_default();
        self.store
            .write("backupruns", &name, run)
            .map_err(|e| e.to_string())
    }
}
