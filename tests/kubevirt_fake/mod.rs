//! A fake KubeVirt (as v1.9.0 behaves) and a fake CDI, for tests only, driven over the
//! stand-in apiserver (tests/apiserver) and doing the storage work for real on this host: no
//! KubeVirt cluster can run here. It speaks raw JSON to the stand-in's store, as KubeVirt's
//! own controllers do, so a mistake in snapback's KubeVirt types shows.
//!
//! What it does, after KubeVirt's and CDI's sources (file names in each module):
//! - VirtualMachines and their VMIs, each mapped to a running libvirt domain (qemu:///system);
//!   the VMI's `changedBlockTracking.state` follows the KubeVirt CR's feature gates and
//!   `changedBlockTrackingLabelSelectors` and whether the VM was started while it matched
//!   (vm.rs);
//! - VirtualMachineBackup and VirtualMachineBackupTracker (backup.kubevirt.io/v1alpha1): the
//!   webhook's refusals, the controller's waits, conditions and messages, and a real libvirt
//!   push backup with KubeVirt's checkpoint names and file layout (backup.rs, tracker.rs);
//! - PersistentVolumeClaims as directories (pvc.rs);
//! - VirtualMachineExport of a PVC served over HTTPS as virt-exportserver does (export_server.rs);
//! - CDI DataVolume upload: UploadTokenRequest and the upload proxy (cdi.rs).
//!
//! A test includes it next to the stand-in: `mod apiserver; mod kubevirt_fake;`, starts the
//! stand-in, then `KubevirtFake::start(&api)`, and maps its guest domain (made with
//! `common::Guest`, named `kvfake-…`) with `add_vm`. Dropping the fake stops its servers,
//! aborts its jobs and removes its directories.

#![allow(dead_code)]

mod backup;
mod cdi;
mod crds;
mod export_server;
mod libvirt;
mod pvc;
mod store;
mod tls;
mod tracker;
mod vm;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::apiserver::{ApiServer, Shared};

#[allow(unused_imports)]
pub use store::{
    BACKUP, CDICONFIG, DATAVOLUME, EVENT, EXPORT, KUBEVIRT, PVC, SECRET, TRACKER, UPLOAD_TOKEN, VM,
    VMI,
};
#[allow(unused_imports)]
pub use tls::{https_request, HttpAnswer};
pub use vm::VmState;

type Key = (String, String);

fn key(ns: &str, name: &str) -> Key {
    (ns.to_string(), name.to_string())
}

pub(crate) struct Inner {
    pub api: Arc<Shared>,
    pub root: PathBuf,
    pub rt: tokio::runtime::Handle,
    pub ca: tls::Ca,
    pub vms: Mutex<BTreeMap<Key, VmState>>,
    pub jobs: Mutex<BTreeMap<Key, backup::Job>>,
    pub exports: Mutex<BTreeMap<Key, export_server::Served>>,
    pub cdi: cdi::State,
    /// Errors a KubeVirt controller would log and retry on (no status shows them).
    pub errors: Mutex<Vec<String>>,
    /// PVC directories made, and PVC directories with a tmpfs of limited size on them.
    pub pvc_dirs: Mutex<BTreeSet<Key>>,
    pub limited: Mutex<BTreeSet<PathBuf>>,
    pub hold_uploads: AtomicBool,
    /// Held by each pass of the controllers and by a test's action (a stop, a restart), so
    /// the two never interleave their writes.
    pub pass: Mutex<()>,
    ticks: AtomicU64,
    stop: AtomicBool,
}

impl Inner {
    pub fn store(&self) -> &snapback::cluster::mem::MemStore {
        &self.api.store
    }

    pub fn pvc_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.root.join("pvc").join(ns).join(name)
    }

    pub fn log_error(&self, e: String) {
        let mut errs = self.errors.lock().unwrap();
        if errs.last() != Some(&e) {
            errs.push(e);
        }
    }
}

pub struct KubevirtFake {
    inner: Arc<Inner>,
    thread: Option<std::thread::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    upload_proxy: Option<tls::Server>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl KubevirtFake {
    /// Registers the kinds with the stand-in, creates the KubeVirt CR (gates IncrementalBackup
    /// and UtilityVolumes on, CBT for VMs labelled `changedBlockTracking: "true"`, as KubeVirt's
    /// e2e suite configures it) and CDIConfig, starts the upload proxy and the controllers.
    pub fn start(api: &ApiServer) -> KubevirtFake {
        let base = PathBuf::from(
            std::env::var("SNAPBACK_TEST_ROOT")
                .unwrap_or_else(|_| "/var/tmp/snapback-tests".into()),
        );
        let root = base.join(format!(
            "kvfake-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        // KubeVirt lower-cases the whole backup XML, target paths included.
        assert_eq!(
            root.to_string_lossy(),
            root.to_string_lossy().to_lowercase(),
            "the fake's root must be lower-case: KubeVirt lower-cases backup target paths"
        );
        std::fs::create_dir_all(root.join("pvc")).unwrap();
        crds::register(api);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let inner = Arc::new(Inner {
            api: api.shared.clone(),
            rt: runtime.handle().clone(),
            ca: tls::Ca::new(&root.join("ca"), "kvfake-ca"),
            root,
            vms: Mutex::new(BTreeMap::new()),
            jobs: Mutex::new(BTreeMap::new()),
            exports: Mutex::new(BTreeMap::new()),
            cdi: cdi::State::default(),
            errors: Mutex::new(Vec::new()),
            pvc_dirs: Mutex::new(BTreeSet::new()),
            limited: Mutex::new(BTreeSet::new()),
            hold_uploads: AtomicBool::new(false),
            pass: Mutex::new(()),
            ticks: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        inner
            .store()
            .raw_create(
                KUBEVIRT,
                json!({
                    "apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
                    "metadata": {"name": store::KUBEVIRT_NAME, "namespace": store::KUBEVIRT_NS},
                    "spec": {"configuration": {
                        "developerConfiguration": {"featureGates": ["IncrementalBackup", "UtilityVolumes"]},
                        "changedBlockTrackingLabelSelectors": {
                            "virtualMachineLabelSelector": {"matchLabels": {"changedBlockTracking": "true"}},
                        },
                    }},
                    "status": {"phase": "Deployed", "observedKubeVirtVersion": "v1.9.0"},
                }),
                false,
            )
            .unwrap();
        backup::install_webhook(api, &inner);
        let upload_proxy = cdi::start(api, &inner);
        let worker = inner.clone();
        let thread = std::thread::spawn(move || {
            while !worker.stop.load(Ordering::SeqCst) {
                tick(&worker);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        KubevirtFake {
            inner,
            thread: Some(thread),
            runtime: Some(runtime),
            upload_proxy: Some(upload_proxy),
        }
    }

    /// Maps a running libvirt domain as VirtualMachine `ns/name` with `labels`, and its VMI;
    /// the domain's first disk is the PVC-backed volume `rootdisk` (PVC `<name>-rootdisk`).
    /// CBT state is decided as if the VM just started.
    pub fn add_vm(&self, ns: &str, name: &str, domain: &str, labels: &[(&str, &str)]) {
        vm::add(&self.inner, ns, name, domain, labels);
        self.settle();
    }

    /// The KubeVirt CR's feature gates become exactly `gates`.
    pub fn set_feature_gates(&self, gates: &[&str]) {
        self.edit_kubevirt(|kv| {
            kv["spec"]["configuration"]["developerConfiguration"]["featureGates"] = json!(gates)
        });
    }

    /// The KubeVirt CR's `changedBlockTrackingLabelSelectors` becomes `selectors`.
    pub fn set_cbt_selectors(&self, selectors: Value) {
        self.edit_kubevirt(|kv| {
            kv["spec"]["configuration"]["changedBlockTrackingLabelSelectors"] = selectors.clone()
        });
    }

    fn edit_kubevirt(&self, f: impl Fn(&mut Value)) {
        loop {
            let mut kv = self
                .inner
                .store()
                .raw_get(KUBEVIRT, store::KUBEVIRT_NS, store::KUBEVIRT_NAME)
                .unwrap();
            f(&mut kv);
            if store::put_main(self.inner.store(), KUBEVIRT, kv).is_ok() {
                break;
            }
        }
        self.settle();
    }

    /// Powers the VM off (`virsh destroy`, runStrategy Halted): its VMI goes to Succeeded and
    /// is removed once no backup is running on it.
    pub fn stop_vm(&self, ns: &str, name: &str) {
        vm::stop(&self.inner, ns, name);
        self.settle();
    }

    /// Starts the VM again: a new VMI; CBT is decided anew; trackers with a checkpoint are
    /// marked `checkpointRedefinitionRequired`, as virt-handler does on a new domain.
    pub fn start_vm(&self, ns: &str, name: &str) {
        vm::start(&self.inner, ns, name);
        self.settle();
    }

    pub fn restart_vm(&self, ns: &str, name: &str) {
        self.stop_vm(ns, name);
        self.start_vm(ns, name);
    }

    /// A restart that loses the bitmaps (say, the CBT overlay was lost): the libvirt
    /// checkpoint metadata and the qcow2 bitmaps go, then the VM starts; KubeVirt's
    /// redefinition then fails and the tracker's checkpoint is cleared with a Warning Event.
    pub fn lose_checkpoints(&self, ns: &str, name: &str) {
        vm::stop(&self.inner, ns, name);
        vm::drop_checkpoints(&self.inner, ns, name);
        vm::start(&self.inner, ns, name);
        self.settle();
    }

    /// Marks the VMI as migrating (or not any more) in `status.migrationState`; the mark
    /// stays until the test lifts it, across restarts too.
    pub fn set_migrating(&self, ns: &str, name: &str, migrating: bool) {
        vm::set_migrating(&self.inner, ns, name, migrating);
        self.settle();
    }

    /// Puts a tmpfs of `bytes` on the PVC's directory (emptied), so a backup into it runs out
    /// of space for real, as KubeVirt's "insufficient target PVC size" test does.
    pub fn limit_pvc(&self, ns: &str, name: &str, bytes: u64) {
        pvc::limit(&self.inner, ns, name, bytes);
    }

    /// While held, new upload DataVolumes stay UploadScheduled (the upload pod not ready).
    pub fn hold_uploads(&self, hold: bool) {
        self.inner.hold_uploads.store(hold, Ordering::SeqCst);
        self.settle();
    }

    pub fn pvc_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.inner.pvc_dir(ns, name)
    }

    /// Every regular file under the PVC's directory: (path relative to it, size).
    pub fn pvc_files(&self, ns: &str, name: &str) -> Vec<(String, u64)> {
        let dir = self.pvc_dir(ns, name);
        let mut out = Vec::new();
        walk(&dir, &dir, &mut out);
        out.sort();
        out
    }

    /// The checkpoints libvirt holds for the VM's domain.
    pub fn domain_checkpoints(&self, ns: &str, name: &str) -> Vec<String> {
        libvirt::checkpoints(&self.domain_of(ns, name))
    }

    /// The bitmaps in the VM's first disk image.
    pub fn disk_bitmaps(&self, ns: &str, name: &str) -> Vec<String> {
        let d = self.domain_of(ns, name);
        libvirt::disks(&d)
            .first()
            .map(|(_, p)| libvirt::image_bitmaps(p))
            .unwrap_or_default()
    }

    pub fn domain_of(&self, ns: &str, name: &str) -> String {
        self.inner.vms.lock().unwrap()[&key(ns, name)]
            .domain
            .clone()
    }

    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.inner.store().raw_get(kind, ns, name)
    }

    /// The backups, exports, claims and Secrets in `ns` that carry a snapback run's label
    /// (`snapback.dev/run`): what a run made and has not removed.
    pub fn made_by_runs(&self, ns: &str) -> Vec<String> {
        let mut left = Vec::new();
        for kind in [BACKUP, EXPORT, PVC, SECRET] {
            for o in self.inner.store().raw_list(kind, Some(ns)).0 {
                if o["metadata"]["labels"].get("snapback.dev/run").is_some() {
                    left.push(format!("{kind} {}", o["metadata"]["name"]));
                }
            }
        }
        left
    }

    /// The VirtualMachines and DataVolumes in `ns` that carry a restore's label
    /// (`snapback.dev/restore`), and the claims those DataVolumes own: what restores made.
    pub fn made_by_restores(&self, ns: &str) -> Vec<String> {
        let st = self.inner.store();
        let mut made = Vec::new();
        for kind in [VM, DATAVOLUME] {
            for o in st.raw_list(kind, Some(ns)).0 {
                if o["metadata"]["labels"]
                    .get("snapback.dev/restore")
                    .is_some()
                {
                    made.push(format!("{kind} {}", o["metadata"]["name"]));
                }
            }
        }
        for c in st.raw_list(PVC, Some(ns)).0 {
            let owner = c["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|o| o["kind"] == "DataVolume")
                .map(|o| store::s(o, "/name").to_string());
            let by_restore = owner
                .and_then(|dv| st.raw_get(DATAVOLUME, ns, &dv))
                .is_none_or(|dv| {
                    dv["metadata"]["labels"]
                        .get("snapback.dev/restore")
                        .is_some()
                });
            if c["metadata"]["ownerReferences"].is_array() && by_restore {
                made.push(format!("{PVC} {}", c["metadata"]["name"]));
            }
        }
        made
    }

    /// The Events on the object `ns/name` (of any kind).
    pub fn events_for(&self, ns: &str, name: &str) -> Vec<Value> {
        self.inner
            .store()
            .raw_list(EVENT, Some(ns))
            .0
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == name)
            .collect()
    }

    /// What KubeVirt's controllers would only log while retrying.
    pub fn errors(&self) -> Vec<String> {
        self.inner.errors.lock().unwrap().clone()
    }

    /// The CA of the export servers and the upload proxy, PEM.
    pub fn ca_pem(&self) -> String {
        self.inner.ca.pem.clone()
    }

    /// CDIConfig's `status.uploadProxyURL` with the scheme clients add.
    pub fn upload_proxy_url(&self) -> String {
        format!("https://{}", self.upload_proxy.as_ref().unwrap().addr)
    }

    /// Polls `f` until it gives a value, for at most `limit`; panics naming `what`.
    pub fn wait_for<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let end = Instant::now() + limit;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; fake's errors: {:?}",
                self.errors()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the controllers have made a full pass after the call.
    pub fn settle(&self) {
        let n = self.inner.ticks.load(Ordering::SeqCst);
        let end = Instant::now() + Duration::from_secs(60);
        while self.inner.ticks.load(Ordering::SeqCst) < n + 2 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            walk(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.push((rel, m.len()));
        }
    }
}

/// One pass of every fake controller.
fn tick(inner: &Arc<Inner>) {
    let _pass = inner.pass.lock().unwrap();
    vm::sync(inner);
    pvc::sync(inner);
    tracker::sync(inner);
    backup::sync(inner);
    export_server::sync(inner);
    cdi::sync(inner);
    inner.ticks.fetch_add(1, Ordering::SeqCst);
}

impl Drop for KubevirtFake {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        backup::abort_all(&self.inner);
        self.inner.exports.lock().unwrap().clear();
        self.upload_proxy.take();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        pvc::unlimit_all(&self.inner);
        let _ = std::fs::remove_dir_all(&self.inner.root);
    }
}
