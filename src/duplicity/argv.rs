//! The duplicity argv and environment builder (pure). Secrets go to the environment only.

use super::url::TargetUrl;

/// How volumes are protected on the target.
#[derive(Clone, Debug, PartialEq)]
pub enum Crypto {
    None,
    /// Symmetric encryption: the passphrase goes to duplicity as $PASSPHRASE.
    Symmetric {
        passphrase: String,
    },
    /// Public-key encryption; an optional signing key whose passphrase goes as $SIGN_PASSPHRASE.
    Gpg {
        recipients: Vec<String>,
        sign_key: Option<String>,
        sign_passphrase: Option<String>,
        gnupg_home: Option<String>,
    },
}

/// The files an SSH target (sftp://, scp://) logs in with. They go to duplicity's paramiko
/// backend through `--ssh-options`, which it reads for `-oIdentityFile=`,
/// `-oUserKnownHostsFile=` and `-oGlobalKnownHostsFile=` (ssh_paramiko_backend.py).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SshFiles {
    /// The private key.
    pub identity_file: Option<String>,
    /// The only known_hosts the server's key is checked against.
    pub known_hosts_file: Option<String>,
}

/// Everything about a target that shapes a duplicity call.
#[derive(Clone, Debug)]
pub struct TargetConfig {
    pub url: TargetUrl,
    pub s3_endpoint_url: Option<String>,
    pub crypto: Crypto,
    pub volsize_mib: u32,
    pub extra_options: Vec<String>,
    /// duplicity's archive dir (its local metadata cache).
    pub archive_dir: String,
    /// The cache's name inside archive_dir: one per target and domain.
    pub name: String,
    /// Extra environment for the backend (credentials), never logged.
    pub backend_env: Vec<(String, String)>,
    pub num_retries: u32,
    /// The key and known_hosts of an SSH target.
    pub ssh: SshFiles,
}

impl TargetConfig {
    /// An unencrypted local target under `dir`, for tests.
    #[cfg(test)]
    pub(crate) fn local_for_tests(dir: &std::path::Path) -> Self {
        Self {
            url: TargetUrl::parse(&format!("file://{}", dir.join("target").display()))
                .expect("a file URL parses"),
            s3_endpoint_url: None,
            crypto: Crypto::None,
            volsize_mib: 1,
            extra_options: vec![],
            archive_dir: dir.join("cache").display().to_string(),
            name: String::new(),
            backend_env: vec![],
            num_retries: 1,
            ssh: SshFiles::default(),
        }
    }
}

/// A duplicity operation.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// `current_time`: the set's time (`--current-time`, seconds since the epoch); `None`
    /// lets duplicity read its clock. See `names::next_set_time`.
    Full {
        source: String,
        current_time: Option<i64>,
    },
    Incremental {
        source: String,
        current_time: Option<i64>,
    },
    /// Files mode: a tree with include/exclude selections (already absolute paths under
    /// `source`, in duplicity's order: the first match wins). Compressed: files are not images.
    Files {
        incremental: bool,
        source: String,
        selection: Vec<Select>,
        current_time: Option<i64>,
    },
    ListCurrentFiles {
        time: Option<String>,
    },
    CollectionStatus,
    /// `cleanup --force`: deletes what failed sessions left (partial sets); complete sets
    /// are never touched.
    Cleanup,
    Restore {
        dest: String,
        time: Option<String>,
        file: Option<String>,
    },
}

impl Action {
    /// The same backup action with its set's time fixed; other actions are unchanged.
    pub fn at(mut self, time: i64) -> Self {
        match &mut self {
            Action::Full { current_time, .. }
            | Action::Incremental { current_time, .. }
            | Action::Files { current_time, .. } => *current_time = Some(time),
            _ => {}
        }
        self
    }
}

/// One duplicity file selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Select {
    Include(String),
    Exclude(String),
}

/// A ready-to-run duplicity invocation.
#[derive(Clone, Debug, PartialEq)]
pub struct Invocation {
    pub argv: Vec<String>,
    /// Plain environment (safe to log).
    pub env: Vec<(String, String)>,
    /// Secret environment (never logged).
    pub secret_env: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgvError {
    #[error("duplicity option '{0}' is not allowed in extraOptions (allowed: {1})")]
    OptionNotAllowed(String, String),
    #[error("encryption is Gpg but no recipient is given")]
    NoRecipients,
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    #[error("SSH file path '{0}' has whitespace or quotes, which duplicity's --ssh-options cannot carry")]
    SshPath(String),
}

/// The `--ssh-options` value for an SSH target's files, or None when there are none. The
/// value is one argv element; duplicity's paramiko backend splits it on whitespace itself,
/// so paths with whitespace or quotes are refused rather than mangled.
pub fn ssh_options(ssh: &SshFiles) -> Result<Option<String>, ArgvError> {
    let mut opts = Vec::new();
    for p in ssh.identity_file.iter().chain(ssh.known_hosts_file.iter()) {
        if p.is_empty()
            || p.chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '\'')
        {
            return Err(ArgvError::SshPath(p.clone()));
        }
    }
    if let Some(k) = &ssh.identity_file {
        opts.push(format!("-oIdentityFile={k}"));
    }
    if let Some(h) = &ssh.known_hosts_file {
        opts.push(format!("-oUserKnownHostsFile={h}"));
        // paramiko prefers the global file's key over the user file's: pointing both at the
        // given file keeps /etc/ssh/ssh_known_hosts from vouching for the server instead.
        opts.push(format!("-oGlobalKnownHostsFile={h}"));
    }
    Ok((!opts.is_empty()).then(|| opts.join(" ")))
}

/// Options a target may add. Anything that can run programs (ssh options, gpg binary) or change
/// what is backed up is excluded on purpose.
const ALLOWED_EXTRA: &[&str] = &[
    "--asynchronous-upload",
    "--timeout",
    "--backend-retry-delay",
    "--s3-use-new-style",
    "--s3-region-name",
    "--s3-multipart-chunk-size",
    "--s3-use-ia",
    "--s3-use-onezone-ia",
    "--s3-use-server-side-encryption",
    "--tempdir",
];

fn check_extra(opts: &[String]) -> Result<(), ArgvError> {
    for o in opts {
        let key = o.split('=').next().unwrap_or("");
        if !ALLOWED_EXTRA.contains(&key) {
            return Err(ArgvError::OptionNotAllowed(
                o.clone(),
                ALLOWED_EXTRA.join(", "),
            ));
        }
    }
    Ok(())
}

/// Builds the invocation. `log_fd` is the descriptor duplicity writes machine-readable lines to.
pub fn build(target: &TargetConfig, action: &Action, log_fd: i32) -> Result<Invocation, ArgvError> {
    check_extra(&target.extra_options)?;
    let mut argv: Vec<String> = vec!["duplicity".into()];
    let mut env = vec![("LANG".to_string(), "C.UTF-8".to_string())];
    let mut secret_env = target.backend_env.clone();
    let url = target.url.as_str().to_string();

    match action {
        Action::Full { .. } => argv.push("full".into()),
        Action::Incremental { .. } => argv.push("incremental".into()),
        Action::Files { incremental, .. } => {
            argv.push(if *incremental { "incremental" } else { "full" }.into())
        }
        Action::ListCurrentFiles { .. } => argv.push("list-current-files".into()),
        Action::CollectionStatus => argv.push("collection-status".into()),
        Action::Cleanup => argv.push("cleanup".into()),
        Action::Restore { .. } => argv.push("restore".into()),
    }

    argv.push(format!("--archive-dir={}", target.archive_dir));
    argv.push(format!("--name={}", target.name));
    argv.push(format!("--log-fd={log_fd}"));
    argv.push(format!("--num-retries={}", target.num_retries.max(1)));
    // Hosts change (pods move, hosts are rebuilt): the chain belongs to the domain, not the host.
    argv.push("--allow-source-mismatch".into());
    if let Some(ep) = &target.s3_endpoint_url {
        argv.push(format!("--s3-endpoint-url={ep}"));
    }
    if let Some(o) = ssh_options(&target.ssh)? {
        argv.push(format!("--ssh-options={o}"));
    }

    match &target.crypto {
        Crypto::None => argv.push("--no-encryption".into()),
        Crypto::Symmetric { passphrase } => {
            if passphrase.is_empty() {
                return Err(ArgvError::EmptyPassphrase);
            }
            secret_env.push(("PASSPHRASE".into(), passphrase.clone()));
            // Image data hardly compresses; gpg's default compression costs time for nothing.
            argv.push("--gpg-options=--compress-algo=none".into());
        }
        Crypto::Gpg {
            recipients,
            sign_key,
            sign_passphrase,
            gnupg_home,
        } => {
            if recipients.is_empty() {
                return Err(ArgvError::NoRecipients);
            }
            for r in recipients {
                argv.push(format!("--encrypt-key={r}"));
            }
            if let Some(k) = sign_key {
                argv.push(format!("--sign-key={k}"));
                if let Some(p) = sign_passphrase {
                    secret_env.push(("SIGN_PASSPHRASE".into(), p.clone()));
                }
            }
            if let Some(h) = gnupg_home {
                env.push(("GNUPGHOME".into(), h.clone()));
            }
            argv.push("--gpg-options=--compress-algo=none".into());
        }
    }

    match action {
        Action::Full { current_time, .. }
        | Action::Incremental { current_time, .. }
        | Action::Files { current_time, .. } => {
            if let Some(t) = current_time {
                argv.push(format!("--current-time={t}"));
            }
        }
        _ => {}
    }

    match action {
        Action::Full { source, .. } | Action::Incremental { source, .. } => {
            // Measured: gzip of image data made duplicity ~6x slower for no size gain.
            argv.push("--no-compression".into());
            argv.push(format!("--volsize={}", target.volsize_mib.max(1)));
            // No --progress: it makes duplicity read everything twice (a dry run to size the
            // job; measured +30% on 1.5 GiB). Progress is read from /proc instead (runner.rs).
            argv.extend(target.extra_options.iter().cloned());
            argv.push(source.clone());
            argv.push(url);
        }
        Action::Files {
            source, selection, ..
        } => {
            argv.push(format!("--volsize={}", target.volsize_mib.max(1)));
            argv.extend(target.extra_options.iter().cloned());
            for s in selection {
                argv.push(match s {
                    Select::Include(p) => format!("--include={p}"),
                    Select::Exclude(p) => format!("--exclude={p}"),
                });
            }
            argv.push(source.clone());
            argv.push(url);
        }
        Action::ListCurrentFiles { time } => {
            if let Some(t) = time {
                argv.push(format!("--time={t}"));
            }
            argv.push(url);
        }
        Action::CollectionStatus => argv.push(url),
        Action::Cleanup => {
            argv.push("--force".into());
            argv.push(url);
        }
        Action::Restore { dest, time, file } => {
            if let Some(t) = time {
                argv.push(format!("--time={t}"));
            }
            if let Some(f) = file {
                argv.push(format!("--file-to-restore={f}"));
            }
            argv.push("--force".into());
            argv.push(url);
            argv.push(dest.clone());
        }
    }
    // Without a passphrase in the environment duplicity would prompt on a terminal; a backup
    // agent has none, so an empty PASSPHRASE makes unencrypted runs never prompt.
    if matches!(target.crypto, Crypto::None | Crypto::Gpg { .. })
        && !secret_env.iter().any(|(k, _)| k == "PASSPHRASE")
    {
        env.push(("PASSPHRASE".into(), String::new()));
    }
    Ok(Invocation {
        argv,
        env,
        secret_env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(crypto: Crypto) -> TargetConfig {
        TargetConfig {
            url: TargetUrl::parse("boto3+s3://bucket/p").unwrap(),
            s3_endpoint_url: Some("http://127.0.0.1:9000".into()),
            crypto,
            volsize_mib: 1024,
            extra_options: vec![],
            archive_dir: "/state/cache".into(),
            name: "t-dom".into(),
            backend_env: vec![("AWS_SECRET_ACCESS_KEY".into(), "awssecret".into())],
            num_retries: 3,
            ssh: SshFiles::default(),
        }
    }

    #[test]
    fn an_ftp_password_reaches_duplicity_in_its_environment_only() {
        let mut t = target(Crypto::None);
        t.url = TargetUrl::parse("ftp://backup@127.0.0.1:2121/vms").unwrap();
        t.backend_env = vec![("FTP_PASSWORD".into(), "ftp-s3cret".into())];
        let inv = build(&t, &Action::CollectionStatus, 3).unwrap();
        assert!(inv.argv.iter().all(|a| !a.contains("ftp-s3cret")));
        assert!(inv.env.iter().all(|(_, v)| !v.contains("ftp-s3cret")));
        assert!(inv
            .secret_env
            .contains(&("FTP_PASSWORD".into(), "ftp-s3cret".into())));
        assert_eq!(inv.argv.last().unwrap(), "ftp://backup@127.0.0.1:2121/vms");
    }

    #[test]
    fn ssh_files_go_in_one_ssh_options_argument_that_paramiko_reads() {
        let mut t = target(Crypto::None);
        t.url = TargetUrl::parse("sftp://backup@127.0.0.1:2222//srv/b").unwrap();
        t.ssh = SshFiles {
            identity_file: Some("/etc/snapback/id".into()),
            known_hosts_file: Some("/etc/snapback/known_hosts".into()),
        };
        let inv = build(&t, &Action::CollectionStatus, 3).unwrap();
        let opts: Vec<&String> = inv
            .argv
            .iter()
            .filter(|a| a.starts_with("--ssh-options="))
            .collect();
        assert_eq!(
            opts,
            ["--ssh-options=-oIdentityFile=/etc/snapback/id -oUserKnownHostsFile=/etc/snapback/known_hosts -oGlobalKnownHostsFile=/etc/snapback/known_hosts"]
        );
        t.ssh.identity_file = Some("/a b/id".into());
        assert_eq!(
            build(&t, &Action::CollectionStatus, 3).unwrap_err(),
            ArgvError::SshPath("/a b/id".into())
        );
        t.ssh = SshFiles::default();
        let inv = build(&t, &Action::CollectionStatus, 3).unwrap();
        assert!(inv.argv.iter().all(|a| !a.starts_with("--ssh-options")));
    }

    #[test]
    fn full_backup_argv_aligns_with_image_full_and_keeps_secrets_out_of_argv() {
        let t = target(Crypto::Symmetric {
            passphrase: "hunter2".into(),
        });
        let inv = build(
            &t,
            &Action::Full {
                source: "/stage/d".into(),
                current_time: Some(1_767_225_600),
            },
            3,
        )
        .unwrap();
        assert_eq!(inv.argv[1], "full");
        assert!(inv.argv.contains(&"--no-compression".to_string()));
        assert!(inv.argv.contains(&"--current-time=1767225600".to_string()));
        assert!(inv
            .argv
            .contains(&"--s3-endpoint-url=http://127.0.0.1:9000".to_string()));
        assert_eq!(
            inv.argv[inv.argv.len() - 2..],
            ["/stage/d".to_string(), "boto3+s3://bucket/p".to_string()]
        );
        let joined = inv.argv.join(" ");
        assert!(!joined.contains("hunter2") && !joined.contains("awssecret"));
        assert!(inv
            .secret_env
            .contains(&("PASSPHRASE".into(), "hunter2".into())));
        assert!(!inv.env.iter().any(|(_, v)| v.contains("hunter2")));
    }

    #[test]
    fn incremental_uses_the_duplicity_incremental_command() {
        let inv = build(
            &target(Crypto::None),
            &Action::Incremental {
                source: "/s".into(),
                current_time: None,
            },
            3,
        )
        .unwrap();
        assert_eq!(inv.argv[1], "incremental");
        assert!(inv.argv.contains(&"--no-encryption".to_string()));
    }

    #[test]
    fn gpg_mode_lists_every_recipient_and_the_signing_key() {
        let t = target(Crypto::Gpg {
            recipients: vec!["A1".into(), "B2".into()],
            sign_key: Some("C3".into()),
            sign_passphrase: Some("signpw".into()),
            gnupg_home: Some("/keys".into()),
        });
        let inv = build(
            &t,
            &Action::Full {
                source: "/s".into(),
                current_time: None,
            },
            3,
        )
        .unwrap();
        assert!(inv.argv.contains(&"--encrypt-key=A1".to_string()));
        assert!(inv.argv.contains(&"--encrypt-key=B2".to_string()));
        assert!(inv.argv.contains(&"--sign-key=C3".to_string()));
        assert!(inv
            .secret_env
            .contains(&("SIGN_PASSPHRASE".into(), "signpw".into())));
        assert!(inv.env.contains(&("GNUPGHOME".into(), "/keys".into())));
        assert!(!inv.argv.join(" ").contains("signpw"));
    }

    #[test]
    fn gpg_mode_without_recipients_is_refused() {
        let t = target(Crypto::Gpg {
            recipients: vec![],
            sign_key: None,
            sign_passphrase: None,
            gnupg_home: None,
        });
        assert_eq!(
            build(&t, &Action::CollectionStatus, 3).unwrap_err(),
            ArgvError::NoRecipients
        );
    }

    #[test]
    fn extra_options_outside_the_allow_list_are_refused() {
        let mut t = target(Crypto::None);
        t.extra_options = vec!["--ssh-options=-oProxyCommand=evil".into()];
        assert!(matches!(
            build(&t, &Action::CollectionStatus, 3),
            Err(ArgvError::OptionNotAllowed(..))
        ));
        t.extra_options = vec!["--timeout=30".into()];
        assert!(build(&t, &Action::CollectionStatus, 3).is_ok());
    }

    #[test]
    fn restore_names_time_file_and_destination() {
        let a = Action::Restore {
            dest: "/out".into(),
            time: Some("2026-01-01T00:00:00Z".into()),
            file: Some("x".into()),
        };
        let inv = build(&target(Crypto::None), &a, 3).unwrap();
        assert!(inv
            .argv
            .contains(&"--time=2026-01-01T00:00:00Z".to_string()));
        assert!(inv.argv.contains(&"--file-to-restore=x".to_string()));
        assert_eq!(inv.argv.last().unwrap(), "/out");
    }
}
