//! Which KubeVirt VMs a policy covers, and whether KubeVirt can back each one up now. Pure:
//! the controller reads the VMs, their instances, the namespaces and the KubeVirt CR, and
//! this decides. The reasons are stable words: the policy's `KubeVirtReady` condition and
//! its Events carry them.

use std::collections::BTreeMap;

use kube::core::{Selector, SelectorExt};

use crate::api::{LabelSelector, VirtualMachineSelector, VmRef};

use super::types::{is_migrating, CbtState, KubeVirt, VirtualMachine, VirtualMachineInstance};

/// No KubeVirt CR could be read: KubeVirt is not installed, or snapback may not read it.
pub const KUBEVIRT_NOT_FOUND: &str = "KubeVirtNotFound";
/// The IncrementalBackup or UtilityVolumes feature gate is off.
pub const FEATURE_GATE_OFF: &str = "FeatureGateOff";
/// The VM is not running: KubeVirt backs up running VMs only.
pub const VM_NOT_RUNNING: &str = "VMNotRunning";
/// Changed-block tracking is not `Enabled` for the VM.
pub const CBT_NOT_ENABLED: &str = "CBTNotEnabled";
/// A live migration of the VM is in progress: KubeVirt holds backups until it ends.
pub const MIGRATING: &str = "Migrating";

/// Why a selected VM cannot be backed up now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotReady {
    pub vm: VmRef,
    pub reason: &'static str,
    pub message: String,
}

/// The policy's VMs: those that can be backed up now, and those that cannot, with why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub ready: Vec<VmRef>,
    pub not_ready: Vec<NotReady>,
    /// Set when the VMs themselves could not be read (KubeVirt not installed, or snapback
    /// may not read them): nothing is selected, and this says why.
    pub unavailable: Option<String>,
}

fn selector_matches(
    sel: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    let Some(sel) = sel else { return Ok(true) };
    let s = Selector::try_from(sel.clone()).map_err(|e| format!("label selector: {e}"))?;
    Ok(s.matches(labels))
}

/// The namespaces a policy in `policy_ns` may cover: its own, or, for a policy in snapback's
/// own namespace (`admin_ns`), those its `namespaceSelector` picks from `namespaces` (name
/// to labels). A `namespaceSelector` anywhere else is refused rather than narrowed silently.
pub fn namespaces(
    sel: &VirtualMachineSelector,
    policy_ns: &str,
    admin_ns: Option<&str>,
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Vec<String>, String> {
    let Some(ns_sel) = sel.namespace_selector.as_ref() else {
        return Ok(vec![policy_ns.to_string()]);
    };
    if admin_ns != Some(policy_ns) {
        return Err(format!(
            "virtualMachineSelector.namespaceSelector is honoured only for policies in snapback's namespace ({}); a policy elsewhere covers the VMs of its own namespace",
            admin_ns.unwrap_or("not known to the controller")
        ));
    }
    let mut out = Vec::new();
    for (name, labels) in namespaces {
        if selector_matches(Some(ns_sel), labels)? {
            out.push(name.clone());
        }
    }
    Ok(out)
}

fn vm_ref(vm: &VirtualMachine) -> VmRef {
    VmRef {
        namespace: vm.metadata.namespace.clone().unwrap_or_default(),
        name: vm.metadata.name.clone().unwrap_or_default(),
    }
}

/// Whether KubeVirt can back `vm` up now. `vmi` is its instance, when one exists.
pub fn readiness(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    kubevirt: Option<&KubeVirt>,
    now: jiff::Timestamp,
) -> Result<(), (&'static str, String)> {
    let Some(kv) = kubevirt else {
        return Err((
            KUBEVIRT_NOT_FOUND,
            "no KubeVirt CR can be read (is KubeVirt installed, and snapback installed with kubevirt.enabled=true?)".into(),
        ));
    };
    let gates = kv.missing_backup_gates();
    if !gates.is_empty() {
        return Err((
            FEATURE_GATE_OFF,
            format!(
                "KubeVirt's feature gate(s) {} are off: add them to spec.configuration.developerConfiguration.featureGates",
                gates.join(", ")
            ),
        ));
    }
    let Some(vmi) = vmi.filter(|i| i.is_running()) else {
        return Err((
            VM_NOT_RUNNING,
            "the VM is not running: KubeVirt backs up running VMs only".into(),
        ));
    };
    match vmi.cbt_state() {
        CbtState::Enabled => {}
        CbtState::PendingRestart => {
            return Err((
                CBT_NOT_ENABLED,
                "changed-block tracking takes effect at the VM's next restart (PendingRestart)"
                    .into(),
            ))
        }
        other => {
            let state = match other {
                CbtState::Undefined => "not selected".to_string(),
                CbtState::Other(s) => s,
                s => format!("{s:?}"),
            };
            return Err((
                CBT_NOT_ENABLED,
                format!(
                    "changed-block tracking is {state} for the VM: match it with the KubeVirt CR's spec.configuration.changedBlockTrackingLabelSelectors, then restart it"
                ),
            ));
        }
    }
    if is_migrating(vmi, now) {
        return Err((
            MIGRATING,
            "a live migration of the VM is in progress; the backup waits for it to end".into(),
        ));
    }
    let _ = vm;
    Ok(())
}

/// The VMs of `candidates` (already limited to the allowed namespaces) the selector picks,
/// each judged ready or not. `instances` are keyed by namespace and name.
pub fn select(
    sel: &VirtualMachineSelector,
    candidates: &[VirtualMachine],
    instances: &BTreeMap<VmRef, VirtualMachineInstance>,
    kubevirt: Option<&KubeVirt>,
    now: jiff::Timestamp,
) -> Result<Selection, String> {
    let mut out = Selection::default();
    for vm in candidates {
        let r = vm_ref(vm);
        if !sel.names.is_empty() && !sel.names.contains(&r.name) {
            continue;
        }
        let labels = vm.metadata.labels.clone().unwrap_or_default();
        if !selector_matches(sel.selector.as_ref(), &labels)? {
            continue;
        }
        match readiness(vm, instances.get(&r), kubevirt, now) {
            Ok(()) => out.ready.push(r),
            Err((reason, message)) => {
                // KubeVirt waits a migration out: the run is made, and waits too.
                if reason == MIGRATING {
                    out.ready.push(r.clone());
                }
                out.not_ready.push(NotReady {
                    vm: r,
                    reason,
                    message,
                })
            }
        }
    }
    out.ready.sort();
    out.not_ready.sort_by(|a, b| a.vm.cmp(&b.vm));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> jiff::Timestamp {
        "2026-11-30T12:00:00Z".parse().unwrap()
    }

    fn vm(ns: &str, name: &str, labels: serde_json::Value) -> VirtualMachine {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"runStrategy": "Always", "template": {"spec": {}}},
        }))
        .unwrap()
    }

    fn vmi(ns: &str, name: &str, phase: &str, cbt: &str) -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"namespace": ns, "name": name},
            "spec": {},
            "status": {"phase": phase, "changedBlockTracking": {"state": cbt}},
        }))
        .unwrap()
    }

    fn kubevirt(gates: &[&str]) -> KubeVirt {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
            "metadata": {"namespace": "kubevirt", "name": "kubevirt"},
            "spec": {"configuration": {"developerConfiguration": {"featureGates": gates}}},
        }))
        .unwrap()
    }

    const GATES: &[&str] = &["IncrementalBackup", "UtilityVolumes"];

    fn instances(v: Vec<VirtualMachineInstance>) -> BTreeMap<VmRef, VirtualMachineInstance> {
        v.into_iter()
            .map(|i| {
                let r = VmRef {
                    namespace: i.metadata.namespace.clone().unwrap(),
                    name: i.metadata.name.clone().unwrap(),
                };
                (r, i)
            })
            .collect()
    }

    #[test]
    fn a_running_vm_with_tracking_enabled_is_ready_and_the_others_say_why_not() {
        let sel = VirtualMachineSelector {
            selector: Some(
                serde_json::from_value(json!({"matchLabels": {"backup": "nightly"}})).unwrap(),
            ),
            ..Default::default()
        };
        let vms = vec![
            vm("apps", "web", json!({"backup": "nightly"})),
            vm("apps", "db", json!({"backup": "nightly"})),
            vm("apps", "cache", json!({"backup": "nightly"})),
            vm("apps", "tmp", json!({"backup": "never"})),
            vm("apps", "off", json!({"backup": "nightly"})),
        ];
        let inst = instances(vec![
            vmi("apps", "web", "Running", "Enabled"),
            vmi("apps", "db", "Running", "PendingRestart"),
            vmi("apps", "cache", "Running", ""),
            vmi("apps", "tmp", "Running", "Enabled"),
        ]);
        let kv = kubevirt(GATES);
        let s = select(&sel, &vms, &inst, Some(&kv), now()).unwrap();
        assert_eq!(
            s.ready,
            vec![VmRef {
                namespace: "apps".into(),
                name: "web".into()
            }]
        );
        let why: Vec<(&str, &str)> = s
            .not_ready
            .iter()
            .map(|n| (n.vm.name.as_str(), n.reason))
            .collect();
        assert_eq!(
            why,
            vec![
                ("cache", CBT_NOT_ENABLED),
                ("db", CBT_NOT_ENABLED),
                ("off", VM_NOT_RUNNING)
            ]
        );
        assert!(s.not_ready[1].message.contains("next restart"));
        assert!(s.not_ready[0]
            .message
            .contains("changedBlockTrackingLabelSelectors"));
    }

    #[test]
    fn gates_off_or_no_kubevirt_cr_make_every_vm_not_ready_with_that_reason() {
        let sel = VirtualMachineSelector {
            names: vec!["web".into()],
            ..Default::default()
        };
        let vms = vec![vm("apps", "web", json!({})), vm("apps", "other", json!({}))];
        let inst = instances(vec![vmi("apps", "web", "Running", "Enabled")]);
        let kv = kubevirt(&["IncrementalBackup"]);
        let s = select(&sel, &vms, &inst, Some(&kv), now()).unwrap();
        assert_eq!(s.not_ready.len(), 1, "names narrow the selection");
        assert_eq!(s.not_ready[0].reason, FEATURE_GATE_OFF);
        assert!(s.not_ready[0].message.contains("UtilityVolumes"));
        let s = select(&sel, &vms, &inst, None, now()).unwrap();
        assert_eq!(s.not_ready[0].reason, KUBEVIRT_NOT_FOUND);
    }

    #[test]
    fn a_migrating_vm_waits() {
        let mut i = vmi("apps", "web", "Running", "Enabled");
        i.status.as_mut().unwrap().migration_state =
            serde_json::from_value(json!({"startTimestamp": "2026-11-30T11:59:00Z"})).unwrap();
        let vms = vec![vm("apps", "web", json!({}))];
        let kv = kubevirt(GATES);
        let s = select(
            &Default::default(),
            &vms,
            &instances(vec![i]),
            Some(&kv),
            now(),
        )
        .unwrap();
        assert_eq!(s.not_ready[0].reason, MIGRATING);
    }

    #[test]
    fn only_a_policy_in_snapbacks_namespace_may_select_other_namespaces() {
        let mut all = BTreeMap::new();
        all.insert(
            "apps".to_string(),
            BTreeMap::from([("tier".to_string(), "prod".to_string())]),
        );
        all.insert("dev".to_string(), BTreeMap::new());
        let own = VirtualMachineSelector::default();
        assert_eq!(
            namespaces(&own, "apps", Some("snapback"), &all).unwrap(),
            vec!["apps"]
        );
        let wide = VirtualMachineSelector {
            namespace_selector: Some(
                serde_json::from_value(json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["prod"]}]}))
                    .unwrap(),
            ),
            ..Default::default()
        };
        assert_eq!(
            namespaces(&wide, "snapback", Some("snapback"), &all).unwrap(),
            vec!["apps"]
        );
        let err = namespaces(&wide, "apps", Some("snapback"), &all).unwrap_err();
        assert!(
            err.contains("only for policies in snapback's namespace"),
            "{err}"
        );
    }
}
