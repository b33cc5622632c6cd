//! The controller's pass against the in-memory Kubernetes API, with an injected clock.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::ObjectMeta;
use snapback::api::*;
use snapback::cluster::controller::pass::{RECONCILE_FAILED, UNDECODABLE};
use snapback::cluster::controller::{pass, PassConfig, PassStats};
use snapback::cluster::labels;
use snapback::cluster::mem::MemStore;
use snapback::cluster::mem_faults::Verb;
use snapback::cluster::retrying::{RetryPolicy, Retrying};
use snapback::cluster::{ApiErrorKind, Store};

const NS: &str = "backups";

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NS.into()),
        ..Default::default()
    }
}

struct World {
    store: MemStore,
    cfg: PassConfig,
}

impl World {
    async fn new(start: &str) -> World {
        let store = MemStore::new();
        store.set_now(ts(start));
        let mut t = BackupTarget::new(
            "local",
            serde_json::from_value(serde_json::json!({"url": "file:///srv/backups"})).unwrap(),
        );
        t.metadata = meta("local");
        store.create(&t).await.unwrap();
        World {
            store,
            cfg: PassConfig {
                namespace: Some(NS.into()),
                heartbeat_timeout_secs: 120,
                own_namespace: Some("snapback-system".into()),
            },
        }
    }

    async fn policy(&self, name: &str, spec: serde_json::Value) {
        let mut base = serde_json::json!({
            "domainSelector": {"names": ["web"]},
            "targetRef": "local",
            "schedule": "0 * * * *",
        });
        for (k, v) in spec.as_object().unwrap() {
            base[k] = v.clone();
        }
        let mut p = BackupPolicy::new(name, serde_json::from_value(base).unwrap());
        p.metadata = meta(name);
        self.store.create(&p).await.unwrap();
    }

    /// A VirtHost reporting `domains` (name, state), with a heartbeat at `beat`.
    async fn host(
        &self,
        node: &str,
        domains: &[(&str, &str)],
        beat: Timestamp,
        node_labels: &[(&str, &str)],
    ) {
        let status = VirtHostStatus {
            heartbeat_time: Some(beat.to_string()),
            domain_count: domains.len() as u32,
            domains: domains
                .iter()
                .map(|(n, s)| HostDomain {
                    name: n.to_string(),
                    uuid: format!("uuid-{n}"),
                    state: s.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let existing: Option<VirtHost> = self.store.get(None, node).await.unwrap();
        let mut vh = match existing {
            Some(v) => v,
            None => {
                let vh = VirtHost::new(
                    node,
                    VirtHostSpec {
                        node_name: node.into(),
                    },
                );
                self.store.create(&vh).await.unwrap()
            }
        };
        vh.status = Some(status);
        self.store.apply_status(&vh, "test").await.unwrap();
        if self.store.get::<Node>(None, node).await.unwrap().is_none() {
            let n = Node {
                metadata: ObjectMeta {
                    name: Some(node.into()),
                    labels: Some(
                        node_labels
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    ),
                    ..Default::default()
                },
                ..Default::default()
            };
            self.store.create(&n).await.unwrap();
        }
    }

    async fn at(&self, now: Timestamp) {
        self.pass_at(now).await;
    }

    async fn pass_at(&self, now: Timestamp) -> PassStats {
        self.store.set_now(now);
        pass(&self.store, &self.cfg, now).await.unwrap()
    }

    fn ready(&self, s: &BackupPolicyStatus) -> (String, String) {
        let c = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        (c.status.clone(), c.reason.clone())
    }

    async fn runs(&self) -> Vec<BackupRun> {
        let mut v: Vec<BackupRun> = self.store.list(Some(NS), &[]).await.unwrap();
        v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        v
    }

    async fn policy_status(&self, name: &str) -> BackupPolicyStatus {
        let p: BackupPolicy = self.store.get(Some(NS), name).await.unwrap().unwrap();
        p.status.unwrap_or_default()
    }

    /// What an agent would do: set a run's phase (and take its finalizer once started).
    async fn set_phase(&self, name: &str, phase: BackupPhase, done_at: Timestamp) {
        let mut r: BackupRun = self.store.get(Some(NS), name).await.unwrap().unwrap();
        if phase != BackupPhase::Pending && !phase.is_terminal() {
            labels::add_finalizer(&mut r.metadata, labels::RUN_FINALIZER);
        } else if phase.is_terminal() {
            labels::remove_finalizer(&mut r.metadata, labels::RUN_FINALIZER);
        }
        let r = self.store.replace(&r).await.unwrap();
        let mut r = r;
        let s = r.status.get_or_insert_with(Default::default);
        s.phase = phase;
        s.start_time = Some(done_at);
        if phase.is_terminal() {
            s.completion_time = Some(done_at);
        }
        if phase == BackupPhase::Failed {
            s.failure = Some(Failure {
                reason: FailureReason::TargetUnreachable,
                message: "no route".into(),
            });
        }
        self.store.apply_status(&r, "test").await.unwrap();
    }

    fn events(&self, reason: &str) -> usize {
        self.store
            .events()
            .iter()
            .filter(|e| e.reason == reason)
            .count()
    }
}

fn names(runs: &[BackupRun]) -> Vec<String> {
    runs.iter()
        .map(|r| r.metadata.name.clone().unwrap())
        .collect()
}

#[tokio::test]
async fn a_berlin_nightly_schedule_runs_once_per_night_across_the_spring_dst_change() {
    let w = World::new("2026-03-27T12:00:00Z").await;
    w.policy(
        "nightly",
        serde_json::json!({"schedule": "30 2 * * *", "timeZone": "Europe/Berlin"}),
    )
    .await;
    let mut now = ts("2026-03-27T12:00:00Z");
    let end = ts("2026-03-31T06:00:00Z");
    while now < end {
        w.host("node-1", &[("web", "Running")], now, &[]).await;
        w.at(now).await;
        // The agent finishes every run within the quarter hour.
        for r in w.runs().await {
            if r.status.is_none() {
                w.set_phase(
                    r.metadata.name.as_deref().unwrap(),
                    BackupPhase::Succeeded,
                    now,
                )
                .await;
            }
        }
        now += jiff::SignedDuration::from_mins(15);
    }
    assert_eq!(
        names(&w.runs().await),
        vec![
            "nightly-web-20260328-0130", // 02:30 CET
            "nightly-web-20260329-0100", // 02:30 does not exist: 03:00 CEST, once
            "nightly-web-20260330-0030", // 02:30 CEST
            "nightly-web-20260331-0030",
        ]
    );
    let s = w.policy_status("nightly").await;
    assert_eq!(
        s.next_schedule_time.as_deref(),
        Some("2026-04-01T00:30:00Z")
    );
    assert_eq!(s.missed_schedules, 0);
    assert_eq!(s.matched_domains, vec!["web"]);
    assert!(s.last_successful_time.is_some());
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True");
    let last = s
        .conditions
        .iter()
        .find(|c| c.type_ == "LastRunSucceeded")
        .unwrap();
    assert_eq!(last.status, "True");
}

#[tokio::test]
async fn forbid_skips_a_tick_while_the_previous_run_is_active_and_counts_it() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    w.policy("hourly", serde_json::json!({"concurrencyPolicy": "Forbid"}))
        .await;
    let t1 = ts("2026-11-22T01:00:10Z");
    w.host("node-1", &[("web", "Running")], t1, &[]).await;
    w.at(t1).await;
    let first = names(&w.runs().await);
    assert_eq!(first, vec!["hourly-web-20261122-0100"]);
    w.set_phase(&first[0], BackupPhase::Exporting, t1).await;

    let t2 = ts("2026-11-22T02:00:10Z");
    w.host("node-1", &[("web", "Running")], t2, &[]).await;
    w.at(t2).await;
    assert_eq!(
        names(&w.runs().await),
        first,
        "no second run while one is active"
    );
    assert_eq!(w.policy_status("hourly").await.missed_schedules, 1);
    assert_eq!(w.events("ConcurrentRunActive"), 1);

    w.set_phase(&first[0], BackupPhase::Succeeded, t2).await;
    let t3 = ts("2026-11-22T03:00:10Z");
    w.host("node-1", &[("web", "Running")], t3, &[]).await;
    w.at(t3).await;
    assert_eq!(w.runs().await.len(), 2);
}

#[tokio::test]
async fn replace_deletes_the_active_run_and_starts_the_new_one() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    w.policy(
        "hourly",
        serde_json::json!({"concurrencyPolicy": "Replace"}),
    )
    .await;
    let t1 = ts("2026-11-22T01:00:10Z");
    w.host("node-1", &[("web", "Running")], t1, &[]).await;
    w.at(t1).await;
    w.set_phase("hourly-web-20261122-0100", BackupPhase::Uploading, t1)
        .await;
    let t2 = ts("2026-11-22T02:00:10Z");
    w.host("node-1", &[("web", "Running")], t2, &[]).await;
    w.at(t2).await;
    let runs = w.runs().await;
    assert_eq!(runs.len(), 2);
    let old = &runs[0];
    assert!(
        old.metadata.deletion_timestamp.is_some(),
        "the active run is marked for deletion; its agent cancels and cleans up"
    );
    assert_eq!(
        runs[1].metadata.name.as_deref(),
        Some("hourly-web-20261122-0200")
    );
}

#[tokio::test]
async fn after_downtime_one_catch_up_run_per_domain_and_the_missed_ticks_are_counted() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    w.policy(
        "hourly",
        serde_json::json!({"domainSelector": {"globs": ["web-*"]}}),
    )
    .await;
    let t0 = ts("2026-11-22T00:40:00Z");
    w.host(
        "node-1",
        &[
            ("web-1", "Running"),
            ("web-2", "ShutOff"),
            ("db", "Running"),
        ],
        t0,
        &[],
    )
    .await;
    w.at(t0).await;
    assert!(w.runs().await.is_empty());
    // The controller is down from 00:40 to 05:10.
    let t = ts("2026-11-22T05:10:00Z");
    w.host(
        "node-1",
        &[
            ("web-1", "Running"),
            ("web-2", "ShutOff"),
            ("db", "Running"),
        ],
        t,
        &[],
    )
    .await;
    w.at(t).await;
    assert_eq!(
        names(&w.runs().await),
        vec!["hourly-web-1-20261122-0500", "hourly-web-2-20261122-0500"]
    );
    assert_eq!(w.policy_status("hourly").await.missed_schedules, 4);
    assert_eq!(w.events("CatchUp"), 1);
}

#[tokio::test]
async fn a_tick_past_the_starting_deadline_is_missed_and_not_run() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    w.policy(
        "hourly",
        serde_json::json!({"startingDeadlineSeconds": 300}),
    )
    .await;
    let t = ts("2026-11-22T01:10:00Z");
    w.host("node-1", &[("web", "Running")], t, &[]).await;
    w.at(t).await;
    assert!(w.runs().await.is_empty());
    let s = w.policy_status("hourly").await;
    assert_eq!(s.missed_schedules, 1);
    assert_eq!(
        s.last_schedule_time.as_deref(),
        Some("2026-11-22T01:00:00Z")
    );
    assert_eq!(w.events("MissedSchedule"), 1);
    // The next tick, seen in time, runs.
    let t2 = ts("2026-11-22T02:01:00Z");
    w.host("node-1", &[("web", "Running")], t2, &[]).await;
    w.at(t2).await;
    assert_eq!(names(&w.runs().await), vec!["hourly-web-20261122-0200"]);
}

#[tokio::test]
async fn a_retried_pass_after_a_lost_status_write_creates_no_duplicate() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    w.policy("hourly", serde_json::json!({})).await;
    let t = ts("2026-11-22T01:00:30Z");
    w.host("node-1", &[("web", "Running")], t, &[]).await;
    w.at(t).await;
    // The status write is lost (the controller died before it): lastScheduleTime goes back.
    let mut p: BackupPolicy = w.store.get(Some(NS), "hourly").await.unwrap().unwrap();
    p.status.as_mut().unwrap().last_schedule_time = None;
    w.store.replace_status(&p).await.unwrap();
    w.at(ts("2026-11-22T01:00:40Z")).await;
    w.at(ts("2026-11-22T01:00:50Z")).await;
    assert_eq!(names(&w.runs().await), vec!["hourly-web-20261122-0100"]);
}

#[tokio::test]
async fn a_pass_that_loses_a_resource_version_race_retries_on_the_next_pass() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    w.policy("hourly", serde_json::json!({})).await;
    let stale: BackupPolicy = w.store.get(Some(NS), "hourly").await.unwrap().unwrap();
    let t = ts("2026-11-22T01:00:30Z");
    w.host("node-1", &[("web", "Running")], t, &[]).await;
    w.at(t).await;
    // A writer holding an old copy is refused.
    let e = w.store.replace_status(&stale).await.unwrap_err();
    assert!(e.is(snapback::cluster::ApiErrorKind::Conflict));
    let s = w.policy_status("hourly").await;
    assert_eq!(
        s.last_schedule_time.as_deref(),
        Some("2026-11-22T01:00:00Z")
    );
}

#[tokio::test]
async fn domains_go_to_the_node_where_they_run_and_never_to_a_silent_agent() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    w.policy(
        "hourly",
        serde_json::json!({"domainSelector": {"names": ["web", "db", "ghost", "cache"]}, "nodeSelector": {"snapback.dev/libvirt-host": "true"}}),
    )
    .await;
    let t = ts("2026-11-22T01:00:30Z");
    let lab = [("snapback.dev/libvirt-host", "true")];
    // web is defined on both (shared storage) but runs on node-b.
    w.host("node-a", &[("web", "ShutOff"), ("db", "Running")], t, &lab)
        .await;
    w.host("node-b", &[("web", "Running")], t, &lab).await;
    // node-c's agent stopped answering ten minutes ago.
    w.host(
        "node-c",
        &[("cache", "Running")],
        ts("2026-11-22T00:50:00Z"),
        &lab,
    )
    .await;
    // node-d is not labelled for backups.
    w.host("node-d", &[("db", "Running")], t, &[]).await;
    w.at(t).await;
    let by_domain: BTreeMap<String, String> = w
        .runs()
        .await
        .into_iter()
        .map(|r| (r.spec.domain.clone(), r.spec.node_name.clone().unwrap()))
        .collect();
    assert_eq!(by_domain.get("web").map(String::as_str), Some("node-b"));
    assert_eq!(by_domain.get("db").map(String::as_str), Some("node-a"));
    assert_eq!(by_domain.len(), 2);
    let runs = w.runs().await;
    let web = runs.iter().find(|r| r.spec.domain == "web").unwrap();
    assert_eq!(
        web.metadata
            .labels
            .as_ref()
            .unwrap()
            .get(labels::NODE)
            .map(String::as_str),
        Some("node-b")
    );
    let ready = w
        .policy_status("hourly")
        .await
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(ready.message.contains("ghost"), "{}", ready.message);
    assert!(ready.message.contains("cache"), "{}", ready.message);
}

#[tokio::test]
async fn a_run_whose_agent_goes_silent_is_flagged_and_not_reassigned() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    w.policy("hourly", serde_json::json!({})).await;
    let t = ts("2026-11-22T01:00:30Z");
    w.host("node-1", &[("web", "Running")], t, &[]).await;
    w.host("node-2", &[("web", "ShutOff")], t, &[]).await;
    w.at(t).await;
    let name = names(&w.runs().await)[0].clone();
    w.set_phase(&name, BackupPhase::Exporting, t).await;
    // node-1 goes silent; node-2 keeps beating.
    let later = ts("2026-11-22T01:10:00Z");
    w.host("node-2", &[("web", "ShutOff")], later, &[]).await;
    w.at(later).await;
    let r: BackupRun = w.store.get(Some(NS), &name).await.unwrap().unwrap();
    let c = r
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "AgentHeartbeatStale")
        .expect("condition set");
    assert_eq!(c.status, "True");
    assert_eq!(
        r.spec.node_name.as_deref(),
        Some("node-1"),
        "never reassigned"
    );
    assert_eq!(w.runs().await.len(), 1);
}

#[tokio::test]
async fn a_policy_deleted_with_runs_active_lets_them_finish_and_then_goes() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    w.policy(
        "hourly",
        serde_json::json!({"domainSelector": {"names": ["web", "db"]}}),
    )
    .await;
    let t = ts("2026-11-22T01:00:30Z");
    w.host("node-1", &[("web", "Running"), ("db", "Running")], t, &[])
        .await;
    w.at(t).await;
    let p: BackupPolicy = w.store.get(Some(NS), "hourly").await.unwrap().unwrap();
    assert!(labels::has_finalizer(&p.metadata, labels::POLICY_FINALIZER));
    w.set_phase("hourly-web-20261122-0100", BackupPhase::Uploading, t)
        .await;
    // db's run was never picked up.
    w.store
        .delete::<BackupPolicy>(Some(NS), "hourly")
        .await
        .unwrap();
    let t2 = ts("2026-11-22T02:00:30Z");
    w.host("node-1", &[("web", "Running"), ("db", "Running")], t2, &[])
        .await;
    w.at(t2).await;
    assert_eq!(
        names(&w.runs().await),
        vec!["hourly-web-20261122-0100"],
        "the pending run is gone, the active one stays, nothing new is scheduled"
    );
    assert!(w
        .store
        .get::<BackupPolicy>(Some(NS), "hourly")
        .await
        .unwrap()
        .is_some());
    w.set_phase("hourly-web-20261122-0100", BackupPhase::Succeeded, t2)
        .await;
    w.at(ts("2026-11-22T02:00:40Z")).await;
    assert!(w
        .store
        .get::<BackupPolicy>(Some(NS), "hourly")
        .await
        .unwrap()
        .is_none());
    assert_eq!(w.runs().await.len(), 1, "the finished run's record is kept");
}

#[tokio::test]
async fn history_limits_delete_old_runs_but_keep_the_chain_the_next_backup_needs() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    w.policy(
        "hourly",
        serde_json::json!({"successfulRunsHistoryLimit": 1, "failedRunsHistoryLimit": 1}),
    )
    .await;
    let mut t = ts("2026-11-22T01:00:30Z");
    let mut made = Vec::new();
    for i in 0..5 {
        w.host("node-1", &[("web", "Running")], t, &[]).await;
        w.at(t).await;
        let newest = names(&w.runs().await)
            .into_iter()
            .find(|n| !made.contains(n))
            .unwrap();
        let phase = if i == 1 || i == 2 {
            BackupPhase::Failed
        } else {
            BackupPhase::Succeeded
        };
        w.set_phase(&newest, phase, t).await;
        if i == 0 {
            // The first is the chain's full; later successes are incrementals of it.
        } else {
            let mut r: BackupRun = w.store.get(Some(NS), &newest).await.unwrap().unwrap();
            r.status.as_mut().unwrap().chain = Some(made[0].clone());
            w.store.apply_status(&r, "test").await.unwrap();
        }
        made.push(newest);
        t += jiff::SignedDuration::from_hours(1);
    }
    w.host("node-1", &[("web", "Running")], t, &[]).await;
    w.at(t).await;
    let left = names(&w.runs().await);
    // made: 0 ok(full), 1 failed, 2 failed, 3 ok, 4 ok; plus the run just created at t.
    assert!(
        left.contains(&made[0]),
        "the chain's full is kept: {left:?}"
    );
    assert!(
        !left.contains(&made[1]),
        "older failure beyond the limit: {left:?}"
    );
    assert!(left.contains(&made[2]), "newest failure kept: {left:?}");
    assert!(
        !left.contains(&made[3]),
        "older success beyond the limit: {left:?}"
    );
    assert!(left.contains(&made[4]), "newest success kept: {left:?}");
}

#[tokio::test]
async fn an_invalid_policy_is_not_ready_and_says_why() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    w.policy("bad", serde_json::json!({"schedule": "0 25 * * *"}))
        .await;
    w.policy("zone", serde_json::json!({"timeZone": "Mars/Base"}))
        .await;
    w.policy("notarget", serde_json::json!({"targetRef": "nowhere"}))
        .await;
    w.policy(
        "badverify",
        serde_json::json!({"verify": {"schedule": "every sunday"}}),
    )
    .await;
    let t = ts("2026-11-22T01:00:30Z");
    w.host("node-1", &[("web", "Running")], t, &[]).await;
    w.at(t).await;
    assert!(w.runs().await.is_empty());
    for (p, reason, word) in [
        ("bad", "InvalidSpec", "schedule"),
        ("zone", "InvalidSpec", "timeZone"),
        ("notarget", "TargetNotFound", "target"),
        ("badverify", "InvalidSpec", "verify.schedule"),
    ] {
        let s = w.policy_status(p).await;
        let c = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reason),
            "{p}"
        );
        assert!(c.message.contains(word), "{p}: {}", c.message);
    }
}

#[tokio::test]
async fn a_restore_request_is_assigned_to_the_node_that_holds_the_domain() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    let t = ts("2026-11-22T01:00:30Z");
    w.host("node-a", &[("db", "Running")], t, &[]).await;
    w.host("node-b", &[("web", "Running")], t, &[]).await;
    let mut rr = RestoreRequest::new(
        "web-back",
        serde_json::from_value(
            serde_json::json!({"domain": "web", "targetRef": "local", "inPlace": true}),
        )
        .unwrap(),
    );
    rr.metadata = meta("web-back");
    w.store.create(&rr).await.unwrap();
    w.at(t).await;
    let got: RestoreRequest = w.store.get(Some(NS), "web-back").await.unwrap().unwrap();
    assert_eq!(
        got.metadata
            .labels
            .unwrap()
            .get(labels::NODE)
            .map(String::as_str),
        Some("node-b")
    );
}

#[tokio::test]
async fn a_files_restore_request_goes_to_the_node_that_holds_the_domain_and_waits_when_none_does() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    let t = ts("2026-11-22T01:00:30Z");
    w.host("node-a", &[("db", "Running")], t, &[]).await;
    w.host("node-b", &[("web", "Running")], t, &[]).await;
    let files = serde_json::json!({"paths": ["/etc"], "to": "/var/lib/snapback/restored"});
    for (name, spec) in [
        (
            "web-files",
            serde_json::json!({"domain": "web", "targetRef": "local", "files": files}),
        ),
        (
            "gone-files",
            serde_json::json!({"domain": "gone", "targetRef": "local", "files": files}),
        ),
        (
            "gone-as-new",
            serde_json::json!({"domain": "gone", "targetRef": "local", "newName": "back"}),
        ),
    ] {
        let mut rr = RestoreRequest::new(name, serde_json::from_value(spec).unwrap());
        rr.metadata = meta(name);
        w.store.create(&rr).await.unwrap();
    }
    w.at(t).await;
    let node = |name: &'static str| {
        let store = w.store.clone();
        async move {
            let got: RestoreRequest = store.get(Some(NS), name).await.unwrap().unwrap();
            got.metadata
                .labels
                .and_then(|l| l.get(labels::NODE).cloned())
        }
    };
    assert_eq!(node("web-files").await.as_deref(), Some("node-b"));
    assert_eq!(
        node("gone-files").await,
        None,
        "its directory is on the domain's node: no other is chosen"
    );
    assert!(
        node("gone-as-new").await.is_some(),
        "a restore as new goes to a live node"
    );
}

#[tokio::test]
async fn a_policy_whose_runs_cannot_be_created_is_marked_not_ready_and_the_others_are_still_scheduled(
) {
    let w = World::new("2026-11-22T00:30:00Z").await;
    w.policy("bad", serde_json::json!({})).await;
    w.policy("good", serde_json::json!({})).await;
    let t = ts("2026-11-22T01:00:30Z");
    w.host("node-1", &[("web", "Running")], t, &[]).await;
    w.at(ts("2026-11-22T00:30:10Z")).await;
    // An admission webhook, say, refuses the bad policy's run; and the target's status too.
    let refused = "bad-web-20261122-0100";
    w.store
        .fail_next_on::<BackupRun>(Verb::Create, refused, ApiErrorKind::Forbidden, u32::MAX);
    w.store
        .fail_next::<BackupTarget>(Verb::ReplaceStatus, ApiErrorKind::Invalid, u32::MAX);
    let mut t_status: BackupTarget = w.store.get(Some(NS), "local").await.unwrap().unwrap();
    t_status.status = None;
    w.store.apply_status(&t_status, "test").await.unwrap();

    let stats = w.pass_at(t).await;

    assert_eq!(names(&w.runs().await), vec!["good-web-20261122-0100"]);
    assert_eq!(stats.errors, 2, "{stats:?}");
    let bad = w.policy_status("bad").await;
    assert_eq!(w.ready(&bad), ("False".into(), RECONCILE_FAILED.into()));
    let message = &bad
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(message.contains(refused), "{message}");
    assert_eq!(
        bad.last_schedule_time, None,
        "the tick is not taken as done: the next pass tries it again"
    );
    assert_eq!(
        w.events(RECONCILE_FAILED),
        2,
        "one on the policy, one on the target"
    );
    let good = w.policy_status("good").await;
    assert_eq!(w.ready(&good), ("True".into(), "Scheduled".into()));

    // The same failure again is not one more status write.
    let writes = w.store.writes();
    w.pass_at(ts("2026-11-22T01:00:40Z")).await;
    assert_eq!(w.store.writes(), writes);

    w.store.clear_faults();
    w.pass_at(ts("2026-11-22T01:00:50Z")).await;
    assert_eq!(w.runs().await.len(), 2);
    let bad = w.policy_status("bad").await;
    assert_eq!(w.ready(&bad), ("True".into(), "Scheduled".into()));
}

#[tokio::test]
async fn a_policy_that_does_not_decode_is_reported_and_the_others_are_still_scheduled() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    w.policy("first", serde_json::json!({})).await;
    w.policy("second", serde_json::json!({})).await;
    // The schema takes any integer here; the type holds a u32.
    w.store.insert_raw(
        "snapback.dev/v1alpha1/BackupPolicy",
        NS,
        "broken",
        serde_json::json!({
            "apiVersion": "snapback.dev/v1alpha1", "kind": "BackupPolicy",
            "metadata": {},
            "spec": {"domainSelector": {"names": ["web"]}, "targetRef": "local",
                     "schedule": "0 * * * *",
                     "consistency": {"freezeTimeoutSeconds": 5_000_000_000u64}},
        }),
    );
    let t = ts("2026-11-22T01:00:30Z");
    w.host("node-1", &[("web", "Running")], t, &[]).await;

    let stats = w.pass_at(t).await;

    assert_eq!(
        names(&w.runs().await),
        vec!["first-web-20261122-0100", "second-web-20261122-0100"]
    );
    assert_eq!((stats.policies, stats.undecodable), (2, 1), "{stats:?}");
    let reported: Vec<_> = w
        .store
        .events()
        .into_iter()
        .filter(|e| e.reason == UNDECODABLE)
        .collect();
    assert_eq!(reported.len(), 1);
    assert_eq!(
        (reported[0].kind.as_str(), reported[0].name.as_str()),
        ("BackupPolicy", "broken")
    );
    assert!(reported[0].note.contains("u32"), "{}", reported[0].note);
}

#[tokio::test]
async fn a_pass_schedules_through_an_api_that_is_briefly_unavailable() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    w.policy("hourly", serde_json::json!({})).await;
    let t = ts("2026-11-22T01:00:30Z");
    w.host("node-1", &[("web", "Running")], t, &[]).await;
    w.at(ts("2026-11-22T00:30:10Z")).await;
    for verb in [Verb::List, Verb::Create] {
        w.store
            .fail_next::<BackupRun>(verb, ApiErrorKind::Unavailable, 3);
    }
    w.store
        .fail_next::<BackupPolicy>(Verb::ReplaceStatus, ApiErrorKind::Unavailable, 3);
    let store = Retrying::new(w.store.clone(), RetryPolicy::quick(Duration::from_secs(5)));
    w.store.set_now(t);

    let stats = pass(&store, &w.cfg, t).await.unwrap();

    assert_eq!(w.store.faults_fired(), 9);
    assert_eq!((stats.runs_created, stats.errors), (1, 0), "{stats:?}");
    assert_eq!(names(&w.runs().await), vec!["hourly-web-20261122-0100"]);
    assert_eq!(
        w.policy_status("hourly")
            .await
            .last_schedule_time
            .as_deref(),
        Some("2026-11-22T01:00:00Z")
    );
}

#[tokio::test]
async fn a_list_that_fails_ends_the_pass_and_says_which() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    w.policy("hourly", serde_json::json!({})).await;
    w.store
        .fail_next::<VirtHost>(Verb::List, ApiErrorKind::Forbidden, 1);

    let e = pass(&w.store, &w.cfg, ts("2026-11-22T01:00:30Z"))
        .await
        .unwrap_err();

    assert!(e.is(ApiErrorKind::Forbidden));
    assert!(e.message.contains("cannot list VirtHosts"), "{e}");
}

/// A KubeVirt VM and its instance in `NS`, as KubeVirt reports them.
async fn kubevirt_vm(w: &World, name: &str, labels: serde_json::Value, phase: &str, cbt: &str) {
    let vm: snapback::kubevirt::types::VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"namespace": NS, "name": name, "labels": labels},
        "spec": {"runStrategy": "Always", "template": {"spec": {}}},
    }))
    .unwrap();
    w.store.create(&vm).await.unwrap();
    let vmi: snapback::kubevirt::types::VirtualMachineInstance =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"namespace": NS, "name": name},
            "spec": {},
        }))
        .unwrap();
    let mut vmi = w.store.create(&vmi).await.unwrap();
    vmi.status = serde_json::from_value(
        serde_json::json!({"phase": phase, "changedBlockTracking": {"state": cbt}}),
    )
    .unwrap();
    w.store.replace_status(&vmi).await.unwrap();
}

async fn kubevirt_policy(w: &World, name: &str, extra: serde_json::Value) {
    let mut spec = serde_json::json!({
        "virtualMachineSelector": {"selector": {"matchLabels": {"backup": "nightly"}}},
        "targetRef": "local",
        "schedule": "0 * * * *",
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let mut p = BackupPolicy::new(name, serde_json::from_value(spec).unwrap());
    p.metadata = meta(name);
    w.store.create(&p).await.unwrap();
}

#[tokio::test]
async fn a_policy_selecting_kubevirt_vms_runs_the_ready_ones_through_the_worker_and_says_why_not_the_others(
) {
    let w = World::new("2026-11-22T00:30:00Z").await;
    kubevirt_policy(&w, "vms", serde_json::json!({})).await;
    let t = ts("2026-11-22T01:00:30Z");
    w.at(t).await;
    let s = w.policy_status("vms").await;
    let kv = s
        .conditions
        .iter()
        .find(|c| c.type_ == "KubeVirtReady")
        .expect("KubeVirtReady")
        .clone();
    assert_eq!(kv.status, "False");
    assert!(w.runs().await.is_empty(), "no KubeVirt, nothing runs");

    let kubevirt: snapback::kubevirt::types::KubeVirt = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
        "metadata": {"namespace": "kubevirt", "name": "kubevirt"},
        "spec": {"configuration": {"developerConfiguration": {
            "featureGates": ["IncrementalBackup", "UtilityVolumes"]}}},
    }))
    .unwrap();
    w.store.create(&kubevirt).await.unwrap();
    let nightly = serde_json::json!({"backup": "nightly"});
    kubevirt_vm(&w, "web", nightly.clone(), "Running", "Enabled").await;
    kubevirt_vm(&w, "db", nightly.clone(), "Running", "PendingRestart").await;
    kubevirt_vm(&w, "other", serde_json::json!({}), "Running", "Enabled").await;
    let t = ts("2026-11-22T02:00:30Z");
    w.at(t).await;
    let runs = w.runs().await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let r = &runs[0];
    assert_eq!(r.spec.domain, format!("{NS}/web"));
    assert_eq!(
        r.spec.virtual_machine,
        Some(VmRef {
            namespace: NS.into(),
            name: "web".into()
        })
    );
    assert_eq!(r.spec.node_name, None, "no node agent takes it");
    let l = r.metadata.labels.clone().unwrap();
    assert_eq!(l.get(labels::KUBEVIRT).map(String::as_str), Some("true"));
    assert!(!l.contains_key(labels::NODE));
    let s = w.policy_status("vms").await;
    assert_eq!(s.matched_domains, vec![format!("{NS}/web")]);
    let kv = s
        .conditions
        .iter()
        .find(|c| c.type_ == "KubeVirtReady")
        .unwrap();
    assert_eq!(
        (kv.status.as_str(), kv.reason.as_str()),
        ("False", "CBTNotEnabled")
    );
    assert!(kv.message.contains(&format!("{NS}/db")), "{}", kv.message);
    assert!(!kv.message.contains("other"), "{}", kv.message);
    assert!(w.events("KubeVirtNotReady") >= 1);
    let before = w.events("KubeVirtNotReady");
    w.at(ts("2026-11-22T02:10:00Z")).await;
    assert_eq!(
        w.events("KubeVirtNotReady"),
        before,
        "an unchanged reason is told once"
    );
}

#[tokio::test]
async fn a_kubevirt_policy_that_asks_for_hooks_pause_or_other_namespaces_is_refused_with_why() {
    let w = World::new("2026-11-22T00:30:00Z").await;
    kubevirt_policy(
        &w,
        "hooks",
        serde_json::json!({"hooks": {"preSnapshot": [{"command": ["sync"]}]}}),
    )
    .await;
    kubevirt_policy(
        &w,
        "pause",
        serde_json::json!({"consistency": {"pause": true}}),
    )
    .await;
    kubevirt_policy(
        &w,
        "wide",
        serde_json::json!({"virtualMachineSelector": {"namespaceSelector": {"matchLabels": {"a": "b"}}}}),
    )
    .await;
    w.at(ts("2026-11-22T01:00:30Z")).await;
    for (p, word) in [
        ("hooks", "hooks are not supported"),
        ("pause", "pause is not supported"),
        ("wide", "namespaceSelector is honoured only"),
    ] {
        let s = w.policy_status(p).await;
        let c = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidSpec"),
            "{p}"
        );
        assert!(c.message.contains(word), "{p}: {}", c.message);
    }
    assert!(w.runs().await.is_empty());
}
