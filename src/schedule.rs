//! Schedules: which tick of a policy's cron schedule is due now. Pure (the clock is a
//! parameter), shared by the Kubernetes controller and the single-host daemon.
//!
//! The rule follows the CronJob controller, with one change users asked for: after downtime
//! there is no storm. Of all the ticks missed since the last one scheduled, only the newest runs
//! (if it is still within `startingDeadlineSeconds`); the others are counted as missed.

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// Counting missed ticks stops here, so a minutely schedule after a year of downtime costs
/// no more than a few thousand cron steps. The count is then reported as "at least".
pub const MISSED_COUNT_CAP: u32 = 1000;

#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    tz: TimeZone,
}

impl Schedule {
    /// A five-field cron expression (or `@daily` and friends) read in an IANA time zone; UTC
    /// when `tz` is empty. Errors say which of the two is wrong.
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<Self, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expr.trim())
            .map_err(|e| format!("schedule '{expr}' is not a 5-field cron expression: {e}"))?;
        let tz = match tz.map(str::trim).filter(|z| !z.is_empty()) {
            None => TimeZone::UTC,
            Some(z) => TimeZone::get(z)
                .map_err(|e| format!("timeZone '{z}' is not an IANA time zone: {e}"))?,
        };
        Ok(Self { cron, tz })
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let z = Zoned::new(t, self.tz.clone());
        self.cron
            .find_next_occurrence(&z, false)
            .ok()
            .map(|n| n.timestamp())
    }

    /// The last tick at or before `t`.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let z = Zoned::new(t, self.tz.clone());
        self.cron
            .find_previous_occurrence(&z, true)
            .ok()
            .map(|n| n.timestamp())
    }
}

/// What the schedule says at `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The tick to run now, if any.
    pub tick: Option<Timestamp>,
    /// The newest tick after `since`, run or not: the next `since`.
    pub latest: Option<Timestamp>,
    /// Ticks after `since` that will never run: older than the newest, or past the deadline.
    pub missed: u32,
    /// The newest tick was found but `startingDeadlineSeconds` had already passed.
    pub deadline_passed: bool,
    /// The first tick after `now`.
    pub next: Option<Timestamp>,
}

/// The tick due at `now` for a schedule last run at `since` (or created then).
pub fn due(s: &Schedule, since: Timestamp, now: Timestamp, deadline_secs: Option<i64>) -> Due {
    let next = s.next_after(now);
    let latest = s.latest_at_or_before(now).filter(|t| *t > since);
    let Some(latest) = latest else {
        return Due {
            tick: None,
            latest: None,
            missed: 0,
            deadline_passed: false,
            next,
        };
    };
    // Ticks strictly between `since` and the newest one were skipped by downtime.
    let mut skipped = 0;
    let mut t = since;
    while skipped < MISSED_COUNT_CAP {
        match s.next_after(t) {
            Some(n) if n < latest => {
                skipped += 1;
                t = n;
            }
            _ => break,
        }
    }
    let late = deadline_secs.is_some_and(|d| now.as_second() - latest.as_second() > d.max(0));
    Due {
        tick: (!late).then_some(latest),
        latest: Some(latest),
        missed: skipped + u32::from(late),
        deadline_passed: late,
        next,
    }
}

/// A deterministic BackupRun name for (policy, domain, tick): a retried pass creates the same
/// name, so the API's AlreadyExists turns a duplicate into a no-op. The result is a DNS-1123
/// label of at most 63 characters. When the domain had to be changed to fit (case, `_`,
/// length), a short hash of the real name keeps two such domains apart.
pub fn run_name(policy: &str, domain: &str, tick: Timestamp) -> String {
    name_with(policy, domain, tick, "")
}

/// The name of the Local run (a local restore point) of (policy, domain, tick): the run name
/// with `-lp` after the stamp, so a backup and a point of the same tick never share a name.
pub fn local_run_name(policy: &str, domain: &str, tick: Timestamp) -> String {
    name_with(policy, domain, tick, "-lp")
}

fn name_with(policy: &str, domain: &str, tick: Timestamp, suffix: &str) -> String {
    let stamp = format!("{}{suffix}", tick.strftime("%Y%m%d-%H%M"));
    let pol = dns_label_part(policy);
    let dom = dns_label_part(domain);
    let mut hashed = dom != domain || pol != policy;
    // 63 = policy + '-' + domain + '-' + stamp (13 + suffix) [+ '-' + hash (6)]
    let mut avail = 63 - 15 - suffix.len() - if hashed { 7 } else { 0 };
    if !hashed && pol.len() + dom.len() > avail {
        hashed = true;
        avail -= 7;
    }
    let pol_len = pol
        .len()
        .min(avail.saturating_sub(dom.len()).max(avail / 2));
    let dom_len = dom.len().min(avail - pol_len);
    let pol = trim_dashes(&pol[..pol_len]);
    let dom = trim_dashes(&dom[..dom_len]);
    if hashed {
        use sha2::Digest;
        let d = sha2::Sha256::digest(format!("{policy}\0{domain}").as_bytes());
        format!("{pol}-{dom}-{stamp}-{}", hex::encode(&d[..3]))
    } else {
        format!("{pol}-{dom}-{stamp}")
    }
}

fn dns_label_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    trim_dashes(&out).to_string()
}

fn trim_dashes(s: &str) -> &str {
    s.trim_matches('-')
}

/// The name of a run or restore started by hand (not by a schedule): a DNS-1123 name from
/// the domain name and the time, with a random suffix: `web-20260101-120000-3f2a`.
pub fn adhoc_run_name(domain: &str, now: Timestamp) -> String {
    let mut base: String = domain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    base.truncate(30);
    if base.is_empty() {
        base = "domain".into();
    }
    let t = now.strftime("%Y%m%d-%H%M%S");
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..4];
    format!("{}-{t}-{suffix}", base.trim_end_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn bad_cron_and_bad_zone_are_named_in_the_error() {
        assert!(Schedule::parse("61 * * * *", None)
            .unwrap_err()
            .contains("cron"));
        assert!(Schedule::parse("0 2 * * * *", None).is_err());
        assert!(Schedule::parse("0 2 * * *", Some("Mars/Olympus"))
            .unwrap_err()
            .contains("timeZone"));
        assert!(Schedule::parse("@daily", Some("Europe/Berlin")).is_ok());
    }

    #[test]
    fn a_nightly_schedule_is_read_in_its_time_zone() {
        let s = Schedule::parse("0 2 * * *", Some("Europe/Berlin")).unwrap();
        // 02:00 CET is 01:00 UTC in winter.
        assert_eq!(
            s.next_after(ts("2026-11-22T00:00:00Z")),
            Some(ts("2026-11-22T01:00:00Z"))
        );
    }

    #[test]
    fn the_spring_forward_gap_runs_once_right_after_the_gap() {
        // 2026-03-29 Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
        let s = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let a = s.next_after(ts("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(a, ts("2026-03-29T01:00:00Z"), "03:00 CEST, once");
        let b = s.next_after(a).unwrap();
        assert_eq!(b, ts("2026-03-30T00:30:00Z"), "02:30 CEST the next day");
    }

    #[test]
    fn the_fall_back_overlap_runs_a_fixed_time_job_once() {
        // 2026-10-25 Berlin: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let s = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let a = s.next_after(ts("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(a, ts("2026-10-25T00:30:00Z"), "the first 02:30 (CEST)");
        let b = s.next_after(a).unwrap();
        assert_eq!(b, ts("2026-10-26T01:30:00Z"), "02:30 CET the next day");
    }

    #[test]
    fn nothing_is_due_before_the_first_tick() {
        let s = Schedule::parse("0 2 * * *", None).unwrap();
        let d = due(
            &s,
            ts("2026-11-22T03:00:00Z"),
            ts("2026-11-22T04:00:00Z"),
            None,
        );
        assert_eq!(d.tick, None);
        assert_eq!(d.missed, 0);
        assert_eq!(d.next, Some(ts("2026-11-23T02:00:00Z")));
    }

    #[test]
    fn a_due_tick_is_returned_once_and_not_again_after_it_was_scheduled() {
        let s = Schedule::parse("0 2 * * *", None).unwrap();
        let now = ts("2026-11-22T02:00:30Z");
        let d = due(&s, ts("2026-11-21T12:00:00Z"), now, None);
        assert_eq!(d.tick, Some(ts("2026-11-22T02:00:00Z")));
        assert_eq!(d.missed, 0);
        let again = due(&s, d.tick.unwrap(), now, None);
        assert_eq!(again.tick, None);
    }

    #[test]
    fn after_downtime_only_the_newest_tick_runs_and_the_rest_are_counted() {
        let s = Schedule::parse("0 * * * *", None).unwrap();
        let d = due(
            &s,
            ts("2026-11-22T00:00:00Z"),
            ts("2026-11-22T05:10:00Z"),
            None,
        );
        assert_eq!(d.tick, Some(ts("2026-11-22T05:00:00Z")));
        assert_eq!(d.missed, 4, "01:00 to 04:00");
    }

    #[test]
    fn a_tick_past_the_starting_deadline_is_missed_not_run() {
        let s = Schedule::parse("0 2 * * *", None).unwrap();
        let d = due(
            &s,
            ts("2026-11-21T12:00:00Z"),
            ts("2026-11-22T02:10:00Z"),
            Some(300),
        );
        assert_eq!(d.tick, None);
        assert!(d.deadline_passed);
        assert_eq!(d.missed, 1);
        let in_time = due(
            &s,
            ts("2026-11-21T12:00:00Z"),
            ts("2026-11-22T02:04:00Z"),
            Some(300),
        );
        assert_eq!(in_time.tick, Some(ts("2026-11-22T02:00:00Z")));
    }

    #[test]
    fn a_year_of_minutely_downtime_is_counted_up_to_the_cap() {
        let s = Schedule::parse("* * * * *", None).unwrap();
        let d = due(
            &s,
            ts("2025-11-22T00:00:00Z"),
            ts("2026-11-22T00:00:30Z"),
            None,
        );
        assert_eq!(d.tick, Some(ts("2026-11-22T00:00:00Z")));
        assert_eq!(d.missed, MISSED_COUNT_CAP);
    }

    #[test]
    fn run_names_are_deterministic_dns_labels() {
        let t = ts("2026-11-22T02:00:00Z");
        assert_eq!(
            run_name("nightly", "web-1", t),
            "nightly-web-1-20261122-0200"
        );
        assert_eq!(
            run_name("nightly", "web-1", t),
            run_name("nightly", "web-1", t)
        );
        let a = run_name("nightly", "Web_1", t);
        let b = run_name("nightly", "web_1", t);
        assert_ne!(a, b, "case and '_' are folded, the hash keeps them apart");
        let long = run_name(&"p".repeat(80), &"d".repeat(200), t);
        assert!(long.len() <= 63, "{long}");
        for n in [a, b, long] {
            assert!(n.len() <= 63);
            assert!(n
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
            assert!(!n.starts_with('-') && !n.ends_with('-'));
        }
    }

    #[test]
    fn a_local_point_and_a_backup_of_the_same_tick_never_share_a_name() {
        let t = ts("2026-11-22T02:00:00Z");
        assert_eq!(
            local_run_name("nightly", "web-1", t),
            "nightly-web-1-20261122-0200-lp"
        );
        for (p, d) in [("nightly", "web-1"), (&*"p".repeat(80), &*"d".repeat(200))] {
            let (l, b) = (local_run_name(p, d, t), run_name(p, d, t));
            assert_ne!(l, b);
            assert!(l.len() <= 63, "{l}");
        }
    }

    #[test]
    fn hand_started_run_names_are_dns_safe_even_for_hostile_domain_names() {
        let n = adhoc_run_name("Web;rm -rf /`x`", "2026-01-02T03:04:05Z".parse().unwrap());
        assert!(n.starts_with("web-rm-rf-x-20260102-030405-"), "{n}");
        assert!(n
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert!(adhoc_run_name("", Timestamp::now()).starts_with("domain-"));
    }
}
