//! Which local points are due for deletion (pure: the clock and the points are arguments).
//!
//! A rule `{match, after}` keeps a point whose time its cron-like `match` covers for `after`.
//! Of all the rules that cover a point, the longest `after` wins, so "hourly for a day,
//! midnight ones for a week" is two rules: `* * * * *` after `1d` and `0 0 * * *` after `7d`.
//! A point no rule covers (taken by hand at 10:17 under `0 * * * *` rules, say) is kept as
//! long as the *shortest* rule keeps any point: never expiring it would let hand-made points
//! fill the host's disk unseen, and deleting it at once would make `snapback local take` a
//! no-op; the shortest rule is the least any point of the policy is promised.

use jiff::{SignedDuration, Timestamp};

use crate::schedule::Schedule;
use crate::units::parse_duration;

/// One expiry rule as written: a 5-field cron expression and a duration (`7d`, `12h`).
#[derive(Clone, Debug)]
pub struct Rule {
    pub matches: Schedule,
    pub after: SignedDuration,
    /// The rule as written, for messages.
    pub text: String,
}

impl Rule {
    /// `match` is read in UTC.
    pub fn parse(matches: &str, after: &str) -> Result<Self, String> {
        Self::parse_in(matches, after, None)
    }

    /// `match` read in an IANA time zone (a policy's `timeZone`; UTC when `None`), so that
    /// `0 0 * * *` means the policy's midnight, as its schedule does.
    pub fn parse_in(matches: &str, after: &str, tz: Option<&str>) -> Result<Self, String> {
        Ok(Self {
            matches: Schedule::parse(matches, tz)?,
            after: parse_duration(after)?,
            text: format!("{matches} after {after}"),
        })
    }

    /// Whether the rule's expression has a tick in the minute of `t` (cron has no seconds).
    pub fn covers(&self, t: Timestamp) -> bool {
        let minute = Timestamp::from_second(t.as_second().div_euclid(60) * 60)
            .expect("a minute of a valid time is valid");
        self.matches.latest_at_or_before(minute) == Some(minute)
    }
}

/// Parses `MATCH=AFTER` (the CLI's form: `0 0 * * *=7d`). The `=` splits at its last place.
pub fn parse_rule_arg(s: &str) -> Result<Rule, String> {
    let (m, a) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("expiry rule '{s}' is not MATCH=AFTER (e.g. '0 0 * * *=7d')"))?;
    Rule::parse(m, a)
}

/// When a point taken at `t` expires under `rules`; `None` only when there are no rules.
pub fn expires_at(rules: &[Rule], t: Timestamp) -> Option<Timestamp> {
    let longest = rules.iter().filter(|r| r.covers(t)).map(|r| r.after).max();
    let keep = longest.or_else(|| rules.iter().map(|r| r.after).min())?;
    t.checked_add(keep).ok()
}

/// A point as expiry sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aged {
    pub name: String,
    pub created: Timestamp,
}

/// Why a point is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    Expired,
    OverMaxCount,
}

/// The points to delete now, in the order to delete them (oldest first): every expired one,
/// then the oldest of the rest while more than `max_count` would remain. A point named in
/// `in_use` (mounted, being read, the base of something) is never chosen, and still counts
/// toward `max_count`: the count is then exceeded until it is free, rather than a newer point
/// being deleted in its place.
pub fn due(
    points: &[Aged],
    rules: &[Rule],
    now: Timestamp,
    max_count: Option<usize>,
    in_use: &[String],
) -> Vec<(String, Why)> {
    let mut sorted: Vec<&Aged> = points.iter().collect();
    sorted.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
    let free = |p: &Aged| !in_use.contains(&p.name);
    let expired = |p: &Aged| expires_at(rules, p.created).is_some_and(|e| e <= now);
    let mut out: Vec<(String, Why)> = sorted
        .iter()
        .filter(|p| free(p) && expired(p))
        .map(|p| (p.name.clone(), Why::Expired))
        .collect();
    if let Some(max) = max_count {
        // The oldest of the points left, as many as are over the count: those in use are
        // skipped, not replaced by newer ones.
        let over = (sorted.len() - out.len()).saturating_sub(max);
        let oldest: Vec<&&Aged> = sorted
            .iter()
            .filter(|p| !out.iter().any(|(n, _)| *n == p.name))
            .take(over)
            .collect();
        for p in oldest.into_iter().filter(|p| free(p)) {
            out.push((p.name.clone(), Why::OverMaxCount));
        }
        out.sort_by_key(|(n, _)| sorted.iter().position(|p| p.name == *n));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn rules(spec: &[(&str, &str)]) -> Vec<Rule> {
        spec.iter()
            .map(|(m, a)| Rule::parse(m, a).unwrap())
            .collect()
    }

    /// Hourly points for a day, midnight ones for a week, Sunday midnight ones for four weeks.
    fn week_rules() -> Vec<Rule> {
        rules(&[
            ("0 * * * *", "1d"),
            ("0 0 * * *", "7d"),
            ("0 0 * * 0", "4w"),
        ])
    }

    #[test]
    fn the_longest_matching_rule_wins_over_a_week_of_times() {
        let r = week_rules();
        // 2026-11-29 is a Sunday.
        let cases = [
            ("2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"), // Monday midnight: 7d
            ("2026-11-23T13:00:00Z", "2026-11-24T13:00:00Z"), // Monday 13:00: 1d
            ("2026-11-24T00:00:30Z", "2026-12-01T00:00:30Z"), // seconds within the minute count
            ("2026-11-25T23:00:00Z", "2026-11-26T23:00:00Z"),
            ("2026-11-27T00:00:00Z", "2026-12-04T00:00:00Z"),
            ("2026-11-28T12:00:00Z", "2026-11-29T12:00:00Z"),
            ("2026-11-29T00:00:00Z", "2026-12-27T00:00:00Z"), // Sunday midnight: 4w
            ("2026-11-29T01:00:00Z", "2026-11-30T01:00:00Z"), // Sunday 01:00: only hourly
        ];
        for (at, want) in cases {
            assert_eq!(expires_at(&r, t(at)), Some(t(want)), "point at {at}");
        }
    }

    #[test]
    fn a_point_no_rule_covers_is_kept_as_long_as_the_shortest_rule_keeps_one() {
        let r = week_rules();
        assert_eq!(
            expires_at(&r, t("2026-11-23T10:17:00Z")),
            Some(t("2026-11-24T10:17:00Z"))
        );
    }

    #[test]
    fn without_rules_nothing_expires_by_age() {
        assert_eq!(expires_at(&[], t("2026-11-23T10:17:00Z")), None);
    }

    fn hourly_week() -> Vec<Aged> {
        (0..7 * 24)
            .map(|h| {
                let created = t("2026-11-23T00:00:00Z") + SignedDuration::from_hours(h);
                Aged {
                    name: format!("p{h:03}"),
                    created,
                }
            })
            .collect()
    }

    #[test]
    fn after_a_week_of_hourly_points_the_last_day_and_the_midnights_are_kept() {
        let points = hourly_week();
        let now = t("2026-11-30T00:00:00Z");
        let gone = due(&points, &week_rules(), now, None, &[]);
        let kept: Vec<&str> = points
            .iter()
            .filter(|p| !gone.iter().any(|(n, _)| *n == p.name))
            .map(|p| p.name.as_str())
            .collect();
        // The last day (hour 144 is a day old, but Sunday midnight: kept four weeks), and the
        // midnights of Tuesday..Saturday (Monday's is exactly seven days old: expired).
        let mut want: Vec<String> = (145..168).map(|h| format!("p{h:03}")).collect();
        want.extend([24, 48, 72, 96, 120, 144].map(|h| format!("p{h:03}")));
        want.sort();
        let mut kept: Vec<String> = kept.into_iter().map(String::from).collect();
        kept.sort();
        assert_eq!(kept, want);
        assert!(gone.iter().all(|(_, w)| *w == Why::Expired));
    }

    #[test]
    fn expired_points_are_deleted_oldest_first() {
        let gone = due(
            &hourly_week(),
            &week_rules(),
            t("2026-11-30T00:00:00Z"),
            None,
            &[],
        );
        let times: Vec<&String> = gone.iter().map(|(n, _)| n).collect();
        let mut sorted = times.clone();
        sorted.sort();
        assert_eq!(times, sorted);
        assert_eq!(gone[0].0, "p000");
    }

    #[test]
    fn over_max_count_the_oldest_go_after_the_expired_ones() {
        let points = hourly_week();
        let now = t("2026-11-29T12:00:00Z");
        let gone = due(&points, &week_rules(), now, Some(10), &[]);
        let left = points.len() - gone.len();
        assert_eq!(left, 10);
        let kept: Vec<&Aged> = points
            .iter()
            .filter(|p| !gone.iter().any(|(n, _)| *n == p.name))
            .collect();
        assert_eq!(kept[0].name, "p158", "the ten newest remain");
        assert!(gone.iter().any(|(_, w)| *w == Why::OverMaxCount));
    }

    #[test]
    fn a_point_in_use_is_never_deleted_even_expired_or_over_the_count() {
        let points = hourly_week();
        let in_use = vec!["p000".to_string(), "p150".to_string()];
        let gone = due(
            &points,
            &week_rules(),
            t("2026-12-30T00:00:00Z"),
            Some(1),
            &in_use,
        );
        assert!(!gone.iter().any(|(n, _)| in_use.contains(n)));
        assert_eq!(gone.len(), points.len() - 2);
    }

    #[test]
    fn an_oldest_point_in_use_over_the_count_is_kept_and_no_newer_one_goes_in_its_place() {
        let points = hourly_week();
        let now = t("2026-11-23T03:30:00Z");
        let in_use = vec!["p000".to_string()];
        let gone = due(&points[..3], &week_rules(), now, Some(2), &in_use);
        assert!(gone.is_empty(), "{gone:?}");
        let gone = due(&points[..3], &week_rules(), now, Some(1), &in_use);
        assert_eq!(gone, [("p001".to_string(), Why::OverMaxCount)]);
    }

    #[test]
    fn nothing_is_due_when_nothing_expired_and_the_count_is_within_max() {
        let points = hourly_week();
        let gone = due(
            &points[..3],
            &week_rules(),
            t("2026-11-23T03:00:00Z"),
            Some(3),
            &[],
        );
        assert!(gone.is_empty());
    }

    #[test]
    fn a_rule_argument_splits_at_the_last_equals_sign_and_bad_ones_say_why() {
        let r = parse_rule_arg("0 0 * * *=7d").unwrap();
        assert_eq!(r.after, SignedDuration::from_hours(24 * 7));
        assert!(parse_rule_arg("0 0 * * *")
            .unwrap_err()
            .contains("MATCH=AFTER"));
        assert!(parse_rule_arg("0 0 * *=7d").unwrap_err().contains("cron"));
        assert!(parse_rule_arg("0 0 * * *=7y").unwrap_err().contains("unit"));
    }
}
