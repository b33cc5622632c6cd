//! Finding the previous run of a chain among stored runs (pure).

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{BackupMode, BackupPhase, BackupRun, BackupRunStatus};

use super::decide::PreviousRun;

/// The newest successful run of the same domain (by UUID) to the same target, if any.
pub fn previous_run(
    runs: &[BackupRun],
    domain_uuid: &str,
    target_url: &str,
    mode: BackupMode,
    exclude: &str,
) -> Option<PreviousRun> {
    // Image and files backups of a domain are separate chains on the target.
    runs.iter()
        .filter(|r| r.spec.mode == mode && !r.spec.is_local())
        .filter(|r| r.metadata.name.as_deref() != Some(exclude))
        .filter_map(|r| r.status.as_ref().map(|s| (r, s)))
        .filter(|(_, s)| {
            s.phase == BackupPhase::Succeeded
                && s.domain_uuid.as_deref() == Some(domain_uuid)
                && s.target_url.as_deref() == Some(target_url)
        })
        // duplicity's set time first: it grows with every set on a target whatever the clock
        // does (names::next_set_time), where a snapshot time can repeat or go backwards.
        .max_by_key(|(_, s)| (s.target_time, s.snapshot_time.or(s.start_time)))
        .and_then(|(r, s)| {
            let chain = s.chain.clone()?;
            let chain_start = runs
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(chain.as_str()))
                .and_then(|c| c.status.as_ref())
                .and_then(|c| c.snapshot_time.or(c.start_time))
                .or(s.snapshot_time)?;
            Some(PreviousRun {
                name: r.metadata.name.clone().unwrap_or_default(),
                checkpoint: s.checkpoint.clone(),
                chain,
                chain_index: s.chain_index,
                chain_start,
                target_time: s.target_time,
                disks: s
                    .disks
                    .iter()
                    .map(|d| (d.name.clone(), d.virtual_size))
                    .collect(),
            })
        })
}

/// The checkpoints of a domain that no chain needs any more: those of runs that failed, and of
/// successes that a newer success to the same target and mode replaced. A chain needs the
/// newest success of each target and mode, and a run still in progress (this one included)
/// needs its own. Only checkpoints of runs found in `runs` are named: one that another state
/// dir or tool made is never touched.
pub fn stale_checkpoints(
    runs: &[BackupRun],
    domain_uuid: &str,
    this_run: &str,
) -> BTreeSet<String> {
    let ours: Vec<(&BackupRun, &BackupRunStatus)> = runs
        .iter()
        .filter_map(|r| r.status.as_ref().map(|s| (r, s)))
        .filter(|(_, s)| s.domain_uuid.as_deref() == Some(domain_uuid))
        .collect();
    let mut needed = BTreeSet::new();
    let mut newest: BTreeMap<(Option<&str>, BackupMode), &BackupRunStatus> = BTreeMap::new();
    for (r, s) in &ours {
        if !s.phase.is_terminal() || r.metadata.name.as_deref() == Some(this_run) {
            needed.extend(s.checkpoint.clone());
        }
        if s.phase == BackupPhase::Succeeded {
            let key = (s.target_url.as_deref(), r.spec.mode);
            let order = |x: &BackupRunStatus| (x.target_time, x.snapshot_time.or(x.start_time));
            if newest.get(&key).is_none_or(|n| order(s) >= order(n)) {
                newest.insert(key, s);
            }
        }
    }
    needed.extend(newest.values().filter_map(|s| s.checkpoint.clone()));
    ours.iter()
        .filter_map(|(_, s)| s.checkpoint.clone())
        .filter(|cp| !needed.contains(cp))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupRunSpec, BackupRunStatus};

    fn run(
        name: &str,
        phase: BackupPhase,
        uuid: &str,
        url: &str,
        at: &str,
        chain: &str,
        idx: u32,
    ) -> BackupRun {
        let mut r = BackupRun::new(name, BackupRunSpec::new("d", url));
        r.status = Some(BackupRunStatus {
            phase,
            domain_uuid: Some(uuid.into()),
            target_url: Some(url.into()),
            snapshot_time: Some(at.parse().unwrap()),
            chain: Some(chain.into()),
            chain_index: idx,
            checkpoint: Some(format!("snapback-{name}")),
            ..Default::default()
        });
        r
    }

    #[test]
    fn previous_run_is_the_newest_success_of_the_same_domain_and_target() {
        let runs = vec![
            run(
                "a",
                BackupPhase::Succeeded,
                "u1",
                "file:///t",
                "2026-01-01T00:00:00Z",
                "a",
                0,
            ),
            run(
                "b",
                BackupPhase::Succeeded,
                "u1",
                "file:///t",
                "2026-01-02T00:00:00Z",
                "a",
                1,
            ),
            run(
                "c",
                BackupPhase::Failed,
                "u1",
                "file:///t",
                "2026-01-03T00:00:00Z",
                "a",
                2,
            ),
            run(
                "d",
                BackupPhase::Succeeded,
                "u2",
                "file:///t",
                "2026-01-04T00:00:00Z",
                "d",
                0,
            ),
            run(
                "e",
                BackupPhase::Succeeded,
                "u1",
                "file:///other",
                "2026-01-05T00:00:00Z",
                "e",
                0,
            ),
        ];
        let p = previous_run(&runs, "u1", "file:///t", BackupMode::Image, "new").unwrap();
        assert_eq!(p.name, "b");
        assert_eq!(p.chain, "a");
        assert_eq!(p.chain_index, 1);
        assert_eq!(p.chain_start, "2026-01-01T00:00:00Z".parse().unwrap());
        assert!(previous_run(&runs, "u3", "file:///t", BackupMode::Image, "new").is_none());
        assert_eq!(
            previous_run(&runs, "u1", "file:///t", BackupMode::Image, "b")
                .unwrap()
                .name,
            "a",
            "the run itself never counts"
        );
    }

    #[test]
    fn previous_run_follows_the_target_set_time_when_the_clock_went_backwards() {
        let mut first = run(
            "first",
            BackupPhase::Succeeded,
            "u1",
            "file:///t",
            "2026-11-30T00:00:00Z",
            "first",
            0,
        );
        // Taken after `first`, with the clock stepped back by NTP.
        let mut second = run(
            "second",
            BackupPhase::Succeeded,
            "u1",
            "file:///t",
            "2026-11-29T23:00:00Z",
            "first",
            1,
        );
        first.status.as_mut().unwrap().target_time = Some("2026-11-30T00:00:00Z".parse().unwrap());
        second.status.as_mut().unwrap().target_time = Some("2026-11-30T00:00:01Z".parse().unwrap());
        let p = previous_run(
            &[second, first],
            "u1",
            "file:///t",
            BackupMode::Image,
            "new",
        );
        assert_eq!(p.unwrap().name, "second");
    }

    #[test]
    fn stale_checkpoints_are_those_of_failed_and_replaced_runs_of_the_domain() {
        let runs = vec![
            run(
                "a",
                BackupPhase::Succeeded,
                "u1",
                "file:///t",
                "2026-01-01T00:00:00Z",
                "a",
                0,
            ),
            run(
                "b",
                BackupPhase::Succeeded,
                "u1",
                "file:///t",
                "2026-01-02T00:00:00Z",
                "a",
                1,
            ),
            run(
                "c",
                BackupPhase::Failed,
                "u1",
                "file:///t",
                "2026-01-03T00:00:00Z",
                "a",
                2,
            ),
            run(
                "d",
                BackupPhase::Succeeded,
                "u1",
                "file:///o",
                "2026-01-01T00:00:00Z",
                "d",
                0,
            ),
            run(
                "e",
                BackupPhase::Exporting,
                "u1",
                "file:///o",
                "2026-01-04T00:00:00Z",
                "d",
                1,
            ),
            run(
                "f",
                BackupPhase::Failed,
                "u2",
                "file:///t",
                "2026-01-04T00:00:00Z",
                "f",
                0,
            ),
            run(
                "g",
                BackupPhase::Failed,
                "u1",
                "file:///t",
                "2026-01-05T00:00:00Z",
                "a",
                2,
            ),
        ];
        let stale = stale_checkpoints(&runs, "u1", "g");
        let names: Vec<&str> = stale.iter().map(String::as_str).collect();
        // b is the newest success to file:///t, d to file:///o, e is still running, f is
        // another domain's, g is the run asking (it may be resuming).
        assert_eq!(names, ["snapback-a", "snapback-c"]);
    }
}
