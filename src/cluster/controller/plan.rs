//! One policy's reconcile, decided purely: from the policy, its target, its runs, the
//! inventory and the time, which runs to create and delete and what the status becomes.
//! The caller (`pass.rs`) does the I/O.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::api::ObjectMeta;

use super::inventory::{match_domains, Inventory};
use crate::api::{reason, ConditionType};
use crate::api::{
    set_condition, BackupPolicy, BackupPolicyStatus, BackupRun, BackupRunSpec, BackupTarget,
    Condition,
};
use crate::cluster::labels;
use crate::cluster::EventType;
use crate::driver::tick::{history_deletions, plan_tick, record_outcomes, TickInput};
use crate::schedule::{run_name, Schedule};

#[derive(Debug, Default)]
pub struct PolicyPlan {
    pub create: Vec<BackupRun>,
    /// Names of runs to delete (Replace concurrency, history limits).
    pub delete: Vec<String>,
    pub status: BackupPolicyStatus,
    pub events: Vec<(EventType, &'static str, String)>,
}

pub fn condition(
    type_: ConditionType,
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
    if let Some(v) = &s.verify {
        Schedule::parse(&v.schedule, s.time_zone.as_deref()).map_err(|e| format!("verify.{e}"))?;
    }
    if s.starting_deadline_seconds.is_some_and(|d| d < 0) {
        return Err("startingDeadlineSeconds must not be negative".into());
    }
    Ok(sched)
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
    record_outcomes(st, runs, now);

    // The target: present, and not reported unavailable.
    let target_ok = match target {
        None => condition(
            ConditionType::TargetAvailable,
            false,
            reason::TARGET_NOT_FOUND,
            format!("BackupTarget '{}' not found", p.spec.target_ref),
            now,
        ),
        Some(t) => match t.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == ConditionType::Available.as_str())
        }) {
            Some(c) if c.status == "False" => condition(
                ConditionType::TargetAvailable,
                false,
                &c.reason,
                c.message.clone(),
                now,
            ),
            _ => condition(
                ConditionType::TargetAvailable,
                true,
                reason::FOUND,
                String::new(),
                now,
            ),
        },
    };
    let have_target = target_ok.status == "True";
    set_condition(&mut st.conditions, target_ok);

    let sched = match validate(p) {
        Ok(s) => s,
        Err(e) => {
            set_condition(
                &mut st.conditions,
                condition(ConditionType::Ready, false, "InvalidSpec", e.clone(), now),
            );
            st.next_schedule_time = None;
            plan.events.push((EventType::Warning, "InvalidSpec", e));
            // History limits still hold while the spec is broken.
            plan.delete = history_deletions(
                runs,
                p.spec.successful_runs_history_limit,
                p.spec.failed_runs_history_limit,
            );
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
            ConditionType::Ready,
            false,
            reason::TARGET_NOT_FOUND,
            "the target is not available".into(),
            now,
        )
    } else if p.spec.suspend {
        condition(
            ConditionType::Ready,
            true,
            reason::SUSPENDED,
            notes.join("; "),
            now,
        )
    } else {
        condition(
            ConditionType::Ready,
            true,
            reason::SCHEDULED,
            notes.join("; "),
            now,
        )
    };
    set_condition(&mut st.conditions, ready);

    let nodes: BTreeMap<&str, &str> = matching
        .assigned
        .iter()
        .map(|(d, n)| (d.as_str(), n.as_str()))
        .collect();
    let domains: Vec<String> = nodes.keys().map(|d| d.to_string()).collect();
    let tick = plan_tick(&TickInput {
        spec: &p.spec,
        schedule: &sched,
        status: st,
        since: p
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(now),
        domains: &domains,
        runs,
        can_run: have_target,
        now,
    });
    tick.apply(st);
    plan.delete = tick.history.clone();
    plan.delete.extend(tick.replace.iter().cloned());
    for n in &tick.notices {
        let ty = if n.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        plan.events.push((ty, n.reason, n.message.clone()));
    }
    if let Some(at) = tick.tick {
        for domain in &tick.start {
            let node = nodes[domain.as_str()];
            let run = new_run(p, domain, node, at);
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
    }
    plan
}
