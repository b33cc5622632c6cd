//! `kubevirt.io/v1`: VirtualMachine and VirtualMachineInstance.
//!
//! snapback saves a VM's spec with each backup and re-creates the VM from it,
//! so the spec is an opaque shell: the few fields snapback decides on are typed,
//! `template` and everything else stay JSON and come back unchanged. The
//! helpers read and edit the template in place for a restore (new MACs, new
//! firmware UUID, volumes pointed at the restored claims).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Condition;

pub const KUBEVIRT_API_GROUP: &str = "kubevirt.io";

/// Values of `spec.runStrategy`.
pub mod run_strategy {
    pub const ALWAYS: &str = "Always";
    pub const HALTED: &str = "Halted";
    pub const MANUAL: &str = "Manual";
    pub const RERUN_ON_FAILURE: &str = "RerunOnFailure";
    pub const ONCE: &str = "Once";
    pub const WAIT_AS_RECEIVER: &str = "WaitAsReceiver";
}

/// Values of `status.phase` of a VirtualMachineInstance.
pub mod vmi_phase {
    pub const PENDING: &str = "Pending";
    pub const SCHEDULING: &str = "Scheduling";
    pub const SCHEDULED: &str = "Scheduled";
    pub const RUNNING: &str = "Running";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    pub const WAITING_FOR_SYNC: &str = "WaitingForSync";
    pub const UNKNOWN: &str = "Unknown";
}

/// Some values of the VM's `status.printableStatus` (the list is long and grows).
pub mod printable_status {
    pub const STOPPED: &str = "Stopped";
    pub const STARTING: &str = "Starting";
    pub const RUNNING: &str = "Running";
    pub const PAUSED: &str = "Paused";
    pub const STOPPING: &str = "Stopping";
    pub const MIGRATING: &str = "Migrating";
}

#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachine",
    plural = "virtualmachines",
    namespaced,
    status = "VirtualMachineStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<String>,
    /// Deprecated by KubeVirt and mutually exclusive with `runStrategy`; kept
    /// because a saved spec may carry it and a restore must replace it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    /// The VMI template, untouched. Required by the schema.
    #[serde(default)]
    pub template: Value,
    /// `dataVolumeTemplates`, `instancetype`, `preference` and whatever later
    /// KubeVirt versions add: carried through a save and restore as they are.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_block_tracking: Option<ChangedBlockTrackingStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `status.changedBlockTracking` of a VM or VMI.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChangedBlockTrackingStatus {
    /// Required by the schema; may be the empty string.
    #[serde(default)]
    pub state: String,
}

/// Changed-block tracking of a VM, as KubeVirt reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CbtState {
    /// No state: the VM is not selected by `changedBlockTrackingLabelSelectors`.
    Undefined,
    /// Selected, takes effect at the next start.
    PendingRestart,
    Initializing,
    /// Backups can run.
    Enabled,
    Disabled,
    IncrementalBackupFeatureGateDisabled,
    Other(String),
}

/// The CBT state from a `changedBlockTracking` status, absent or not.
pub fn cbt_state(status: Option<&ChangedBlockTrackingStatus>) -> CbtState {
    match status.map(|s| s.state.as_str()).unwrap_or("") {
        "" => CbtState::Undefined,
        "PendingRestart" => CbtState::PendingRestart,
        "Initializing" => CbtState::Initializing,
        "Enabled" => CbtState::Enabled,
        "Disabled" => CbtState::Disabled,
        "IncrementalBackupFeatureGateDisabled" => CbtState::IncrementalBackupFeatureGateDisabled,
        other => CbtState::Other(other.to_string()),
    }
}

impl VirtualMachine {
    pub fn cbt_state(&self) -> CbtState {
        cbt_state(
            self.status
                .as_ref()
                .and_then(|s| s.changed_block_tracking.as_ref()),
        )
    }
}

/// Where a template volume's data comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeSource {
    PersistentVolumeClaim {
        claim_name: String,
    },
    DataVolume {
        name: String,
    },
    ContainerDisk {
        image: String,
    },
    /// Any other source (`cloudInitNoCloud`, `emptyDisk`, `secret`, ...), by its key.
    Other {
        kind: String,
    },
}

impl VolumeSource {
    /// True for sources that hold the VM's own data on a claim: the ones a
    /// backup must carry and a restore must re-create.
    pub fn is_claim(&self) -> bool {
        matches!(
            self,
            Self::PersistentVolumeClaim { .. } | Self::DataVolume { .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateVolume {
    pub name: String,
    pub source: VolumeSource,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateDisk {
    pub name: String,
    /// `disk`, `cdrom` or `lun`; KubeVirt treats a disk with none of them as `disk`.
    pub device: String,
    pub bus: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateInterface {
    pub name: String,
    pub mac_address: Option<String>,
}

fn template_spec(template: &Value) -> Option<&Value> {
    template.get("spec")
}

fn array_at<'a>(v: Option<&'a Value>, pointer: &str) -> &'a [Value] {
    v.and_then(|v| v.pointer(pointer))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn volume_source(vol: &Value) -> VolumeSource {
    if let Some(claim) = str_at(vol, "/persistentVolumeClaim/claimName") {
        return VolumeSource::PersistentVolumeClaim {
            claim_name: claim.to_string(),
        };
    }
    if let Some(name) = str_at(vol, "/dataVolume/name") {
        return VolumeSource::DataVolume {
            name: name.to_string(),
        };
    }
    if let Some(image) = str_at(vol, "/containerDisk/image") {
        return VolumeSource::ContainerDisk {
            image: image.to_string(),
        };
    }
    let kind = vol
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "name").cloned())
        .unwrap_or_default();
    VolumeSource::Other { kind }
}

impl VirtualMachineSpec {
    /// The template's `spec.volumes`, in order.
    pub fn volumes(&self) -> Vec<TemplateVolume> {
        array_at(template_spec(&self.template), "/volumes")
            .iter()
            .filter_map(|v| {
                Some(TemplateVolume {
                    name: str_at(v, "/name")?.to_string(),
                    source: volume_source(v),
                })
            })
            .collect()
    }

    /// The template's `spec.domain.devices.disks`, in order.
    pub fn disks(&self) -> Vec<TemplateDisk> {
        array_at(template_spec(&self.template), "/domain/devices/disks")
            .iter()
            .filter_map(|d| {
                let device = ["cdrom", "lun", "disk"]
                    .into_iter()
                    .find(|k| d.get(*k).is_some())
                    .unwrap_or("disk");
                Some(TemplateDisk {
                    name: str_at(d, "/name")?.to_string(),
                    device: device.to_string(),
                    bus: d
                        .get(device)
                        .and_then(|x| x.get("bus"))
                        .and_then(Value::as_str)
                        .map(String::from),
                })
            })
            .collect()
    }

    /// The template's `spec.domain.devices.interfaces`, in order.
    pub fn interfaces(&self) -> Vec<TemplateInterface> {
        array_at(template_spec(&self.template), "/domain/devices/interfaces")
            .iter()
            .filter_map(|i| {
                Some(TemplateInterface {
                    name: str_at(i, "/name")?.to_string(),
                    mac_address: str_at(i, "/macAddress").map(String::from),
                })
            })
            .collect()
    }

    /// `spec.template.spec.domain.firmware.uuid`, the guest-visible SMBIOS UUID.
    pub fn firmware_uuid(&self) -> Option<&str> {
        str_at(&self.template, "/spec/domain/firmware/uuid")
    }

    /// Sets the firmware UUID, creating `firmware` if needed. Fails (false) only
    /// if the template has no `spec.domain` object.
    pub fn set_firmware_uuid(&mut self, uuid: &str) -> bool {
        let Some(domain) = self
            .template
            .pointer_mut("/spec/domain")
            .and_then(Value::as_object_mut)
        else {
            return false;
        };
        let firmware = domain
            .entry("firmware")
            .or_insert_with(|| Value::Object(Default::default()));
        match firmware.as_object_mut() {
            Some(f) => {
                f.insert("uuid".into(), Value::String(uuid.to_string()));
                true
            }
            None => false,
        }
    }

    /// Sets (or with `None` removes, so KubeVirt picks a new one) the MAC of
    /// interface `name`. False if there is no such interface.
    pub fn set_interface_mac(&mut self, name: &str, mac: Option<&str>) -> bool {
        let Some(ifaces) = self
            .template
            .pointer_mut("/spec/domain/devices/interfaces")
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        let Some(iface) = ifaces
            .iter_mut()
            .filter_map(Value::as_object_mut)
            .find(|i| i.get("name").and_then(Value::as_str) == Some(name))
        else {
            return false;
        };
        match mac {
            Some(m) => iface.insert("macAddress".into(), Value::String(m.to_string())),
            None => iface.remove("macAddress"),
        };
        true
    }

    /// Points volume `name` at a claim or DataVolume, replacing its old source
    /// but keeping its other settings (e.g. `hotpluggable`) where the source
    /// kind stays the same. False if there is no such volume or the new source
    /// is not a claim.
    pub fn set_volume_source(&mut self, name: &str, source: &VolumeSource) -> bool {
        let (key, field, value) = match source {
            VolumeSource::PersistentVolumeClaim { claim_name } => {
                ("persistentVolumeClaim", "claimName", claim_name)
            }
            VolumeSource::DataVolume { name } => ("dataVolume", "name", name),
            _ => return false,
        };
        let Some(vols) = self
            .template
            .pointer_mut("/spec/volumes")
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        let Some(vol) = vols
            .iter_mut()
            .filter_map(Value::as_object_mut)
            .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        else {
            return false;
        };
        let kept = vol
            .remove(key)
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        vol.retain(|k, _| k == "name");
        let mut inner = kept;
        inner.insert(field.into(), Value::String(value.clone()));
        vol.insert(key.into(), Value::Object(inner));
        true
    }
}

#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstance",
    plural = "virtualmachineinstances",
    namespaced,
    status = "VirtualMachineInstanceStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
pub struct VirtualMachineInstanceSpec {
    /// snapback only reads VMIs; their spec is kept as JSON.
    #[serde(flatten)]
    pub fields: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_state: Option<MigrationState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_block_tracking: Option<ChangedBlockTrackingStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_status: Vec<VolumeStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The part of `status.migrationState` that tells whether a migration runs.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MigrationState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_timestamp: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    pub name: String,
    /// The guest device (`vda`, ...); required by the schema.
    #[serde(default)]
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_info: Option<PersistentVolumeClaimInfo>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
}

impl VolumeStatus {
    /// The claim's `capacity.storage`, when the volume is on a claim.
    pub fn capacity(&self) -> Option<&Quantity> {
        self.persistent_volume_claim_info
            .as_ref()?
            .capacity
            .get("storage")
    }
}

/// True while a live migration of the VMI runs, judged as KubeVirt's backup
/// controller does (`migrations.IsMigrating`): started at or before `now` and
/// not yet ended at `now`.
pub fn is_migrating(vmi: &VirtualMachineInstance, now: jiff::Timestamp) -> bool {
    let Some(m) = vmi.status.as_ref().and_then(|s| s.migration_state.as_ref()) else {
        return false;
    };
    let started = m.start_timestamp.as_ref().is_some_and(|t| t.0 <= now);
    let ended = m.end_timestamp.as_ref().is_some_and(|t| t.0 <= now);
    started && !ended
}

impl VirtualMachineInstance {
    pub fn cbt_state(&self) -> CbtState {
        cbt_state(
            self.status
                .as_ref()
                .and_then(|s| s.changed_block_tracking.as_ref()),
        )
    }

    pub fn is_running(&self) -> bool {
        self.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(vmi_phase::RUNNING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> VirtualMachineSpec {
        serde_json::from_value(json!({
            "runStrategy": "Always",
            "dataVolumeTemplates": [{"metadata": {"name": "root"}, "spec": {"storage": {}}}],
            "template": {"spec": {
                "domain": {"devices": {
                    "disks": [{"name": "root", "disk": {"bus": "virtio"}}, {"name": "cd", "cdrom": {"bus": "sata"}}, {"name": "data"}],
                    "interfaces": [{"name": "default", "masquerade": {}, "macAddress": "02:00:00:00:00:01"}, {"name": "second", "bridge": {}}]
                }},
                "volumes": [
                    {"name": "root", "dataVolume": {"name": "root"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-pvc", "hotpluggable": true}},
                    {"name": "cd", "containerDisk": {"image": "quay.io/x/y"}},
                    {"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config"}}
                ]
            }}
        }))
        .unwrap()
    }

    #[test]
    fn volumes_are_listed_with_their_source_kind() {
        let v = spec().volumes();
        assert_eq!(v.len(), 4);
        assert_eq!(
            v[0].source,
            VolumeSource::DataVolume {
                name: "root".into()
            }
        );
        assert_eq!(
            v[1].source,
            VolumeSource::PersistentVolumeClaim {
                claim_name: "data-pvc".into()
            }
        );
        assert_eq!(
            v[2].source,
            VolumeSource::ContainerDisk {
                image: "quay.io/x/y".into()
            }
        );
        assert_eq!(
            v[3].source,
            VolumeSource::Other {
                kind: "cloudInitNoCloud".into()
            }
        );
        assert_eq!(v.iter().filter(|v| v.source.is_claim()).count(), 2);
    }

    #[test]
    fn disks_default_to_the_disk_device_and_report_their_bus() {
        let d = spec().disks();
        assert_eq!(
            d[0],
            TemplateDisk {
                name: "root".into(),
                device: "disk".into(),
                bus: Some("virtio".into())
            }
        );
        assert_eq!(d[1].device, "cdrom");
        assert_eq!(
            d[2],
            TemplateDisk {
                name: "data".into(),
                device: "disk".into(),
                bus: None
            }
        );
    }

    #[test]
    fn interface_macs_can_be_read_replaced_and_removed() {
        let mut s = spec();
        assert_eq!(
            s.interfaces()[0].mac_address.as_deref(),
            Some("02:00:00:00:00:01")
        );
        assert!(s.set_interface_mac("second", Some("02:00:00:00:00:02")));
        assert!(s.set_interface_mac("default", None));
        assert!(!s.set_interface_mac("missing", None));
        let i = s.interfaces();
        assert_eq!(i[0].mac_address, None);
        assert_eq!(i[1].mac_address.as_deref(), Some("02:00:00:00:00:02"));
        // The binding next to the MAC is not touched.
        assert_eq!(
            s.template
                .pointer("/spec/domain/devices/interfaces/0/masquerade"),
            Some(&json!({}))
        );
    }

    #[test]
    fn the_firmware_uuid_is_created_when_the_template_has_none() {
        let mut s = spec();
        assert_eq!(s.firmware_uuid(), None);
        assert!(s.set_firmware_uuid("5d307ca9-b3ef-428c-8861-06e72d69f223"));
        assert_eq!(
            s.firmware_uuid(),
            Some("5d307ca9-b3ef-428c-8861-06e72d69f223")
        );
        let mut empty = VirtualMachineSpec {
            run_strategy: None,
            running: None,
            template: json!({}),
            other: Default::default(),
        };
        assert!(!empty.set_firmware_uuid("x"));
    }

    #[test]
    fn repointing_a_volume_replaces_its_source_and_keeps_its_options() {
        let mut s = spec();
        assert!(s.set_volume_source(
            "data",
            &VolumeSource::PersistentVolumeClaim {
                claim_name: "restored".into()
            }
        ));
        assert_eq!(
            s.template.pointer("/spec/volumes/1"),
            Some(
                &json!({"name": "data", "persistentVolumeClaim": {"claimName": "restored", "hotpluggable": true}})
            )
        );
        assert!(s.set_volume_source(
            "root",
            &VolumeSource::PersistentVolumeClaim {
                claim_name: "root-new".into()
            }
        ));
        assert_eq!(
            s.template.pointer("/spec/volumes/0"),
            Some(&json!({"name": "root", "persistentVolumeClaim": {"claimName": "root-new"}}))
        );
        assert!(!s.set_volume_source("nope", &VolumeSource::DataVolume { name: "x".into() }));
        assert!(!s.set_volume_source("cd", &VolumeSource::ContainerDisk { image: "i".into() }));
    }

    #[test]
    fn unknown_spec_fields_survive_a_round_trip() {
        let s = spec();
        assert!(s.other.contains_key("dataVolumeTemplates"));
        let back: VirtualMachineSpec =
            serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn cbt_state_reads_known_states_and_keeps_unknown_ones() {
        assert_eq!(cbt_state(None), CbtState::Undefined);
        let st = |s: &str| ChangedBlockTrackingStatus { state: s.into() };
        assert_eq!(cbt_state(Some(&st(""))), CbtState::Undefined);
        assert_eq!(cbt_state(Some(&st("Enabled"))), CbtState::Enabled);
        assert_eq!(
            cbt_state(Some(&st("PendingRestart"))),
            CbtState::PendingRestart
        );
        assert_eq!(
            cbt_state(Some(&st("IncrementalBackupFeatureGateDisabled"))),
            CbtState::IncrementalBackupFeatureGateDisabled
        );
        assert_eq!(
            cbt_state(Some(&st("Later"))),
            CbtState::Other("Later".into())
        );
    }

    fn vmi_with_migration(start: Option<&str>, end: Option<&str>) -> VirtualMachineInstance {
        let t = |s: &str| Time(s.parse().unwrap());
        let mut vmi = VirtualMachineInstance::new(
            "v",
            VirtualMachineInstanceSpec {
                fields: Default::default(),
            },
        );
        vmi.status = Some(VirtualMachineInstanceStatus {
            migration_state: Some(MigrationState {
                start_timestamp: start.map(t),
                end_timestamp: end.map(t),
                ..Default::default()
            }),
            ..Default::default()
        });
        vmi
    }

    #[test]
    fn a_vmi_is_migrating_between_start_and_end_of_its_migration_only() {
        let now: jiff::Timestamp = "2026-08-01T10:00:00Z".parse().unwrap();
        let none = VirtualMachineInstance::new(
            "v",
            VirtualMachineInstanceSpec {
                fields: Default::default(),
            },
        );
        assert!(!is_migrating(&none, now));
        assert!(is_migrating(
            &vmi_with_migration(Some("2026-08-01T09:59:00Z"), None),
            now
        ));
        assert!(!is_migrating(
            &vmi_with_migration(Some("2026-08-01T09:59:00Z"), Some("2026-08-01T09:59:30Z")),
            now
        ));
        // A start stamped in the future (clock skew) does not count yet, as in KubeVirt.
        assert!(!is_migrating(
            &vmi_with_migration(Some("2026-08-01T10:01:00Z"), None),
            now
        ));
        // A previous migration that ended leaves the VMI not migrating.
        assert!(!is_migrating(
            &vmi_with_migration(None, Some("2026-08-01T09:00:00Z")),
            now
        ));
    }

    #[test]
    fn volume_capacity_is_the_claims_storage_capacity() {
        let v: VolumeStatus = serde_json::from_value(json!({"name": "root", "target": "vda",
            "persistentVolumeClaimInfo": {"claimName": "root", "capacity": {"storage": "10Gi"}}}))
        .unwrap();
        assert_eq!(v.capacity(), Some(&Quantity("10Gi".into())));
        let c: VolumeStatus =
            serde_json::from_value(json!({"name": "cd", "target": "sda"})).unwrap();
        assert_eq!(c.capacity(), None);
    }
}
