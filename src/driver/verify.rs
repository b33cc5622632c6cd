//! Scheduled verifies (a policy's `verify: {schedule}`), for the single-host daemon and the
//! node agent alike. Which domains are due is decided purely from the policy's runs: a
//! domain's newest successful run carries the verify tick last answered for it
//! (`lastVerifyTick`), so no other record is kept and a restart neither skips nor repeats a
//! tick. The verdicts go on the runs of the points checked, as a `Verified` condition.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::api::{reason, set_condition, BackupPhase, BackupRun, Condition, ConditionType};
use crate::error::StepError;
use crate::restore::verify::PointCheck;
use crate::schedule::Schedule;

/// A domain whose backups the verify schedule wants read back now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyDue {
    pub domain: String,
    /// The verify tick this answers.
    pub tick: Timestamp,
    /// The domain's newest successful run: it records the tick.
    pub newest: String,
}

fn is_expired(r: &BackupRun) -> bool {
    r.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == ConditionType::Expired.as_str() && c.status == "True")
    })
}

/// The domains of one policy's `runs` that are due for a verify at `now`: those whose newest
/// successful, unexpired run finished before the schedule's latest tick and has not answered
/// that tick yet. A tick from before the newest backup finished is not owed: that backup is
/// checked at the next one.
pub fn due_verifies(schedule: &Schedule, runs: &[&BackupRun], now: Timestamp) -> Vec<VerifyDue> {
    let Some(tick) = schedule.latest_at_or_before(now) else {
        return Vec::new();
    };
    let mut newest: BTreeMap<&str, (&BackupRun, Timestamp)> = BTreeMap::new();
    for r in runs.iter().copied() {
        let Some(s) = r.status.as_ref() else { continue };
        let Some(done) = s.completion_time else {
            continue;
        };
        if s.phase != BackupPhase::Succeeded || is_expired(r) || r.spec.is_local() {
            continue;
        }
        let e = newest.entry(r.spec.domain.as_str()).or_insert((r, done));
        if done > e.1 {
            *e = (r, done);
        }
    }
    newest
        .into_iter()
        .filter_map(|(domain, (r, done))| {
            let answered = r.status.as_ref().and_then(|s| s.last_verify_tick);
            let since = answered.map_or(done, |a| a.max(done));
            (tick > since).then(|| VerifyDue {
                domain: domain.to_string(),
                tick,
                newest: r.metadata.name.clone().unwrap_or_default(),
            })
        })
        .collect()
}

fn verdict(c: &PointCheck, now: Timestamp) -> Condition {
    match &c.broken {
        None => Condition::at(
            ConditionType::Verified,
            true,
            reason::READ_BACK_OK,
            "every export of this point's chain matched its SHA-256 and passed qemu-img check"
                .into(),
            None,
            now,
        ),
        Some(e) => Condition::at(
            ConditionType::Verified,
            false,
            e.reason.as_str(),
            e.message.clone(),
            None,
            now,
        ),
    }
}

/// The runs a verify's outcome changes: each checked point's run gets its `Verified`
/// condition; the newest run records the tick, and when the target could not be read at all
/// it also gets `Verified=False` with that reason (no point was checked).
pub fn record_verify(
    runs: &[&BackupRun],
    due: &VerifyDue,
    outcome: &Result<Vec<PointCheck>, StepError>,
    now: Timestamp,
) -> Vec<BackupRun> {
    let mut changed: BTreeMap<String, BackupRun> = BTreeMap::new();
    let mut set = |name: &str, c: Option<Condition>, tick: Option<Timestamp>| {
        if !changed.contains_key(name) {
            let Some(r) = runs
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(name))
            else {
                return;
            };
            changed.insert(name.to_string(), (*r).clone());
        }
        let Some(s) = changed.get_mut(name).and_then(|r| r.status.as_mut()) else {
            return;
        };
        if let Some(c) = c {
            set_condition(&mut s.conditions, c);
        }
        if tick.is_some() {
            s.last_verify_tick = tick;
        }
    };
    match outcome {
        Ok(checks) => {
            for c in checks {
                // A set whose manifest cannot be read names no run: its duplicity time does.
                let by_time = || {
                    runs.iter()
                        .find(|r| {
                            let t = r.status.as_ref().and_then(|s| s.target_time);
                            t.is_some_and(|t| t.as_second() == c.set_time.as_second())
                        })
                        .and_then(|r| r.metadata.name.clone())
                };
                if let Some(name) = c.run.clone().or_else(by_time) {
                    set(&name, Some(verdict(c, now)), None);
                }
            }
        }
        Err(e) => {
            let c = Condition::at(
                ConditionType::Verified,
                false,
                e.reason.as_str(),
                format!("the target could not be read back: {}", e.message),
                None,
                now,
            );
            set(&due.newest, Some(c), None);
        }
    }
    set(&due.newest, None, Some(due.tick));
    changed.into_values().collect()
}

/// How many points a verify found broken; a target that could not be read counts as one.
pub fn broken_count(outcome: &Result<Vec<PointCheck>, StepError>) -> usize {
    match outcome {
        Ok(checks) => checks.iter().filter(|c| !c.ok()).count(),
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupRunSpec, BackupRunStatus, FailureReason};
    use kube::api::ObjectMeta;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn run(name: &str, domain: &str, phase: BackupPhase, done: &str) -> BackupRun {
        BackupRun {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: BackupRunSpec::new(domain, "t"),
            status: Some(BackupRunStatus {
                phase,
                completion_time: Some(ts(done)),
                ..Default::default()
            }),
        }
    }

    fn hourly() -> Schedule {
        Schedule::parse("0 * * * *", None).unwrap()
    }

    fn check(run: &str, broken: bool) -> PointCheck {
        PointCheck {
            set_time: ts("2026-01-01T00:00:00Z"),
            time: ts("2026-01-01T00:00:00Z"),
            full: true,
            run: Some(run.into()),
            broken: broken.then(|| {
                StepError::new(FailureReason::VerificationFailed, "vda: checksum differs")
            }),
        }
    }

    #[test]
    fn a_domain_is_due_once_a_tick_passes_after_its_newest_success() {
        let a = run("a", "web", BackupPhase::Succeeded, "2026-01-01T10:05:00Z");
        let b = run("b", "web", BackupPhase::Succeeded, "2026-01-01T10:20:00Z");
        let runs = [&a, &b];
        assert!(due_verifies(&hourly(), &runs, ts("2026-01-01T10:59:00Z")).is_empty());
        let due = due_verifies(&hourly(), &runs, ts("2026-01-01T11:00:00Z"));
        assert_eq!(
            due,
            vec![VerifyDue {
                domain: "web".into(),
                tick: ts("2026-01-01T11:00:00Z"),
                newest: "b".into()
            }]
        );
    }

    #[test]
    fn a_tick_already_answered_is_not_due_again_and_the_next_one_is() {
        let mut b = run("b", "web", BackupPhase::Succeeded, "2026-01-01T10:20:00Z");
        b.status.as_mut().unwrap().last_verify_tick = Some(ts("2026-01-01T11:00:00Z"));
        let runs = [&b];
        assert!(due_verifies(&hourly(), &runs, ts("2026-01-01T11:30:00Z")).is_empty());
        assert_eq!(
            due_verifies(&hourly(), &runs, ts("2026-01-01T12:00:00Z")).len(),
            1
        );
    }

    #[test]
    fn failed_unfinished_and_expired_runs_are_not_verified() {
        let f = run("f", "a", BackupPhase::Failed, "2026-01-01T10:00:00Z");
        let mut u = run("u", "b", BackupPhase::Uploading, "2026-01-01T10:00:00Z");
        u.status.as_mut().unwrap().completion_time = None;
        let mut e = run("e", "c", BackupPhase::Succeeded, "2026-01-01T10:00:00Z");
        let gone = Condition::at(
            ConditionType::Expired,
            true,
            reason::PRUNED,
            String::new(),
            None,
            ts("2026-01-01T10:30:00Z"),
        );
        e.status.as_mut().unwrap().conditions.push(gone);
        assert!(due_verifies(&hourly(), &[&f, &u, &e], ts("2026-01-02T00:00:00Z")).is_empty());
    }

    #[test]
    fn each_domain_is_due_on_its_own() {
        let a = run("a", "web", BackupPhase::Succeeded, "2026-01-01T10:05:00Z");
        let b = run("b", "db", BackupPhase::Succeeded, "2026-01-01T11:05:00Z");
        let due = due_verifies(&hourly(), &[&a, &b], ts("2026-01-01T11:10:00Z"));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].domain, "web");
    }

    #[test]
    fn verdicts_go_on_the_checked_runs_and_the_tick_on_the_newest() {
        let a = run("a", "web", BackupPhase::Succeeded, "2026-01-01T10:05:00Z");
        let b = run("b", "web", BackupPhase::Succeeded, "2026-01-01T10:20:00Z");
        let due = VerifyDue {
            domain: "web".into(),
            tick: ts("2026-01-01T11:00:00Z"),
            newest: "b".into(),
        };
        let out = record_verify(
            &[&a, &b],
            &due,
            &Ok(vec![check("a", true), check("b", false)]),
            ts("2026-01-01T11:01:00Z"),
        );
        assert_eq!(out.len(), 2);
        let get = |n: &str| out.iter().find(|r| r.metadata.name.as_deref() == Some(n));
        let cond = |r: &BackupRun| r.status.as_ref().unwrap().conditions[0].clone();
        let ca = cond(get("a").unwrap());
        assert_eq!(
            (ca.status.as_str(), ca.reason.as_str()),
            ("False", "VerificationFailed")
        );
        let rb = get("b").unwrap();
        assert_eq!(cond(rb).status, "True");
        assert_eq!(rb.status.as_ref().unwrap().last_verify_tick, Some(due.tick));
        assert_eq!(
            get("a").unwrap().status.as_ref().unwrap().last_verify_tick,
            None
        );
    }

    #[test]
    fn a_set_whose_manifest_cannot_be_read_is_matched_to_its_run_by_time() {
        let mut b = run("b", "web", BackupPhase::Succeeded, "2026-01-01T10:20:00Z");
        b.status.as_mut().unwrap().target_time = Some(ts("2026-01-01T00:00:00Z"));
        let due = VerifyDue {
            domain: "web".into(),
            tick: ts("2026-01-01T11:00:00Z"),
            newest: "b".into(),
        };
        let mut c = check("gone", true);
        c.run = None;
        let out = record_verify(&[&b], &due, &Ok(vec![c]), ts("2026-01-01T11:01:00Z"));
        let s = out[0].status.as_ref().unwrap();
        assert_eq!(s.conditions[0].status, "False");
        assert_eq!(s.last_verify_tick, Some(due.tick));
    }

    #[test]
    fn a_target_that_cannot_be_read_is_a_false_verdict_on_the_newest_run() {
        let b = run("b", "web", BackupPhase::Succeeded, "2026-01-01T10:20:00Z");
        let due = VerifyDue {
            domain: "web".into(),
            tick: ts("2026-01-01T11:00:00Z"),
            newest: "b".into(),
        };
        let err = Err(StepError::new(FailureReason::TargetUnreachable, "no route"));
        let out = record_verify(&[&b], &due, &err, ts("2026-01-01T11:01:00Z"));
        assert_eq!(out.len(), 1);
        let s = out[0].status.as_ref().unwrap();
        assert_eq!(s.conditions[0].reason, "TargetUnreachable");
        assert_eq!(s.last_verify_tick, Some(due.tick));
        assert_eq!(broken_count(&err), 1);
    }
}
