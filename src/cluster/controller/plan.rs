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
    Condition, VmRef,
};
use crate::cluster::labels;
use crate::cluster::store::cut_to_bytes;
use crate::cluster::EventType;
use crate::driver::local::local_settings;
use crate::driver::local_due::due_local_points;
use crate::driver::tick::{history_deletions, plan_tick, record_outcomes, TickInput};
use crate::kubevirt::eligible::Selection;
use crate::schedule::{local_run_name, run_name, Schedule};

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
    if s.virtual_machine_selector.is_some() {
        kubevirt_limits(s)?;
    }
    if let Some(v) = &s.verify {
        Schedule::parse(&v.schedule, s.time_zone.as_deref()).map_err(|e| format!("verify.{e}"))?;
    }
    if let Some(l) = &s.local_snapshots {
        if s.virtual_machine_selector.is_some() {
            return Err("localSnapshots is not built for KubeVirt VMs yet (VirtualMachineSnapshots); it works for libvirt domains (domainSelector)".into());
        }
        local_settings(l, s.time_zone.as_deref())?;
    }
    if s.starting_deadline_seconds.is_some_and(|d| d < 0) {
        return Err("startingDeadlineSeconds must not be negative".into());
    }
    Ok(sched)
}

/// What KubeVirt's backup API has no way to do: a policy that asks for it is refused rather
/// than half honoured. KubeVirt freezes the guest through its agent by itself.
fn kubevirt_limits(s: &crate::api::BackupPolicySpec) -> Result<(), String> {
    let h = &s.hooks;
    let hooks = [
        &h.pre_snapshot,
        &h.on_snapshot,
        &h.post_snapshot,
        &h.pre_recovery,
        &h.end_recovery,
        &h.post_recovery,
    ];
    if hooks.iter().any(|v| !v.is_empty()) {
        return Err("hooks are not supported for KubeVirt VMs: KubeVirt's backup API runs no commands in the guest (it freezes the filesystems through the guest agent itself)".into());
    }
    if s.consistency.pause {
        return Err("consistency.pause is not supported for KubeVirt VMs: KubeVirt's backup API cannot pause a VM".into());
    }
    if s.mode == crate::api::BackupMode::Files {
        return Err("mode: Files is not supported for KubeVirt VMs".into());
    }
    Ok(())
}

/// Where a run goes: a node's agent (a libvirt domain), or the kubevirt-worker (a VM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runner {
    Node(String),
    KubeVirt(VmRef),
}

/// The Local runs the policy's `localSnapshots.schedule` owes now, for the domains on nodes.
/// A point needs no target, so a missing one does not hold them up.
fn local_runs(
    p: &BackupPolicy,
    runs: &[&BackupRun],
    runners: &BTreeMap<String, Runner>,
    now: Timestamp,
) -> Vec<BackupRun> {
    let Some(l) = p.spec.local_snapshots.as_ref().filter(|_| !p.spec.suspend) else {
        return Vec::new();
    };
    let Ok(settings) = local_settings(l, p.spec.time_zone.as_deref()) else {
        return Vec::new();
    };
    let on_nodes: Vec<String> = runners
        .iter()
        .filter(|(_, r)| matches!(r, Runner::Node(_)))
        .map(|(d, _)| d.clone())
        .collect();
    let since = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    due_local_points(&settings.schedule, runs, &on_nodes, since, now)
        .into_iter()
        .map(|due| {
            let mut run = new_run(p, &due.domain, &runners[&due.domain], due.tick);
            run.spec.type_ = crate::api::RequestedType::Local;
            let pname = p.metadata.name.clone().unwrap_or_default();
            run.metadata.name = Some(local_run_name(&pname, &due.domain, due.tick));
            run
        })
        .collect()
}

fn new_run(p: &BackupPolicy, domain: &str, runner: &Runner, tick: Timestamp) -> BackupRun {
    let pname = p.metadata.name.clone().unwrap_or_default();
    let mut spec = BackupRunSpec::from_policy(&pname, &p.spec, domain);
    let mut lab = BTreeMap::new();
    lab.insert(labels::POLICY.to_string(), labels::label_value(&pname));
    match runner {
        Runner::Node(node) => {
            spec.node_name = Some(node.to_string());
            lab.insert(labels::NODE.to_string(), labels::label_value(node));
        }
        Runner::KubeVirt(vm) => {
            spec.virtual_machine = Some(vm.clone());
            lab.insert(labels::KUBEVIRT.to_string(), "true".into());
        }
    }
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

/// A policy whose spec cannot be acted on: `Ready=False InvalidSpec`, no schedule; the
/// history limits still hold.
fn invalid(
    mut plan: PolicyPlan,
    p: &BackupPolicy,
    runs: &[&BackupRun],
    e: String,
    now: Timestamp,
) -> PolicyPlan {
    let st = &mut plan.status;
    set_condition(
        &mut st.conditions,
        condition(ConditionType::Ready, false, "InvalidSpec", e.clone(), now),
    );
    st.next_schedule_time = None;
    plan.events.push((EventType::Warning, "InvalidSpec", e));
    plan.delete = history_deletions(
        runs,
        p.spec.successful_runs_history_limit,
        p.spec.failed_runs_history_limit,
    );
    plan
}

/// The `KubeVirtReady` condition: true when every selected VM can be backed up now, else
/// the first reason and every VM that cannot, with why.
fn kubevirt_ready(sel: &Selection, now: Timestamp) -> Condition {
    if let Some(why) = &sel.unavailable {
        return condition(
            ConditionType::KubeVirtReady,
            false,
            crate::kubevirt::eligible::KUBEVIRT_NOT_FOUND,
            why.clone(),
            now,
        );
    }
    match sel.not_ready.first() {
        None => condition(
            ConditionType::KubeVirtReady,
            true,
            reason::ALL_VMS_READY,
            format!("{} VM(s) ready", sel.ready.len()),
            now,
        ),
        Some(first) => {
            let all: Vec<String> = sel
                .not_ready
                .iter()
                .map(|n| format!("{}: {} ({})", n.vm.key(), n.message, n.reason))
                .collect();
            let message = cut_to_bytes(&all.join("; "), 1024).to_string();
            condition(
                ConditionType::KubeVirtReady,
                false,
                first.reason,
                message,
                now,
            )
        }
    }
}

/// `runs` are this policy's runs (any phase).
pub fn plan_policy(
    p: &BackupPolicy,
    target: Option<&BackupTarget>,
    runs: &[&BackupRun],
    inv: &Inventory,
    vms: Option<&Result<Selection, String>>,
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
        Err(e) => return invalid(plan, p, runs, e, now),
    };

    let mut notes = Vec::new();
    let mut runners: BTreeMap<String, Runner> = BTreeMap::new();
    if p.spec.virtual_machine_selector.is_some() {
        let sel = match vms {
            Some(Ok(sel)) => sel,
            Some(Err(e)) => {
                return invalid(plan, p, runs, format!("virtualMachineSelector: {e}"), now)
            }
            None => &Selection::default(),
        };
        for vm in &sel.ready {
            runners.insert(vm.key(), Runner::KubeVirt(vm.clone()));
        }
        st.matched_domains = runners.keys().cloned().collect();
        let kv = kubevirt_ready(sel, now);
        let changed = st
            .conditions
            .iter()
            .find(|c| c.type_ == kv.type_)
            .is_none_or(|c| c.status != kv.status || c.message != kv.message);
        if changed && kv.status == "False" {
            plan.events
                .push((EventType::Warning, "KubeVirtNotReady", kv.message.clone()));
        }
        set_condition(&mut st.conditions, kv);
    } else {
        let matching = match_domains(&p.spec, inv);
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
        for (d, n) in matching.assigned {
            runners.insert(d, Runner::Node(n));
        }
        st.matched_domains = runners.keys().cloned().collect();
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

    let domains: Vec<String> = runners.keys().cloned().collect();
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
    plan.create.extend(local_runs(p, runs, &runners, now));
    if let Some(at) = tick.tick {
        for domain in &tick.start {
            let runner = &runners[domain];
            let run = new_run(p, domain, runner, at);
            let by = match runner {
                Runner::Node(node) => format!("on {node}"),
                Runner::KubeVirt(_) => "through KubeVirt".into(),
            };
            plan.events.push((
                EventType::Normal,
                "RunCreated",
                format!(
                    "{} for {domain} {by}",
                    run.metadata.name.clone().unwrap_or_default()
                ),
            ));
            plan.create.push(run);
        }
    }
    plan
}

#[cfg(test)]
mod local_tests {
    use super::*;
    use crate::api::{HostDomain, RequestedType};
    use crate::cluster::controller::inventory::HostEntry;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn policy(extra: serde_json::Value) -> BackupPolicy {
        let mut spec = serde_json::json!({
            "domainSelector": {"names": ["web"]},
            "targetRef": "t",
            "schedule": "0 3 * * *",
            "localSnapshots": {
                "schedule": "0 * * * *",
                "expire": [{"match": "* * * * *", "after": "1d"}],
            },
        });
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let mut p = BackupPolicy::new("pol", serde_json::from_value(spec).unwrap());
        p.metadata.namespace = Some("ns".into());
        p.metadata.creation_timestamp = Some(Time(t("2026-12-01T00:00:00Z")));
        p
    }

    fn inventory() -> Inventory {
        Inventory {
            hosts: vec![HostEntry {
                node: "n1".into(),
                labels: BTreeMap::new(),
                heartbeat: Some(t("2026-12-01T10:29:00Z")),
                fresh: true,
                domains: vec![HostDomain {
                    name: "web".into(),
                    uuid: "u".into(),
                    state: "Running".into(),
                    ..Default::default()
                }],
            }],
        }
    }

    #[test]
    fn a_policys_local_tick_creates_a_local_run_on_the_domains_node_even_without_a_target() {
        let p = policy(serde_json::json!({}));
        let plan = plan_policy(&p, None, &[], &inventory(), None, t("2026-12-01T10:30:00Z"));
        let local: Vec<&BackupRun> = plan.create.iter().filter(|r| r.spec.is_local()).collect();
        assert_eq!(local.len(), 1, "{:?}", plan.create);
        let r = local[0];
        assert_eq!(r.spec.type_, RequestedType::Local);
        assert_eq!(r.spec.node_name.as_deref(), Some("n1"));
        assert_eq!(r.metadata.name.as_deref(), Some("pol-web-20261201-1000-lp"));
        assert_eq!(
            crate::driver::local_due::scheduled_at(r),
            Some(t("2026-12-01T10:00:00Z"))
        );
        // Answered: the next pass in the same hour creates nothing.
        let plan = plan_policy(
            &p,
            None,
            &[r],
            &inventory(),
            None,
            t("2026-12-01T10:45:00Z"),
        );
        assert!(!plan.create.iter().any(|r| r.spec.is_local()));
    }

    #[test]
    fn local_points_are_refused_for_kubevirt_vms_and_bad_rules_are_named() {
        let mut p = policy(serde_json::json!({}));
        p.spec.domain_selector = Default::default();
        p.spec.virtual_machine_selector = Some(Default::default());
        assert!(validate(&p).unwrap_err().contains("KubeVirt"));
        let p = policy(serde_json::json!({"localSnapshots": {
            "schedule": "0 * * * *",
            "expire": [{"match": "sometimes", "after": "1d"}],
        }}));
        assert!(validate(&p)
            .unwrap_err()
            .contains("localSnapshots.expire[0]"));
    }
}
