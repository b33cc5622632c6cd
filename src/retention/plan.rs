//! The retention planner (pure): which points to keep, which whole chains to delete, and the
//! rule that keeps each point.
//!
//! Invariants: a chain is deleted whole or not at all (a kept incremental needs its full and
//! every earlier incremental); the newest point is always kept; a chain still being written is
//! never touched; `maxTotalSize` drops the oldest chains first and yields only to the two
//! rules above. A point that cannot be restored (a damaged set, or a whole one whose chain
//! needs a damaged set) is part of its chain like any other, but the keep rules count only
//! points that restore: a chain with nothing restorable goes when no rule keeps a point of it.

use std::collections::{BTreeMap, BTreeSet};

use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::rules::Rules;

/// A restore point on the target.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub id: String,
    pub time: Timestamp,
    /// The chain's name (its full's run).
    pub chain: String,
    pub full: bool,
    pub size: u64,
    /// Why the point cannot be restored; `None` for a sound point.
    pub broken: Option<String>,
}

/// What happens to one point, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub id: String,
    pub time: Timestamp,
    pub chain: String,
    pub keep: bool,
    /// The rules that select it (`keepDaily`, `newest` ...) or what keeps it (`chain`), or,
    /// for a deleted point, why it goes.
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// One per input point, oldest first.
    pub decisions: Vec<Decision>,
    /// Chains to delete, oldest first.
    pub delete_chains: Vec<String>,
}

impl Plan {
    pub fn kept(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.keep)
    }
}

#[derive(Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

fn bucket(t: Timestamp, tz: &TimeZone, p: Period) -> (i32, i32, i32, i32) {
    let z = t.to_zoned(tz.clone());
    let (y, m, d, h) = (
        z.year() as i32,
        z.month() as i32,
        z.day() as i32,
        z.hour() as i32,
    );
    match p {
        Period::Hour => (y, m, d, h),
        Period::Day => (y, m, d, 0),
        Period::Week => {
            let w = z.date().iso_week_date();
            (w.year() as i32, w.week() as i32, 0, 0)
        }
        Period::Month => (y, m, 0, 0),
        Period::Year => (y, 0, 0, 0),
    }
}

/// The newest point of each of the newest `n` periods (indices into `points`, sorted by time).
pub fn select_buckets(points: &[Point], tz: &TimeZone, p: PeriodName, n: u32) -> Vec<usize> {
    let period = match p {
        PeriodName::Hourly => Period::Hour,
        PeriodName::Daily => Period::Day,
        PeriodName::Weekly => Period::Week,
        PeriodName::Monthly => Period::Month,
        PeriodName::Yearly => Period::Year,
    };
    let mut out = Vec::new();
    let mut last = None;
    for i in (0..points.len()).rev() {
        if out.len() as u32 >= n {
            break;
        }
        let b = bucket(points[i].time, tz, period);
        if last != Some(b) {
            out.push(i);
            last = Some(b);
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeriodName {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl PeriodName {
    fn rule(self) -> &'static str {
        match self {
            Self::Hourly => "keepHourly",
            Self::Daily => "keepDaily",
            Self::Weekly => "keepWeekly",
            Self::Monthly => "keepMonthly",
            Self::Yearly => "keepYearly",
        }
    }
}

/// Plans retention for one domain's points on one target.
pub fn plan(
    points: &[Point],
    rules: &Rules,
    tz: &TimeZone,
    now: Timestamp,
    in_progress: &[String],
) -> Plan {
    let mut pts: Vec<Point> = points.to_vec();
    pts.sort_by_key(|p| p.time);
    let mut why: Vec<Vec<String>> = vec![Vec::new(); pts.len()];
    let Some(newest) = pts.len().checked_sub(1) else {
        return Plan::default();
    };

    // The newest point stays whatever it is: the next backup may continue its chain, and
    // pruning never empties a target.
    why[newest].push("newest".into());
    // The keep rules choose among the points that restore (indices into `pts`).
    let sound: Vec<usize> = (0..pts.len())
        .filter(|&i| pts[i].broken.is_none())
        .collect();
    let first_last = sound.len().saturating_sub(rules.keep_last as usize);
    for &i in &sound[first_last..] {
        why[i].push("keepLast".into());
    }
    let sound_pts: Vec<Point> = sound.iter().map(|&i| pts[i].clone()).collect();
    for (p, n) in [
        (PeriodName::Hourly, rules.keep_hourly),
        (PeriodName::Daily, rules.keep_daily),
        (PeriodName::Weekly, rules.keep_weekly),
        (PeriodName::Monthly, rules.keep_monthly),
        (PeriodName::Yearly, rules.keep_yearly),
    ] {
        for i in select_buckets(&sound_pts, tz, p, n) {
            why[sound[i]].push(p.rule().into());
        }
    }
    if let Some(age) = rules.max_age {
        for &i in &sound {
            if now.duration_since(pts[i].time) < age {
                why[i].push("maxAge".into());
            }
        }
    }
    // Chains in order of their first point.
    let mut chains: Vec<String> = Vec::new();
    for p in &pts {
        if !chains.contains(&p.chain) {
            chains.push(p.chain.clone());
        }
    }
    // The newest chains that hold a point that restores.
    let restorable = |c: &String| sound.iter().any(|&i| &pts[i].chain == c);
    for c in chains
        .iter()
        .rev()
        .filter(|c| restorable(c))
        .take(rules.max_full_backups as usize)
    {
        for &i in &sound {
            if &pts[i].chain == c {
                why[i].push("maxFullBackups".into());
            }
        }
    }
    for (i, p) in pts.iter().enumerate() {
        if in_progress.contains(&p.chain) {
            why[i].push("chainInProgress".into());
        }
    }

    // A chain lives if any of its points is selected.
    let mut kept: BTreeSet<String> = pts
        .iter()
        .zip(&why)
        .filter(|(_, w)| !w.is_empty())
        .map(|(p, _)| p.chain.clone())
        .collect();
    let mut dropped_for_size: BTreeSet<String> = BTreeSet::new();
    if let Some(limit) = rules.max_total_size {
        let size_of = |c: &str| {
            pts.iter()
                .filter(|p| p.chain == c)
                .map(|p| p.size)
                .sum::<u64>()
        };
        let mut total: u64 = kept.iter().map(|c| size_of(c)).sum();
        for c in &chains {
            if total <= limit {
                break;
            }
            let protected = *c == pts[newest].chain || in_progress.contains(c);
            if kept.contains(c) && !protected {
                kept.remove(c);
                dropped_for_size.insert(c.clone());
                total -= size_of(c);
            }
        }
    }

    let mut decisions = Vec::with_capacity(pts.len());
    let mut needed_by: BTreeMap<String, String> = BTreeMap::new();
    for (p, w) in pts.iter().zip(&why).rev() {
        if !w.is_empty() && !needed_by.contains_key(&p.chain) {
            needed_by.insert(p.chain.clone(), p.id.clone());
        }
    }
    for (p, w) in pts.iter().zip(why) {
        let keep = kept.contains(&p.chain);
        let mut reasons = if !keep && dropped_for_size.contains(&p.chain) {
            vec!["maxTotalSize: oldest chains go first".into()]
        } else if !keep {
            vec!["no rule keeps any point of its chain".into()]
        } else if w.is_empty() {
            vec![format!(
                "chain: kept whole for {}",
                needed_by.get(&p.chain).cloned().unwrap_or_default()
            )]
        } else {
            w
        };
        if let Some(b) = &p.broken {
            reasons.push(format!("cannot be restored: {b}"));
        }
        decisions.push(Decision {
            id: p.id.clone(),
            time: p.time,
            chain: p.chain.clone(),
            keep,
            reasons,
        });
    }
    let delete_chains = chains.into_iter().filter(|c| !kept.contains(c)).collect();
    Plan {
        decisions,
        delete_chains,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// One point a day at 02:00 UTC; a full every `every` days.
    fn daily(start: &str, days: i64, every: i64) -> Vec<Point> {
        (0..days)
            .map(|d| {
                let time = t(start) + SignedDuration::from_hours(24 * d);
                let chain = format!("c{}", d / every);
                Point {
                    id: format!("p{d}"),
                    time,
                    chain,
                    full: d % every == 0,
                    size: 10,
                    broken: None,
                }
            })
            .collect()
    }

    fn kept_ids(p: &Plan) -> Vec<String> {
        p.kept().map(|d| d.id.clone()).collect()
    }

    #[test]
    fn keep_last_keeps_whole_chains_of_the_last_points() {
        let pts = daily("2026-01-01T02:00:00Z", 10, 3);
        let rules = Rules {
            keep_last: 2,
            ..Default::default()
        };
        let p = plan(&pts, &rules, &TimeZone::UTC, t("2026-01-11T00:00:00Z"), &[]);
        // p8 and p9 are in chain c2 (p6..p8) and c3 (p9): both chains stay whole.
        assert_eq!(kept_ids(&p), ["p6", "p7", "p8", "p9"]);
        assert_eq!(p.delete_chains, ["c0", "c1"]);
        let p6 = &p.decisions[6];
        assert_eq!(p6.reasons, ["chain: kept whole for p8"]);
        assert_eq!(p.decisions[9].reasons, ["newest", "keepLast"]);
    }

    #[test]
    fn the_newest_point_survives_any_rule() {
        let pts = daily("2026-01-01T02:00:00Z", 5, 5);
        let rules = Rules {
            max_age: Some(SignedDuration::from_hours(1)),
            ..Default::default()
        };
        let p = plan(&pts, &rules, &TimeZone::UTC, t("2027-01-01T00:00:00Z"), &[]);
        assert!(p.delete_chains.is_empty());
        assert_eq!(p.decisions[4].reasons, ["newest"]);
    }

    #[test]
    fn a_chain_being_written_is_never_touched() {
        let pts = daily("2026-01-01T02:00:00Z", 6, 2);
        let rules = Rules {
            keep_last: 1,
            ..Default::default()
        };
        let p = plan(
            &pts,
            &rules,
            &TimeZone::UTC,
            t("2026-02-01T00:00:00Z"),
            &["c0".into()],
        );
        assert_eq!(p.delete_chains, ["c1"]);
    }

    #[test]
    fn daily_buckets_follow_the_local_calendar_across_a_dst_change() {
        // Europe/Berlin leaves summer time on 2026-10-25 at 03:00 local (01:00 UTC).
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let times = [
            "2026-10-24T21:30:00Z", // 23:30 local on the 24th (CEST)
            "2026-10-24T22:30:00Z", // 00:30 local on the 25th (CEST)
            "2026-10-25T22:30:00Z", // 23:30 local on the 25th (CET)
            "2026-10-25T23:30:00Z", // 00:30 local on the 26th
        ];
        let pts: Vec<Point> = times
            .iter()
            .enumerate()
            .map(|(i, s)| Point {
                id: format!("p{i}"),
                time: t(s),
                chain: format!("c{i}"),
                full: true,
                size: 1,
                broken: None,
            })
            .collect();
        let rules = Rules {
            keep_daily: 3,
            ..Default::default()
        };
        let p = plan(&pts, &rules, &tz, t("2026-10-27T00:00:00Z"), &[]);
        // Days 24, 25 and 26: the newest of each; p1 (00:30 on the 25th) is not the newest of its day.
        assert_eq!(kept_ids(&p), ["p0", "p2", "p3"]);
    }

    #[test]
    fn yearly_and_weekly_buckets_turn_with_the_year() {
        let pts: Vec<Point> = [
            "2025-12-29T12:00:00Z",
            "2025-12-31T12:00:00Z",
            "2026-01-01T12:00:00Z",
            "2026-01-05T12:00:00Z",
        ]
        .iter()
        .enumerate()
        .map(|(i, s)| Point {
            id: format!("p{i}"),
            time: t(s),
            chain: format!("c{i}"),
            full: true,
            size: 1,
            broken: None,
        })
        .collect();
        let yearly = plan(
            &pts,
            &Rules {
                keep_yearly: 2,
                ..Default::default()
            },
            &TimeZone::UTC,
            t("2026-02-01T00:00:00Z"),
            &[],
        );
        assert_eq!(kept_ids(&yearly), ["p1", "p3"]);
        // 2025-12-29 .. 2026-01-04 is ISO week 2026-W01; 2026-01-05 starts W02.
        let weekly = plan(
            &pts,
            &Rules {
                keep_weekly: 2,
                ..Default::default()
            },
            &TimeZone::UTC,
            t("2026-02-01T00:00:00Z"),
            &[],
        );
        assert_eq!(kept_ids(&weekly), ["p2", "p3"]);
    }

    #[test]
    fn max_full_backups_keeps_the_newest_chains_like_duply() {
        let pts = daily("2026-01-01T02:00:00Z", 9, 3);
        let p = plan(
            &pts,
            &Rules {
                max_full_backups: 2,
                ..Default::default()
            },
            &TimeZone::UTC,
            t("2026-01-10T00:00:00Z"),
            &[],
        );
        assert_eq!(p.delete_chains, ["c0"]);
    }

    #[test]
    fn max_total_size_drops_the_oldest_chains_until_the_data_fits() {
        let pts = daily("2026-01-01T02:00:00Z", 9, 3); // 3 chains of 30 bytes
        let rules = Rules {
            keep_daily: 9,
            max_total_size: Some(65),
            ..Default::default()
        };
        let p = plan(&pts, &rules, &TimeZone::UTC, t("2026-01-10T00:00:00Z"), &[]);
        assert_eq!(p.delete_chains, ["c0"]);
        assert_eq!(
            p.decisions[0].reasons,
            ["maxTotalSize: oldest chains go first"]
        );
        let tiny = Rules {
            keep_daily: 9,
            max_total_size: Some(1),
            ..Default::default()
        };
        let p = plan(&pts, &tiny, &TimeZone::UTC, t("2026-01-10T00:00:00Z"), &[]);
        assert_eq!(
            p.delete_chains,
            ["c0", "c1"],
            "the newest chain stays even when it alone is too big"
        );
    }

    /// Chain c0: a sound full, a damaged incremental and two whole ones that need it; chain
    /// c1: two sound points a day later.
    fn with_damage() -> Vec<Point> {
        let broken = |why: &str| Some(why.to_string());
        let mut pts = daily("2026-01-01T02:00:00Z", 6, 4);
        pts[1].broken = broken("damaged");
        pts[2].broken = broken("needs p1");
        pts[3].broken = broken("needs p1");
        pts
    }

    #[test]
    fn a_damaged_set_and_the_sets_that_need_it_go_with_their_chain_when_no_rule_keeps_it() {
        let pts = with_damage();
        let rules = Rules {
            keep_last: 2,
            ..Default::default()
        };
        let p = plan(&pts, &rules, &TimeZone::UTC, t("2026-01-07T00:00:00Z"), &[]);
        assert_eq!(p.delete_chains, ["c0"]);
        assert_eq!(kept_ids(&p), ["p4", "p5"]);
        assert_eq!(
            p.decisions[1].reasons,
            [
                "no rule keeps any point of its chain",
                "cannot be restored: damaged"
            ]
        );
    }

    #[test]
    fn unrestorable_points_are_not_counted_by_keep_rules_but_stay_with_a_kept_chain() {
        let pts = with_damage();
        // The three newest that restore are p0, p4 and p5: c0 is kept whole for its full,
        // damaged sets included, since a chain goes whole or not at all.
        let rules = Rules {
            keep_last: 3,
            ..Default::default()
        };
        let p = plan(&pts, &rules, &TimeZone::UTC, t("2026-01-07T00:00:00Z"), &[]);
        assert!(p.delete_chains.is_empty());
        assert_eq!(p.decisions[0].reasons, ["keepLast"]);
        assert_eq!(
            p.decisions[3].reasons,
            ["chain: kept whole for p0", "cannot be restored: needs p1"]
        );
        // maxFullBackups counts only chains that restore.
        let mut only_damage = pts.clone();
        only_damage[0].broken = Some("damaged".into());
        let rules = Rules {
            max_full_backups: 1,
            ..Default::default()
        };
        let p = plan(
            &only_damage,
            &rules,
            &TimeZone::UTC,
            t("2026-01-07T00:00:00Z"),
            &[],
        );
        assert_eq!(p.delete_chains, ["c0"]);
        // Nor is a chain of damaged sets deleted while it is being written.
        let p = plan(
            &only_damage,
            &rules,
            &TimeZone::UTC,
            t("2026-01-07T00:00:00Z"),
            &["c0".into()],
        );
        assert!(p.delete_chains.is_empty());
    }

    #[test]
    fn the_newest_set_is_kept_even_when_it_cannot_be_restored() {
        let pts: Vec<Point> = with_damage().into_iter().take(4).collect();
        let rules = Rules {
            max_age: Some(SignedDuration::from_hours(1)),
            ..Default::default()
        };
        let p = plan(&pts, &rules, &TimeZone::UTC, t("2026-02-01T00:00:00Z"), &[]);
        assert!(p.delete_chains.is_empty());
        assert_eq!(
            p.decisions[3].reasons,
            ["newest", "cannot be restored: needs p1"]
        );
    }
}
