//! `export.kubevirt.io/v1`: VirtualMachineExport.
//!
//! v1 is the storage version at KubeVirt v1.9.0; v1beta1 is still served but
//! deprecated. snapback exports the backup PVC (`source.kind:
//! PersistentVolumeClaim`) to read the qcow2 files KubeVirt wrote into it. See
//! `tests/fixtures/kubevirt/README.md` ("VirtualMachineExport of a backup PVC")
//! for what such an export serves and where that is in KubeVirt's sources.

use k8s_openapi::api::core::v1::TypedLocalObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use super::Condition;

/// Request header (or query parameter of the same name) carrying the export token.
pub const EXPORT_TOKEN_HEADER: &str = "x-kubevirt-export-token";
/// Key of the token in the Secret named by `tokenSecretRef`.
pub const EXPORT_TOKEN_SECRET_KEY: &str = "token";
/// PVC annotation CDI sets; decides whether an export serves a disk image or files.
pub const CDI_CONTENT_TYPE_ANNOTATION: &str = "cdi.kubevirt.io/storage.contentType";

/// Values of `status.phase`.
pub mod export_phase {
    pub const PENDING: &str = "Pending";
    pub const READY: &str = "Ready";
    pub const TERMINATED: &str = "Terminated";
    pub const SKIPPED: &str = "Skipped";
}

/// Values of `links.*.volumes[].formats[].format`.
pub mod export_format {
    /// Disk image (kubevirt content type or block PVC), raw.
    pub const RAW: &str = "raw";
    /// Disk image, gzip-compressed raw.
    pub const GZIP: &str = "gzip";
    /// Filesystem PVC with archive content: the PVC's files, browsable.
    pub const DIR: &str = "dir";
    /// Filesystem PVC with archive content: the whole PVC as one tar.gz.
    pub const TAR_GZ: &str = "tar.gz";
}

/// Condition types of a VirtualMachineExport.
pub mod export_condition {
    pub const READY: &str = "Ready";
    pub const PVC_READY: &str = "PVCReady";
    pub const VOLUMES_CREATED: &str = "VolumesCreated";
}

#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "export.kubevirt.io",
    version = "v1",
    kind = "VirtualMachineExport",
    plural = "virtualmachineexports",
    namespaced,
    status = "VirtualMachineExportStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineExportSpec {
    pub source: TypedLocalObjectReference,
    /// A Secret the caller made, holding the token under `token`. Without it
    /// KubeVirt generates `export-token-<name>` and names it in the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<String>,
    /// A Go duration such as `2h` (KubeVirt's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_duration: Option<String>,
}

impl VirtualMachineExportSpec {
    /// An export of the PVC `pvc_name` in the export's namespace.
    pub fn of_pvc(pvc_name: &str, token_secret: Option<&str>) -> Self {
        Self {
            source: TypedLocalObjectReference {
                // The core group is "", which the API spells by leaving it out.
                api_group: None,
                kind: "PersistentVolumeClaim".to_string(),
                name: pvc_name.to_string(),
            },
            token_secret_ref: token_secret.map(String::from),
            ttl_duration: None,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineExportStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<VirtualMachineExportLinks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_expiration_time: Option<Time>,
    /// The Service of the exporter pod (`virt-export-<name>`, port 443).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineExportLinks {
    /// Through the in-cluster Service; cert is KubeVirt's export CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<VirtualMachineExportLink>,
    /// Through virt-exportproxy's Ingress or Route, if the cluster has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<VirtualMachineExportLink>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineExportLink {
    /// PEM CA bundle to trust for these URLs. Required by the schema.
    #[serde(default)]
    pub cert: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VirtualMachineExportVolume>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineExportVolume {
    /// For a PVC export, the PVC's name.
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<VirtualMachineExportVolumeFormat>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineExportVolumeFormat {
    pub format: String,
    pub url: String,
}

impl VirtualMachineExportLink {
    /// The URL serving `volume` in `format`, if the export offers it.
    pub fn url(&self, volume: &str, format: &str) -> Option<&str> {
        self.volumes
            .iter()
            .find(|v| v.name == volume)?
            .formats
            .iter()
            .find(|f| f.format == format)
            .map(|f| f.url.as_str())
    }
}

impl VirtualMachineExport {
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(export_phase::READY)
    }

    /// The internal link set, once the exporter pod is up.
    pub fn internal_link(&self) -> Option<&VirtualMachineExportLink> {
        self.status.as_ref()?.links.as_ref()?.internal.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pvc_export_leaves_the_core_api_group_out() {
        let v = serde_json::to_value(VirtualMachineExportSpec::of_pvc("backup-pvc", Some("tok")))
            .unwrap();
        assert_eq!(
            v,
            json!({"source": {"kind": "PersistentVolumeClaim", "name": "backup-pvc"}, "tokenSecretRef": "tok"})
        );
    }

    #[test]
    fn a_format_url_is_found_by_volume_and_format() {
        let link: VirtualMachineExportLink = serde_json::from_value(json!({"cert": "PEM", "volumes": [{"name": "pvc", "formats": [
            {"format": "dir", "url": "https://virt-export-e.ns.svc/volumes/pvc/dir"},
            {"format": "tar.gz", "url": "https://virt-export-e.ns.svc/volumes/pvc/disk.tar.gz"}]}]}))
        .unwrap();
        assert_eq!(
            link.url("pvc", export_format::DIR),
            Some("https://virt-export-e.ns.svc/volumes/pvc/dir")
        );
        assert_eq!(link.url("pvc", export_format::RAW), None);
        assert_eq!(link.url("other", export_format::DIR), None);
    }
}
