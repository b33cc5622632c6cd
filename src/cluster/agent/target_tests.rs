//! A BackupTarget's FTP password and SSH files resolved from Secrets, as the agent does for
//! each run: the password goes into duplicity's environment, the key and known_hosts into
//! private files whose paths go into `--ssh-options`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::target::resolve_target;
use crate::api::{BackupTarget, FailureReason};
use crate::cluster::mem::MemStore;
use crate::cluster::store::Store;
use crate::driver::target::FTP_PASSWORD;

const NS: &str = "ns";

async fn with_secret(mem: &MemStore, name: &str, data: &[(&str, &str)]) {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some(NS.into());
    s.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect::<BTreeMap<_, _>>(),
    );
    mem.create(&s).await.unwrap();
}

async fn with_target(mem: &MemStore, yaml: &str) {
    let mut t: BackupTarget = serde_saphyr::from_str(yaml).unwrap();
    t.metadata.namespace = Some(NS.into());
    mem.create(&t).await.unwrap();
}

#[tokio::test]
async fn an_ftp_password_from_a_secret_reaches_duplicitys_environment_only() {
    let mem = MemStore::new();
    with_secret(&mem, "ftp", &[("password", "ftp-s3cret\n")]).await;
    with_target(
        &mem,
        "apiVersion: snapback.dev/v1alpha1\nkind: BackupTarget\nmetadata: {name: t}\nspec:\n  url: ftp://backup@ftp.example/vms\n  password: {secretKeyRef: {name: ftp, key: password}}\n",
    )
    .await;
    let state = std::env::temp_dir().join(format!("snapback-agent-ftp-{}", std::process::id()));
    let cfg = resolve_target(&mem, NS, "t", &state).await.unwrap();
    assert_eq!(
        cfg.backend_env,
        vec![(FTP_PASSWORD.to_string(), "ftp-s3cret".to_string())]
    );
    assert_eq!(cfg.url.as_str(), "ftp://backup@ftp.example/vms");
}

#[tokio::test]
async fn an_ftp_user_without_a_password_fails_the_run_with_target_auth_failed() {
    let mem = MemStore::new();
    with_target(
        &mem,
        "apiVersion: snapback.dev/v1alpha1\nkind: BackupTarget\nmetadata: {name: t}\nspec:\n  url: ftp://backup@ftp.example/vms\n",
    )
    .await;
    let state = std::env::temp_dir().join("snapback-agent-ftp-none");
    let e = resolve_target(&mem, NS, "t", &state).await.unwrap_err();
    assert_eq!(e.reason, FailureReason::TargetAuthFailed);
}

#[tokio::test]
async fn an_ssh_key_and_known_hosts_from_a_secret_become_private_files() {
    let mem = MemStore::new();
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
    with_secret(
        &mem,
        "ssh",
        &[("id", key), ("known_hosts", "[h]:2222 ssh-ed25519 AAAA")],
    )
    .await;
    with_target(
        &mem,
        "apiVersion: snapback.dev/v1alpha1\nkind: BackupTarget\nmetadata: {name: t}\nspec:\n  url: sftp://backup@h:2222//srv/b\n  ssh:\n    identity: {secretKeyRef: {name: ssh, key: id}}\n    knownHosts: {secretKeyRef: {name: ssh, key: known_hosts}}\n",
    )
    .await;
    let state = std::env::temp_dir().join(format!("snapback-agent-ssh-{}", std::process::id()));
    let cfg = resolve_target(&mem, NS, "t", &state).await.unwrap();
    let dir = state.join("secrets").join("ns.t");
    let (id, kh) = (dir.join("identity"), dir.join("known_hosts"));
    assert_eq!(cfg.ssh.identity_file, Some(id.display().to_string()));
    assert_eq!(cfg.ssh.known_hosts_file, Some(kh.display().to_string()));
    assert_eq!(std::fs::read_to_string(&id).unwrap(), key);
    assert_eq!(
        std::fs::read_to_string(&kh).unwrap(),
        "[h]:2222 ssh-ed25519 AAAA\n"
    );
    assert_eq!(
        std::fs::metadata(&id).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(cfg.backend_env.is_empty());
    std::fs::remove_dir_all(&state).unwrap();
}
