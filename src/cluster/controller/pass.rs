//! One reconcile pass over everything in scope: policies (schedules, history, deletion),
//! targets (availability), runs (stale agents) and restores (node assignment). Every write is
//! idempotent, so a pass cut short by a conflict or a crash is simply run again.
//!
//! A failure on one object is that object's: it is logged, counted, published as a Warning
//! Event on it (and on a policy recorded as its `Ready` condition), and the pass goes on with
//! the others, so one broken policy never stops the schedules of all. Only a failed list ends
//! a pass early, since without it there is nothing to work from.

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
use crate::cluster::store::{
    cut_to_bytes, reference, ApiError, ApiErrorKind, ApiResult, EventType, Object, Store,
};
use crate::driver::tick::is_active;
use crate::duplicity::TargetUrl;

#[derive(Clone, Debug)]
pub struct PassConfig {
    /// `None`: every namespace.
    pub namespace: Option<String>,
    /// An agent whose heartbeat is older than this is taken to be gone.
    pub heartbeat_timeout_secs: i64,
    /// The namespace snapback runs in: only its policies may select VMs of other namespaces.
    pub own_namespace: Option<String>,
}

impl Default for PassConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            heartbeat_timeout_secs: 120,
            own_namespace: None,
        }
    }
}

/// The reason word of a policy's `Ready=False` condition and of the Warning Event on any
/// object whose reconcile failed in a pass.
pub const RECONCILE_FAILED: &str = "ReconcileFailed";
/// The reason word of the Warning Event on a stored object that does not decode.
pub const UNDECODABLE: &str = "Undecodable";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    pub policies: usize,
    pub runs_created: usize,
    pub runs_deleted: usize,
    pub status_writes: usize,
    pub conflicts: usize,
    /// Objects whose reconcile failed in this pass (each one logged and reported on itself).
    pub errors: usize,
    /// Listed objects that do not decode into their type, skipped and reported.
    pub undecodable: usize,
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

/// The objects of kind `K`, those that decode; each one that does not is counted and gets a
/// Warning Event (the list already logged it), so whoever broke it learns which and why.
async fn listed<S: Store, K: Object>(
    store: &S,
    ns: Option<&str>,
    stats: &mut PassStats,
) -> ApiResult<Vec<K>> {
    let l = store
        .listing::<K>(ns, &[])
        .await
        .map_err(|e| e.context(format!("cannot list {}s", K::kind(&()))))?;
    stats.undecodable += l.undecodable.len();
    for u in &l.undecodable {
        let note = format!(
            "snapback cannot read this {}, and skips it until it is fixed: {}",
            u.kind, u.error
        );
        if let Err(e) = store
            .event(&u.reference(), EventType::Warning, UNDECODABLE, &note)
            .await
        {
            debug!("event not published: {e}");
        }
    }
    Ok(l.items)
}

pub async fn pass<S: Store>(store: &S, cfg: &PassConfig, now: Timestamp) -> ApiResult<PassStats> {
    let ns = cfg.namespace.as_deref();
    let mut stats = PassStats::default();
    let policies: Vec<BackupPolicy> = listed(store, ns, &mut stats).await?;
    let targets: Vec<BackupTarget> = listed(store, ns, &mut stats).await?;
    let runs: Vec<BackupRun> = listed(store, ns, &mut stats).await?;
    let restores: Vec<RestoreRequest> = listed(store, ns, &mut stats).await?;
    let hosts: Vec<VirtHost> = listed(store, None, &mut stats).await?;
    let nodes: Vec<Node> = match listed(store, None, &mut stats).await {
        Ok(n) => n,
        Err(e) if e.is(ApiErrorKind::Forbidden) => {
            warn!("{e}; nodeSelectors match no labels");
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
        if let Err(e) = reconcile_target(store, t, now, &mut stats).await {
            report_failure(store, t, &e, &mut stats).await;
        }
    }

    // KubeVirt is read only when a policy selects VMs.
    let kv_world = if policies
        .iter()
        .any(|p| p.spec.virtual_machine_selector.is_some())
    {
        Some(super::kubevirt::World::read(store, ns, &policies).await)
    } else {
        None
    };

    for p in &policies {
        stats.policies += 1;
        let pns = p.metadata.namespace.clone().unwrap_or_default();
        let pname = p.metadata.name.clone().unwrap_or_default();
        let mine = by_policy.remove(&(pns, pname)).unwrap_or_default();
        let vms = match (&kv_world, &p.spec.virtual_machine_selector) {
            (Some(w), Some(sel)) => Some(w.select(p, sel, cfg.own_namespace.as_deref(), now)),
            _ => None,
        };
        let mut p = p.clone();
        let seen = Seen {
            targets: &targets,
            inv: &inv,
            vms: vms.as_ref(),
        };
        let done = reconcile_policy(store, &mut p, &mine, &seen, now, &mut stats).await;
        if let Err(e) = done {
            record_policy_failure(store, &p, &e, now, &mut stats).await;
        }
    }

    for r in runs.iter().filter(|r| is_active(r)) {
        if let Err(e) = mark_stale_agent(store, r, &inv, now, &mut stats).await {
            report_failure(store, r, &e, &mut stats).await;
        }
    }
    for rr in &restores {
        if let Err(e) = assign_restore(store, rr, &inv, &mut stats).await {
            report_failure(store, rr, &e, &mut stats).await;
        }
    }
    Ok(stats)
}

/// What a policy's plan is made from, beside the policy and its runs.
struct Seen<'a> {
    targets: &'a [BackupTarget],
    inv: &'a Inventory,
    vms: Option<&'a Result<crate::kubevirt::eligible::Selection, String>>,
}

/// A failure on one object: logged, counted, and published as a Warning Event on it.
async fn report_failure<S: Store, K: Object>(
    store: &S,
    obj: &K,
    e: &ApiError,
    stats: &mut PassStats,
) {
    stats.errors += 1;
    let m = obj.meta();
    warn!(
        kind = %K::kind(&()),
        namespace = m.namespace.as_deref().unwrap_or(""),
        name = m.name.as_deref().unwrap_or(""),
        "not reconciled in this pass: {e}"
    );
    let note = e.to_string();
    if let Err(e) = store
        .event(&reference(obj), EventType::Warning, RECONCILE_FAILED, &note)
        .await
    {
        debug!("event not published: {e}");
    }
}

/// A policy's failure is also its `Ready=False` condition, written onto the status as it was
/// read: the planned status is not written when its runs could not be, so the tick it
/// consumed is tried again by the next pass. The condition only changes when the failure
/// does, so a failure that lasts is one write, not one per pass.
async fn record_policy_failure<S: Store>(
    store: &S,
    p: &BackupPolicy,
    e: &ApiError,
    now: Timestamp,
    stats: &mut PassStats,
) {
    report_failure(store, p, e, stats).await;
    let mut status = p.status.clone().unwrap_or_default();
    let message = cut_to_bytes(&e.to_string(), 1024).to_string();
    set_condition(
        &mut status.conditions,
        condition(ConditionType::Ready, false, RECONCILE_FAILED, message, now),
    );
    if p.status.as_ref() == Some(&status) {
        return;
    }
    let mut upd = p.clone();
    upd.status = Some(status);
    match store.replace_status(&upd).await {
        Ok(_) => stats.status_writes += 1,
        Err(e) => debug!("the failure is not recorded on the policy: {e}"),
    }
}

/// One policy: its finalizer, the runs its plan creates and deletes, its status and Events.
/// `p` is kept the newest version written, for `record_policy_failure`.
async fn reconcile_policy<S: Store>(
    store: &S,
    p: &mut BackupPolicy,
    mine: &[&BackupRun],
    seen: &Seen<'_>,
    now: Timestamp,
    stats: &mut PassStats,
) -> ApiResult<()> {
    let pns = p.metadata.namespace.clone().unwrap_or_default();
    if p.metadata.deletion_timestamp.is_some() {
        return settle_deleted_policy(store, p, mine, stats).await;
    }
    if !labels::has_finalizer(&p.metadata, labels::POLICY_FINALIZER) {
        labels::add_finalizer(&mut p.metadata, labels::POLICY_FINALIZER);
        let added = store
            .replace(&*p)
            .await
            .map_err(|e| e.context("adding the finalizer"));
        match conflict_or(added, stats)? {
            Some(updated) => *p = updated,
            None => return Ok(()),
        }
    }
    let target = seen.targets.iter().find(|t| {
        t.metadata.name.as_deref() == Some(p.spec.target_ref.as_str())
            && t.metadata.namespace == p.metadata.namespace
    });
    let plan = plan_policy(p, target, mine, seen.inv, seen.vms, now);
    for r in &plan.create {
        match store.create(r).await {
            Ok(_) => stats.runs_created += 1,
            // The deterministic name exists: an earlier pass created it. Nothing to do.
            Err(e) if e.is(ApiErrorKind::AlreadyExists) => {}
            Err(e) => {
                let name = r.metadata.name.as_deref().unwrap_or_default();
                return Err(e.context(format!("creating BackupRun {name}")));
            }
        }
    }
    for n in &plan.delete {
        store
            .delete::<BackupRun>(Some(&pns), n)
            .await
            .map_err(|e| e.context(format!("deleting BackupRun {n}")))?;
        stats.runs_deleted += 1;
    }
    if p.status.as_ref() != Some(&plan.status) {
        let mut upd = p.clone();
        upd.status = Some(plan.status.clone());
        let written = store
            .replace_status(&upd)
            .await
            .map_err(|e| e.context("writing the status"));
        if let Some(updated) = conflict_or(written, stats)? {
            stats.status_writes += 1;
            *p = updated;
        }
    }
    let r = reference(&*p);
    for (ty, reason, note) in &plan.events {
        if let Err(e) = store.event(&r, *ty, reason, note).await {
            debug!("event not published: {e}");
        }
    }
    Ok(())
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
            let name = r.metadata.name.as_deref().unwrap_or_default();
            store
                .delete::<BackupRun>(Some(&ns), name)
                .await
                .map_err(|e| e.context(format!("deleting BackupRun {name}")))?;
            stats.runs_deleted += 1;
        }
    }
    if still_active == 0 && labels::has_finalizer(&p.metadata, labels::POLICY_FINALIZER) {
        let mut p = p.clone();
        labels::remove_finalizer(&mut p.metadata, labels::POLICY_FINALIZER);
        let removed = store
            .replace(&p)
            .await
            .map_err(|e| e.context("removing the finalizer"));
        conflict_or(removed, stats)?;
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
/// (required in place, and for a files restore, whose directory is on that node), else the
/// first live node.
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
    let needs_holder = rr.spec.in_place || rr.spec.files.is_some();
    let node = match (holder, needs_holder) {
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
