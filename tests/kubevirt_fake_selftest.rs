//! The fake KubeVirt and CDI (tests/kubevirt_fake) checked on the real stack: the stand-in
//! apiserver, libvirtd with the test guest, qemu-img, and HTTPS through the fake's CA.

mod apiserver;
mod common;
mod kubevirt_fake;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use apiserver::ApiServer;
use common::{run_ok, virsh_ok, Guest, GuestOpts};
use kubevirt_fake::*;

const NS: &str = "vms";
const LONG: Duration = Duration::from_secs(180);

/// Dropped in this order: the fake (its jobs and servers), the stand-in, then the guest.
struct World {
    fake: KubevirtFake,
    api: ApiServer,
    guest: Guest,
}

fn world(agent: bool, prefill_mib: u64) -> World {
    let guest = Guest::new(
        "kvfake",
        GuestOpts {
            disk_mib: 128,
            prefill_mib,
            agent_channel: agent,
            ..Default::default()
        },
    );
    let api = ApiServer::start();
    let fake = KubevirtFake::start(&api);
    World { fake, api, guest }
}

fn pvc(api: &ApiServer, name: &str) {
    api.create_all(&[json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
                 "resources": {"requests": {"storage": "2Gi"}}},
    })]);
}

fn tracker(api: &ApiServer, name: &str, vm: &str) {
    api.create_all(&[json!({
        "apiVersion": "backup.kubevirt.io/v1alpha1", "kind": "VirtualMachineBackupTracker",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm}},
    })]);
}

fn backup_doc(name: &str, source: Value, pvc: &str, extra: Value) -> Value {
    let mut spec = json!({"source": source, "pvcName": pvc});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({
        "apiVersion": "backup.kubevirt.io/v1alpha1", "kind": "VirtualMachineBackup",
        "metadata": {"name": name, "namespace": NS}, "spec": spec,
    })
}

fn via_tracker(t: &str) -> Value {
    json!({"apiGroup": "backup.kubevirt.io", "kind": "VirtualMachineBackupTracker", "name": t})
}

fn via_vm(vm: &str) -> Value {
    json!({"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm})
}

fn condition(v: &Value, ty: &str) -> Value {
    v["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == ty)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until the backup is terminal (Complete or Failed true) and returns it.
fn finished(w: &World, name: &str) -> Value {
    w.fake.wait_for(&format!("backup {name} to end"), LONG, || {
        let b = w.fake.get(BACKUP, NS, name)?;
        let done = ["Complete", "Failed"]
            .iter()
            .any(|t| condition(&b, t)["status"] == "True");
        done.then_some(b)
    })
}

fn backup_file(w: &World, pvc: &str, b: &Value, vm: &str) -> PathBuf {
    let created: jiff::Timestamp = b["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ts = created.strftime("%Y-%m-%d_%H-%M-%S").to_string();
    let name = b["metadata"]["name"].as_str().unwrap();
    w.fake
        .pvc_dir(NS, pvc)
        .join(vm)
        .join(format!("{name}-{ts}"))
        .join(format!("{name}-rootdisk.qcow2"))
}

fn image_info(p: &Path) -> Value {
    serde_json::from_str(&run_ok(
        "qemu-img",
        &["info", "-U", "--output=json", p.to_str().unwrap()],
    ))
    .unwrap()
}

#[test]
fn a_full_then_an_incremental_through_a_tracker_write_kubevirts_layout_and_rebuild_the_paused_disk()
{
    let w = world(true, 48);
    w.fake.add_vm(
        NS,
        "vm1",
        &w.guest.name,
        &[("changedBlockTracking", "true")],
    );
    let vmi = w.fake.get(VMI, NS, "vm1").unwrap();
    assert_eq!(vmi["status"]["changedBlockTracking"]["state"], "Enabled");
    pvc(&w.api, "target");
    tracker(&w.api, "t1", "vm1");

    w.api
        .create_all(&[backup_doc("full", via_tracker("t1"), "target", json!({}))]);
    let full = finished(&w, "full");
    assert_eq!(
        condition(&full, "Complete")["reason"],
        "Completed",
        "{full:#}"
    );
    assert_eq!(condition(&full, "Progressing")["status"], "False");
    // The test guest answers the agent's freeze (it has no filesystems to freeze).
    assert_eq!(condition(&full, "Quiesced")["reason"], "QuiesceSucceeded");
    assert_eq!(full["status"]["type"], "Full");
    assert_eq!(
        full["metadata"]["finalizers"],
        json!(["backup.kubevirt.io/vmbackup-protection"])
    );
    let full_file = backup_file(&w, "target", &full, "vm1");
    let cp1 = full["status"]["checkpointName"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        full_file.parent().unwrap().file_name().unwrap().to_str(),
        Some(cp1.as_str()),
        "the checkpoint and the directory carry the same <backup>-<time>"
    );
    assert_eq!(image_info(&full_file)["format"], "qcow2");
    assert_eq!(
        full["status"]["includedVolumes"],
        json!([{"volumeName": "rootdisk", "diskTarget": "vda"}])
    );
    let t = w.fake.get(TRACKER, NS, "t1").unwrap();
    assert_eq!(t["status"]["latestCheckpoint"]["name"], cp1.as_str());
    assert_eq!(w.fake.domain_checkpoints(NS, "vm1"), vec![cp1.clone()]);

    // More writes, then the incremental with the guest paused so the disk holds still.
    let n = w.guest.writes();
    w.guest.wait_for_writes(n + 40);
    virsh_ok(&["suspend", &w.guest.name]);
    // A paused guest's agent cannot freeze: skip it, or the backup completes with a warning.
    w.api.create_all(&[backup_doc(
        "incr",
        via_tracker("t1"),
        "target",
        json!({"skipQuiesce": true}),
    )]);
    let incr = finished(&w, "incr");
    let reference = w.fake.pvc_dir(NS, "target").with_extension("ref.raw");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-O",
            "raw",
            w.guest.disk.to_str().unwrap(),
            reference.to_str().unwrap(),
        ],
    );
    virsh_ok(&["resume", &w.guest.name]);
    assert_eq!(
        condition(&incr, "Complete")["reason"],
        "Completed",
        "{incr:#}"
    );
    assert_eq!(incr["status"]["type"], "Incremental");
    assert_eq!(condition(&incr, "Quiesced")["reason"], "QuiesceSkipped");
    let incr_file = backup_file(&w, "target", &incr, "vm1");
    let cp2 = incr["status"]["checkpointName"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(cp1, cp2);
    let t = w.fake.get(TRACKER, NS, "t1").unwrap();
    assert_eq!(t["status"]["latestCheckpoint"]["name"], cp2.as_str());

    let full_size = image_info(&full_file)["actual-size"].as_u64().unwrap();
    let incr_size = image_info(&incr_file)["actual-size"].as_u64().unwrap();
    assert!(
        incr_size * 3 < full_size,
        "the incremental ({incr_size}) holds the changed clusters, not the disk ({full_size})"
    );

    // Rebuild: the incremental on top of the full, flattened, is the paused disk.
    let work = tempfile::tempdir().unwrap();
    let f = work.path().join("full.qcow2");
    let i = work.path().join("incr.qcow2");
    std::fs::copy(&full_file, &f).unwrap();
    std::fs::copy(&incr_file, &i).unwrap();
    run_ok(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-F",
            "qcow2",
            "-b",
            f.to_str().unwrap(),
            i.to_str().unwrap(),
        ],
    );
    let rebuilt = work.path().join("rebuilt.raw");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            i.to_str().unwrap(),
            rebuilt.to_str().unwrap(),
        ],
    );
    let same = std::fs::read(&rebuilt).unwrap() == std::fs::read(&reference).unwrap();
    let _ = std::fs::remove_file(&reference);
    assert!(
        same,
        "the rebuilt chain differs from the disk at the incremental"
    );
    // And the full alone is not that disk: the incremental carries the writes.
    let full_raw = work.path().join("full.raw");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            f.to_str().unwrap(),
            full_raw.to_str().unwrap(),
        ],
    );
    assert_ne!(
        std::fs::read(&full_raw).unwrap(),
        std::fs::read(&rebuilt).unwrap(),
        "the guest wrote between the backups"
    );
}

#[test]
fn a_guest_without_an_agent_completes_with_a_warning_and_skipping_quiesce_completes_cleanly() {
    let w = world(false, 0);
    w.fake.add_vm(
        NS,
        "vm2",
        &w.guest.name,
        &[("changedBlockTracking", "true")],
    );
    pvc(&w.api, "target");
    w.api
        .create_all(&[backup_doc("noagent", via_vm("vm2"), "target", json!({}))]);
    let b = finished(&w, "noagent");
    let complete = condition(&b, "Complete");
    assert_eq!(complete["reason"], "CompletedWithWarning", "{b:#}");
    assert!(complete["message"]
        .as_str()
        .unwrap()
        .starts_with("Completed VirtualMachineBackup, warning: "));
    assert_eq!(condition(&b, "Quiesced")["status"], "False");
    assert_eq!(condition(&b, "Quiesced")["reason"], "QuiesceFailed");
    assert_eq!(
        condition(&b, "Progressing")["reason"],
        "CompletedWithWarning"
    );
    assert!(w.fake.events_for(NS, "noagent").iter().any(|e| e["reason"]
        == "VirtualMachineBackupCompletedWithWarning"
        && e["type"] == "Warning"));
    assert!(backup_file(&w, "target", &b, "vm2").is_file());

    // A backup straight from the VM is Full and leaves no tracker behind.
    assert_eq!(b["status"]["type"], "Full");
    w.api.create_all(&[backup_doc(
        "skipped",
        via_vm("vm2"),
        "target",
        json!({"skipQuiesce": true}),
    )]);
    let b = finished(&w, "skipped");
    assert_eq!(condition(&b, "Complete")["reason"], "Completed", "{b:#}");
    assert_eq!(condition(&b, "Quiesced")["reason"], "QuiesceSkipped");
    assert!(w
        .fake
        .events_for(NS, "skipped")
        .iter()
        .any(|e| e["reason"] == "VirtualMachineBackupCompletedSuccessfully"));
}

#[test]
fn a_restart_keeps_the_checkpoint_but_a_lost_bitmap_clears_the_tracker_and_the_next_backup_is_full()
{
    let w = world(true, 0);
    w.fake.add_vm(
        NS,
        "vm3",
        &w.guest.name,
        &[("changedBlockTracking", "true")],
    );
    pvc(&w.api, "target");
    tracker(&w.api, "t3", "vm3");
    let opts = json!({"skipQuiesce": true});
    w.api
        .create_all(&[backup_doc("one", via_tracker("t3"), "target", opts.clone())]);
    let one = finished(&w, "one");
    let cp1 = one["status"]["checkpointName"]
        .as_str()
        .unwrap()
        .to_string();

    // A plain restart: the bitmap survives in the qcow2, the checkpoint is redefined.
    w.fake.restart_vm(NS, "vm3");
    let t = w.fake.wait_for("redefinition", LONG, || {
        let t = w.fake.get(TRACKER, NS, "t3")?;
        t["status"]
            .get("checkpointRedefinitionRequired")
            .is_none()
            .then_some(t)
    });
    assert_eq!(t["status"]["latestCheckpoint"]["name"], cp1.as_str());
    assert_eq!(w.fake.domain_checkpoints(NS, "vm3"), vec![cp1.clone()]);
    w.api
        .create_all(&[backup_doc("two", via_tracker("t3"), "target", opts.clone())]);
    let two = finished(&w, "two");
    assert_eq!(two["status"]["type"], "Incremental", "{two:#}");
    let cp2 = two["status"]["checkpointName"]
        .as_str()
        .unwrap()
        .to_string();

    // A restart that loses the bitmaps: redefinition fails, the tracker forgets.
    w.fake.lose_checkpoints(NS, "vm3");
    let t = w.fake.wait_for("the tracker to forget", LONG, || {
        let t = w.fake.get(TRACKER, NS, "t3")?;
        t["status"].get("latestCheckpoint").is_none().then_some(t)
    });
    assert!(t["status"].get("checkpointRedefinitionRequired").is_none());
    let ev = w
        .fake
        .events_for(NS, "t3")
        .into_iter()
        .find(|e| e["reason"] == "CheckpointRedefinitionFailed")
        .expect("a CheckpointRedefinitionFailed event");
    assert_eq!(ev["type"], "Warning");
    assert!(ev["message"]
        .as_str()
        .unwrap()
        .contains(&format!("Failed to redefine checkpoint {cp2}")));
    assert!(w.fake.domain_checkpoints(NS, "vm3").is_empty());
    w.api
        .create_all(&[backup_doc("three", via_tracker("t3"), "target", opts)]);
    let three = finished(&w, "three");
    assert_eq!(condition(&three, "Complete")["status"], "True", "{three:#}");
    assert_eq!(three["status"]["type"], "Full");
    let t = w.fake.get(TRACKER, NS, "t3").unwrap();
    assert_eq!(
        t["status"]["latestCheckpoint"]["name"],
        three["status"]["checkpointName"]
    );
}

fn post(api: &ApiServer, doc: &Value) -> (u16, String) {
    api.raw_request(
        "POST",
        &format!("/apis/backup.kubevirt.io/v1alpha1/namespaces/{NS}/virtualmachinebackups"),
        "application/json",
        &doc.to_string(),
        Duration::from_secs(20),
    )
}

#[test]
fn a_vm_without_cbt_waits_initializing_until_selected_and_restarted_and_the_webhook_refuses_what_kubevirts_does(
) {
    let w = world(true, 0);
    w.fake.add_vm(NS, "vm4", &w.guest.name, &[("team", "a")]);
    assert!(w.fake.get(VMI, NS, "vm4").unwrap()["status"]
        .get("changedBlockTracking")
        .is_none());
    pvc(&w.api, "target");
    let doc = backup_doc(
        "waits",
        via_vm("vm4"),
        "target",
        json!({"skipQuiesce": true}),
    );
    assert_eq!(post(&w.api, &doc).0, 201);
    let b = w.fake.wait_for("Initializing", LONG, || {
        let b = w.fake.get(BACKUP, NS, "waits")?;
        (condition(&b, "Progressing")["reason"] == "Initializing").then_some(b)
    });
    assert_eq!(
        condition(&b, "Progressing")["message"],
        "vm vm4 has no ChangedBlockTracking, cannot start backup"
    );
    assert!(b["status"].get("type").is_none());

    // One non-terminal backup per source.
    let second = backup_doc("second", via_vm("vm4"), "target", json!({}));
    let (code, text) = post(&w.api, &second);
    assert_eq!(code, 422, "{text}");
    assert!(
        text.contains("VirtualMachineBackup \\\"waits\\\" in progress for source"),
        "{text}"
    );

    // Selected through the namespace: pending a restart, still waiting.
    w.api
        .create_all(&[json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NS, "labels": {"backup": "cbt"}}})]);
    w.fake
        .set_cbt_selectors(json!({"namespaceLabelSelector": {"matchExpressions": [
            {"key": "backup", "operator": "In", "values": ["cbt"]}]}}));
    let vmi = w.fake.get(VMI, NS, "vm4").unwrap();
    assert_eq!(
        vmi["status"]["changedBlockTracking"]["state"],
        "PendingRestart"
    );
    let b = w.fake.get(BACKUP, NS, "waits").unwrap();
    assert_eq!(condition(&b, "Progressing")["reason"], "Initializing");

    // Restarted while migrating: still waiting, with that reason.
    w.fake.set_migrating(NS, "vm4", true);
    w.fake.restart_vm(NS, "vm4");
    let b = w.fake.wait_for("the migration message", LONG, || {
        let b = w.fake.get(BACKUP, NS, "waits")?;
        condition(&b, "Progressing")["message"]
            .as_str()?
            .contains("currently migrating")
            .then_some(b)
    });
    assert_eq!(condition(&b, "Progressing")["reason"], "Initializing");
    w.fake.set_migrating(NS, "vm4", false);
    let b = finished(&w, "waits");
    assert_eq!(condition(&b, "Complete")["reason"], "Completed", "{b:#}");

    // With the gate off the webhook refuses new backups and trackers.
    w.fake.set_feature_gates(&["UtilityVolumes"]);
    let (code, text) = post(&w.api, &second);
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains("IncrementalBackup feature gate not enabled"),
        "{text}"
    );
    let vmi = w.fake.get(VMI, NS, "vm4").unwrap();
    assert_eq!(
        vmi["status"]["changedBlockTracking"]["state"],
        "IncrementalBackupFeatureGateDisabled"
    );
}

#[test]
fn a_backup_into_a_pvc_too_small_fails_as_kubevirt_reports_it() {
    let w = world(true, 32);
    w.fake.add_vm(
        NS,
        "vm5",
        &w.guest.name,
        &[("changedBlockTracking", "true")],
    );
    pvc(&w.api, "small");
    w.fake.settle();
    w.fake.limit_pvc(NS, "small", 1 << 20);
    tracker(&w.api, "t5", "vm5");
    w.api.create_all(&[backup_doc(
        "nospace",
        via_tracker("t5"),
        "small",
        json!({"skipQuiesce": true}),
    )]);
    let b = finished(&w, "nospace");
    let failed = condition(&b, "Failed");
    assert_eq!(failed["status"], "True", "{b:#}");
    assert_eq!(failed["reason"], "Failed");
    assert!(failed["message"]
        .as_str()
        .unwrap()
        .starts_with("Backup has failed: "));
    assert_eq!(condition(&b, "Progressing")["status"], "False");
    // The tracker advances only on success.
    let t = w.fake.get(TRACKER, NS, "t5").unwrap();
    assert!(t["status"].get("latestCheckpoint").is_none(), "{t:#}");
    assert!(w
        .fake
        .events_for(NS, "nospace")
        .iter()
        .any(|e| e["reason"] == "VirtualMachineBackupFailed"));
}

fn url_of(export: &Value, format: &str) -> String {
    export["status"]["links"]["internal"]["volumes"][0]["formats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["format"] == format)
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn an_export_of_the_backup_pvc_serves_its_files_as_virt_exportserver_does_and_only_with_the_token()
{
    let w = world(true, 8);
    w.fake.add_vm(
        NS,
        "vm6",
        &w.guest.name,
        &[("changedBlockTracking", "true")],
    );
    pvc(&w.api, "target");
    w.api.create_all(&[backup_doc(
        "b6",
        via_vm("vm6"),
        "target",
        json!({"skipQuiesce": true}),
    )]);
    let b = finished(&w, "b6");
    let file = backup_file(&w, "target", &b, "vm6");
    let rel = file
        .strip_prefix(w.fake.pvc_dir(NS, "target"))
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    std::fs::write(w.fake.pvc_dir(NS, "target").join("a b.txt"), "hello\n").unwrap();

    w.api.create_all(&[
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "tok", "namespace": NS},
               "stringData": {"token": "s3cret"}}),
        json!({"apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport",
               "metadata": {"name": "ex", "namespace": NS},
               "spec": {"source": {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "target"},
                        "tokenSecretRef": "tok"}}),
    ]);
    let ex = w.fake.wait_for("the export to be Ready", LONG, || {
        let e = w.fake.get(EXPORT, NS, "ex")?;
        (e["status"]["phase"] == "Ready").then_some(e)
    });
    assert_eq!(condition(&ex, "Ready")["reason"], "PodReady");
    assert_eq!(
        ex["status"]["links"]["internal"]["volumes"][0]["name"],
        "target"
    );
    let ca = ex["status"]["links"]["internal"]["cert"].as_str().unwrap();
    let dir = url_of(&ex, "dir");
    assert!(dir.ends_with("/volumes/target/dir"), "{dir}");
    assert!(url_of(&ex, "tar.gz").ends_with("/volumes/target/disk.tar.gz"));

    let get =
        |url: &str, hdrs: &[(&str, &str)]| https_request(ca, "GET", url, hdrs, Vec::new()).unwrap();
    let tok = [("x-kubevirt-export-token", "s3cret")];
    // Without the token, or with another: 401.
    assert_eq!(get(&format!("{dir}/{rel}"), &[]).status, 401);
    assert_eq!(
        get(
            &format!("{dir}/{rel}"),
            &[("x-kubevirt-export-token", "nope")]
        )
        .status,
        401
    );
    // The subtree root without its slash is redirected before any token check.
    let r = get(&dir, &[]);
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/volumes/target/dir/"));
    // Listings as Go's FileServer writes them; a directory without its slash is redirected.
    let root = get(&format!("{dir}/"), &tok);
    assert_eq!(root.status, 200);
    assert_eq!(
        root.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        root.text(),
        "<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n\
         <a href=\"a%20b.txt\">a b.txt</a>\n<a href=\"vm6/\">vm6/</a>\n</pre>\n"
    );
    let r = get(&format!("{dir}/vm6"), &tok);
    assert_eq!((r.status, r.header("location")), (301, Some("vm6/")));
    let sub = get(&format!("{dir}/vm6/"), &tok).text();
    let inner_dir = file
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        sub.contains(&format!("<a href=\"{inner_dir}/\">{inner_dir}/</a>")),
        "{sub}"
    );
    // A file, whole and by range; the token may also come as a query parameter.
    let want = std::fs::read(&file).unwrap();
    let whole = get(&format!("{dir}/{rel}?x-kubevirt-export-token=s3cret"), &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        whole.header("content-type"),
        Some("application/octet-stream")
    );
    assert!(whole.body == want, "the downloaded file differs");
    let part = get(
        &format!("{dir}/{rel}"),
        &[
            ("x-kubevirt-export-token", "s3cret"),
            ("range", "bytes=4-11"),
        ],
    );
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 4-11/{}", want.len()).as_str())
    );
    assert_eq!(part.body, want[4..12]);
    assert_eq!(get(&format!("{dir}/missing"), &tok).status, 404);
    // The archive: every file of the claim.
    let tgz = get(&url_of(&ex, "tar.gz"), &tok);
    assert_eq!(tgz.status, 200);
    let work = tempfile::tempdir().unwrap();
    let t = work.path().join("x.tar.gz");
    std::fs::write(&t, &tgz.body).unwrap();
    let listing = run_ok("tar", &["-tzf", t.to_str().unwrap()]);
    assert!(
        listing.lines().any(|l| l == format!("./{rel}")),
        "{listing}"
    );
    assert!(listing.lines().any(|l| l == "./a b.txt"), "{listing}");
}

/// CDI's upload: (status, body) of a POST to the proxy.
fn upload(w: &World, auth: Option<&str>, body: Vec<u8>) -> (u16, String) {
    let url = format!("{}/v1beta1/upload", w.fake.upload_proxy_url());
    let mut h = Vec::new();
    if let Some(a) = auth {
        h.push(("authorization", a));
    }
    let r = https_request(&w.fake.ca_pem(), "POST", &url, &h, body).unwrap();
    (r.status, r.text())
}

#[test]
fn a_cdi_upload_becomes_a_raw_disk_img_once_ready_and_a_backing_file_or_a_bad_token_is_refused() {
    // No guest is needed; the world's guest is left idle.
    let w = world(false, 0);
    let cfg = w.fake.get(CDICONFIG, "", "config").unwrap();
    assert_eq!(
        format!(
            "https://{}",
            cfg["status"]["uploadProxyURL"].as_str().unwrap()
        ),
        w.fake.upload_proxy_url()
    );
    w.fake.hold_uploads(true);
    w.api.create_all(&[json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": "restored", "namespace": NS},
        "spec": {"source": {"upload": {}},
                 "storage": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}},
    })]);
    w.fake.wait_for("UploadScheduled", LONG, || {
        let dv = w.fake.get(DATAVOLUME, NS, "restored")?;
        (dv["status"]["phase"] == "UploadScheduled").then_some(())
    });
    let (code, text) = w.api.raw_request(
        "POST",
        &format!("/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{NS}/uploadtokenrequests"),
        "application/json",
        &json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
                "metadata": {"name": "restored", "namespace": NS},
                "spec": {"pvcName": "restored"}})
        .to_string(),
        Duration::from_secs(20),
    );
    assert!(code == 200 || code == 201, "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    let answer: Value = serde_json::from_str(body).unwrap();
    let token = answer["status"]["token"].as_str().unwrap().to_string();
    assert!(
        w.fake.get(UPLOAD_TOKEN, NS, "restored").is_none(),
        "nothing is stored"
    );
    let bearer = format!("Bearer {token}");

    // The source: random data in a raw image, uploaded as qcow2.
    let work = tempfile::tempdir().unwrap();
    let raw = work.path().join("src.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(16 << 20).unwrap();
    drop(f);
    run_ok(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", raw.display()),
            "bs=1M",
            "count=3",
            "seek=5",
            "conv=notrunc",
            "status=none",
        ],
    );
    let qcow = work.path().join("src.qcow2");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            qcow.to_str().unwrap(),
        ],
    );
    let qcow_bytes = std::fs::read(&qcow).unwrap();

    let (code, text) = upload(&w, Some(&bearer), qcow_bytes.clone());
    assert_eq!(code, 503, "not ready yet: {text}");
    assert_eq!(upload(&w, None, qcow_bytes.clone()).0, 400);
    assert_eq!(upload(&w, Some("Basic abc"), qcow_bytes.clone()).0, 400);
    assert_eq!(
        upload(&w, Some("Bearer not-a-token"), qcow_bytes.clone()).0,
        401
    );

    w.fake.hold_uploads(false);
    w.fake.wait_for("UploadReady", LONG, || {
        let dv = w.fake.get(DATAVOLUME, NS, "restored")?;
        (dv["status"]["phase"] == "UploadReady").then_some(())
    });
    // An image with a backing file cannot be used: the upload pod has no such file.
    let overlay = work.path().join("overlay.qcow2");
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            qcow.to_str().unwrap(),
            overlay.to_str().unwrap(),
        ],
    );
    let (code, text) = upload(&w, Some(&bearer), std::fs::read(&overlay).unwrap());
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("backing file"), "{text}");

    let (code, text) = upload(&w, Some(&bearer), qcow_bytes.clone());
    assert_eq!(code, 200, "{text}");
    w.fake.wait_for("Succeeded", LONG, || {
        let dv = w.fake.get(DATAVOLUME, NS, "restored")?;
        (dv["status"]["phase"] == "Succeeded").then_some(())
    });
    let disk = w.fake.pvc_dir(NS, "restored").join("disk.img");
    assert_eq!(image_info(&disk)["format"], "raw");
    assert!(
        std::fs::read(&disk).unwrap() == std::fs::read(&raw).unwrap(),
        "disk.img is not the uploaded image converted to raw"
    );
    assert_eq!(
        w.fake.pvc_files(NS, "restored"),
        vec![("disk.img".to_string(), 16 << 20)]
    );
    let (code, text) = upload(&w, Some(&bearer), qcow_bytes);
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("already finished uploading"), "{text}");

    // The claim goes with its DataVolume, and its directory with the claim.
    w.api.raw_request(
        "DELETE",
        &format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{NS}/datavolumes/restored"),
        "application/json",
        "",
        Duration::from_secs(20),
    );
    w.fake.wait_for("the claim's directory to go", LONG, || {
        (!w.fake.pvc_dir(NS, "restored").exists()).then_some(())
    });
    assert!(w.fake.get(PVC, NS, "restored").is_none());
}
