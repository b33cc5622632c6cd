//! Choosing the restore point and its chain (pure).

use jiff::Timestamp;

use crate::catalog::manifest::Manifest;
use crate::catalog::points::{needs_damaged, DamagedSet};

/// One restorable point on the target.
#[derive(Clone, Debug, PartialEq)]
pub struct RestorePoint {
    /// duplicity's time of the backup set (what `restore --time` takes).
    pub set_time: Timestamp,
    pub full: bool,
    /// The set time of the chain's full.
    pub chain_start: Timestamp,
    pub manifest: Manifest,
}

impl RestorePoint {
    /// When the data was captured: the snapshot time, else the set time.
    pub fn time(&self) -> Timestamp {
        self.manifest.snapshot_time.unwrap_or(self.set_time)
    }
    pub fn size(&self) -> u64 {
        self.manifest.disks.iter().map(|d| d.export_bytes).sum()
    }
}

/// Which point a restore asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum At {
    Latest,
    /// The newest point captured at or before this time.
    Time(Timestamp),
    /// The point of this backup run.
    Run(String),
}

/// The point asked for. Times compare in whole seconds, as `snapback list` prints them: a
/// point captured at 10:00:00.4 is "at 10:00:00". Points captured in the same second (or
/// with a clock that stood still) are told apart by their set time on the target.
pub fn select(points: &[RestorePoint], at: &At) -> Result<usize, String> {
    if points.is_empty() {
        return Err("the target holds no backups of this domain".into());
    }
    match at {
        At::Latest => Ok(points.len() - 1),
        At::Run(run) => points
            .iter()
            .position(|p| &p.manifest.run == run)
            .ok_or_else(|| {
                format!("--at '{run}' is neither an RFC 3339 time nor a backup run on the target")
            }),
        At::Time(at) => points
            .iter()
            .enumerate()
            .filter(|(_, p)| p.time().as_second() <= at.as_second())
            .max_by_key(|(_, p)| (p.time().as_second(), p.set_time))
            .map(|(i, _)| i)
            .ok_or_else(|| {
                format!(
                    "--at {at} is before the first backup ({})",
                    points[0].time()
                )
            }),
    }
}

/// A damaged set (by its set time) that would have been the point asked for had it been
/// readable: newer than the chosen point and within what was asked (latest: any; a time: a
/// set made at or before it, which was captured before it too). A restore must not quietly
/// bring back an older point instead. A point asked for by run name is not affected.
pub fn damaged_instead(chosen: &RestorePoint, damaged: &[Timestamp], at: &At) -> Option<Timestamp> {
    damaged
        .iter()
        .copied()
        .filter(|d| *d > chosen.set_time)
        .filter(|d| match at {
            At::Latest => true,
            At::Time(t) => d.as_second() <= t.as_second(),
            At::Run(_) => false,
        })
        .max()
}

/// The damaged set that breaks the chain of `p`: the oldest set of its chain before it that
/// cannot be read (or that stands for one that cannot), so `p` cannot be restored although
/// its own set is whole.
pub fn chain_damage<'a>(p: &RestorePoint, damaged: &'a [DamagedSet]) -> Option<&'a DamagedSet> {
    damaged
        .iter()
        .filter(|d| d.chain_start == p.chain_start && d.set_time < p.set_time)
        .min_by_key(|d| d.root())
}

/// The points to fetch for `idx`: its chain's full, then every incremental up to it, in order.
/// Refuses a chain that needs a damaged set (naming it), and a chain with a gap (a missing
/// member would make a wrong disk).
pub fn chain_for(
    points: &[RestorePoint],
    idx: usize,
    damaged: &[DamagedSet],
) -> Result<Vec<usize>, String> {
    let p = &points[idx];
    if let Some(d) = chain_damage(p, damaged) {
        return Err(needs_damaged(d.root()));
    }
    let chain: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].chain_start == p.chain_start && points[i].set_time <= p.set_time)
        .collect();
    for (pos, &i) in chain.iter().enumerate() {
        let m = &points[i].manifest;
        if m.chain_index as usize != pos || (pos == 0) != points[i].full {
            return Err(format!(
                "the chain of {} is incomplete on the target (member {pos} is {} with chain index {})",
                p.manifest.run, m.run, m.chain_index
            ));
        }
    }
    Ok(chain)
}

/// Parses `--at`: RFC 3339, a backup run's name, or `latest` / empty for the newest.
pub fn parse_at(at: Option<&str>) -> Result<At, String> {
    match at.map(str::trim) {
        None | Some("") | Some("latest") => Ok(At::Latest),
        Some(s) => match s.parse::<Timestamp>() {
            Ok(t) => Ok(At::Time(t)),
            // Run names are Kubernetes object names: lower-case letters, digits, '-' and '.'.
            Err(_) if is_run_name(s) => Ok(At::Run(s.to_string())),
            Err(e) => Err(format!(
                "--at '{s}' is not an RFC 3339 time, a run name or 'latest': {e}"
            )),
        },
    }
}

fn is_run_name(s: &str) -> bool {
    s.len() <= 253
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BackupType;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn point(run: &str, set: &str, snap: &str, chain_start: &str, idx: u32) -> RestorePoint {
        RestorePoint {
            set_time: t(set),
            full: idx == 0,
            chain_start: t(chain_start),
            manifest: Manifest {
                api_version: "snapback.dev/v1alpha1".into(),
                run: run.into(),
                domain: "web".into(),
                domain_uuid: None,
                type_: if idx == 0 {
                    BackupType::Full
                } else {
                    BackupType::Incremental
                },
                full_reason: None,
                chain: "c".into(),
                chain_index: idx,
                checkpoint: None,
                parent_checkpoint: None,
                snapshot_time: Some(t(snap)),
                online: true,
                disks: vec![],
                firmware: vec![],
                memory: None,
                domain_files: vec![],
            },
        }
    }

    fn history() -> Vec<RestorePoint> {
        vec![
            point(
                "a",
                "2026-01-01T00:00:05Z",
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:00:05Z",
                0,
            ),
            point(
                "b",
                "2026-01-02T00:00:05Z",
                "2026-01-02T00:00:00Z",
                "2026-01-01T00:00:05Z",
                1,
            ),
            point(
                "c",
                "2026-01-03T00:00:05Z",
                "2026-01-03T00:00:00Z",
                "2026-01-03T00:00:05Z",
                0,
            ),
            point(
                "d",
                "2026-01-04T00:00:05Z",
                "2026-01-04T00:00:00Z",
                "2026-01-03T00:00:05Z",
                1,
            ),
        ]
    }

    #[test]
    fn the_point_at_or_before_the_requested_time_is_chosen() {
        let h = history();
        let at = |s: &str| At::Time(t(s));
        assert_eq!(select(&h, &At::Latest), Ok(3));
        assert_eq!(select(&h, &at("2026-01-02T12:00:00Z")), Ok(1));
        assert_eq!(
            select(&h, &at("2026-01-03T00:00:00Z")),
            Ok(2),
            "a point captured exactly then counts"
        );
        assert!(select(&h, &at("2025-12-31T00:00:00Z"))
            .unwrap_err()
            .contains("before the first backup"));
        assert!(select(&[], &At::Latest).is_err());
    }

    #[test]
    fn a_time_printed_in_whole_seconds_selects_the_point_captured_within_that_second() {
        let mut h = history();
        h[0].manifest.snapshot_time = Some(t("2026-01-01T00:00:00.734Z"));
        assert_eq!(select(&h, &At::Time(t("2026-01-01T00:00:00Z"))), Ok(0));
    }

    #[test]
    fn points_captured_in_the_same_second_are_told_apart_by_their_set_time() {
        let mut h = history();
        for p in h.iter_mut() {
            p.manifest.snapshot_time = Some(t("2026-01-01T00:00:00Z"));
        }
        assert_eq!(select(&h, &At::Time(t("2026-01-01T00:00:00Z"))), Ok(3));
    }

    #[test]
    fn a_run_name_selects_that_run_point() {
        let h = history();
        assert_eq!(select(&h, &At::Run("b".into())), Ok(1));
        assert!(select(&h, &At::Run("zz".into()))
            .unwrap_err()
            .contains("neither"));
    }

    #[test]
    fn the_chain_is_the_full_and_every_incremental_up_to_the_point() {
        let h = history();
        assert_eq!(chain_for(&h, 1, &[]), Ok(vec![0, 1]));
        assert_eq!(chain_for(&h, 2, &[]), Ok(vec![2]));
        assert_eq!(chain_for(&h, 3, &[]), Ok(vec![2, 3]));
    }

    #[test]
    fn a_chain_with_a_missing_member_is_refused() {
        let mut h = history();
        h.remove(2);
        assert!(chain_for(&h, 2, &[]).unwrap_err().contains("incomplete"));
    }

    #[test]
    fn at_accepts_rfc3339_a_run_name_and_latest() {
        assert_eq!(parse_at(Some("latest")), Ok(At::Latest));
        assert_eq!(parse_at(None), Ok(At::Latest));
        assert_eq!(
            parse_at(Some("2026-01-02T00:00:00Z")),
            Ok(At::Time(t("2026-01-02T00:00:00Z")))
        );
        assert_eq!(
            parse_at(Some("web1-20261122-064438-28ae")),
            Ok(At::Run("web1-20261122-064438-28ae".into()))
        );
        for bad in ["2026-13-01 x", "../etc", "Web1", "a b", "$(id)"] {
            assert!(parse_at(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_damaged_set_newer_than_the_point_chosen_stops_latest_and_times_after_it_only() {
        let p = point(
            "r1",
            "2026-11-30T10:00:05Z",
            "2026-11-30T10:00:00Z",
            "2026-11-30T10:00:05Z",
            0,
        );
        let damaged = [t("2026-11-30T12:00:05Z")];
        assert_eq!(damaged_instead(&p, &damaged, &At::Latest), Some(damaged[0]));
        let after = At::Time(t("2026-11-30T13:00:00Z"));
        assert_eq!(damaged_instead(&p, &damaged, &after), Some(damaged[0]));
        let before = At::Time(t("2026-11-30T11:00:00Z"));
        assert_eq!(damaged_instead(&p, &damaged, &before), None);
        assert_eq!(damaged_instead(&p, &damaged, &At::Run("r1".into())), None);
        let older = [t("2026-11-30T09:00:00Z")];
        assert_eq!(damaged_instead(&p, &older, &At::Latest), None);
    }

    #[test]
    fn a_whole_point_whose_chain_needs_a_damaged_set_is_refused_naming_that_set() {
        use crate::api::FailureReason;
        use crate::error::StepError;
        let mut h = history();
        // The chain c: full c, a damaged incremental at 01-03T12:00:05, then d (whole).
        h[3].manifest.chain_index = 2;
        let damaged = [DamagedSet {
            set_time: t("2026-01-03T12:00:05Z"),
            full: false,
            chain_start: t("2026-01-03T00:00:05Z"),
            needs: None,
            error: StepError::new(FailureReason::VerificationFailed, "a volume is missing"),
        }];
        let err = chain_for(&h, 3, &damaged).unwrap_err();
        assert!(
            err.starts_with("its chain needs the damaged set at 2026-01-03T12:00:05Z"),
            "{err}"
        );
        assert_eq!(
            chain_for(&h, 2, &damaged),
            Ok(vec![2]),
            "the full before the damaged set restores"
        );
        assert_eq!(
            chain_for(&h, 1, &damaged),
            Ok(vec![0, 1]),
            "another chain is not affected"
        );
    }
}
