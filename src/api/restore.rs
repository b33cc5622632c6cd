//! RestoreRequest: bring a domain back from its backups at a point in time, as a new domain or
//! in place.

use jiff::Timestamp;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, Failure, Hooks};
use super::run::{BackupType, HookResult, PhaseRecord, Progress};

#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "snapback.dev",
    version = "v1alpha1",
    kind = "RestoreRequest",
    namespaced,
    shortname = "rr",
    category = "snapback",
    status = "RestoreRequestStatus",
    printcolumn = r#"{"name":"Domain","type":"string","jsonPath":".spec.domain"}"#,
    printcolumn = r#"{"name":"Point","type":"string","jsonPath":".status.point.time"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.definedDomain"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Files To","type":"string","jsonPath":".spec.files.to","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.files) || has(self.newName) != (has(self.inPlace) && self.inPlace)",
    "message": "set exactly one of newName, inPlace: true and files"
}, {
    "rule": "!has(self.files) || !(has(self.newName) || (has(self.inPlace) && self.inPlace) || has(self.storageDir) || (has(self.start) && self.start) || (has(self.resume) && self.resume) || (has(self.targetDevices) && size(self.targetDevices) > 0) || (has(self.overwrite) && self.overwrite) || has(self.diskFormat))",
    "message": "files restores files into a directory: it takes none of newName, inPlace, storageDir, start, resume, targetDevices, overwrite and diskFormat"
}, {
    "rule": "!has(self.source) || self.source != 'Local' || ((has(self.inPlace) && self.inPlace) && !has(self.storageDir) && !(has(self.targetDevices) && size(self.targetDevices) > 0) && !has(self.diskFormat) && !(has(self.resume) && self.resume))",
    "message": "source: Local reverts the domain in place to a local point: it takes inPlace: true and none of storageDir, targetDevices, diskFormat and resume (a point with RAM resumes by itself)"
}, {
    "rule": "!has(self.localPoint) || (has(self.source) && self.source == 'Local')",
    "message": "localPoint names a local point: it needs source: Local"
}, {
    "rule": "(has(self.source) && self.source == 'Local') || (has(self.targetRef) && size(self.targetRef) > 0)",
    "message": "targetRef is required unless source is Local"
}]))]
pub struct RestoreRequestSpec {
    /// The backed-up domain's name (its directory on the target).
    pub domain: String,
    /// Name of a BackupTarget (Kubernetes) or the target URL (single host). Not read for
    /// `source: Local`.
    #[serde(default)]
    pub target_ref: String,
    /// `Target` (the default): restore from the backups on the target. `Local`: revert the
    /// domain in place to one of its local restore points (a policy's `localSnapshots`),
    /// with its RAM where the point has it.
    #[serde(default, skip_serializing_if = "RestoreSource::is_target")]
    pub source: RestoreSource,
    /// `source: Local`: the point's name (`snapback local list`); unset, the newest point at
    /// or before `at` (the newest when `at` is unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_point: Option<String>,
    /// RFC 3339 time: the newest point at or before it is restored. Empty or `latest`: the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Restore as a new domain with this name (new UUID, MACs and disk paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_name: Option<String>,
    /// Restore over the existing domain; its old disks are kept until the new ones are verified.
    #[serde(default)]
    pub in_place: bool,
    /// Where restored disks are written; defaults to the first original disk's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_dir: Option<String>,
    /// Start the domain after the restore.
    #[serde(default)]
    pub start: bool,
    /// Bring the domain back running from the point's saved RAM and device state (a point
    /// taken with `memory: Include`) instead of booting it; implies `start`. The guest
    /// continues where it was at the backup's instant, on the restored disks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resume: bool,
    #[serde(default)]
    pub hooks: Hooks,
    /// How long an in-place restore waits for a graceful shutdown before forcing it off.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_seconds: u32,
    /// Disks written onto block devices instead of new files, by disk name
    /// (`{vdc: /dev/vg/web-new}`). Each device must be at least the disk's size and used by no
    /// domain; in place, the domain is repointed to it and its old device is left as it was.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub target_devices: std::collections::BTreeMap<String, String>,
    /// Allow writing over a target device that holds a filesystem, a partition table or any
    /// other signature `blkid` knows.
    #[serde(default)]
    pub overwrite: bool,
    /// The format of each restored disk file. Unset, a disk keeps the format it had: a raw
    /// file or block disk comes back as a sparse raw file (as does one under a
    /// changed-block tracking overlay), a qcow2 disk as a standalone qcow2 file. Disks in
    /// `targetDevices` are written raw onto their device whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_format: Option<DiskFormat>,
    /// Files mode: restore single files or trees of the domain's files-mode backups into a
    /// directory of the node, instead of the domain. Takes none of the image restore's
    /// fields (newName, inPlace, storageDir, start, targetDevices, overwrite, diskFormat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesRestore>,
}

/// What a files restore brings back, and where to.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FilesRestore {
    /// Guest paths, files or trees, as `snapback restore --files` takes them: `/etc/hosts`
    /// (on every filesystem that holds it), `vdb1:/etc/hosts` (on that one), `@snapback:/`
    /// (the point's own files: manifest, domain XML, firmware state).
    pub paths: Vec<String>,
    /// The absolute directory, on the node that runs the restore, the files are restored
    /// into (created if missing). A path found on one filesystem lands at `<to>/<path>`, on
    /// several at `<to>/<filesystem>/<path>`; files already there are overwritten. Nothing
    /// outside it is written.
    pub to: String,
}

/// Where a restore comes from.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum RestoreSource {
    /// The backups on the target.
    #[default]
    Target,
    /// A local restore point on the domain's host.
    Local,
}

impl RestoreSource {
    pub fn is_target(&self) -> bool {
        *self == Self::Target
    }
}

/// The format of a restored disk file. In a spec, unset keeps each disk's own: a raw file
/// or block disk comes back as a sparse raw file, a qcow2 disk as a standalone qcow2 file.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum DiskFormat {
    /// A sparse raw image: only the written parts take space.
    Raw,
    /// A standalone qcow2 image (no backing file).
    Qcow2,
}

impl DiskFormat {
    /// The name qemu-img and libvirt use for it.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

fn default_shutdown_timeout() -> u32 {
    120
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum RestorePhase {
    #[default]
    Pending,
    Resolving,
    Fetching,
    Rebuilding,
    Defining,
    Starting,
    Recovering,
    Succeeded,
    Failed,
}

impl RestorePhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// The restore point chosen.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PointRef {
    /// The backup run that made the point (a local revert: the point's name).
    pub run: String,
    /// duplicity's time of the point's backup set.
    #[schemars(with = "String")]
    pub time: Timestamp,
    #[serde(rename = "type")]
    pub type_: Option<BackupType>,
    pub chain: String,
    pub chain_index: u32,
}

/// A rebuilt disk.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoredDisk {
    pub name: String,
    pub path: String,
    pub virtual_size: u64,
    /// Every fetched export matched its checksum, and the result passed `qemu-img check`
    /// (qcow2) or compared equal to the rebuilt chain (a raw file or device).
    pub verified: bool,
    /// `path` is a block device named in `targetDevices`: written in place, compared with the
    /// rebuilt image, and never removed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub device: bool,
    /// Where the disk is placed for the VM (KubeVirt: the DataVolume it is uploaded into),
    /// named before it is made: a resumed restore adopts it, a failed one deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_as: Option<String>,
    /// The rebuilt disk is in `placedAs`, whole.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub placed: bool,
    /// The format of the restored file (unset on a device, which is always raw). Restores
    /// recorded before this field existed made qcow2 files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
}

impl RestoredDisk {
    /// The restored file's format, or raw for a device.
    pub fn format(&self) -> DiskFormat {
        match (self.device, self.format) {
            (true, _) => DiskFormat::Raw,
            (false, f) => f.unwrap_or(DiskFormat::Qcow2),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreRequestStatus {
    #[serde(default)]
    pub phase: RestorePhase,
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
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<PointRef>,
    /// The chain members fetched, full first, with their set times.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain_runs: Vec<PointRef>,
    /// Scratch space for fetched files (removed at the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<RestoredDisk>,
    /// The domain defined by the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defined_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defined_uuid: Option<String>,
    /// In place: whether the domain was running before (it is started again on rollback).
    #[serde(default)]
    pub was_running: bool,
    /// In place: the domain has been redefined on the restored disks.
    #[serde(default)]
    pub swapped: bool,
    /// In place: where the replaced disks were kept (renamed, not deleted; a KubeVirt VM's
    /// old claims, left as they were).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced_disks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookResult>,
    /// When each phase started and ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseRecord<RestorePhase>>,
    /// Firmware state files this restore wrote for the domain (removed on rollback).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firmware_written: Vec<String>,
    /// In place: the firmware state files replaced, as `original=kept copy` (the copy is put
    /// back on rollback, and kept after success, as the old disks are).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced_firmware: Vec<String>,
    /// Files mode: what was found in the backup and restored into `spec.files.to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<RestoredFiles>,
}

/// A files restore's paths and totals.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoredFiles {
    /// One entry per backed-up path found: a path asked for that several filesystems hold
    /// has one for each.
    pub paths: Vec<RestoredPath>,
    /// Files restored (everything but directories: regular files, symbolic links, ...).
    #[serde(default)]
    pub files: u64,
    /// The size of the regular files restored.
    #[serde(default)]
    pub bytes: u64,
}

/// One backed-up path and where it was restored.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoredPath {
    /// The path as `spec.files.paths` names it.
    pub asked: String,
    /// Where the backup holds it: its filesystem, then the path (`vdb1/etc/hosts`).
    pub found: String,
    /// Where it is restored to, under `spec.files.to`.
    pub path: String,
    /// It was restored whole (a restore resumed after a crash restores the others again).
    #[serde(default)]
    pub restored: bool,
    /// Files restored of this path (as `files.files` counts them).
    #[serde(default)]
    pub files: u64,
    /// The size of its regular files restored.
    #[serde(default)]
    pub bytes: u64,
}
