//! The agent's status writes while the API is unavailable, against the in-memory API with
//! injected faults: a write that fails for a moment is retried and lands; one that keeps
//! failing neither fails the run nor loses what it held; the end of a run is written again
//! until it lands, before the run is released.

use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

use super::journal::ApiJournal;
use super::site::AgentSite;
use crate::api::{
    BackupPhase, BackupRun, BackupRunSpec, BackupRunStatus, BackupTarget, PhaseRecord,
    RestorePhase, RestoreRequest, RestoreRequestStatus, RestoredDisk,
};
use crate::cluster::mem::MemStore;
use crate::cluster::mem_faults::Verb;
use crate::cluster::retrying::{RetryPolicy, Retrying};
use crate::cluster::store::{ApiErrorKind, Store};
use crate::driver::Driver;
use crate::libvirt::DomainState;
use crate::lifecycle::Journal;
use crate::source::FakeSource;

const NS: &str = "ns";

/// The store as the agent has it: retrying, here within 30 ms a call.
fn retrying(mem: &MemStore) -> Retrying<MemStore> {
    Retrying::new(mem.clone(), RetryPolicy::quick(Duration::from_millis(30)))
}

async fn created_run(mem: &MemStore) -> BackupRun {
    let mut r = BackupRun::new("r", BackupRunSpec::new("web", "t"));
    r.metadata.namespace = Some(NS.into());
    mem.create(&r).await.unwrap()
}

/// `run` in `phases` (the last one current), as the engine records it.
fn in_phases(mut run: BackupRun, phases: &[BackupPhase]) -> BackupRun {
    let now = jiff::Timestamp::now();
    run.status = Some(BackupRunStatus {
        phase: *phases.last().unwrap(),
        phases: phases
            .iter()
            .map(|p| PhaseRecord {
                phase: *p,
                start_time: now,
                end_time: None,
            })
            .collect(),
        ..Default::default()
    });
    run
}

async fn stored(mem: &MemStore) -> Option<BackupRunStatus> {
    let r: BackupRun = mem.get(Some(NS), "r").await.unwrap().unwrap();
    r.status
}

#[tokio::test]
async fn a_status_write_that_fails_for_a_moment_is_retried_and_lands() {
    let mem = MemStore::new();
    let run = created_run(&mem).await;
    mem.fail_next::<BackupRun>(Verb::ApplyStatus, ApiErrorKind::Unavailable, 2);
    let journal = ApiJournal::new(retrying(&mem));

    let saved = journal
        .save(&in_phases(run, &[BackupPhase::Preparing]))
        .await;

    assert_eq!(saved, Ok(()));
    assert_eq!(mem.faults_fired(), 2);
    assert!(!journal.behind());
    assert_eq!(stored(&mem).await.unwrap().phase, BackupPhase::Preparing);
}

#[tokio::test]
async fn a_status_write_lost_to_an_unavailable_api_does_not_fail_the_run_and_the_next_write_carries_it(
) {
    let mem = MemStore::new();
    let run = created_run(&mem).await;
    mem.fail_next::<BackupRun>(Verb::ApplyStatus, ApiErrorKind::Unavailable, u32::MAX);
    let journal = ApiJournal::new(retrying(&mem));

    let lost = journal
        .save(&in_phases(run.clone(), &[BackupPhase::Preparing]))
        .await;

    assert_eq!(lost, Ok(()), "the run goes on");
    assert!(journal.behind());
    assert!(mem.faults_fired() > 1, "retried before giving up");
    assert_eq!(stored(&mem).await, None);

    mem.clear_faults();
    let both = [BackupPhase::Preparing, BackupPhase::Exporting];
    journal.save(&in_phases(run, &both)).await.unwrap();

    assert!(!journal.behind());
    let s = stored(&mem).await.unwrap();
    assert_eq!(s.phase, BackupPhase::Exporting);
    let phases: Vec<_> = s.phases.iter().map(|p| p.phase).collect();
    assert_eq!(phases, both, "the lost phase's record is kept");
    let announced: Vec<_> = mem.events().into_iter().map(|e| e.reason).collect();
    assert_eq!(
        announced,
        ["Exporting"],
        "announced with the write that landed"
    );
}

#[tokio::test]
async fn a_write_the_api_refuses_for_good_still_fails() {
    let mem = MemStore::new();
    let run = created_run(&mem).await;
    mem.fail_next::<BackupRun>(Verb::ApplyStatus, ApiErrorKind::NotFound, 1);
    let journal = ApiJournal::new(retrying(&mem));

    let saved = journal
        .save(&in_phases(run, &[BackupPhase::Preparing]))
        .await;

    assert!(saved.is_err());
    assert_eq!(mem.faults_fired(), 1, "not retried");
}

#[tokio::test]
async fn the_end_of_a_run_is_written_again_until_it_lands() {
    let mem = MemStore::new();
    let run = in_phases(
        created_run(&mem).await,
        &[BackupPhase::Preparing, BackupPhase::Succeeded],
    );
    mem.fail_next::<BackupRun>(Verb::ApplyStatus, ApiErrorKind::Unavailable, u32::MAX);
    let journal = ApiJournal::new(retrying(&mem));
    journal.save(&run).await.unwrap();
    assert!(journal.behind());
    let (_tx, mut stop) = watch::channel(false);
    let api_back = {
        let mem = mem.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            mem.clear_faults();
        }
    };

    let (settled, ()) = tokio::join!(
        journal.settle(&run, &mut stop, Duration::from_millis(5)),
        api_back
    );

    assert!(settled);
    assert_eq!(stored(&mem).await.unwrap().phase, BackupPhase::Succeeded);
}

#[tokio::test]
async fn settling_gives_up_when_the_agent_stops_and_the_run_keeps_its_finalizer() {
    let mem = MemStore::new();
    let run = in_phases(created_run(&mem).await, &[BackupPhase::Succeeded]);
    mem.fail_next::<BackupRun>(Verb::ApplyStatus, ApiErrorKind::Unavailable, u32::MAX);
    let journal = ApiJournal::new(retrying(&mem));
    journal.save(&run).await.unwrap();
    let (tx, mut stop) = watch::channel(false);
    let stopping = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(true).unwrap();
    };

    let (settled, ()) = tokio::join!(
        journal.settle(&run, &mut stop, Duration::from_secs(60)),
        stopping
    );

    assert!(!settled, "not written: the caller must not release it");
}

const WEB_COPY: &str = "<domain type='kvm'><name>web-copy</name>\
<uuid>99999999-2222-3333-4444-555555555555</uuid><devices>\
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
<source file='DISK'/><target dev='vda' bus='virtio'/></disk>\
</devices></domain>";

/// A restore as a new domain, resumed where its domain was defined (as after a crash), so
/// that what is left runs on the fake source: start it, recover, succeed.
async fn restore_defined(mem: &MemStore, dir: &Path, fake: &FakeSource) -> RestoreRequest {
    let t: BackupTarget = serde_json::from_value(serde_json::json!({
        "apiVersion": "snapback.dev/v1alpha1", "kind": "BackupTarget",
        "metadata": {"name": "t", "namespace": NS},
        "spec": {"url": format!("file://{}", dir.join("target").display())},
    }))
    .unwrap();
    mem.create(&t).await.unwrap();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let disk = dir.join("web-vda-restored.qcow2");
    std::fs::write(&disk, b"restored").unwrap();
    let uuid = fake.add(
        &WEB_COPY.replace("DISK", &disk.display().to_string()),
        DomainState::ShutOff,
    );
    let req: RestoreRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "snapback.dev/v1alpha1", "kind": "RestoreRequest",
        "metadata": {"name": "bring-back", "namespace": NS},
        "spec": {"domain": "web", "targetRef": "t", "newName": "web-copy", "start": true},
    }))
    .unwrap();
    let mut req = mem.create(&req).await.unwrap();
    req.status = Some(RestoreRequestStatus {
        phase: RestorePhase::Defining,
        work_dir: Some(work.display().to_string()),
        defined_uuid: Some(uuid),
        disks: vec![RestoredDisk {
            name: "vda".into(),
            path: disk.display().to_string(),
            virtual_size: 1 << 20,
            verified: true,
            device: false,
            ..Default::default()
        }],
        ..Default::default()
    });
    mem.apply_status(&req, "test").await.unwrap()
}

#[tokio::test]
async fn a_restore_succeeds_while_the_api_is_unavailable_and_its_end_is_written_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mem = MemStore::new();
    let fake = FakeSource::new();
    let req = restore_defined(&mem, dir.path(), &fake).await;
    mem.fail_next::<RestoreRequest>(Verb::ApplyStatus, ApiErrorKind::Unavailable, u32::MAX);
    let site = AgentSite::new(retrying(&mem), dir.path().join("state"));
    let driver = Driver {
        host: &fake,
        state_dir: &dir.path().join("state"),
        poll: Duration::from_millis(1),
        metrics: None,
    };
    let (_tx, cancel) = watch::channel(false);
    let mut stop = cancel.clone();

    let done = driver.restore(&site, req, Box::new(|_| {}), cancel).await;

    let s = done.status.clone().unwrap();
    assert_eq!(
        (s.phase, s.failure.map(|f| f.reason)),
        (RestorePhase::Succeeded, None),
        "no Internal failure for writes the API did not take"
    );
    let before: RestoreRequest = mem.get(Some(NS), "bring-back").await.unwrap().unwrap();
    assert_eq!(before.status.unwrap().phase, RestorePhase::Defining);

    mem.clear_faults();
    assert!(
        site.settle(&done, &mut stop, Duration::from_millis(5))
            .await
    );
    let after: RestoreRequest = mem.get(Some(NS), "bring-back").await.unwrap().unwrap();
    let s = after.status.unwrap();
    assert_eq!(s.phase, RestorePhase::Succeeded);
    assert!(
        s.phases.iter().any(|p| p.phase == RestorePhase::Starting),
        "the phases lost on the way are in the final write: {:?}",
        s.phases
    );
}
