//! `snapback kubevirt-worker`: backs up and restores KubeVirt VMs. It drives the BackupRuns
//! the controller labels `snapback.dev/kubevirt` through KubeVirt's backup API, and the
//! RestoreRequests labelled so through CDI uploads and KubeVirt's VirtualMachines, with the
//! same engines and phases as a node agent, and needs no node access. One replica works at a
//! time (a Lease): two would take one VM's backup twice.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tracing::{error, info, warn};

use super::cluster::{start_elected, Elected};
use crate::api::{BackupRun, RestoreRequest};
use crate::cluster::agent::{Agent, AgentConfig};
use crate::cluster::kube_api::KubeStore;
use crate::cluster::labels;
use crate::cluster::retrying::{RetryPolicy, Retrying};
use crate::process::cancel_on_signal;

#[derive(Args, Debug)]
pub struct KubeVirtWorkerArgs {
    /// Only this namespace (default: all namespaces)
    #[arg(long, env = "SNAPBACK_NAMESPACE")]
    pub namespace: Option<String>,
    /// Staging for the fetched backup files, restores' rebuilt disks, and the run locks (a
    /// volume as big as the largest VM's disks)
    #[arg(long, default_value = "/var/lib/snapback", env = "SNAPBACK_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The storage class of the volumes KubeVirt writes backups into (default: the
    /// cluster's default class)
    #[arg(long, env = "SNAPBACK_BACKUP_STORAGE_CLASS")]
    pub backup_storage_class: Option<String>,
    /// Seconds between looks for new work
    #[arg(long, default_value_t = 5)]
    pub poll: u64,
    /// Address of /metrics, /healthz and /readyz
    #[arg(long, default_value = "0.0.0.0:8082")]
    pub listen: SocketAddr,
    /// Namespace of the leader-election Lease (default: the pod's namespace)
    #[arg(long, env = "POD_NAMESPACE", default_value = "snapback-system")]
    pub lease_namespace: String,
    /// Seconds to wait for the Kubernetes API before giving up
    #[arg(long, default_value_t = 10)]
    pub api_timeout: u64,
}

pub async fn kubevirt_worker(args: KubeVirtWorkerArgs) -> i32 {
    let Elected {
        client,
        metrics,
        health,
        identity,
        election,
    } = match start_elected(
        "snapback-kubevirt-worker",
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
    let mut signal = cancel_on_signal();
    info!(%identity, "kubevirt-worker started; waiting for leadership");
    let led = tokio::select! {
        l = leading.wait_for(|l| *l) => l.is_ok(),
        _ = signal.wait_for(|s| *s) => false,
    };
    if !led {
        election.release(Duration::from_secs(5)).await;
        return 0;
    }
    let kube = KubeStore::new(client, "snapback-kubevirt-worker");
    let mine = [(labels::KUBEVIRT, "true")];
    if let Err(e) = kube
        .watch::<BackupRun>(args.namespace.as_deref(), &mine, Duration::from_secs(30))
        .await
    {
        warn!("{e}; its runs are listed every poll instead");
    }
    if let Err(e) = kube
        .watch::<RestoreRequest>(args.namespace.as_deref(), &mine, Duration::from_secs(30))
        .await
    {
        warn!("{e}; its restores are listed every poll instead");
    }
    let agent = Agent::kubevirt(
        Retrying::new(kube, RetryPolicy::default()),
        AgentConfig {
            node: identity.clone(),
            namespace: args.namespace.clone(),
            state_dir: args.state_dir.clone(),
            heartbeat_every: Duration::from_secs(30),
            poll: Duration::from_secs(args.poll),
            // Its runs use no node's staging and may be on any node: not limited here.
            limits: crate::driver::admission::Limits::UNLIMITED,
        },
        crate::cluster::agent::Host::KubeVirt {
            storage_class: args.backup_storage_class.clone(),
            own_namespace: Some(args.lease_namespace.clone()),
        },
        metrics,
        health,
    );
    // Work stops on a signal, or when leadership is lost: runs in flight then clean up and
    // end Interrupted, so the next leader finds no half-held VM.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let lost = tokio::spawn(async move {
        let lost = tokio::select! {
            _ = leading.wait_for(|l| !*l) => true,
            _ = signal.wait_for(|s| *s) => false,
        };
        let _ = stop_tx.send(true);
        lost
    });
    info!(%identity, "leading: driving the runs of KubeVirt VMs");
    agent.run_until(stop).await;
    let code = match lost.await {
        Ok(true) => {
            error!("leadership lost; exiting so that the worker is restarted");
            1
        }
        _ => 0,
    };
    election.release(Duration::from_secs(5)).await;
    code
}
