//! Which VMs are owed a local restore point now (a policy's `localSnapshots.schedule`), for
//! the single-host daemon and the Kubernetes controller alike. Decided purely from the
//! policy's Local runs: each records the tick it answers in the `scheduled-at` annotation, so
//! no other record is kept and a restart neither skips nor repeats a tick. As for backups,
//! after downtime only the newest missed tick is taken: an hour of points taken at once after
//! a day down would all show the same moment.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::api::BackupRun;
use crate::schedule::Schedule;

/// The annotation a scheduled run carries: the tick it was created for.
pub const SCHEDULED_AT: &str = "snapback.dev/scheduled-at";

/// A VM whose local point for `tick` is to be taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalDue {
    pub domain: String,
    pub tick: Timestamp,
}

/// The tick a run was created for, from its annotation.
pub fn scheduled_at(r: &BackupRun) -> Option<Timestamp> {
    r.metadata
        .annotations
        .as_ref()?
        .get(SCHEDULED_AT)?
        .parse()
        .ok()
}

/// The `domains` owed a point at `now`: the schedule's latest tick at or before `now` is
/// after `since` (when the policy was first seen, so ticks from before it are not owed) and
/// after every tick the domain's Local runs in `runs` already answer.
pub fn due_local_points(
    schedule: &Schedule,
    runs: &[&BackupRun],
    domains: &[String],
    since: Timestamp,
    now: Timestamp,
) -> Vec<LocalDue> {
    let Some(tick) = schedule.latest_at_or_before(now) else {
        return Vec::new();
    };
    if tick <= since {
        return Vec::new();
    }
    let mut answered: BTreeMap<&str, Timestamp> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.spec.is_local()) {
        if let Some(t) = scheduled_at(r) {
            let e = answered.entry(r.spec.domain.as_str()).or_insert(t);
            *e = (*e).max(t);
        }
    }
    domains
        .iter()
        .filter(|d| answered.get(d.as_str()).is_none_or(|a| tick > *a))
        .map(|d| LocalDue {
            domain: d.clone(),
            tick,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupRunSpec, RequestedType};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn hourly() -> Schedule {
        Schedule::parse("0 * * * *", None).unwrap()
    }

    fn run(domain: &str, tick: &str, ty: RequestedType) -> BackupRun {
        let mut spec = BackupRunSpec::new(domain, "t");
        spec.type_ = ty;
        let mut r = BackupRun::new(&format!("{domain}-{tick}"), spec);
        r.metadata.annotations = Some([(SCHEDULED_AT.to_string(), tick.to_string())].into());
        r
    }

    fn domains() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn every_domain_without_a_point_for_the_latest_tick_is_owed_one() {
        let a = run("a", "2026-01-01T10:00:00Z", RequestedType::Local);
        let due = due_local_points(
            &hourly(),
            &[&a],
            &domains(),
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T10:30:00Z"),
        );
        assert_eq!(
            due,
            vec![LocalDue {
                domain: "b".into(),
                tick: t("2026-01-01T10:00:00Z")
            }]
        );
    }

    #[test]
    fn a_tick_already_answered_is_not_owed_again_after_a_restart() {
        let a = run("a", "2026-01-01T10:00:00Z", RequestedType::Local);
        let b = run("b", "2026-01-01T10:00:00Z", RequestedType::Local);
        for now in ["2026-01-01T10:00:00Z", "2026-01-01T10:59:59Z"] {
            let due = due_local_points(
                &hourly(),
                &[&a, &b],
                &domains(),
                t("2026-01-01T00:00:00Z"),
                t(now),
            );
            assert!(due.is_empty(), "at {now}: {due:?}");
        }
    }

    #[test]
    fn after_downtime_only_the_newest_missed_tick_is_owed() {
        let a = run("a", "2026-01-01T03:00:00Z", RequestedType::Local);
        let due = due_local_points(
            &hourly(),
            &[&a],
            &["a".into()],
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T09:10:00Z"),
        );
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].tick, t("2026-01-01T09:00:00Z"));
    }

    #[test]
    fn ticks_from_before_the_policy_was_first_seen_are_not_owed() {
        let due = due_local_points(
            &hourly(),
            &[],
            &domains(),
            t("2026-01-01T10:20:00Z"),
            t("2026-01-01T10:40:00Z"),
        );
        assert!(due.is_empty());
    }

    #[test]
    fn a_backup_run_for_the_same_tick_does_not_answer_a_local_tick() {
        let backup = run("a", "2026-01-01T10:00:00Z", RequestedType::Auto);
        let due = due_local_points(
            &hourly(),
            &[&backup],
            &["a".into()],
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T10:30:00Z"),
        );
        assert_eq!(due.len(), 1);
    }
}
