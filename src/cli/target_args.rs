//! Command-line flags that describe a target, turned into a duplicity TargetConfig.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::api::FailureReason;
use crate::driver::target::{check_login, FTP_PASSWORD};
use crate::duplicity::{Crypto, SshFiles, TargetConfig, TargetUrl};
use crate::error::StepError;
use crate::secrets::{read_password_file, read_secret_file};
use crate::state_dir;

#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// duplicity target URL: file:///path, boto3+s3://bucket/prefix, ftp://user@host/path,
    /// ftps://..., sftp://user@host/path (sftp://user@host//abs/path)
    #[arg(long)]
    pub target: String,
    /// FTP/FTPS: a file holding the password (else $FTP_PASSWORD)
    #[arg(long)]
    pub ftp_password_file: Option<PathBuf>,
    /// SFTP: the private key to log in with
    #[arg(long)]
    pub ssh_key_file: Option<PathBuf>,
    /// SFTP: the known_hosts the server's host key must be in (instead of ~/.ssh/known_hosts)
    #[arg(long)]
    pub ssh_known_hosts_file: Option<PathBuf>,
    /// Endpoint of an S3-compatible server (e.g. http://127.0.0.1:9000)
    #[arg(long)]
    pub s3_endpoint_url: Option<String>,
    /// Symmetric encryption: a file holding the passphrase
    #[arg(
        long,
        visible_alias = "decrypt-passphrase-file",
        conflicts_with = "gpg_recipient"
    )]
    pub encrypt_passphrase_file: Option<PathBuf>,
    /// Public-key encryption to this GPG key (repeatable)
    #[arg(long)]
    pub gpg_recipient: Vec<String>,
    /// Sign volumes with this GPG key
    #[arg(long, requires = "gpg_recipient")]
    pub gpg_sign_key: Option<String>,
    /// A file holding the signing key's passphrase
    #[arg(long, requires = "gpg_sign_key")]
    pub gpg_sign_passphrase_file: Option<PathBuf>,
    /// duplicity volume size in MiB
    #[arg(long, default_value_t = 200)]
    pub volsize: u32,
    /// How often duplicity retries a failing backend operation
    #[arg(long, default_value_t = 3)]
    pub num_retries: u32,
}

impl TargetArgs {
    pub fn to_config(&self, state_dir: &Path) -> Result<TargetConfig, StepError> {
        let url = TargetUrl::parse(&self.target)
            .map_err(|e| StepError::new(FailureReason::TargetInvalid, e.to_string()))?;
        let crypto = if let Some(f) = &self.encrypt_passphrase_file {
            Crypto::Symmetric {
                passphrase: read_secret_file(f)?,
            }
        } else if !self.gpg_recipient.is_empty() {
            Crypto::Gpg {
                recipients: self.gpg_recipient.clone(),
                sign_key: self.gpg_sign_key.clone(),
                sign_passphrase: self
                    .gpg_sign_passphrase_file
                    .as_deref()
                    .map(read_secret_file)
                    .transpose()?,
                gnupg_home: None,
            }
        } else {
            Crypto::None
        };
        let password = match &self.ftp_password_file {
            Some(f) => Some(read_password_file(f)?),
            None => std::env::var(FTP_PASSWORD).ok(),
        };
        let backend_env: Vec<(String, String)> = password
            .map(|p| (FTP_PASSWORD.to_string(), p))
            .into_iter()
            .collect();
        check_login(&url, &backend_env)?;
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let ssh = SshFiles {
            identity_file: path(&self.ssh_key_file),
            known_hosts_file: path(&self.ssh_known_hosts_file),
        };
        Ok(TargetConfig {
            url,
            s3_endpoint_url: self.s3_endpoint_url.clone(),
            crypto,
            volsize_mib: self.volsize,
            extra_options: vec![],
            archive_dir: state_dir::archive_dir(state_dir).display().to_string(),
            name: String::new(),
            backend_env,
            num_retries: self.num_retries,
            ssh,
        })
    }
}
