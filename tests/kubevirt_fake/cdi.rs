//! CDI's upload path, as CDI v1.66.0 behaves:
//! - a DataVolume (cdi.kubevirt.io/v1beta1) with `spec.source.upload: {}` gets a claim of its
//!   name, then `status.phase` UploadScheduled → UploadReady (the upload pod ready), and
//!   Succeeded once an upload was converted;
//! - UploadTokenRequest (upload.cdi.kubevirt.io/v1beta1, an aggregated API in cdi-apiserver,
//!   pkg/apiserver/apiserver.go) answers its create with `status.token`, valid 5 minutes,
//!   storing nothing;
//! - the upload proxy (pkg/uploadproxy/uploadproxy.go) at CDIConfig's
//!   `status.uploadProxyURL` (a bare host, as CDI sets it from the Ingress): `POST
//!   /v1beta1/upload` (and `/v1alpha1/upload`, and the `-async` forms, answered alike) with
//!   `Authorization: Bearer <token>`; 400 without or with a malformed header, 401 for a bad
//!   token, 503 with the reason in the body while the claim is missing, not ready, or already
//!   uploaded;
//! - the upload server (pkg/uploadserver, pkg/image/qemu.go): the body (qcow2, raw, vmdk,
//!   vdi, vhd, vhdx) converted to a raw `disk.img` in the claim with `qemu-img convert`; an
//!   image with a backing file refused with 500 "Saving stream failed: …" (in the upload pod
//!   no backing file can exist).
//!
//! Not modelled: compressed (gz, xz) uploads, the form and archive endpoints, resizing
//! `disk.img` to the claim's size, scratch space as a claim of its own, token signatures.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::libvirt::qemu_img;
use super::store::{self, s, CDICONFIG, DATAVOLUME, PVC, UPLOAD_TOKEN};
use super::tls::{self, answer, Body};
use super::{key, Inner, Key};
use crate::apiserver::{ApiServer, OnCreate};

#[derive(Default)]
pub struct State {
    /// token → (namespace, claim, expiry).
    tokens: Mutex<HashMap<String, (String, String, Instant)>>,
    /// Claims whose upload has finished, and those being uploaded now.
    done: Mutex<BTreeSet<Key>>,
    uploading: Mutex<BTreeSet<Key>>,
}

pub fn start(api: &ApiServer, inner: &Arc<Inner>) -> tls::Server {
    let w: Weak<Inner> = Arc::downgrade(inner);
    api.on_create(
        UPLOAD_TOKEN,
        Arc::new(move |req: &Value| {
            let Some(inner) = w.upgrade() else {
                return OnCreate::Deny(
                    503,
                    "ServiceUnavailable".into(),
                    "cdi-apiserver is gone".into(),
                );
            };
            let pvc = s(req, "/spec/pvcName").to_string();
            let token = format!("cdi-upload-{}", uuid::Uuid::new_v4().simple());
            inner.cdi.tokens.lock().unwrap().insert(
                token.clone(),
                (
                    store::ns(req).to_string(),
                    pvc,
                    Instant::now() + Duration::from_secs(300),
                ),
            );
            let mut out = req.clone();
            out["status"] = json!({"token": token});
            OnCreate::Answer(out)
        }),
    );
    let cfg = inner
        .ca
        .server_config("uploadproxy", &["cdi-uploadproxy.cdi.svc"]);
    let w: Weak<Inner> = Arc::downgrade(inner);
    let h: tls::Handler = Arc::new(move |req| {
        let w = w.clone();
        Box::pin(async move {
            match w.upgrade() {
                Some(inner) => proxy(inner, req).await,
                None => answer(503, &[], ""),
            }
        })
    });
    let server = tls::serve(&inner.rt, cfg, h);
    inner
        .store()
        .raw_create(
            CDICONFIG,
            json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "CDIConfig",
                   "metadata": {"name": "config"},
                   "spec": {},
                   "status": {"uploadProxyURL": server.addr.to_string(),
                              "uploadProxyCA": inner.ca.pem,
                              "filesystemOverhead": {"global": "0.06"}}}),
            false,
        )
        .unwrap();
    server
}

fn is_upload(dv: &Value) -> bool {
    dv.pointer("/spec/source/upload").is_some()
}

/// The DataVolume controller for upload DataVolumes, and the garbage collector of their claims.
pub fn sync(inner: &Arc<Inner>) {
    let st = inner.store();
    let dvs = st.raw_list(DATAVOLUME, None).0;
    for dv in dvs.iter().filter(|d| is_upload(d)) {
        let (ns, name) = (store::ns(dv), store::name(dv));
        let k = key(ns, name);
        let done = inner.cdi.done.lock().unwrap().contains(&k);
        let claim = st.raw_get(PVC, ns, name);
        // CDI's upload pod is ready only once the claim is bound and mounted: here, once the
        // claim controller has bound it and made its directory. (Saying UploadReady in the
        // same pass that creates the claim let an upload race the directory's creation.)
        let mounted = claim.as_ref().is_some_and(|c| {
            s(c, "/status/phase") == "Bound"
                && (super::pvc::is_block(c) || inner.pvc_dir(ns, name).is_dir())
        });
        let ready = mounted && (!inner.hold_uploads.load(Ordering::SeqCst) || done);
        let pod_phase = if done { "Succeeded" } else { "Running" };
        let annotations = json!({
            "cdi.kubevirt.io/storage.upload.target": "",
            "cdi.kubevirt.io/storage.contentType": match s(dv, "/spec/contentType") { "" => "kubevirt", c => c },
            "cdi.kubevirt.io/storage.pod.phase": pod_phase,
            "cdi.kubevirt.io/storage.pod.ready": ready.to_string(),
        });
        match claim {
            None => {
                let spec = if dv["spec"]["pvc"].is_object() {
                    dv["spec"]["pvc"].clone()
                } else {
                    dv["spec"]["storage"].clone()
                };
                let mut spec = if spec.is_object() { spec } else { json!({}) };
                if spec.get("accessModes").is_none() {
                    spec["accessModes"] = json!(["ReadWriteOnce"]);
                }
                if spec.get("volumeMode").is_none() {
                    spec["volumeMode"] = json!("Filesystem");
                }
                let _ = st.raw_create(
                    PVC,
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                           "metadata": {"name": name, "namespace": ns, "annotations": annotations,
                                        "ownerReferences": [{"apiVersion": "cdi.kubevirt.io/v1beta1",
                                            "kind": "DataVolume", "name": name, "uid": dv["metadata"]["uid"],
                                            "controller": true, "blockOwnerDeletion": true}]},
                           "spec": spec}),
                    true,
                );
            }
            Some(c) => {
                let mut n = c.clone();
                for (k, v) in annotations.as_object().unwrap() {
                    n["metadata"]["annotations"][k] = v.clone();
                }
                if n != c {
                    let _ = store::put_main(st, PVC, n);
                }
            }
        }
        let mut status = if dv["status"].is_object() {
            dv["status"].clone()
        } else {
            json!({})
        };
        let phase = match (done, ready) {
            (true, _) => "Succeeded",
            (false, true) => "UploadReady",
            (false, false) => "UploadScheduled",
        };
        status["phase"] = json!(phase);
        status["progress"] = json!(if done { "100.0%" } else { "N/A" });
        status["claimName"] = json!(name);
        let conds = &mut status["conditions"];
        store::set_condition(
            conds,
            "Bound",
            "True",
            "Bound",
            &format!("PVC {name} Bound"),
        );
        store::set_condition(
            conds,
            "Ready",
            if done { "True" } else { "False" },
            if done { "" } else { "TransferRunning" },
            if done {
                ""
            } else {
                "Upload into PVC not finished yet"
            },
        );
        store::set_condition(
            conds,
            "Running",
            if done { "False" } else { "True" },
            if done { "Completed" } else { "Pod is running" },
            "",
        );
        let _ = store::set_status(st, DATAVOLUME, dv, status);
    }
    // A DataVolume's claim goes with it (owner references).
    for c in st.raw_list(PVC, None).0 {
        let owned_by_dv = c["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["kind"] == "DataVolume")
            .map(|o| s(o, "/name").to_string());
        if let Some(dv) = owned_by_dv {
            if st.raw_get(DATAVOLUME, store::ns(&c), &dv).is_none() {
                let _ = st.raw_delete(PVC, store::ns(&c), store::name(&c));
                inner
                    .cdi
                    .done
                    .lock()
                    .unwrap()
                    .remove(&key(store::ns(&c), store::name(&c)));
            }
        }
    }
}

fn text(code: u16, body: &str) -> Response<Body> {
    answer(
        code,
        &[("content-type", "text/plain; charset=utf-8")],
        body.to_string(),
    )
}

async fn proxy(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let req = Request::from_parts(parts, ());
    let target = match check(&inner, &req) {
        Ok(k) => k,
        Err(r) => {
            // Read what the client still sends, as Go's server reads an unread body before
            // it answers, so the client gets the answer rather than a broken pipe.
            while let Some(Ok(_)) = body.frame().await {}
            return r;
        }
    };
    let Some((ns, pvc)) = target else {
        return answer(200, &[], "");
    };
    let k = key(&ns, &pvc);
    let r = receive(&inner, &ns, &pvc, body).await;
    inner.cdi.uploading.lock().unwrap().remove(&k);
    match r {
        Ok(()) => {
            inner.cdi.done.lock().unwrap().insert(k);
            answer(200, &[], "")
        }
        Err(e) => text(500, &format!("Saving stream failed: {e}")),
    }
}

/// The proxy's checks: the claim to upload into (None for a request answered 200 at once,
/// the health check and HEAD), or the refusal.
#[allow(clippy::result_large_err)]
fn check(inner: &Inner, req: &Request<()>) -> Result<Option<(String, String)>, Response<Body>> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return Ok(None);
    }
    let known = [
        "/v1beta1/upload",
        "/v1alpha1/upload",
        "/v1beta1/upload-async",
        "/v1alpha1/upload-async",
    ];
    if !known.contains(&path.as_str()) {
        return Err(answer(404, &[], "404 page not found\n"));
    }
    if req.method() == hyper::Method::HEAD && path.ends_with("-async") {
        return Ok(None);
    }
    let Some(auth) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    else {
        return Err(answer(400, &[], ""));
    };
    let token = match auth.split_once(char::is_whitespace) {
        Some((scheme, t))
            if scheme.eq_ignore_ascii_case("bearer")
                && !t.trim().is_empty()
                && !t.trim().contains(' ') =>
        {
            t.trim().to_string()
        }
        _ => return Err(answer(400, &[], "")),
    };
    let found = inner.cdi.tokens.lock().unwrap().get(&token).cloned();
    let Some((ns, pvc, _)) = found.filter(|(_, _, e)| *e > Instant::now()) else {
        return Err(answer(401, &[], ""));
    };
    let k = key(&ns, &pvc);
    if inner.store().raw_get(PVC, &ns, &pvc).is_none() {
        return Err(text(
            503,
            &format!("rejecting Upload Request for PVC {pvc} that doesn&#39;t exist"),
        ));
    }
    if inner.cdi.done.lock().unwrap().contains(&k) {
        return Err(text(
            503,
            &format!("rejecting Upload Request for PVC {pvc} that already finished uploading"),
        ));
    }
    let ready = inner.store().raw_get(PVC, &ns, &pvc).is_some_and(|c| {
        s(
            &c,
            "/metadata/annotations/cdi.kubevirt.io~1storage.pod.ready",
        ) == "true"
    });
    if !ready {
        // The proxy polls for the upload pod for a while, then gives up with its context's error.
        return Err(text(503, "context deadline exceeded"));
    }
    if !inner.cdi.uploading.lock().unwrap().insert(k.clone()) {
        // The upload server takes one upload at a time.
        return Err(answer(503, &[], ""));
    }
    Ok(Some((ns, pvc)))
}

async fn receive(inner: &Inner, ns: &str, pvc: &str, mut body: Incoming) -> Result<(), String> {
    let dir = inner.pvc_dir(ns, pvc);
    let scratch = dir.join(".kvfake-scratch-image");
    let mut f = tokio::fs::File::create(&scratch)
        .await
        .map_err(|e| e.to_string())?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(d) = frame.data_ref() {
            f.write_all(d).await.map_err(|e| e.to_string())?;
        }
    }
    f.flush().await.map_err(|e| e.to_string())?;
    drop(f);
    let disk = dir.join("disk.img");
    let scratch2 = scratch.clone();
    let r = tokio::task::spawn_blocking(move || convert(&scratch2, &disk))
        .await
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&scratch);
    r
}

fn convert(image: &std::path::Path, disk: &std::path::Path) -> Result<(), String> {
    let p = image.to_str().unwrap();
    let info: Value = serde_json::from_str(&qemu_img(&["info", "--output=json", p])?)
        .map_err(|e| e.to_string())?;
    if let Some(b) = info["backing-filename"].as_str() {
        return Err(format!(
            "Image {p} is invalid because it has invalid backing file {b}"
        ));
    }
    let format = s(&info, "/format").to_string();
    let allowed = ["raw", "qcow2", "vmdk", "vdi", "vpc", "vhdx"];
    if !allowed.contains(&format.as_str()) {
        return Err(format!("Image {p} has unsupported format {format}"));
    }
    qemu_img(&[
        "convert",
        "-t",
        "writeback",
        "-f",
        &format,
        "-O",
        "raw",
        p,
        disk.to_str().unwrap(),
    ])
    .map(|_| ())
}
