//! BackupTarget: where backups go and how they are protected.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, SecretSource};

#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "snapback.dev",
    version = "v1alpha1",
    kind = "BackupTarget",
    namespaced,
    shortname = "bt",
    category = "snapback",
    status = "BackupTargetStatus",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Encryption","type":"string","jsonPath":".spec.encryption.mode"}"#,
    printcolumn = r#"{"name":"Available","type":"string","jsonPath":".status.conditions[?(@.type==\"Available\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BackupTargetSpec {
    /// A duplicity URL: `file:///path`, `boto3+s3://bucket/prefix`, `s3://...`,
    /// `ftp://user@host/path`, `ftps://...`, `sftp://user@host/path` (`sftp://user@host//abs/path`
    /// for an absolute path). A password in the URL is refused: use `password`.
    pub url: String,
    /// The login password of an `ftp://` or `ftps://` target; it reaches duplicity as its
    /// environment variable FTP_PASSWORD, never its argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretSource>,
    /// The private key and known_hosts of an `sftp://` target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshAuth>,
    /// A Secret whose keys become environment variables of duplicity (e.g. AWS_ACCESS_KEY_ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<String>,
    /// Endpoint of an S3-compatible server (MinIO, Ceph RGW ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_endpoint_url: Option<String>,
    #[serde(default)]
    pub encryption: Encryption,
    #[serde(default)]
    pub duplicity: DuplicityTuning,
    /// Directory for duplicity's archive-dir (metadata cache); one subdirectory per target and domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<String>,
}

/// How snapback logs in to an SSH server: key authentication only, and only to a server whose
/// host key the given known_hosts holds.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SshAuth {
    /// The private key (OpenSSH format, without a passphrase).
    pub identity: SecretSource,
    /// known_hosts lines for the server (`[host]:port keytype key` for a port other than 22).
    pub known_hosts: SecretSource,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum EncryptionMode {
    #[default]
    None,
    /// Symmetric GPG encryption with a passphrase.
    Symmetric,
    /// Public-key GPG encryption to one or more recipients.
    Gpg,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.mode) || self.mode != 'Symmetric' || has(self.passphrase)",
        "message": "encryption mode Symmetric needs a passphrase"
    },
    {
        "rule": "!has(self.mode) || self.mode != 'Gpg' || (has(self.recipients) && size(self.recipients) > 0)",
        "message": "encryption mode Gpg needs at least one recipient"
    }
]))]
pub struct Encryption {
    #[serde(default)]
    pub mode: EncryptionMode,
    /// The passphrase for `Symmetric`, or of the signing key for `Gpg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<SecretSource>,
    /// Key IDs or fingerprints to encrypt to (`Gpg`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// A key to sign the volumes with (`Gpg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_key: Option<String>,
    /// A GnuPG home directory holding the keys (single-host mode), used as GNUPGHOME.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gnupg_home: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DuplicityTuning {
    /// Volume size in MiB. duplicity holds one or two volumes in its temp dir (in memory when
    /// the host's /dev/shm has room for four): larger volumes cost memory, smaller ones a
    /// little CPU per volume (measured: 200 MiB volumes took 8% more CPU than 1 GiB ones).
    #[serde(default = "default_volsize")]
    pub volsize_mib: u32,
    /// Extra duplicity options, restricted to an allow-list (see `duplicity::argv`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_options: Vec<String>,
}

fn default_volsize() -> u32 {
    200
}

impl Default for DuplicityTuning {
    fn default() -> Self {
        Self {
            volsize_mib: default_volsize(),
            extra_options: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupTargetStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
