//! Restores of a KubeVirt VM by the real `snapback kubevirt-worker` process over HTTP, with
//! the chart's RBAC, against the fake KubeVirt and CDI (tests/kubevirt_fake): the worker
//! backs the test guest up through KubeVirt's backup API (a full, then an incremental of the
//! paused guest), then a RestoreRequest brings the point back as a new VM. Each disk is
//! rebuilt from the chain and uploaded into a DataVolume through CDI's upload proxy; the
//! fake's upload server converts it into the `disk.img` of the DataVolume's claim (a file on
//! this host), which must equal the paused guest's disk byte for byte and boot as a libvirt
//! domain. The worker is killed with SIGKILL mid-upload and the next one finishes the
//! restore; one killed right after it created the new VM, whose RestoreRequest is then
//! deleted, leaves nothing behind. In place, the running VM is stopped, repointed to the
//! restored DataVolume and runs again on it, its old claim kept; one killed right after the
//! repoint and then deleted puts the VM back as it was.

mod apiserver;
mod common;
mod kubevirt_fake;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::ApiServer;
use common::*;
use kubevirt_fake::*;
use serde_json::{json, Value};

const RELEASE_NS: &str = "snapback-system";
const NS: &str = "vms";
const SA: &str = "snapback-kubevirt-worker";
const RESTORE: &str = "snapback.dev/v1alpha1/RestoreRequest";

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

fn wait_until<T>(
    what: &str,
    secs: u64,
    logs: &dyn Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn stop(mut c: Child) {
    // SIGTERM: the worker stops as its Deployment's pod would.
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let _ = c.wait();
}

/// The worker died by SIGKILL at its crash point (within a bound).
fn killed_at_crash_point(w: &World, mut c: Child, pod: &str) {
    let st = wait_until(
        "the worker to reach its crash point",
        300,
        &|| log_of(w, pod),
        || c.try_wait().unwrap(),
    );
    assert_eq!(st.code(), None, "killed by SIGKILL: {}", log_of(w, pod));
}

/// An object of `kind` that ended (Succeeded or Failed) and whose finalizer is gone.
fn finished(w: &World, kind: &str, name: &str, pod: &str) -> Value {
    wait_until(
        &format!("{name} to finish"),
        300,
        &|| log_of(w, pod),
        || {
            let r = w.api.get(kind, NS, name).unwrap_or(Value::Null);
            let phase = r["status"]["phase"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let released = r["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty());
            (["Succeeded", "Failed"].contains(&phase.as_str()) && released).then_some(r)
        },
    )
}

fn run_doc(name: &str, quiesce: &str) -> Value {
    json!({
        "apiVersion": "snapback.dev/v1alpha1", "kind": "BackupRun",
        "metadata": {"name": name, "namespace": NS, "labels": {"snapback.dev/kubevirt": "true"}},
        "spec": {"domain": format!("{NS}/web"), "targetRef": "local", "policyRef": "vms",
                 "virtualMachine": {"namespace": NS, "name": "web"},
                 "consistency": {"quiesce": quiesce}},
    })
}

fn restore_doc(name: &str, new_name: &str) -> Value {
    json!({
        "apiVersion": "snapback.dev/v1alpha1", "kind": "RestoreRequest",
        "metadata": {"name": name, "namespace": NS, "labels": {"snapback.dev/kubevirt": "true"}},
        "spec": {"domain": format!("{NS}/web"), "targetRef": "local", "newName": new_name},
    })
}

fn raw_copy(src: &Path, dest: &Path) {
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-O",
            "raw",
            src.to_str().unwrap(),
            dest.to_str().unwrap(),
        ],
    );
}

fn world() -> World {
    let guest = Guest::new(
        "kvrs",
        GuestOpts {
            disk_mib: 128,
            prefill_mib: 32,
            agent_channel: true,
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
    let docs = apiserver::render_chart(&test_tool("helm"), RELEASE_NS, &["kubevirt.enabled=true"]);
    w.api.create_all(&docs);
    w.api.create_all(&[
        json!({"apiVersion": "snapback.dev/v1alpha1", "kind": "BackupTarget",
               "metadata": {"name": "local", "namespace": NS},
               "spec": {"url": w.env.target}}),
        json!({"apiVersion": "snapback.dev/v1alpha1", "kind": "BackupPolicy",
               "metadata": {"name": "vms", "namespace": NS},
               "spec": {"virtualMachineSelector": {"names": ["web"]}, "targetRef": "local",
                        "schedule": "0 0 1 1 *"}}),
    ]);
    w
}

/// A full, then an incremental of the paused guest (its disk holding still); answers the
/// guest's disk at the incremental, raw.
fn back_up(w: &World) -> std::path::PathBuf {
    w.api.create_all(&[run_doc("web-1", "Preferred")]);
    let a = worker(w, "worker-a", None);
    let r = finished(w, "snapback.dev/v1alpha1/BackupRun", "web-1", "worker-a");
    assert_eq!(
        r["status"]["phase"],
        "Succeeded",
        "{r:#}\n{}",
        log_of(w, "worker-a")
    );
    w.guest.wait_for_writes(w.guest.writes() + 20);
    virsh_ok(&["suspend", &w.guest.name]);
    w.api.create_all(&[run_doc("web-2", "None")]);
    let r = finished(w, "snapback.dev/v1alpha1/BackupRun", "web-2", "worker-a");
    let reference = w.env.dir.join("reference.raw");
    raw_copy(&w.guest.disk, &reference);
    virsh_ok(&["resume", &w.guest.name]);
    assert_eq!(
        r["status"]["phase"],
        "Succeeded",
        "{r:#}\n{}",
        log_of(w, "worker-a")
    );
    assert_eq!(r["status"]["type"], "Incremental");
    stop(a);
    reference
}

#[test]
fn a_kubevirt_vm_is_restored_as_a_new_vm_that_holds_the_point_and_boots_after_a_kill_mid_upload_then_in_place(
) {
    let w = world();
    let reference = back_up(&w);
    let original = w.fake.get(VM, NS, "web").unwrap();

    // SIGKILL while the rebuilt disk is being uploaded into its DataVolume.
    w.api.create_all(&[restore_doc("copy", "web-copy")]);
    let doomed = worker(&w, "worker-b", Some("restore:defining:placing"));
    killed_at_crash_point(&w, doomed, "worker-b");
    let mid = w.api.get(RESTORE, NS, "copy").unwrap();
    assert_eq!(mid["status"]["phase"], "Defining", "{mid:#}");
    assert_eq!(
        mid["status"]["disks"][0]["placedAs"], "web-copy-rootdisk",
        "the DataVolume's name is recorded before it is made: {mid:#}"
    );
    let dv = w
        .fake
        .get(DATAVOLUME, NS, "web-copy-rootdisk")
        .expect("the DataVolume made");
    assert_ne!(
        dv["status"]["phase"], "Succeeded",
        "the upload was cut: {dv:#}"
    );

    // The next worker adopts the DataVolume, uploads again with a new token, and finishes.
    let next = worker(&w, "worker-c", None);
    let r = finished(&w, RESTORE, "copy", "worker-c");
    assert_eq!(
        r["status"]["phase"],
        "Succeeded",
        "{r:#}\n{}",
        log_of(&w, "worker-c")
    );
    assert_eq!(r["status"]["definedDomain"], "web-copy");
    stop(next);

    // The new VM: its own name, firmware UUID and MACs, halted, on the new DataVolume.
    let vm = w.fake.get(VM, NS, "web-copy").expect("the new VM");
    let spec = &vm["spec"];
    assert_eq!(spec["runStrategy"], "Halted");
    assert_eq!(vm["metadata"]["labels"]["snapback.dev/restore"], "copy");
    let t = &spec["template"]["spec"];
    let o = &original["spec"]["template"]["spec"];
    assert_eq!(
        t["volumes"][0],
        json!({"name": "rootdisk", "dataVolume": {"name": "web-copy-rootdisk"}})
    );
    assert_ne!(
        t["domain"]["firmware"]["uuid"],
        o["domain"]["firmware"]["uuid"]
    );
    assert_eq!(
        t["domain"]["firmware"]["uuid"], r["status"]["definedUuid"],
        "the firmware UUID chosen and recorded before the VM was made"
    );
    let mac = t["domain"]["devices"]["interfaces"][0]["macAddress"]
        .as_str()
        .unwrap();
    assert_ne!(
        mac,
        o["domain"]["devices"]["interfaces"][0]["macAddress"]
            .as_str()
            .unwrap()
    );
    assert!(mac.starts_with("02:"), "{mac}");
    assert_eq!(
        spec["template"]["metadata"]["labels"]["kubevirt.io/vm"],
        "web-copy"
    );
    let dv = w.fake.get(DATAVOLUME, NS, "web-copy-rootdisk").unwrap();
    assert_eq!(dv["status"]["phase"], "Succeeded");
    assert!(dv["spec"]["source"]["upload"].is_object(), "{dv:#}");
    // The original is untouched.
    assert_eq!(w.fake.get(VM, NS, "web").unwrap()["spec"], original["spec"]);

    // The DataVolume's disk is the paused guest's disk at the point, byte for byte.
    let disk = w.fake.pvc_dir(NS, "web-copy-rootdisk").join("disk.img");
    let same = std::fs::read(&disk).unwrap() == std::fs::read(&reference).unwrap();
    assert!(same, "{} holds the point", disk.display());
    // Nothing is left in the worker's work dir; the backups' objects are all gone.
    let work = w.env.state.join("restore-work");
    let left: Vec<_> = std::fs::read_dir(&work)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(w.fake.made_by_runs(NS), Vec::<String>::new());

    // A second restore, killed right after it created its VM and then deleted: the next
    // worker rolls it back, and its VM and DataVolume (and the claim) go.
    w.api.create_all(&[restore_doc("gone", "web-gone")]);
    let doomed = worker(&w, "worker-d", Some("restore:defining:defined"));
    killed_at_crash_point(&w, doomed, "worker-d");
    assert!(w.fake.get(VM, NS, "web-gone").is_some(), "the VM was made");
    w.api
        .shared
        .store
        .raw_delete(RESTORE, NS, "gone")
        .expect("the request deleted");
    let next = worker(&w, "worker-e", None);
    wait_until(
        "the deleted restore to be rolled back and go",
        300,
        &|| log_of(&w, "worker-e"),
        || w.api.get(RESTORE, NS, "gone").is_none().then_some(()),
    );
    stop(next);
    w.fake.settle();
    let made: Vec<String> = w.fake.made_by_restores(NS);
    assert_eq!(
        made,
        vec![
            format!("{VM} \"web-copy\""),
            format!("{DATAVOLUME} \"web-copy-rootdisk\""),
            format!("{PVC} \"web-copy-rootdisk\""),
        ],
        "only the first restore's VM and disk stay"
    );

    // In place: the running VM is stopped (its instance gone), repointed to a DataVolume of
    // the restored disk and given its run strategy back; its old claim is kept and listed.
    w.api.create_all(&[json!({
        "apiVersion": "snapback.dev/v1alpha1", "kind": "RestoreRequest",
        "metadata": {"name": "back", "namespace": NS, "labels": {"snapback.dev/kubevirt": "true"}},
        "spec": {"domain": format!("{NS}/web"), "targetRef": "local", "inPlace": true},
    })]);
    let next = worker(&w, "worker-f", None);
    let r = finished(&w, RESTORE, "back", "worker-f");
    assert_eq!(
        r["status"]["phase"],
        "Succeeded",
        "{r:#}\n{}",
        log_of(&w, "worker-f")
    );
    stop(next);
    assert_eq!(r["status"]["wasRunning"], true);
    assert_eq!(
        r["status"]["replacedDisks"],
        json!(["web-rootdisk"]),
        "{r:#}"
    );
    assert!(
        w.fake.get(PVC, NS, "web-rootdisk").is_some(),
        "the old claim is kept"
    );
    let vm = w.fake.get(VM, NS, "web").unwrap();
    assert_eq!(vm["spec"]["runStrategy"], "Always", "its run strategy back");
    let t = &vm["spec"]["template"]["spec"];
    assert_eq!(
        t["volumes"][0],
        json!({"name": "rootdisk", "dataVolume": {"name": "web-rootdisk-back"}})
    );
    assert_eq!(
        t["domain"], o["domain"],
        "in place, its identity (UUID, MACs) stays"
    );
    assert!(
        vm["metadata"]["labels"]
            .get("snapback.dev/restore")
            .is_none(),
        "the VM is the user's, not the restore's"
    );
    // It runs again, on the DataVolume's disk (through KubeVirt's tracking overlay).
    let restored = w.fake.pvc_dir(NS, "web-rootdisk-back").join("disk.img");
    let data_file = |image: &str| -> String {
        let info: Value =
            serde_json::from_str(&run_ok("qemu-img", &["info", "-U", "--output=json", image]))
                .unwrap();
        info["format-specific"]["data"]["data-file"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    wait_until(
        "the VM to run on the restored disk",
        120,
        &|| format!("{:?}", w.fake.errors()),
        || {
            let vmi = w.fake.get(VMI, NS, "web")?;
            let sources = w.guest.disk_sources();
            let on = sources.len() == 1 && data_file(&sources[0]) == restored.display().to_string();
            (vmi["status"]["phase"] == "Running" && on).then_some(())
        },
    );
    // Outside the window the guest writes to again, it holds the point.
    let window = 64 << 20;
    let got = std::fs::read(&restored).unwrap();
    let want = std::fs::read(&reference).unwrap();
    assert!(got.len() == want.len() && got[..window] == want[..window]);

    // KubeVirt's checkpoint described the old disk: its tracker went, and the next backup
    // of the chain is a full.
    assert_eq!(w.api.list(TRACKER, Some(NS)), Vec::<Value>::new());
    w.api.create_all(&[run_doc("web-3", "Preferred")]);
    let next = worker(&w, "worker-g", None);
    let r = finished(&w, "snapback.dev/v1alpha1/BackupRun", "web-3", "worker-g");
    stop(next);
    assert_eq!(
        r["status"]["phase"],
        "Succeeded",
        "{r:#}\n{}",
        log_of(&w, "worker-g")
    );
    assert_eq!(r["status"]["type"], "Full", "{r:#}");
    assert_eq!(w.fake.made_by_runs(NS), Vec::<String>::new());

    // An in-place restore killed right after it repointed the VM, then deleted: the next
    // worker puts the VM back as it was (on the first restore's disk, running) and deletes
    // the DataVolume it had made.
    w.api.create_all(&[json!({
        "apiVersion": "snapback.dev/v1alpha1", "kind": "RestoreRequest",
        "metadata": {"name": "again", "namespace": NS, "labels": {"snapback.dev/kubevirt": "true"}},
        "spec": {"domain": format!("{NS}/web"), "targetRef": "local", "inPlace": true},
    })]);
    let doomed = worker(&w, "worker-h", Some("restore:defining:swapped"));
    killed_at_crash_point(&w, doomed, "worker-h");
    let swapped = w.fake.get(VM, NS, "web").unwrap();
    assert_eq!(
        swapped["spec"]["template"]["spec"]["volumes"][0]["dataVolume"]["name"],
        "web-rootdisk-again"
    );
    w.api
        .shared
        .store
        .raw_delete(RESTORE, NS, "again")
        .expect("the request deleted");
    let next = worker(&w, "worker-i", None);
    wait_until(
        "the deleted in-place restore to be rolled back and go",
        300,
        &|| log_of(&w, "worker-i"),
        || w.api.get(RESTORE, NS, "again").is_none().then_some(()),
    );
    stop(next);
    let vm = w.fake.get(VM, NS, "web").unwrap();
    assert_eq!(vm["spec"]["runStrategy"], "Always");
    assert_eq!(
        vm["spec"]["template"]["spec"]["volumes"][0],
        json!({"name": "rootdisk", "dataVolume": {"name": "web-rootdisk-back"}}),
        "the VM's definition from before that restore"
    );
    wait_until(
        "the VM to run on its disk again",
        120,
        &|| format!("{:?}", w.fake.errors()),
        || {
            let vmi = w.fake.get(VMI, NS, "web")?;
            let sources = w.guest.disk_sources();
            let on = sources.len() == 1 && data_file(&sources[0]) == restored.display().to_string();
            (vmi["status"]["phase"] == "Running" && on).then_some(())
        },
    );
    w.fake.settle();
    assert!(w.fake.get(DATAVOLUME, NS, "web-rootdisk-again").is_none());
    assert!(w.fake.get(PVC, NS, "web-rootdisk-again").is_none());

    // Every grant the chart gives the worker is used by some request.
    let mut unused: Vec<String> = w
        .api
        .unused_grants(&format!("system:serviceaccount:{RELEASE_NS}:{SA}"))
        .iter()
        .map(|g| g.split(": ").nth(1).unwrap_or(g).to_string())
        // kube's recorder patches an Event only when the same one repeats.
        .filter(|g| g != "patch events.k8s.io/events")
        // The passphrase Secret of an encrypted target: tests/kubevirt_worker.rs.
        .filter(|g| !(g.starts_with("get ") && g.ends_with("secrets")))
        .collect();
    unused.sort();
    assert_eq!(unused, Vec::<String>::new());
    let tokens: Vec<String> = w
        .api
        .audit()
        .into_iter()
        .filter(|a| a.user.ends_with(SA) && a.resource == "uploadtokenrequests")
        .map(|a| a.verb)
        .collect();
    assert!(tokens.len() >= 2, "a token per upload: {tokens:?}");
    for pod in ["worker-b", "worker-c", "worker-d", "worker-e"] {
        assert!(
            !log_of(&w, pod).contains("cdi-upload-"),
            "an upload token in {pod}'s log"
        );
    }

    // The uploaded disk boots as a libvirt domain (the guest writes to it again).
    let image = w.env.dir.join("web-copy-rootdisk.raw");
    std::os::unix::fs::symlink(&disk, &image).unwrap();
    let booted = Guest::new(
        "kvrs-copy",
        GuestOpts {
            own_disk: Some(image),
            ..Default::default()
        },
    );
    assert_eq!(booted.state().trim(), "running");
    drop(booted);
}
