//! BackupPolicy: what to back up, when, how, and for how long.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, Hooks};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "snapback.dev",
    version = "v1alpha1",
    kind = "BackupPolicy",
    namespaced,
    shortname = "bp",
    category = "snapback",
    status = "BackupPolicyStatus",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Suspend","type":"boolean","jsonPath":".spec.suspend"}"#,
    printcolumn = r#"{"name":"Last Success","type":"date","jsonPath":".status.lastSuccessfulTime"}"#,
    printcolumn = r#"{"name":"Next","type":"date","jsonPath":".status.nextScheduleTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.domainSelector) != has(self.virtualMachineSelector)",
    "message": "select libvirt domains (domainSelector) or KubeVirt VMs (virtualMachineSelector), one of the two"
}]))]
pub struct BackupPolicySpec {
    /// libvirt domains on the nodes' hosts. One of this and `virtualMachineSelector`.
    #[serde(default, skip_serializing_if = "DomainSelector::is_empty")]
    pub domain_selector: DomainSelector,
    /// KubeVirt VirtualMachines, backed up through KubeVirt's backup API. One of this and
    /// `domainSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine_selector: Option<VirtualMachineSelector>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Name of the BackupTarget in the same namespace.
    pub target_ref: String,
    /// A cron expression (5 fields).
    pub schedule: String,
    /// IANA time zone the schedule is read in; UTC when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub suspend: bool,
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline_seconds: Option<i64>,
    #[serde(default)]
    pub mode: BackupMode,
    #[serde(default)]
    pub consistency: Consistency,
    #[serde(default)]
    pub hooks: Hooks,
    #[serde(default)]
    pub full_cadence: FullCadence,
    /// Files mode: guest paths to back up (absolute, e.g. `/etc`); empty means everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Files mode: guest paths to leave out (absolute; duplicity globs allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Which backups to keep on the target; applied by `snapback prune`.
    #[serde(default)]
    pub retention: crate::api::RetentionSpec,
    /// Backing-chain depth: 0 = whole chain, -1 = all but the shared base, N = top N images.
    #[serde(default)]
    pub depth: i32,
    /// `Enable`: raw and block disks get a changed-block tracking overlay before a backup.
    #[serde(default, skip_serializing_if = "ChangedBlockTracking::is_leave")]
    pub changed_block_tracking: ChangedBlockTracking,
    /// The directory for those overlays (default `/var/lib/libvirt/images`); it must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_block_tracking_dir: Option<String>,
    /// `Include`: each point of a running domain also holds its saved RAM and device state,
    /// captured at the disks' instant (the guest is paused while the job and the state are
    /// taken: `status.pausedSeconds`), so `restore --resume` brings it back running.
    #[serde(default, skip_serializing_if = "MemoryState::is_exclude")]
    pub memory: MemoryState,
    /// Reads the backups back from the target on a schedule of its own (`snapback verify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
    /// Local restore points: snapshots on the VM's own host, on a schedule of their own,
    /// expired by rules. Recorded as runs of type `Local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_snapshots: Option<super::local::LocalSnapshotsSpec>,
    #[serde(default = "default_success_limit")]
    pub successful_runs_history_limit: u32,
    #[serde(default = "default_failed_limit")]
    pub failed_runs_history_limit: u32,
}

/// A verify job: each selected domain's backups are read back from the target and checked
/// against the SHA-256 recorded at backup time, and the rebuilt chain with `qemu-img check`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// A cron expression (5 fields), read in the policy's `timeZone`.
    pub schedule: String,
    /// Every point on the target, instead of the newest only.
    #[serde(default)]
    pub all: bool,
}

fn default_success_limit() -> u32 {
    10
}
fn default_failed_limit() -> u32 {
    3
}

/// Which domains a policy covers. A domain matches when any listed rule matches it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.names) && size(self.names) > 0) || (has(self.globs) && size(self.globs) > 0) || (has(self.metadata) && size(self.metadata) > 0)",
    "message": "select domains by names, globs or metadata"
}]))]
pub struct DomainSelector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Shell-style globs on the domain name (`web-*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub globs: Vec<String>,
    /// Key/value pairs from the domain's `<metadata>` snapback element.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl DomainSelector {
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.globs.is_empty() && self.metadata.is_empty()
    }
}

/// Which KubeVirt VirtualMachines a policy covers: those in the namespaces chosen that match
/// every rule given (a VM matches when `names` is empty or lists it, and its labels match
/// `selector`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSelector {
    /// Namespaces by their labels. Honoured only for a policy in the namespace snapback runs
    /// in (its admins' namespace); any other policy covers the VMs of its own namespace, so
    /// a namespace's users cannot copy another namespace's disks to their target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// VMs by their labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// VMs by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ConcurrencyPolicy {
    #[default]
    Forbid,
    Allow,
    Replace,
}

/// What a run does about changed-block tracking for the domain's raw and block disks.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ChangedBlockTracking {
    /// Change nothing (what `snapback cbt` set up stays).
    #[default]
    Leave,
    /// Before the backup, give each raw disk a qcow2 overlay (`snapback cbt enable`): from the
    /// domain's next start, its backups of those disks are incremental. Recorded on the run
    /// as the `ChangedBlockTracking` condition (`Enabled`, `PendingRestart`, `EnableFailed`).
    Enable,
}

impl ChangedBlockTracking {
    pub fn is_leave(&self) -> bool {
        *self == Self::Leave
    }
}

/// Whether a point holds the VM's RAM and device state beside its disks.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum MemoryState {
    /// Disks (and firmware state) only: a restored VM boots.
    #[default]
    Exclude,
    /// The saved RAM and device state too, of the disks' instant: a restored VM can resume
    /// where it was (`restore --resume`).
    Include,
}

impl MemoryState {
    pub fn is_exclude(&self) -> bool {
        *self == Self::Exclude
    }
}

/// Where overlays go when a policy names no directory.
pub const DEFAULT_CBT_DIR: &str = "/var/lib/libvirt/images";

#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum BackupMode {
    #[default]
    Image,
    Files,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum Quiesce {
    /// Freeze guest filesystems when a guest agent answers; warn when none does.
    #[default]
    Preferred,
    /// Fail the run when the guest filesystems cannot be frozen.
    Required,
    /// Crash-consistent: never freeze.
    None,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum OfflinePolicy {
    /// Back up a shut-off domain from its disk files.
    #[default]
    Backup,
    /// Skip a shut-off domain and record why.
    Skip,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Consistency {
    #[serde(default)]
    pub quiesce: Quiesce,
    /// Pause the guest's vCPUs around the snapshot point.
    #[serde(default)]
    pub pause: bool,
    #[serde(default)]
    pub offline: OfflinePolicy,
    /// How long the guest agent may take to freeze or thaw.
    #[serde(default = "default_freeze_timeout")]
    pub freeze_timeout_seconds: u32,
}

fn default_freeze_timeout() -> u32 {
    10
}

impl Default for Consistency {
    fn default() -> Self {
        Self {
            quiesce: Quiesce::default(),
            pause: false,
            offline: OfflinePolicy::default(),
            freeze_timeout_seconds: default_freeze_timeout(),
        }
    }
}

/// When a full backup is forced even though an incremental would be possible.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FullCadence {
    /// Take a full when the chain's full is older than this (e.g. `7d`, `12h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_every: Option<String>,
    /// Take a full after this many incrementals in a chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_incrementals: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched_domains: Vec<String>,
    /// Schedule ticks that never ran: skipped by downtime (only the newest missed tick is
    /// caught up), past `startingDeadlineSeconds`, or blocked by a run still active (Forbid).
    #[serde(default)]
    pub missed_schedules: u64,
}
