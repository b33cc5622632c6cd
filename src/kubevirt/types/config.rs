//! `kubevirt.io/v1` KubeVirt: the cluster's KubeVirt install and its configuration.
//!
//! snapback only reads it, to tell a user why a VM cannot be backed up: a
//! feature gate is off, or no CBT selector matches the VM.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Feature gates the backup API needs. Both are Alpha (off by default) in v1.9.0.
pub mod feature_gate {
    /// Backup API, changed-block tracking.
    pub const INCREMENTAL_BACKUP: &str = "IncrementalBackup";
    /// Hot-plugging the backup target PVC into virt-launcher.
    pub const UTILITY_VOLUMES: &str = "UtilityVolumes";
    /// VirtualMachineExport; GA since long before v1.9.0 (always on there).
    pub const VM_EXPORT: &str = "VMExport";
}

#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "KubeVirt",
    plural = "kubevirts",
    namespaced,
    status = "KubeVirtStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<KubeVirtConfiguration>,
    /// The rest of the spec, kept so that a read-modify-write loses nothing.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub developer_configuration: Option<DeveloperConfiguration>,
    /// Which VMs get changed-block tracking. A selector, not an annotation on the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_block_tracking_label_selectors: Option<ChangedBlockTrackingSelectors>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeveloperConfiguration {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_gates: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled_feature_gates: Vec<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChangedBlockTrackingSelectors {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_label_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine_label_selector: Option<LabelSelector>,
}

/// Only what snapback might show; the rest of the status is ignored.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_kube_virt_version: Option<String>,
}

impl KubeVirt {
    fn developer(&self) -> Option<&DeveloperConfiguration> {
        self.spec
            .configuration
            .as_ref()?
            .developer_configuration
            .as_ref()
    }

    /// True when `gate` is listed in `featureGates` and not in
    /// `disabledFeatureGates`. This is what turns on an Alpha gate such as
    /// IncrementalBackup; a GA gate is on without being listed, which this
    /// does not know about.
    pub fn feature_gate_listed(&self, gate: &str) -> bool {
        self.developer().is_some_and(|d| {
            d.feature_gates.iter().any(|g| g == gate)
                && !d.disabled_feature_gates.iter().any(|g| g == gate)
        })
    }

    /// The gates the backup API needs that are not switched on.
    pub fn missing_backup_gates(&self) -> Vec<&'static str> {
        [
            feature_gate::INCREMENTAL_BACKUP,
            feature_gate::UTILITY_VOLUMES,
        ]
        .into_iter()
        .filter(|g| !self.feature_gate_listed(g))
        .collect()
    }

    pub fn cbt_selectors(&self) -> Option<&ChangedBlockTrackingSelectors> {
        self.spec
            .configuration
            .as_ref()?
            .changed_block_tracking_label_selectors
            .as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kv(dev: Value) -> KubeVirt {
        KubeVirt::new(
            "kubevirt",
            serde_json::from_value(json!({"configuration": {"developerConfiguration": dev}}))
                .unwrap(),
        )
    }

    #[test]
    fn a_gate_counts_only_when_listed_and_not_disabled() {
        let k = kv(
            json!({"featureGates": ["IncrementalBackup", "UtilityVolumes"], "disabledFeatureGates": ["UtilityVolumes"]}),
        );
        assert!(k.feature_gate_listed("IncrementalBackup"));
        assert!(!k.feature_gate_listed("UtilityVolumes"));
        assert_eq!(k.missing_backup_gates(), vec!["UtilityVolumes"]);
    }

    #[test]
    fn a_kubevirt_without_configuration_misses_both_backup_gates() {
        let k = KubeVirt::new("kubevirt", serde_json::from_value(json!({})).unwrap());
        assert_eq!(
            k.missing_backup_gates(),
            vec!["IncrementalBackup", "UtilityVolumes"]
        );
        assert!(k.cbt_selectors().is_none());
    }

    #[test]
    fn other_configuration_survives_a_round_trip() {
        let k = kv(json!({"featureGates": ["X"], "logVerbosity": {"virtLauncher": 4}}));
        let v = serde_json::to_value(&k.spec).unwrap();
        assert_eq!(
            v.pointer("/configuration/developerConfiguration/logVerbosity/virtLauncher"),
            Some(&json!(4))
        );
    }
}
