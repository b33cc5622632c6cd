//! CDI (containerized-data-importer): DataVolume, CDIConfig, UploadTokenRequest.
//!
//! A restore creates one DataVolume per disk and fills it either by uploading
//! through CDI's upload proxy (with a token from an UploadTokenRequest) or by
//! letting CDI import from an HTTP URL. Field set as of CDI v1.66.0.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::VolumeResourceRequirements;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Condition;

/// Upload-proxy paths (POST, `Authorization: Bearer <token>`).
pub mod upload_path {
    /// The body is the image; the request returns when it is processed.
    pub const SYNC: &str = "/v1beta1/upload";
    /// The body is the image; the request returns once it is received.
    pub const ASYNC: &str = "/v1beta1/upload-async";
}

/// Values of a DataVolume's `status.phase` that snapback acts on.
pub mod dv_phase {
    pub const PENDING: &str = "Pending";
    pub const UPLOAD_SCHEDULED: &str = "UploadScheduled";
    /// The upload proxy will take the data now.
    pub const UPLOAD_READY: &str = "UploadReady";
    pub const IMPORT_SCHEDULED: &str = "ImportScheduled";
    pub const IMPORT_IN_PROGRESS: &str = "ImportInProgress";
    pub const WAIT_FOR_FIRST_CONSUMER: &str = "WaitForFirstConsumer";
    pub const PENDING_POPULATION: &str = "PendingPopulation";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    pub const PAUSED: &str = "Paused";
    pub const UNKNOWN: &str = "Unknown";
}

/// Condition types of a DataVolume.
pub mod dv_condition {
    pub const READY: &str = "Ready";
    pub const BOUND: &str = "Bound";
    pub const RUNNING: &str = "Running";
}

/// What the DataVolume will hold: a disk image (converted to raw) or the
/// unpacked files of a tar archive.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    Kubevirt,
    Archive,
}

#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "DataVolume",
    plural = "datavolumes",
    namespaced,
    status = "DataVolumeStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DataVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<ContentType>,
    /// `pvc`, `sourceRef`, `preallocation`, ...: kept, never set by snapback.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A one-of: exactly one member is set. The members snapback uses are typed;
/// the others (`s3`, `registry`, `pvc`, `vddk`, ...) are kept as JSON.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    /// `upload: {}`: wait for data through the upload proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<EmptySource>,
    /// `blank: {}`: an empty disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blank: Option<EmptySource>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl DataVolumeSource {
    pub fn upload() -> Self {
        Self {
            upload: Some(EmptySource {}),
            ..Default::default()
        }
    }

    pub fn http(url: &str) -> Self {
        Self {
            http: Some(HttpSource {
                url: url.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The empty struct of the `upload` and `blank` sources.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct EmptySource {}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    pub url: String,
    /// Secret with `accessKeyId` and `secretKey` for basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// ConfigMap with the CA that signs the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// `Name: value` header lines sent with the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_headers: Vec<String>,
    /// Secrets whose values are header lines, for headers that carry tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_extra_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// `spec.storage`: CDI fills in what is left out from the StorageProfile.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<VolumeResourceRequirements>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// A percentage such as `"45.12%"`, or `"N/A"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl DataVolume {
    pub fn phase(&self) -> Option<&str> {
        self.status.as_ref()?.phase.as_deref()
    }
}

/// CDIConfig is cluster-scoped; CDI keeps one, named `config`.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "CDIConfig",
    plural = "cdiconfigs",
    status = "CdiConfigStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
pub struct CdiConfigSpec {
    /// snapback only reads the status; the spec is kept as JSON.
    #[serde(flatten)]
    pub fields: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct CdiConfigStatus {
    /// Host (and port) of the upload proxy, without scheme. Spelled with
    /// capitals in the API, so camelCase renaming would miss it.
    #[serde(
        rename = "uploadProxyURL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub upload_proxy_url: Option<String>,
    #[serde(
        rename = "uploadProxyCA",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub upload_proxy_ca: Option<String>,
}

pub const CDI_CONFIG_NAME: &str = "config";

/// An aggregated-API request (not a CRD) served by cdi-apiserver: create it
/// and the response carries a token for uploading into `pvcName` (valid
/// five minutes).
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "upload.cdi.kubevirt.io",
    version = "v1beta1",
    kind = "UploadTokenRequest",
    plural = "uploadtokenrequests",
    namespaced,
    status = "UploadTokenRequestStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct UploadTokenRequestSpec {
    pub pvc_name: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct UploadTokenRequestStatus {
    /// Sent as `Authorization: Bearer <token>` to the upload proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_upload_source_is_an_empty_object() {
        assert_eq!(
            serde_json::to_value(DataVolumeSource::upload()).unwrap(),
            json!({"upload": {}})
        );
        assert_eq!(
            serde_json::to_value(DataVolumeSource::http("https://x/y.img")).unwrap(),
            json!({"http": {"url": "https://x/y.img"}})
        );
    }

    #[test]
    fn cdi_config_reads_the_capitalised_upload_proxy_fields() {
        let s: CdiConfigStatus = serde_json::from_value(
            json!({"uploadProxyURL": "cdi-uploadproxy.example", "uploadProxyCA": "PEM"}),
        )
        .unwrap();
        assert_eq!(
            s.upload_proxy_url.as_deref(),
            Some("cdi-uploadproxy.example")
        );
        assert_eq!(s.upload_proxy_ca.as_deref(), Some("PEM"));
    }

    #[test]
    fn unknown_source_kinds_are_kept() {
        let s: DataVolumeSource =
            serde_json::from_value(json!({"registry": {"url": "docker://x"}})).unwrap();
        assert!(s.http.is_none() && s.upload.is_none());
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"registry": {"url": "docker://x"}})
        );
    }
}
