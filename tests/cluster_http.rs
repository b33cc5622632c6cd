//! The Kubernetes face over HTTP: snapback's KubeStore, the real `snapback controller` and
//! `snapback agent` processes and kubectl, against the apiserver stand-in (tests/apiserver),
//! with RBAC from the chart as `helm template` renders it, and a real libvirt node.

mod apiserver;
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::{yaml_docs, ApiServer, Fault};
use common::*;
use serde_json::{json, Value};
use snapback::api::{BackupRun, BackupTarget};
use snapback::cluster::kube_api::KubeStore;
use snapback::cluster::{ApiErrorKind, Store};

const RELEASE_NS: &str = "snapback-system";
const NODE: &str = "node-1";

/// The chart's CRDs and RBAC, created in the stand-in.
fn install_chart(srv: &ApiServer) -> Vec<Value> {
    let docs = apiserver::render_chart(&test_tool("helm"), RELEASE_NS, &[]);
    srv.create_all(&docs);
    docs
}

fn target(name: &str, ns: &str, url: &str) -> BackupTarget {
    let mut t = BackupTarget::new(name, serde_json::from_value(json!({ "url": url })).unwrap());
    t.metadata.namespace = Some(ns.into());
    t
}

#[tokio::test]
async fn the_stand_in_keeps_status_apart_and_refuses_stale_and_unversioned_writes() {
    let srv = ApiServer::start();
    install_chart(&srv);
    let dir = tempfile::tempdir().unwrap();
    let admin = srv.store_as(dir.path(), "admin-token", "test").await;

    let mut t = target("local", "default", "file:///srv/b");
    t.status = Some(serde_json::from_value(json!({"observedGeneration": 7})).unwrap());
    let created = admin.create(&t).await.unwrap();
    assert!(created.status.is_none(), "status is dropped on create");

    let mut stale = created.clone();
    let mut fresh = created.clone();
    fresh.spec.url = "file:///srv/c".into();
    let fresh = admin.replace(&fresh).await.unwrap();
    assert_eq!(fresh.metadata.generation, Some(2));
    stale.spec.url = "file:///srv/d".into();
    let e = admin.replace(&stale).await.unwrap_err();
    assert!(e.is(ApiErrorKind::Conflict), "{e}");

    let mut unversioned = fresh.clone();
    unversioned.metadata.resource_version = None;
    let e = admin.replace(&unversioned).await.unwrap_err();
    assert!(e.is(ApiErrorKind::Invalid), "{e}");

    let mut with_status = fresh.clone();
    with_status.status = Some(serde_json::from_value(json!({"observedGeneration": 2})).unwrap());
    let after = admin.replace_status(&with_status).await.unwrap();
    assert_eq!(after.status.unwrap().observed_generation, Some(2));
    let mut spec_write = after_spec(&admin).await;
    spec_write.status = None;
    let kept = admin.replace(&spec_write).await.unwrap();
    assert!(kept.status.is_some(), "a spec write leaves status alone");
}

async fn after_spec(admin: &KubeStore) -> BackupTarget {
    admin
        .get::<BackupTarget>(Some("default"), "local")
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn server_side_apply_of_status_removes_what_the_manager_left_out_and_conflicts_without_force()
{
    let srv = ApiServer::start();
    install_chart(&srv);
    let dir = tempfile::tempdir().unwrap();
    let admin = srv.store_as(dir.path(), "admin-token", "test").await;
    let mut r = BackupRun::new("r1", snapback::api::BackupRunSpec::new("web", "local"));
    r.metadata.namespace = Some("default".into());
    admin.create(&r).await.unwrap();
    r.status =
        Some(serde_json::from_value(json!({"phase": "Exporting", "domainName": "half"})).unwrap());
    admin.apply_status(&r, "agent").await.unwrap();
    r.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
    let after = admin.apply_status(&r, "agent").await.unwrap();
    let s = after.status.unwrap();
    assert_eq!(s.phase, snapback::api::BackupPhase::Succeeded);
    assert_eq!(
        s.domain_name, None,
        "the field the manager stopped applying is gone"
    );

    // Another manager applying a different phase without force conflicts (over raw HTTP).
    let (code, text) = srv.raw_request(
        "PATCH",
        "/apis/snapback.dev/v1alpha1/namespaces/default/backupruns/r1/status?fieldManager=other",
        "application/apply-patch+yaml",
        r#"{"apiVersion":"snapback.dev/v1alpha1","kind":"BackupRun","status":{"phase":"Failed"}}"#,
        Duration::from_secs(20),
    );
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("owned by agent"), "{text}");
}

#[tokio::test]
async fn lists_page_with_limit_and_continue_and_select_by_label() {
    let srv = ApiServer::start();
    install_chart(&srv);
    let dir = tempfile::tempdir().unwrap();
    let admin = srv.store_as(dir.path(), "admin-token", "test").await;
    for i in 0..7 {
        let mut r = BackupRun::new(
            &format!("r{i}"),
            snapback::api::BackupRunSpec::new("web", "t"),
        );
        r.metadata.namespace = Some("default".into());
        let parity = if i % 2 == 0 { "even" } else { "odd" };
        r.metadata.labels = Some([("parity".to_string(), parity.to_string())].into());
        admin.create(&r).await.unwrap();
    }
    let client = admin.client().clone();
    let api: kube::Api<BackupRun> = kube::Api::namespaced(client, "default");
    let mut names = Vec::new();
    let mut lp = kube::api::ListParams::default().limit(3);
    let mut pages = 0;
    loop {
        let page = api.list(&lp).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|r| r.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["r0", "r1", "r2", "r3", "r4", "r5", "r6"]);
    let odd: Vec<BackupRun> = admin
        .list(Some("default"), &[("parity", "odd")])
        .await
        .unwrap();
    assert_eq!(odd.len(), 3);
}

#[tokio::test]
async fn the_charts_rbac_forbids_the_controller_secrets_and_injected_faults_reach_the_client() {
    let srv = ApiServer::start();
    install_chart(&srv);
    let dir = tempfile::tempdir().unwrap();
    let token = srv.token_for(RELEASE_NS, "snapback-controller");
    let controller = srv.store_as(dir.path(), &token, "controller").await;
    let e = controller
        .get::<k8s_openapi::api::core::v1::Secret>(Some(RELEASE_NS), "x")
        .await
        .unwrap_err();
    assert!(e.is(ApiErrorKind::Forbidden), "{e}");
    let runs: Vec<BackupRun> = controller.list(None, &[]).await.unwrap();
    assert!(runs.is_empty());

    srv.inject(Fault {
        verb: "list".into(),
        resource: "backupruns".into(),
        code: 503,
        retry_after: None,
        times: 1,
    });
    let e = controller.list::<BackupRun>(None, &[]).await;
    let after: Vec<BackupRun> = controller.list(None, &[]).await.unwrap();
    assert!(after.is_empty(), "the fault was used up");
    if let Err(e) = e {
        assert!(e.is(ApiErrorKind::Unavailable), "{e}");
    }
    let codes: Vec<u16> = srv
        .audit()
        .iter()
        .filter(|a| a.resource == "backupruns")
        .map(|a| a.code)
        .collect();
    assert!(codes.contains(&503), "{codes:?}");
}

/// A process of the chart's Deployment or DaemonSet, run here with the chart's own arguments,
/// except the addresses and paths that belong to this machine.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn stop(&mut self) -> String {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        self.log()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.name).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn chart_args(docs: &[Value], kind: &str) -> Vec<String> {
    let d = docs
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("the chart renders a {kind}"));
    d["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[allow(clippy::too_many_arguments)]
fn start_proc(
    srv: &ApiServer,
    dir: &Path,
    sa: &str,
    pod: &str,
    mut args: Vec<String>,
    replace: &[(&str, String)],
    extra_env: &[(&str, String)],
) -> Proc {
    for (flag, value) in replace {
        args.retain(|a| !a.starts_with(&format!("{flag}=")));
        args.push(format!("{flag}={value}"));
    }
    let token = srv.token_for(RELEASE_NS, sa);
    let kubeconfig = dir.join(format!("kubeconfig-{pod}"));
    srv.kubeconfig(&token, &kubeconfig);
    let log = dir.join(format!("{pod}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_snapback"))
        .args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", pod)
        .env("POD_NAMESPACE", RELEASE_NS)
        .env("RUST_LOG", "info")
        .envs(extra_env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start snapback");
    Proc {
        child,
        name: log.display().to_string(),
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> Option<Value>) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn example(name: &str) -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
    .unwrap();
    yaml_docs(&text).remove(0)
}

fn phase(v: &Value) -> &str {
    v["status"]["phase"].as_str().unwrap_or_default()
}

#[test]
fn the_real_controller_and_agent_back_up_and_restore_a_vm_through_the_api_and_kubectl_shows_the_runs(
) {
    let env = Env::new();
    let g = Guest::new("http", GuestOpts::default());
    let srv = ApiServer::start();
    let docs = install_chart(&srv);
    let node = json!({"apiVersion": "v1", "kind": "Node",
                      "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}});
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "backup-passphrase", "namespace": RELEASE_NS},
        "stringData": {"passphrase": "correct horse battery staple"}});
    srv.create_all(&[node, secret]);

    let mut t = example("target-file.yaml");
    t["metadata"]["namespace"] = json!(RELEASE_NS);
    t["spec"]["url"] = json!(env.target);
    t["spec"]["encryption"]["passphrase"] =
        json!({"secretKeyRef": {"name": "backup-passphrase", "key": "passphrase"}});
    let mut p = example("policy-nightly-gfs.yaml");
    p["metadata"]["namespace"] = json!(RELEASE_NS);
    p["spec"]["domainSelector"] = json!({"names": [g.name]});
    // Every minute, so the test does not wait for 02:00; hooks need a guest command.
    p["spec"]["schedule"] = json!("* * * * *");
    p["spec"].as_object_mut().unwrap().remove("hooks");
    srv.create_all(&[t, p]);

    let dir = env.dir.join("cluster");
    std::fs::create_dir_all(&dir).unwrap();
    let controller_args = chart_args(&docs, "Deployment");
    let agent_args = chart_args(&docs, "DaemonSet");
    let mut controllers: Vec<Proc> = (0..2)
        .map(|i| {
            start_proc(
                &srv,
                &dir,
                "snapback-controller",
                &format!("controller-{i}"),
                controller_args.clone(),
                &[
                    ("--interval", "1".into()),
                    ("--listen", format!("127.0.0.1:{}", free_port())),
                ],
                &[],
            )
        })
        .collect();
    // A poll of an hour: the agent can only start a run because its watch saw it.
    let agent_flags = [
        ("--poll", "3600".to_string()),
        ("--connect", connect_uri()),
        ("--state-dir", env.state.display().to_string()),
        ("--listen", format!("127.0.0.1:{}", free_port())),
    ];
    // The first agent is killed (SIGKILL) in the middle of the upload; its successor on the
    // node resumes the run from the status the first one recorded through the API.
    let mut first = start_proc(
        &srv,
        &dir,
        "snapback-agent",
        "agent-0",
        agent_args.clone(),
        &agent_flags,
        &[
            ("NODE_NAME", NODE.to_string()),
            ("SNAPBACK_CRASH_AT", "backup:uploading:partial".to_string()),
        ],
    );
    let died = wait_for(
        "the first agent to die mid-upload",
        Duration::from_secs(420),
        || {
            first
                .child
                .try_wait()
                .unwrap()
                .map(|s| json!(std::os::unix::process::ExitStatusExt::signal(&s)))
        },
    );
    assert_eq!(died, json!(libc::SIGKILL), "{}", first.log());
    let runs = srv.list("snapback.dev/v1alpha1/BackupRun", Some(RELEASE_NS));
    let cut: Vec<&Value> = runs.iter().filter(|r| phase(r) != "Pending").collect();
    assert_eq!(cut.len(), 1, "one run was started: {runs:#?}");
    assert_eq!(phase(cut[0]), "Uploading", "{}", cut[0]["status"]);
    let cut_name = cut[0]["metadata"]["name"].as_str().unwrap().to_string();
    // The API misbehaves for the agent that resumes: its first status writes meet a 503, a
    // 429 asking for a second's wait and a connection dropped mid-answer; retried, the run
    // still ends well.
    for (code, retry_after) in [(503, None), (429, Some(1)), (0, None)] {
        srv.inject(Fault {
            verb: "patch".into(),
            resource: "backupruns/status".into(),
            code,
            retry_after,
            times: 1,
        });
    }
    let mut agent = start_proc(
        &srv,
        &dir,
        "snapback-agent",
        "agent-1",
        agent_args,
        &agent_flags,
        &[("NODE_NAME", NODE.to_string())],
    );

    let run = wait_for(
        "the resumed run to succeed",
        Duration::from_secs(420),
        || {
            let r = srv.get("snapback.dev/v1alpha1/BackupRun", RELEASE_NS, &cut_name)?;
            if phase(&r) == "Failed" {
                panic!("run failed: {}\n{}", r["status"], agent.log());
            }
            (phase(&r) == "Succeeded").then_some(r)
        },
    );
    let run_name = run["metadata"]["name"].as_str().unwrap().to_string();
    let faulted: Vec<u16> = srv
        .audit()
        .iter()
        .filter(|a| a.resource == "backupruns/status" && a.user.ends_with(":snapback-agent"))
        .map(|a| a.code)
        .filter(|c| *c != 200)
        .collect();
    assert_eq!(faulted, [503, 429, 0], "the faults were met");

    let mut rr = example("restore-new-vm.yaml");
    let new_name = format!("{}-restored", g.name);
    let _defined = Defined(new_name.clone());
    let storage = env.dir.join("restored");
    std::fs::create_dir_all(&storage).unwrap();
    rr["metadata"]["namespace"] = json!(RELEASE_NS);
    rr["spec"]["domain"] = json!(g.name);
    rr["spec"]["newName"] = json!(new_name);
    rr["spec"]["storageDir"] = json!(storage.display().to_string());
    rr["spec"]["start"] = json!(false);
    rr["spec"].as_object_mut().unwrap().remove("at");
    srv.create_all(&[rr]);
    let restored = wait_for("the restore to end", Duration::from_secs(300), || {
        srv.get(
            "snapback.dev/v1alpha1/RestoreRequest",
            RELEASE_NS,
            "web1-yesterday",
        )
        .filter(|r| matches!(phase(r), "Succeeded" | "Failed"))
    });
    assert_eq!(
        phase(&restored),
        "Succeeded",
        "{}\n{}",
        restored["status"],
        agent.log()
    );
    assert!(virsh_ok(&["list", "--all", "--name"]).contains(&new_name));

    // kubectl sends no token over plain HTTP: it is anonymous, allowed to read runs only.
    srv.create_all(&[
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "read-runs"},
               "rules": [{"apiGroups": ["snapback.dev"], "resources": ["backupruns"], "verbs": ["list"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "read-runs"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "read-runs"},
               "subjects": [{"kind": "User", "name": apiserver::ANONYMOUS}]}),
    ]);
    let kubeconfig = dir.join("kubeconfig-kubectl");
    srv.kubeconfig("", &kubeconfig);
    let out = Command::new(test_tool("kubectl"))
        .args(["get", "backupruns", "-n", RELEASE_NS, "--cache-dir"])
        .arg(dir.join("kube-cache"))
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = table
        .lines()
        .find(|l| l.starts_with(&run_name))
        .unwrap_or_else(|| panic!("kubectl shows {run_name}:\n{table}"));
    assert!(line.contains("Succeeded"), "{table}");

    // How long from the run's creation to the agent's first status write, by the stand-in's
    // clock (reported, not asserted: it depends on the machine).
    let audit = srv.audit();
    let created = audit
        .iter()
        .find(|a| a.verb == "create" && a.resource == "backupruns" && a.code == 201)
        .map(|a| a.at);
    let started = audit
        .iter()
        .find(|a| a.resource == "backupruns/status" && a.user.ends_with(":snapback-agent"))
        .map(|a| a.at);
    if let (Some(c), Some(s)) = (created, started) {
        eprintln!(
            "a new run was taken by the agent {:?} after its creation",
            s - c
        );
    }
    let agent_log = agent.stop();
    for c in controllers.iter_mut() {
        c.stop();
    }
    // Every grant of the chart is used by some request; the ones this run has no reason to
    // make are named here, each with the code path that needs it.
    let unused = |sa: &str| -> Vec<String> {
        let mut v: Vec<String> = srv
            .unused_grants(&format!("system:serviceaccount:{RELEASE_NS}:{sa}"))
            .iter()
            .map(|g| g.split(": ").nth(1).unwrap_or(g).to_string())
            // kube's recorder patches an Event only when the same one repeats.
            .filter(|g| g != "patch events.k8s.io/events")
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        unused("snapback-controller"),
        [
            // history limits and concurrencyPolicy Replace (tests/controller.rs)
            "delete snapback.dev/backupruns",
            // AgentHeartbeatStale on a run whose agent went silent (tests/controller.rs)
            "update snapback.dev/backupruns/status",
        ],
        "grants of the controller no request used"
    );
    assert_eq!(
        unused("snapback-agent"),
        Vec::<String>::new(),
        "grants of the agent no request used"
    );
    let forbidden: Vec<String> = srv
        .audit()
        .iter()
        .filter(|a| a.code == 403)
        .map(|a| {
            format!(
                "{} {} {} {}/{}",
                a.user, a.verb, a.resource, a.namespace, a.name
            )
        })
        .collect();
    assert!(
        forbidden.is_empty(),
        "requests the chart's RBAC refused: {forbidden:#?}\n{agent_log}"
    );
}

#[tokio::test]
async fn a_kube_runtime_watcher_sees_changes_and_a_too_old_resource_version_is_gone() {
    use futures::{StreamExt, TryStreamExt};
    use kube::runtime::watcher;
    let srv = ApiServer::start();
    install_chart(&srv);
    let dir = tempfile::tempdir().unwrap();
    let admin = srv.store_as(dir.path(), "admin-token", "test").await;
    let api: kube::Api<BackupRun> = kube::Api::namespaced(admin.client().clone(), "default");
    let mut events = watcher(api, watcher::Config::default().labels("node=n1")).boxed();
    let mut mine = BackupRun::new("mine", snapback::api::BackupRunSpec::new("web", "t"));
    mine.metadata.namespace = Some("default".into());
    mine.metadata.labels = Some([("node".to_string(), "n1".to_string())].into());
    let mut other = mine.clone();
    other.metadata.name = Some("other".into());
    other.metadata.labels = Some([("node".to_string(), "n2".to_string())].into());
    admin.create(&other).await.unwrap();
    admin.create(&mine).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) =
                events.try_next().await.unwrap()
            {
                return r.metadata.name.unwrap();
            }
        }
    })
    .await
    .expect("the watcher saw the run");
    assert_eq!(seen, "mine", "the label selector holds on the watch");

    // Past the changes the store keeps, a watch from an old resourceVersion ends with 410.
    for i in 0..4200 {
        let v = json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": format!("c{i}"), "namespace": "default"}});
        srv.shared
            .store
            .raw_create("v1/ConfigMap", v, false)
            .unwrap();
    }
    let (_, text) = srv.raw_request(
        "GET",
        "/apis/snapback.dev/v1alpha1/namespaces/default/backupruns?watch=true&resourceVersion=1",
        "application/json",
        "",
        Duration::from_secs(20),
    );
    assert!(
        text.contains(r#""type":"ERROR""#) && text.contains(r#""code":410"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_request_that_hangs_times_out_and_is_tried_again_and_a_429_waits_as_asked() {
    use snapback::cluster::retrying::{RetryPolicy, Retrying};
    let srv = ApiServer::start();
    install_chart(&srv);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    srv.kubeconfig("admin-token", &path);
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.read_timeout = Some(Duration::from_secs(2));
    let store = Retrying::new(
        KubeStore::new(kube::Client::try_from(cfg).unwrap(), "test"),
        RetryPolicy::default(),
    );
    store
        .create(&target("local", "default", "file:///srv/b"))
        .await
        .unwrap();
    for (code, retry_after) in [(1, None), (429, Some(2))] {
        srv.inject(Fault {
            verb: "get".into(),
            resource: "backuptargets".into(),
            code,
            retry_after,
            times: 1,
        });
    }
    let t: Option<BackupTarget> = store.get(Some("default"), "local").await.unwrap();
    assert!(t.is_some());
    let audit = srv.audit();
    let gets: Vec<&apiserver::Audit> = audit
        .iter()
        .filter(|a| a.verb == "get" && a.resource == "backuptargets")
        .collect();
    let codes: Vec<u16> = gets.iter().map(|a| a.code).collect();
    assert_eq!(codes, [504, 429, 200], "a hang, a 429, then the answer");
    assert!(
        gets[2].at - gets[1].at >= Duration::from_secs(2),
        "the retry waited the 2 s the 429 asked for"
    );
}
