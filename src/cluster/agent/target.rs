//! A BackupTarget with its secrets, resolved from the API for one run.

use std::path::Path;

use k8s_openapi::api::core::v1::Secret;

use crate::api::{BackupTarget, FailureReason, SecretSource};
use crate::cluster::store::{secret_value, Store};
use crate::driver::target::{target_config_with, FTP_PASSWORD};
use crate::duplicity::{SshFiles, TargetConfig};
use crate::error::StepError;

/// Reads the target and its Secrets. Secret values go into the returned config only (and from
/// there into duplicity's environment); errors name the Secret and key, never a value.
pub async fn resolve_target<S: Store>(
    store: &S,
    ns: &str,
    name: &str,
    state_dir: &Path,
) -> Result<TargetConfig, StepError> {
    let unreachable = |e: crate::cluster::ApiError| {
        StepError::new(FailureReason::Internal, format!("Kubernetes API: {e}"))
    };
    let t: BackupTarget = store
        .get(Some(ns), name)
        .await
        .map_err(unreachable)?
        .ok_or_else(|| {
            StepError::new(
                FailureReason::TargetInvalid,
                format!("BackupTarget {ns}/{name} not found"),
            )
        })?;
    let passphrase = match t.spec.encryption.passphrase.as_ref() {
        None => None,
        Some(src) => match (&src.secret_key_ref, &src.file) {
            (Some(r), _) => Some(
                secret_value(store, ns, &r.name, &r.key)
                    .await
                    .map_err(|e| StepError::new(FailureReason::EncryptionKeyError, e.message))?,
            ),
            (None, Some(f)) => Some(crate::secrets::read_secret_file(Path::new(f))?),
            (None, None) => None,
        },
    };
    let mut env = Vec::new();
    if let Some(sname) = &t.spec.credentials_secret_ref {
        let s: Secret = store
            .get(Some(ns), sname)
            .await
            .map_err(unreachable)?
            .ok_or_else(|| {
                StepError::new(
                    FailureReason::TargetInvalid,
                    format!("credentials Secret {ns}/{sname} not found"),
                )
            })?;
        for (k, v) in s.data.unwrap_or_default() {
            let valid = !k.is_empty()
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(StepError::new(
                    FailureReason::TargetInvalid,
                    format!("credentials Secret {ns}/{sname}: key '{k}' is not an environment variable name"),
                ));
            }
            let v = String::from_utf8(v.0).map_err(|_| {
                StepError::new(
                    FailureReason::TargetInvalid,
                    format!("credentials Secret {ns}/{sname}: key '{k}' is not UTF-8"),
                )
            })?;
            env.push((k, v));
        }
    }
    if let Some(src) = &t.spec.password {
        let v = secret_or_file(store, ns, src, "password", FailureReason::TargetAuthFailed).await?;
        env.retain(|(k, _)| k != FTP_PASSWORD);
        env.push((
            FTP_PASSWORD.into(),
            v.trim_end_matches(['\r', '\n']).to_string(),
        ));
    }
    let ssh = match &t.spec.ssh {
        None => SshFiles::default(),
        Some(a) => {
            // A Secret's key and known_hosts become files for duplicity's paramiko backend,
            // which reads only files: private to this agent, one directory per target.
            let dir = state_dir.join("secrets").join(format!("{ns}.{name}"));
            let identity = ssh_file(
                store,
                ns,
                &a.identity,
                "ssh.identity",
                &dir.join("identity"),
            )
            .await?;
            let known_hosts = ssh_file(
                store,
                ns,
                &a.known_hosts,
                "ssh.knownHosts",
                &dir.join("known_hosts"),
            )
            .await?;
            SshFiles {
                identity_file: Some(identity),
                known_hosts_file: Some(known_hosts),
            }
        }
    };
    target_config_with(&t, state_dir, passphrase, env, ssh)
}

/// The path of an SSH file: its file on the node, or its Secret's value written to `path`.
async fn ssh_file<S: Store>(
    store: &S,
    ns: &str,
    src: &SecretSource,
    field: &str,
    path: &Path,
) -> Result<String, StepError> {
    if let Some(f) = &src.file {
        return Ok(f.clone());
    }
    let v = secret_or_file(store, ns, src, field, FailureReason::TargetAuthFailed).await?;
    crate::secrets::write_secret_file(path, &v)?;
    Ok(path.display().to_string())
}

/// A secret's value from its Secret key, or from its file on the node.
async fn secret_or_file<S: Store>(
    store: &S,
    ns: &str,
    src: &SecretSource,
    field: &str,
    reason: FailureReason,
) -> Result<String, StepError> {
    match (&src.secret_key_ref, &src.file) {
        (Some(r), _) => secret_value(store, ns, &r.name, &r.key)
            .await
            .map_err(|e| StepError::new(reason, format!("{field}: {}", e.message))),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| StepError::new(reason, format!("{field}: cannot read {f}: {e}"))),
        (None, None) => Err(StepError::new(
            reason,
            format!("{field}: set secretKeyRef or file"),
        )),
    }
}
