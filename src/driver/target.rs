//! A BackupTarget turned into duplicity's settings, with its secrets: from files on a single
//! host, from Secrets through the agent. Secret values go into the returned config only (and
//! from there into duplicity's environment); errors name the file or Secret, never a value.

use std::path::{Path, PathBuf};

use crate::api::{BackupTarget, EncryptionMode, FailureReason};
use crate::duplicity::{Crypto, TargetConfig, TargetUrl};
use crate::error::StepError;
use crate::state_dir;

fn read_secret(path: &str) -> Result<String, StepError> {
    crate::secrets::read_secret_file(Path::new(path))
}

/// The duplicity settings of a BackupTarget on a single host: secrets from files.
pub fn target_config(t: &BackupTarget, state_dir: &Path) -> Result<TargetConfig, StepError> {
    let passphrase = match t.spec.encryption.passphrase.as_ref() {
        Some(src) => match (&src.file, &src.secret_key_ref) {
            (Some(f), _) => Some(read_secret(f)?),
            (None, Some(_)) => {
                return Err(StepError::new(
                    FailureReason::EncryptionKeyError,
                    "encryption.passphrase: secretKeyRef needs Kubernetes; on a single host use encryption.passphrase.file",
                ))
            }
            (None, None) => None,
        },
        None => None,
    };
    target_config_with(t, state_dir, passphrase, Vec::new())
}

/// The duplicity settings of a BackupTarget with its secrets already resolved (from files on a
/// single host, from Secrets by the agent).
pub fn target_config_with(
    t: &BackupTarget,
    state_dir: &Path,
    passphrase: Option<String>,
    backend_env: Vec<(String, String)>,
) -> Result<TargetConfig, StepError> {
    let s = &t.spec;
    let url = TargetUrl::parse(&s.url)
        .map_err(|e| StepError::new(FailureReason::TargetInvalid, e.to_string()))?;
    let secret = |_what: &str| -> Result<Option<String>, StepError> { Ok(passphrase.clone()) };
    let crypto = match s.encryption.mode {
        EncryptionMode::None => Crypto::None,
        EncryptionMode::Symmetric => Crypto::Symmetric {
            passphrase: secret("encryption.passphrase")?.ok_or_else(|| {
                StepError::new(
                    FailureReason::EncryptionKeyError,
                    "encryption mode Symmetric needs encryption.passphrase",
                )
            })?,
        },
        EncryptionMode::Gpg => Crypto::Gpg {
            recipients: s.encryption.recipients.clone(),
            sign_key: s.encryption.sign_key.clone(),
            sign_passphrase: secret("encryption.passphrase")?,
            gnupg_home: s.encryption.gnupg_home.clone(),
        },
    };
    let archive = s
        .cache_dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| state_dir::archive_dir(state_dir));
    Ok(TargetConfig {
        url,
        s3_endpoint_url: s.s3_endpoint_url.clone(),
        crypto,
        volsize_mib: s.duplicity.volsize_mib,
        extra_options: s.duplicity.extra_options.clone(),
        archive_dir: archive.display().to_string(),
        name: String::new(),
        backend_env,
        num_retries: 3,
    })
}
