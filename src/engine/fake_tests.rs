//! The backup engine's resume and cleanup against the fake source: a run that died with the
//! guest frozen and paused, a job that fails, a run cancelled while its job runs. Each must
//! leave the VM as it was found: running, thawed, no job, no checkpoint of its own, staging
//! empty.

use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

use super::{BackupEngine, RunContext};
use crate::api::{BackupPhase, BackupRun, BackupRunSpec, BackupRunStatus, FailureReason, RunDisk};
use crate::duplicity::TargetConfig;
use crate::libvirt::{DomainState, JobState};
use crate::lifecycle::memory::MemoryJournal;
use crate::source::FakeSource;

pub(crate) const VM_XML: &str = "<domain type='kvm'><name>web</name>\
<uuid>11111111-2222-3333-4444-555555555555</uuid><devices>\
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
<source file='/images/web.qcow2'/><target dev='vda' bus='virtio'/></disk>\
<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
</devices></domain>";

/// A run recorded in `phase`, past Preparing: its domain, disk, checkpoint and staging known.
fn run_in(phase: BackupPhase, uuid: &str, staging: &Path) -> BackupRun {
    let spec: BackupRunSpec =
        serde_json::from_value(serde_json::json!({"domain": "web", "targetRef": "t"})).unwrap();
    let mut r = BackupRun::new("web-run", spec);
    r.status = Some(BackupRunStatus {
        phase,
        domain_name: Some("web".into()),
        domain_uuid: Some(uuid.into()),
        online: true,
        checkpoint: Some("snapback-web-run".into()),
        staging_dir: Some(staging.display().to_string()),
        disks: vec![RunDisk {
            name: "vda".into(),
            source: "/images/web.qcow2".into(),
            format: "qcow2".into(),
            virtual_size: 1 << 20,
            export_file: "vda.qcow2".into(),
            export_bytes: 0,
            sha256: None,
            full_reason: None,
        }],
        ..Default::default()
    });
    r
}

async fn run(
    fake: &FakeSource,
    run: BackupRun,
    dir: &Path,
    cancelled: bool,
) -> (BackupRun, MemoryJournal<BackupRun>) {
    let journal = MemoryJournal::default();
    let ctx = RunContext {
        target: TargetConfig::local_for_tests(dir),
        state_dir: dir.join("state"),
        history: vec![],
        poll: Duration::from_millis(1),
    };
    let (_tx, cancel) = watch::channel(cancelled);
    let done = BackupEngine::new(fake, &journal, ctx, run, Box::new(|_| {}), cancel)
        .run()
        .await;
    (done, journal)
}

fn failure(r: &BackupRun) -> (BackupPhase, Option<FailureReason>) {
    let s = r.status.clone().unwrap();
    (s.phase, s.failure.map(|f| f.reason))
}

/// The VM as the engine must leave it after a failure.
fn assert_left_as_found(fake: &FakeSource, staging: &Path) {
    let vm = fake.vm("web").unwrap();
    assert_eq!(vm.state, DomainState::Running, "running again");
    assert!(!vm.frozen, "thawed");
    assert!(
        !matches!(vm.job, JobState::Active { .. }),
        "no job left running"
    );
    assert!(vm.checkpoints.is_empty(), "{:?}", vm.checkpoints);
    let left: Vec<_> = std::fs::read_dir(staging).unwrap().collect();
    assert!(left.is_empty(), "staging is emptied: {left:?}");
}

#[tokio::test]
async fn a_run_that_died_frozen_and_paused_gives_the_guest_back_and_a_failed_job_start_leaves_nothing(
) {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("vda.qcow2"), b"half an export").unwrap();
    let fake = FakeSource::new();
    let uuid = fake.add(VM_XML, DomainState::Paused);
    fake.edit(&uuid, |v| v.frozen = true);
    let mut r = run_in(BackupPhase::Snapshotting, &uuid, &staging);
    {
        let s = r.status.as_mut().unwrap();
        s.guest_frozen = true;
        s.guest_paused = true;
    }
    fake.fail_next("begin_backup", "qemu said no");

    let (done, journal) = run(&fake, r, dir.path(), false).await;

    assert_eq!(
        failure(&done),
        (BackupPhase::Failed, Some(FailureReason::BackupJobFailed))
    );
    let calls = fake.calls();
    let first = |op: &str| calls.iter().position(|c| c.starts_with(op));
    assert!(
        first("resume") < first("begin_backup") && first("thaw") < first("begin_backup"),
        "the guest is given back before anything else: {calls:?}"
    );
    let recovered = journal.saved.lock().unwrap().iter().any(|r| {
        let s = r.status.as_ref().unwrap();
        s.phase == BackupPhase::Snapshotting && !s.guest_frozen && !s.guest_paused
    });
    assert!(
        recovered,
        "the thaw is journaled before the snapshot is retried"
    );
    assert_left_as_found(&fake, &staging);
}

#[tokio::test]
async fn a_job_that_fails_during_export_drops_the_runs_own_checkpoint_and_staging() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let fake = FakeSource::new();
    let uuid = fake.add(VM_XML, DomainState::Running);
    fake.hold_jobs();
    let r = run_in(BackupPhase::Snapshotting, &uuid, &staging);
    // The job begins and creates the checkpoint; then it fails as an I/O error would.
    let failing = async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if matches!(fake.vm(&uuid).unwrap().job, JobState::Active { .. }) {
                fake.edit(&uuid, |v| v.job = JobState::Failed("I/O error".into()));
                break;
            }
        }
    };
    let ((done, _), ()) = tokio::join!(run(&fake, r, dir.path(), false), failing);

    let s = done.status.clone().unwrap();
    assert_eq!(s.phase, BackupPhase::Failed);
    assert_eq!(s.failure.unwrap().message, "I/O error");
    assert!(fake.calls().contains(&format!("delete_checkpoint {uuid}")));
    assert_left_as_found(&fake, &staging);
}

#[tokio::test]
async fn a_run_cancelled_while_its_job_runs_aborts_the_job_and_ends_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let fake = FakeSource::new();
    let uuid = fake.add(VM_XML, DomainState::Running);
    fake.edit(&uuid, |v| {
        v.job = JobState::Active { done: 1, total: 2 };
        v.checkpoints.push("snapback-web-run".into());
    });
    let r = run_in(BackupPhase::Exporting, &uuid, &staging);

    let (done, _) = run(&fake, r, dir.path(), true).await;

    assert_eq!(
        failure(&done),
        (BackupPhase::Failed, Some(FailureReason::Interrupted))
    );
    assert!(fake.calls().contains(&format!("abort_job {uuid}")));
    assert_left_as_found(&fake, &staging);
}

#[tokio::test]
async fn a_domain_gone_during_the_run_fails_domain_not_found_without_touching_others() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let fake = FakeSource::new();
    fake.add(VM_XML, DomainState::Running);
    let r = run_in(
        BackupPhase::Exporting,
        "00000000-0000-0000-0000-000000000000",
        &staging,
    );

    let (done, _) = run(&fake, r, dir.path(), false).await;

    assert_eq!(
        failure(&done),
        (BackupPhase::Failed, Some(FailureReason::DomainNotFound))
    );
    let touched: Vec<String> = fake
        .calls()
        .into_iter()
        .filter(|c| !c.starts_with("domain "))
        .collect();
    assert!(touched.is_empty(), "only looked up: {touched:?}");
}

#[tokio::test]
async fn a_failed_run_forgets_an_lvm_snapshot_it_recorded_once_lvm_says_it_is_gone() {
    // Recorded before lvcreate, as the export does; no such volume group exists here (nor,
    // on a host without LVM, any lvs to ask), so removing it finds nothing to remove.
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let fake = FakeSource::new();
    let uuid = fake.add(VM_XML, DomainState::Running);
    let mut r = run_in(BackupPhase::Snapshotting, &uuid, &staging);
    r.status.as_mut().unwrap().lvm_snapshots = vec!["snapback-no-such-vg/snapback-0-vda".into()];
    fake.fail_next("begin_backup", "qemu said no");

    let (done, _) = run(&fake, r, dir.path(), false).await;

    assert_eq!(
        failure(&done),
        (BackupPhase::Failed, Some(FailureReason::BackupJobFailed))
    );
    let s = done.status.unwrap();
    assert!(s.lvm_snapshots.is_empty(), "{:?}", s.lvm_snapshots);
    assert!(
        !s.failure.unwrap().message.contains("LVM"),
        "cleanup had nothing to complain of"
    );
}

#[tokio::test]
async fn a_memory_run_saves_the_state_after_its_job_with_the_guest_paused_and_resumes_it_on_failure(
) {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let fake = FakeSource::new();
    let uuid = fake.add(VM_XML, DomainState::Running);
    fake.hold_jobs();
    let mut r = run_in(BackupPhase::Snapshotting, &uuid, &staging);
    r.status.as_mut().unwrap().memory_pending = true;
    fake.fail_next("save_memory", "write failed: No space left on device");
    // The job runs until this ends it; the save must wait for that, the guest still paused.
    let ending = async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if matches!(fake.vm(&uuid).unwrap().job, JobState::Active { .. }) {
                assert_eq!(fake.vm(&uuid).unwrap().state, DomainState::Paused);
                fake.edit(&uuid, |v| v.job = JobState::Completed);
                break;
            }
        }
    };
    let ((done, _), ()) = tokio::join!(run(&fake, r, dir.path(), false), ending);

    assert_eq!(
        failure(&done),
        (BackupPhase::Failed, Some(FailureReason::StagingFull))
    );
    let calls = fake.calls();
    let first = |op: &str| calls.iter().position(|c| c.starts_with(op)).unwrap();
    assert!(
        first("suspend") < first("begin_backup")
            && first("begin_backup") < first("save_memory")
            && first("save_memory") < first("resume"),
        "pause, job, state, resume: {calls:?}"
    );
    let s = done.status.unwrap();
    assert!(s.paused_seconds.is_some() && !s.memory_pending && s.memory_state.is_none());
    assert_left_as_found(&fake, &staging);
}
