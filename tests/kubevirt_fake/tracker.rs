//! Checkpoint redefinition after a VM's domain was recreated, as KubeVirt v1.9.0 does it
//! (pkg/storage/cbt/backuptracker.go; virt-launcher's RedefineCheckpoint in
//! pkg/virt-launcher/virtwrap/storage/backup.go): with the bitmap still in the disk the
//! checkpoint is redefined in libvirt and the flag cleared; without it the tracker's
//! `latestCheckpoint` and the flag are removed and a Warning Event `CheckpointRedefinitionFailed`
//! says the next backup will be full.

use std::sync::Arc;

use serde_json::{json, Value};

use super::libvirt;
use super::store::{self, s, TRACKER};
use super::{key, Inner};

pub fn sync(inner: &Arc<Inner>) {
    let st = inner.store();
    for t in st.raw_list(TRACKER, None).0 {
        if t.pointer("/status/checkpointRedefinitionRequired") != Some(&json!(true)) {
            continue;
        }
        let cp = s(&t, "/status/latestCheckpoint/name").to_string();
        let vm = inner
            .vms
            .lock()
            .unwrap()
            .get(&key(store::ns(&t), s(&t, "/spec/source/name")))
            .cloned();
        let Some(vm) = vm.filter(|v| v.running) else {
            continue;
        };
        let mut status = t["status"].clone();
        let obj = status.as_object_mut().unwrap();
        obj.remove("checkpointRedefinitionRequired");
        if cp.is_empty() {
            let _ = store::put_status(st, TRACKER, &t, status);
            continue;
        }
        match redefine(&vm.domain, &vm.volumes[0].0, &cp, &t) {
            Ok(()) => {}
            Err(e) => {
                store::event(
                    st,
                    &t,
                    "Warning",
                    "CheckpointRedefinitionFailed",
                    &format!(
                        "Failed to redefine checkpoint {cp}: {e}. Checkpoint cleared, next backup will be full."
                    ),
                    "virt-controller",
                );
                status.as_object_mut().unwrap().remove("latestCheckpoint");
            }
        }
        let _ = store::put_status(st, TRACKER, &t, status);
    }
}

/// The checkpoint exists in libvirt again, or why it cannot (as the 422 virt-handler answers).
fn redefine(domain: &str, target: &str, cp: &str, t: &Value) -> Result<(), String> {
    if libvirt::checkpoints(domain).iter().any(|c| c == cp) {
        return Ok(());
    }
    let disk = libvirt::disks(domain)
        .into_iter()
        .find(|(t, _)| t == target)
        .map(|(_, p)| p);
    let has_bitmap = disk.is_some_and(|p| libvirt::image_bitmaps(&p).iter().any(|b| b == cp));
    if !has_bitmap {
        return Err(format!(
            "Unprocessable Entity (422): no disks found with checkpoint bitmap {cp}"
        ));
    }
    let created: i64 = s(t, "/status/latestCheckpoint/creationTime")
        .parse::<jiff::Timestamp>()
        .map(|ts| ts.as_second())
        .unwrap_or(0);
    let xml = format!(
        "<domaincheckpoint><name>{cp}</name><creationTime>{created}</creationTime>\
         <disks><disk name='{target}' checkpoint='bitmap'/></disks></domaincheckpoint>"
    );
    let f = std::env::temp_dir().join(format!("kvfake-redefine-{}.xml", uuid::Uuid::new_v4()));
    std::fs::write(&f, xml).unwrap();
    let r = libvirt::virsh(&[
        "checkpoint-create",
        domain,
        f.to_str().unwrap(),
        "--redefine",
        "--redefine-validate",
    ]);
    let _ = std::fs::remove_file(&f);
    r.map(|_| ())
        .map_err(|e| format!("Unprocessable Entity (422): {e}"))
}
