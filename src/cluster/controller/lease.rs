//! Leader election of the controller replicas on a Lease: kube-lease-manager takes and renews
//! it, this module reads it too (`leadership.rs` says why) and publishes on a channel whether
//! this process leads now, and releases the Lease when told to stop, so that a replica
//! starting next (a rolling update) takes over at once rather than after a lease period.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::leadership::{Leadership, LeaseView};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a renewal holds the Lease.
    pub duration_secs: u64,
    /// The holder renews this long before the Lease would run out.
    pub grace_secs: u64,
    /// How often the Lease is read; also the longest a read may take.
    pub check_every: Duration,
    /// Leadership ends this long before the Lease runs out by this node's clock, for the
    /// clocks of other nodes (which may take the Lease by theirs) and for a write in flight.
    pub margin: Duration,
}

impl LeaseConfig {
    /// A renewal every 12 s (20 s lease, 8 s grace), seen within 2 s: leadership ends 17 s
    /// after the last renewal that was seen, 3 s before another replica may take the Lease.
    pub fn new(namespace: String, name: String, identity: String) -> Self {
        Self {
            namespace,
            name,
            identity,
            duration_secs: 20,
            grace_secs: 8,
            check_every: Duration::from_secs(2),
            margin: Duration::from_secs(3),
        }
    }
}

fn view(l: &Lease) -> LeaseView {
    let spec = l.spec.clone().unwrap_or_default();
    LeaseView {
        holder: spec.holder_identity,
        renewed: spec.renew_time.map(|t| t.0),
        duration_secs: spec.lease_duration_seconds,
    }
}

/// The election, running.
pub struct Election {
    /// True while this process leads; closed when the election ended for good.
    pub leading: watch::Receiver<bool>,
    release: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Election {
    /// Stops leading and releases the Lease, waiting for that at most `within`. Call it only
    /// once no work of the leader runs any more.
    pub async fn release(self, within: Duration) {
        let _ = self.release.send(());
        if tokio::time::timeout(within, self.task).await.is_err() {
            warn!("the Lease was not released in time; another replica takes it when it runs out");
        }
    }
}

/// Starts the election. Fails when the Lease cannot be set up (the API refuses, RBAC).
pub async fn elect(client: Client, cfg: LeaseConfig) -> Result<Election, String> {
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &cfg.name)
        .with_namespace(cfg.namespace.clone())
        .with_identity(cfg.identity.clone())
        .with_duration(cfg.duration_secs)
        .with_grace(cfg.grace_secs)
        .build()
        .await
        .map_err(|e| format!("cannot set up the leader-election Lease: {e}"))?;
    let (elected, manager_task) = manager.watch().await;
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let (tx, leading) = watch::channel(false);
    let (release, released) = oneshot::channel();
    let task = tokio::spawn(follow(api, cfg, elected, manager_task, tx, released));
    Ok(Election {
        leading,
        release,
        task,
    })
}

/// Reads the Lease every `check_every` and whenever the lease manager's word changes, and
/// publishes the leadership. On `released`, or when the manager ended, publishes false and
/// lets the manager release the Lease (it does when its channel closes).
async fn follow(
    api: Api<Lease>,
    cfg: LeaseConfig,
    mut elected: watch::Receiver<bool>,
    manager_task: JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
    tx: watch::Sender<bool>,
    mut released: oneshot::Receiver<()>,
) {
    let mut lead = Leadership::default();
    let publish = |lead: &Leadership, elected: bool| {
        let now = lead.leading(elected, Timestamp::now());
        tx.send_if_modified(|was| {
            if *was != now {
                info!(identity = %cfg.identity, leading = now, "leadership changed");
            }
            std::mem::replace(was, now) != now
        });
    };
    loop {
        // Before the read too: a slow read must not keep a leadership that ran out meanwhile.
        publish(&lead, *elected.borrow());
        match tokio::time::timeout(cfg.check_every, api.get_opt(&cfg.name)).await {
            Ok(Ok(Some(l))) => lead.observed(&view(&l), &cfg.identity, cfg.margin),
            Ok(Ok(None)) => lead.forget(),
            Ok(Err(e)) => debug!("cannot read the Lease: {e}"),
            Err(_) => debug!("the Lease did not come within {:?}", cfg.check_every),
        }
        publish(&lead, *elected.borrow());
        // Wake at the end of the leadership if that comes before the next read.
        let wait = lead
            .ends_at()
            .and_then(|u| Duration::try_from(u.duration_since(Timestamp::now())).ok())
            .map_or(cfg.check_every, |left| left.min(cfg.check_every));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = elected.changed() => if r.is_err() {
                warn!("the lease manager stopped");
                break;
            },
            _ = &mut released => break,
        }
    }
    tx.send_replace(false);
    drop(elected);
    match manager_task.await {
        Ok(Ok(_)) => info!("the Lease is released"),
        Ok(Err(e)) => warn!("the Lease could not be released: {e}"),
        Err(e) => warn!("the lease manager failed: {e}"),
    }
}
