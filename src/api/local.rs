//! A policy's local restore points: snapshots kept on the VM's own host, beside the remote
//! backups. They are fast to take and to go back to, and a lost disk loses them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::policy::{MemoryState, Quiesce};

fn include() -> MemoryState {
    MemoryState::Include
}

/// Local restore points of each selected VM, taken on a schedule of their own and expired by
/// rules. They need no target: each is a snapshot inside the VM's own disks.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalSnapshotsSpec {
    /// When to take a point: a cron expression (5 fields), read in the policy's `timeZone`.
    pub schedule: String,
    /// How long points are kept. Of the rules whose `match` covers a point's time, the one
    /// with the longest `after` wins; a point no rule matches is kept for the shortest
    /// `after` of all.
    #[schemars(length(min = 1))]
    pub expire: Vec<ExpireRule>,
    /// `Include` (the default here): a point of a running VM keeps its RAM, and a revert
    /// resumes it where it was. `Exclude` is not built yet.
    #[serde(default = "include")]
    pub memory: MemoryState,
    /// At most this many points per VM: the oldest go first, whatever their rules say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_count: Option<u32>,
    /// Mount each point's guest filesystems read-only for browsing (and Samba or NFS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browse: Option<BrowseSpec>,
    #[serde(default)]
    pub quiesce: Quiesce,
}

/// One expiry rule.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExpireRule {
    /// The points this rule covers: a cron expression (5 fields) their time matches, read in
    /// the policy's `timeZone` (`0 0 * * 0`: the points taken at midnight on Sundays).
    #[serde(rename = "match")]
    pub match_: String,
    /// How long a covered point is kept after it was taken (`36h`, `14d`).
    pub after: String,
}

/// Where a policy's points are mounted for browsing.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BrowseSpec {
    /// Each point is mounted read-only under `<dir>/<vm>/@GMT-%Y.%m.%d-%H.%M.%S`, the name
    /// Samba's `shadow_copy2` module shows as a Windows "Previous Version".
    pub dir: String,
    /// A directory that gets a symlink per mounted point, named for the VM and the point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_dir: Option<String>,
    /// Write a Samba share snippet (`shadow_copy2`) for each VM into `dir`.
    #[serde(default)]
    pub samba: bool,
    /// Write an nfs-ganesha export block for each VM into `dir`.
    #[serde(default)]
    pub nfs: bool,
}
