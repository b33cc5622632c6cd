//! The chart's admission policy that keeps each agent to its own node's objects, evaluated by
//! the apiserver stand-in (tests/apiserver) as `helm template` renders it, through snapback's
//! KubeStore with the tokens a pod would get: an agent writes the runs, restores and VirtHost
//! of its node and nothing else; a token that names no node, the controller and a chart with
//! `agent.restrictToOwnNode=false` are not narrowed.

mod apiserver;
mod common;

use apiserver::ApiServer;
use serde_json::json;
use snapback::api::{BackupRun, BackupRunSpec, BackupTarget, RestoreRequest, VirtHost};
use snapback::cluster::labels;
use snapback::cluster::{ApiErrorKind, Store};

const NS: &str = "snapback-system";
const AGENT_SA: &str = "snapback-agent";
const CONTROLLER_SA: &str = "snapback-controller";
const MANAGER: &str = snapback::cluster::agent::inventory::FIELD_MANAGER;

/// A stand-in with the chart (`helm template` with `sets`) created in it.
fn cluster(sets: &[&str]) -> ApiServer {
    let srv = ApiServer::start();
    srv.create_all(&apiserver::render_chart(
        &common::test_tool("helm"),
        NS,
        sets,
    ));
    srv
}

/// A run as the controller creates it: `spec.nodeName` and the node label.
fn run(name: &str, node: &str) -> BackupRun {
    let mut spec = BackupRunSpec::new("web", "local");
    spec.node_name = Some(node.to_string());
    let mut r = BackupRun::new(name, spec);
    r.metadata.namespace = Some(NS.into());
    r.metadata.labels = Some([(labels::NODE.to_string(), labels::label_value(node))].into());
    r
}

/// A restore as the controller labels it: only the node label names the node.
fn restore(name: &str, node: &str) -> RestoreRequest {
    let spec =
        serde_json::from_value(json!({"domain": "web", "targetRef": "local", "newName": "web-2"}))
            .unwrap();
    let mut r = RestoreRequest::new(name, spec);
    r.metadata.namespace = Some(NS.into());
    r.metadata.labels = Some([(labels::NODE.to_string(), labels::label_value(node))].into());
    r
}

fn virthost(name: &str, node: &str) -> VirtHost {
    VirtHost::new(
        name,
        serde_json::from_value(json!({ "nodeName": node })).unwrap(),
    )
}

fn with_run_status(mut r: BackupRun) -> BackupRun {
    r.status = Some(serde_json::from_value(json!({"phase": "Exporting"})).unwrap());
    r
}

fn with_restore_status(mut r: RestoreRequest) -> RestoreRequest {
    r.status = Some(serde_json::from_value(json!({"phase": "Fetching"})).unwrap());
    r
}

fn assert_denied<T: std::fmt::Debug>(res: Result<T, snapback::cluster::ApiError>, what: &str) {
    let e = res.expect_err(what);
    assert!(e.is(ApiErrorKind::Forbidden), "{what}: {e}");
    assert!(
        e.to_string()
            .contains("ValidatingAdmissionPolicy 'snapback-agent-own-node'"),
        "{what}: {e}"
    );
}

#[tokio::test]
async fn an_agent_writes_the_runs_and_restores_of_its_node_and_is_forbidden_those_of_another() {
    let srv = cluster(&[]);
    let dir = tempfile::tempdir().unwrap();
    let admin = srv.store_as(dir.path(), "admin-token", "test").await;
    for (name, node) in [("mine", "node-1"), ("theirs", "node-2")] {
        admin.create(&run(name, node)).await.unwrap();
        admin.create(&restore(name, node)).await.unwrap();
    }
    let token = srv.token_for_node(NS, AGENT_SA, "node-1");
    let agent = srv.store_as(dir.path(), &token, MANAGER).await;

    agent
        .apply_status(&with_run_status(run("mine", "node-1")), MANAGER)
        .await
        .unwrap();
    agent
        .apply_status(&with_restore_status(restore("mine", "node-1")), MANAGER)
        .await
        .unwrap();
    let mut own: BackupRun = agent.get(Some(NS), "mine").await.unwrap().unwrap();
    labels::add_finalizer(&mut own.metadata, labels::RUN_FINALIZER);
    let own = agent.replace(&own).await.unwrap();

    let res = agent
        .apply_status(&with_run_status(run("theirs", "node-2")), MANAGER)
        .await;
    let msg = res.as_ref().map(|_| ()).unwrap_err().to_string();
    assert!(
        msg.contains(
            "backupruns.snapback.dev \"theirs\" is forbidden: ValidatingAdmissionPolicy \
             'snapback-agent-own-node' with binding 'snapback-agent-own-node' denied request: \
             the agent on node node-1 may write only the runs and restores labelled \
             snapback.dev/node=node-1"
        ),
        "{msg}"
    );
    assert_denied(res, "the status of another node's run");
    let res = agent
        .apply_status(&with_restore_status(restore("theirs", "node-2")), MANAGER)
        .await;
    assert_denied(res, "the status of another node's restore");
    let mut other: BackupRun = agent.get(Some(NS), "theirs").await.unwrap().unwrap();
    labels::add_finalizer(&mut other.metadata, labels::RUN_FINALIZER);
    assert_denied(
        agent.replace(&other).await,
        "a finalizer on another node's run",
    );

    // Relabelling moves nothing: neither taking another node's run nor giving one away.
    let mut taken = other.clone();
    taken.metadata.labels = run("theirs", "node-1").metadata.labels;
    taken.spec.node_name = Some("node-1".into());
    assert_denied(agent.replace(&taken).await, "taking another node's run");
    let mut given = own.clone();
    given.metadata.labels = run("mine", "node-2").metadata.labels;
    assert_denied(agent.replace(&given).await, "giving a run away");

    let stored = srv
        .get("snapback.dev/v1alpha1/BackupRun", NS, "theirs")
        .unwrap();
    assert!(stored.get("status").is_none(), "{stored}");
    let codes: Vec<u16> = srv
        .audit()
        .iter()
        .filter(|a| a.name == "theirs")
        .map(|a| a.code)
        .collect();
    assert!(codes.contains(&403), "{codes:?}");
}

#[tokio::test]
async fn an_agent_creates_and_updates_its_own_virthost_but_not_another_nodes() {
    let srv = cluster(&[]);
    let dir = tempfile::tempdir().unwrap();
    let token = srv.token_for_node(NS, AGENT_SA, "node-1");
    let agent = srv.store_as(dir.path(), &token, MANAGER).await;

    let mut own = agent.create(&virthost("node-1", "node-1")).await.unwrap();
    own.status = Some(serde_json::from_value(json!({"domainCount": 2})).unwrap());
    agent.apply_status(&own, MANAGER).await.unwrap();

    assert_denied(
        agent.create(&virthost("node-2", "node-2")).await,
        "creating another node's VirtHost",
    );
    assert_denied(
        agent.create(&virthost("node-3", "node-1")).await,
        "creating a VirtHost under another name",
    );
    let admin = srv.store_as(dir.path(), "admin-token", "test").await;
    let mut theirs = admin.create(&virthost("node-2", "node-2")).await.unwrap();
    theirs.status = Some(serde_json::from_value(json!({"domainCount": 0})).unwrap());
    assert_denied(
        agent.apply_status(&theirs, MANAGER).await,
        "the status of another node's VirtHost",
    );
}

#[tokio::test]
async fn a_token_that_names_no_node_is_not_narrowed_because_nothing_tells_the_agents_apart() {
    let srv = cluster(&[]);
    let dir = tempfile::tempdir().unwrap();
    let admin = srv.store_as(dir.path(), "admin-token", "test").await;
    admin.create(&run("theirs", "node-2")).await.unwrap();
    let token = srv.token_for(NS, AGENT_SA);
    let agent = srv.store_as(dir.path(), &token, MANAGER).await;
    agent
        .apply_status(&with_run_status(run("theirs", "node-2")), MANAGER)
        .await
        .unwrap();
    agent.create(&virthost("node-2", "node-2")).await.unwrap();
}

#[tokio::test]
async fn the_controller_is_not_narrowed_even_with_a_token_naming_its_node() {
    let srv = cluster(&[]);
    let dir = tempfile::tempdir().unwrap();
    let admin = srv.store_as(dir.path(), "admin-token", "test").await;
    admin.create(&run("theirs", "node-2")).await.unwrap();
    admin.create(&restore("theirs", "node-2")).await.unwrap();
    let token = srv.token_for_node(NS, CONTROLLER_SA, "node-1");
    let controller = srv
        .store_as(dir.path(), &token, "snapback-controller")
        .await;

    // The controller reads through watches (no get); the admin reads for it here.
    let mut r: BackupRun = admin.get(Some(NS), "theirs").await.unwrap().unwrap();
    r.status = Some(serde_json::from_value(json!({"phase": "Pending"})).unwrap());
    controller.replace_status(&r).await.unwrap();
    let mut rr: RestoreRequest = admin.get(Some(NS), "theirs").await.unwrap().unwrap();
    rr.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(labels::NODE.into(), "node-3".into());
    controller.replace(&rr).await.unwrap();
}

#[tokio::test]
async fn with_restrict_to_own_node_off_the_chart_has_no_policy_and_the_agent_is_as_broad_as_rbac() {
    let srv = cluster(&["agent.restrictToOwnNode=false"]);
    assert!(srv
        .list(
            "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",
            None
        )
        .is_empty());
    let dir = tempfile::tempdir().unwrap();
    let admin = srv.store_as(dir.path(), "admin-token", "test").await;
    admin.create(&run("theirs", "node-2")).await.unwrap();
    let token = srv.token_for_node(NS, AGENT_SA, "node-1");
    let agent = srv.store_as(dir.path(), &token, MANAGER).await;
    agent
        .apply_status(&with_run_status(run("theirs", "node-2")), MANAGER)
        .await
        .unwrap();
}

/// Node names longer than 63 characters become hashed labels (labels::label_value), which CEL
/// cannot compute: a run is still told apart by its spec.nodeName, a restore only by the
/// label being hashed at all.
#[tokio::test]
async fn on_a_node_with_a_name_over_63_characters_runs_stay_its_own_and_hashed_restores_are_shared()
{
    let domain = "eu-central-1.compute.internal.datacentre-frankfurt-main.example.org";
    let (long, other_long) = (format!("kvm-01.{domain}"), format!("kvm-02.{domain}"));
    assert!(long.len() > 63 && labels::label_value(&long).starts_with("h-"));
    let srv = cluster(&[]);
    let dir = tempfile::tempdir().unwrap();
    let admin = srv.store_as(dir.path(), "admin-token", "test").await;
    admin.create(&run("long", &long)).await.unwrap();
    admin.create(&restore("long", &long)).await.unwrap();
    let agent = srv
        .store_as(
            dir.path(),
            &srv.token_for_node(NS, AGENT_SA, &long),
            MANAGER,
        )
        .await;
    let other = srv
        .store_as(
            dir.path(),
            &srv.token_for_node(NS, AGENT_SA, &other_long),
            MANAGER,
        )
        .await;
    let short = srv
        .store_as(
            dir.path(),
            &srv.token_for_node(NS, AGENT_SA, "node-1"),
            MANAGER,
        )
        .await;

    agent
        .apply_status(&with_run_status(run("long", &long)), MANAGER)
        .await
        .unwrap();
    agent
        .apply_status(&with_restore_status(restore("long", &long)), MANAGER)
        .await
        .unwrap();
    assert_denied(
        other
            .apply_status(&with_run_status(run("long", &long)), MANAGER)
            .await,
        "another long-named node's run",
    );
    assert_denied(
        short
            .apply_status(&with_restore_status(restore("long", &long)), MANAGER)
            .await,
        "a hashed restore from a short-named node",
    );
    let mut given: BackupRun = agent.get(Some(NS), "long").await.unwrap().unwrap();
    given.metadata.labels = run("long", "node-1").metadata.labels;
    assert_denied(agent.replace(&given).await, "handing a run to another node");
    // The documented edge: the label cannot be checked, only that it is hashed.
    other
        .apply_status(&with_restore_status(restore("long", &long)), MANAGER)
        .await
        .unwrap();
}

/// The stand-in answers a denial as the apiserver does when the failed validation has no
/// reason: 422 Invalid, and a message naming the policy, the binding and the expression.
#[tokio::test]
async fn a_validation_without_a_reason_denies_with_422_invalid_and_the_failed_expression() {
    let srv = cluster(&[]);
    srv.create_all(&[
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
               "metadata": {"name": "only-s3"},
               "spec": {"matchConstraints": {"resourceRules": [{"apiGroups": ["snapback.dev"],
                          "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                          "resources": ["backuptargets"]}]},
                        "validations": [{"expression": "object.spec.url.startsWith('s3://')"}]}}),
        json!({"apiVersion": "admissionregistration.k8s.io/v1",
               "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": "only-s3-binding"},
               "spec": {"policyName": "only-s3", "validationActions": ["Deny"]}}),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let admin = srv.store_as(dir.path(), "admin-token", "test").await;
    let mut t = BackupTarget::new(
        "local",
        serde_json::from_value(json!({"url": "file:///srv/b"})).unwrap(),
    );
    t.metadata.namespace = Some(NS.into());
    let e = admin.create(&t).await.unwrap_err();
    assert!(e.is(ApiErrorKind::Invalid), "{e}");
    assert!(
        e.to_string().contains(
            "backuptargets.snapback.dev \"local\" is forbidden: ValidatingAdmissionPolicy \
             'only-s3' with binding 'only-s3-binding' denied request: failed expression: \
             object.spec.url.startsWith('s3://')"
        ),
        "{e}"
    );
    let last = srv.audit().pop().unwrap();
    assert_eq!((last.verb.as_str(), last.code), ("create", 422));
    t.spec.url = "s3://bucket/b".into();
    admin.create(&t).await.unwrap();
}

#[tokio::test]
async fn an_agent_may_mark_a_finished_run_of_another_node_expired_but_not_change_its_phase() {
    let srv = cluster(&[]);
    let dir = tempfile::tempdir().unwrap();
    let admin = srv.store_as(dir.path(), "admin-token", "test").await;
    let mut done = admin.create(&run("done", "node-2")).await.unwrap();
    done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
    let done = admin.replace_status(&done).await.unwrap();
    admin.create(&run("busy", "node-2")).await.unwrap();
    let token = srv.token_for_node(NS, AGENT_SA, "node-1");
    let agent = srv.store_as(dir.path(), &token, MANAGER).await;

    let mut expired = done.clone();
    expired.status = Some(
        serde_json::from_value(json!({"phase": "Succeeded", "conditions": [{
            "type": "Expired", "status": "True", "reason": "Pruned", "message": "",
            "lastTransitionTime": "2026-11-30T00:00:00Z"}]}))
        .unwrap(),
    );
    agent.apply_status(&expired, MANAGER).await.unwrap();
    let mut failed = done.clone();
    failed.status = Some(serde_json::from_value(json!({"phase": "Failed"})).unwrap());
    assert_denied(
        agent.apply_status(&failed, MANAGER).await,
        "changing the phase of another node's finished run",
    );
    assert_denied(
        agent
            .apply_status(&with_run_status(run("busy", "node-2")), MANAGER)
            .await,
        "the status of another node's unfinished run",
    );
}
