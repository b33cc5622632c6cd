//! HTTPS transfers of the kubevirt-worker: qcow2 files out of a VirtualMachineExport of the
//! backup PVC, and rebuilt disks into a DataVolume through CDI's upload proxy.
//!
//! Both servers present certificates of a cluster-internal CA that the cluster publishes next
//! to the URL (`status.links.*.cert` of the export, `status.uploadProxyCA` of CDIConfig), so a
//! given CA is the only thing trusted: no system roots beside it. Both transfers stream; a disk
//! image is never held in memory.
//!
//! The export's `dir` format is Go's `http.FileServer` (virt-exportserver's `dirHandler`), so
//! a file has a Content-Length and a single Range is answered 206: a download killed half-way
//! resumes from its `.part` file. The upload proxy has nothing of the kind (a failed upload
//! starts over), and answers 503 until the DataVolume is UploadReady.
//!
//! Tokens travel only in request headers marked sensitive, never in a URL, and no error or
//! log line of this module holds one.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt, ReadBuf};

use super::types::{export_format, VirtualMachineExportLink, EXPORT_TOKEN_HEADER};

/// CDI's synchronous upload path: the answer comes once the image is converted into the
/// claim, so a 200 means the DataVolume holds the disk.
const UPLOAD_PATH: &str = "/v1beta1/upload";
/// Bytes per read of a file being uploaded.
const CHUNK: usize = 256 * 1024;
/// Longest wait for the TCP connection; a Service without endpoints otherwise hangs for the
/// kernel's SYN retries.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence in the middle of a download before it is given up (the `.part` stays for
/// the next attempt). A whole-transfer limit would be wrong for images of any size.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How much of an error answer's body is kept as its message.
const MESSAGE_LIMIT: usize = 1024;

/// Why a transfer failed. `reason()` gives a stable word for each kind, which the caller maps
/// into snapback's FailureReason; messages carry what the server said, never a token.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// 401, or a 400 from the upload proxy (it answers so only for a missing or malformed
    /// `Authorization` header): the token is wrong, expired or empty.
    #[error("Unauthorized: the server refused the token")]
    Unauthorized,
    /// 503: the upload pod is not ready (DataVolume not UploadReady yet), already took its
    /// upload, or the claim is missing. Worth retrying while the DataVolume is not Succeeded.
    #[error("NotReady: {0}")]
    NotReady(String),
    /// 500: the server refused the data, e.g. CDI's upload server could not convert the image
    /// ("Saving stream failed: …", a backing file, an unsupported format).
    #[error("Rejected: {0}")]
    Rejected(String),
    /// 404: no such file in the export.
    #[error("NotFound: the export has no such file")]
    NotFound,
    /// Any other status that is not success.
    #[error("Http: status {0}")]
    Http(u16),
    /// The handshake failed: a certificate not signed by the given CA, a wrong name, or a CA
    /// PEM that holds no certificate.
    #[error("Tls: {0}")]
    Tls(String),
    /// Connecting failed or the connection broke or stalled in the middle.
    #[error("Network: {0}")]
    Network(String),
    /// The server's answer does not add up: no length, a range other than the one asked for,
    /// more or fewer bytes than announced.
    #[error("Protocol: {0}")]
    Protocol(String),
    /// A URL or file path this module cannot use.
    #[error("InvalidUrl: {0}")]
    InvalidUrl(String),
    /// A local file could not be read or written.
    #[error("Io: {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl TransferError {
    /// A stable word for the kind of failure, for conditions, metrics and the caller's mapping.
    pub fn reason(&self) -> &'static str {
        match self {
            TransferError::Unauthorized => "Unauthorized",
            TransferError::NotReady(_) => "NotReady",
            TransferError::Rejected(_) => "Rejected",
            TransferError::NotFound => "NotFound",
            TransferError::Http(_) => "Http",
            TransferError::Tls(_) => "Tls",
            TransferError::Network(_) => "Network",
            TransferError::Protocol(_) => "Protocol",
            TransferError::InvalidUrl(_) => "InvalidUrl",
            TransferError::Io { .. } => "Io",
        }
    }

    /// Whether the same call may succeed later without anything being changed: the server was
    /// not ready or the network failed. A download retried resumes from its `.part`.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransferError::NotReady(_) | TransferError::Network(_) => true,
            TransferError::Http(s) => matches!(s, 502 | 504),
            _ => false,
        }
    }

    /// Whether a local file system ran out of space (staging full, as opposed to a failure of
    /// the server).
    pub fn is_no_space(&self) -> bool {
        matches!(self, TransferError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }

    fn io(path: &Path, source: io::Error) -> Self {
        TransferError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where to download an export's files from: the `dir` URL of one volume, the CA to trust and
/// the export token (the `token` key of the Secret the export names).
#[derive(Clone)]
pub struct ExportTarget {
    /// The volume's `dir` format URL as the export's status gives it, without the trailing
    /// slash (`path.Join` drops it); a file is `<dir_url>/<path>`.
    pub dir_url: String,
    /// PEM CA bundle to trust instead of the system roots; None trusts the system roots (an
    /// external link whose Ingress has a public certificate).
    pub ca_pem: Option<String>,
    pub token: String,
}

/// Written by hand so that the token never reaches a log through `{:?}`.
impl fmt::Debug for ExportTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportTarget")
            .field("dir_url", &self.dir_url)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<PEM>"))
            .field("token", &"<redacted>")
            .finish()
    }
}

impl ExportTarget {
    /// The `dir` format of `volume` (for a PVC export, the PVC's name) in one of the export's
    /// link sets, with the link set's CA; None when the export does not serve `dir` for it
    /// (a PVC with disk-image content serves `raw` and `gzip` instead).
    pub fn from_link(
        link: &VirtualMachineExportLink,
        volume: &str,
        token: impl Into<String>,
    ) -> Option<ExportTarget> {
        let url = link.url(volume, export_format::DIR)?;
        Some(ExportTarget {
            dir_url: url.trim_end_matches('/').to_string(),
            ca_pem: (!link.cert.trim().is_empty()).then(|| link.cert.clone()),
            token: token.into(),
        })
    }
}

/// Fetches `rel_path` (relative to the export's volume root, `/`-separated) into `dest`.
///
/// The bytes go to `<dest>.part` first. A `.part` already there (left by a killed process) is
/// continued with a Range request; a server that answers the whole file instead (200) is
/// fine, the part is rewritten from the start. Once the file's length matches what the server
/// announced, the part is synced, renamed to `dest` and the directory synced.
///
/// `progress(done, total)` is called once the answer's headers are in (with `done` the bytes
/// already in the part: a first call with `done > 0` means the server took up the resume) and
/// after each chunk written. Returns the file's length.
///
/// On a refusal before any byte (a wrong token, a missing file) no file is created; on a
/// failure in the middle the part stays, for the next call to resume.
pub async fn download(
    target: &ExportTarget,
    rel_path: &str,
    dest: &Path,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<u64, TransferError> {
    let uri = file_uri(&target.dir_url, rel_path)?;
    let client = client::<Empty<Bytes>>(target.ca_pem.as_deref())?;
    let token = sensitive(&target.token)?;
    let part = part_path(dest)?;
    // A second round only when the server refused the range of a part longer than its file:
    // that part is of no use and the download starts over without a Range.
    for _round in 0..2 {
        let have = match tokio::fs::metadata(&part).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(TransferError::io(&part, e)),
        };
        let mut req = Request::get(uri.clone()).header(EXPORT_TOKEN_HEADER, token.clone());
        if have > 0 {
            req = req.header(RANGE, format!("bytes={have}-"));
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| TransferError::InvalidUrl(e.to_string()))?;
        let resp = client.request(req).await.map_err(|e| from_client(&e))?;
        let (start, total) = match resp.status() {
            StatusCode::OK => (0, content_length(&resp)?),
            StatusCode::PARTIAL_CONTENT => {
                let (first, last, total) = content_range(&resp)?;
                // An open-ended range was asked for; anything else would leave a hole or an
                // overlap in the part.
                if first != have || last + 1 != total {
                    return Err(TransferError::Protocol(format!(
                        "asked for bytes {have}- and got {first}-{last}/{total}"
                    )));
                }
                (have, total)
            }
            StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => {
                // Go answers `bytes */<size>` when the range starts at or past the end: a part
                // exactly that long is a whole file whose rename was cut short.
                if unsatisfied_length(&resp) == Some(have) {
                    progress(have, Some(have));
                    finish(&part, dest).await?;
                    return Ok(have);
                }
                tokio::fs::remove_file(&part)
                    .await
                    .map_err(|e| TransferError::io(&part, e))?;
                continue;
            }
            status => return Err(status_error(status, resp).await),
        };
        receive(resp, &part, start, total, &mut progress).await?;
        finish(&part, dest).await?;
        return Ok(total);
    }
    Err(TransferError::Protocol(
        "the server refused a range after the part was dropped".into(),
    ))
}

/// Writes the answer's body into `part` from `start` on, until `total` bytes are there.
async fn receive(
    resp: Response<Incoming>,
    part: &Path,
    start: u64,
    total: u64,
    progress: &mut impl FnMut(u64, Option<u64>),
) -> Result<(), TransferError> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(part)
        .await
        .map_err(|e| TransferError::io(part, e))?;
    // Cut to `start`: a 200 rewrites the part from the beginning, and a part is never trusted
    // past what the server confirmed.
    file.set_len(start)
        .await
        .map_err(|e| TransferError::io(part, e))?;
    file.seek(io::SeekFrom::Start(start))
        .await
        .map_err(|e| TransferError::io(part, e))?;
    let mut done = start;
    progress(done, Some(total));
    let mut body = resp.into_body();
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await {
            Err(_) => {
                return Err(TransferError::Network(format!(
                    "no data for {}s at byte {done} of {total}",
                    IDLE_TIMEOUT.as_secs()
                )))
            }
            Ok(None) => break,
            Ok(Some(f)) => f.map_err(|e| from_client(&e))?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if done + data.len() as u64 > total {
            return Err(TransferError::Protocol(format!(
                "more than the announced {total} bytes"
            )));
        }
        file.write_all(&data)
            .await
            .map_err(|e| TransferError::io(part, e))?;
        done += data.len() as u64;
        progress(done, Some(total));
    }
    if done != total {
        return Err(TransferError::Network(format!(
            "the answer ended at byte {done} of {total}"
        )));
    }
    file.flush().await.map_err(|e| TransferError::io(part, e))?;
    Ok(())
}

/// Syncs the part, renames it into place and syncs the directory, so that `dest` existing
/// means the whole file is on disk.
async fn finish(part: &Path, dest: &Path) -> Result<(), TransferError> {
    let f = tokio::fs::OpenOptions::new()
        .write(true)
        .open(part)
        .await
        .map_err(|e| TransferError::io(part, e))?;
    f.sync_all().await.map_err(|e| TransferError::io(part, e))?;
    drop(f);
    tokio::fs::rename(part, dest)
        .await
        .map_err(|e| TransferError::io(dest, e))?;
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let d = tokio::fs::File::open(dir)
        .await
        .map_err(|e| TransferError::io(dir, e))?;
    d.sync_all().await.map_err(|e| TransferError::io(dir, e))
}

/// Uploads the image `src` into the DataVolume the token was issued for, through CDI's upload
/// proxy: `POST https://<proxy>/v1beta1/upload` with `Authorization: Bearer <token>` and the
/// file as the body (Content-Length set, streamed).
///
/// `proxy_url` is CDIConfig's `status.uploadProxyURL`, a bare `host[:port]` as CDI writes
/// it; an `https://` prefix (a `uploadProxyURLOverride` may have one) is accepted too, plain
/// `http://` is refused, the token must not travel in clear. `ca_pem` is CDIConfig's
/// `status.uploadProxyCA`; None trusts the system roots.
///
/// `progress(sent, total)` follows the body as it is handed to the connection. The proxy
/// answers only once the upload server has converted the image, so the last call may come
/// long before this returns.
pub async fn upload(
    proxy_url: &str,
    ca_pem: Option<&str>,
    token: &str,
    src: &Path,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<(), TransferError> {
    let uri = upload_uri(proxy_url)?;
    let bearer = sensitive(&format!("Bearer {token}"))?;
    let client = client::<FileBody>(ca_pem)?;
    let file = tokio::fs::File::open(src)
        .await
        .map_err(|e| TransferError::io(src, e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| TransferError::io(src, e))?
        .len();
    let (sent_tx, mut sent_rx) = tokio::sync::watch::channel(0u64);
    let failure = Arc::new(Mutex::new(None));
    let body = FileBody {
        file,
        left: len,
        sent: 0,
        buf: vec![0; CHUNK],
        progress: sent_tx,
        failure: failure.clone(),
    };
    let req = Request::post(uri)
        .header(AUTHORIZATION, bearer)
        .header(CONTENT_LENGTH, len)
        .header("content-type", "application/octet-stream")
        .body(body)
        .map_err(|e| TransferError::InvalidUrl(e.to_string()))?;
    progress(0, Some(len));
    // The body lives inside the client's connection task, so it reports through a channel and
    // the progress callback (which need not be Send or 'static) is called here.
    let answer = client.request(req);
    tokio::pin!(answer);
    let mut reported = 0;
    let result = loop {
        tokio::select! {
            r = &mut answer => break r,
            changed = sent_rx.changed() => {
                if changed.is_err() {
                    // The body is gone (sent or dropped); only the answer is left to wait for.
                    break answer.await;
                }
                let sent = *sent_rx.borrow_and_update();
                if sent != reported {
                    reported = sent;
                    progress(sent, Some(len));
                }
            }
        }
    };
    let sent = *sent_rx.borrow();
    if sent != reported {
        progress(sent, Some(len));
    }
    // A local read failure surfaces from hyper as a broken body; say what it was.
    if let Some(e) = failure.lock().unwrap().take() {
        return Err(TransferError::io(src, e));
    }
    let resp = result.map_err(|e| from_client(&e))?;
    match resp.status() {
        s if s.is_success() => Ok(()),
        // The proxy answers 400 only when the Authorization header is missing or not
        // `Bearer <token>`, which for this client means an empty or malformed token.
        StatusCode::BAD_REQUEST => Err(TransferError::Unauthorized),
        s => Err(status_error(s, resp).await),
    }
}

/// The upload's body: the file, read a chunk at a time as hyper asks for it.
struct FileBody {
    file: tokio::fs::File,
    left: u64,
    sent: u64,
    buf: Vec<u8>,
    progress: tokio::sync::watch::Sender<u64>,
    failure: Arc<Mutex<Option<io::Error>>>,
}

impl FileBody {
    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let copy = io::Error::new(e.kind(), e.to_string());
        *self.failure.lock().unwrap() = Some(e);
        self.left = 0;
        Poll::Ready(Some(Err(copy)))
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let want = this
            .buf
            .len()
            .min(usize::try_from(this.left).unwrap_or(usize::MAX));
        let mut rb = ReadBuf::new(&mut this.buf[..want]);
        if let Err(e) = ready!(Pin::new(&mut this.file).poll_read(cx, &mut rb)) {
            return this.fail(e);
        }
        let n = rb.filled().len();
        if n == 0 {
            // Content-Length is already sent: a file that shrank cannot be sent whole.
            return this.fail(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being uploaded",
            ));
        }
        let chunk = Bytes::copy_from_slice(&this.buf[..n]);
        this.left -= n as u64;
        this.sent += n as u64;
        this.progress.send_replace(this.sent);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// A client that trusts `ca_pem` alone, or the system roots without one.
fn client<B>(
    ca_pem: Option<&str>,
) -> Result<Client<HttpsConnector<HttpConnector>, B>, TransferError>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TransferError::Tls(e.to_string()))?;
    let builder = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| TransferError::Tls(format!("the CA PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| TransferError::Tls(format!("the CA PEM: {e}")))?;
            }
            if roots.is_empty() {
                return Err(TransferError::Tls("the CA PEM holds no certificate".into()));
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .with_native_roots()
            .map_err(|e| TransferError::Tls(format!("the system roots: {e}")))?,
    };
    let tls = builder.with_no_client_auth();
    let mut http = HttpConnector::new();
    // The scheme is checked by the TLS layer (https only), not by the TCP connector.
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// A header value that hyper and any logging of headers treat as secret.
fn sensitive(s: &str) -> Result<HeaderValue, TransferError> {
    let mut v = HeaderValue::from_str(s)
        .map_err(|_| TransferError::InvalidUrl("the token is not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// `<dir_url>/<rel_path>`, each segment percent-encoded (Go's FileServer decodes the path).
fn file_uri(dir_url: &str, rel_path: &str) -> Result<Uri, TransferError> {
    let mut url = dir_url.trim_end_matches('/').to_string();
    if rel_path.is_empty() {
        return Err(TransferError::InvalidUrl("an empty file path".into()));
    }
    for seg in rel_path.split('/') {
        // FileServer cleans `..` and `.` away and redirects empty segments; a path that
        // relies on either is a caller's mistake, not something to send.
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(TransferError::InvalidUrl(format!(
                "file path {rel_path:?} has an empty, `.` or `..` segment"
            )));
        }
        url.push('/');
        for b in seg.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                url.push(b as char);
            } else {
                url.push_str(&format!("%{b:02X}"));
            }
        }
    }
    https_uri(&url)
}

fn upload_uri(proxy_url: &str) -> Result<Uri, TransferError> {
    let host = proxy_url.trim().trim_end_matches('/');
    let host = host.strip_prefix("https://").unwrap_or(host);
    if host.is_empty() || host.contains("://") || host.contains('/') {
        return Err(TransferError::InvalidUrl(format!(
            "upload proxy {proxy_url:?} is not a host[:port] or https://host[:port]"
        )));
    }
    https_uri(&format!("https://{host}{UPLOAD_PATH}"))
}

fn https_uri(url: &str) -> Result<Uri, TransferError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| TransferError::InvalidUrl(format!("{url}: {e}")))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(TransferError::InvalidUrl(format!(
            "{url}: not an https URL with a host"
        )));
    }
    Ok(uri)
}

fn part_path(dest: &Path) -> Result<PathBuf, TransferError> {
    let name = dest.file_name().ok_or_else(|| {
        TransferError::InvalidUrl(format!("destination {} has no file name", dest.display()))
    })?;
    let mut part = name.to_os_string();
    part.push(".part");
    Ok(dest.with_file_name(part))
}

fn header(resp: &Response<Incoming>, name: hyper::header::HeaderName) -> Option<&str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

fn content_length(resp: &Response<Incoming>) -> Result<u64, TransferError> {
    // Without a length a cut stream could not be told from the end of the file.
    header(resp, CONTENT_LENGTH)
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| TransferError::Protocol("a 200 answer without Content-Length".into()))
}

/// `bytes <first>-<last>/<total>` of a 206.
fn content_range(resp: &Response<Incoming>) -> Result<(u64, u64, u64), TransferError> {
    let v = header(resp, CONTENT_RANGE).unwrap_or_default();
    let parsed = (|| {
        let (range, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
        let (first, last) = range.split_once('-')?;
        let (first, last, total) = (
            first.trim().parse::<u64>().ok()?,
            last.trim().parse::<u64>().ok()?,
            total.trim().parse::<u64>().ok()?,
        );
        (first <= last && last < total).then_some((first, last, total))
    })();
    parsed.ok_or_else(|| TransferError::Protocol(format!("a 206 answer with Content-Range {v:?}")))
}

/// The size in a 416's `Content-Range: bytes */<size>`.
fn unsatisfied_length(resp: &Response<Incoming>) -> Option<u64> {
    header(resp, CONTENT_RANGE)?
        .trim()
        .strip_prefix("bytes */")?
        .trim()
        .parse()
        .ok()
}

/// The error for a refusal, with the start of the body as its message where that says why.
async fn status_error(status: StatusCode, resp: Response<Incoming>) -> TransferError {
    match status {
        StatusCode::UNAUTHORIZED => TransferError::Unauthorized,
        StatusCode::NOT_FOUND => TransferError::NotFound,
        StatusCode::SERVICE_UNAVAILABLE => TransferError::NotReady(message(resp, status).await),
        StatusCode::INTERNAL_SERVER_ERROR => TransferError::Rejected(message(resp, status).await),
        s => TransferError::Http(s.as_u16()),
    }
}

/// At most MESSAGE_LIMIT bytes of the body, as text; the status's name when it is empty.
async fn message(resp: Response<Incoming>, status: StatusCode) -> String {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while out.len() < MESSAGE_LIMIT {
        match tokio::time::timeout(Duration::from_secs(10), body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d[..d.len().min(MESSAGE_LIMIT - out.len())]);
                }
            }
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&out).trim().to_string();
    if text.is_empty() {
        status.to_string()
    } else {
        text
    }
}

/// Tells a TLS failure (rustls' error somewhere in the chain) from other connection failures,
/// with the whole chain as the message: hyper's own text alone ("client error (Connect)")
/// says nothing. No part of the chain holds a header value.
fn from_client(e: &(dyn StdError + 'static)) -> TransferError {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = s.source();
    }
    let msg = parts.join(": ");
    if is_tls(e) {
        TransferError::Tls(msg)
    } else {
        TransferError::Network(msg)
    }
}

/// Whether rustls' error is in `e`'s chain. hyper-rustls wraps tokio-rustls' io::Error (which
/// wraps rustls' error) in another io::Error, and an io::Error's `source()` skips the error it
/// wraps, so each io::Error is opened with `get_ref` as well.
fn is_tls(e: &(dyn StdError + 'static)) -> bool {
    if e.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
        let inner: &(dyn StdError + 'static) = inner;
        if is_tls(inner) {
            return true;
        }
    }
    e.source().is_some_and(is_tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_path_is_joined_to_the_dir_url_with_each_segment_escaped() {
        let u = file_uri(
            "https://virt-export-e.ns.svc/volumes/pvc/dir",
            "vm/b-2026-01-02_03-04-05/a b%.qcow2",
        )
        .unwrap();
        assert_eq!(
            u.to_string(),
            "https://virt-export-e.ns.svc/volumes/pvc/dir/vm/b-2026-01-02_03-04-05/a%20b%25.qcow2"
        );
        for bad in ["", "/abs", "a//b", "a/../b", "./a", "a/"] {
            assert!(
                matches!(
                    file_uri("https://h/volumes/p/dir", bad),
                    Err(TransferError::InvalidUrl(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            file_uri("http://h/volumes/p/dir", "a"),
            Err(TransferError::InvalidUrl(_))
        ));
    }

    #[test]
    fn the_upload_proxy_is_a_bare_host_or_an_https_url_never_plain_http() {
        let want = "https://cdi-uploadproxy.cdi.svc:8443/v1beta1/upload";
        assert_eq!(
            upload_uri("cdi-uploadproxy.cdi.svc:8443")
                .unwrap()
                .to_string(),
            want
        );
        assert_eq!(
            upload_uri("https://cdi-uploadproxy.cdi.svc:8443/")
                .unwrap()
                .to_string(),
            want
        );
        for bad in ["", "http://h", "h/path", "ftp://h"] {
            assert!(upload_uri(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_part_file_sits_beside_the_destination() {
        assert_eq!(
            part_path(Path::new("/s/x.qcow2")).unwrap(),
            Path::new("/s/x.qcow2.part")
        );
        assert!(part_path(Path::new("/")).is_err());
    }

    #[test]
    fn an_export_target_comes_from_the_dir_format_and_never_shows_its_token() {
        let link: VirtualMachineExportLink = serde_json::from_value(serde_json::json!({
            "cert": "PEM", "volumes": [{"name": "pvc", "formats": [
                {"format": "dir", "url": "https://virt-export-e.ns.svc/volumes/pvc/dir"}]}]}))
        .unwrap();
        let t = ExportTarget::from_link(&link, "pvc", "s3cret-token").unwrap();
        assert_eq!(t.dir_url, "https://virt-export-e.ns.svc/volumes/pvc/dir");
        assert_eq!(t.ca_pem.as_deref(), Some("PEM"));
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(ExportTarget::from_link(&link, "other", "t").is_none());
    }

    #[test]
    fn both_transfers_can_be_spawned_on_tokio() {
        // The worker runs each transfer as a task of its own, which needs Send futures; the
        // futures are only built here, never polled.
        fn spawnable<T: Send + 'static>(_: T) {}
        let t = ExportTarget {
            dir_url: "https://h/volumes/p/dir".into(),
            ca_pem: None,
            token: "t".into(),
        };
        spawnable(async move { download(&t, "a", Path::new("/x"), |_, _| {}).await });
        spawnable(async { upload("h", None, "t", Path::new("/x"), |_, _| {}).await });
    }

    #[test]
    fn reasons_are_stable_words_and_only_waiting_or_the_network_is_retryable() {
        assert_eq!(TransferError::Unauthorized.reason(), "Unauthorized");
        assert_eq!(TransferError::Http(418).reason(), "Http");
        assert!(TransferError::NotReady("x".into()).is_retryable());
        assert!(TransferError::Network("x".into()).is_retryable());
        assert!(!TransferError::Unauthorized.is_retryable());
        assert!(!TransferError::Rejected("x".into()).is_retryable());
        let full = TransferError::io(Path::new("/s"), io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(full.is_no_space());
        assert!(full.to_string().starts_with("Io: /s: "));
    }
}
