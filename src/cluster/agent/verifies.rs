//! Scheduled verifies on the node, and in the kubevirt-worker for KubeVirt chains: the
//! policies of the agent's runs that ask for `verify: {schedule}` get their domains' backups
//! read back from the target when a tick is due (`driver::verify` decides which). A verify is work on the domain like a run: the two
//! never overlap, so a verify does not read a chain an upload is still writing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;
use tracing::{info, warn};

use super::site::AgentSite;
use super::{Agent, Task};
use crate::api::BackupRun;
use crate::cluster::store::{ApiResult, Store};
use crate::driver::verify::due_verifies;
use crate::driver::{verify_due, Site};
use crate::schedule::Schedule;

/// How often the agent looks for due verifies: the schedules count in minutes.
pub(super) const VERIFY_LOOK_EVERY: Duration = Duration::from_secs(30);

impl<S: Store> Agent<S> {
    /// Starts a verify for each domain of this agent's runs (this node's, or the KubeVirt
    /// VMs') whose policy's verify tick is due at `now`, unless other work on the domain is
    /// in flight (it is then due at the next look).
    pub async fn verify_pass(self: &Arc<Self>, now: Timestamp) -> ApiResult<()> {
        let (label, value) = self.selector();
        let sel = [(label, value.as_str())];
        let runs: Vec<BackupRun> = self.store.list(self.cfg.namespace.as_deref(), &sel).await?;
        let mut by_policy: BTreeMap<(String, String), Vec<BackupRun>> = BTreeMap::new();
        for r in runs {
            let finished = r.status.as_ref().is_some_and(|s| s.phase.is_terminal());
            if let (true, Some(p)) = (finished, r.spec.policy_ref.clone()) {
                let ns = r.metadata.namespace.clone().unwrap_or_default();
                by_policy.entry((ns, p)).or_default().push(r);
            }
        }
        let site = AgentSite::new(self.store.clone(), self.cfg.state_dir.clone());
        for ((ns, pname), runs) in by_policy {
            let Some(spec) = site.policy(Some(&ns), &pname).await else {
                continue;
            };
            let Some(v) = spec.verify.as_ref().filter(|_| !spec.suspend) else {
                continue;
            };
            let sched = match Schedule::parse(&v.schedule, spec.time_zone.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(policy = %pname, "spec.verify: {e}");
                    continue;
                }
            };
            let refs: Vec<&BackupRun> = runs.iter().collect();
            for due in due_verifies(&sched, &refs, now) {
                let k = format!("verify/{ns}/{pname}/{}", due.domain);
                let mut tasks = self.tasks.lock().unwrap();
                if tasks.contains_key(&k) || tasks.values().any(|t| t.domain == due.domain) {
                    continue;
                }
                let me = self.clone();
                let (ns, pname, spec, runs) =
                    (ns.clone(), pname.clone(), spec.clone(), runs.clone());
                let domain = due.domain.clone();
                let handle = tokio::spawn(async move {
                    let site = AgentSite::new(me.store.clone(), me.cfg.state_dir.clone());
                    // Only the target is read: no VM, so no libvirt (the kubevirt-worker has
                    // none).
                    let refs: Vec<&BackupRun> = runs.iter().collect();
                    let broken = verify_due(
                        &site,
                        &me.cfg.state_dir,
                        Some(&me.metrics),
                        (Some(&ns), &pname, &spec),
                        &due,
                        &refs,
                    )
                    .await;
                    info!(policy = %pname, domain = %due.domain, tick = %due.tick, broken, "verified");
                });
                tasks.insert(
                    k,
                    Task {
                        domain,
                        cancel: watch::channel(false).0,
                        handle,
                        abort_on_stop: true,
                        staging: None,
                    },
                );
            }
        }
        Ok(())
    }
}
