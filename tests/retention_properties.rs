//! Property tests of the retention planner over random histories and rules.

use std::collections::{BTreeMap, BTreeSet};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use snapback::retention::plan::{plan, Point};
use snapback::retention::Rules;

/// A random history: gaps between points and where new chains start.
fn history() -> impl Strategy<Value = Vec<Point>> {
    prop::collection::vec((1i64..=3 * 24 * 60, any::<bool>(), 1u64..100), 1..50).prop_map(|steps| {
        let mut t: Timestamp = "2025-12-20T00:00:00Z".parse().unwrap();
        let mut chain = 0;
        steps
            .into_iter()
            .enumerate()
            .map(|(i, (gap_min, new_chain, size))| {
                t += SignedDuration::from_mins(gap_min);
                if i > 0 && new_chain {
                    chain += 1;
                }
                Point {
                    id: format!("p{i}"),
                    time: t,
                    chain: format!("c{chain:03}"),
                    full: i == 0 || new_chain,
                    size,
                    broken: None,
                }
            })
            .collect()
    })
}

fn rules() -> impl Strategy<Value = Rules> {
    (
        0u32..4,
        0u32..4,
        0u32..4,
        0u32..3,
        0u32..3,
        0u32..3,
        prop::option::of(1i64..200),
        0u32..3,
        prop::option::of(1u64..2000),
    )
        .prop_map(|(last, h, d, w, m, y, age_h, full, size)| Rules {
            keep_last: last,
            keep_hourly: h,
            keep_daily: d,
            keep_weekly: w,
            keep_monthly: m,
            keep_yearly: y,
            max_age: age_h.map(SignedDuration::from_hours),
            max_full_backups: full,
            max_total_size: size,
        })
}

/// An independent statement of what the rules select: group by period, newest groups first.
fn naive_selected(pts: &[Point], r: &Rules, tz: &TimeZone, now: Timestamp) -> BTreeSet<String> {
    let mut sel = BTreeSet::new();
    let n = pts.len();
    sel.insert(pts[n - 1].id.clone());
    for p in &pts[n.saturating_sub(r.keep_last as usize)..] {
        sel.insert(p.id.clone());
    }
    type KeyFn = fn(&jiff::Zoned) -> String;
    let keyfns: [(u32, KeyFn); 5] = [
        (r.keep_hourly, |z| z.strftime("%Y-%m-%d %H").to_string()),
        (r.keep_daily, |z| z.strftime("%Y-%m-%d").to_string()),
        (r.keep_weekly, |z| {
            let w = z.date().iso_week_date();
            format!("{:04}-W{:02}", w.year(), w.week())
        }),
        (r.keep_monthly, |z| z.strftime("%Y-%m").to_string()),
        (r.keep_yearly, |z| z.strftime("%Y").to_string()),
    ];
    for (count, key) in keyfns {
        let mut groups: BTreeMap<String, &Point> = BTreeMap::new();
        for p in pts {
            let k = key(&p.time.to_zoned(tz.clone()));
            let e = groups.entry(k).or_insert(p);
            if p.time >= e.time {
                *e = p;
            }
        }
        for (_, p) in groups.iter().rev().take(count as usize) {
            sel.insert(p.id.clone());
        }
    }
    if let Some(age) = r.max_age {
        for p in pts.iter().filter(|p| now.duration_since(p.time) < age) {
            sel.insert(p.id.clone());
        }
    }
    let mut chains: Vec<&str> = Vec::new();
    for p in pts {
        if !chains.contains(&p.chain.as_str()) {
            chains.push(&p.chain);
        }
    }
    for c in chains.iter().rev().take(r.max_full_backups as usize) {
        for p in pts.iter().filter(|p| p.chain == *c) {
            sel.insert(p.id.clone());
        }
    }
    sel
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn plans_keep_whole_chains_the_newest_point_exactly_the_selection_and_respect_the_size_limit(
        pts in history(), r in rules(), tz_berlin in any::<bool>(), writing_last in any::<bool>(),
    ) {
        let tz = if tz_berlin { TimeZone::get("Europe/Berlin").unwrap() } else { TimeZone::UTC };
        let now = pts.last().unwrap().time + SignedDuration::from_hours(1);
        let in_progress: Vec<String> = if writing_last { vec![pts.last().unwrap().chain.clone()] } else { vec![] };
        let p = plan(&pts, &r, &tz, now, &in_progress);
        prop_assert_eq!(p.decisions.len(), pts.len());

        let mut by_chain: BTreeMap<&str, BTreeSet<bool>> = BTreeMap::new();
        for d in &p.decisions {
            by_chain.entry(&d.chain).or_default().insert(d.keep);
        }
        for (c, ks) in &by_chain {
            prop_assert_eq!(ks.len(), 1, "chain {} is split", c);
        }
        prop_assert!(p.decisions.last().unwrap().keep, "the newest point is kept");
        for c in &in_progress {
            prop_assert!(!p.delete_chains.contains(c));
        }
        let kept_chains: BTreeSet<&str> = p.kept().map(|d| d.chain.as_str()).collect();
        for c in &p.delete_chains {
            prop_assert!(!kept_chains.contains(c.as_str()));
        }

        let selected = naive_selected(&pts, &r, &tz, now);
        let selected_chains: BTreeSet<&str> =
            pts.iter().filter(|q| selected.contains(&q.id) || in_progress.contains(&q.chain)).map(|q| q.chain.as_str()).collect();
        match r.max_total_size {
            None => prop_assert_eq!(&kept_chains, &selected_chains, "exactly the GFS selection is kept"),
            Some(limit) => {
                prop_assert!(kept_chains.is_subset(&selected_chains));
                let total: u64 = pts.iter().filter(|q| kept_chains.contains(q.chain.as_str())).map(|q| q.size).sum();
                if total > limit {
                    let newest_chain = pts.last().unwrap().chain.as_str();
                    for c in &kept_chains {
                        prop_assert!(*c == newest_chain || in_progress.iter().any(|x| x == c),
                            "over the limit ({} > {}) yet {} was kept", total, limit, c);
                    }
                }
                // Oldest chains go first: a dropped chain is older than every unprotected kept one.
                let newest_chain = pts.last().unwrap().chain.as_str();
                for c in selected_chains.difference(&kept_chains) {
                    for k in &kept_chains {
                        let protected = *k == newest_chain || in_progress.iter().any(|x| x == k);
                        prop_assert!(protected || k > c, "chain {} dropped while the older {} stayed", c, k);
                    }
                }
            }
        }
    }
}
