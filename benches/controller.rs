//! Controller cost: one scheduling pass over 1,000 domains on 50 VirtHosts with 100 policies,
//! against the in-memory API (which is counted too: its JSON round trips stand in for the
//! apiserver's). Prints CPU seconds per pass and the peak resident memory. Not a timed test.
//!
//! cargo bench --bench controller

use std::time::Instant;

use jiff::Timestamp;
use kube::api::ObjectMeta;
use snapback::api::*;
use snapback::cluster::controller::{pass, PassConfig};
use snapback::cluster::mem::MemStore;
use snapback::cluster::Store;

fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| k / 1024.0)
        .unwrap_or(0.0)
}

fn meta(name: &str, ns: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        ..Default::default()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let store = MemStore::new();
    let start: Timestamp = "2026-11-22T00:30:00Z".parse().unwrap();
    store.set_now(start);
    let mut t = BackupTarget::new(
        "t",
        serde_json::from_value(serde_json::json!({"url": "file:///srv/b"})).unwrap(),
    );
    t.metadata = meta("t", Some("ns"));
    store.create(&t).await.unwrap();
    let tick: Timestamp = "2026-11-22T01:00:05Z".parse().unwrap();
    for h in 0..50 {
        let node = format!("node-{h:02}");
        let vh = store
            .create(&VirtHost::new(
                &node,
                VirtHostSpec {
                    node_name: node.clone(),
                },
            ))
            .await
            .unwrap();
        let mut vh = vh;
        vh.status = Some(VirtHostStatus {
            heartbeat_time: Some(tick.to_string()),
            domain_count: 20,
            domains: (0..20)
                .map(|d| HostDomain {
                    name: format!("vm-{:04}", h * 20 + d),
                    uuid: format!("u-{h}-{d}"),
                    state: "Running".into(),
                    disks: vec!["vda".into(), "vdb".into()],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        store.apply_status(&vh, "bench").await.unwrap();
    }
    for p in 0..100 {
        let spec = serde_json::json!({
            "domainSelector": {"globs": [format!("vm-{p:02}*")]},
            "targetRef": "t",
            "schedule": "0 * * * *",
            "timeZone": "Europe/Berlin",
            "retention": {"keepDaily": 7},
        });
        let mut bp = BackupPolicy::new(&format!("p{p:03}"), serde_json::from_value(spec).unwrap());
        bp.metadata = meta(&format!("p{p:03}"), Some("ns"));
        store.create(&bp).await.unwrap();
    }
    let cfg = PassConfig {
        namespace: Some("ns".into()),
        ..Default::default()
    };
    // The first pass only adds finalizers and status (no tick yet).
    pass(&store, &cfg, start).await.unwrap();

    let (c0, w0) = (cpu_seconds(), Instant::now());
    let s = pass(&store, &cfg, tick).await.unwrap();
    let (cpu_tick, wall_tick) = (cpu_seconds() - c0, w0.elapsed().as_secs_f64());
    assert_eq!(s.runs_created, 1000, "{s:?}");

    let quiet = tick + jiff::SignedDuration::from_secs(15);
    let (c1, w1) = (cpu_seconds(), Instant::now());
    let s2 = pass(&store, &cfg, quiet).await.unwrap();
    let (cpu_quiet, wall_quiet) = (cpu_seconds() - c1, w1.elapsed().as_secs_f64());
    assert_eq!(s2.runs_created, 0);

    println!("scheduling pass, 1000 domains / 50 VirtHosts / 100 policies:");
    println!(
        "  pass at a tick (creates 1000 BackupRuns): {cpu_tick:.3} s CPU ({wall_tick:.3} s wall)  target <= 1 s CPU"
    );
    println!(
        "  steady pass (nothing due, 1000 runs listed): {cpu_quiet:.3} s CPU ({wall_quiet:.3} s wall)"
    );
    println!(
        "  peak RSS of the process, in-memory API included: {:.1} MiB  target <= 150 MiB",
        peak_rss_mib()
    );
}
