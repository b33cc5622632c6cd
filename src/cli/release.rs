//! `snapback release-finalizers`: removes snapback's own finalizers from its objects, so that
//! nothing is left waiting for a controller or an agent that is about to be uninstalled. The
//! Helm chart runs it as a `pre-delete` and a `post-delete` hook Job.

use std::time::Duration;

use clap::Args;

use crate::cluster::kube_api::{connect, KubeStore};
use crate::cluster::release::release_finalizers;

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// Only this namespace (default: all namespaces)
    #[arg(long, env = "SNAPBACK_NAMESPACE")]
    pub namespace: Option<String>,
    /// Seconds to wait for the Kubernetes API before giving up
    #[arg(long, default_value_t = 10)]
    pub api_timeout: u64,
}

pub async fn execute(args: ReleaseArgs) -> i32 {
    let client = match connect(Duration::from_secs(args.api_timeout)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("KubernetesUnavailable: {e}");
            return 1;
        }
    };
    let store = KubeStore::new(client, "snapback-release-finalizers");
    // An empty SNAPBACK_NAMESPACE means "all namespaces", as it does for the controller.
    let ns = args.namespace.as_deref().filter(|n| !n.is_empty());
    match release_finalizers(&store, ns).await {
        Ok(r) => {
            for id in &r.released {
                println!("released {id}");
            }
            for kind in &r.missing_kinds {
                println!("no {kind} CRD installed: nothing to release");
            }
            for f in &r.failed {
                eprintln!("not released: {f}");
            }
            println!(
                "{} released, {} without snapback finalizers, {} failed",
                r.released.len(),
                r.untouched,
                r.failed.len()
            );
            // A failure fails the hook Job, so Helm shows this log and the objects named can be
            // seen to by hand (or the uninstall retried).
            i32::from(!r.failed.is_empty())
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
