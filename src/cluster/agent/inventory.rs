//! The VirtHost an agent publishes: its libvirt host's domains, versions and a heartbeat.

use jiff::Timestamp;

use crate::api::{HostDomain, VirtHost, VirtHostSpec, VirtHostStatus};
use crate::cluster::store::{ApiErrorKind, Store};
use crate::libvirt::{domain_xml, LibvirtHost};

pub const FIELD_MANAGER: &str = "snapback-agent";

/// Reads the host. A domain that disappears while being read is left out, not an error.
pub async fn host_status(host: &LibvirtHost, now: Timestamp) -> Result<VirtHostStatus, String> {
    let (libvirt, qemu) = host.versions().await.map_err(|e| e.to_string())?;
    let mut domains = Vec::new();
    for name in host.domain_names().await.map_err(|e| e.to_string())? {
        let Ok(v) = host.domain(&name).await else {
            continue;
        };
        domains.push(HostDomain {
            name: v.facts.name.clone(),
            uuid: v.facts.uuid.clone(),
            state: format!("{:?}", v.state),
            disks: v.facts.disks.iter().map(|d| d.name.clone()).collect(),
            metadata: domain_xml::snapback_metadata(&v.xml),
        });
    }
    domains.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(VirtHostStatus {
        conditions: Vec::new(),
        libvirt_version: Some(libvirt),
        qemu_version: Some(qemu),
        heartbeat_time: Some(now.to_string()),
        domain_count: domains.len() as u32,
        domains,
    })
}

/// Creates the node's VirtHost if needed and applies its status.
pub async fn publish<S: Store>(
    store: &S,
    node: &str,
    status: VirtHostStatus,
) -> Result<(), String> {
    let mut vh = match store
        .get::<VirtHost>(None, node)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(v) => v,
        None => {
            let fresh = VirtHost::new(
                node,
                VirtHostSpec {
                    node_name: node.to_string(),
                },
            );
            match store.create(&fresh).await {
                Ok(v) => v,
                Err(e) if e.is(ApiErrorKind::AlreadyExists) => fresh,
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    vh.status = Some(status);
    store
        .apply_status(&vh, FIELD_MANAGER)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
