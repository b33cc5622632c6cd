//! A BackupTarget turned into duplicity's settings, with its secrets: from files on a single
//! host, from Secrets through the agent. Secret values go into the returned config only (and
//! from there into duplicity's environment); errors name the file or Secret, never a value.

use std::path::{Path, PathBuf};

use crate::api::{BackupTarget, EncryptionMode, FailureReason, SecretSource};
use crate::duplicity::{Crypto, SshFiles, TargetConfig, TargetUrl};
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
    let mut backend_env = Vec::new();
    match t.spec.password.as_ref() {
        Some(src) => {
            let path = host_file(src, "password")?;
            backend_env.push((
                FTP_PASSWORD.into(),
                crate::secrets::read_password_file(Path::new(&path))?,
            ));
        }
        // duplicity's own convention, for a daemon started with the password in its environment.
        None => backend_env.extend(
            std::env::var(FTP_PASSWORD)
                .ok()
                .map(|v| (FTP_PASSWORD.into(), v)),
        ),
    }
    let ssh = match t.spec.ssh.as_ref() {
        Some(a) => SshFiles {
            identity_file: Some(host_file(&a.identity, "ssh.identity")?),
            known_hosts_file: Some(host_file(&a.known_hosts, "ssh.knownHosts")?),
        },
        None => SshFiles::default(),
    };
    target_config_with(t, state_dir, passphrase, backend_env, ssh)
}

/// The environment variable duplicity's FTP (lftp) backend reads the password from.
pub const FTP_PASSWORD: &str = "FTP_PASSWORD";

/// The file of a secret on a single host (a Secret needs Kubernetes).
fn host_file(src: &SecretSource, field: &str) -> Result<String, StepError> {
    src.file.clone().ok_or_else(|| {
        StepError::new(
            FailureReason::TargetInvalid,
            format!("{field}: secretKeyRef needs Kubernetes; on a single host use {field}.file"),
        )
    })
}

/// Refuses, before anything runs, a login that duplicity could only ask for on a terminal:
/// an FTP user without a password.
pub fn check_login(url: &TargetUrl, backend_env: &[(String, String)]) -> Result<(), StepError> {
    let has_password = backend_env.iter().any(|(k, _)| k == FTP_PASSWORD);
    if url.is_ftp() && url.user().is_some() && !has_password {
        return Err(StepError::new(
            FailureReason::TargetAuthFailed,
            format!(
                "{} names a user but no password is given: set FTP_PASSWORD, --ftp-password-file or the BackupTarget's password",
                url.redacted()
            ),
        ));
    }
    Ok(())
}

/// The duplicity settings of a BackupTarget with its secrets already resolved (from files on a
/// single host, from Secrets by the agent).
pub fn target_config_with(
    t: &BackupTarget,
    state_dir: &Path,
    passphrase: Option<String>,
    backend_env: Vec<(String, String)>,
    ssh: SshFiles,
) -> Result<TargetConfig, StepError> {
    let s = &t.spec;
    let url = TargetUrl::parse(&s.url)
        .map_err(|e| StepError::new(FailureReason::TargetInvalid, e.to_string()))?;
    check_login(&url, &backend_env)?;
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
        ssh,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ftp_user_without_a_password_is_refused_before_duplicity_could_prompt() {
        let url = TargetUrl::parse("ftp://backup@h/p").unwrap();
        let e = check_login(&url, &[]).unwrap_err();
        assert_eq!(e.reason, FailureReason::TargetAuthFailed);
        check_login(&url, &[(FTP_PASSWORD.into(), "x".into())]).unwrap();
        // Anonymous FTP and other schemes need none.
        check_login(&TargetUrl::parse("ftp://h/p").unwrap(), &[]).unwrap();
        check_login(&TargetUrl::parse("sftp://u@h/p").unwrap(), &[]).unwrap();
    }

    fn target(spec: &str) -> BackupTarget {
        serde_saphyr::from_str(&format!(
            "apiVersion: snapback.dev/v1alpha1\nkind: BackupTarget\nmetadata: {{name: t}}\nspec:\n{spec}"
        ))
        .unwrap()
    }

    #[test]
    fn on_a_single_host_the_password_and_ssh_files_come_from_files_and_secrets_are_refused() {
        let dir = std::env::temp_dir().join(format!("snapback-target-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "ftp-s3cret\n").unwrap();
        let t = target(&format!(
            "  url: ftp://backup@h/p\n  password: {{file: {}}}\n",
            pw.display()
        ));
        let cfg = target_config(&t, &dir).unwrap();
        assert_eq!(
            cfg.backend_env,
            vec![(FTP_PASSWORD.to_string(), "ftp-s3cret".to_string())]
        );

        let t = target(
            "  url: sftp://u@h//b\n  ssh: {identity: {file: /k/id}, knownHosts: {file: /k/kh}}\n",
        );
        let cfg = target_config(&t, &dir).unwrap();
        assert_eq!(
            cfg.ssh,
            SshFiles {
                identity_file: Some("/k/id".into()),
                known_hosts_file: Some("/k/kh".into()),
            }
        );

        let t = target("  url: sftp://u@h//b\n  ssh: {identity: {secretKeyRef: {name: s, key: id}}, knownHosts: {file: /k/kh}}\n");
        let e = target_config(&t, &dir).unwrap_err();
        assert_eq!(e.reason, FailureReason::TargetInvalid);
        assert!(e.message.contains("ssh.identity"), "{}", e.message);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
