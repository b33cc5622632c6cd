//! VirtualMachineExport (export.kubevirt.io/v1) of a PersistentVolumeClaim, as KubeVirt
//! v1.9.0 serves one whose content is not a KubeVirt disk (no CDI content-type annotation):
//! - pkg/storage/export/export/export.go: formats `dir` (`/volumes/<pvc>/dir/`, published
//!   without the trailing slash by `path.Join`) and `tar.gz` (`/volumes/<pvc>/disk.tar.gz`);
//!   `status.links.internal.{cert, volumes[{name: <pvc>, formats}]}`; phase Ready once the
//!   server runs; the token Secret's key `token`;
//! - pvc-source.go: Pending with `Ready=False/InUse` while a pod (here: a running backup)
//!   uses the claim, `PVCReady=False/PVCNotFound` without it;
//! - pkg/storage/export/virt-exportserver/exportserver.go: the token from the
//!   `x-kubevirt-export-token` header or query parameter, else 401 with no body; `dir` is Go's
//!   `http.StripPrefix` + `http.FileServer` (listing, redirects, single Range requests);
//!   `tar.gz` is `tar Scv --exclude=lost+found .` gzipped.
//!
//! One HTTPS server per export (as one exporter pod each), on 127.0.0.1 with a port of its
//! own: the real internal URL's host `virt-export-<name>.<ns>.svc` cannot resolve here. Not
//! modelled: external links (Ingress/Route), TTL expiry, the manifest and secret endpoints,
//! multipart Range answers (a request with several ranges gets the whole file), conditional
//! requests (If-Modified-Since and the like).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::store::{self, s, EXPORT, PVC, SECRET};
use super::tls::{self, answer, Body};
use super::{key, Inner};

const TOKEN: &str = "x-kubevirt-export-token";

pub struct Served {
    server: tls::Server,
    pub pvc: String,
    /// The export object it serves: one made again under the same name is a new export,
    /// with a new exporter pod (and token), as KubeVirt's controller keys by the object.
    uid: String,
}

struct Ctx {
    pvc: String,
    dir: PathBuf,
    token: String,
}

fn token_of(inner: &Inner, ns: &str, secret: &str) -> Option<String> {
    let sec = inner.store().raw_get(SECRET, ns, secret)?;
    if let Some(t) = sec.pointer("/stringData/token").and_then(Value::as_str) {
        return Some(t.to_string());
    }
    let b64 = sec.pointer("/data/token").and_then(Value::as_str)?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(raw).ok()
}

pub fn sync(inner: &Arc<Inner>) {
    let st = inner.store();
    let mut live = std::collections::BTreeSet::new();
    for e in st.raw_list(EXPORT, None).0 {
        let (ns, name) = (store::ns(&e).to_string(), store::name(&e).to_string());
        if store::deleting(&e) {
            continue;
        }
        if s(&e, "/spec/source/kind") != "PersistentVolumeClaim" {
            inner.log_error(format!(
                "VirtualMachineExport {ns}/{name}: source kind {} is not modelled by the fake",
                s(&e, "/spec/source/kind")
            ));
            continue;
        }
        live.insert(key(&ns, &name));
        let pvc_name = s(&e, "/spec/source/name").to_string();
        let secret = match s(&e, "/spec/tokenSecretRef") {
            "" => format!("export-token-{name}"),
            n => n.to_string(),
        };
        if s(&e, "/spec/tokenSecretRef").is_empty() && st.raw_get(SECRET, &ns, &secret).is_none() {
            // The controller makes a token Secret when none is named.
            let tok = uuid::Uuid::new_v4().simple().to_string();
            let _ = st.raw_create(
                SECRET,
                json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": secret, "namespace": ns},
                       "data": {"token": base64::engine::general_purpose::STANDARD.encode(tok)}}),
                false,
            );
        }
        let mut status = if e["status"].is_object() {
            e["status"].clone()
        } else {
            json!({})
        };
        status["tokenSecretRef"] = json!(secret);
        status["serviceName"] = json!(format!("virt-export-{name}"));
        let conds = &mut status["conditions"];
        let claim = st.raw_get(PVC, &ns, &pvc_name);
        let in_use = inner
            .jobs
            .lock()
            .unwrap()
            .values()
            .any(|j| j.ns == ns && j.pvc == pvc_name);
        let token = token_of(inner, &ns, &secret);
        let ready = match (&claim, in_use, &token) {
            (None, _, _) => {
                store::set_condition(conds, "Ready", "False", "Initializing", "");
                store::set_condition(
                    conds,
                    "PVCReady",
                    "False",
                    "PVCNotFound",
                    &format!("PersistentVolumeClaim {ns}/{pvc_name} not found"),
                );
                false
            }
            (Some(_), true, _) => {
                store::set_condition(
                    conds,
                    "Ready",
                    "False",
                    "InUse",
                    &format!("PersistentVolumeClaim {ns}/{pvc_name} is in use"),
                );
                store::set_condition(conds, "PVCReady", "True", "PVCBound", "");
                false
            }
            (Some(_), false, None) => {
                // The exporter pod cannot start without its token Secret.
                store::set_condition(conds, "Ready", "False", "PodPending", "");
                store::set_condition(conds, "PVCReady", "True", "PVCBound", "");
                false
            }
            (Some(_), false, Some(_)) => {
                store::set_condition(conds, "Ready", "True", "PodReady", "");
                store::set_condition(conds, "PVCReady", "True", "PVCBound", "");
                true
            }
        };
        if ready {
            let uid = s(&e, "/metadata/uid").to_string();
            let port = {
                let mut served = inner.exports.lock().unwrap();
                if served.get(&key(&ns, &name)).is_some_and(|x| x.uid != uid) {
                    served.remove(&key(&ns, &name));
                }
                let entry = served.entry(key(&ns, &name)).or_insert_with(|| {
                    let ctx = Arc::new(Ctx {
                        pvc: pvc_name.clone(),
                        dir: inner.pvc_dir(&ns, &pvc_name),
                        token: token.clone().unwrap(),
                    });
                    let host = format!("virt-export-{name}.{ns}.svc");
                    let cfg = inner
                        .ca
                        .server_config(&format!("export-{ns}-{name}"), &[host.as_str()]);
                    let h: tls::Handler = Arc::new(move |req| {
                        let ctx = ctx.clone();
                        Box::pin(async move { handle(ctx, req).await })
                    });
                    Served {
                        server: tls::serve(&inner.rt, cfg, h),
                        pvc: pvc_name.clone(),
                        uid: uid.clone(),
                    }
                });
                entry.server.addr.port()
            };
            let base = format!("https://127.0.0.1:{port}/volumes/{pvc_name}");
            status["phase"] = json!("Ready");
            status["links"] = json!({"internal": {
                "cert": inner.ca.pem,
                "volumes": [{"name": pvc_name, "formats": [
                    {"format": "dir", "url": format!("{base}/dir")},
                    {"format": "tar.gz", "url": format!("{base}/disk.tar.gz")},
                ]}],
            }});
        } else {
            inner.exports.lock().unwrap().remove(&key(&ns, &name));
            status["phase"] = json!("Pending");
            if let Some(o) = status.as_object_mut() {
                o.remove("links");
            }
        }
        if status.get("ttlExpirationTime").is_none() {
            if let Ok(t) = s(&e, "/metadata/creationTimestamp").parse::<jiff::Timestamp>() {
                status["ttlExpirationTime"] =
                    json!((t + jiff::SignedDuration::from_hours(2)).to_string());
            }
        }
        let _ = store::set_status(st, EXPORT, &e, status);
    }
    inner
        .exports
        .lock()
        .unwrap()
        .retain(|k, _| live.contains(k));
}

fn not_found() -> Response<Body> {
    answer(
        404,
        &[
            ("content-type", "text/plain; charset=utf-8"),
            ("x-content-type-options", "nosniff"),
        ],
        "404 page not found\n",
    )
}

fn redirect(to: &str) -> Response<Body> {
    answer(301, &[("location", to)], "")
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let dir_uri = format!("/volumes/{}/dir/", ctx.pvc);
    let archive_uri = format!("/volumes/{}/disk.tar.gz", ctx.pvc);
    // Go's ServeMux answers a subtree's root without its slash itself, before any handler.
    if path == dir_uri.trim_end_matches('/') {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        return redirect(&format!("{dir_uri}{q}"));
    }
    let is_dir = path.starts_with(&dir_uri);
    if !is_dir && path != archive_uri {
        return not_found();
    }
    let from_query = query.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == TOKEN)
            .map(|(_, v)| decode(v, true))
    });
    let from_header = req
        .headers()
        .get(TOKEN)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    if ![from_query, from_header].contains(&Some(ctx.token.clone())) {
        return answer(401, &[], "");
    }
    if !is_dir {
        if req.method() != hyper::Method::GET {
            return answer(400, &[], "");
        }
        return archive(&ctx.dir);
    }
    let rel = decode(&path[dir_uri.len()..], false);
    file_server(&ctx.dir, &format!("/{rel}"), &req).await
}

/// Percent-decoding; in a query a `+` is a space, as Go's `url.ParseQuery` reads it.
fn decode(s: &str, query: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if query && b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lexically cleaned, as Go's `path.Clean`: no `.`, `..` or doubled slashes, rooted.
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

fn http_date(t: std::time::SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or_default()
}

/// Go's `http.FileServer` over `root` for the request path `upath` (after StripPrefix).
async fn file_server(root: &Path, upath: &str, req: &Request<Incoming>) -> Response<Body> {
    let name = clean(upath);
    let full = root.join(name.trim_start_matches('/'));
    let Ok(meta) = std::fs::metadata(&full) else {
        return not_found();
    };
    // The request's own path decides the redirects, as `serveFile` with redirect=true does.
    let url = req.uri().path();
    let base = url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let q = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if meta.is_dir() {
        if !url.ends_with('/') {
            return redirect(&format!("{base}/{q}"));
        }
        let index = full.join("index.html");
        if index.is_file() {
            return serve_content(&index, req).await;
        }
        return dir_list(&full, &meta);
    }
    if url.ends_with('/') {
        return redirect(&format!("../{base}{q}"));
    }
    serve_content(&full, req).await
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

/// A path as Go's `url.URL{Path: p}.String()` writes it.
fn escape_path(p: &str) -> String {
    let mut out = String::new();
    for b in p.bytes() {
        let c = b as char;
        if c.is_ascii_alphanumeric() || "-_.~$&+,/:;=@!'()*".contains(c) {
            out.push(c);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    // A first segment with a colon would read as a scheme.
    let first = out.split('/').next().unwrap_or_default();
    if first.contains(':') {
        out = format!("./{out}");
    }
    out
}

fn dir_list(dir: &Path, meta: &std::fs::Metadata) -> Response<Body> {
    let mut entries: Vec<(String, bool)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                    (e.file_name().to_string_lossy().into_owned(), is_dir)
                })
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    let mut body = String::from(
        "<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n",
    );
    for (name, is_dir) in entries {
        let name = if is_dir { format!("{name}/") } else { name };
        body += &format!(
            "<a href=\"{}\">{}</a>\n",
            escape_path(&name),
            html_escape(&name)
        );
    }
    body += "</pre>\n";
    let lm = meta.modified().map(http_date).unwrap_or_default();
    answer(
        200,
        &[
            ("content-type", "text/html; charset=utf-8"),
            ("last-modified", &lm),
        ],
        body,
    )
}

/// A content type as Go's `mime.TypeByExtension`, else its sniffing (binary or text).
fn content_type(path: &Path, head: &[u8]) -> String {
    let by_ext = match path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
    {
        "html" | "htm" => Some("text/html; charset=utf-8"),
        "txt" => Some("text/plain; charset=utf-8"),
        "json" => Some("application/json"),
        "xml" => Some("text/xml; charset=utf-8"),
        "gz" => Some("application/gzip"),
        "tar" => Some("application/x-tar"),
        _ => None,
    };
    if let Some(t) = by_ext {
        return t.into();
    }
    let binary = head.iter().any(|&b| {
        b <= 0x08 || b == 0x0b || (0x0e..=0x1a).contains(&b) || (0x1c..=0x1f).contains(&b)
    });
    if binary {
        "application/octet-stream".into()
    } else {
        "text/plain; charset=utf-8".into()
    }
}

/// One range of `size` bytes from a `Range` header, as Go's `parseRange` reads a single one:
/// Err(()) when unsatisfiable.
fn parse_range(h: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.trim().split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || size == 0 {
            return Some(Err(()));
        }
        let n = n.min(size);
        return Some(Ok((size - n, size - 1)));
    }
    let start: u64 = a.parse().ok()?;
    if start >= size {
        return Some(Err(()));
    }
    let end = if b.is_empty() {
        size - 1
    } else {
        b.parse::<u64>().ok()?.min(size - 1)
    };
    if end < start {
        return None;
    }
    Some(Ok((start, end)))
}

async fn serve_content(path: &Path, req: &Request<Incoming>) -> Response<Body> {
    let Ok(mut f) = tokio::fs::File::open(path).await else {
        return not_found();
    };
    let meta = f.metadata().await.unwrap();
    let size = meta.len();
    let mut head = vec![0u8; 512.min(size as usize)];
    let _ = f.read_exact(&mut head).await;
    let ctype = content_type(path, &head);
    let lm = meta.modified().map(http_date).unwrap_or_default();
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|h| parse_range(h, size));
    let (code, start, len, crange) = match range {
        Some(Err(())) => {
            return answer(
                416,
                &[
                    ("content-range", &format!("bytes */{size}")),
                    ("content-type", "text/plain; charset=utf-8"),
                ],
                "invalid range: failed to overlap\n",
            )
        }
        Some(Ok((a, b))) => (206, a, b - a + 1, Some(format!("bytes {a}-{b}/{size}"))),
        None => (200, 0, size, None),
    };
    let mut resp = Response::builder()
        .status(code)
        .header("accept-ranges", "bytes")
        .header("content-type", ctype)
        .header("content-length", len.to_string())
        .header("last-modified", lm);
    if let Some(cr) = crange {
        resp = resp.header("content-range", cr);
    }
    if req.method() == hyper::Method::HEAD {
        return resp.body(tls::full(Bytes::new())).unwrap();
    }
    if f.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return answer(500, &[], "");
    }
    let stream = futures::stream::unfold((f, len), |(mut f, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; (256 * 1024).min(left as usize)];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok::<_, std::io::Error>(Frame::data(Bytes::from(buf))),
                    (f, left - n as u64),
                ))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    });
    resp.body(StreamBody::new(stream).boxed()).unwrap()
}

/// The PVC's root as a gzipped tar, streamed from `tar` as the export server streams it.
fn archive(dir: &Path) -> Response<Body> {
    let child = tokio::process::Command::new("tar")
        .args(["-cSz", "--exclude=lost+found", "-f", "-", "."])
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else {
        return answer(500, &[], "");
    };
    let out = child.stdout.take().unwrap();
    let stream = futures::stream::unfold((out, child), |(mut out, child)| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match out.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok::<_, std::io::Error>(Frame::data(Bytes::from(buf))),
                    (out, child),
                ))
            }
            Err(e) => Some((Err(e), (out, child))),
        }
    });
    Response::builder()
        .status(200)
        .body(StreamBody::new(stream).boxed())
        .unwrap()
}
