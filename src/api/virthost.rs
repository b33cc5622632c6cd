//! VirtHost (cluster-scoped): what a node agent publishes about its libvirt host.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Condition;

#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "snapback.dev",
    version = "v1alpha1",
    kind = "VirtHost",
    shortname = "vh",
    category = "snapback",
    status = "VirtHostStatus",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Domains","type":"integer","jsonPath":".status.domainCount"}"#,
    printcolumn = r#"{"name":"Libvirt","type":"string","jsonPath":".status.libvirtVersion"}"#,
    printcolumn = r#"{"name":"Heartbeat","type":"date","jsonPath":".status.heartbeatTime"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtHostSpec {
    /// The Kubernetes node the agent runs on.
    pub node_name: String,
}

/// One domain of the host.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostDomain {
    pub name: String,
    pub uuid: String,
    /// Running, Paused, ShutOff or Other.
    pub state: String,
    /// Target device names of its disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<String>,
    /// The attributes of the domain's `<snapback:labels xmlns:snapback="https://snapback.dev/xmlns/1"/>`
    /// metadata element, which `domainSelector.metadata` matches.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtHostStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<String>,
    #[serde(default)]
    pub domain_count: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<HostDomain>,
}
