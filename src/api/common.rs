//! Types shared by several resources: conditions, failure reasons, hooks, secret references.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::ConditionType;

/// A metav1.Condition-style condition. `lastTransitionTime` moves only when `status` changes.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[schemars(with = "String")]
    pub last_transition_time: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// A condition that changes now; `set_condition` keeps the old time if the status did not change.
    pub fn now(
        type_: ConditionType,
        status: bool,
        reason: &str,
        message: String,
        generation: Option<i64>,
    ) -> Self {
        Self::at(type_, status, reason, message, generation, Timestamp::now())
    }

    /// The same, at a given time (reconcile code takes the clock as a parameter).
    pub fn at(
        type_: ConditionType,
        status: bool,
        reason: &str,
        message: String,
        generation: Option<i64>,
        time: Timestamp,
    ) -> Self {
        Self {
            type_: type_.as_str().into(),
            status: if status { "True" } else { "False" }.into(),
            reason: reason.into(),
            message,
            last_transition_time: time,
            observed_generation: generation,
        }
    }
}

/// Whether `conditions` hold a True condition of type `t`.
pub fn is_true(conditions: &[Condition], t: ConditionType) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == t.as_str() && c.status == "True")
}

/// Sets or replaces the condition of the same type. The transition time changes only when the
/// status does, so watchers can tell "still failing" from "failed again".
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    if let Some(old) = conditions.iter_mut().find(|c| c.type_ == new.type_) {
        if old.status == new.status {
            new.last_transition_time = old.last_transition_time;
        }
        *old = new;
    } else {
        conditions.push(new);
    }
}

/// The fixed list of reasons a run can fail (or be skipped) for. These words are stable: they
/// appear in status, events, metrics labels and as the first word of the CLI's last stderr line.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The spec or the command line is invalid.
    InvalidSpec,
    /// The named domain does not exist on this host.
    DomainNotFound,
    /// libvirtd could not be reached.
    LibvirtUnavailable,
    /// A libvirt call failed for a reason not listed here.
    LibvirtError,
    /// An incremental was required but the checkpoint chain is missing or broken.
    CheckpointInconsistent,
    /// The backup job failed or was aborted by qemu.
    BackupJobFailed,
    /// The target could not be reached or refused access.
    TargetUnreachable,
    /// The target URL is malformed or its scheme is not supported.
    TargetInvalid,
    /// The target refused the login (FTP password, SSH key).
    TargetAuthFailed,
    /// The SSH server's host key differs from the one known_hosts holds for it.
    HostKeyMismatch,
    /// known_hosts holds no key for the SSH server: it is not trusted blindly.
    HostKeyUnknown,
    /// An encryption key or passphrase is missing or wrong.
    EncryptionKeyError,
    /// duplicity failed while uploading for a reason not listed here.
    UploadFailed,
    /// The staging directory (or duplicity's local temp dir) ran out of space.
    StagingFull,
    /// The target has no space left for the backup's volumes.
    TargetFull,
    /// The restore's storage directory is too small.
    StorageFull,
    /// A fetched or rebuilt image did not match its checksum or failed `qemu-img check`.
    VerificationFailed,
    /// Quiesce was required and the guest filesystems could not be frozen.
    QuiesceFailed,
    /// A hook with `onError: Fail` failed.
    HookFailed,
    /// A step did not finish in its time limit.
    Timeout,
    /// Another run for the same domain and target holds the lock.
    Busy,
    /// The process running the run was interrupted (signal) and cleaned up.
    Interrupted,
    /// The domain is shut off and the policy says `offline: Skip`.
    DomainShutOff,
    /// Files mode found no filesystem it can mount (ext2/3/4, xfs) on the domain's disks.
    FilesystemUnsupported,
    /// An internal error: a bug.
    Internal,
}

impl FailureReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::InvalidSpec => "InvalidSpec",
            Self::DomainNotFound => "DomainNotFound",
            Self::LibvirtUnavailable => "LibvirtUnavailable",
            Self::LibvirtError => "LibvirtError",
            Self::CheckpointInconsistent => "CheckpointInconsistent",
            Self::BackupJobFailed => "BackupJobFailed",
            Self::TargetUnreachable => "TargetUnreachable",
            Self::TargetInvalid => "TargetInvalid",
            Self::TargetAuthFailed => "TargetAuthFailed",
            Self::HostKeyMismatch => "HostKeyMismatch",
            Self::HostKeyUnknown => "HostKeyUnknown",
            Self::EncryptionKeyError => "EncryptionKeyError",
            Self::UploadFailed => "UploadFailed",
            Self::StagingFull => "StagingFull",
            Self::TargetFull => "TargetFull",
            Self::StorageFull => "StorageFull",
            Self::VerificationFailed => "VerificationFailed",
            Self::QuiesceFailed => "QuiesceFailed",
            Self::HookFailed => "HookFailed",
            Self::Timeout => "Timeout",
            Self::Busy => "Busy",
            Self::Interrupted => "Interrupted",
            Self::DomainShutOff => "DomainShutOff",
            Self::FilesystemUnsupported => "FilesystemUnsupported",
            Self::Internal => "Internal",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a run failed: a stable reason word plus a human message.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub reason: FailureReason,
    pub message: String,
}

/// Where a hook runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum HookLocation {
    /// On the host (the agent's node), as a child process.
    #[default]
    Host,
    /// Inside the guest, through the qemu guest agent's `guest-exec`.
    Guest,
}

/// What a failing hook does to the run.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum HookOnError {
    #[default]
    Fail,
    Continue,
}

/// One hook: an argv vector (never a shell line) with a time limit.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    /// A name for status and logs; defaults to the program name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    #[serde(default)]
    pub run_in: HookLocation,
    #[serde(default = "default_hook_timeout")]
    pub timeout_seconds: u32,
    #[serde(default)]
    pub on_error: HookOnError,
}

fn default_hook_timeout() -> u32 {
    60
}

impl Hook {
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.command.first().cloned().unwrap_or_default())
    }
}

/// The hooks of the original design. Backup runs use the snapshot hooks, restores the recovery ones.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_snapshot: Vec<Hook>,
    /// Right after the snapshot point, e.g. to let a paused application continue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_snapshot: Vec<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_snapshot: Vec<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_recovery: Vec<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub end_recovery: Vec<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_recovery: Vec<Hook>,
}

/// A secret value: a key of a Kubernetes Secret, or a file (single-host mode).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.secretKeyRef) != has(self.file)",
    "message": "set exactly one of secretKeyRef and file"
}]))]
pub struct SecretSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// A file on the host holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}
