//! The operations against `FakeSource`, which behaves as libvirt 9.0 / QEMU 7.2 do where it
//! matters here: a taken name is refused, and a revert with any checkpoint kills the VM.

use super::journal::{self, Entry, Op};
use super::take::{take, TakeOptions};
use super::{expire, list, revert};
use crate::libvirt::DomainState;
use crate::source::{FakeSource, Source};

const VM_XML: &str = "<domain type='kvm'><name>web</name>\
<uuid>11111111-2222-3333-4444-666666666666</uuid><devices>\
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
<source file='/images/web.qcow2'/><target dev='vda' bus='virtio'/></disk>\
<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
</devices></domain>";

const RAW_XML: &str = "<domain type='kvm'><name>raw</name>\
<uuid>11111111-2222-3333-4444-777777777777</uuid><devices>\
<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
<source file='/images/raw.img'/><target dev='vda' bus='virtio'/></disk>\
</devices></domain>";

fn quiesced() -> TakeOptions {
    TakeOptions {
        quiesce: true,
        policy: None,
        scheduled: None,
    }
}

#[tokio::test]
async fn points_taken_in_the_same_second_get_different_names_and_are_quiesced_and_measured() {
    let fake = FakeSource::new();
    let uuid = fake.add(VM_XML, DomainState::Running);
    let dir = tempfile::tempdir().unwrap();
    let a = take(&fake, dir.path(), "web", &quiesced()).await.unwrap();
    let b = take(&fake, dir.path(), "web", &quiesced()).await.unwrap();
    let c = take(&fake, dir.path(), "web", &quiesced()).await.unwrap();
    let mut names = vec![a.name.clone(), b.name.clone(), c.name.clone()];
    names.dedup();
    assert_eq!(names.len(), 3);
    let points = list(&fake, "web").await.unwrap();
    assert_eq!(points.len(), 3);
    assert!(points
        .iter()
        .all(|p| p.quiesced && p.memory && p.paused_ms.is_some()));
    let vm = fake.vm(&uuid).unwrap();
    assert!(!vm.frozen, "thawed after each take");
    assert_eq!(journal::read(dir.path(), &uuid).unwrap(), None);
}

#[tokio::test]
async fn a_domain_with_a_raw_disk_gets_no_point_and_a_reason() {
    let fake = FakeSource::new();
    fake.add(RAW_XML, DomainState::Running);
    let dir = tempfile::tempdir().unwrap();
    let e = take(&fake, dir.path(), "raw", &quiesced())
        .await
        .unwrap_err();
    assert_eq!(e.reason, crate::api::FailureReason::InvalidSpec);
    assert!(e.message.contains("vda (raw)"), "{}", e.message);
    assert!(fake.vm("raw").unwrap().snapshots.is_empty());
}

#[tokio::test]
async fn a_revert_with_checkpoints_drops_them_first_records_them_and_keeps_the_vm_running() {
    let fake = FakeSource::new();
    let uuid = fake.add(VM_XML, DomainState::Running);
    let dir = tempfile::tempdir().unwrap();
    let p = take(&fake, dir.path(), "web", &quiesced()).await.unwrap();
    fake.edit(&uuid, |v| v.checkpoints = vec!["cp1".into(), "cp2".into()]);
    let r = revert::revert(&fake, dir.path(), "web", &p.name)
        .await
        .unwrap();
    assert_eq!(r.dropped_checkpoints, vec!["cp1", "cp2"]);
    let vm = fake.vm(&uuid).unwrap();
    assert_eq!(
        vm.state,
        DomainState::Running,
        "the fake kills a VM reverted with bitmaps"
    );
    assert!(vm.checkpoints.is_empty());
    assert!(
        !vm.frozen,
        "a point taken frozen is thawed after the revert"
    );
    assert_eq!(
        fake.dropped_checkpoints(&uuid).await.unwrap(),
        vec!["cp1", "cp2"]
    );
    let calls = fake.calls();
    let pos = |op: &str| calls.iter().position(|c| c.starts_with(op)).unwrap();
    assert!(pos("record_dropped_checkpoints") < pos("delete_checkpoint"));
    assert!(pos("delete_checkpoint") < pos("revert_snapshot"));
}

#[tokio::test]
async fn a_failed_revert_leaves_the_vm_running_on_its_disks_and_no_journal() {
    let fake = FakeSource::new();
    let uuid = fake.add(VM_XML, DomainState::Running);
    let dir = tempfile::tempdir().unwrap();
    let p = take(&fake, dir.path(), "web", &quiesced()).await.unwrap();
    fake.fail_next("revert_snapshot", "qemu said no");
    let e = revert::revert(&fake, dir.path(), "web", &p.name)
        .await
        .unwrap_err();
    assert!(e.message.contains("qemu said no"), "{}", e.message);
    assert_eq!(fake.vm(&uuid).unwrap().state, DomainState::Running);
    assert_eq!(journal::read(dir.path(), &uuid).unwrap(), None);
}

#[tokio::test]
async fn a_killed_take_is_finished_by_the_next_operation_thawing_and_deleting_its_point() {
    let fake = FakeSource::new();
    let uuid = fake.add(VM_XML, DomainState::Running);
    let dir = tempfile::tempdir().unwrap();
    let p = take(&fake, dir.path(), "web", &quiesced()).await.unwrap();
    // As a take killed right after the snapshot was made leaves it.
    journal::write(
        dir.path(),
        &uuid,
        &Entry {
            op: Op::Take,
            point: p.name.clone(),
            may_be_frozen: true,
            dropped: vec![],
        },
    )
    .unwrap();
    fake.edit(&uuid, |v| v.frozen = true);
    let out = expire::expire(
        &fake,
        dir.path(),
        "web",
        &[],
        jiff::Timestamp::now(),
        None,
        &[],
    )
    .await
    .unwrap();
    assert!(out.deleted.is_empty() && out.kept.is_empty());
    let vm = fake.vm(&uuid).unwrap();
    assert!(!vm.frozen);
    assert!(vm.snapshots.is_empty());
    assert_eq!(journal::read(dir.path(), &uuid).unwrap(), None);
}
