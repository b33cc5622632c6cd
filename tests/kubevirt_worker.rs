//! The real `snapback kubevirt-worker` process over HTTP against the stand-in apiserver, with
//! the chart's RBAC for its ServiceAccount, and the fake KubeVirt (tests/kubevirt_fake)
//! taking each VirtualMachineBackup as a real libvirt push backup of the test guest. It is
//! killed with SIGKILL mid-run and the next worker finishes the run; every grant the chart
//! gives it is used.

mod apiserver;
mod common;
mod kubevirt_fake;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::ApiServer;
use common::*;
use kubevirt_fake::*;
use serde_json::{json, Value};

const RELEASE_NS: &str = "snapback-system";
const NS: &str = "vms";
const SA: &str = "snapback-kubevirt-worker";
const PASSPHRASE: &str = "correct horse battery staple";

/// Dropped in this order: the fake (its jobs and servers), the stand-in, then the guest.
struct World {
    fake: KubevirtFake,
    api: ApiServer,
    guest: Guest,
    env: Env,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The worker process as its Deployment runs it, with its ServiceAccount's token.
fn worker(w: &World, pod: &str, crash_at: Option<&str>) -> Child {
    let token = w.api.token_for(RELEASE_NS, SA);
    let kubeconfig = w.env.dir.join(format!("kubeconfig-{pod}"));
    w.api.kubeconfig(&token, &kubeconfig);
    let log = std::fs::File::create(w.env.dir.join(format!("{pod}.log"))).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snapback"));
    cmd.args(["kubevirt-worker", "--poll", "1"])
        .arg(format!("--state-dir={}", w.env.state.display()))
        .arg(format!("--listen=127.0.0.1:{}", free_port()))
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", pod)
        .env("POD_NAMESPACE", RELEASE_NS)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(point) = crash_at {
        cmd.env("SNAPBACK_CRASH_AT", point);
    }
    cmd.spawn().expect("start the worker")
}

fn log_of(w: &World, pod: &str) -> String {
    std::fs::read_to_string(w.env.dir.join(format!("{pod}.log"))).unwrap_or_default()
}

fn run_doc(name: &str) -> Value {
    json!({
        "apiVersion": "snapback.dev/v1alpha1", "kind": "BackupRun",
        "metadata": {"name": name, "namespace": NS, "labels": {"snapback.dev/kubevirt": "true"}},
        "spec": {"domain": format!("{NS}/web"), "targetRef": "local", "policyRef": "vms",
                 "virtualMachine": {"namespace": NS, "name": "web"}},
    })
}

fn run_of(w: &World, name: &str) -> Value {
    w.api
        .get("snapback.dev/v1alpha1/BackupRun", NS, name)
        .unwrap_or(Value::Null)
}

fn wait_until<T>(what: &str, secs: u64, logs: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A run that ended and whose finalizer is gone (the worker let go of it).
fn finished(w: &World, name: &str, pod: &str) -> Value {
    wait_until(&format!("{name} to finish"), 300, &log_of(w, pod), || {
        let r = run_of(w, name);
        let phase = r["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let released = r["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
        (["Succeeded", "Failed"].contains(&phase.as_str()) && released).then_some(r)
    })
}

fn leftovers(w: &World) -> Vec<String> {
    w.fake.made_by_runs(NS)
}

/// The worker died by SIGKILL at its crash point (within a bound: a worker that never gets
/// there fails the test instead of hanging it).
fn killed_at_crash_point(w: &World, mut c: Child, pod: &str) {
    let st = wait_until(
        "the worker to reach its crash point",
        300,
        &log_of(w, pod),
        || c.try_wait().unwrap(),
    );
    assert_eq!(st.code(), None, "killed by SIGKILL: {}", log_of(w, pod));
}

/// A grant the worker needs for restores only.
fn restore_grant(g: &str) -> bool {
    let (verb, resource) = g.split_once(' ').unwrap_or((g, ""));
    resource.contains("restorerequests")
        || resource.starts_with("cdi.kubevirt.io/")
        || resource.starts_with("upload.cdi.kubevirt.io/")
        || (resource == "kubevirt.io/virtualmachines" && verb != "get")
        || (resource == "backup.kubevirt.io/virtualmachinebackuptrackers"
            && ["list", "delete"].contains(&verb))
}

fn stop(mut c: Child) {
    // SIGTERM: the worker stops as its Deployment's pod would.
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let _ = c.wait();
}

/// The chart's objects, the target with its passphrase Secret, and the policy, for a guest
/// `name` (with a guest agent or not) that the fake presents as the VM `vms/web`.
fn world(name: &str, agent_channel: bool) -> World {
    let guest = Guest::new(
        name,
        GuestOpts {
            disk_mib: 128,
            prefill_mib: 32,
            agent_channel,
            ..Default::default()
        },
    );
    let api = ApiServer::start();
    let fake = KubevirtFake::start(&api);
    fake.add_vm(NS, "web", &guest.name, &[("changedBlockTracking", "true")]);
    let w = World {
        fake,
        api,
        guest,
        env: Env::new(),
    };
    // The target's passphrase Secret lives beside it; the chart grants reading Secrets in
    // the namespaces it is told of.
    let docs = apiserver::render_chart(
        &test_tool("helm"),
        RELEASE_NS,
        &["kubevirt.enabled=true", "rbac.secretNamespaces={vms}"],
    );
    w.api.create_all(&docs);
    w.api.create_all(&[
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "offsite-key", "namespace": NS},
               "stringData": {"passphrase": PASSPHRASE}}),
        json!({"apiVersion": "snapback.dev/v1alpha1", "kind": "BackupTarget",
               "metadata": {"name": "local", "namespace": NS},
               "spec": {"url": w.env.target, "encryption": {"mode": "Symmetric",
                        "passphrase": {"secretKeyRef": {"name": "offsite-key", "key": "passphrase"}}}}}),
        json!({"apiVersion": "snapback.dev/v1alpha1", "kind": "BackupPolicy",
               "metadata": {"name": "vms", "namespace": NS},
               "spec": {"virtualMachineSelector": {"names": ["web"]}, "targetRef": "local",
                        "schedule": "0 0 1 1 *", "retention": {"keepLast": 50}}}),
    ]);
    w
}

/// `snapback verify --all` of the VM's chain, with the target's passphrase.
fn verify_all(w: &World) -> SnapOut {
    let key_file = w.env.dir.join("passphrase");
    std::fs::write(&key_file, PASSPHRASE).unwrap();
    w.env.verify(
        &format!("{NS}/web"),
        &[
            "--all",
            "--encrypt-passphrase-file",
            key_file.to_str().unwrap(),
        ],
    )
}

#[test]
fn the_worker_backs_up_a_kubevirt_vm_over_the_api_survives_a_kill_mid_run_and_uses_every_grant() {
    let w = world("kvwk", true);
    w.api.create_all(&[run_doc("web-1")]);
    let passphrase = PASSPHRASE;

    let first = worker(&w, "worker-a", None);
    let r = finished(&w, "web-1", "worker-a");
    assert_eq!(
        r["status"]["phase"],
        "Succeeded",
        "{r:#}\n{}",
        log_of(&w, "worker-a")
    );
    assert_eq!(r["status"]["type"], "Full");
    assert_eq!(leftovers(&w), Vec::<String>::new());
    stop(first);

    // SIGKILL once the export of the second run is served, before its files are fetched.
    w.guest.wait_for_writes(w.guest.writes() + 10);
    w.api.create_all(&[run_doc("web-2")]);
    let doomed = worker(&w, "worker-b", Some("kubevirt:export-served"));
    killed_at_crash_point(&w, doomed, "worker-b");
    let mid = run_of(&w, "web-2");
    assert_eq!(mid["status"]["phase"], "Exporting", "{mid:#}");
    // The next worker finishes it: the export is made again with a new token, the files
    // fetched, the chain continued.
    let next = worker(&w, "worker-c", None);
    let r = finished(&w, "web-2", "worker-c");
    assert_eq!(
        r["status"]["phase"],
        "Succeeded",
        "{r:#}\n{}",
        log_of(&w, "worker-c")
    );
    assert_eq!(r["status"]["type"], "Incremental");
    assert_eq!(leftovers(&w), Vec::<String>::new());
    stop(next);

    // SIGKILL right after KubeVirt's backup was created, before the run recorded it: the
    // next worker adopts that backup (and the checkpoint KubeVirt named) instead of failing
    // on a tracker that already moved on, or taking a second one.
    w.guest.wait_for_writes(w.guest.writes() + 10);
    w.api.create_all(&[run_doc("web-3")]);
    let doomed = worker(&w, "worker-d", Some("backup:snapshotting:job-begun"));
    killed_at_crash_point(&w, doomed, "worker-d");
    let next = worker(&w, "worker-e", None);
    let r = finished(&w, "web-3", "worker-e");
    assert_eq!(
        r["status"]["phase"],
        "Succeeded",
        "{r:#}\n{}",
        log_of(&w, "worker-e")
    );
    assert_eq!(r["status"]["type"], "Incremental");
    let cp = r["status"]["checkpoint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let tracker = w.api.list(TRACKER, Some(NS)).remove(0);
    assert_eq!(tracker["status"]["latestCheckpoint"]["name"], cp.as_str());
    assert_eq!(leftovers(&w), Vec::<String>::new());
    stop(next);
    assert!(w.env.staging_files().is_empty());
    let v = verify_all(&w);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);

    // Every grant the chart gives the worker is used by some request.
    let mut unused: Vec<String> = w
        .api
        .unused_grants(&format!("system:serviceaccount:{RELEASE_NS}:{SA}"))
        .iter()
        .map(|g| g.split(": ").nth(1).unwrap_or(g).to_string())
        // kube's recorder patches an Event only when the same one repeats.
        .filter(|g| g != "patch events.k8s.io/events")
        // The restores' grants are used by tests/kubevirt_restore.rs.
        .filter(|g| !restore_grant(g))
        .collect();
    unused.sort();
    assert_eq!(unused, Vec::<String>::new());
    // The worker never read a Secret it created (the export tokens): only the passphrase.
    let read: Vec<String> = w
        .api
        .audit()
        .into_iter()
        .filter(|a| a.user.ends_with(SA) && a.resource == "secrets" && a.verb == "get")
        .map(|a| a.name)
        .collect();
    assert!(read.iter().all(|n| n == "offsite-key"), "{read:?}");
    for pod in ["worker-a", "worker-b", "worker-c", "worker-d", "worker-e"] {
        assert!(
            !log_of(&w, pod).contains(passphrase),
            "the passphrase in {pod}'s log"
        );
    }
}

/// Where the crash test kills the worker: as each phase of a KubeVirt backup is recorded,
/// and before success is. tests/crash_campaign.rs lists these in docs/reliability.md (and
/// checks that each is here); `backup:snapshotting:job-begun` and `kubevirt:export-served`
/// are hit by the test above.
const PHASE_CRASHES: &[&str] = &[
    "backup:Preparing",
    "backup:Snapshotting",
    "backup:Exporting",
    "backup:Uploading",
    "backup:Finalizing",
    "backup:before:Succeeded",
];

#[test]
fn a_worker_killed_in_any_phase_of_a_kubevirt_backup_is_followed_by_one_that_finishes_it_once() {
    let w = world("kvwc", true);
    w.api.create_all(&[run_doc("web-0")]);
    let first = worker(&w, "full", None);
    let r = finished(&w, "web-0", "full");
    stop(first);
    assert_eq!(r["status"]["phase"], "Succeeded", "{r:#}");
    let mut parent = r["status"]["checkpoint"].as_str().unwrap().to_string();
    for (i, point) in PHASE_CRASHES.iter().enumerate() {
        let run = format!("web-{}", i + 1);
        w.guest.wait_for_writes(w.guest.writes() + 4);
        let had = w.fake.domain_checkpoints(NS, "web");
        w.api.create_all(&[run_doc(&run)]);
        let doomed = format!("doomed-{i}");
        killed_at_crash_point(&w, worker(&w, &doomed, Some(point)), &doomed);
        // The phase was recorded before the kill (the one before it, for a `before:` point).
        let want = match point.rsplit_once(':') {
            Some((_, "Succeeded")) => "Finalizing",
            Some((_, phase)) => phase,
            None => unreachable!(),
        };
        let mid = run_of(&w, &run);
        assert_eq!(mid["status"]["phase"], want, "{point}: {mid:#}");

        let pod = format!("next-{i}");
        let next = worker(&w, &pod, None);
        let r = finished(&w, &run, &pod);
        stop(next);
        let s = &r["status"];
        assert_eq!(
            s["phase"],
            "Succeeded",
            "{point}: {r:#}\n{}",
            log_of(&w, &pod)
        );
        assert_eq!(s["type"], "Incremental", "{point}");
        // KubeVirt took one backup for the run: it follows the previous run's checkpoint, the
        // tracker holds its checkpoint, and the domain gained that checkpoint only.
        assert_eq!(s["parentCheckpoint"], parent.as_str(), "{point}");
        let cp = s["checkpoint"].as_str().unwrap().to_string();
        let tracker = w.api.list(TRACKER, Some(NS)).remove(0);
        assert_eq!(
            tracker["status"]["latestCheckpoint"]["name"],
            cp.as_str(),
            "{point}"
        );
        let mut gained = w.fake.domain_checkpoints(NS, "web");
        gained.retain(|c| !had.contains(c));
        assert_eq!(gained, vec![cp.clone()], "{point}");
        assert_eq!(leftovers(&w), Vec::<String>::new(), "{point}");
        assert!(w.env.staging_files().is_empty(), "{point}");
        parent = cp;
    }
    // Every point of the chain reads back intact.
    let v = verify_all(&w);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    // A header, then a line for each point: the full and one per crash.
    assert_eq!(
        v.stdout.lines().count(),
        PHASE_CRASHES.len() + 2,
        "{}",
        v.stdout
    );
}

#[test]
fn a_kubevirt_vm_without_a_guest_agent_is_backed_up_unfrozen_and_a_run_that_requires_freezing_fails_clean(
) {
    let w = world("kvwq", false);
    w.api.create_all(&[run_doc("web-1")]);
    let pod = "worker";
    let wk = worker(&w, pod, None);
    // KubeVirt cannot freeze the guest, completes with a warning, and the run takes the
    // crash-consistent point, saying why it is not frozen.
    let r = finished(&w, "web-1", pod);
    let s = &r["status"];
    assert_eq!(s["phase"], "Succeeded", "{r:#}\n{}", log_of(&w, pod));
    assert_eq!(s["quiesced"], false, "{r:#}");
    let quiesced = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Quiesced")
        .cloned()
        .unwrap_or_else(|| panic!("no Quiesced condition: {r:#}"));
    assert_eq!(quiesced["status"], "False", "{quiesced:#}");
    assert_eq!(quiesced["reason"], "GuestAgentUnavailable", "{quiesced:#}");
    assert!(
        quiesced["message"]
            .as_str()
            .unwrap()
            .contains("could not freeze"),
        "{quiesced:#}"
    );

    // quiesce: Required refuses that point: the run fails QuiesceFailed, and nothing of it
    // is left in the cluster, in staging or on the target.
    let mut required = run_doc("web-2");
    required["spec"]["consistency"] = json!({"quiesce": "Required"});
    w.guest.wait_for_writes(w.guest.writes() + 4);
    w.api.create_all(&[required]);
    let r = finished(&w, "web-2", pod);
    stop(wk);
    assert_eq!(r["status"]["phase"], "Failed", "{r:#}");
    assert_eq!(r["status"]["failure"]["reason"], "QuiesceFailed", "{r:#}");
    assert_eq!(leftovers(&w), Vec::<String>::new());
    assert!(w.env.staging_files().is_empty());
    let v = verify_all(&w);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    // A header, then a line for the one point (the first).
    assert_eq!(v.stdout.lines().count(), 2, "{}", v.stdout);
}
