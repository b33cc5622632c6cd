//! Leader election of the real `snapback controller` processes against the apiserver stand-in
//! (tests/apiserver): a leader stopped with SIGTERM releases the Lease and another replica
//! takes it; a leader killed with SIGKILL is replaced once its Lease runs out; across both,
//! scheduling goes on and no tick is scheduled twice. No agent runs: a VirtHost written by the
//! test stands for one, so the runs stay Pending.

mod apiserver;
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::ApiServer;
use common::test_tool;
use serde_json::json;
use snapback::cluster::mem::Part;

const NS: &str = "snapback-system";
const VIRTHOST: &str = "snapback.dev/v1alpha1/VirtHost";
const RUN: &str = "snapback.dev/v1alpha1/BackupRun";

struct Controller {
    name: String,
    child: Child,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(srv: &ApiServer, dir: &Path, name: &str) -> Controller {
    let kubeconfig = dir.join(format!("kubeconfig-{name}"));
    srv.kubeconfig(&srv.token_for(NS, "snapback-controller"), &kubeconfig);
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_snapback"))
        .args(["controller", "--interval=1"])
        .arg(format!("--listen=127.0.0.1:{port}"))
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", name)
        .env("POD_NAMESPACE", NS)
        .env("SNAPBACK_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Controller {
        name: name.to_string(),
        child,
    }
}

/// What an agent's heartbeat does: the VirtHost stays fresh and reports the domain `web`.
fn heartbeat(srv: &ApiServer) {
    let mut v = srv.get(VIRTHOST, "", "node-1").unwrap();
    v["status"] = json!({"heartbeatTime": jiff::Timestamp::now().to_string(), "domainCount": 1,
        "domains": [{"name": "web", "uuid": "00000000-0000-0000-0000-000000000001",
                     "state": "running", "disks": ["vda"]}]});
    srv.shared
        .store
        .raw_replace(VIRTHOST, v, Part::Status, false)
        .unwrap();
}

fn holder(srv: &ApiServer) -> Option<String> {
    srv.get("coordination.k8s.io/v1/Lease", NS, "snapback-controller")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
        .filter(|h| !h.is_empty())
}

/// Waits (the VirtHost kept fresh meanwhile) until `f` gives a value.
fn wait_for<T>(srv: &ApiServer, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        heartbeat(srv);
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ticks(srv: &ApiServer) -> Vec<String> {
    let mut t: Vec<String> = srv
        .list(RUN, Some(NS))
        .iter()
        .filter_map(|r| {
            r["metadata"]["annotations"]["snapback.dev/scheduled-at"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    t.sort();
    t
}

#[test]
fn a_stopped_leader_hands_over_at_once_a_killed_one_after_its_lease_and_no_tick_runs_twice() {
    let srv = ApiServer::start();
    srv.create_all(&apiserver::render_chart(&test_tool("helm"), NS, &[]));
    srv.create_all(&[
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}),
        json!({"apiVersion": "snapback.dev/v1alpha1", "kind": "VirtHost",
               "metadata": {"name": "node-1"}, "spec": {"nodeName": "node-1"}}),
        json!({"apiVersion": "snapback.dev/v1alpha1", "kind": "BackupTarget",
               "metadata": {"name": "t", "namespace": NS}, "spec": {"url": "file:///srv/b"}}),
        json!({"apiVersion": "snapback.dev/v1alpha1", "kind": "BackupPolicy",
               "metadata": {"name": "p", "namespace": NS},
               "spec": {"domainSelector": {"names": ["web"]}, "targetRef": "t",
                        "schedule": "* * * * *", "concurrencyPolicy": "Allow"}}),
    ]);
    heartbeat(&srv);
    let dir = tempfile::tempdir().unwrap();
    let mut cs: BTreeMap<String, Controller> = ["c0", "c1"]
        .iter()
        .map(|n| (n.to_string(), start(&srv, dir.path(), n)))
        .collect();

    let first = wait_for(&srv, "a leader", || holder(&srv));
    wait_for(&srv, "a first run", || ticks(&srv).first().cloned());

    // SIGTERM: the leader abandons its pass and releases the Lease before it exits.
    let mut c = cs.remove(&first).unwrap();
    unsafe {
        libc::kill(c.child.id() as i32, libc::SIGTERM);
    }
    let status = c.child.wait().unwrap();
    assert!(status.success(), "{} exited with {status}", c.name);
    let after_release = holder(&srv);
    assert!(
        after_release.as_deref() != Some(first.as_str()),
        "the Lease still names {first} after it stopped"
    );
    let second = wait_for(&srv, "the other replica to lead", || {
        holder(&srv).filter(|h| *h != first)
    });
    cs.insert("c2".into(), start(&srv, dir.path(), "c2"));

    // SIGKILL: nothing is released; the third replica waits for the Lease to run out.
    let killed_at = jiff::Timestamp::now();
    drop(cs.remove(&second).unwrap());
    let third = wait_for(&srv, "the third replica to lead", || {
        holder(&srv).filter(|h| *h != second)
    });
    assert_eq!(third, "c2");
    let later = wait_for(&srv, "a tick scheduled by the new leader", || {
        ticks(&srv)
            .into_iter()
            .find(|t| t.parse::<jiff::Timestamp>().unwrap() > killed_at)
    });

    let all = ticks(&srv);
    let mut unique = all.clone();
    unique.dedup();
    assert_eq!(all, unique, "a tick was scheduled twice");
    assert!(all.contains(&later));
    // Run names are made from the tick, so a second leader scheduling a tick already done
    // would show as a create refused with AlreadyExists.
    let again = srv
        .audit()
        .iter()
        .filter(|a| a.verb == "create" && a.resource == "backupruns" && a.code == 409)
        .count();
    assert_eq!(again, 0, "a tick was scheduled again by another leader");
}
