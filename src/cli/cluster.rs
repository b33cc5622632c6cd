//! `snapback controller` and `snapback agent`: the Kubernetes front-end's two processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tracing::{error, info, warn};

use crate::cluster::agent::{Agent, AgentConfig};
use crate::cluster::controller::{pass, PassConfig};
use crate::cluster::kube_api::{connect, KubeStore};
use crate::libvirt::LibvirtHost;
use crate::metrics::{serve, Health, Metrics};
use crate::process::cancel_on_signal;

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
}

fn spawn_http(addr: SocketAddr, metrics: Arc<Metrics>, health: Health) {
    tokio::spawn(async move {
        if let Err(e) = serve(addr, metrics, health).await {
            error!("metrics server on {addr} stopped: {e}");
        }
    });
}

pub async fn controller(args: ControllerArgs) -> i32 {
    let client = match connect(Duration::from_secs(args.api_timeout)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("KubernetesUnavailable: {e}");
            return 1;
        }
    };
    let metrics = Arc::new(Metrics::new());
    let health = Health::default();
    spawn_http(args.listen, metrics.clone(), health.clone());
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("snapback-controller-{}", uuid::Uuid::new_v4().simple()));
    let lease = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "snapback-controller")
        .with_namespace(args.lease_namespace.clone())
        .with_identity(identity.clone())
        .with_duration(15)
        .with_grace(5)
        .build()
        .await;
    let lease = match lease {
        Ok(l) => l,
        Err(e) => {
            eprintln!("KubernetesUnavailable: cannot set up the leader-election Lease: {e}");
            return 1;
        }
    };
    let (leader, lease_task) = lease.watch().await;
    health.set_ready(true);
    let store = KubeStore::new(client, "snapback-controller");
    let cfg = PassConfig {
        namespace: args.namespace.clone(),
        heartbeat_timeout_secs: args.heartbeat_timeout,
    };
    let mut stop = cancel_on_signal();
    info!(%identity, "controller started; waiting for leadership");
    loop {
        if *leader.borrow() {
            let t = Instant::now();
            match pass(&store, &cfg, jiff::Timestamp::now()).await {
                Ok(s) => info!(?s, "pass"),
                Err(e) => warn!("pass failed: {e}"),
            }
            metrics
                .scheduling_pass_seconds
                .observe(t.elapsed().as_secs_f64());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(args.interval)) => {}
            _ = stop.changed() => break,
        }
    }
    drop(leader);
    lease_task.abort();
    0
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
    let agent = Agent::new(
        KubeStore::new(client, "snapback-agent"),
        host,
        AgentConfig {
            node: args.node.clone(),
            namespace: args.namespace.clone(),
            state_dir: args.state_dir.clone(),
            heartbeat_every: Duration::from_secs(args.heartbeat),
            poll: Duration::from_secs(args.poll),
        },
        metrics,
        health,
    );
    info!(node = %args.node, "agent started");
    agent.run_until(cancel_on_signal()).await;
    0
}
