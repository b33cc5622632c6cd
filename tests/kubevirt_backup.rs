//! Backups of a KubeVirt VM through KubeVirt's backup API, end to end on this host: the
//! worker's engine drives BackupRuns against the fake KubeVirt (tests/kubevirt_fake), which
//! performs each VirtualMachineBackup as a real libvirt push backup of the test guest and
//! serves the backup volume over HTTPS; the files go to a real duplicity target. No
//! KubeVirt cluster can run here: what KubeVirt does is the fake's, after its sources.

mod apiserver;
mod common;
mod kubevirt_fake;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use apiserver::ApiServer;
use common::*;
use kube::api::ObjectMeta;
use kubevirt_fake::*;
use snapback::api::*;
use snapback::cluster::agent::{Agent, AgentConfig, Host};
use snapback::cluster::mem::MemStore;
use snapback::cluster::Store;
use snapback::metrics::{Health, Metrics};

const NS: &str = "vms";

/// Dropped in this order: the fake (its jobs and servers), the stand-in, then the guest.
struct World {
    fake: KubevirtFake,
    api: ApiServer,
    guest: Guest,
    env: Env,
}

fn world() -> World {
    let guest = Guest::new(
        "kvsb",
        GuestOpts {
            disk_mib: 128,
            prefill_mib: 32,
            agent_channel: true,
            ..Default::default()
        },
    );
    let api = ApiServer::start();
    let fake = KubevirtFake::start(&api);
    fake.add_vm(NS, "web", &guest.name, &[("changedBlockTracking", "true")]);
    World {
        fake,
        api,
        guest,
        env: Env::new(),
    }
}

fn store(w: &World) -> MemStore {
    w.api.shared.store.clone()
}

async fn target(w: &World) {
    let mut t = BackupTarget::new(
        "local",
        serde_json::from_value(serde_json::json!({ "url": w.env.target })).unwrap(),
    );
    t.metadata = ObjectMeta {
        name: Some("local".into()),
        namespace: Some(NS.into()),
        ..Default::default()
    };
    store(w).create(&t).await.unwrap();
}

async fn run(w: &World, name: &str, extra: serde_json::Value) -> BackupRun {
    let mut spec = serde_json::json!({
        "domain": format!("{NS}/web"), "targetRef": "local",
        "virtualMachine": {"namespace": NS, "name": "web"},
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let mut r = BackupRun::new(name, serde_json::from_value(spec).unwrap());
    r.metadata = ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NS.into()),
        labels: Some([("snapback.dev/kubevirt".to_string(), "true".to_string())].into()),
        ..Default::default()
    };
    let r = store(w).create(&r).await.unwrap();
    let (_tx, cancel) = tokio::sync::watch::channel(false);
    let place = snapback::cluster::kubevirt::Place {
        state_dir: &w.env.state,
        storage_class: None,
        metrics: None,
        own_namespace: Some("snapback-system".into()),
    };
    snapback::cluster::kubevirt::drive_run(&store(w), r, &place, Box::new(|_| {}), cancel).await
}

fn status(r: &BackupRun) -> BackupRunStatus {
    r.status.clone().unwrap()
}

/// What a run created in the cluster and has not removed.
fn leftovers(w: &World) -> Vec<String> {
    w.fake.made_by_runs(NS)
}

fn qemu_img_raw(src: &Path, dest: &Path, unsafe_read: bool) {
    let mut args = vec!["convert"];
    if unsafe_read {
        args.push("-U");
    }
    args.extend(["-O", "raw", src.to_str().unwrap(), dest.to_str().unwrap()]);
    run_ok("qemu-img", &args);
}

// A plain test: the fake runs its own runtime, which cannot start inside the test's.
#[test]
fn a_kubevirt_vm_is_backed_up_full_then_incremental_and_the_target_holds_its_disk() {
    let w = world();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(target(&w));

    let first = rt.block_on(run(&w, "web-1", serde_json::json!({})));
    let s = status(&first);
    assert_eq!(s.phase, BackupPhase::Succeeded, "{:?}", s.failure);
    assert_eq!(s.type_, Some(BackupType::Full));
    assert!(s.quiesced, "KubeVirt froze the guest through its agent");
    let cp1 = s
        .checkpoint
        .clone()
        .expect("KubeVirt's checkpoint recorded");
    assert!(cp1.starts_with("snapback-web-1-"), "{cp1}");
    assert_eq!(
        leftovers(&w),
        Vec::<String>::new(),
        "the run removes what it made"
    );
    let tracker = w
        .api
        .list(TRACKER, Some(NS))
        .into_iter()
        .next()
        .expect("the tracker stays for the next run");
    assert_eq!(tracker["status"]["latestCheckpoint"]["name"], cp1.as_str());
    let dir = w.env.target_dir.join("kubevirt").join(NS).join("web");
    assert!(
        std::fs::read_dir(&dir)
            .map(|d| d.count() > 0)
            .unwrap_or(false),
        "the chain lives under <target>/kubevirt/<namespace>/<name>"
    );

    // More writes, then the incremental with the guest paused so its disk holds still.
    let n = w.guest.writes();
    w.guest.wait_for_writes(n + 20);
    virsh_ok(&["suspend", &w.guest.name]);
    let second = rt.block_on(run(
        &w,
        "web-2",
        serde_json::json!({"consistency": {"quiesce": "None"}}),
    ));
    let reference = w.env.dir.join("reference.raw");
    qemu_img_raw(&w.guest.disk, &reference, true);
    virsh_ok(&["resume", &w.guest.name]);
    let s2 = status(&second);
    assert_eq!(s2.phase, BackupPhase::Succeeded, "{:?}", s2.failure);
    assert_eq!(s2.type_, Some(BackupType::Incremental));
    assert_eq!(s2.parent_checkpoint.as_deref(), Some(cp1.as_str()));
    assert_eq!(s2.chain.as_deref(), Some("web-1"));
    assert!(
        s2.size_bytes * 3 < s.size_bytes,
        "the incremental ({}) holds what changed, not the disk ({})",
        s2.size_bytes,
        s.size_bytes
    );
    assert_eq!(leftovers(&w), Vec::<String>::new());
    assert!(w.env.staging_files().is_empty(), "staging is empty");

    // The points read back sound, and the chain on the target is the paused disk.
    let v = w.env.verify(&format!("{NS}/web"), &["--all"]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    let full_time = duplicity_time(&s);
    let incr_time = duplicity_time(&s2);
    let (ok, full_dir, log) =
        w.env
            .duplicity_restore(&format!("{NS}/web"), Some(&full_time), &[], &[]);
    assert!(ok, "{log}");
    let (ok, incr_dir, log) =
        w.env
            .duplicity_restore(&format!("{NS}/web"), Some(&incr_time), &[], &[]);
    assert!(ok, "{log}");
    // Recovery without snapback: the incremental names its parent's export by a relative
    // backing file, so the two files side by side are a chain.
    let full_file = &s.disks[0].export_file;
    let incr_file = &s2.disks[0].export_file;
    std::fs::copy(full_dir.join(full_file), incr_dir.join(full_file)).unwrap();
    let rebuilt = w.env.dir.join("rebuilt.raw");
    qemu_img_raw(&incr_dir.join(incr_file), &rebuilt, false);
    let same = std::fs::read(&rebuilt).unwrap() == std::fs::read(&reference).unwrap();
    assert!(
        same,
        "the rebuilt chain is the disk as it was at the incremental"
    );
}

fn failure(r: &BackupRun) -> (String, String) {
    let f = status(r).failure.expect("a failure");
    (f.reason.as_str().to_string(), f.message)
}

#[test]
fn what_kubevirt_cannot_do_fails_with_why_and_leaves_nothing_and_a_lost_checkpoint_means_a_full() {
    let w = world();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(target(&w));
    let first = rt.block_on(run(&w, "web-1", serde_json::json!({})));
    assert_eq!(
        status(&first).phase,
        BackupPhase::Succeeded,
        "{:?}",
        status(&first).failure
    );

    // A feature gate turned off: said before KubeVirt would wait on it forever.
    w.fake.set_feature_gates(&["IncrementalBackup"]);
    let gated = rt.block_on(run(&w, "web-2", serde_json::json!({})));
    let (reason, message) = failure(&gated);
    assert_eq!(reason, "BackupJobFailed");
    assert!(
        message.contains("FeatureGateOff") && message.contains("UtilityVolumes"),
        "{message}"
    );
    assert_eq!(leftovers(&w), Vec::<String>::new());
    w.fake
        .set_feature_gates(&["IncrementalBackup", "UtilityVolumes"]);

    // The guest cannot be frozen (paused) and quiesce is Required: KubeVirt completes with a
    // warning, the run fails QuiesceFailed and its point never reaches the target.
    virsh_ok(&["suspend", &w.guest.name]);
    let unfrozen = rt.block_on(run(
        &w,
        "web-3",
        serde_json::json!({"consistency": {"quiesce": "Required"}}),
    ));
    virsh_ok(&["resume", &w.guest.name]);
    let (reason, message) = failure(&unfrozen);
    assert_eq!(reason, "QuiesceFailed", "{message}");
    assert_eq!(leftovers(&w), Vec::<String>::new());

    // KubeVirt advanced its tracker for that backup, which the target does not hold: the
    // next run sees the chain's checkpoint gone and takes a full.
    let next = rt.block_on(run(&w, "web-4", serde_json::json!({})));
    let s = status(&next);
    assert_eq!(s.phase, BackupPhase::Succeeded, "{:?}", s.failure);
    assert_eq!(s.type_, Some(BackupType::Full), "{:?}", s.full_reason);
    assert!(s.full_reason.is_some());

    // The bitmap lost in a restart: KubeVirt clears the tracker; again a full, said why.
    let inc = rt.block_on(run(&w, "web-5", serde_json::json!({})));
    assert_eq!(status(&inc).type_, Some(BackupType::Incremental));
    w.fake.lose_checkpoints(NS, "web");
    let after_loss = rt.block_on(run(&w, "web-6", serde_json::json!({})));
    let s = status(&after_loss);
    assert_eq!(s.phase, BackupPhase::Succeeded, "{:?}", s.failure);
    assert_eq!(s.type_, Some(BackupType::Full));
    assert!(s.full_reason.is_some());

    // A stopped VM: KubeVirt backs up running VMs only.
    w.fake.stop_vm(NS, "web");
    let stopped = rt.block_on(run(&w, "web-7", serde_json::json!({})));
    let (reason, message) = failure(&stopped);
    assert_eq!(reason, "DomainShutOff", "{message}");
    assert_eq!(leftovers(&w), Vec::<String>::new());
    assert!(w.env.staging_files().is_empty());

    // A run in another namespace naming this VM: refused, nothing made.
    let mut foreign = BackupRun::new(
        "theirs",
        serde_json::from_value(serde_json::json!({
            "domain": format!("{NS}/web"), "targetRef": "local",
            "virtualMachine": {"namespace": NS, "name": "web"},
        }))
        .unwrap(),
    );
    foreign.metadata = ObjectMeta {
        name: Some("theirs".into()),
        namespace: Some("tenant-b".into()),
        ..Default::default()
    };
    let foreign = rt.block_on(async {
        let r = store(&w).create(&foreign).await.unwrap();
        let (_tx, cancel) = tokio::sync::watch::channel(false);
        let place = snapback::cluster::kubevirt::Place {
            state_dir: &w.env.state,
            storage_class: None,
            metrics: None,
            own_namespace: Some("snapback-system".into()),
        };
        snapback::cluster::kubevirt::drive_run(&store(&w), r, &place, Box::new(|_| {}), cancel)
            .await
    });
    let (reason, message) = failure(&foreign);
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("its own namespace"), "{message}");
    assert_eq!(leftovers(&w), Vec::<String>::new());

    // Every point that reached the target reads back sound.
    let v = w.env.verify(&format!("{NS}/web"), &["--all"]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
}

/// The kubevirt-worker's agent, over the stand-in's store.
fn worker_agent(w: &World, metrics: Arc<Metrics>) -> Arc<Agent<MemStore>> {
    Agent::kubevirt(
        store(w),
        AgentConfig {
            node: "kubevirt-worker".into(),
            namespace: None,
            state_dir: w.env.state.clone(),
            heartbeat_every: Duration::from_secs(5),
            poll: Duration::from_millis(200),
            limits: snapback::driver::admission::Limits::UNLIMITED,
        },
        Host::KubeVirt {
            storage_class: None,
            own_namespace: Some("snapback-system".into()),
        },
        metrics,
        Health::default(),
    )
}

#[test]
fn the_kubevirt_worker_reads_a_vms_chain_back_when_its_policy_verify_tick_is_due_and_records_the_verdict(
) {
    let w = world();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(target(&w));
    let mut p = BackupPolicy::new(
        "vms",
        serde_json::from_value(serde_json::json!({
            "virtualMachineSelector": {"names": ["web"]}, "targetRef": "local",
            "schedule": "0 2 * * *", "verify": {"schedule": "0 3 * * *"},
        }))
        .unwrap(),
    );
    p.metadata = ObjectMeta {
        name: Some("vms".into()),
        namespace: Some(NS.into()),
        ..Default::default()
    };
    rt.block_on(store(&w).create(&p)).unwrap();
    let done = rt.block_on(run(&w, "web-1", serde_json::json!({"policyRef": "vms"})));
    let s = status(&done);
    assert_eq!(s.phase, BackupPhase::Succeeded, "{:?}", s.failure);
    let finished = s.completion_time.unwrap();

    let metrics = Arc::new(Metrics::new());
    let a = worker_agent(&w, metrics.clone());
    rt.block_on(async {
        // Before the first 03:00 after the run: nothing is due.
        let before = jiff::Timestamp::from_second(finished.as_second() + 1).unwrap();
        if before.strftime("%H").to_string() != "03" {
            a.verify_pass(before).await.unwrap();
            assert_eq!(a.in_flight(), 0, "no verify tick since the run finished");
        }
        // Two days on, a tick has passed: the VM's chain is read back once.
        let later = finished
            .checked_add(jiff::SignedDuration::from_hours(48))
            .unwrap();
        a.verify_pass(later).await.unwrap();
        assert_eq!(a.in_flight(), 1, "one verify for the one VM");
        a.wait_in_flight().await;
        let s = store(&w)
            .get::<BackupRun>(Some(NS), "web-1")
            .await
            .unwrap()
            .unwrap()
            .status
            .unwrap();
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Verified")
            .expect("a Verified condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "ReadBackOK"),
            "{}",
            c.message
        );
        let tick = s.last_verify_tick.expect("the tick answered");
        assert!(tick <= later && tick > finished, "{tick}");
        a.verify_pass(later).await.unwrap();
        assert_eq!(a.in_flight(), 0, "the tick is answered once");
    });
    let text = metrics.encode();
    assert!(
        text.contains("snapback_verified_points_total{result=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "snapback_verify_broken_points{{policy=\"vms\",domain=\"{NS}/web\"}} 0"
        )),
        "{text}"
    );
    assert!(std::fs::read_dir(w.env.state.join("verify-work"))
        .map(|d| d.count() == 0)
        .unwrap_or(true));
}
