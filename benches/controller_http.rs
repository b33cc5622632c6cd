//! The real `snapback controller` process against the apiserver stand-in (tests/apiserver),
//! with the chart's RBAC: 1,000 domains on 50 VirtHosts (their heartbeats kept fresh as agents
//! would), 100 policies, one target. After a minute of warm-up (every policy gets its
//! finalizer and first status then), prints the controller's requests and bytes per minute to
//! the API in the steady state, by verb and resource, and its peak resident memory. A
//! benchmark: it asserts nothing.
//!
//! cargo bench --bench controller_http    (SNAPBACK_BENCH_SECS: the measured window, default 120)

#[path = "../tests/apiserver/mod.rs"]
mod apiserver;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::ApiServer;
use serde_json::{json, Value};

const NS: &str = "vms";
const RELEASE_NS: &str = "snapback-system";

fn host(i: usize, now: &str) -> Value {
    let node = format!("node-{i:02}");
    let domains: Vec<Value> = (0..20)
        .map(|d| {
            json!({"name": format!("vm-{i:02}-{d:02}"), "uuid": format!("00000000-0000-0000-{i:04}-{d:012}"),
                   "state": "running", "disks": ["vda"]})
        })
        .collect();
    json!({"apiVersion": "snapback.dev/v1alpha1", "kind": "VirtHost",
           "metadata": {"name": node}, "spec": {"nodeName": node},
           "status": {"heartbeatTime": now, "domainCount": 20, "domains": domains}})
}

fn set_host_status(srv: &ApiServer, v: Value) {
    srv.shared
        .store
        .raw_replace(
            "snapback.dev/v1alpha1/VirtHost",
            v,
            snapback::cluster::mem::Part::Status,
            false,
        )
        .expect("the VirtHost exists");
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0)
}

fn main() {
    let secs: u64 = std::env::var("SNAPBACK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let tools =
        std::env::var("SNAPBACK_TOOLS").unwrap_or_else(|_| "/var/tmp/snapback-tools".into());
    let srv = ApiServer::start();
    let helm = std::path::PathBuf::from(format!("{tools}/bin/helm"));
    srv.create_all(&apiserver::render_chart(&helm, RELEASE_NS, &[]));

    let now = jiff::Timestamp::now().to_string();
    let mut objects: Vec<Value> = (0..50).map(|i| host(i, &now)).collect();
    objects.extend((0..50).map(|i| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{i:02}")}})
    }));
    objects.push(
        json!({"apiVersion": "snapback.dev/v1alpha1", "kind": "BackupTarget",
        "metadata": {"name": "t", "namespace": NS}, "spec": {"url": "file:///srv/backups"}}),
    );
    for p in 0..100 {
        let names: Vec<String> = (0..10)
            .map(|k| {
                let n = p * 10 + k;
                format!("vm-{:02}-{:02}", n / 20, n % 20)
            })
            .collect();
        objects.push(
            json!({"apiVersion": "snapback.dev/v1alpha1", "kind": "BackupPolicy",
            "metadata": {"name": format!("p{p:03}"), "namespace": NS},
            "spec": {"domainSelector": {"names": names}, "targetRef": "t",
                     "schedule": format!("{} * * * *", p % 60)}}),
        );
    }
    srv.create_all(&objects);
    // Status is dropped on create (a subresource): written apart, as the agents do.
    for i in 0..50 {
        set_host_status(&srv, host(i, &now));
    }

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    srv.kubeconfig(
        &srv.token_for(RELEASE_NS, "snapback-controller"),
        &kubeconfig,
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_snapback"))
        .args(["controller", "--listen=127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "bench")
        .env("POD_NAMESPACE", RELEASE_NS)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the controller");
    let user = format!("system:serviceaccount:{RELEASE_NS}:snapback-controller");
    let warmup = Duration::from_secs(60);
    let begun = Instant::now();
    let mut start = None;
    let mut streamed_before = 0;
    let mut beat = Instant::now();
    while start.is_none_or(|s: Instant| s.elapsed() < Duration::from_secs(secs)) {
        if start.is_none() && begun.elapsed() >= warmup {
            start = Some(Instant::now());
            streamed_before = srv.streamed_bytes(&user);
        }
        std::thread::sleep(Duration::from_secs(1));
        if beat.elapsed() >= Duration::from_secs(30) {
            // What 50 agents' heartbeats would do: the VirtHosts stay fresh.
            let now = jiff::Timestamp::now().to_string();
            for i in 0..50 {
                set_host_status(&srv, host(i, &now));
            }
            beat = Instant::now();
        }
    }
    let rss = peak_rss_mib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let start = start.expect("measured");
    let minutes = start.elapsed().as_secs_f64() / 60.0;
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0;
    let mut bytes = srv.streamed_bytes(&user) - streamed_before;
    for a in srv
        .audit()
        .iter()
        .filter(|a| a.user == user && a.at >= start)
    {
        *by.entry(format!("{} {}", a.verb, a.resource)).or_default() += 1;
        total += 1;
        bytes += a.bytes as u64;
    }
    let runs = srv.list("snapback.dev/v1alpha1/BackupRun", Some(NS)).len();
    println!("controller against the stand-in: 1000 domains, 50 VirtHosts, 100 policies, {secs} s");
    println!("  (steady state, after {} s of warm-up)", warmup.as_secs());
    println!(
        "  requests per minute       {:>8.1}",
        total as f64 / minutes
    );
    println!(
        "  KiB per minute received   {:>8.1}",
        bytes as f64 / 1024.0 / minutes
    );
    for (k, n) in &by {
        println!("    {k:<36} {:>8.1}", *n as f64 / minutes);
    }
    println!("  runs created              {runs:>8}");
    println!("  peak RSS (MiB)            {rss:>8.1}");
}
