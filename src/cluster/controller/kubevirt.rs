//! The KubeVirt side of a pass: the VirtualMachines, their instances, the KubeVirt CR and
//! (for namespace selectors) the namespaces, read once per pass and only when a policy
//! selects VMs. Which VMs each policy gets is decided purely in `kubevirt::eligible`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use tracing::debug;

use crate::api::{BackupPolicy, VirtualMachineSelector, VmRef};
use crate::cluster::store::{ApiErrorKind, Store};
use crate::kubevirt::eligible::{self, Selection};
use crate::kubevirt::types::{KubeVirt, VirtualMachine, VirtualMachineInstance};

/// What the pass read of KubeVirt.
pub struct World {
    vms: Vec<VirtualMachine>,
    instances: BTreeMap<VmRef, VirtualMachineInstance>,
    kubevirt: Option<KubeVirt>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Why the VMs could not be read, when they could not.
    unavailable: Option<String>,
}

fn key_of(m: &kube::api::ObjectMeta) -> VmRef {
    VmRef {
        namespace: m.namespace.clone().unwrap_or_default(),
        name: m.name.clone().unwrap_or_default(),
    }
}

fn why(kind: &str, e: &crate::cluster::ApiError) -> String {
    if e.is(ApiErrorKind::NotFound) {
        format!("{kind}s are not served by this cluster: is KubeVirt installed?")
    } else if e.is(ApiErrorKind::Forbidden) {
        format!("snapback may not read {kind}s: install it with kubevirt.enabled=true ({e})")
    } else {
        format!("cannot list {kind}s: {e}")
    }
}

impl World {
    pub async fn read<S: Store>(store: &S, ns: Option<&str>, policies: &[BackupPolicy]) -> World {
        let mut w = World {
            vms: Vec::new(),
            instances: BTreeMap::new(),
            kubevirt: None,
            namespaces: BTreeMap::new(),
            unavailable: None,
        };
        match store.list::<VirtualMachine>(ns, &[]).await {
            Ok(v) => w.vms = v,
            Err(e) => {
                w.unavailable = Some(why("VirtualMachine", &e));
                return w;
            }
        }
        match store.list::<VirtualMachineInstance>(ns, &[]).await {
            Ok(v) => w.instances = v.into_iter().map(|i| (key_of(&i.metadata), i)).collect(),
            Err(e) => {
                w.unavailable = Some(why("VirtualMachineInstance", &e));
                return w;
            }
        }
        // One KubeVirt CR per cluster, in KubeVirt's own namespace.
        match store.list::<KubeVirt>(None, &[]).await {
            Ok(v) => w.kubevirt = v.into_iter().next(),
            Err(e) => debug!("{}", why("KubeVirt", &e)),
        }
        let wide = policies.iter().any(|p| {
            p.spec
                .virtual_machine_selector
                .as_ref()
                .is_some_and(|s| s.namespace_selector.is_some())
        });
        if wide {
            match store.list::<Namespace>(None, &[]).await {
                Ok(v) => {
                    w.namespaces = v
                        .into_iter()
                        .map(|n| {
                            (
                                n.metadata.name.clone().unwrap_or_default(),
                                n.metadata.labels.unwrap_or_default(),
                            )
                        })
                        .collect()
                }
                Err(e) => debug!("{}", why("Namespace", &e)),
            }
        }
        w
    }

    /// The VMs `p` selects, each ready or not; an error is a selector that cannot apply.
    pub fn select(
        &self,
        p: &BackupPolicy,
        sel: &VirtualMachineSelector,
        own_namespace: Option<&str>,
        now: jiff::Timestamp,
    ) -> Result<Selection, String> {
        // A selector the policy may not use is refused before anything else is judged.
        let pns = p.metadata.namespace.clone().unwrap_or_default();
        let allowed = eligible::namespaces(sel, &pns, own_namespace, &self.namespaces)?;
        if let Some(why) = &self.unavailable {
            return Ok(Selection {
                unavailable: Some(why.clone()),
                ..Default::default()
            });
        }
        if self.kubevirt.is_none() {
            return Ok(Selection {
                unavailable: Some(
                    "no KubeVirt CR can be read: is KubeVirt installed, and snapback installed with kubevirt.enabled=true?".into(),
                ),
                ..Default::default()
            });
        }
        let candidates: Vec<VirtualMachine> = self
            .vms
            .iter()
            .filter(|vm| {
                allowed
                    .iter()
                    .any(|n| vm.metadata.namespace.as_deref() == Some(n.as_str()))
            })
            .cloned()
            .collect();
        eligible::select(
            sel,
            &candidates,
            &self.instances,
            self.kubevirt.as_ref(),
            now,
        )
    }
}
