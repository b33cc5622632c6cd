//! The node agent against a real libvirtd and qemu, with the in-memory Kubernetes API.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kube::api::ObjectMeta;
use snapback::api::*;
use snapback::cluster::agent::{Agent, AgentConfig};
use snapback::cluster::labels;
use snapback::cluster::mem::MemStore;
use snapback::cluster::Store;
use snapback::driver::admission::Limits;
use snapback::libvirt::LibvirtHost;
use snapback::metrics::{Health, Metrics};

const NS: &str = "default";
const NODE: &str = "node-1";

fn meta(name: &str) -> ObjectMeta {
    let mut l = std::collections::BTreeMap::new();
    l.insert(labels::NODE.to_string(), NODE.to_string());
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NS.into()),
        labels: Some(l),
        ..Default::default()
    }
}

async fn setup(env: &Env) -> (MemStore, Arc<Metrics>) {
    let store = MemStore::new();
    let mut t = BackupTarget::new(
        "local",
        serde_json::from_value(serde_json::json!({ "url": env.target })).unwrap(),
    );
    t.metadata = meta("local");
    store.create(&t).await.unwrap();
    (store, Arc::new(Metrics::new()))
}

async fn agent(store: &MemStore, env: &Env, metrics: Arc<Metrics>) -> Arc<Agent<MemStore>> {
    let limits = Limits {
        max_runs: 2,
        staging_budget: None,
    };
    agent_limited(store, env, metrics, limits).await
}

async fn agent_limited(
    store: &MemStore,
    env: &Env,
    metrics: Arc<Metrics>,
    limits: Limits,
) -> Arc<Agent<MemStore>> {
    let host = LibvirtHost::connect(&connect_uri()).await.unwrap();
    Agent::new(
        store.clone(),
        host,
        AgentConfig {
            node: NODE.into(),
            namespace: None,
            state_dir: env.state.clone(),
            heartbeat_every: Duration::from_secs(5),
            poll: Duration::from_millis(200),
            limits,
        },
        metrics,
        Health::default(),
    )
}

async fn backup_run(store: &MemStore, name: &str, domain: &str, hooks: serde_json::Value) {
    let mut spec = BackupRunSpec::new(domain, "local");
    spec.node_name = Some(NODE.into());
    spec.hooks = serde_json::from_value(hooks).unwrap();
    let mut r = BackupRun::new(name, spec);
    r.metadata = meta(name);
    store.create(&r).await.unwrap();
}

/// Ticks `agent` until `pred` holds for the named run.
async fn tick_until<K: snapback::cluster::Object>(
    agent: &Arc<Agent<MemStore>>,
    store: &MemStore,
    name: &str,
    what: &str,
    pred: impl Fn(&K) -> bool,
) -> K {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        agent.tick().await.unwrap();
        if let Some(o) = store.get::<K>(Some(NS), name).await.unwrap() {
            if pred(&o) {
                return o;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn run_phase(r: &BackupRun) -> BackupPhase {
    r.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_publishes_its_host_and_takes_a_backup_run_and_a_restore_request_to_succeeded() {
    let g = Guest::new("sba-agent", GuestOpts::default());
    let env = Env::new();
    let (store, metrics) = setup(&env).await;
    let a = agent(&store, &env, metrics.clone()).await;

    a.heartbeat().await.unwrap();
    let vh: VirtHost = store
        .get(None, NODE)
        .await
        .unwrap()
        .expect("VirtHost published");
    let st = vh.status.unwrap();
    assert!(st.heartbeat_time.is_some() && st.libvirt_version.is_some());
    let d = st
        .domains
        .iter()
        .find(|d| d.name == g.name)
        .expect("the guest is in the inventory");
    assert_eq!(d.state, "Running");
    assert_eq!(d.disks, vec!["vda"]);

    backup_run(&store, "br-1", &g.name, serde_json::json!({})).await;
    let r: BackupRun = tick_until(&a, &store, "br-1", "the run to finish", |r: &BackupRun| {
        run_phase(r).is_terminal() && !labels::has_finalizer(&r.metadata, labels::RUN_FINALIZER)
    })
    .await;
    let s = r.status.clone().unwrap();
    assert_eq!(s.phase, BackupPhase::Succeeded, "{:?}", s.failure);
    assert_eq!(s.type_, Some(BackupType::Full));
    assert_left_clean(&g, &env, true, &[s.checkpoint.clone().unwrap()]);
    let reasons: Vec<String> = store
        .events()
        .into_iter()
        .filter(|e| e.name == "br-1")
        .map(|e| e.reason)
        .collect();
    for p in ["Preparing", "Exporting", "Uploading", "Succeeded"] {
        assert!(reasons.iter().any(|r| r == p), "event {p} in {reasons:?}");
    }
    let text = metrics.encode();
    assert!(text.contains("snapback_backup_attempts_total 1"), "{text}");
    assert!(text.contains("snapback_backup_success_total 1"), "{text}");
    assert!(text.contains(&format!(
        "snapback_last_successful_backup_timestamp_seconds{{policy=\"\",domain=\"{}\"}}",
        g.name
    )));

    // A restore of that point as a new domain.
    let storage = env.dir.join("restored");
    std::fs::create_dir_all(&storage).unwrap();
    let new_name = format!("{}-r", g.name);
    let mut rr = RestoreRequest::new(
        "rr-1",
        serde_json::from_value(serde_json::json!({
            "domain": g.name, "targetRef": "local", "newName": new_name,
            "storageDir": storage.display().to_string(),
        }))
        .unwrap(),
    );
    rr.metadata = meta("rr-1");
    store.create(&rr).await.unwrap();
    let done: RestoreRequest =
        tick_until(&a, &store, "rr-1", "the restore", |r: &RestoreRequest| {
            r.status.as_ref().is_some_and(|s| s.phase.is_terminal())
        })
        .await;
    let rs = done.status.unwrap();
    let _cleanup = scopeguard(new_name.clone());
    assert_eq!(rs.phase, RestorePhase::Succeeded, "{:?}", rs.failure);
    assert_eq!(rs.defined_domain.as_deref(), Some(new_name.as_str()));
    assert!(virsh(&["dominfo", &new_name]).status.success());
    assert!(metrics
        .encode()
        .contains("snapback_restore_success_total 1"));
}

/// Undefines the restored domain when the test ends, pass or fail.
struct Undefine(String);
impl Drop for Undefine {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
        let _ = virsh(&["undefine", &self.0, "--checkpoints-metadata"]);
    }
}
fn scopeguard(name: String) -> Undefine {
    Undefine(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_flight_when_its_agent_dies_is_resumed_by_the_next_agent_and_runs_once() {
    let g = Guest::new(
        "sba-restart",
        GuestOpts {
            prefill_mib: 32,
            ..Default::default()
        },
    );
    let env = Env::new();
    let (store, metrics) = setup(&env).await;
    let first = agent(&store, &env, metrics.clone()).await;
    backup_run(
        &store,
        "br-restart",
        &g.name,
        serde_json::json!({"onSnapshot": [{"command": ["sleep", "15"]}]}),
    )
    .await;
    tick_until(
        &first,
        &store,
        "br-restart",
        "the snapshot",
        |r: &BackupRun| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == BackupPhase::Snapshotting && s.snapshot_time.is_some())
        },
    )
    .await;
    // The agent dies mid-run: nothing is cancelled or cleaned up.
    first.abandon().await;
    drop(first);
    let mid: BackupRun = store.get(Some(NS), "br-restart").await.unwrap().unwrap();
    assert_eq!(run_phase(&mid), BackupPhase::Snapshotting);
    assert!(labels::has_finalizer(&mid.metadata, labels::RUN_FINALIZER));

    let second = agent(&store, &env, metrics).await;
    // Another process holds the run's lock (as `snapback backup` of the same domain and target
    // would): the resumed run waits, untouched, instead of failing Busy.
    let uuid = mid.status.as_ref().unwrap().domain_uuid.clone().unwrap();
    let key = snapback::catalog::layout::target_key(&env.target);
    let held = snapback::state_dir::lock(&env.state, &key, &uuid)
        .unwrap()
        .unwrap();
    for _ in 0..3 {
        second.tick().await.unwrap();
        second.wait_in_flight().await;
    }
    let waiting: BackupRun = store.get(Some(NS), "br-restart").await.unwrap().unwrap();
    assert_eq!(
        waiting.status, mid.status,
        "the waiting run is left as it was"
    );
    drop(held);
    let r: BackupRun = tick_until(
        &second,
        &store,
        "br-restart",
        "the resumed run",
        |r: &BackupRun| {
            run_phase(r).is_terminal() && !labels::has_finalizer(&r.metadata, labels::RUN_FINALIZER)
        },
    )
    .await;
    let s = r.status.unwrap();
    assert_eq!(s.phase, BackupPhase::Succeeded, "{:?}", s.failure);
    assert_eq!(s.upload_attempts, 1, "uploaded once");
    let on_snapshot: Vec<_> = s.hooks.iter().filter(|h| h.stage == "onSnapshot").collect();
    assert_eq!(
        on_snapshot.len(),
        1,
        "the interrupted onSnapshot hook ran once, on resume"
    );
    assert!(on_snapshot[0].succeeded);
    assert_left_clean(&g, &env, true, &[s.checkpoint.clone().unwrap()]);
    let runs: Vec<BackupRun> = store.list(Some(NS), &[]).await.unwrap();
    assert_eq!(runs.len(), 1);
    let (ok, dir, log) = env.duplicity_restore(&g.name, None, &["--no-encryption"], &[]);
    assert!(ok, "{log}");
    assert_eq!(
        snapback::state_dir::sha256_file(&dir.join(&s.disks[0].export_file)).unwrap(),
        s.disks[0].sha256.clone().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_backup_run_cancels_it_cleans_up_and_lets_it_go() {
    let g = Guest::new("sba-del", GuestOpts::default());
    let env = Env::new();
    let (store, metrics) = setup(&env).await;
    let a = agent(&store, &env, metrics).await;
    backup_run(
        &store,
        "br-del",
        &g.name,
        serde_json::json!({"onSnapshot": [{"command": ["sleep", "30"]}]}),
    )
    .await;
    tick_until(&a, &store, "br-del", "the snapshot", |r: &BackupRun| {
        r.status
            .as_ref()
            .is_some_and(|s| s.phase == BackupPhase::Snapshotting && s.snapshot_time.is_some())
    })
    .await;
    store.delete::<BackupRun>(Some(NS), "br-del").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while store
        .get::<BackupRun>(Some(NS), "br-del")
        .await
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "the run was never released");
        a.tick().await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(store
        .events()
        .iter()
        .any(|e| e.name == "br-del" && e.reason == "Interrupted"));
    assert_left_clean(&g, &env, true, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_applies_the_policy_retention_after_a_run_and_marks_pruned_runs_expired() {
    let g = Guest::new("sba-prune", GuestOpts::default());
    let env = Env::new();
    let (store, metrics) = setup(&env).await;
    let mut p = BackupPolicy::new(
        "keep-one",
        serde_json::from_value(serde_json::json!({
            "domainSelector": {"names": [g.name]}, "targetRef": "local",
            "schedule": "@daily", "retention": {"keepLast": 1}
        }))
        .unwrap(),
    );
    p.metadata = meta("keep-one");
    store.create(&p).await.unwrap();
    let a = agent(&store, &env, metrics).await;
    for name in ["br-keep-1", "br-keep-2"] {
        let mut spec = BackupRunSpec::new(&g.name, "local");
        spec.node_name = Some(NODE.into());
        spec.policy_ref = Some("keep-one".into());
        // Every run a full: each one starts a chain, so keepLast 1 removes the older chain.
        spec.type_ = RequestedType::Full;
        let mut r = BackupRun::new(name, spec);
        r.metadata = meta(name);
        store.create(&r).await.unwrap();
        let done: BackupRun = tick_until(&a, &store, name, "the run", |r: &BackupRun| {
            run_phase(r).is_terminal() && !labels::has_finalizer(&r.metadata, labels::RUN_FINALIZER)
        })
        .await;
        let s = done.status.unwrap();
        assert_eq!(s.phase, BackupPhase::Succeeded, "{:?}", s.failure);
        let pruned = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Pruned")
            .expect("retention recorded on the run");
        assert_eq!(pruned.status, "True", "{}", pruned.message);
    }
    let first: BackupRun = store.get(Some(NS), "br-keep-1").await.unwrap().unwrap();
    assert!(
        first
            .status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Expired" && c.status == "True"),
        "the pruned run is marked Expired"
    );
    let second: BackupRun = store.get(Some(NS), "br-keep-2").await.unwrap().unwrap();
    assert!(!second
        .status
        .unwrap()
        .conditions
        .iter()
        .any(|c| c.type_ == "Expired"));
    let listed = env.snapback(&["list", "--domain", &g.name, "--target", &env.target]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(listed.stdout.contains("br-keep-2"), "{}", listed.stdout);
    assert!(!listed.stdout.contains("br-keep-1"), "{}", listed.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_verifies_its_domains_when_the_policy_verify_tick_is_due_and_records_the_verdict()
{
    let g = Guest::new("sba-verify", GuestOpts::default());
    let env = Env::new();
    let (store, metrics) = setup(&env).await;
    let mut p = BackupPolicy::new(
        "nightly",
        serde_json::from_value(serde_json::json!({
            "domainSelector": {"names": [g.name]}, "targetRef": "local",
            "schedule": "0 2 * * *", "verify": {"schedule": "0 3 * * *"},
        }))
        .unwrap(),
    );
    p.metadata = meta("nightly");
    store.create(&p).await.unwrap();
    let mut spec = BackupRunSpec::new(&g.name, "local");
    spec.node_name = Some(NODE.into());
    spec.policy_ref = Some("nightly".into());
    let mut r = BackupRun::new("nightly-1", spec);
    r.metadata = meta("nightly-1");
    store.create(&r).await.unwrap();
    let a = agent(&store, &env, metrics.clone()).await;
    let done: BackupRun = tick_until(&a, &store, "nightly-1", "the run", |r: &BackupRun| {
        run_phase(r).is_terminal() && !labels::has_finalizer(&r.metadata, labels::RUN_FINALIZER)
    })
    .await;
    assert_eq!(run_phase(&done), BackupPhase::Succeeded);
    let finished = done.status.unwrap().completion_time.unwrap();

    // Before the first 03:00 after the run: nothing is due.
    let before = jiff::Timestamp::from_second(finished.as_second() + 1).unwrap();
    if before.strftime("%H").to_string() != "03" {
        a.verify_pass(before).await.unwrap();
        assert_eq!(a.in_flight(), 0, "no verify tick since the run finished");
    }
    // Two days on, a tick has passed: the domain is read back once.
    let later = finished
        .checked_add(jiff::SignedDuration::from_hours(48))
        .unwrap();
    a.verify_pass(later).await.unwrap();
    assert_eq!(a.in_flight(), 1, "one verify for the one domain");
    a.wait_in_flight().await;
    let s = store
        .get::<BackupRun>(Some(NS), "nightly-1")
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
        ("True", "ReadBackOK")
    );
    let tick = s.last_verify_tick.expect("the tick answered");
    assert!(tick <= later && tick > finished, "{tick}");
    a.verify_pass(later).await.unwrap();
    assert_eq!(a.in_flight(), 0, "the tick is answered once");
    let text = metrics.encode();
    assert!(
        text.contains("snapback_verified_points_total{result=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "snapback_verify_broken_points{{policy=\"nightly\",domain=\"{}\"}} 0",
            g.name
        )),
        "{text}"
    );
    assert!(std::fs::read_dir(env.state.join("verify-work"))
        .map(|d| d.count() == 0)
        .unwrap_or(true));
}

/// One run per guest, all there at the agent's first look: after that look, `started` are
/// in flight and the rest wait with `reason` (the look considers them one after another
/// and counts a started run until the next look, so this holds whatever the runs' speed).
/// The started runs are then let finish with no look in between: the waiting ones are still
/// Pending. Then every run finishes on later looks. Returns the runs at the end.
async fn limited_night(
    guests: &[Guest],
    limits: Limits,
    started: usize,
    reason: &str,
) -> Vec<BackupRun> {
    let env = Env::new();
    let (store, metrics) = setup(&env).await;
    let a = agent_limited(&store, &env, metrics, limits).await;
    let names: Vec<String> = (0..guests.len()).map(|i| format!("night-{i}")).collect();
    for (n, g) in names.iter().zip(guests) {
        backup_run(&store, n, &g.name, serde_json::json!({})).await;
    }

    a.tick().await.unwrap();
    assert_eq!(a.in_flight(), started);
    let mut waiting = Vec::new();
    for n in &names {
        let r: BackupRun = store.get(Some(NS), n).await.unwrap().unwrap();
        if admitted(&r) == Some(("False".into(), reason.into())) {
            assert_eq!(run_phase(&r), BackupPhase::Pending);
            assert!(!labels::has_finalizer(&r.metadata, labels::RUN_FINALIZER));
            waiting.push(n.clone());
        }
    }
    assert_eq!(waiting.len(), guests.len() - started, "{reason}");

    a.wait_in_flight().await;
    for n in &waiting {
        let r: BackupRun = store.get(Some(NS), n).await.unwrap().unwrap();
        assert_eq!(run_phase(&r), BackupPhase::Pending, "{n} waits for a look");
    }
    let mut runs = Vec::new();
    for n in &names {
        runs.push(
            tick_until(&a, &store, n, "every run to finish", |r: &BackupRun| {
                run_phase(r).is_terminal()
                    && !labels::has_finalizer(&r.metadata, labels::RUN_FINALIZER)
            })
            .await,
        );
    }
    for r in &runs {
        let s = r.status.as_ref().unwrap();
        assert_eq!(s.phase, BackupPhase::Succeeded, "{:?}", s.failure);
        assert_eq!(admitted(r), Some(("True".into(), "Admitted".into())));
    }
    assert!(env.staging_files().is_empty(), "{:?}", env.staging_files());
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_starts_at_most_its_limit_of_runs_and_the_others_wait_for_a_slot() {
    let guests: Vec<Guest> = (0..3)
        .map(|_| Guest::new("sba-slots", GuestOpts::default()))
        .collect();
    let limits = Limits {
        max_runs: 2,
        staging_budget: None,
    };
    let runs = limited_night(&guests, limits, 2, "WaitingForSlot").await;
    assert_eq!(most_at_once(&runs), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_would_not_fit_the_agents_staging_budget_waits_and_starts_when_space_frees() {
    // 32 MiB of data in each disk: a budget of about one export's need.
    let opts = GuestOpts {
        prefill_mib: 32,
        ..GuestOpts::default()
    };
    let guests: Vec<Guest> = (0..2)
        .map(|_| Guest::new("sba-budget", opts.clone()))
        .collect();
    let limits = Limits {
        max_runs: 4,
        staging_budget: Some(budget_for_one(&guests)),
    };
    let runs = limited_night(&guests, limits, 1, "WaitingForStaging").await;
    assert_eq!(most_at_once(&runs), 1);
}
