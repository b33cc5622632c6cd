//! A stand-in for the Kubernetes apiserver, for tests only: plain HTTP over the in-memory store
//! (`snapback::cluster::mem::MemStore`), so the real `snapback controller` and `snapback agent`
//! processes, and kubectl, talk to it as to a cluster. No kube-apiserver can be installed on
//! these machines; this models what snapback depends on, as the API conventions document it:
//!
//! - custom resources from the CRDs created through it, with the status subresource (status
//!   dropped on create, spec and status written apart), resourceVersion with 409 on conflict,
//!   PUT refused without a resourceVersion, finalizers and deletionTimestamp;
//! - JSON merge patch, strategic merge patch on built-in kinds (415 on custom resources, as
//!   the real server answers), server-side apply with field managers and conflicts;
//! - equality label selectors, `limit` and `continue` paging, the Table kubectl asks for;
//! - bearer tokens per ServiceAccount, optionally naming the node of the pod they are bound
//!   to (the user's extra `authentication.kubernetes.io/node-name`, as Kubernetes 1.30 and
//!   later put it), and RBAC from the stored Roles and bindings, with every grant used
//!   recorded;
//! - ValidatingAdmissionPolicies and their bindings, evaluated with a CEL interpreter on
//!   create, update and patch after RBAC and before the write (admission.rs says which parts);
//! - watches from a resourceVersion, with bookmarks, and 410 Gone (as an ERROR event) when it
//!   is older than the changes kept;
//! - injected faults per verb and resource: any status code (429 with Retry-After), or a
//!   connection dropped mid-answer.
//!
//! - hooks for a test fixture: more kinds served without a CRD (`serve_kind`), and a say on
//!   each create of a kind (`on_create`), to refuse it as a validating webhook does or to
//!   answer it without storing as an aggregated API does (tests/kubevirt_fake uses both).
//!
//! Not modelled: admission webhooks (beyond those hooks), mutating admission policies, OpenAPI schema validation
//! and the CRDs' CEL rules (tests/crd_cel_rules.rs checks those against the CRD schemas),
//! defaulting, field selectors, managedFields in responses, owner-reference garbage
//! collection, and the groups of a user.

#![allow(dead_code)]

mod admission;
mod handler;
mod patch;
mod rbac;
mod resources;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use snapback::cluster::mem::MemStore;

pub use rbac::Grant;
pub use resources::Resource;

/// The user the test itself acts as: every request allowed.
pub const ADMIN: &str = "system:admin";

/// What a fixture's hook makes of a create of its kind (see `ApiServer::on_create`).
pub enum OnCreate {
    /// Store it as usual.
    Store,
    /// Refuse it, as an admission webhook would: the status code, reason and message.
    Deny(u16, String, String),
    /// Answer with this object and store nothing, as an aggregated API that only computes
    /// an answer does.
    Answer(Value),
}

/// A fixture's hook on the creates of one kind; it sees the object as it would be stored.
pub type CreateHook = Arc<dyn Fn(&Value) -> OnCreate + Send + Sync>;

/// The user of a request without credentials.
pub const ANONYMOUS: &str = "system:anonymous";

/// A failure the stand-in answers with instead of doing the request.
#[derive(Clone, Debug)]
pub struct Fault {
    /// `get`, `list`, `create`, `update`, `patch`, `delete`, or `*`.
    pub verb: String,
    /// `plural`, `plural/status`, or `*`.
    pub resource: String,
    /// The HTTP status to answer; 0 drops the connection mid-answer; 1 never answers (the
    /// client's timeout ends the request).
    pub code: u16,
    pub retry_after: Option<u32>,
    /// How many matching requests fail; then the fault is gone.
    pub times: u32,
}

/// One request as the stand-in saw it.
#[derive(Clone, Debug)]
pub struct Audit {
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
    pub at: std::time::Instant,
    /// The body's length; 0 for a watch (see `streamed_bytes`).
    pub bytes: usize,
}

type ObjectKey = (String, String, String, bool);

/// Who a token authenticates as: the user name and the user's extra (where a token bound to a
/// pod carries the pod's node).
#[derive(Clone, Debug, Default)]
pub struct Identity {
    pub username: String,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The extra key under which a bound token of a pod names the pod's node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

pub struct Shared {
    pub store: MemStore,
    resources: Mutex<Vec<Resource>>,
    tokens: Mutex<HashMap<String, Identity>>,
    faults: Mutex<Vec<Fault>>,
    used: Mutex<BTreeSet<Grant>>,
    /// Each field manager's last applied configuration, per object (and status part).
    applied: Mutex<HashMap<ObjectKey, BTreeMap<String, Value>>>,
    audit: Mutex<Vec<Audit>>,
    /// Bytes sent on watches, per user.
    streamed: Mutex<HashMap<String, u64>>,
    /// Hooks on creates, by the store's kind (`apiVersion/Kind`).
    create_hooks: Mutex<Vec<(String, CreateHook)>>,
}

pub struct ApiServer {
    pub shared: Arc<Shared>,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Listens on 127.0.0.1 on a free port, serving from its own thread.
    pub fn start() -> ApiServer {
        let shared = Arc::new(Shared {
            store: MemStore::new(),
            resources: Mutex::new(resources::builtins()),
            tokens: Mutex::new(HashMap::from([(
                "admin-token".to_string(),
                Identity {
                    username: ADMIN.to_string(),
                    extra: BTreeMap::new(),
                },
            )])),
            faults: Mutex::new(Vec::new()),
            used: Mutex::new(BTreeSet::new()),
            applied: Mutex::new(HashMap::new()),
            audit: Mutex::new(Vec::new()),
            streamed: Mutex::new(HashMap::new()),
            create_hooks: Mutex::new(Vec::new()),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sh = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("a free port");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
                    let sh = sh.clone();
                    async move { handler::serve(sh, req).await }
                });
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop_rx.await;
                    })
                    .await
                    .expect("the stand-in serves");
            });
        });
        let addr = addr_rx.recv().expect("the stand-in started");
        ApiServer {
            shared,
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A bearer token for a ServiceAccount, as the TokenRequest API would issue one bound to
    /// nothing (or as clusters before Kubernetes 1.30 issue them to pods): it names no node.
    pub fn token_for(&self, namespace: &str, service_account: &str) -> String {
        self.issue(namespace, service_account, BTreeMap::new())
    }

    /// A bearer token for a ServiceAccount as a pod on `node` gets it from Kubernetes 1.30 on:
    /// its user's extra names the node.
    pub fn token_for_node(&self, namespace: &str, service_account: &str, node: &str) -> String {
        let extra = BTreeMap::from([(NODE_NAME_EXTRA.to_string(), vec![node.to_string()])]);
        self.issue(namespace, service_account, extra)
    }

    fn issue(&self, namespace: &str, sa: &str, extra: BTreeMap<String, Vec<String>>) -> String {
        let token = format!("sa-{}", uuid::Uuid::new_v4().simple());
        let who = Identity {
            username: format!("system:serviceaccount:{namespace}:{sa}"),
            extra,
        };
        self.shared
            .tokens
            .lock()
            .unwrap()
            .insert(token.clone(), who);
        token
    }

    /// Writes a kubeconfig for `token` (none when empty) to `path`.
    pub fn kubeconfig(&self, token: &str, path: &Path) {
        let user = if token.is_empty() {
            "{}".to_string()
        } else {
            format!("\n    token: {token}")
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: standin\n\
             clusters:\n- name: standin\n  cluster:\n    server: {}\n\
             users:\n- name: user\n  user: {user}\n\
             contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: user\n",
            self.url()
        );
        std::fs::write(path, text).expect("kubeconfig written");
    }

    /// Creates each object as the admin would with `kubectl create` (CRDs register their kinds).
    pub fn create_all(&self, docs: &[Value]) {
        for d in docs {
            handler::create_as_admin(&self.shared, d.clone())
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", d["metadata"]["name"]));
        }
    }

    /// One HTTP/1.1 request as the admin, sent by hand (no client library in between):
    /// the status code and the raw answer (headers and body) as text. Reads until the server
    /// closes, or for at most `limit`.
    pub fn raw_request(
        &self,
        method: &str,
        path_and_query: &str,
        content_type: &str,
        body: &str,
        limit: std::time::Duration,
    ) -> (u16, String) {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(self.addr).expect("connect to the stand-in");
        c.set_read_timeout(Some(limit)).unwrap();
        let req = format!(
            "{method} {path_and_query} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer admin-token\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        c.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + limit;
        let mut buf = [0u8; 8192];
        while std::time::Instant::now() < deadline {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, text)
    }

    /// snapback's store over the stand-in with `token`, as `manager` (its kubeconfig is
    /// written in `dir`).
    pub async fn store_as(
        &self,
        dir: &Path,
        token: &str,
        manager: &str,
    ) -> snapback::cluster::kube_api::KubeStore {
        let path = dir.join(format!("kubeconfig-{}", uuid::Uuid::new_v4().simple()));
        self.kubeconfig(token, &path);
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        snapback::cluster::kube_api::KubeStore::new(kube::Client::try_from(cfg).unwrap(), manager)
    }

    /// Serves one more kind that no CRD declares: a built-in one the stand-in lacks, or one
    /// of an aggregated API (whose creates a hook then answers, see `on_create`).
    pub fn serve_kind(&self, r: Resource) {
        let mut all = self.shared.resources.lock().unwrap();
        if !all
            .iter()
            .any(|x| x.store_kind() == r.store_kind() && x.plural == r.plural)
        {
            all.push(r);
        }
    }

    /// Lets a fixture decide each create of `store_kind` (`apiVersion/Kind`), after RBAC and
    /// admission policies, before it is stored: as a validating webhook refuses, or as an
    /// aggregated API answers without storing.
    pub fn on_create(&self, store_kind: &str, hook: CreateHook) {
        self.shared
            .create_hooks
            .lock()
            .unwrap()
            .push((store_kind.to_string(), hook));
    }

    pub fn inject(&self, f: Fault) {
        self.shared.faults.lock().unwrap().push(f);
    }

    /// Every grant bound to `user` that no request used, as readable lines.
    pub fn unused_grants(&self, user: &str) -> Vec<String> {
        let used = self.shared.used.lock().unwrap().clone();
        rbac::grants(&self.shared.store, user)
            .into_iter()
            .filter(|g| !used.contains(g))
            .map(|g| g.to_string())
            .collect()
    }

    /// The bytes `user`'s watches have been sent so far.
    pub fn streamed_bytes(&self, user: &str) -> u64 {
        self.shared
            .streamed
            .lock()
            .unwrap()
            .get(user)
            .copied()
            .unwrap_or(0)
    }

    pub fn audit(&self) -> Vec<Audit> {
        self.shared.audit.lock().unwrap().clone()
    }

    /// A stored object, by kind (`apiVersion/Kind`), namespace and name.
    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.shared.store.raw_get(kind, ns, name)
    }

    pub fn list(&self, kind: &str, ns: Option<&str>) -> Vec<Value> {
        self.shared.store.raw_list(kind, ns).0
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `helm template` of the chart (release `snapback` in `namespace`, with `--set` values), as
/// documents. `helm` is the pinned one scripts/setup-host.sh installs.
pub fn render_chart(helm: &Path, namespace: &str, sets: &[&str]) -> Vec<Value> {
    let mut cmd = std::process::Command::new(helm);
    cmd.args([
        "template",
        "snapback",
        "charts/snapback",
        "--namespace",
        namespace,
    ]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run helm (scripts/setup-host.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_docs(&String::from_utf8_lossy(&out.stdout))
}

/// The documents of a multi-document YAML stream (as `helm template` prints), empty ones left out.
pub fn yaml_docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .expect("valid YAML")
        .into_iter()
        .filter(|d| d.is_object())
        .collect()
}
