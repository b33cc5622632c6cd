//! PersistentVolumeClaims as directories under the fake's root: a claim is bound at once (a
//! provisioner with Immediate binding) and its directory goes with it. Filesystem mode only:
//! a Block claim is bound but gets no directory.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;

use serde_json::json;

use super::store::{self, s, PVC};
use super::{key, Inner};

pub fn is_block(pvc: &serde_json::Value) -> bool {
    s(pvc, "/spec/volumeMode") == "Block"
}

pub fn sync(inner: &Arc<Inner>) {
    let st = inner.store();
    let claims = st.raw_list(PVC, None).0;
    let mut seen = BTreeSet::new();
    for c in &claims {
        let k = key(store::ns(c), store::name(c));
        if !is_block(c) {
            let dir = inner.pvc_dir(&k.0, &k.1);
            if !dir.exists() {
                std::fs::create_dir_all(&dir).unwrap();
            }
            inner.pvc_dirs.lock().unwrap().insert(k.clone());
        }
        if s(c, "/status/phase") != "Bound" {
            let size = c
                .pointer("/spec/resources/requests/storage")
                .cloned()
                .unwrap_or(json!("1Gi"));
            let mut status = c["status"].clone();
            status["phase"] = json!("Bound");
            status["accessModes"] = c["spec"]["accessModes"].clone();
            status["capacity"] = json!({"storage": size});
            let _ = store::put_status(st, PVC, c, status);
        }
        seen.insert(k);
    }
    let gone: Vec<_> = inner
        .pvc_dirs
        .lock()
        .unwrap()
        .iter()
        .filter(|k| !seen.contains(*k))
        .cloned()
        .collect();
    for k in gone {
        let dir = inner.pvc_dir(&k.0, &k.1);
        unlimit(inner, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        inner.pvc_dirs.lock().unwrap().remove(&k);
    }
}

pub fn limit(inner: &Arc<Inner>, ns: &str, name: &str, bytes: u64) {
    let _pass = inner.pass.lock().unwrap();
    let dir = inner.pvc_dir(ns, name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
        .arg(&dir)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount a tmpfs on {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    inner.limited.lock().unwrap().insert(dir);
}

fn unlimit(inner: &Inner, dir: &std::path::Path) {
    if inner.limited.lock().unwrap().remove(dir) {
        let _ = Command::new("umount").arg(dir).output();
    }
}

pub fn unlimit_all(inner: &Inner) {
    let dirs: Vec<_> = inner.limited.lock().unwrap().iter().cloned().collect();
    for d in dirs {
        unlimit(inner, &d);
    }
}
