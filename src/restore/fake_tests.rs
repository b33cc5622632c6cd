//! The restore engine's rollback and resume against the fake source: a failed in-place
//! restore puts the domain back on its old definition and restarts it, a failed restore as a
//! new domain removes what it defined, and a restore resumed after its define does not
//! define twice.

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use super::{RestoreContext, RestoreEngine};
use crate::api::{
    FailureReason, FirmwareKind, RestorePhase, RestoreRequest, RestoreRequestSpec,
    RestoreRequestStatus, RestoredDisk,
};
use crate::duplicity::TargetConfig;
use crate::libvirt::DomainState;
use crate::lifecycle::memory::MemoryJournal;
use crate::source::{FakeSource, Source};

const ORIGINAL: &str = "<domain type='kvm'><name>web</name>\
<uuid>11111111-2222-3333-4444-555555555555</uuid><devices>\
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
<source file='/images/web.qcow2'/><target dev='vda' bus='virtio'/></disk>\
</devices></domain>";

fn swapped_onto(disk: &Path) -> String {
    ORIGINAL.replace("/images/web.qcow2", &disk.display().to_string())
}

/// The definition of a restored copy `web-copy` on `disk`, with a UUID of its own.
fn copy_on(disk: &Path) -> String {
    swapped_onto(disk)
        .replace("<name>web</name>", "<name>web-copy</name>")
        .replace(
            "11111111-2222-3333-4444-555555555555",
            "99999999-2222-3333-4444-555555555555",
        )
}

fn request(in_place: bool, status: RestoreRequestStatus) -> RestoreRequest {
    let mut spec: RestoreRequestSpec =
        serde_json::from_value(serde_json::json!({"domain": "web", "targetRef": "t"})).unwrap();
    spec.in_place = in_place;
    spec.new_name = (!in_place).then(|| "web-copy".to_string());
    spec.start = true;
    let mut r = RestoreRequest::new("bring-back", spec);
    r.status = Some(status);
    r
}

/// A restore recorded in `phase` with its work dir and one restored disk written.
fn status_in(phase: RestorePhase, dir: &Path) -> RestoreRequestStatus {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let disk = dir.join("web-vda-restored.qcow2");
    std::fs::write(&disk, b"restored").unwrap();
    RestoreRequestStatus {
        phase,
        work_dir: Some(work.display().to_string()),
        disks: vec![RestoredDisk {
            name: "vda".into(),
            path: disk.display().to_string(),
            virtual_size: 1 << 20,
            verified: true,
            device: false,
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn run(fake: &FakeSource, req: RestoreRequest, dir: &Path) -> RestoreRequest {
    let journal = MemoryJournal::default();
    let ctx = RestoreContext {
        target: TargetConfig::local_for_tests(dir),
        state_dir: dir.join("state"),
    };
    let (_tx, cancel) = watch::channel(false);
    RestoreEngine::new(fake, &journal, ctx, req, Box::new(|_| {}), cancel)
        .run()
        .await
}

/// An in-place restore whose swap happened before a crash: the domain, found running, is
/// defined on the restored disk and off, and will not start.
fn swapped_and_failing_to_start(
    s: &mut RestoreRequestStatus,
    restored: &str,
) -> (FakeSource, String) {
    let fake = FakeSource::new();
    let uuid = fake.add(&swapped_onto(Path::new(restored)), DomainState::ShutOff);
    s.swapped = true;
    s.was_running = true;
    s.defined_uuid = Some(uuid.clone());
    fake.fail_next("start", "the restored guest does not boot");
    (fake, uuid)
}

fn outcome(r: &RestoreRequest) -> (RestorePhase, Option<FailureReason>) {
    let s = r.status.clone().unwrap();
    (s.phase, s.failure.map(|f| f.reason))
}

#[tokio::test]
async fn a_failed_in_place_restore_puts_the_domain_back_on_its_old_disks_and_restarts_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = status_in(RestorePhase::Starting, dir.path());
    let restored = s.disks[0].path.clone();
    std::fs::write(dir.path().join("work/original.xml"), ORIGINAL).unwrap();
    let (fake, uuid) = swapped_and_failing_to_start(&mut s, &restored);

    let done = run(&fake, request(true, s), dir.path()).await;

    assert_eq!(
        outcome(&done),
        (RestorePhase::Failed, Some(FailureReason::LibvirtError))
    );
    let vm = fake.vm(&uuid).unwrap();
    assert_eq!(vm.definition, ORIGINAL, "the original definition is back");
    assert_eq!(
        vm.state,
        DomainState::Running,
        "and it runs, as it did before"
    );
    assert!(
        !Path::new(&restored).exists(),
        "the restored disk is removed"
    );
    assert!(!dir.path().join("work").exists(), "the work dir is removed");
    assert!(!done.status.unwrap().swapped);
}

#[tokio::test]
async fn a_failed_restore_as_a_new_domain_undefines_it_and_removes_its_disks() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = status_in(RestorePhase::Starting, dir.path());
    let restored = s.disks[0].path.clone();
    let fake = FakeSource::new();
    fake.add(ORIGINAL, DomainState::Running);
    let uuid = fake.add(&copy_on(Path::new(&restored)), DomainState::ShutOff);
    s.defined_uuid = Some(uuid.clone());
    fake.fail_next("start", "the restored guest does not boot");

    let done = run(&fake, request(false, s), dir.path()).await;

    assert_eq!(outcome(&done).0, RestorePhase::Failed);
    assert!(fake.vm(&uuid).is_none(), "the new domain is undefined");
    assert!(!Path::new(&restored).exists(), "its disk is removed");
    let original = fake.vm("web").unwrap();
    assert_eq!(
        (original.definition.as_str(), original.state),
        (ORIGINAL, DomainState::Running),
        "the original domain is not touched"
    );
}

#[tokio::test]
async fn a_restore_resumed_after_its_define_finds_its_domain_and_defines_nothing_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = status_in(RestorePhase::Defining, dir.path());
    let restored = s.disks[0].path.clone();
    let fake = FakeSource::new();
    let uuid = fake.add(&copy_on(Path::new(&restored)), DomainState::ShutOff);
    s.defined_uuid = Some(uuid.clone());

    let done = run(&fake, request(false, s), dir.path()).await;

    assert_eq!(outcome(&done), (RestorePhase::Succeeded, None));
    let calls = fake.calls();
    assert!(
        !calls.iter().any(|c| c.starts_with("define")),
        "no second define: {calls:?}"
    );
    assert_eq!(fake.vm(&uuid).unwrap().state, DomainState::Running);
    assert!(Path::new(&restored).exists(), "the restored disk stays");
}

/// A restore as `web-copy`, at Defining, of point `r1` of a UEFI domain whose manifest lists
/// `firmware` (files the test writes into the fetched member directory it answers).
fn uefi_point(dir: &Path, xml_os: &str, firmware: serde_json::Value) -> (RestoreRequest, PathBuf) {
    let mut s = status_in(RestorePhase::Defining, dir);
    let member = dir.join("work/fetch/r1");
    std::fs::create_dir_all(&member).unwrap();
    let efi = swapped_onto(Path::new("/images/web.qcow2"))
        .replace("<devices>", &format!("{xml_os}<devices>"));
    std::fs::write(member.join("r1.domain.xml"), &efi).unwrap();
    let manifest = serde_json::json!({
        "apiVersion": "snapback.dev/v1alpha1", "run": "r1", "domain": "web",
        "type": "Full", "chain": "r1", "chainIndex": 0, "online": true,
        "disks": [{"name": "vda", "source": "/images/web.qcow2", "format": "qcow2",
            "virtualSize": 1048576, "exportFile": "r1.vda.qcow2"}],
        "firmware": firmware,
    });
    std::fs::write(member.join("r1.manifest.json"), manifest.to_string()).unwrap();
    s.point = Some(crate::api::PointRef {
        run: "r1".into(),
        time: "2026-01-01T00:00:00Z".parse().unwrap(),
        type_: None,
        chain: "r1".into(),
        chain_index: 0,
    });
    let mut req = request(false, s);
    req.spec.start = false;
    (req, member)
}

#[tokio::test]
async fn a_uefi_point_saved_before_firmware_state_was_kept_says_so_and_still_gets_its_own_store() {
    let dir = tempfile::tempdir().unwrap();
    let os = "<os firmware='efi'><type>hvm</type><nvram>/nv/web_VARS.fd</nvram>\
              <kernel>/nonexistent/vmlinuz</kernel></os>";
    let (req, _) = uefi_point(dir.path(), os, serde_json::json!([]));
    let restored = req.status.as_ref().unwrap().disks[0].path.clone();
    let fake = FakeSource::new();
    fake.firmware_root(&dir.path().join("fw"));
    fake.add(ORIGINAL, DomainState::Running);

    let done = run(&fake, req, dir.path()).await;

    assert_eq!(outcome(&done), (RestorePhase::Succeeded, None));
    let done_conditions = done.status.unwrap().conditions;
    let c = done_conditions
        .iter()
        .find(|c| c.type_ == "FirmwareRestored")
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "NotInBackup")
    );
    let copy = fake.vm("web-copy").unwrap();
    let own = dir.path().join("fw/nvram/web-copy_VARS.fd");
    assert!(
        copy.definition.contains(&own.display().to_string())
            && !copy.definition.contains("/nv/web_VARS.fd"),
        "{}",
        copy.definition
    );
    assert!(Path::new(&restored).exists());
}

/// A point of a UEFI domain with a TPM whose saved state is `nvram` and `tpm`, and the fake it
/// restores onto; the fetched TPM file holds `fetched_tpm`.
fn tpm_point(dir: &Path, fetched_tpm: &[u8]) -> (RestoreRequest, FakeSource) {
    let sum = |b: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b));
    let saved = serde_json::json!([
        {"kind": "Nvram", "file": "r1.nvram.fd", "source": "/nv/web_VARS.fd", "sha256": sum(b"variables")},
        {"kind": "TpmState", "file": "r1.tpm2-00.permall", "source": "/s/u/tpm2-00.permall", "sha256": sum(b"tpm keys")},
    ]);
    let (req, member) = uefi_point(dir, "<os firmware='efi'><type>hvm</type></os>", saved);
    std::fs::write(member.join("r1.nvram.fd"), b"variables").unwrap();
    std::fs::write(member.join("r1.tpm2-00.permall"), fetched_tpm).unwrap();
    let xml = std::fs::read_to_string(member.join("r1.domain.xml")).unwrap();
    let tpm = "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm></devices>";
    std::fs::write(member.join("r1.domain.xml"), xml.replace("</devices>", tpm)).unwrap();
    let fake = FakeSource::new();
    fake.firmware_root(&dir.join("fw"));
    fake.add(ORIGINAL, DomainState::Running);
    (req, fake)
}

#[tokio::test]
async fn a_restored_tpm_state_and_its_directory_belong_to_the_account_the_tpm_emulator_runs_as() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (req, fake) = tpm_point(dir.path(), b"tpm keys");
    fake.tpm_owner(65534, 65534);

    let done = run(&fake, req, dir.path()).await;

    assert_eq!(outcome(&done), (RestorePhase::Succeeded, None));
    let copy_uuid = fake.vm("web-copy").unwrap().uuid;
    let state = fake.firmware_home(FirmwareKind::TpmState, "web-copy", &copy_uuid);
    assert_eq!(std::fs::read(&state).unwrap(), b"tpm keys");
    for owned in [state.as_path(), state.parent().unwrap()] {
        let m = std::fs::metadata(owned).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{}", owned.display());
    }
    let nvram = fake.firmware_home(FirmwareKind::Nvram, "web-copy", &copy_uuid);
    let (m, above) = (
        std::fs::metadata(&nvram).unwrap(),
        std::fs::metadata(dir.path()).unwrap(),
    );
    assert_eq!((m.uid(), m.gid()), (above.uid(), above.gid()));
}

#[tokio::test]
async fn a_fetched_firmware_file_that_differs_from_its_recorded_sum_fails_the_restore_and_places_nothing(
) {
    let dir = tempfile::tempdir().unwrap();
    let (req, fake) = tpm_point(dir.path(), b"tpm keys, bit-rotted");

    let done = run(&fake, req, dir.path()).await;

    assert_eq!(
        outcome(&done),
        (
            RestorePhase::Failed,
            Some(FailureReason::VerificationFailed)
        )
    );
    assert!(fake.vm("web-copy").is_none());
    let fw = dir.path().join("fw");
    let left: Vec<_> = walk(&fw).into_iter().filter(|p| p.is_file()).collect();
    assert!(left.is_empty(), "{left:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let p = e.path();
            let mut below = walk(&p);
            below.push(p);
            below
        })
        .collect()
}

#[tokio::test]
async fn a_failed_in_place_restore_puts_the_replaced_firmware_state_back_before_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = status_in(RestorePhase::Starting, dir.path());
    let restored = s.disks[0].path.clone();
    std::fs::write(dir.path().join("work/original.xml"), ORIGINAL).unwrap();
    let home = dir.path().join("web_VARS.fd");
    let kept = dir.path().join("web_VARS.fd.snapback-replaced-bring-back");
    std::fs::write(&home, b"the point's variables").unwrap();
    std::fs::write(&kept, b"the domain's own variables").unwrap();
    s.replaced_firmware = vec![format!("{}={}", home.display(), kept.display())];
    let (fake, uuid) = swapped_and_failing_to_start(&mut s, &restored);

    let done = run(&fake, request(true, s), dir.path()).await;

    assert_eq!(outcome(&done).0, RestorePhase::Failed);
    assert_eq!(std::fs::read(&home).unwrap(), b"the domain's own variables");
    assert!(!kept.exists());
    assert_eq!(fake.vm(&uuid).unwrap().state, DomainState::Running);
}

#[tokio::test]
async fn a_resumed_restore_starts_the_copy_from_the_points_memory_state_instead_of_booting_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut req, member) = uefi_point(dir.path(), "", serde_json::json!([]));
    let state = member.join("r1.memory.state");
    std::fs::write(&state, b"saved ram").unwrap();
    let sum = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"saved ram"));
    let manifest = member.join("r1.manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["memory"] = serde_json::json!({"file": "r1.memory.state", "sha256": sum, "bytes": 9});
    std::fs::write(&manifest, m.to_string()).unwrap();
    req.spec.resume = true;
    // The point was quiesced: its memory holds the guest's filesystems frozen.
    let with_agent = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices>";
    let xml = std::fs::read_to_string(member.join("r1.domain.xml")).unwrap();
    std::fs::write(
        member.join("r1.domain.xml"),
        xml.replace("</devices>", with_agent),
    )
    .unwrap();
    let fake = FakeSource::new();
    fake.add(ORIGINAL, DomainState::Running);

    let done = run(&fake, req, dir.path()).await;

    assert_eq!(outcome(&done), (RestorePhase::Succeeded, None));
    let copy = fake.vm("web-copy").unwrap();
    assert_eq!(copy.state, DomainState::Running);
    let calls = fake.calls();
    assert!(
        calls.contains(&format!("restore_memory {}", copy.uuid))
            && !calls.iter().any(|c| c.starts_with("start ")),
        "resumed, not booted: {calls:?}"
    );
    let at = |op: &str| calls.iter().position(|c| c.starts_with(op)).unwrap();
    assert!(
        at("restore_memory") < at("thaw"),
        "the resumed copy's filesystems are thawed: {calls:?}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path().join("work"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".resume"))
        .collect();
    assert!(left.is_empty(), "the copy handed to the source is removed");
}
