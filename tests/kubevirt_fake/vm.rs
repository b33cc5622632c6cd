//! VirtualMachines and VMIs mapped to libvirt domains, and their changed-block-tracking state
//! as KubeVirt v1.9.0 decides it (pkg/storage/cbt/cbt.go: the KubeVirt CR's
//! `changedBlockTrackingLabelSelectors` over the VM's labels or its namespace's, the
//! IncrementalBackup gate, and a restart before a newly selected VM is Enabled).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::libvirt;
use super::store::{self, s, KUBEVIRT, NAMESPACE, PVC, TRACKER, VM, VMI};
use super::{key, Inner};

/// What the fake knows of one VM beyond the store.
#[derive(Clone, Debug)]
pub struct VmState {
    pub ns: String,
    pub name: String,
    pub domain: String,
    pub labels: BTreeMap<String, String>,
    /// (disk target, volume name, claim name), in the domain's order; only the first disk
    /// is a volume.
    pub volumes: Vec<(String, String, String)>,
    pub running: bool,
    /// CBT was on for the VM when it last started (gate on, selector matching): its disks
    /// have the CBT overlay and the state can be Enabled.
    pub cbt_started: bool,
    pub migrating: Option<Value>,
    /// A CBT state was ever reported, so leaving the selector shows Disabled.
    pub had_cbt: bool,
}

pub fn add(inner: &Arc<Inner>, ns: &str, name: &str, domain: &str, labels: &[(&str, &str)]) {
    let _pass = inner.pass.lock().unwrap();
    assert!(
        libvirt::running(domain),
        "domain {domain} must be running to be mapped as VM {ns}/{name}"
    );
    let disks = libvirt::disks(domain);
    let (target, _) = disks.first().expect("the domain has a disk");
    let claim = format!("{name}-rootdisk");
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let uuid = libvirt::virsh(&["domuuid", domain])
        .unwrap_or_default()
        .trim()
        .to_string();
    let st = inner.store();
    if st.raw_get(PVC, ns, &claim).is_none() {
        st.raw_create(
            PVC,
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": claim, "namespace": ns},
                   "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
                            "resources": {"requests": {"storage": "1Gi"}}},
                   "status": {"phase": "Bound"}}),
            false,
        )
        .unwrap();
    }
    let template_spec = json!({
        "domain": {
            "devices": {
                "disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}],
                "interfaces": [{"name": "default", "masquerade": {}, "macAddress": "02:6b:76:00:00:01"}],
            },
            "firmware": {"uuid": uuid},
            "resources": {"requests": {"memory": "192Mi"}},
        },
        "networks": [{"name": "default", "pod": {}}],
        "volumes": [{"name": "rootdisk", "persistentVolumeClaim": {"claimName": claim}}],
    });
    st.raw_create(
        VM,
        json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"runStrategy": "Always", "template": {
                "metadata": {"labels": {"kubevirt.io/vm": name}},
                "spec": template_spec,
            }},
            "status": {"printableStatus": "Running", "ready": true, "created": true},
        }),
        false,
    )
    .unwrap();
    let mut state = VmState {
        ns: ns.into(),
        name: name.into(),
        domain: domain.into(),
        labels,
        volumes: vec![(target.clone(), "rootdisk".into(), claim)],
        running: true,
        cbt_started: false,
        migrating: None,
        had_cbt: false,
    };
    state.cbt_started = cbt_wanted(inner, &state);
    inner.vms.lock().unwrap().insert(key(ns, name), state);
    create_vmi(inner, ns, name);
}

fn create_vmi(inner: &Inner, ns: &str, name: &str) {
    let st = inner.store();
    let Some(vm) = st.raw_get(VM, ns, name) else {
        return;
    };
    let mut spec = vm["spec"]["template"]["spec"].clone();
    spec["utilityVolumes"] = json!([]);
    let _ = st.raw_create(
        VMI,
        json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": ns,
                         "labels": vm["spec"]["template"]["metadata"]["labels"],
                         "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                                              "name": name, "uid": vm["metadata"]["uid"],
                                              "controller": true, "blockOwnerDeletion": true}]},
            "spec": spec,
            "status": {"phase": "Running", "nodeName": "kvfake-node"},
        }),
        false,
    );
}

/// The gates of the KubeVirt CR.
pub fn gates(inner: &Inner) -> Vec<String> {
    inner
        .store()
        .raw_get(KUBEVIRT, store::KUBEVIRT_NS, store::KUBEVIRT_NAME)
        .and_then(|kv| {
            kv.pointer("/spec/configuration/developerConfiguration/featureGates")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|g| g.as_str().map(String::from))
                        .collect()
                })
        })
        .unwrap_or_default()
}

pub fn gate_on(inner: &Inner, gate: &str) -> bool {
    gates(inner).iter().any(|g| g == gate)
}

/// A metav1.LabelSelector over `labels`; an absent selector selects nothing, an empty one
/// everything.
pub fn selector_matches(sel: &Value, labels: &BTreeMap<String, String>) -> bool {
    if sel.is_null() {
        return false;
    }
    let ml_ok = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let me_ok = sel["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let k = s(e, "/key");
            let vals: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let have = labels.get(k).map(String::as_str);
            match s(e, "/operator") {
                "In" => have.is_some_and(|h| vals.contains(&h)),
                "NotIn" => !have.is_some_and(|h| vals.contains(&h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        });
    ml_ok && me_ok
}

/// The VM is selected for CBT by the KubeVirt CR (its labels, or its namespace's).
fn selected(inner: &Inner, vm: &VmState) -> bool {
    let st = inner.store();
    let Some(kv) = st.raw_get(KUBEVIRT, store::KUBEVIRT_NS, store::KUBEVIRT_NAME) else {
        return false;
    };
    let sels = &kv["spec"]["configuration"]["changedBlockTrackingLabelSelectors"];
    let ns_labels: BTreeMap<String, String> = st
        .raw_get(NAMESPACE, "", &vm.ns)
        .and_then(|n| serde_json::from_value(n["metadata"]["labels"].clone()).ok())
        .unwrap_or_default();
    selector_matches(&sels["virtualMachineLabelSelector"], &vm.labels)
        || selector_matches(&sels["namespaceLabelSelector"], &ns_labels)
}

fn cbt_wanted(inner: &Inner, vm: &VmState) -> bool {
    gate_on(inner, "IncrementalBackup") && selected(inner, vm)
}

fn cbt_state(inner: &Inner, vm: &VmState) -> &'static str {
    let sel = selected(inner, vm);
    if !gate_on(inner, "IncrementalBackup") {
        return if sel || vm.had_cbt {
            "IncrementalBackupFeatureGateDisabled"
        } else {
            ""
        };
    }
    match (sel, vm.running, vm.cbt_started) {
        (true, true, true) => "Enabled",
        (true, true, false) => "PendingRestart",
        (true, false, _) => "PendingRestart",
        // Turning CBT off also waits for a restart.
        (false, true, true) => "PendingRestart",
        (false, _, _) if vm.had_cbt => "Disabled",
        _ => "",
    }
}

/// virt-controller following each mapped VM's `spec.runStrategy` as a client set it: Halted
/// stops a running VM (its instance goes), Always (or RerunOnFailure) starts a stopped one,
/// on the claims its volumes name now (a volume repointed to another claim or DataVolume
/// boots from that claim's raw `disk.img`, as a Filesystem-mode DataVolume holds its disk,
/// through a changed-block-tracking overlay).
fn follow_run_strategy(inner: &Arc<Inner>) {
    let vms: Vec<VmState> = inner.vms.lock().unwrap().values().cloned().collect();
    for vm in vms {
        let Some(obj) = inner.store().raw_get(VM, &vm.ns, &vm.name) else {
            continue;
        };
        match s(&obj, "/spec/runStrategy") {
            "Halted" if vm.running => stop_locked(inner, &vm.ns, &vm.name),
            "Always" | "RerunOnFailure" if !vm.running => {
                if let Err(e) = repoint(inner, &vm, &obj) {
                    inner.log_error(format!("VM {}/{}: {e}", vm.ns, vm.name));
                    continue;
                }
                start_locked(inner, &vm.ns, &vm.name);
            }
            _ => {}
        }
    }
}

/// The claim a template volume reads (a DataVolume's claim has its name).
fn claim_of(volume: &Value) -> Option<String> {
    let c = s(volume, "/persistentVolumeClaim/claimName");
    let d = s(volume, "/dataVolume/name");
    [c, d].into_iter().find(|n| !n.is_empty()).map(String::from)
}

/// Points the stopped domain's disks at the claims the VM's volumes name now.
fn repoint(inner: &Arc<Inner>, vm: &VmState, obj: &Value) -> Result<(), String> {
    let volumes = obj["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut changed = Vec::new();
    for (target, volume, claim) in &vm.volumes {
        let now = volumes
            .iter()
            .find(|v| s(v, "/name") == volume)
            .and_then(claim_of)
            .ok_or_else(|| format!("volume {volume} has no claim"))?;
        if &now != claim {
            changed.push((target.clone(), now));
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    // The old disks' bitmaps stay behind with them: libvirt's checkpoint records go.
    for cp in libvirt::checkpoints(&vm.domain) {
        libvirt::virsh(&["checkpoint-delete", &vm.domain, &cp, "--metadata"])?;
    }
    let mut xml = libvirt::virsh(&["dumpxml", "--inactive", &vm.domain])?;
    let sources = libvirt::disks(&vm.domain);
    for (target, claim) in &changed {
        let disk = inner.pvc_dir(&vm.ns, claim).join("disk.img");
        if !disk.is_file() {
            return Err(format!("claim {claim} holds no disk.img"));
        }
        let (_, old) = sources
            .iter()
            .find(|(t, _)| t == target)
            .ok_or_else(|| format!("the domain has no disk {target}"))?;
        let at = xml
            .find(&format!("file='{}'", old.display()))
            .ok_or_else(|| format!("{} is not in the domain XML", old.display()))?;
        let start = xml[..at].rfind("<disk ").unwrap();
        let end = at + xml[at..].find("</disk>").unwrap();
        let overlay = cbt_overlay(inner, vm, target, claim, &disk)?;
        let block = xml[start..end].replace(
            &format!("file='{}'", old.display()),
            &format!("file='{}'", overlay.display()),
        );
        xml.replace_range(start..end, &block);
    }
    let file = inner.root.join(format!("{}-repointed.xml", vm.domain));
    std::fs::write(&file, xml).map_err(|e| e.to_string())?;
    libvirt::virsh(&["define", file.to_str().unwrap()])?;
    let mut vms = inner.vms.lock().unwrap();
    let state = vms.get_mut(&key(&vm.ns, &vm.name)).unwrap();
    for (target, claim) in changed {
        if let Some(v) = state.volumes.iter_mut().find(|v| v.0 == target) {
            v.2 = claim;
        }
    }
    Ok(())
}

/// KubeVirt's changed-block tracking over a raw volume: a qcow2 overlay on the VM's state
/// volume (`cbt/<volume>.qcow2`) whose data file is the volume's raw disk (`data_file_raw`,
/// so every write still lands in `disk.img`), as virt-launcher makes on start. Made against a
/// placeholder and then told its data file: `qemu-img create` would write the data file.
fn cbt_overlay(
    inner: &Inner,
    vm: &VmState,
    target: &str,
    claim: &str,
    disk: &std::path::Path,
) -> Result<std::path::PathBuf, String> {
    let dir = inner
        .root
        .join("vmstate")
        .join(&vm.ns)
        .join(&vm.name)
        .join("cbt");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let overlay = dir.join(format!("{target}-{claim}.qcow2"));
    let placeholder = dir.join(format!("{target}-{claim}.placeholder"));
    let size = std::fs::metadata(disk).map_err(|e| e.to_string())?.len();
    std::fs::File::create(&placeholder)
        .and_then(|f| f.set_len(size))
        .map_err(|e| e.to_string())?;
    let p = overlay.to_str().unwrap();
    libvirt::qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={},data_file_raw=on", placeholder.display()),
        p,
        &size.to_string(),
    ])?;
    libvirt::qemu_img(&[
        "amend",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", disk.display()),
        p,
    ])?;
    let _ = std::fs::remove_file(&placeholder);
    Ok(overlay)
}

/// Writes each VM's and VMI's status as virt-controller and virt-handler would.
pub fn sync(inner: &Arc<Inner>) {
    follow_run_strategy(inner);
    let vms: Vec<VmState> = inner.vms.lock().unwrap().values().cloned().collect();
    let st = inner.store();
    for vm in vms {
        let state = cbt_state(inner, &vm);
        if !state.is_empty() {
            if let Some(v) = inner.vms.lock().unwrap().get_mut(&key(&vm.ns, &vm.name)) {
                v.had_cbt = true;
            }
        }
        if let Some(obj) = st.raw_get(VM, &vm.ns, &vm.name) {
            let mut status = obj["status"].clone();
            status["printableStatus"] = json!(if vm.running { "Running" } else { "Stopped" });
            status["ready"] = json!(vm.running);
            status["created"] = json!(vm.running);
            set_cbt(&mut status, state);
            let _ = store::set_status(st, VM, &obj, status);
        }
        let Some(vmi) = st.raw_get(VMI, &vm.ns, &vm.name) else {
            continue;
        };
        let busy = inner
            .jobs
            .lock()
            .unwrap()
            .values()
            .any(|j| j.ns == vm.ns && j.vm == vm.name);
        if !vm.running && !busy && s(&vmi, "/status/phase") != "Running" {
            // The VM controller removes a finished VMI; a backup that was running on it
            // has seen it stop first.
            let _ = st.raw_delete(VMI, &vm.ns, &vm.name);
            continue;
        }
        let mut status = vmi["status"].clone();
        status["phase"] = json!(if vm.running { "Running" } else { "Succeeded" });
        set_cbt(&mut status, state);
        status["volumeStatus"] = Value::Array(
            vm.volumes
                .iter()
                .map(|(target, name, claim)| {
                    json!({"name": name, "target": target,
                           "persistentVolumeClaimInfo": {"claimName": claim}})
                })
                .chain(
                    vmi["spec"]["utilityVolumes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|u| {
                            json!({"name": u["name"], "target": "", "phase": "Ready",
                                   "persistentVolumeClaimInfo": {"claimName": u["persistentVolumeClaim"]["claimName"]}})
                        }),
                )
                .collect(),
        );
        match &vm.migrating {
            Some(m) => status["migrationState"] = m.clone(),
            None => {
                if let Some(o) = status.as_object_mut() {
                    o.remove("migrationState");
                }
            }
        }
        let _ = store::set_status(st, VMI, &vmi, status);
    }
}

fn set_cbt(status: &mut Value, state: &str) {
    if !state.is_empty() {
        status["changedBlockTracking"]["state"] = json!(state);
        return;
    }
    let Some(o) = status.as_object_mut() else {
        return;
    };
    if let Some(c) = o
        .get_mut("changedBlockTracking")
        .and_then(Value::as_object_mut)
    {
        c.remove("state");
    }
    // An empty (or null) changedBlockTracking is left out, as omitempty leaves it.
    if o.get("changedBlockTracking")
        .is_some_and(|c| c.as_object().is_none_or(|c| c.is_empty()))
    {
        o.remove("changedBlockTracking");
    }
}

fn set_run_strategy(inner: &Inner, ns: &str, name: &str, strategy: &str) {
    for _ in 0..10 {
        let Some(mut vm) = inner.store().raw_get(VM, ns, name) else {
            return;
        };
        vm["spec"]["runStrategy"] = json!(strategy);
        if store::put_main(inner.store(), VM, vm).is_ok() {
            return;
        }
    }
}

pub fn stop(inner: &Arc<Inner>, ns: &str, name: &str) {
    let _pass = inner.pass.lock().unwrap();
    stop_locked(inner, ns, name);
    set_run_strategy(inner, ns, name, "Halted");
}

/// The domain powered off (the fake's guests do not answer ACPI shutdowns); the VMI goes
/// once no backup is running on it.
fn stop_locked(inner: &Arc<Inner>, ns: &str, name: &str) {
    let domain = {
        let mut vms = inner.vms.lock().unwrap();
        let vm = vms.get_mut(&key(ns, name)).expect("a mapped VM");
        vm.running = false;
        vm.domain.clone()
    };
    let _ = libvirt::virsh(&["destroy", &domain]);
}

pub fn start(inner: &Arc<Inner>, ns: &str, name: &str) {
    let _pass = inner.pass.lock().unwrap();
    set_run_strategy(inner, ns, name, "Always");
    start_locked(inner, ns, name);
}

/// The domain started and a new VMI made for it, as virt-handler does.
fn start_locked(inner: &Arc<Inner>, ns: &str, name: &str) {
    let domain = inner.vms.lock().unwrap()[&key(ns, name)].domain.clone();
    if !libvirt::running(&domain) {
        libvirt::virsh(&["start", &domain]).expect("the VM's domain starts");
    }
    let st = inner.store();
    // A new VMI: the old one, if the VM controller had not removed it yet, goes.
    let _ = st.raw_delete(VMI, ns, name);
    let snapshot = {
        let mut vms = inner.vms.lock().unwrap();
        let vm = vms.get_mut(&key(ns, name)).unwrap();
        vm.running = true;
        vm.clone()
    };
    let wanted = cbt_wanted(inner, &snapshot);
    if let Some(vm) = inner.vms.lock().unwrap().get_mut(&key(ns, name)) {
        vm.cbt_started = wanted;
    }
    create_vmi(inner, ns, name);
    // virt-handler on the new domain: every tracker of the VM with a checkpoint must have it
    // redefined before the next backup (pkg/virt-handler/cbt.go).
    for t in st.raw_list(TRACKER, Some(ns)).0 {
        if s(&t, "/spec/source/name") == name && !s(&t, "/status/latestCheckpoint/name").is_empty()
        {
            let mut status = t["status"].clone();
            status["checkpointRedefinitionRequired"] = json!(true);
            let _ = store::put_status(st, TRACKER, &t, status);
        }
    }
}

/// With the domain off: its checkpoints' metadata and its disks' bitmaps are gone.
pub fn drop_checkpoints(inner: &Arc<Inner>, ns: &str, name: &str) {
    let _pass = inner.pass.lock().unwrap();
    let domain = inner.vms.lock().unwrap()[&key(ns, name)].domain.clone();
    for cp in libvirt::checkpoints(&domain) {
        libvirt::virsh(&["checkpoint-delete", &domain, &cp, "--metadata"])
            .expect("checkpoint metadata deleted");
    }
    for (_, image) in libvirt::disks(&domain) {
        for b in libvirt::image_bitmaps(&image) {
            libvirt::qemu_img(&["bitmap", "--remove", image.to_str().unwrap(), &b])
                .expect("bitmap removed");
        }
    }
}

pub fn set_migrating(inner: &Arc<Inner>, ns: &str, name: &str, migrating: bool) {
    let _pass = inner.pass.lock().unwrap();
    let mut vms = inner.vms.lock().unwrap();
    let vm = vms.get_mut(&key(ns, name)).expect("a mapped VM");
    vm.migrating = if migrating {
        Some(
            json!({"startTimestamp": store::now(), "sourceNode": "kvfake-node",
                    "targetNode": "kvfake-node-2", "mode": "PreCopy", "completed": false}),
        )
    } else {
        None
    };
}
