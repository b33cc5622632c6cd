//! One policy's reconcile, decided purely: from the policy, its target, its runs, the
//! inventory and the time, which runs to create and delete and what the status becomes.
//! The caller (`pass.rs`) does the I/O.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::api::ObjectMeta;

use super::inventory::{match_domains, Inventory};
use crate::api::{
    set_condition, BackupPhase, BackupPolicy, BackupPolicyStatus, BackupRun, BackupRunSpec,
    BackupTarget, ConcurrencyPolicy, Condition,
};
use crate::cluster::labels;
use crate::cluster::EventType;
use crate::schedule::{due, run_name, Schedule};

#[derive(Debug, Default)]
pub struct PolicyPlan {
    pub create: Vec<BackupRun>,
    /// Names of runs to delete (Replace concurrency, history limits).
    pub delete: Vec<String>,
    pub status: BackupPolicyStatus,
    pub events: Vec<(EventType, &'static str, String)>,
}

pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Condition {
    Condition::at(type_, ok, reason, message, None, now)
}

/// Everything about a policy the API schema cannot check. The first problem is returned.
pub fn validate(p: &BackupPolicy) -> Result<Schedule, String> {
    let s = &p.spec;
    let sched = Schedule::parse(&s.schedule, s.time_zone.as_deref())?;
    if !s.retention.is_unset() {
        s.retention.validate().map_err(|e| e.to_string())?;
    }
    if let Some(f) = &s.full_cadence.full_every {
        crate::units::parse_duration(f).map_err(|e| format!("fullCadence.fullEvery: {e}"))?;
    }
    if s.starting_deadline_seconds.is_some_and(|d| d < 0) {
        return Err("startingDeadlineSeconds must not be negative".into());
    }
    Ok(sched)
}

fn phase(r: &BackupRun) -> BackupPhase {
    r.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn finished_at(r: &BackupRun) -> Option<Timestamp> {
    r.status
        .as_ref()
        .and_then(|s| s.completion_time.or(s.start_time))
}

pub fn is_active(r: &BackupRun) -> bool {
    !phase(r).is_terminal() && r.metadata.deletion_timestamp.is_none()
}

fn new_run(p: &BackupPolicy, domain: &str, node: &str, tick: Timestamp) -> BackupRun {
    let pname = p.metadata.name.clone().unwrap_or_default();
    let mut spec = BackupRunSpec::from_policy(&pname, &p.spec, domain);
    spec.node_name = Some(node.to_string());
    let mut lab = BTreeMap::new();
    lab.insert(labels::POLICY.to_string(), labels::label_value(&pname));
    lab.insert(labels::NODE.to_string(), labels::label_value(node));
    let mut ann = BTreeMap::new();
    ann.insert("snapback.dev/scheduled-at".to_string(), tick.to_string());
    BackupRun {
        metadata: ObjectMeta {
            name: Some(run_name(&pname, domain, tick)),
            namespace: p.metadata.namespace.clone(),
            labels: Some(lab),
            annotations: Some(ann),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// Runs beyond the history limits, newest kept. The newest successful run of each domain and
/// the run holding its chain's full are never deleted: the next incremental is planned from
/// them.
pub fn history_deletions(runs: &[&BackupRun], succeeded: u32, failed: u32) -> Vec<String> {
    let mut protected: Vec<String> = Vec::new();
    let mut newest: BTreeMap<&str, &BackupRun> = BTreeMap::new();
    for r in runs.iter().filter(|r| phase(r) == BackupPhase::Succeeded) {
        let e = newest.entry(r.spec.domain.as_str()).or_insert(r);
        if finished_at(r) > finished_at(e) {
            *e = r;
        }
    }
    for r in newest.values() {
        protected.extend(r.metadata.name.clone());
        protected.extend(r.status.as_ref().and_then(|s| s.chain.clone()));
    }
    let mut out = Vec::new();
    for (want, limit) in [
        (BackupPhase::Succeeded, succeeded),
        (BackupPhase::Failed, failed),
    ] {
        let mut of: Vec<&&BackupRun> = runs
            .iter()
            .filter(|r| {
                phase(r) == want
                    || (want == BackupPhase::Succeeded && phase(r) == BackupPhase::Skipped)
            })
            .collect();
        of.sort_by_key(|r| std::cmp::Reverse(finished_at(r)));
        for r in of.into_iter().skip(limit as usize) {
            let n = r.metadata.name.clone().unwrap_or_default();
            if !protected.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

/// `runs` are this policy's runs (any phase).
pub fn plan_policy(
    p: &BackupPolicy,
    target: Option<&BackupTarget>,
    runs: &[&BackupRun],
    inv: &Inventory,
    now: Timestamp,
) -> PolicyPlan {
    let mut plan = PolicyPlan {
        status: p.status.clone().unwrap_or_default(),
        ..Default::default()
    };
    let st = &mut plan.status;
    st.observed_generation = p.metadata.generation;

    // Outcome of the runs so far, whatever the spec says now.
    let newest_done = runs
        .iter()
        .filter(|r| matches!(phase(r), BackupPhase::Succeeded | BackupPhase::Failed))
        .max_by_key(|r| finished_at(r));
    if let Some(r) = newest_done {
        let s = r.status.as_ref();
        let c = match s.and_then(|s| s.failure.as_ref()) {
            Some(f) if phase(r) == BackupPhase::Failed => condition(
                "LastRunSucceeded",
                false,
                f.reason.as_str(),
                format!(
                    "{}: {}",
                    r.metadata.name.clone().unwrap_or_default(),
                    f.message
                ),
                now,
            ),
            _ => condition(
                "LastRunSucceeded",
                true,
                "Succeeded",
                r.metadata.name.clone().unwrap_or_default(),
                now,
            ),
        };
        set_condition(&mut st.conditions, c);
    }
    let last_ok = runs
        .iter()
        .filter(|r| phase(r) == BackupPhase::Succeeded)
        .filter_map(|r| finished_at(r))
        .max();
    let prev_ok = st
        .last_successful_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok());
    if let Some(t) = last_ok.max(prev_ok) {
        st.last_successful_time = Some(t.to_string());
    }

    // The target: present, and not reported unavailable.
    let target_ok = match target {
        None => condition(
            "TargetAvailable",
            false,
            "TargetNotFound",
            format!("BackupTarget '{}' not found", p.spec.target_ref),
            now,
        ),
        Some(t) => match t
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Available"))
        {
            Some(c) if c.status == "False" => {
                condition("TargetAvailable", false, &c.reason, c.message.clone(), now)
            }
            _ => condition("TargetAvailable", true, "Found", String::new(), now),
        },
    };
    let have_target = target_ok.status == "True";
    set_condition(&mut st.conditions, target_ok);

    plan.delete = history_deletions(
        runs,
        p.spec.successful_runs_history_limit,
        p.spec.failed_runs_history_limit,
    );

    let sched = match validate(p) {
        Ok(s) => s,
        Err(e) => {
            set_condition(
                &mut st.conditions,
                condition("Ready", false, "InvalidSpec", e.clone(), now),
            );
            st.next_schedule_time = None;
            plan.events.push((EventType::Warning, "InvalidSpec", e));
            return plan;
        }
    };

    let matching = match_domains(&p.spec, inv);
    st.matched_domains = matching.assigned.iter().map(|(d, _)| d.clone()).collect();
    let mut notes = Vec::new();
    if !matching.missing.is_empty() {
        notes.push(format!(
            "not found on any host: {}",
            matching.missing.join(", ")
        ));
    }
    if !matching.unreachable.is_empty() {
        notes.push(format!(
            "only on hosts whose agent is not answering: {}",
            matching.unreachable.join(", ")
        ));
    }
    let ready = if !have_target {
        condition(
            "Ready",
            false,
            "TargetNotFound",
            "the target is not available".into(),
            now,
        )
    } else if p.spec.suspend {
        condition("Ready", true, "Suspended", notes.join("; "), now)
    } else {
        condition("Ready", true, "Scheduled", notes.join("; "), now)
    };
    set_condition(&mut st.conditions, ready);

    let since = st
        .last_schedule_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .or_else(|| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let d = due(&sched, since, now, p.spec.starting_deadline_seconds);
    st.next_schedule_time = if p.spec.suspend {
        None
    } else {
        d.next.map(|t| t.to_string())
    };
    if p.spec.suspend || !have_target {
        return plan;
    }
    let Some(latest) = d.latest else {
        return plan;
    };
    st.last_schedule_time = Some(latest.to_string());
    st.missed_schedules += u64::from(d.missed);
    if d.deadline_passed {
        plan.events.push((
            EventType::Warning,
            "MissedSchedule",
            format!("the tick at {latest} is past startingDeadlineSeconds; skipped"),
        ));
    }
    if d.missed > 0 && !d.deadline_passed {
        plan.events.push((
            EventType::Normal,
            "CatchUp",
            format!(
                "{} missed tick(s); running only the newest, {latest}",
                d.missed
            ),
        ));
    }
    let Some(tick) = d.tick else {
        return plan;
    };
    for (domain, node) in &matching.assigned {
        let active: Vec<&&BackupRun> = runs
            .iter()
            .filter(|r| r.spec.domain == *domain && is_active(r))
            .collect();
        if !active.is_empty() {
            match p.spec.concurrency_policy {
                ConcurrencyPolicy::Forbid => {
                    st.missed_schedules += 1;
                    plan.events.push((
                        EventType::Warning,
                        "ConcurrentRunActive",
                        format!(
                            "{domain}: {} is still running; tick {tick} skipped (Forbid)",
                            active[0].metadata.name.clone().unwrap_or_default()
                        ),
                    ));
                    continue;
                }
                ConcurrencyPolicy::Replace => {
                    for r in active {
                        plan.delete.extend(r.metadata.name.clone());
                    }
                }
                ConcurrencyPolicy::Allow => {}
            }
        }
        let run = new_run(p, domain, node, tick);
        plan.events.push((
            EventType::Normal,
            "RunCreated",
            format!(
                "{} for {domain} on {node}",
                run.metadata.name.clone().unwrap_or_default()
            ),
        ));
        plan.create.push(run);
    }
    plan
}
