//! The fake reads and writes the stand-in's store as raw JSON, as KubeVirt's controllers do
//! through their own clients: never through snapback's types, so a mistake there shows.

use serde_json::{json, Value};
use snapback::cluster::mem::{MemStore, Part};

pub const VM: &str = "kubevirt.io/v1/VirtualMachine";
pub const VMI: &str = "kubevirt.io/v1/VirtualMachineInstance";
pub const KUBEVIRT: &str = "kubevirt.io/v1/KubeVirt";
pub const BACKUP: &str = "backup.kubevirt.io/v1alpha1/VirtualMachineBackup";
pub const TRACKER: &str = "backup.kubevirt.io/v1alpha1/VirtualMachineBackupTracker";
pub const EXPORT: &str = "export.kubevirt.io/v1/VirtualMachineExport";
pub const DATAVOLUME: &str = "cdi.kubevirt.io/v1beta1/DataVolume";
pub const CDICONFIG: &str = "cdi.kubevirt.io/v1beta1/CDIConfig";
pub const UPLOAD_TOKEN: &str = "upload.cdi.kubevirt.io/v1beta1/UploadTokenRequest";
pub const PVC: &str = "v1/PersistentVolumeClaim";
pub const EVENT: &str = "v1/Event";
pub const SECRET: &str = "v1/Secret";
pub const NAMESPACE: &str = "v1/Namespace";

/// The namespace and name of the KubeVirt CR (as virt-operator's install names it).
pub const KUBEVIRT_NS: &str = "kubevirt";
pub const KUBEVIRT_NAME: &str = "kubevirt";

pub fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

pub fn name(v: &Value) -> &str {
    s(v, "/metadata/name")
}

pub fn ns(v: &Value) -> &str {
    s(v, "/metadata/namespace")
}

pub fn deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp").is_some()
}

/// Writes `status` of the stored object unconditionally: the fake owns these statuses.
pub fn put_status(
    store: &MemStore,
    kind: &str,
    obj: &Value,
    status: Value,
) -> Result<Value, String> {
    let mut v = obj.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    v["status"] = status;
    store
        .raw_replace(kind, v, Part::Status, false)
        .map_err(|e| e.message.clone())
}

/// Writes the status only when it differs, so an unchanged object keeps its resourceVersion.
pub fn set_status(store: &MemStore, kind: &str, obj: &Value, status: Value) -> Result<(), String> {
    if obj.get("status") == Some(&status) {
        return Ok(());
    }
    put_status(store, kind, obj, status).map(|_| ())
}

/// Replaces the object (not its status) if nobody changed it since `obj` was read.
pub fn put_main(store: &MemStore, kind: &str, obj: Value) -> Result<Value, String> {
    store
        .raw_replace(kind, obj, Part::Main { status_apart: true }, true)
        .map_err(|e| e.message.clone())
}

pub fn has_finalizer(v: &Value, f: &str) -> bool {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x == f))
}

pub fn add_finalizer(store: &MemStore, kind: &str, v: &Value, f: &str) -> Result<Value, String> {
    if has_finalizer(v, f) {
        return Ok(v.clone());
    }
    let mut n = v.clone();
    match n["metadata"]["finalizers"].as_array_mut() {
        Some(a) => a.push(json!(f)),
        None => n["metadata"]["finalizers"] = json!([f]),
    }
    put_main(store, kind, n)
}

pub fn remove_finalizer(store: &MemStore, kind: &str, v: &Value, f: &str) -> Result<(), String> {
    if !has_finalizer(v, f) {
        return Ok(());
    }
    let mut n = v.clone();
    if let Some(a) = n["metadata"]["finalizers"].as_array_mut() {
        a.retain(|x| x != f);
    }
    put_main(store, kind, n).map(|_| ())
}

/// Sets a metav1.Condition in `conds` as apimachinery's `meta.SetStatusCondition` does: the
/// transition time changes only when the status does.
pub fn set_condition(conds: &mut Value, ty: &str, status: &str, reason: &str, message: &str) {
    if !conds.is_array() {
        *conds = json!([]);
    }
    let a = conds.as_array_mut().unwrap();
    let now = now();
    match a.iter_mut().find(|c| c["type"] == ty) {
        Some(c) => {
            if c["status"] != status {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(status);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        None => a.push(json!({"type": ty, "status": status, "reason": reason,
                              "message": message, "lastTransitionTime": now})),
    }
}

pub fn condition_true(v: &Value, ty: &str) -> bool {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|c| c["type"] == ty && c["status"] == "True"))
}

pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string()
}

/// An Event as client-go's recorder writes it (core v1), on `obj` of `api_version`/`kind`.
pub fn event(
    store: &MemStore,
    obj: &Value,
    ty: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let now = now();
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {
            "name": format!("{}.{}", name(obj), &uuid::Uuid::new_v4().simple().to_string()[..16]),
            "namespace": ns(obj),
        },
        "involvedObject": {
            "apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": name(obj),
            "namespace": ns(obj), "uid": obj["metadata"]["uid"],
            "resourceVersion": obj["metadata"]["resourceVersion"],
        },
        "reason": reason, "message": message, "type": ty,
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    let _ = store.raw_create(EVENT, ev, false);
}
