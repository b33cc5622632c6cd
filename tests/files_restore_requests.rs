//! RestoreRequests with `files: {paths, to}` on a real guest's files-mode backup: through the
//! single-host daemon (a YAML in its config dir), killed -9 mid-restore and finished by the
//! next start; through the node agent against the in-memory Kubernetes API; and the ones that
//! cannot be done failed with their reason.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kube::api::ObjectMeta;
use snapback::api::{
    BackupTarget, BackupType, FailureReason, RestorePhase, RestoreRequest, RestoreRequestStatus,
};
use snapback::cluster::agent::{Agent, AgentConfig};
use snapback::cluster::labels;
use snapback::cluster::mem::MemStore;
use snapback::cluster::Store;
use snapback::libvirt::LibvirtHost;
use snapback::metrics::{Health, Metrics};
use snapback::store::FileStore;

/// The guest's data disk: a file, a tree with a larger file, a nested file and a link.
fn data_tree(dir: &Path) -> PathBuf {
    let root = dir.join("tree");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("data/sub")).unwrap();
    std::fs::write(
        root.join("etc/hosts"),
        b"127.0.0.1 localhost\n10.0.0.9 db\n",
    )
    .unwrap();
    let big: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(root.join("data/big.bin"), &big).unwrap();
    std::fs::write(root.join("data/sub/note.txt"), b"a note\n").unwrap();
    run_ok(
        "chown",
        &[
            "1234:5678",
            root.join("data/sub/note.txt").to_str().unwrap(),
        ],
    );
    run_ok(
        "chmod",
        &["640", root.join("data/sub/note.txt").to_str().unwrap()],
    );
    std::os::unix::fs::symlink("sub/note.txt", root.join("data/link")).unwrap();
    run_ok(
        "touch",
        &[
            "-h",
            "-d",
            "2025-06-01 12:00:00",
            root.join("data/big.bin").to_str().unwrap(),
        ],
    );
    root
}

fn same_file(got: &Path, want: &Path) {
    assert_eq!(
        std::fs::read(got).unwrap_or_else(|e| panic!("{}: {e}", got.display())),
        std::fs::read(want).unwrap(),
        "{}",
        got.display()
    );
    let (g, w) = (
        std::fs::symlink_metadata(got).unwrap(),
        std::fs::symlink_metadata(want).unwrap(),
    );
    assert_eq!(g.mode(), w.mode(), "mode of {}", got.display());
    assert_eq!(
        (g.uid(), g.gid()),
        (w.uid(), w.gid()),
        "owner of {}",
        got.display()
    );
    assert_eq!(g.mtime(), w.mtime(), "mtime of {}", got.display());
}

/// `to` holds what the request of `files_yaml` asked for (`/etc/hosts` and `/data`), equal to
/// the guest's tree, and the status counts it.
fn assert_restored(to: &Path, tree: &Path, s: &RestoreRequestStatus) {
    same_file(&to.join("etc/hosts"), &tree.join("etc/hosts"));
    same_file(&to.join("data/big.bin"), &tree.join("data/big.bin"));
    same_file(
        &to.join("data/sub/note.txt"),
        &tree.join("data/sub/note.txt"),
    );
    assert_eq!(
        std::fs::read_link(to.join("data/link")).unwrap(),
        Path::new("sub/note.txt")
    );
    let f = s.files.as_ref().expect("status.files");
    let found: Vec<(&str, &str, bool)> = f
        .paths
        .iter()
        .map(|p| (p.found.as_str(), p.path.as_str(), p.restored))
        .collect();
    let (hosts, data) = (
        to.join("etc/hosts").display().to_string(),
        to.join("data").display().to_string(),
    );
    assert_eq!(
        found,
        [
            ("vdb/etc/hosts", hosts.as_str(), true),
            ("vdb/data", data.as_str(), true)
        ]
    );
    let size = |p: &str| std::fs::metadata(tree.join(p)).unwrap().len();
    // hosts; big.bin, note.txt and the link (directories are not counted).
    assert_eq!(f.files, 4);
    assert_eq!(
        f.bytes,
        size("etc/hosts") + size("data/big.bin") + size("data/sub/note.txt")
    );
    assert!(s.work_dir.as_ref().is_none_or(|w| !Path::new(w).exists()));
}

fn files_spec(domain: &str, to: &Path) -> serde_json::Value {
    serde_json::json!({
        "domain": domain,
        "targetRef": "local",
        "files": {"paths": ["/etc/hosts", "/data"], "to": to.display().to_string()},
    })
}

fn yaml(name: &str, spec: &serde_json::Value) -> String {
    format!(
        "apiVersion: snapback.dev/v1alpha1\nkind: RestoreRequest\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

fn daemon(env: &Env, config: &Path, extra: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_snapback"))
        .args(["standalone", "--config"])
        .arg(config)
        .args(["--interval", "1"])
        .env("SNAPBACK_STATE_DIR", &env.state)
        .env("SNAPBACK_CONNECT", connect_uri())
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(env.dir.join("daemon.log"))
                .unwrap(),
        ))
        .spawn()
        .unwrap()
}

fn finished(env: &Env, name: &str) -> RestoreRequest {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let r = FileStore::new(&env.state).read::<RestoreRequest>("restorerequests", name);
        if let Ok(r) = r.as_ref() {
            if r.status.as_ref().is_some_and(|s| s.phase.is_terminal()) {
                return r.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {name}; daemon log:\n{}",
            std::fs::read_to_string(env.dir.join("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn failure_of(r: &RestoreRequest) -> (RestorePhase, FailureReason, String) {
    let s = r.status.clone().unwrap();
    let f = s.failure.expect("a failure");
    (s.phase, f.reason, f.message)
}

#[test]
fn a_files_restore_request_brings_files_back_byte_exact_through_the_daemon_after_a_kill_and_through_the_agent(
) {
    let env = Env::new();
    let tree = data_tree(&env.dir);
    let disk = ext4_raw_disk(&tree, &env.dir.join("data.raw"));
    let g = Guest::new(
        "sbfr",
        GuestOpts {
            extra_disks: vec![disk],
            ..Default::default()
        },
    );
    let run = env.backup(&g.name, &["--mode", "files"]).assert_ok();
    let rs = env.read_run(&run).status.unwrap();
    assert_eq!(rs.type_, Some(BackupType::Full));

    // The daemon: a YAML in its config dir. It dies (SIGKILL) right after the first path is
    // restored and recorded; the next start restores the rest and finishes.
    let cfg = env.dir.join("config");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("target.yaml"),
        format!(
            "apiVersion: snapback.dev/v1alpha1\nkind: BackupTarget\nmetadata:\n  name: local\nspec:\n  url: '{}'\n",
            env.target
        ),
    )
    .unwrap();
    let to = env.dir.join("restored-by-daemon");
    std::fs::write(
        cfg.join("files.yaml"),
        yaml("files-back", &files_spec(&g.name, &to)),
    )
    .unwrap();
    let mut d = daemon(
        &env,
        &cfg,
        &[("SNAPBACK_CRASH_AT", "restore:files:one-restored")],
    );
    let code = d.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(code.signal(), Some(9), "the daemon died at the crash point");
    let mid = env.read_restore("files-back").status.unwrap();
    assert_eq!(mid.phase, RestorePhase::Fetching);
    let restored: Vec<bool> = mid
        .files
        .unwrap()
        .paths
        .iter()
        .map(|p| p.restored)
        .collect();
    assert_eq!(restored, [true, false]);
    assert!(
        !to.join("data").exists(),
        "the second path was not restored yet"
    );

    // Requests that cannot be done, added while it was down, fail with their reason.
    let mut missing = files_spec(&g.name, &env.dir.join("r-missing"));
    missing["files"]["paths"] = serde_json::json!(["/etc/hosts", "/nope"]);
    std::fs::write(cfg.join("missing.yaml"), yaml("not-in-backup", &missing)).unwrap();
    let no_files = files_spec("no-such-domain", &env.dir.join("r-none"));
    std::fs::write(cfg.join("none.yaml"), yaml("no-files-backup", &no_files)).unwrap();
    let mut both = files_spec(&g.name, &env.dir.join("r-both"));
    both["newName"] = "copy".into();
    std::fs::write(cfg.join("both.yaml"), yaml("files-and-new-name", &both)).unwrap();

    let mut d = daemon(&env, &cfg, &[]);
    let done = finished(&env, "files-back");
    let s = done.status.clone().unwrap();
    assert_eq!(s.phase, RestorePhase::Succeeded, "{:?}", s.failure);
    assert_restored(&to, &tree, &s);
    let point = s.point.clone().unwrap();
    assert_eq!(point.run, run, "the point names the run that made it");
    assert_eq!(Some(point.time), rs.target_time);
    let phases: Vec<RestorePhase> = s.phases.iter().map(|p| p.phase).collect();
    // The resumed restore goes on in Fetching, where it stopped.
    assert_eq!(phases, [RestorePhase::Resolving, RestorePhase::Fetching]);

    let (phase, reason, message) = failure_of(&finished(&env, "not-in-backup"));
    assert_eq!(
        (phase, reason),
        (RestorePhase::Failed, FailureReason::InvalidSpec)
    );
    assert!(
        message.contains("/nope is not in the files-mode backup"),
        "{message}"
    );
    assert!(
        !env.dir.join("r-missing/etc/hosts").exists(),
        "nothing restored"
    );
    let (_, reason, message) = failure_of(&finished(&env, "no-files-backup"));
    assert_eq!(reason, FailureReason::DomainNotFound);
    assert!(
        message.contains("no files-mode backup of domain 'no-such-domain'"),
        "{message}"
    );
    let (_, reason, message) = failure_of(&finished(&env, "files-and-new-name"));
    assert_eq!(reason, FailureReason::InvalidSpec);
    assert!(message.contains("it takes none of newName"), "{message}");
    assert!(!env.dir.join("r-both").exists() && !env.dir.join("r-none").exists());
    run_ok("kill", &["-TERM", &d.id().to_string()]);
    assert!(d.wait().unwrap().success());

    // The agent, against the in-memory API: the same request on its node.
    let to = env.dir.join("restored-by-agent");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let store = MemStore::new();
        let meta = |name: &str| ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some([(labels::NODE.to_string(), "node-1".to_string())].into()),
            ..Default::default()
        };
        let mut t = BackupTarget::new(
            "local",
            serde_json::from_value(serde_json::json!({ "url": env.target })).unwrap(),
        );
        t.metadata = meta("local");
        store.create(&t).await.unwrap();
        let mut rr = RestoreRequest::new(
            "files-back",
            serde_json::from_value(files_spec(&g.name, &to)).unwrap(),
        );
        rr.metadata = meta("files-back");
        store.create(&rr).await.unwrap();
        let host = LibvirtHost::connect(&connect_uri()).await.unwrap();
        let a = Agent::new(
            store.clone(),
            host,
            AgentConfig {
                node: "node-1".into(),
                namespace: None,
                state_dir: env.state.join("agent"),
                heartbeat_every: Duration::from_secs(5),
                poll: Duration::from_millis(200),
                limits: snapback::driver::admission::Limits {
                    max_runs: 2,
                    staging_budget: None,
                },
            },
            Arc::new(Metrics::new()),
            Health::default(),
        );
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            a.tick().await.unwrap();
            a.wait_in_flight().await;
            let r: RestoreRequest = store
                .get(Some("default"), "files-back")
                .await
                .unwrap()
                .unwrap();
            if r.status.as_ref().is_some_and(|s| s.phase.is_terminal()) {
                return r.status.unwrap();
            }
            assert!(Instant::now() < deadline, "timed out waiting for the agent");
        }
    });
    assert_eq!(s.phase, RestorePhase::Succeeded, "{:?}", s.failure);
    assert_restored(&to, &tree, &s);
    assert_eq!(s.point.unwrap().run, run);
}
