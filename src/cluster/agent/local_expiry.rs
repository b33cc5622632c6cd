//! Local restore points on the node: every look, the points of this node's domains that
//! their policy's rules let go are deleted (`Driver::expire_local`), unless other work on the
//! domain is in flight (they are then due at the next look).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tracing::{info, warn};

use super::site::AgentSite;
use super::{Agent, Host};
use crate::api::BackupRun;
use crate::cluster::store::{ApiResult, Store};
use crate::driver::{Driver, Site};

impl<S: Store> Agent<S> {
    pub async fn expiry_pass(self: &Arc<Self>, now: Timestamp) -> ApiResult<()> {
        let Host::Libvirt(host) = &self.host else {
            return Ok(());
        };
        let (label, value) = self.selector();
        let sel = [(label, value.as_str())];
        let runs: Vec<BackupRun> = self.store.list(self.cfg.namespace.as_deref(), &sel).await?;
        // (namespace, policy, domain) of every Local run here: the policy's points of that
        // domain are its to expire.
        let mut of: BTreeSet<(String, String, String)> = BTreeSet::new();
        for r in runs.iter().filter(|r| r.spec.is_local()) {
            if let Some(p) = &r.spec.policy_ref {
                let ns = r.metadata.namespace.clone().unwrap_or_default();
                of.insert((ns, p.clone(), r.spec.domain.clone()));
            }
        }
        let site = AgentSite::new(self.store.clone(), self.cfg.state_dir.clone());
        let driver = Driver {
            host,
            state_dir: &self.cfg.state_dir,
            poll: Duration::from_millis(500),
            metrics: Some(&self.metrics),
        };
        for (ns, pname, domain) in of {
            let busy = self
                .tasks
                .lock()
                .unwrap()
                .values()
                .any(|t| t.domain == domain && !t.handle.is_finished());
            if busy {
                continue;
            }
            let Some(spec) = site.policy(Some(&ns), &pname).await else {
                continue;
            };
            match driver
                .expire_local(&site, Some(&ns), &pname, &spec, &domain, now)
                .await
            {
                Ok(gone) if !gone.is_empty() => {
                    info!(policy = %pname, domain = %domain, points = ?gone, "local points expired")
                }
                Ok(_) => {}
                Err(e) => warn!(policy = %pname, domain = %domain, "{}: {}", e.reason, e.message),
            }
        }
        Ok(())
    }
}
