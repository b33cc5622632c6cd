//! `backup.kubevirt.io/v1alpha1`: VirtualMachineBackup and VirtualMachineBackupTracker.
//!
//! Field set as of KubeVirt v1.9.0 (metav1 conditions). The API is alpha and
//! behind the `IncrementalBackup` feature gate; see the fixtures README for the
//! differences between v1.8.0, v1.9.0 and main.

use k8s_openapi::api::core::v1::TypedLocalObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use super::Condition;

pub const BACKUP_API_GROUP: &str = "backup.kubevirt.io";

/// Condition types of a VirtualMachineBackup (v1.9.0).
pub mod backup_condition {
    pub const COMPLETE: &str = "Complete";
    pub const FAILED: &str = "Failed";
    pub const PROGRESSING: &str = "Progressing";
    pub const QUIESCED: &str = "Quiesced";
}

/// Condition reasons of a VirtualMachineBackup (v1.9.0).
pub mod backup_reason {
    pub const INITIALIZING: &str = "Initializing";
    pub const INITIATED: &str = "Initiated";
    pub const PREPARING_EXPORT: &str = "PreparingExport";
    pub const EXPORT_INITIATED: &str = "ExportInitiated";
    pub const EXPORT_READY: &str = "ExportReady";
    pub const ABORTING: &str = "Aborting";
    pub const COMPLETED: &str = "Completed";
    pub const COMPLETED_WITH_WARNING: &str = "CompletedWithWarning";
    pub const FAILED: &str = "Failed";
    pub const QUIESCE_SUCCEEDED: &str = "QuiesceSucceeded";
    pub const QUIESCE_FAILED: &str = "QuiesceFailed";
    pub const QUIESCE_SKIPPED: &str = "QuiesceSkipped";
    pub const SOURCE_LOST: &str = "SourceLost";
    pub const SOURCE_UNHEALTHY: &str = "SourceUnhealthy";
    pub const DELETED_DURING_INIT: &str = "DeletedDuringInit";
}

/// Values of `status.type`.
pub const BACKUP_TYPE_FULL: &str = "Full";
pub const BACKUP_TYPE_INCREMENTAL: &str = "Incremental";

/// The finalizer KubeVirt puts on a backup once it starts.
pub const BACKUP_FINALIZER: &str = "backup.kubevirt.io/vmbackup-protection";

/// Where the backup goes. `Push` writes qcow2 files into `pvcName`; `Pull`
/// serves NBD-like endpoints through a VirtualMachineExport.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum BackupMode {
    Push,
    Pull,
}

#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "backup.kubevirt.io",
    version = "v1alpha1",
    kind = "VirtualMachineBackup",
    plural = "virtualmachinebackups",
    namespaced,
    status = "VirtualMachineBackupStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineBackupSpec {
    /// `{apiGroup: kubevirt.io, kind: VirtualMachine}` for a full backup, or
    /// `{apiGroup: backup.kubevirt.io, kind: VirtualMachineBackupTracker}` for
    /// one that may be incremental. KubeVirt's CEL rules require `apiGroup`.
    pub source: TypedLocalObjectReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<BackupMode>,
    /// Required by a CEL rule in both modes although the field is optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_name: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_quiesce: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_full_backup: bool,
    /// Pull mode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<String>,
    /// Pull mode only; a Go duration string such as `2h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_duration: Option<String>,
}

impl VirtualMachineBackupSpec {
    /// A push-mode backup of `source` into the Filesystem PVC `pvc_name`.
    pub fn push(source: TypedLocalObjectReference, pvc_name: &str) -> Self {
        Self {
            source,
            mode: Some(BackupMode::Push),
            pvc_name: Some(pvc_name.to_string()),
            skip_quiesce: false,
            force_full_backup: false,
            token_secret_ref: None,
            ttl_duration: None,
        }
    }
}

/// The `source` that makes a full backup of a VM.
pub fn vm_source(vm_name: &str) -> TypedLocalObjectReference {
    TypedLocalObjectReference {
        api_group: Some(super::KUBEVIRT_API_GROUP.to_string()),
        kind: "VirtualMachine".to_string(),
        name: vm_name.to_string(),
    }
}

/// The `source` that makes a backup incremental when the tracker has a checkpoint.
pub fn tracker_source(tracker_name: &str) -> TypedLocalObjectReference {
    TypedLocalObjectReference {
        api_group: Some(BACKUP_API_GROUP.to_string()),
        kind: "VirtualMachineBackupTracker".to_string(),
        name: tracker_name.to_string(),
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineBackupStatus {
    /// `Full` or `Incremental`, set when the backup starts.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_volumes: Vec<BackupVolumeInfo>,
    #[serde(rename = "exportUID", default, skip_serializing_if = "Option::is_none")]
    pub export_uid: Option<String>,
}

/// One volume of a backup or checkpoint.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupVolumeInfo {
    pub volume_name: String,
    /// Required by the v1.8.0/v1.9.0 schemas, removed on main after v1.9.0, so
    /// optional here: snapback must read both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_endpoint: Option<String>,
}

#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "backup.kubevirt.io",
    version = "v1alpha1",
    kind = "VirtualMachineBackupTracker",
    plural = "virtualmachinebackuptrackers",
    namespaced,
    status = "VirtualMachineBackupTrackerStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineBackupTrackerSpec {
    /// Must be `{apiGroup: kubevirt.io, kind: VirtualMachine}` (CEL).
    pub source: TypedLocalObjectReference,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineBackupTrackerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_checkpoint: Option<BackupCheckpoint>,
    /// Set by virt-handler after the VM restarted or migrated; cleared once
    /// KubeVirt redefined the checkpoint (or dropped it, making the next backup full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_redefinition_required: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupCheckpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<BackupVolumeInfo>,
}

impl VirtualMachineBackupTracker {
    /// The checkpoint the next backup through this tracker would build on, if any.
    pub fn latest_checkpoint_name(&self) -> Option<&str> {
        self.status
            .as_ref()?
            .latest_checkpoint
            .as_ref()?
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
    }

    pub fn redefinition_pending(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s.checkpoint_redefinition_required)
            .unwrap_or(false)
    }
}

/// Where a VirtualMachineBackup stands, read from its v1.9 conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupOutcome {
    /// No status or no condition yet: KubeVirt has not looked at it.
    Pending,
    Progressing {
        reason: String,
        message: String,
    },
    /// Terminal. `warning` is KubeVirt's `CompletedWithWarning` (e.g. the
    /// guest could not be frozen).
    Completed {
        warning: bool,
    },
    /// Terminal.
    Failed {
        reason: String,
        message: String,
    },
}

impl BackupOutcome {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Completed { .. } | Self::Failed { .. })
    }
}

/// The outcome of a backup. There is no phase field: KubeVirt marks the end with
/// `Complete=True` or `Failed=True`, and Failed wins if both were ever set.
pub fn backup_outcome(backup: &VirtualMachineBackup) -> BackupOutcome {
    let conditions = match &backup.status {
        Some(s) => s.conditions.as_slice(),
        None => return BackupOutcome::Pending,
    };
    let text = |c: &Condition| {
        (
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        )
    };
    if let Some(c) =
        super::find_condition(conditions, backup_condition::FAILED).filter(|c| c.is_true())
    {
        let (reason, message) = text(c);
        return BackupOutcome::Failed { reason, message };
    }
    if let Some(c) =
        super::find_condition(conditions, backup_condition::COMPLETE).filter(|c| c.is_true())
    {
        return BackupOutcome::Completed {
            warning: c.reason.as_deref() == Some(backup_reason::COMPLETED_WITH_WARNING),
        };
    }
    if let Some(c) =
        super::find_condition(conditions, backup_condition::PROGRESSING).filter(|c| c.is_true())
    {
        let (reason, message) = text(c);
        return BackupOutcome::Progressing { reason, message };
    }
    BackupOutcome::Pending
}

/// What became of the guest freeze, from the `Quiesced` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quiesce {
    Succeeded,
    Failed,
    Skipped,
}

/// The freeze result, once KubeVirt reported one.
pub fn quiesce_result(backup: &VirtualMachineBackup) -> Option<Quiesce> {
    let c = super::find_condition(
        &backup.status.as_ref()?.conditions,
        backup_condition::QUIESCED,
    )?;
    if c.is_true() {
        return Some(Quiesce::Succeeded);
    }
    match c.reason.as_deref() {
        Some(backup_reason::QUIESCE_SKIPPED) => Some(Quiesce::Skipped),
        // A False status with any other reason means the freeze was tried and did not work.
        _ if c.status == "False" => Some(Quiesce::Failed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup_with(conditions: &[(&str, &str, &str)]) -> VirtualMachineBackup {
        let mut b =
            VirtualMachineBackup::new("b", VirtualMachineBackupSpec::push(vm_source("vm"), "pvc"));
        b.status = Some(VirtualMachineBackupStatus {
            conditions: conditions
                .iter()
                .map(|(t, s, r)| Condition {
                    type_: t.to_string(),
                    status: s.to_string(),
                    reason: Some(r.to_string()),
                    message: Some(format!("{t} {r}")),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        b
    }

    #[test]
    fn a_backup_without_status_is_pending() {
        let b =
            VirtualMachineBackup::new("b", VirtualMachineBackupSpec::push(vm_source("vm"), "p"));
        assert_eq!(backup_outcome(&b), BackupOutcome::Pending);
        assert!(!backup_outcome(&b).is_terminal());
    }

    #[test]
    fn a_backup_waiting_on_a_prerequisite_is_progressing_with_its_reason() {
        let b = backup_with(&[("Progressing", "True", "Initializing")]);
        assert_eq!(
            backup_outcome(&b),
            BackupOutcome::Progressing {
                reason: "Initializing".into(),
                message: "Progressing Initializing".into()
            }
        );
    }

    #[test]
    fn complete_true_is_a_completion_and_the_warning_reason_is_kept() {
        let ok = backup_with(&[
            ("Progressing", "False", "Completed"),
            ("Complete", "True", "Completed"),
        ]);
        assert_eq!(
            backup_outcome(&ok),
            BackupOutcome::Completed { warning: false }
        );
        let warn = backup_with(&[
            ("Quiesced", "False", "QuiesceFailed"),
            ("Complete", "True", "CompletedWithWarning"),
        ]);
        assert_eq!(
            backup_outcome(&warn),
            BackupOutcome::Completed { warning: true }
        );
        assert!(backup_outcome(&warn).is_terminal());
    }

    #[test]
    fn failed_true_wins_over_complete_and_carries_reason_and_message() {
        let b = backup_with(&[
            ("Complete", "True", "Completed"),
            ("Failed", "True", "SourceLost"),
        ]);
        assert_eq!(
            backup_outcome(&b),
            BackupOutcome::Failed {
                reason: "SourceLost".into(),
                message: "Failed SourceLost".into()
            }
        );
    }

    #[test]
    fn false_conditions_alone_leave_a_backup_pending() {
        let b = backup_with(&[("Complete", "False", "x"), ("Failed", "False", "y")]);
        assert_eq!(backup_outcome(&b), BackupOutcome::Pending);
    }

    #[test]
    fn the_quiesced_condition_tells_succeeded_failed_and_skipped_apart() {
        assert_eq!(
            quiesce_result(&backup_with(&[("Quiesced", "True", "QuiesceSucceeded")])),
            Some(Quiesce::Succeeded)
        );
        assert_eq!(
            quiesce_result(&backup_with(&[("Quiesced", "False", "QuiesceFailed")])),
            Some(Quiesce::Failed)
        );
        assert_eq!(
            quiesce_result(&backup_with(&[("Quiesced", "False", "QuiesceSkipped")])),
            Some(Quiesce::Skipped)
        );
        assert_eq!(
            quiesce_result(&backup_with(&[("Progressing", "True", "Initiated")])),
            None
        );
    }

    #[test]
    fn a_tracker_with_an_empty_checkpoint_name_has_no_checkpoint() {
        let mut t = VirtualMachineBackupTracker::new(
            "t",
            VirtualMachineBackupTrackerSpec {
                source: vm_source("vm"),
            },
        );
        assert_eq!(t.latest_checkpoint_name(), None);
        t.status = Some(VirtualMachineBackupTrackerStatus {
            latest_checkpoint: Some(BackupCheckpoint {
                name: Some(String::new()),
                ..Default::default()
            }),
            checkpoint_redefinition_required: Some(true),
        });
        assert_eq!(t.latest_checkpoint_name(), None);
        assert!(t.redefinition_pending());
        t.status
            .as_mut()
            .unwrap()
            .latest_checkpoint
            .as_mut()
            .unwrap()
            .name = Some("b-2026-08-01_10-00-00".into());
        assert_eq!(t.latest_checkpoint_name(), Some("b-2026-08-01_10-00-00"));
    }

    #[test]
    fn empty_and_false_spec_fields_are_left_out_of_the_json() {
        let spec = VirtualMachineBackupSpec::push(tracker_source("t"), "pvc");
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"source": {"apiGroup": "backup.kubevirt.io", "kind": "VirtualMachineBackupTracker", "name": "t"},
                "mode": "Push", "pvcName": "pvc"})
        );
    }
}
