//! One look at a policy's schedule, decided purely, for the Kubernetes controller and the
//! single-host daemon alike: which domains get a run for which tick, which active runs the
//! new tick replaces, which runs fall beyond the history limits, and how the policy's status
//! changes. The callers create and delete the runs.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::api::{reason, ConditionType};
use crate::api::{
    set_condition, BackupPhase, BackupPolicySpec, BackupPolicyStatus, BackupRun, ConcurrencyPolicy,
    Condition,
};
use crate::schedule::{due, Schedule};

/// Something worth telling the user about a tick (a Kubernetes Event, or a line on stderr).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickPlan {
    /// The tick the new runs are for.
    pub tick: Option<Timestamp>,
    /// Domains that get a run for `tick`.
    pub start: Vec<String>,
    /// Active runs the new tick replaces (`concurrencyPolicy: Replace`): cancelled and removed.
    pub replace: Vec<String>,
    /// Finished runs beyond the history limits: removed.
    pub history: Vec<String>,
    /// The status fields the tick sets.
    pub last_schedule_time: Option<Timestamp>,
    pub next_schedule_time: Option<Timestamp>,
    /// Ticks that will never run, to add to `missedSchedules`.
    pub missed: u64,
    pub notices: Vec<Notice>,
}

impl TickPlan {
    /// Writes the plan's schedule fields into the policy's status.
    pub fn apply(&self, st: &mut BackupPolicyStatus) {
        if let Some(t) = self.last_schedule_time {
            st.last_schedule_time = Some(t.to_string());
        }
        st.next_schedule_time = self.next_schedule_time.map(|t| t.to_string());
        st.missed_schedules += self.missed;
    }
}

/// What the tick planner looks at.
pub struct TickInput<'a> {
    pub spec: &'a BackupPolicySpec,
    pub schedule: &'a Schedule,
    pub status: &'a BackupPolicyStatus,
    /// Where owed ticks start when no tick was ever scheduled: the policy's creation.
    pub since: Timestamp,
    /// The domains the policy selects now, where a run can be started.
    pub domains: &'a [String],
    /// The policy's runs, in any phase.
    pub runs: &'a [&'a BackupRun],
    /// False while runs cannot start (the target is missing): the tick waits for it.
    pub can_run: bool,
    pub now: Timestamp,
}

fn phase(r: &BackupRun) -> BackupPhase {
    r.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn finished_at(r: &BackupRun) -> Option<Timestamp> {
    r.status
        .as_ref()
        .and_then(|s| s.completion_time.or(s.start_time))
}

/// A run that has not ended and is not being deleted.
pub fn is_active(r: &BackupRun) -> bool {
    !phase(r).is_terminal() && r.metadata.deletion_timestamp.is_none()
}

fn name(r: &BackupRun) -> String {
    r.metadata.name.clone().unwrap_or_default()
}

pub fn plan_tick(i: &TickInput<'_>) -> TickPlan {
    let spec = i.spec;
    let mut plan = TickPlan {
        history: history_deletions(
            i.runs,
            spec.successful_runs_history_limit,
            spec.failed_runs_history_limit,
        ),
        ..Default::default()
    };
    let since = i
        .status
        .last_schedule_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .unwrap_or(i.since);
    let d = due(i.schedule, since, i.now, spec.starting_deadline_seconds);
    plan.next_schedule_time = d.next.filter(|_| !spec.suspend);
    if spec.suspend || !i.can_run {
        return plan;
    }
    let Some(latest) = d.latest else {
        return plan;
    };
    plan.last_schedule_time = Some(latest);
    plan.missed += u64::from(d.missed);
    if d.deadline_passed {
        plan.notices.push(Notice {
            warning: true,
            reason: "MissedSchedule",
            message: format!("the tick at {latest} is past startingDeadlineSeconds; skipped"),
        });
    } else if d.missed > 0 {
        plan.notices.push(Notice {
            warning: false,
            reason: "CatchUp",
            message: format!(
                "{} missed tick(s); running only the newest, {latest}",
                d.missed
            ),
        });
    }
    let Some(tick) = d.tick else {
        return plan;
    };
    plan.tick = Some(tick);
    for domain in i.domains {
        let active: Vec<&BackupRun> = i
            .runs
            .iter()
            .copied()
            .filter(|r| r.spec.domain == *domain && is_active(r) && !r.spec.is_local())
            .collect();
        if let Some(first) = active.first() {
            match spec.concurrency_policy {
                ConcurrencyPolicy::Forbid => {
                    plan.missed += 1;
                    plan.notices.push(Notice {
                        warning: true,
                        reason: "ConcurrentRunActive",
                        message: format!(
                            "{domain}: {} is still running; tick {tick} skipped (Forbid)",
                            name(first)
                        ),
                    });
                    continue;
                }
                ConcurrencyPolicy::Replace => plan.replace.extend(active.iter().map(|r| name(r))),
                ConcurrencyPolicy::Allow => {}
            }
        }
        plan.start.push(domain.clone());
    }
    plan
}

/// The outcome of the policy's runs so far, whatever its spec says now: the
/// `LastRunSucceeded` condition and `lastSuccessfulTime`.
pub fn record_outcomes(st: &mut BackupPolicyStatus, runs: &[&BackupRun], now: Timestamp) {
    // Local points are not backups: `lastSuccessfulTime` says when a backup last reached the
    // target, which is what an alert on it is for.
    let runs: Vec<&BackupRun> = runs
        .iter()
        .copied()
        .filter(|r| !r.spec.is_local())
        .collect();
    let newest_done = runs
        .iter()
        .filter(|r| matches!(phase(r), BackupPhase::Succeeded | BackupPhase::Failed))
        .max_by_key(|r| finished_at(r));
    if let Some(r) = newest_done {
        let failure = r.status.as_ref().and_then(|s| s.failure.as_ref());
        let c = match failure {
            Some(f) if phase(r) == BackupPhase::Failed => Condition::at(
                ConditionType::LastRunSucceeded,
                false,
                f.reason.as_str(),
                format!("{}: {}", name(r), f.message),
                None,
                now,
            ),
            _ => Condition::at(
                ConditionType::LastRunSucceeded,
                true,
                reason::SUCCEEDED,
                name(r),
                None,
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
    let recorded = st
        .last_successful_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok());
    if let Some(t) = last_ok.max(recorded) {
        st.last_successful_time = Some(t.to_string());
    }
}

/// Runs beyond the history limits, newest kept. The newest successful run of each domain and
/// the run holding its chain's full are never deleted: the next incremental is planned from
/// them.
pub fn history_deletions(runs: &[&BackupRun], succeeded: u32, failed: u32) -> Vec<String> {
    // Local points are counted apart: counted with the backups, hourly points would push the
    // runs a chain continues from out of the history. A live point's run stays as long as
    // the point; those of expired and failed points are kept by the same limits.
    let (local, backups): (Vec<&BackupRun>, Vec<&BackupRun>) =
        runs.iter().copied().partition(|r| r.spec.is_local());
    let ended_points: Vec<&BackupRun> = local.into_iter().filter(|r| !is_live_point(r)).collect();
    let mut out = beyond_limits(&backups, succeeded, failed);
    out.extend(beyond_limits(&ended_points, succeeded, failed));
    out
}

/// A local point's run whose snapshot still exists.
fn is_live_point(r: &BackupRun) -> bool {
    phase(r) == BackupPhase::Succeeded
        && !r.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == ConditionType::Expired.as_str() && c.status == "True")
        })
}

fn beyond_limits(runs: &[&BackupRun], succeeded: u32, failed: u32) -> Vec<String> {
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
            let n = name(r);
            if !protected.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupRunSpec, BackupRunStatus};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn run(name: &str, domain: &str, phase: BackupPhase, done: &str) -> BackupRun {
        let spec: BackupRunSpec =
            serde_json::from_value(serde_json::json!({"domain": domain, "targetRef": "t"}))
                .unwrap();
        let mut r = BackupRun::new(name, spec);
        r.status = Some(BackupRunStatus {
            phase,
            completion_time: Some(t(done)),
            chain: Some(name.into()),
            ..Default::default()
        });
        r
    }

    fn hourly() -> Schedule {
        Schedule::parse("0 * * * *", None).unwrap()
    }

    fn spec(c: ConcurrencyPolicy) -> BackupPolicySpec {
        let mut s: BackupPolicySpec = serde_json::from_value(serde_json::json!({
            "schedule": "0 * * * *",
            "targetRef": "t",
            "domainSelector": {"names": ["a", "b"]},
        }))
        .unwrap();
        s.concurrency_policy = c;
        s.successful_runs_history_limit = 3;
        s.failed_runs_history_limit = 1;
        s
    }

    /// Plans the 10:00 tick for domains a and b, with `runs` and the given policy.
    fn plan_at_ten(spec: &BackupPolicySpec, runs: &[&BackupRun]) -> TickPlan {
        let status = BackupPolicyStatus {
            last_schedule_time: Some("2026-01-01T09:00:00Z".into()),
            ..Default::default()
        };
        plan_tick(&TickInput {
            spec,
            schedule: &hourly(),
            status: &status,
            since: t("2026-01-01T00:00:00Z"),
            domains: &["a".to_string(), "b".to_string()],
            runs,
            can_run: true,
            now: t("2026-01-01T10:00:05Z"),
        })
    }

    #[test]
    fn each_concurrency_policy_treats_a_domain_with_an_active_run_its_own_way() {
        let mut active = run("a-old", "a", BackupPhase::Uploading, "2026-01-01T09:30:00Z");
        active.status.as_mut().unwrap().completion_time = None;
        let runs = [&active];
        // (policy, domains started, runs replaced, missed ticks)
        let table = [
            (ConcurrencyPolicy::Allow, vec!["a", "b"], vec![], 0),
            (ConcurrencyPolicy::Forbid, vec!["b"], vec![], 1),
            (ConcurrencyPolicy::Replace, vec!["a", "b"], vec!["a-old"], 0),
        ];
        for (c, start, replace, missed) in table {
            let p = plan_at_ten(&spec(c), &runs);
            assert_eq!(p.tick, Some(t("2026-01-01T10:00:00Z")), "{c:?}");
            assert_eq!(p.start, start, "{c:?}");
            assert_eq!(p.replace, replace, "{c:?}");
            assert_eq!(p.missed, missed, "{c:?}");
        }
    }

    #[test]
    fn a_finished_run_does_not_block_the_next_tick_even_under_forbid() {
        let done = run("a-old", "a", BackupPhase::Failed, "2026-01-01T09:30:00Z");
        let p = plan_at_ten(&spec(ConcurrencyPolicy::Forbid), &[&done]);
        assert_eq!(p.start, ["a", "b"]);
        assert_eq!(p.missed, 0);
    }

    #[test]
    fn a_suspended_policy_or_a_missing_target_starts_nothing_and_keeps_the_tick_owed() {
        let mut s = spec(ConcurrencyPolicy::Allow);
        s.suspend = true;
        let p = plan_at_ten(&s, &[]);
        assert!(p.start.is_empty() && p.tick.is_none());
        assert_eq!(p.last_schedule_time, None, "the tick stays owed");
        assert_eq!(p.next_schedule_time, None, "suspended: no next time shown");

        let status = BackupPolicyStatus::default();
        let p = plan_tick(&TickInput {
            spec: &spec(ConcurrencyPolicy::Allow),
            schedule: &hourly(),
            status: &status,
            since: t("2026-01-01T09:30:00Z"),
            domains: &["a".to_string()],
            runs: &[],
            can_run: false,
            now: t("2026-01-01T10:00:05Z"),
        });
        assert!(p.start.is_empty());
        assert_eq!(p.last_schedule_time, None);
        assert_eq!(p.next_schedule_time, Some(t("2026-01-01T11:00:00Z")));
    }

    #[test]
    fn history_keeps_the_newest_runs_per_limit_and_never_the_chain_a_next_incremental_needs() {
        let full = run("full", "a", BackupPhase::Succeeded, "2026-01-01T01:00:00Z");
        let mut incs: Vec<BackupRun> = (2..=6)
            .map(|h| {
                run(
                    &format!("inc{h}"),
                    "a",
                    BackupPhase::Succeeded,
                    &format!("2026-01-01T0{h}:00:00Z"),
                )
            })
            .collect();
        for r in &mut incs {
            r.status.as_mut().unwrap().chain = Some("full".into());
        }
        let f1 = run("f1", "a", BackupPhase::Failed, "2026-01-01T07:00:00Z");
        let f2 = run("f2", "a", BackupPhase::Failed, "2026-01-01T08:00:00Z");
        let mut all: Vec<&BackupRun> = vec![&full, &f1, &f2];
        all.extend(incs.iter());
        let mut gone = history_deletions(&all, 2, 1);
        gone.sort();
        // Kept: inc6 and inc5 (limit 2), the full (inc6's chain), f2 (limit 1).
        assert_eq!(gone, ["f1", "inc2", "inc3", "inc4"]);
    }

    fn local(name: &str, domain: &str, done: &str) -> BackupRun {
        let mut r = run(name, domain, BackupPhase::Succeeded, done);
        r.spec.type_ = crate::api::RequestedType::Local;
        r.status.as_mut().unwrap().chain = None;
        r
    }

    #[test]
    fn hourly_local_points_never_push_a_chains_runs_out_of_the_history() {
        let full = run("full", "a", BackupPhase::Succeeded, "2026-01-01T01:00:00Z");
        let mut inc = run("inc", "a", BackupPhase::Succeeded, "2026-01-01T02:00:00Z");
        inc.status.as_mut().unwrap().chain = Some("full".into());
        let points: Vec<BackupRun> = (3..=9)
            .map(|h| local(&format!("lp{h}"), "a", &format!("2026-01-01T0{h}:00:00Z")))
            .collect();
        let mut all: Vec<&BackupRun> = vec![&full, &inc];
        all.extend(points.iter());
        assert!(history_deletions(&all, 1, 1).is_empty());
    }

    #[test]
    fn the_runs_of_expired_points_go_by_the_history_limits_and_live_ones_stay() {
        let mut points: Vec<BackupRun> = (1..=4)
            .map(|h| local(&format!("lp{h}"), "a", &format!("2026-01-01T0{h}:00:00Z")))
            .collect();
        for p in &mut points[..3] {
            p.status.as_mut().unwrap().conditions.push(Condition::at(
                ConditionType::Expired,
                true,
                reason::LOCAL_POINT_EXPIRED,
                String::new(),
                None,
                t("2026-01-02T00:00:00Z"),
            ));
        }
        let all: Vec<&BackupRun> = points.iter().collect();
        let mut gone = history_deletions(&all, 1, 1);
        gone.sort();
        // lp4 is live; of the expired lp1..lp3 the newest (lp3) is kept by the limit of 1.
        assert_eq!(gone, ["lp1", "lp2"]);
    }

    #[test]
    fn a_local_point_is_not_the_policys_last_successful_backup() {
        let ok = run("ok", "a", BackupPhase::Succeeded, "2026-01-01T01:00:00Z");
        let lp = local("lp", "a", "2026-01-01T02:00:00Z");
        let mut st = BackupPolicyStatus::default();
        record_outcomes(&mut st, &[&ok, &lp], t("2026-01-01T03:00:00Z"));
        assert_eq!(
            st.last_successful_time.as_deref(),
            Some("2026-01-01T01:00:00Z")
        );
        assert_eq!(st.conditions[0].message, "ok");
    }

    #[test]
    fn outcomes_name_the_newest_finished_run_and_never_move_last_success_back() {
        let ok = run("ok", "a", BackupPhase::Succeeded, "2026-01-01T01:00:00Z");
        let mut bad = run("bad", "a", BackupPhase::Failed, "2026-01-01T02:00:00Z");
        bad.status.as_mut().unwrap().failure = Some(crate::api::Failure {
            reason: crate::api::FailureReason::UploadFailed,
            message: "gone".into(),
        });
        let mut st = BackupPolicyStatus {
            last_successful_time: Some("2026-01-01T00:30:00Z".into()),
            ..Default::default()
        };
        record_outcomes(&mut st, &[&ok, &bad], t("2026-01-01T03:00:00Z"));
        let c = &st.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "UploadFailed")
        );
        assert_eq!(
            st.last_successful_time.as_deref(),
            Some("2026-01-01T01:00:00Z")
        );
        let mut later = BackupPolicyStatus {
            last_successful_time: Some("2026-02-01T00:00:00Z".into()),
            ..Default::default()
        };
        record_outcomes(&mut later, &[&ok], t("2026-01-01T03:00:00Z"));
        assert_eq!(
            later.last_successful_time.as_deref(),
            Some("2026-02-01T00:00:00Z")
        );
    }
}
