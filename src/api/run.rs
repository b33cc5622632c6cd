//! BackupRun: one backup of one domain. Its status is the journal of the run's phases.

use jiff::Timestamp;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, Failure, Hooks};
use super::policy::{BackupMode, Consistency, FullCadence};

#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "snapback.dev",
    version = "v1alpha1",
    kind = "BackupRun",
    namespaced,
    shortname = "br",
    category = "snapback",
    status = "BackupRunStatus",
    printcolumn = r#"{"name":"Domain","type":"string","jsonPath":".spec.domain"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".status.type"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".status.duration"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Expires","type":"date","priority":1,"jsonPath":".status.expiresAt"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.virtualMachine) || self.domain == self.virtualMachine.__namespace__ + '/' + self.virtualMachine.name",
    "message": "a run of a KubeVirt VM names it in domain as NAMESPACE/NAME"
}]))]
pub struct BackupRunSpec {
    /// Domain name or UUID; for a KubeVirt VM, `NAMESPACE/NAME` (the key its runs and chains
    /// are kept by).
    pub domain: String,
    /// A KubeVirt VirtualMachine, backed up through KubeVirt's backup API by the
    /// kubevirt-worker instead of a node agent. Its chain lives under
    /// `<target>/kubevirt/<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine: Option<VmRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<String>,
    /// Name of a BackupTarget (Kubernetes) or the target URL (single host).
    pub target_ref: String,
    #[serde(default, rename = "type")]
    pub type_: RequestedType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Settings copied from the policy (or the command line) when the run was created, so a
    /// run is reproducible even if the policy changes while it runs.
    #[serde(default)]
    pub consistency: Consistency,
    #[serde(default)]
    pub hooks: Hooks,
    #[serde(default)]
    pub full_cadence: FullCadence,
    #[serde(default)]
    pub depth: i32,
    /// `Image` (disk images, checkpoint incrementals) or `Files` (the guest's filesystems,
    /// mounted read-only from a point-in-time export; duplicity's file incrementals).
    #[serde(default, skip_serializing_if = "is_image")]
    pub mode: BackupMode,
    /// Files mode: guest paths to back up (absolute, e.g. `/etc`); empty means everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Files mode: guest paths to leave out (absolute; duplicity globs allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// `Enable`: raw and block disks get a changed-block tracking overlay first.
    #[serde(
        default,
        skip_serializing_if = "crate::api::ChangedBlockTracking::is_leave"
    )]
    pub changed_block_tracking: crate::api::ChangedBlockTracking,
    /// The directory for those overlays (default `/var/lib/libvirt/images`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_block_tracking_dir: Option<String>,
    /// `Include`: the point also holds the domain's saved RAM and device state.
    #[serde(default, skip_serializing_if = "crate::api::MemoryState::is_exclude")]
    pub memory: crate::api::MemoryState,
}

/// A KubeVirt VirtualMachine by namespace and name.
#[derive(
    Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord,
)]
pub struct VmRef {
    pub namespace: String,
    pub name: String,
}

impl VmRef {
    /// The run's `domain` for this VM.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn is_image(m: &BackupMode) -> bool {
    *m == BackupMode::Image
}

impl BackupRunSpec {
    /// A scheduled run of `domain` for a policy: its target, consistency, hooks, full cadence
    /// and depth, type auto. Both front-ends' schedulers build runs with this.
    pub fn from_policy(policy_name: &str, p: &crate::api::BackupPolicySpec, domain: &str) -> Self {
        let mut spec = Self::new(domain, p.target_ref.clone());
        spec.policy_ref = Some(policy_name.to_string());
        spec.consistency = p.consistency.clone();
        spec.hooks = p.hooks.clone();
        spec.full_cadence = p.full_cadence.clone();
        spec.depth = p.depth;
        spec.mode = p.mode;
        spec.include = p.include.clone();
        spec.exclude = p.exclude.clone();
        spec.changed_block_tracking = p.changed_block_tracking;
        spec.changed_block_tracking_dir = p.changed_block_tracking_dir.clone();
        spec.memory = p.memory;
        spec
    }

    /// A spec with every setting at its default: type auto, no policy, no hooks.
    pub fn new(domain: impl Into<String>, target_ref: impl Into<String>) -> Self {
        Self {
            domain: domain.into(),
            virtual_machine: None,
            policy_ref: None,
            target_ref: target_ref.into(),
            type_: RequestedType::Auto,
            node_name: None,
            consistency: Consistency::default(),
            hooks: Hooks::default(),
            full_cadence: FullCadence::default(),
            depth: 0,
            mode: BackupMode::Image,
            include: Vec::new(),
            exclude: Vec::new(),
            changed_block_tracking: crate::api::ChangedBlockTracking::Leave,
            changed_block_tracking_dir: None,
            memory: crate::api::MemoryState::Exclude,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum RequestedType {
    /// Incremental when libvirt and the target hold a valid chain, else full.
    #[default]
    Auto,
    Full,
    Incremental,
    /// A local restore point (a policy's `localSnapshots`): a snapshot inside the VM's own
    /// disks, nothing sent to the target. It is never part of a chain.
    Local,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum BackupType {
    Full,
    Incremental,
    /// A local restore point.
    Local,
}

impl BackupRunSpec {
    /// A local restore point's run: never a member of a backup chain, never verified,
    /// never pruned with one.
    pub fn is_local(&self) -> bool {
        self.type_ == RequestedType::Local
    }
}

/// Why a run is a full backup (stable words).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum FullReason {
    /// The type was `Full`.
    Requested,
    /// No earlier successful backup of this domain to this target.
    NoChain,
    /// The previous run's checkpoint is gone from libvirt.
    CheckpointMissing,
    /// The domain was reverted to a local restore point since the previous run: the revert
    /// dropped the chain's checkpoints (QEMU cannot revert with dirty bitmaps present).
    LocalRevert,
    /// The previous run's checkpoint bitmap is missing or inconsistent (e.g. after a qemu crash).
    CheckpointInconsistent,
    /// The target no longer holds the chain the previous run wrote.
    TargetChainMissing,
    /// Disks were added or removed since the chain's full.
    DiskSetChanged,
    /// A disk was resized since the chain's full.
    DiskSizeChanged,
    /// The policy's full cadence (`fullEvery` / `maxIncrementals`) has passed.
    FullCadence,
    /// The domain is shut off: its disks are exported whole from their files.
    DomainShutOff,
    /// The disk is a raw file or a block device: libvirt keeps no changed-block bitmap for
    /// it, so it is exported whole every run (per disk; for the run when no disk has one).
    NoBitmapSupport,
}

/// The phases of a backup run, in order.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum BackupPhase {
    #[default]
    Pending,
    Preparing,
    Snapshotting,
    Exporting,
    Uploading,
    Finalizing,
    Succeeded,
    Failed,
    /// The domain was shut off and the policy says `offline: Skip`.
    Skipped,
}

impl BackupPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Skipped)
    }
}

/// One disk of the run.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunDisk {
    /// The target device name (`vda`).
    pub name: String,
    /// The disk's top image (file or block device).
    pub source: String,
    pub format: String,
    pub virtual_size: u64,
    /// The export file name inside the staging directory (and on the target).
    pub export_file: String,
    #[serde(default)]
    pub export_bytes: u64,
    /// SHA-256 of the export file, recorded for verification at restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Why this disk's export is whole in an incremental run (`NoBitmapSupport`), or the
    /// run's own reason in a full one. Unset on a disk exported incrementally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<FullReason>,
}

impl RunDisk {
    /// Whether this disk's export holds only the changes since the previous point (and
    /// needs that point's export of the disk beneath it).
    pub fn is_incremental(&self, run: BackupType) -> bool {
        run == BackupType::Incremental && self.full_reason.is_none()
    }

    /// Whether libvirt can keep a changed-block bitmap for a disk of this top-image format.
    pub fn tracks_changes(format: &str) -> bool {
        format == "qcow2"
    }
}

/// What a piece of firmware state is.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum FirmwareKind {
    /// The UEFI variable store: boot entries, Secure Boot keys.
    Nvram,
    /// The persistent state of an emulated TPM 2.0 (swtpm).
    TpmState,
}

/// A file the domain's XML names beside its disks.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DomainFile {
    /// `loader`, `nvram`, `kernel`, `initrd`, `dtb`, `tpm`, or the device element that names
    /// it (`serial`, `channel`, `filesystem`, `memory`, `rng` ...).
    pub role: String,
    pub path: String,
    /// Written by the domain (its own, saved with the point), or read-only (shared, not saved).
    pub writable: bool,
}

/// Firmware state saved whole with a backup point, beside its disks.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FirmwareFile {
    pub kind: FirmwareKind,
    /// The file name in staging and on the target.
    pub file: String,
    /// Where the domain kept it.
    pub source: String,
    pub sha256: String,
}

/// A domain's saved RAM and device state, one file of a point: libvirt's save image
/// (`virsh restore` loads it), taken while the vCPUs were paused at the disks' instant.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryFile {
    /// The file name in staging and on the target.
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
}

/// The output of one hook execution.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HookResult {
    pub hook: String,
    /// preSnapshot, onSnapshot, postSnapshot ...
    pub stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// stdout and stderr, truncated.
    #[serde(default)]
    pub output: String,
    pub duration_ms: u64,
    pub succeeded: bool,
}

/// The start and end of one phase (of a backup run, or of a restore).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PhaseRecord<P = BackupPhase> {
    pub phase: P,
    #[schemars(with = "String")]
    pub start_time: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub end_time: Option<Timestamp>,
}

/// Progress of the current long step.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: u64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupRunStatus {
    #[serde(default)]
    pub phase: BackupPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub start_time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub completion_time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,

    /// The domain's name, resolved in Preparing: its backups live under `<target>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_name: Option<String>,
    /// The domain's UUID, resolved in Preparing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_uuid: Option<String>,
    /// The resolved type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<BackupType>,
    /// Why this run is a full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<FullReason>,
    /// The checkpoint this run creates (the base of the next incremental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// The checkpoint an incremental is taken since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_checkpoint: Option<String>,
    /// The name of the run holding this chain's full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// Position in the chain: 0 for the full.
    #[serde(default)]
    pub chain_index: u32,
    /// Whether the domain was running (push-mode job) or shut off (exported from files).
    #[serde(default)]
    pub online: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<RunDisk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging_dir: Option<String>,
    /// LVM snapshots (`VG/NAME`) taken of a shut-off domain's logical volumes for their
    /// export: recorded before each is created, gone once the run ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lvm_snapshots: Vec<String>,
    /// The target URL with any password removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    /// The verify schedule's tick the last verify of this run's domain answered (set on the
    /// domain's newest run), so each tick verifies once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_verify_tick: Option<Timestamp>,

    /// Recorded before the guest is frozen and cleared after thaw, so a resumed run thaws.
    #[serde(default)]
    pub guest_frozen: bool,
    /// Recorded before the guest is paused and cleared after resume.
    #[serde(default)]
    pub guest_paused: bool,
    /// Memory runs: set when the run begins capturing the RAM state and cleared once it is
    /// saved or given up, so a resumed run knows the state is missing (it fails: the disks'
    /// instant is gone) and waits for libvirt's save to end before it resumes the guest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory_pending: bool,
    #[serde(default)]
    pub quiesced: bool,
    /// How long guest filesystems were frozen (or vCPUs paused), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_window_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub snapshot_time: Option<Timestamp>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Total bytes of the exports.
    #[serde(default)]
    pub size_bytes: u64,
    /// `size_bytes` for humans (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Wall time from start to completion, for humans (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// How many times the upload was started (more than one after a resume).
    #[serde(default)]
    pub upload_attempts: u32,
    #[serde(default)]
    pub uploaded: bool,
    /// duplicity's time for this backup set: `restore --time` at or after it restores this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub target_time: Option<Timestamp>,
    /// The firmware state saved with this point (UEFI NVRAM, TPM state).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firmware: Vec<FirmwareFile>,
    /// The RAM and device state saved with this point (`memory: Include`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_state: Option<MemoryFile>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookResult>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseRecord>,
    /// Files mode: the guest filesystems backed up, as `disk` (whole disk) or `diskpN`
    /// (partition N) with their type; their trees are the top directories of the backup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filesystems: Vec<String>,
    /// A local point (type `Local`): the snapshot's name on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_point: Option<String>,
    /// A local point: when its expiry rules let it go (an earlier `maxCount` may take it
    /// first). Once deleted, the run gets the `Expired` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub expires_at: Option<Timestamp>,
    /// How long the guest did not run while its state was captured, in seconds: for a memory
    /// run, the pause for the disks' instant and the RAM state; for a local point, the
    /// snapshot's pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_seconds: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheduled_run_carries_the_policys_memory_state_and_a_plain_one_does_not_name_it() {
        let policy: crate::api::BackupPolicySpec = serde_json::from_value(serde_json::json!({
            "domainSelector": {"names": ["web"]}, "targetRef": "t", "schedule": "@daily",
            "memory": "Include"
        }))
        .unwrap();
        let run = BackupRunSpec::from_policy("nightly", &policy, "web");
        assert_eq!(run.memory, crate::api::MemoryState::Include);
        let plain = serde_json::to_string(&BackupRunSpec::new("web", "t")).unwrap();
        assert!(!plain.contains("memory"), "{plain}");
        let status = serde_json::to_string(&BackupRunStatus::default()).unwrap();
        assert!(!status.contains("pausedSeconds") && !status.contains("memory"));
    }

    #[test]
    fn a_scheduled_run_carries_the_policys_changed_block_tracking() {
        let policy: crate::api::BackupPolicySpec = serde_json::from_value(serde_json::json!({
            "domainSelector": {"names": ["web"]}, "targetRef": "t", "schedule": "@daily",
            "changedBlockTracking": "Enable", "changedBlockTrackingDir": "/srv/cbt"
        }))
        .unwrap();
        let run = BackupRunSpec::from_policy("nightly", &policy, "web");
        assert_eq!(
            run.changed_block_tracking,
            crate::api::ChangedBlockTracking::Enable
        );
        assert_eq!(run.changed_block_tracking_dir.as_deref(), Some("/srv/cbt"));
        let plain = BackupRunSpec::new("web", "t");
        assert!(
            !serde_json::to_string(&plain)
                .unwrap()
                .contains("changedBlockTracking"),
            "a run that leaves it says nothing about it"
        );
    }
}
