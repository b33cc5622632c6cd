//! One reconcile pass over everything in scope: policies (schedules, history, deletion),
//! targets (availability), runs (stale agents) and restores (node assignment). Every write is
//! idempotent, so a pass cut short by a conflict or a crash is simply run again.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use tracing::{debug, warn};

use super::inventory::Inventory;
use super::plan::{condition, plan_policy};
use crate::api::{reason, ConditionType};
use crate::api::{
    set_condition, BackupPhase, BackupPolicy, BackupRun, BackupTarget, RestoreRequest, VirtHost,
};
use crate::cluster::labels;
use crate::cluster::store::{reference, ApiErrorKind, ApiResult, EventType, Store};
use crate::driver::tick::is_active;
use crate::duplicity::TargetUrl;

#[derive(Clone, Debug)]
pub struct PassConfig {
    /// `None`: every namespace.
    pub namespace: Option<String>,
    /// An agent whose heartbeat is older than this is taken to be gone.
    pub heartbeat_timeout_secs: i64,
}

impl Default for PassConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            heartbeat_timeout_secs: 120,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    pub policies: usize,
    pub runs_created: usize,
    pub runs_deleted: usize,
    pub status_writes: usize,
    pub conflicts: usize,
}

fn conflict_or<T>(r: ApiResult<T>, stats: &mut PassStats) -> ApiResult<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is(ApiErrorKind::Conflict) || e.is(ApiErrorKind::NotFound) => {
            // Someone else wrote first (or deleted it): the next pass works from fresh data.
            stats.conflicts += 1;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub async fn pass<S: Store>(store: &S, cfg: &PassConfig, now: Timestamp) -> ApiResult<PassStats> {
    let ns = cfg.namespace.as_deref();
    let policies: Vec<BackupPolicy> = store.list(ns, &[]).await?;
    let targets: Vec<BackupTarget> = store.list(ns, &[]).await?;
    let runs: Vec<BackupRun> = store.list(ns, &[]).await?;
    let restores: Vec<RestoreRequest> = store.list(ns, &[]).await?;
    let hosts: Vec<VirtHost> = store.list(None, &[]).await?;
    let nodes: Vec<Node> = match store.list(None, &[]).await {
        Ok(n) => n,
        Err(e) if e.is(ApiErrorKind::Forbidden) => {
            warn!("cannot list Nodes ({e}); nodeSelectors match no labels");
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let node_labels: BTreeMap<String, BTreeMap<String, String>> = nodes
        .iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap_or_default(),
                n.metadata.labels.clone().unwrap_or_default(),
            )
        })
        .collect();
    let inv = Inventory::build(&hosts, &node_labels, now, cfg.heartbeat_timeout_secs);
    let mut stats = PassStats::default();

    let mut by_policy: BTreeMap<(String, String), Vec<&BackupRun>> = BTreeMap::new();
    for r in &runs {
        if let Some(p) = &r.spec.policy_ref {
            by_policy
                .entry((r.metadata.namespace.clone().unwrap_or_default(), p.clone()))
                .or_default()
                .push(r);
        }
    }

    for t in &targets {
        reconcile_target(store, t, now, &mut stats).await?;
    }

    for p in &policies {
        stats.policies += 1;
        let pns = p.metadata.namespace.clone().unwrap_or_default();
        let pname = p.metadata.name.clone().unwrap_or_default();
        let mine = by_policy
            .remove(&(pns.clone(), pname.clone()))
            .unwrap_or_default();
        if p.metadata.deletion_timestamp.is_some() {
            settle_deleted_policy(store, p, &mine, &mut stats).await?;
            continue;
        }
        let mut p = p.clone();
        if !labels::has_finalizer(&p.metadata, labels::POLICY_FINALIZER) {
            labels::add_finalizer(&mut p.metadata, labels::POLICY_FINALIZER);
            match conflict_or(store.replace(&p).await, &mut stats)? {
                Some(updated) => p = updated,
                None => continue,
            }
        }
        let target = targets.iter().find(|t| {
            t.metadata.name.as_deref() == Some(p.spec.target_ref.as_str())
                && t.metadata.namespace == p.metadata.namespace
        });
        let plan = plan_policy(&p, target, &mine, &inv, now);
        for r in &plan.create {
            match store.create(r).await {
                Ok(_) => stats.runs_created += 1,
                // The deterministic name exists: an earlier pass created it. Nothing to do.
                Err(e) if e.is(ApiErrorKind::AlreadyExists) => {}
                Err(e) => return Err(e),
            }
        }
        for n in &plan.delete {
            store.delete::<BackupRun>(Some(&pns), n).await?;
            stats.runs_deleted += 1;
        }
        if p.status.as_ref() != Some(&plan.status) {
            let mut upd = p.clone();
            upd.status = Some(plan.status.clone());
            if conflict_or(store.replace_status(&upd).await, &mut stats)?.is_some() {
                stats.status_writes += 1;
            }
        }
        let r = reference(&p);
        for (ty, reason, note) in &plan.events {
            if let Err(e) = store.event(&r, *ty, reason, note).await {
                debug!("event not published: {e}");
            }
        }
    }

    for r in runs.iter().filter(|r| is_active(r)) {
        mark_stale_agent(store, r, &inv, now, &mut stats).await?;
    }
    for rr in &restores {
        assign_restore(store, rr, &inv, &mut stats).await?;
    }
    Ok(stats)
}

/// A deleted policy schedules nothing more. Runs that have not started are deleted; runs an
/// agent is working on finish (a half-taken backup helps nobody), and then the policy goes.
/// Finished runs stay: they are the record of backups that still exist on the target.
async fn settle_deleted_policy<S: Store>(
    store: &S,
    p: &BackupPolicy,
    runs: &[&BackupRun],
    stats: &mut PassStats,
) -> ApiResult<()> {
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let mut still_active = 0;
    for r in runs.iter().filter(|r| is_active(r)) {
        let started = labels::has_finalizer(&r.metadata, labels::RUN_FINALIZER)
            || r.status
                .as_ref()
                .is_some_and(|s| s.phase != BackupPhase::Pending);
        if started {
            still_active += 1;
        } else {
            store
                .delete::<BackupRun>(Some(&ns), r.metadata.name.as_deref().unwrap_or_default())
                .await?;
            stats.runs_deleted += 1;
        }
    }
    if still_active == 0 && labels::has_finalizer(&p.metadata, labels::POLICY_FINALIZER) {
        let mut p = p.clone();
        labels::remove_finalizer(&mut p.metadata, labels::POLICY_FINALIZER);
        conflict_or(store.replace(&p).await, stats)?;
    }
    Ok(())
}

async fn reconcile_target<S: Store>(
    store: &S,
    t: &BackupTarget,
    now: Timestamp,
    stats: &mut PassStats,
) -> ApiResult<()> {
    let mut status = t.status.clone().unwrap_or_default();
    let c = match TargetUrl::parse(&t.spec.url) {
        Ok(u) => condition(
            ConditionType::Available,
            true,
            reason::URL_VALID,
            u.redacted(),
            now,
        ),
        Err(e) => condition(
            ConditionType::Available,
            false,
            "TargetInvalid",
            format!("spec.url: {e}"),
            now,
        ),
    };
    set_condition(&mut status.conditions, c);
    status.observed_generation = t.metadata.generation;
    if t.status.as_ref() != Some(&status) {
        let mut upd = t.clone();
        upd.status = Some(status);
        if conflict_or(store.replace_status(&upd).await, stats)?.is_some() {
            stats.status_writes += 1;
        }
    }
    Ok(())
}

/// A run whose agent stopped answering gets `AgentHeartbeatStale`. It is not handed to another
/// node: the old agent may still be mid-backup, and the run must never execute twice. When
/// that agent returns it resumes the run and the condition clears.
async fn mark_stale_agent<S: Store>(
    store: &S,
    r: &BackupRun,
    inv: &Inventory,
    now: Timestamp,
    stats: &mut PassStats,
) -> ApiResult<()> {
    let Some(node) = r.spec.node_name.as_deref() else {
        return Ok(());
    };
    let fresh = inv.host(node).is_some_and(|h| h.fresh);
    let mut status = r.status.clone().unwrap_or_default();
    let had = status
        .conditions
        .iter()
        .any(|c| c.type_ == ConditionType::AgentHeartbeatStale.as_str() && c.status == "True");
    if fresh != had {
        return Ok(());
    }
    let c = if fresh {
        condition(
            ConditionType::AgentHeartbeatStale,
            false,
            reason::HEARTBEAT_FRESH,
            String::new(),
            now,
        )
    } else {
        condition(
            ConditionType::AgentHeartbeatStale,
            true,
            reason::AGENT_NOT_ANSWERING,
            format!("the agent on {node} has not sent a heartbeat; the run waits for it and is never run elsewhere"),
            now,
        )
    };
    set_condition(&mut status.conditions, c);
    let mut upd = r.clone();
    upd.status = Some(status);
    if conflict_or(store.replace_status(&upd).await, stats)?.is_some() {
        stats.status_writes += 1;
        if !fresh {
            let _ = store
                .event(
                    &reference(r),
                    EventType::Warning,
                    "AgentHeartbeatStale",
                    node,
                )
                .await;
        }
    }
    Ok(())
}

/// Gives a RestoreRequest without a node label to an agent: the node that holds the domain
/// (required in place), else the first live node.
async fn assign_restore<S: Store>(
    store: &S,
    rr: &RestoreRequest,
    inv: &Inventory,
    stats: &mut PassStats,
) -> ApiResult<()> {
    let labelled = rr
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(labels::NODE));
    if labelled || rr.status.as_ref().is_some_and(|s| s.phase.is_terminal()) {
        return Ok(());
    }
    let holder = inv
        .hosts
        .iter()
        .filter(|h| h.fresh)
        .find(|h| h.domains.iter().any(|d| d.name == rr.spec.domain));
    let node = match (holder, rr.spec.in_place) {
        (Some(h), _) => h.node.clone(),
        (None, true) => return Ok(()),
        (None, false) => match inv.hosts.iter().find(|h| h.fresh) {
            Some(h) => h.node.clone(),
            None => return Ok(()),
        },
    };
    let mut upd = rr.clone();
    upd.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(labels::NODE.to_string(), labels::label_value(&node));
    if conflict_or(store.replace(&upd).await, stats)?.is_some() {
        let _ = store
            .event(&reference(rr), EventType::Normal, "Assigned", &node)
            .await;
    }
    Ok(())
}
