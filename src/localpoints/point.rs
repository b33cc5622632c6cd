//! A local restore point: what snapback records on its own snapshots, how it names them, and
//! how it tells them from snapshots it did not make (pure).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::source::SnapshotInfo;

/// Every point snapback takes starts its snapshot's description with this: a snapshot without
/// it (made with `virsh snapshot-create-as`, virt-manager, ...) is never listed, expired or
/// reverted to.
pub const MARK: &str = "snapback-local-point v1 ";

/// Every point's name starts with this.
pub const NAME_PREFIX: &str = "snapback-";

/// What snapback writes after `MARK`, as JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recorded {
    /// The time the point was asked for, to the nanosecond (libvirt records whole seconds).
    pub created: Timestamp,
    /// Whether the guest's filesystems were frozen through its agent for it: a revert to it
    /// comes back frozen and is thawed.
    pub quiesced: bool,
    /// How long the guest was paused while the snapshot was taken, in milliseconds; `None`
    /// until measured (a take that was killed in the middle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_ms: Option<u64>,
    /// The policy that took it (its `localSnapshots` rules expire it); `None`: taken by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The schedule's tick it answers: the time its policy's rules match, so a point taken a
    /// minute late (it waited for a run slot) is still the midnight point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<Timestamp>,
}

/// A local restore point of a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    pub name: String,
    pub domain: String,
    pub created: Timestamp,
    /// Whether it holds the VM's RAM (a revert resumes it running where it was).
    pub memory: bool,
    /// Inside the qcow2 images (internal) rather than in files beside them (external).
    pub internal: bool,
    pub quiesced: bool,
    pub paused_ms: Option<u64>,
    pub policy: Option<String>,
    pub scheduled: Option<Timestamp>,
}

impl Point {
    /// The time its expiry rules are matched against: the tick it answers, else when it was
    /// taken.
    pub fn rule_time(&self) -> Timestamp {
        self.scheduled.unwrap_or(self.created)
    }

    /// The point a snapshot is, if snapback made it.
    pub fn from_snapshot(domain: &str, s: &SnapshotInfo) -> Option<Point> {
        let rec = parse_description(&s.description)?;
        Some(Point {
            name: s.name.clone(),
            domain: domain.to_string(),
            created: rec.created,
            memory: s.memory,
            internal: s.internal,
            quiesced: rec.quiesced,
            paused_ms: rec.paused_ms,
            policy: rec.policy,
            scheduled: rec.scheduled,
        })
    }
}

pub fn description(rec: &Recorded) -> String {
    format!(
        "{MARK}{}",
        serde_json::to_string(rec).expect("a record serializes")
    )
}

/// The record in a snapshot's description; `None` for a snapshot snapback did not make.
pub fn parse_description(d: &str) -> Option<Recorded> {
    serde_json::from_str(d.strip_prefix(MARK)?.trim()).ok()
}

/// The name of a point taken at `t` whose `attempt`-th try this is: `snapback-20261201T031500Z`,
/// then `-1`, `-2`... Names are not made unique by the clock (two points can be taken in one
/// second, and clocks step back): libvirt refuses a name that exists, and the taker tries the
/// next one.
pub fn point_name(t: Timestamp, attempt: u32) -> String {
    let stamp = t.strftime("%Y%m%dT%H%M%SZ");
    if attempt == 0 {
        format!("{NAME_PREFIX}{stamp}")
    } else {
        format!("{NAME_PREFIX}{stamp}-{attempt}")
    }
}

/// The points among a domain's snapshots, oldest first.
pub fn points_of(domain: &str, snapshots: &[SnapshotInfo]) -> Vec<Point> {
    let mut out: Vec<Point> = snapshots
        .iter()
        .filter_map(|s| Point::from_snapshot(domain, s))
        .collect();
    out.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, description: &str) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            description: description.into(),
            created_secs: 0,
            memory: true,
            internal: true,
        }
    }

    #[test]
    fn a_snapshot_snapback_did_not_make_is_not_a_point_even_with_its_name_style() {
        let ours = description(&Recorded {
            created: "2026-12-01T03:15:00.5Z".parse().unwrap(),
            quiesced: true,
            paused_ms: Some(412),
            ..Default::default()
        });
        let snaps = [
            snap("snapback-20261201T031500Z", &ours),
            snap("snapback-20261201T031600Z", ""),
            snap("before-upgrade", "my own"),
            snap("x", "snapback-local-point v1 not json"),
        ];
        let points = points_of("web1", &snaps);
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].name, "snapback-20261201T031500Z");
        assert!(points[0].quiesced);
        assert_eq!(points[0].paused_ms, Some(412));
    }

    #[test]
    fn two_points_in_one_second_get_different_names_by_attempt() {
        let t: Timestamp = "2026-12-01T03:15:00.9Z".parse().unwrap();
        assert_eq!(point_name(t, 0), "snapback-20261201T031500Z");
        assert_eq!(point_name(t, 1), "snapback-20261201T031500Z-1");
        assert_ne!(point_name(t, 1), point_name(t, 2));
    }

    #[test]
    fn a_record_without_a_measured_pause_reads_back() {
        let r = Recorded {
            created: "2026-12-01T03:15:00Z".parse().unwrap(),
            quiesced: false,
            paused_ms: None,
            policy: Some("hourly".into()),
            scheduled: Some("2026-12-01T03:00:00Z".parse().unwrap()),
        };
        assert_eq!(parse_description(&description(&r)), Some(r));
    }
}
