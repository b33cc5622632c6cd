//! VirtualMachineBackup as KubeVirt v1.9.0 runs it in push mode, with a real libvirt backup:
//! - the webhook (pkg/storage/admitters/backup.go): the IncrementalBackup gate, one
//!   non-terminal backup per identical `spec.source`;
//! - the controller (pkg/storage/cbt/backup.go, backup_target_pvc.go): prerequisites waited
//!   for in `Progressing=True/Initializing` with its messages, the finalizer, `status.type`,
//!   the conditions and events at the end, the tracker's `latestCheckpoint` after a success;
//! - virt-launcher (pkg/virt-launcher/virtwrap/storage/backup.go): checkpoint
//!   `<backup>-<creation time UTC 2006-01-02_15-04-05>`, files
//!   `<pvc>/<vmi>/<backup>-<time>/<backup>-<volume>.qcow2`, the XML lower-cased, fsfreeze
//!   through the guest agent unless skipQuiesce (a failure is a warning, not a failure), and
//!   the job's end read from libvirt (HandleBackupJobCompletedEvent).
//!
//! Not modelled: pull mode (an error is logged), the utility volume's hotplug as a separate
//! step (the claim is listed in the VMI's `spec.utilityVolumes` while the job runs),
//! SystemCritical migrations aborting a backup.

use std::path::PathBuf;
use std::sync::{Arc, Weak};

use serde_json::{json, Value};

use super::libvirt;
use super::store::{self, s, BACKUP, PVC, TRACKER, VM, VMI};
use super::{key, pvc, vm, Inner};
use crate::apiserver::{ApiServer, OnCreate};

const FINALIZER: &str = "backup.kubevirt.io/vmbackup-protection";
const TRACKER_KIND: &str = "VirtualMachineBackupTracker";

/// A libvirt backup job the fake's virt-launcher runs.
#[derive(Clone, Debug)]
pub struct Job {
    pub ns: String,
    pub name: String,
    pub vm: String,
    pub domain: String,
    pub pvc: String,
    pub checkpoint: String,
    pub dir: PathBuf,
    /// BackupVolumeInfo list (v1.9.0 still has `diskTarget`).
    pub volumes: Value,
    /// Succeeded, Failed or Skipped (backupv1.QuiesceStatus).
    pub quiesce: &'static str,
    /// The freeze's error: a warning at the end unless the job fails.
    pub warning: Option<String>,
    pub start_time: String,
    pub aborting: bool,
}

pub fn install_webhook(api: &ApiServer, inner: &Arc<Inner>) {
    const HOOK: &str = "admission webhook \"virtualmachinebackup-validator.backup.kubevirt.io\"";
    let w: Weak<Inner> = Arc::downgrade(inner);
    api.on_create(
        BACKUP,
        Arc::new(move |b: &Value| {
            let Some(inner) = w.upgrade() else {
                return OnCreate::Store;
            };
            if !vm::gate_on(&inner, "IncrementalBackup") {
                return OnCreate::Deny(
                    400,
                    "BadRequest".into(),
                    format!(
                        "{HOOK} denied the request: IncrementalBackup feature gate not enabled"
                    ),
                );
            }
            for other in inner.store().raw_list(BACKUP, Some(store::ns(b))).0 {
                let msg = if store::name(&other) == store::name(b) {
                    format!(
                        "VirtualMachineBackup \"{}\" already exists",
                        store::name(&other)
                    )
                } else if other["spec"]["source"] == b["spec"]["source"] && !terminal(&other) {
                    format!(
                        "VirtualMachineBackup \"{}\" in progress for source",
                        store::name(&other)
                    )
                } else {
                    continue;
                };
                return OnCreate::Deny(
                    422,
                    "Invalid".into(),
                    format!("{HOOK} denied the request: {msg}"),
                );
            }
            OnCreate::Store
        }),
    );
    let w: Weak<Inner> = Arc::downgrade(inner);
    api.on_create(
        TRACKER,
        Arc::new(move |_t: &Value| match w.upgrade() {
            Some(inner) if !vm::gate_on(&inner, "IncrementalBackup") => OnCreate::Deny(
                400,
                "BadRequest".into(),
                "admission webhook \"virtualmachinebackuptracker-validator.backup.kubevirt.io\" \
                 denied the request: IncrementalBackup feature gate not enabled"
                    .into(),
            ),
            _ => OnCreate::Store,
        }),
    );
}

pub fn terminal(b: &Value) -> bool {
    store::condition_true(b, "Complete") || store::condition_true(b, "Failed")
}

pub fn sync(inner: &Arc<Inner>) {
    let backups = inner.store().raw_list(BACKUP, None).0;
    for b in &backups {
        if let Err(e) = reconcile(inner, b) {
            inner.log_error(format!(
                "VirtualMachineBackup {}/{}: {e}",
                store::ns(b),
                store::name(b)
            ));
        }
    }
    // A job whose backup is gone altogether (no finalizer yet) is aborted.
    let orphans: Vec<Job> = inner
        .jobs
        .lock()
        .unwrap()
        .values()
        .filter(|j| inner.store().raw_get(BACKUP, &j.ns, &j.name).is_none())
        .cloned()
        .collect();
    for j in orphans {
        let _ = libvirt::virsh(&["domjobabort", &j.domain]);
        inner.jobs.lock().unwrap().remove(&key(&j.ns, &j.name));
    }
}

fn reconcile(inner: &Arc<Inner>, b: &Value) -> Result<(), String> {
    let st = inner.store();
    let (ns, name) = (store::ns(b).to_string(), store::name(b).to_string());
    if terminal(b) {
        if store::deleting(b) {
            store::remove_finalizer(st, BACKUP, b, FINALIZER)?;
        }
        return Ok(());
    }
    let mut status = if b["status"].is_object() {
        b["status"].clone()
    } else {
        json!({})
    };
    let tracker = if s(b, "/spec/source/kind") == TRACKER_KIND {
        let t = st.raw_get(TRACKER, &ns, s(b, "/spec/source/name"));
        if t.is_none() {
            initializing(
                &mut status,
                &format!("BackupTracker {} does not exist", s(b, "/spec/source/name")),
            );
            return store::set_status(st, BACKUP, b, status);
        }
        t
    } else {
        None
    };
    let source = match &tracker {
        Some(t) => s(t, "/spec/source/name").to_string(),
        None => s(b, "/spec/source/name").to_string(),
    };
    let job = inner.jobs.lock().unwrap().get(&key(&ns, &name)).cloned();
    match job {
        Some(job) => active(inner, b, status, job, tracker.as_ref()),
        None => start(inner, b, status, tracker.as_ref(), &source),
    }
}

fn initializing(status: &mut Value, msg: &str) {
    store::set_condition(
        &mut status["conditions"],
        "Progressing",
        "True",
        "Initializing",
        msg,
    );
}

fn set_failed(inner: &Inner, b: &Value, status: &mut Value, reason: &str, msg: &str) {
    let full = format!("Backup has failed: {msg}");
    store::set_condition(&mut status["conditions"], "Failed", "True", reason, &full);
    store::set_condition(
        &mut status["conditions"],
        "Progressing",
        "False",
        reason,
        &full,
    );
    store::event(
        inner.store(),
        b,
        "Warning",
        "VirtualMachineBackupFailed",
        msg,
        "virt-controller",
    );
}

fn quiesced(status: &mut Value, q: &str) {
    let (st, reason, msg) = match q {
        "Succeeded" => (
            "True",
            "QuiesceSucceeded",
            "Guest filesystem was successfully quiesced",
        ),
        "Failed" => ("False", "QuiesceFailed", "Guest filesystem quiesce failed"),
        _ => (
            "False",
            "QuiesceSkipped",
            "Guest filesystem quiesce was skipped",
        ),
    };
    store::set_condition(&mut status["conditions"], "Quiesced", st, reason, msg);
}

fn eligible_volume(v: &Value) -> bool {
    v.get("persistentVolumeClaim").is_some()
        || v.get("dataVolume").is_some()
        || v.get("hostDisk").is_some()
}

/// Why the backup cannot start yet (checkPrerequisites), or None.
fn waiting_for(inner: &Inner, ns: &str, source: &str, tracker: Option<&Value>) -> Option<String> {
    let st = inner.store();
    if st.raw_get(VM, ns, source).is_none() {
        return Some(format!("VM {ns}/{source} doesnt exist"));
    }
    let Some(vmi) = st.raw_get(VMI, ns, source) else {
        return Some(format!("vm {source} is not running, cannot do backup"));
    };
    let has_volumes = vmi["spec"]["volumes"]
        .as_array()
        .is_some_and(|a| a.iter().any(eligible_volume));
    if !has_volumes {
        return Some(format!("vm {source} has no volumes to backup"));
    }
    if s(&vmi, "/status/changedBlockTracking/state") != "Enabled" {
        return Some(format!(
            "vm {source} has no ChangedBlockTracking, cannot start backup"
        ));
    }
    if let Some(t) = tracker {
        if t.pointer("/status/checkpointRedefinitionRequired") == Some(&json!(true))
            && !s(t, "/status/latestCheckpoint/name").is_empty()
        {
            return Some(format!(
                "Waiting for checkpoint redefinition on tracker {}",
                store::name(t)
            ));
        }
    }
    let m = &vmi["status"]["migrationState"];
    if m.get("startTimestamp").is_some() && m.get("endTimestamp").is_none() {
        return Some(format!(
            "vm {source} is currently migrating, waiting for migration to complete before starting backup"
        ));
    }
    None
}

fn start(
    inner: &Arc<Inner>,
    b: &Value,
    mut status: Value,
    tracker: Option<&Value>,
    source: &str,
) -> Result<(), String> {
    let st = inner.store();
    let (ns, name) = (store::ns(b), store::name(b));
    if store::deleting(b) {
        if store::has_finalizer(b, FINALIZER) {
            set_failed(
                inner,
                b,
                &mut status,
                "DeletedDuringInit",
                "backup was deleted during initialization",
            );
            return store::set_status(st, BACKUP, b, status);
        }
        return Ok(());
    }
    if !s(b, "/status/type").is_empty() {
        let msg = if st.raw_get(VMI, ns, source).is_some() {
            "VMI backup status was lost"
        } else {
            "VMI was deleted during backup"
        };
        set_failed(inner, b, &mut status, "SourceLost", msg);
        return store::set_status(st, BACKUP, b, status);
    }
    if let Some(why) = waiting_for(inner, ns, source, tracker) {
        initializing(&mut status, &why);
        return store::set_status(st, BACKUP, b, status);
    }
    let b = store::add_finalizer(st, BACKUP, b, FINALIZER)?;
    let mode = match s(&b, "/spec/mode") {
        "" => "Push",
        m => m,
    };
    if mode != "Push" {
        return Err(format!("{mode} mode is not modelled by the fake"));
    }
    let pvc_name = s(&b, "/spec/pvcName");
    if pvc_name.is_empty() {
        return Err("backup target PVC name is nil".into());
    }
    let Some(claim) = st.raw_get(PVC, ns, pvc_name) else {
        initializing(&mut status, &format!("PVC {ns}/{pvc_name} doesnt exist"));
        return store::set_status(st, BACKUP, &b, status);
    };
    if pvc::is_block(&claim) {
        return Err(format!(
            "backup target PVC must be a filesystem PVC, provided pvc {ns}/{pvc_name} is block"
        ));
    }
    if let Some(other) = inner
        .jobs
        .lock()
        .unwrap()
        .values()
        .find(|j| j.ns == ns && j.vm == source)
    {
        return Err(format!(
            "failed to update source backup in progress: another backup {} is already in progress, cannot start backup {name}",
            other.name
        ));
    }
    let incremental = match tracker {
        Some(t) if !b["spec"]["forceFullBackup"].as_bool().unwrap_or(false) => {
            Some(s(t, "/status/latestCheckpoint/name").to_string()).filter(|c| !c.is_empty())
        }
        _ => None,
    };
    let vm = inner
        .vms
        .lock()
        .unwrap()
        .get(&key(ns, source))
        .cloned()
        .ok_or_else(|| format!("VM {ns}/{source} is not mapped to a domain by the test"))?;
    let created = s(&b, "/metadata/creationTimestamp").to_string();
    let job = start_job(
        inner,
        &vm,
        name,
        pvc_name,
        &created,
        incremental.as_deref(),
        b["spec"]["skipQuiesce"].as_bool().unwrap_or(false),
    )
    .map_err(|e| format!("failed to send Start backup command: {e}"))?;
    attach(inner, &job, true);
    status["type"] = json!(if incremental.is_some() {
        "Incremental"
    } else {
        "Full"
    });
    store::set_condition(
        &mut status["conditions"],
        "Progressing",
        "True",
        "Initiated",
        "Backup is in progress",
    );
    status["includedVolumes"] = job.volumes.clone();
    status["checkpointName"] = json!(job.checkpoint);
    quiesced(&mut status, job.quiesce);
    inner.jobs.lock().unwrap().insert(key(ns, name), job);
    store::set_status(st, BACKUP, &b, status)
}

/// The backup's PVC as a utility volume of the VMI and `backupStatus`, while it runs.
fn attach(inner: &Inner, job: &Job, on: bool) {
    let st = inner.store();
    let vol = {
        let n = format!("{}-backup-target-pvc", job.name);
        n[..n.len().min(63)].to_string()
    };
    for _ in 0..10 {
        let Some(mut vmi) = st.raw_get(VMI, &job.ns, &job.vm) else {
            return;
        };
        let mut uv: Vec<Value> = vmi["spec"]["utilityVolumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        uv.retain(|u| u["name"] != vol);
        if on {
            uv.push(json!({"name": vol, "persistentVolumeClaim": {"claimName": job.pvc}, "type": "Backup"}));
            vmi["status"]["changedBlockTracking"]["backupStatus"] = json!({
                "backupName": job.name, "startTimestamp": job.start_time,
                "checkpointName": job.checkpoint, "volumes": job.volumes,
                "quiesceStatus": job.quiesce,
            });
        } else if let Some(c) = vmi["status"]["changedBlockTracking"].as_object_mut() {
            c.remove("backupStatus");
        }
        vmi["spec"]["utilityVolumes"] = Value::Array(uv);
        if st
            .raw_replace(
                VMI,
                vmi,
                snapback::cluster::mem::Part::Main {
                    status_apart: false,
                },
                true,
            )
            .is_ok()
        {
            return;
        }
    }
}

fn start_job(
    inner: &Inner,
    vm: &vm::VmState,
    backup: &str,
    pvc_name: &str,
    created: &str,
    incremental: Option<&str>,
    skip_quiesce: bool,
) -> Result<Job, String> {
    let t: jiff::Timestamp = created
        .parse()
        .map_err(|e| format!("creationTimestamp {created:?}: {e}"))?;
    let time = t.strftime("%Y-%m-%d_%H-%M-%S").to_string();
    let checkpoint = format!("{backup}-{time}");
    let dir = inner
        .pvc_dir(&vm.ns, pvc_name)
        .join(&vm.name)
        .join(format!("{backup}-{time}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("error creating dir for backup: {e}"))?;
    let mut bdisks = String::new();
    let mut cdisks = String::new();
    let mut volumes = Vec::new();
    for (target, _) in libvirt::disks(&vm.domain) {
        match vm.volumes.iter().find(|(t, _, _)| *t == target) {
            Some((_, volume, _)) => {
                let file = dir.join(format!("{backup}-{volume}.qcow2"));
                bdisks += &format!(
                    "<disk name='{target}' backup='yes' type='file'><target file='{}'/></disk>",
                    file.display()
                );
                cdisks += &format!("<disk name='{target}' checkpoint='bitmap'/>");
                volumes.push(json!({"volumeName": volume, "diskTarget": target}));
            }
            None => {
                bdisks += &format!("<disk name='{target}' backup='no'/>");
                cdisks += &format!("<disk name='{target}' checkpoint='no'/>");
            }
        }
    }
    let inc = incremental
        .map(|c| format!("<incremental>{c}</incremental>"))
        .unwrap_or_default();
    // KubeVirt lower-cases both documents whole before virDomainBackupBegin.
    let backup_xml =
        format!("<domainbackup mode='push'>{inc}<disks>{bdisks}</disks></domainbackup>")
            .to_lowercase();
    let checkpoint_xml = format!(
        "<domaincheckpoint><name>{checkpoint}</name><disks>{cdisks}</disks></domaincheckpoint>"
    )
    .to_lowercase();
    let xml_dir = inner.root.join("xml");
    std::fs::create_dir_all(&xml_dir).unwrap();
    let bf = xml_dir.join(format!("{}-{backup}-backup.xml", vm.ns));
    let cf = xml_dir.join(format!("{}-{backup}-checkpoint.xml", vm.ns));
    std::fs::write(&bf, backup_xml).unwrap();
    std::fs::write(&cf, checkpoint_xml).unwrap();
    let (quiesce, warning, frozen) = if skip_quiesce {
        ("Skipped", None, false)
    } else {
        match libvirt::virsh(&["domfsfreeze", &vm.domain]) {
            Ok(_) => ("Succeeded", None, true),
            Err(e) => ("Failed", Some(e), false),
        }
    };
    let begun = libvirt::virsh(&[
        "backup-begin",
        &vm.domain,
        "--backupxml",
        bf.to_str().unwrap(),
        "--checkpointxml",
        cf.to_str().unwrap(),
    ]);
    if frozen {
        let _ = libvirt::virsh(&["domfsthaw", &vm.domain]);
    }
    if let Err(e) = begun {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    Ok(Job {
        ns: vm.ns.clone(),
        name: backup.to_string(),
        vm: vm.name.clone(),
        domain: vm.domain.clone(),
        pvc: pvc_name.to_string(),
        checkpoint,
        dir,
        volumes: Value::Array(volumes),
        quiesce,
        warning,
        start_time: created.to_string(),
        aborting: false,
    })
}

fn active(
    inner: &Arc<Inner>,
    b: &Value,
    mut status: Value,
    mut job: Job,
    tracker: Option<&Value>,
) -> Result<(), String> {
    let st = inner.store();
    let k = key(&job.ns, &job.name);
    let vmi_phase = st
        .raw_get(VMI, &job.ns, &job.vm)
        .map(|v| s(&v, "/status/phase").to_string());
    let Some(phase) = vmi_phase else {
        inner.jobs.lock().unwrap().remove(&k);
        set_failed(
            inner,
            b,
            &mut status,
            "SourceLost",
            "VMI was deleted during backup",
        );
        return store::set_status(st, BACKUP, b, status);
    };
    if phase != "Running" || !libvirt::running(&job.domain) {
        attach(inner, &job, false);
        inner.jobs.lock().unwrap().remove(&k);
        set_failed(
            inner,
            b,
            &mut status,
            "SourceUnhealthy",
            &format!("VMI is not in a running state: {phase}"),
        );
        return store::set_status(st, BACKUP, b, status);
    }
    if store::deleting(b) && !job.aborting {
        libvirt::virsh(&["domjobabort", &job.domain])
            .map_err(|e| format!("failed to abort backup: {e}"))?;
        job.aborting = true;
        inner.jobs.lock().unwrap().insert(k.clone(), job.clone());
        store::event(
            st,
            b,
            "Warning",
            "VirtualMachineBackupAborting",
            "Backup is aborting",
            "virt-controller",
        );
        store::set_condition(
            &mut status["conditions"],
            "Progressing",
            "True",
            "Aborting",
            "Backup is aborting",
        );
        return store::set_status(st, BACKUP, b, status);
    }
    let (now, _) = libvirt::job_type(&job.domain, false)?;
    if now != "None" {
        return Ok(());
    }
    let (ended, err) = libvirt::job_type(&job.domain, true)?;
    let (failed, mut message) = match ended.as_str() {
        "Completed" => (false, String::new()),
        "Cancelled" => (true, "backup aborted".to_string()),
        "Failed" => (true, String::new()),
        other => (true, format!("unexpected job completion type: {other}")),
    };
    if !err.is_empty() {
        message = if message.is_empty() {
            err
        } else {
            format!("{message}: {err}")
        };
    }
    if failed && message.is_empty() {
        message = "unknown failure reason".into();
    }
    // virt-handler keeps the freeze's message when the job's end brings none.
    let message = if message.is_empty() {
        job.warning.clone()
    } else {
        Some(message)
    };
    if let (Some(t), false) = (tracker, failed) {
        let mut ts = t["status"].clone();
        if !ts.is_object() {
            ts = json!({});
        }
        ts["latestCheckpoint"] = json!({
            "name": job.checkpoint, "creationTime": job.start_time, "volumes": job.volumes,
        });
        store::put_status(st, TRACKER, t, ts)
            .map_err(|e| format!("failed to patch BackupTracker status: {e}"))?;
    }
    attach(inner, &job, false);
    inner.jobs.lock().unwrap().remove(&k);
    if failed {
        set_failed(inner, b, &mut status, "Failed", message.as_deref().unwrap());
    } else if let Some(w) = message {
        let msg = format!("Completed VirtualMachineBackup, warning: {w}");
        store::set_condition(
            &mut status["conditions"],
            "Complete",
            "True",
            "CompletedWithWarning",
            &msg,
        );
        store::set_condition(
            &mut status["conditions"],
            "Progressing",
            "False",
            "CompletedWithWarning",
            &msg,
        );
        store::event(
            st,
            b,
            "Warning",
            "VirtualMachineBackupCompletedWithWarning",
            &msg,
            "virt-controller",
        );
    } else {
        let msg = "Successfully completed VirtualMachineBackup";
        store::set_condition(
            &mut status["conditions"],
            "Complete",
            "True",
            "Completed",
            msg,
        );
        store::set_condition(
            &mut status["conditions"],
            "Progressing",
            "False",
            "Completed",
            msg,
        );
        store::event(
            st,
            b,
            "Normal",
            "VirtualMachineBackupCompletedSuccessfully",
            msg,
            "virt-controller",
        );
    }
    status["includedVolumes"] = job.volumes.clone();
    quiesced(&mut status, job.quiesce);
    store::set_status(st, BACKUP, b, status)
}

/// On the fake's drop: no libvirt job outlives it.
pub fn abort_all(inner: &Inner) {
    for j in inner.jobs.lock().unwrap().values() {
        let _ = libvirt::virsh(&["domjobabort", &j.domain]);
    }
}
