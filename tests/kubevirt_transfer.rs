//! snapback's HTTPS transfer client (src/kubevirt/transfer.rs) against the fake KubeVirt's
//! servers: a VirtualMachineExport's `dir` (Go's FileServer, as virt-exportserver) for
//! downloads, CDI's upload proxy for uploads, both over HTTPS with the fake's own CA. One
//! server of the test's own, which ignores Range as a proxy in between might, checks the
//! fallback to a whole download.

mod apiserver;
mod common;
mod kubevirt_fake;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use apiserver::ApiServer;
use common::run_ok;
use kubevirt_fake::*;
use snapback::kubevirt::transfer::{self, ExportTarget, TransferError};
use snapback::kubevirt::types::{CdiConfigStatus, VirtualMachineExportLink};

const NS: &str = "vms";
const LONG: Duration = Duration::from_secs(120);
const TOKEN: &str = "export-s3cret-token";
/// A qcow2's path as KubeVirt's push backup lays it out in the PVC.
const QCOW: &str = "vm1/b1-2026-01-02_03-04-05/b1-rootdisk.qcow2";

/// Dropped in this order: the fake (its servers), then the stand-in.
struct World {
    fake: KubevirtFake,
    api: ApiServer,
    work: tempfile::TempDir,
}

fn world() -> World {
    let api = ApiServer::start();
    let fake = KubevirtFake::start(&api);
    World {
        fake,
        api,
        work: tempfile::tempdir().unwrap(),
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Bytes no compression or coincidence reproduces (xorshift), the same for a given seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The PVC `target` holding `files`, exported with the token TOKEN; the download target its
/// Ready status gives.
fn exported(w: &World, files: &[(&str, &[u8])]) -> ExportTarget {
    w.api.create_all(&[json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "target", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
                 "resources": {"requests": {"storage": "1Gi"}}},
    })]);
    let dir = w.fake.pvc_dir(NS, "target");
    w.fake
        .wait_for("the claim's directory", LONG, || dir.is_dir().then_some(()));
    for (rel, bytes) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    w.api.create_all(&[
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "tok", "namespace": NS},
               "stringData": {"token": TOKEN}}),
        json!({"apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport",
               "metadata": {"name": "ex", "namespace": NS},
               "spec": {"source": {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "target"},
                        "tokenSecretRef": "tok"}}),
    ]);
    let ex = w.fake.wait_for("the export to be Ready", LONG, || {
        let e = w.fake.get(EXPORT, NS, "ex")?;
        (e["status"]["phase"] == "Ready").then_some(e)
    });
    let link: VirtualMachineExportLink =
        serde_json::from_value(ex["status"]["links"]["internal"].clone()).unwrap();
    let t = ExportTarget::from_link(&link, "target", TOKEN).expect("a dir format");
    assert!(t.dir_url.ends_with("/volumes/target/dir"), "{}", t.dir_url);
    assert_eq!(t.ca_pem.as_deref(), Some(w.fake.ca_pem().as_str()));
    t
}

/// What `progress` was called with, in order.
type Calls = Vec<(u64, Option<u64>)>;

fn fetch(t: &ExportTarget, rel: &str, dest: &Path) -> (Result<u64, TransferError>, Calls) {
    let mut calls = Vec::new();
    let r = block_on(transfer::download(t, rel, dest, |d, n| calls.push((d, n))));
    (r, calls)
}

fn part_of(dest: &Path) -> PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

/// Counts from `progress` that only grow, by more than nothing each time after the first.
fn assert_growing(calls: &Calls) {
    for w in calls.windows(2) {
        assert!(w[1].0 > w[0].0, "progress went {:?} → {:?}", w[0], w[1]);
    }
}

#[test]
fn a_multi_mib_qcow2_from_the_exports_dir_url_arrives_byte_exact_with_progress_per_chunk() {
    let w = world();
    let want = noise((5 << 20) + 12_345, 1);
    let note = b"a name with a space\n".to_vec();
    let t = exported(&w, &[(QCOW, &want), ("notes/a b.txt", &note)]);
    let dest = w.work.path().join("rootdisk.qcow2");

    let (r, calls) = fetch(&t, QCOW, &dest);
    let len = want.len() as u64;
    assert_eq!(r.unwrap(), len);
    assert!(std::fs::read(&dest).unwrap() == want, "the file differs");
    assert!(!part_of(&dest).exists(), "the part is renamed into place");
    assert_eq!(calls.first(), Some(&(0, Some(len))));
    assert_eq!(calls.last(), Some(&(len, Some(len))));
    assert!(calls.len() > 3, "one call per chunk: {calls:?}");
    assert_growing(&calls);

    // Path segments are escaped and decoded by the server.
    let dest2 = w.work.path().join("note.txt");
    assert_eq!(
        fetch(&t, "notes/a b.txt", &dest2).0.unwrap(),
        note.len() as u64
    );
    assert_eq!(std::fs::read(&dest2).unwrap(), note);

    // A file the export does not have.
    let dest3 = w.work.path().join("missing");
    assert!(matches!(
        fetch(&t, "vm1/missing.qcow2", &dest3).0,
        Err(TransferError::NotFound)
    ));
    assert!(!dest3.exists() && !part_of(&dest3).exists());
}

#[test]
fn a_part_left_by_a_killed_download_is_resumed_with_a_range_request_and_a_whole_or_overlong_part_is_settled(
) {
    let w = world();
    let want = noise((4 << 20) + 777, 2);
    let len = want.len() as u64;
    let half = want.len() / 2;
    let t = exported(&w, &[(QCOW, &want)]);

    // The part holds the first half: only the rest is asked for, and the file is whole.
    let dest = w.work.path().join("resumed.qcow2");
    std::fs::write(part_of(&dest), &want[..half]).unwrap();
    let (r, calls) = fetch(&t, QCOW, &dest);
    assert_eq!(r.unwrap(), len);
    assert!(
        std::fs::read(&dest).unwrap() == want,
        "the resumed file differs"
    );
    assert!(!part_of(&dest).exists());
    // The first call comes before any byte is received: it starts at the half only if the
    // server answered 206 from there.
    assert_eq!(calls.first(), Some(&(half as u64, Some(len))));
    assert_eq!(calls.last(), Some(&(len, Some(len))));
    assert_growing(&calls);

    // The part's bytes are kept, not fetched again: a part whose half was altered stays
    // altered, and only the second half comes from the server.
    let dest = w.work.path().join("altered.qcow2");
    let altered: Vec<u8> = want[..half].iter().map(|b| !b).collect();
    std::fs::write(part_of(&dest), &altered).unwrap();
    assert_eq!(fetch(&t, QCOW, &dest).0.unwrap(), len);
    let got = std::fs::read(&dest).unwrap();
    assert!(
        got[..half] == altered[..],
        "the part's bytes were fetched again"
    );
    assert!(got[half..] == want[half..], "the rest differs");

    // A part as long as the file (killed between the last byte and the rename): the server
    // answers 416 to a range from its end, and the part is taken as it is.
    let dest = w.work.path().join("whole.qcow2");
    std::fs::write(part_of(&dest), &want).unwrap();
    let (r, calls) = fetch(&t, QCOW, &dest);
    assert_eq!(r.unwrap(), len);
    assert_eq!(calls, vec![(len, Some(len))]);
    assert!(std::fs::read(&dest).unwrap() == want);
    assert!(!part_of(&dest).exists());

    // A part longer than the file is of no use: the download starts over.
    let dest = w.work.path().join("overlong.qcow2");
    let mut longer = want.clone();
    longer.extend_from_slice(b"trailing");
    std::fs::write(part_of(&dest), &longer).unwrap();
    let (r, calls) = fetch(&t, QCOW, &dest);
    assert_eq!(r.unwrap(), len);
    assert_eq!(calls.first(), Some(&(0, Some(len))));
    assert!(std::fs::read(&dest).unwrap() == want);
}

#[test]
fn a_wrong_token_is_unauthorized_leaves_no_file_and_keeps_a_part_for_the_right_one() {
    let w = world();
    let want = noise(1 << 20, 3);
    let good = exported(&w, &[(QCOW, &want)]);
    let bad = ExportTarget {
        token: "not-the-token".into(),
        ..good.clone()
    };

    let dest = w.work.path().join("x.qcow2");
    let (r, calls) = fetch(&bad, QCOW, &dest);
    let e = r.unwrap_err();
    assert!(matches!(e, TransferError::Unauthorized), "{e:?}");
    assert_eq!(e.reason(), "Unauthorized");
    assert!(calls.is_empty());
    assert!(!dest.exists() && !part_of(&dest).exists());
    for text in [e.to_string(), format!("{e:?}"), format!("{bad:?}")] {
        assert!(!text.contains("not-the-token"), "{text}");
    }

    // A part from an earlier attempt is left as it was, for the right token to resume.
    std::fs::write(part_of(&dest), &want[..1000]).unwrap();
    assert!(matches!(
        fetch(&bad, QCOW, &dest).0,
        Err(TransferError::Unauthorized)
    ));
    assert_eq!(std::fs::read(part_of(&dest)).unwrap(), want[..1000]);
    let (r, calls) = fetch(&good, QCOW, &dest);
    assert_eq!(r.unwrap(), want.len() as u64);
    assert_eq!(calls.first(), Some(&(1000, Some(want.len() as u64))));
    assert!(std::fs::read(&dest).unwrap() == want);
}

/// A self-signed certificate for 127.0.0.1 (key, PEM), made with openssl in `dir`.
fn self_signed(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("other.key");
    let crt = dir.join("other.crt");
    run_ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            crt.to_str().unwrap(),
            "-days",
            "2",
            "-subj",
            "/CN=other",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
    (key, std::fs::read_to_string(crt).unwrap())
}

#[test]
fn a_server_not_signed_by_the_given_ca_fails_as_tls_and_leaves_no_file() {
    let w = world();
    let t = exported(&w, &[(QCOW, b"data")]);
    let (_, other_pem) = self_signed(w.work.path());
    let wrong_ca = ExportTarget {
        ca_pem: Some(other_pem),
        ..t.clone()
    };
    let dest = w.work.path().join("x");
    let e = fetch(&wrong_ca, QCOW, &dest).0.unwrap_err();
    assert!(matches!(e, TransferError::Tls(_)), "{e:?}");
    assert!(!dest.exists() && !part_of(&dest).exists());
    // A CA bundle that holds no certificate is refused before any connection.
    let no_ca = ExportTarget {
        ca_pem: Some("not a PEM".into()),
        ..t
    };
    assert!(matches!(
        fetch(&no_ca, QCOW, &dest).0,
        Err(TransferError::Tls(_))
    ));
}

/// An HTTPS server on 127.0.0.1 that answers every GET with `body` whole (200, with its
/// length), whatever Range was asked, and records the Range headers it got.
async fn range_ignoring_server(
    dir: &Path,
    body: Vec<u8>,
) -> (String, String, Arc<Mutex<Vec<Option<String>>>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (key, pem) = self_signed(dir);
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_file(key).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/dir", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    let body = bytes::Bytes::from(body);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let (seen, body) = (seen.clone(), body.clone());
            let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let range = req
                    .headers()
                    .get("range")
                    .map(|v| v.to_str().unwrap().to_string());
                seen.lock().unwrap().push(range);
                let resp = hyper::Response::builder()
                    .status(200)
                    .header("content-length", body.len())
                    .body(http_body_util::Full::new(body.clone()))
                    .unwrap();
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc),
            );
        }
    });
    (url, pem, ranges)
}

#[test]
fn a_server_answering_a_range_with_the_whole_file_rewrites_the_part_from_the_start() {
    let work = tempfile::tempdir().unwrap();
    let want = noise(3 << 20, 4);
    let len = want.len() as u64;
    let dest = work.path().join("x.qcow2");
    // A part whose bytes differ from the file's: a 200 must not be appended to it.
    std::fs::write(part_of(&dest), vec![0xAAu8; 1 << 20]).unwrap();
    let (ranges, calls) = block_on(async {
        let (url, pem, ranges) = range_ignoring_server(work.path(), want.clone()).await;
        let t = ExportTarget {
            dir_url: url,
            ca_pem: Some(pem),
            token: TOKEN.into(),
        };
        let mut calls = Vec::new();
        let r = transfer::download(&t, "f.qcow2", &dest, |d, n| calls.push((d, n))).await;
        assert_eq!(r.unwrap(), len);
        let seen = ranges.lock().unwrap().clone();
        (seen, calls)
    });
    assert_eq!(ranges, vec![Some(format!("bytes={}-", 1 << 20))]);
    assert_eq!(calls.first(), Some(&(0, Some(len))));
    assert!(std::fs::read(&dest).unwrap() == want, "the file differs");
    assert!(!part_of(&dest).exists());
}

/// A DataVolume `name` to upload into, and a token for it from an UploadTokenRequest.
fn upload_volume(w: &World, name: &str) -> String {
    w.api.create_all(&[json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"source": {"upload": {}},
                 "storage": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}},
    })]);
    let (code, text) = w.api.raw_request(
        "POST",
        &format!("/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{NS}/uploadtokenrequests"),
        "application/json",
        &json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"pvcName": name}})
        .to_string(),
        Duration::from_secs(20),
    );
    assert!(code == 200 || code == 201, "{text}");
    let answer: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    answer["status"]["token"].as_str().unwrap().to_string()
}

fn phase_is(w: &World, name: &str, phase: &str) {
    w.fake.wait_for(phase, LONG, || {
        let dv = w.fake.get(DATAVOLUME, NS, name)?;
        (dv["status"]["phase"] == phase).then_some(())
    });
}

/// CDIConfig's proxy host and CA, as the worker reads them.
fn proxy(w: &World) -> (String, String) {
    let cfg = w.fake.get(CDICONFIG, "", "config").unwrap();
    let st: CdiConfigStatus = serde_json::from_value(cfg["status"].clone()).unwrap();
    (st.upload_proxy_url.unwrap(), st.upload_proxy_ca.unwrap())
}

/// A 24 MiB raw image with 5 MiB of noise at 9 MiB, and it as qcow2.
fn images(dir: &Path) -> (PathBuf, PathBuf) {
    let raw = dir.join("src.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(24 << 20).unwrap();
    drop(f);
    let mut data = std::fs::read(&raw).unwrap();
    data[9 << 20..14 << 20].copy_from_slice(&noise(5 << 20, 5));
    std::fs::write(&raw, data).unwrap();
    let qcow = dir.join("src.qcow2");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            qcow.to_str().unwrap(),
        ],
    );
    (raw, qcow)
}

fn send(proxy: &str, ca: &str, token: &str, src: &Path) -> (Result<(), TransferError>, Calls) {
    let mut calls = Vec::new();
    let r = block_on(transfer::upload(proxy, Some(ca), token, src, |d, n| {
        calls.push((d, n))
    }));
    (r, calls)
}

#[test]
fn a_qcow2_uploaded_through_cdis_proxy_becomes_the_raw_disk_img_qemu_img_converts_it_to() {
    let w = world();
    let (host, ca) = proxy(&w);
    // CDI writes the proxy as a bare host; the client adds the scheme.
    assert!(!host.contains("://"), "{host}");
    let token = upload_volume(&w, "restored");
    phase_is(&w, "restored", "UploadReady");
    let (_, qcow) = images(w.work.path());
    let qlen = std::fs::metadata(&qcow).unwrap().len();

    let (r, calls) = send(&host, &ca, &token, &qcow);
    r.unwrap();
    assert_eq!(calls.first(), Some(&(0, Some(qlen))));
    assert_eq!(calls.last(), Some(&(qlen, Some(qlen))));
    assert_growing(&calls);
    phase_is(&w, "restored", "Succeeded");

    let expected = w.work.path().join("expected.raw");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            qcow.to_str().unwrap(),
            expected.to_str().unwrap(),
        ],
    );
    let disk = w.fake.pvc_dir(NS, "restored").join("disk.img");
    assert!(
        std::fs::read(&disk).unwrap() == std::fs::read(&expected).unwrap(),
        "disk.img is not the qcow2 converted to raw"
    );

    // The same proxy given with its scheme works alike; the claim is full now, so CDI says
    // not ready (already uploaded).
    let (r, _) = send(&format!("https://{host}"), &ca, &token, &qcow);
    match r {
        Err(TransferError::NotReady(m)) => assert!(m.contains("already finished"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_upload_before_upload_ready_is_not_ready_a_bad_token_unauthorized_and_a_backing_file_rejected()
{
    let w = world();
    let (host, ca) = proxy(&w);
    w.fake.hold_uploads(true);
    let token = upload_volume(&w, "restored");
    phase_is(&w, "restored", "UploadScheduled");
    let (raw, qcow) = images(w.work.path());

    let e = send(&host, &ca, &token, &qcow).0.unwrap_err();
    assert!(matches!(e, TransferError::NotReady(_)), "{e:?}");
    assert!(e.is_retryable());
    assert!(!e.to_string().contains(&token), "{e}");

    for bad in ["not-a-token", "", "two words"] {
        let e = send(&host, &ca, bad, &qcow).0.unwrap_err();
        assert!(matches!(e, TransferError::Unauthorized), "{bad:?}: {e:?}");
        assert!(!e.is_retryable());
    }

    w.fake.hold_uploads(false);
    phase_is(&w, "restored", "UploadReady");
    // An image with a backing file: the upload server cannot open it.
    let overlay = w.work.path().join("overlay.qcow2");
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
    match send(&host, &ca, &token, &overlay).0 {
        Err(TransferError::Rejected(m)) => assert!(m.contains("backing file"), "{m}"),
        other => panic!("{other:?}"),
    }

    // Once ready, the same call goes through: NotReady was worth retrying.
    send(&host, &ca, &token, &qcow).0.unwrap();
    phase_is(&w, "restored", "Succeeded");
    let disk = w.fake.pvc_dir(NS, "restored").join("disk.img");
    assert!(std::fs::read(&disk).unwrap() == std::fs::read(&raw).unwrap());

    // A file that is not there fails locally, naming it.
    let e = send(&host, &ca, &token, &w.work.path().join("absent"))
        .0
        .unwrap_err();
    assert_eq!(e.reason(), "Io", "{e:?}");
}
