//! `snapback controller` and `snapback agent`: the Kubernetes front-end's two processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tracing::{error, info, warn};

use crate::api::{BackupPolicy, BackupRun, BackupTarget, RestoreRequest, VirtHost};
use crate::cluster::agent::{Agent, AgentConfig};
use crate::cluster::controller::leadership::while_leading;
use crate::cluster::controller::lease::{elect, LeaseConfig};
use crate::cluster::controller::{pass, PassConfig};
use crate::cluster::kube_api::{connect, KubeStore};
use crate::cluster::retrying::{RetryPolicy, Retrying};
use crate::libvirt::LibvirtHost;
use crate::metrics::{serve, Health, Metrics};
use crate::process::cancel_on_signal;
use k8s_openapi::api::core::v1::Node;

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Only this namespace (default: all namespaces)
    #[arg(long, env = "SNAPBACK_NAMESPACE")]
    pub namespace: Option<String>,
    /// Seconds between scheduling passes
    #[arg(long, default_value_t = 15)]
    pub interval: u64,
    /// An agent whose heartbeat is older than this many seconds is taken to be gone
    #[arg(long, default_value_t = 120)]
    pub heartbeat_timeout: i64,
    /// Address of /metrics, /healthz and /readyz
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Namespace of the leader-election Lease (default: the pod's namespace)
    #[arg(long, env = "POD_NAMESPACE", default_value = "snapback-system")]
    pub lease_namespace: String,
    /// Seconds to wait for the Kubernetes API before giving up
    #[arg(long, default_value_t = 10)]
    pub api_timeout: u64,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The Kubernetes node this agent runs on
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// libvirt connection URI
    #[arg(long, default_value = "qemu:///system", env = "SNAPBACK_CONNECT")]
    pub connect: String,
    #[arg(long, default_value = "/var/lib/snapback", env = "SNAPBACK_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Only this namespace (default: all namespaces)
    #[arg(long, env = "SNAPBACK_NAMESPACE")]
    pub namespace: Option<String>,
    /// Seconds between VirtHost heartbeats
    #[arg(long, default_value_t = 30)]
    pub heartbeat: u64,
    /// Seconds between looks for new work
    #[arg(long, default_value_t = 5)]
    pub poll: u64,
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    #[arg(long, default_value_t = 10)]
    pub api_timeout: u64,
    #[command(flatten)]
    pub limits: super::limits::LimitArgs,
}

fn spawn_http(addr: SocketAddr, metrics: Arc<Metrics>, health: Health) {
    tokio::spawn(async move {
        if let Err(e) = serve(addr, metrics, health).await {
            error!("metrics server on {addr} stopped: {e}");
        }
    });
}

/// Resolves once `stop` turns true. A stop channel whose sender is gone without saying so
/// (no signal handler could be installed) never resolves: that is no reason to stop.
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The most a pass spends retrying calls to an unavailable API, all its calls together: then
/// each call is tried once, so a pass against a failing API ends and the next one starts fresh.
const PASS_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// What a leader-elected process (the controller, the kubevirt-worker) starts with: the API
/// client, its metrics and health server, its identity (the pod's name) and its election.
pub(crate) struct Elected {
    pub client: kube::Client,
    pub metrics: Arc<Metrics>,
    pub health: Health,
    pub identity: String,
    pub election: crate::cluster::controller::lease::Election,
}

/// Connects, serves metrics on `listen`, and joins the election of the Lease named
/// `component` in `lease_namespace`. An error is the exit code, its reason already printed.
pub(crate) async fn start_elected(
    component: &str,
    api_timeout: u64,
    listen: SocketAddr,
    lease_namespace: &str,
) -> Result<Elected, i32> {
    let client = connect(Duration::from_secs(api_timeout))
        .await
        .map_err(|e| {
            eprintln!("KubernetesUnavailable: {e}");
            1
        })?;
    let metrics = Arc::new(Metrics::new());
    let health = Health::default();
    spawn_http(listen, metrics.clone(), health.clone());
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("{component}-{}", uuid::Uuid::new_v4().simple()));
    let lease = LeaseConfig::new(
        lease_namespace.to_string(),
        component.to_string(),
        identity.clone(),
    );
    let election = elect(client.clone(), lease).await.map_err(|e| {
        eprintln!("KubernetesUnavailable: {e}");
        1
    })?;
    Ok(Elected {
        client,
        metrics,
        health,
        identity,
        election,
    })
}

pub async fn controller(args: ControllerArgs) -> i32 {
    let Elected {
        client,
        metrics,
        health,
        identity,
        election,
    } = match start_elected(
        "snapback-controller",
        args.api_timeout,
        args.listen,
        &args.lease_namespace,
    )
    .await
    {
        Ok(e) => e,
        Err(code) => return code,
    };
    let mut leading = election.leading.clone();
    health.set_ready(true);
    let kube = KubeStore::new(client, "snapback-controller");
    watch_controller_kinds(&kube, args.namespace.as_deref()).await;
    let store = Retrying::new(kube, RetryPolicy::default());
    let cfg = PassConfig {
        namespace: args.namespace.clone(),
        heartbeat_timeout_secs: args.heartbeat_timeout,
        own_namespace: Some(args.lease_namespace.clone()),
    };
    let mut stop = cancel_on_signal();
    let mut code = 0;
    info!(%identity, "controller started; waiting for leadership");
    loop {
        if *leading.borrow() {
            let t = Instant::now();
            let pass_store = store.until(std::time::Instant::now() + PASS_RETRY_BUDGET);
            let work = while_leading(&leading, pass(&pass_store, &cfg, jiff::Timestamp::now()));
            tokio::select! {
                done = work => match done {
                    Some(Ok(s)) if s.errors > 0 || s.undecodable > 0 => warn!(?s, "pass, with failures"),
                    Some(Ok(s)) => info!(?s, "pass"),
                    Some(Err(e)) => warn!("pass ended early: {e}"),
                    None => warn!("leadership lost during a pass: the pass is abandoned"),
                },
                // A pass cut short is run again by the next leader: every write is idempotent.
                _ = stopped(&mut stop) => break,
            }
            metrics
                .scheduling_pass_seconds
                .observe(t.elapsed().as_secs_f64());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(args.interval)) => {}
            changed = leading.changed() => if changed.is_err() {
                error!("leader election ended; exiting so that the controller is restarted");
                code = 1;
                break;
            },
            _ = stopped(&mut stop) => break,
        }
    }
    // No pass runs any more: only now may another replica lead.
    election.release(Duration::from_secs(5)).await;
    code
}

/// How long a watch may take to deliver its first list before lists of its kind go to the
/// API instead.
const WATCH_START: Duration = Duration::from_secs(30);

/// The controller reads everything in scope on every pass: all of it comes from watches.
async fn watch_controller_kinds(kube: &KubeStore, ns: Option<&str>) {
    // At once, not one after the other: a watch that cannot start costs WATCH_START once.
    let (a, b, c, d, e, f) = tokio::join!(
        kube.watch::<BackupPolicy>(ns, &[], WATCH_START),
        kube.watch::<BackupTarget>(ns, &[], WATCH_START),
        kube.watch::<BackupRun>(ns, &[], WATCH_START),
        kube.watch::<RestoreRequest>(ns, &[], WATCH_START),
        kube.watch::<VirtHost>(None, &[], WATCH_START),
        kube.watch::<Node>(None, &[], WATCH_START),
    );
    let results = [a, b, c, d, e, f];
    for r in results {
        if let Err(e) = r {
            warn!("{e}; its objects are listed every pass instead");
        }
    }
}

pub async fn agent(args: AgentArgs) -> i32 {
    let client = match connect(Duration::from_secs(args.api_timeout)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("KubernetesUnavailable: {e}");
            return 1;
        }
    };
    let host = match LibvirtHost::connect(&args.connect).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("LibvirtUnavailable: {e}");
            return 1;
        }
    };
    let metrics = Arc::new(Metrics::new());
    let health = Health::default();
    spawn_http(args.listen, metrics.clone(), health.clone());
    let kube = KubeStore::new(client, "snapback-agent");
    let node = crate::cluster::labels::label_value(&args.node);
    let mine = [(crate::cluster::labels::NODE, node.as_str())];
    let ns = args.namespace.as_deref();
    for r in [
        kube.watch::<BackupRun>(ns, &mine, WATCH_START).await,
        kube.watch::<RestoreRequest>(ns, &mine, WATCH_START).await,
    ] {
        if let Err(e) = r {
            warn!("{e}; its objects are listed every poll instead");
        }
    }
    let agent = Agent::new(
        Retrying::new(kube, RetryPolicy::default()),
        host,
        AgentConfig {
            node: args.node.clone(),
            namespace: args.namespace.clone(),
            state_dir: args.state_dir.clone(),
            heartbeat_every: Duration::from_secs(args.heartbeat),
            poll: Duration::from_secs(args.poll),
            limits: args.limits.limits(),
        },
        metrics,
        health,
    );
    info!(node = %args.node, "agent started");
    agent.run_until(cancel_on_signal()).await;
    0
}
