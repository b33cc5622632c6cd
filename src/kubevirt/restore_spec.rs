//! The VirtualMachine a restore creates or puts back, made from the definition saved with
//! the point (`cluster::kubevirt::source::saved_definition`: name, namespace, labels,
//! annotations and spec; nothing the cluster assigned). Decided purely: the caller gives the
//! DataVolumes it filled and a source of new MAC addresses.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::types::{run_strategy, VirtualMachineSpec, VolumeSource};

/// What to change in a saved VirtualMachine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmEdit {
    /// A new VM of this name: with a new firmware UUID, new MAC addresses, `runStrategy:
    /// Halted` (the restore starts it when asked) and `label` on it. `None`: the VM in place,
    /// which keeps its identity and its run strategy.
    pub new_name: Option<String>,
    /// The new VM's firmware (SMBIOS) UUID.
    pub firmware_uuid: Option<String>,
    /// Volume name → the DataVolume it now reads.
    pub volumes: BTreeMap<String, String>,
    /// The label that says which restore made the new VM (key, value).
    pub label: Option<(String, String)>,
}

/// The saved VM as `edit` says, or why it cannot be. `fresh_mac` gives a new MAC address
/// per interface of a new VM.
pub fn restored_vm(
    saved: &str,
    edit: &VmEdit,
    mut fresh_mac: impl FnMut() -> String,
) -> Result<Value, String> {
    let doc: Value = serde_json::from_str(saved)
        .map_err(|e| format!("the saved VirtualMachine is not JSON: {e}"))?;
    if doc["kind"] != "VirtualMachine" {
        return Err("the saved definition is not a VirtualMachine".into());
    }
    let old_name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut spec: VirtualMachineSpec = serde_json::from_value(doc["spec"].clone())
        .map_err(|e| format!("the saved VirtualMachine's spec: {e}"))?;
    let mut metadata = json!({
        "name": doc["metadata"]["name"],
        "namespace": doc["metadata"]["namespace"],
    });
    for key in ["labels", "annotations"] {
        if doc["metadata"][key].is_object() {
            metadata[key] = doc["metadata"][key].clone();
        }
    }
    // The DataVolumes the repointed volumes read before: a template that would make one
    // again (under the old name) goes with them.
    let mut old_dvs = Vec::new();
    for (volume, dv) in &edit.volumes {
        let before = spec.volumes().into_iter().find(|v| &v.name == volume);
        let Some(before) = before else {
            return Err(format!("the saved VirtualMachine has no volume {volume}"));
        };
        if let VolumeSource::DataVolume { name } = before.source {
            old_dvs.push(name);
        }
        let to = VolumeSource::DataVolume { name: dv.clone() };
        if !spec.set_volume_source(volume, &to) {
            return Err(format!("volume {volume} cannot be pointed at {dv}"));
        }
    }
    if let Some(Value::Array(templates)) = spec.other.get_mut("dataVolumeTemplates") {
        templates.retain(|t| {
            let name = t["metadata"]["name"].as_str().unwrap_or_default();
            !old_dvs.iter().any(|o| o == name)
        });
        if templates.is_empty() {
            spec.other.remove("dataVolumeTemplates");
        }
    }
    if let Some(new) = &edit.new_name {
        metadata["name"] = json!(new);
        if let Some((k, v)) = &edit.label {
            if !metadata["labels"].is_object() {
                metadata["labels"] = json!({});
            }
            metadata["labels"][k] = json!(v);
        }
        // The template's labels that name the VM (services and affinities select by them)
        // name the new one.
        for key in ["kubevirt.io/vm", "kubevirt.io/domain"] {
            let l = &mut spec.template["metadata"]["labels"][key];
            if l.as_str() == Some(old_name.as_str()) {
                *l = json!(new);
            }
        }
        if let Some(uuid) = &edit.firmware_uuid {
            if !spec.set_firmware_uuid(uuid) {
                return Err("the saved VirtualMachine's template has no spec.domain".into());
            }
        }
        for iface in spec.interfaces() {
            spec.set_interface_mac(&iface.name, Some(&fresh_mac()));
        }
        // `running` is the deprecated twin of runStrategy; the two may not both be set.
        spec.running = None;
        spec.run_strategy = Some(run_strategy::HALTED.to_string());
    }
    Ok(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": metadata,
        "spec": spec,
    }))
}

/// The claims the VM's disks are on (a DataVolume's claim has its name), as the definition
/// names them: what an in-place restore keeps when it repoints them.
pub fn claims_of(definition: &str) -> Vec<String> {
    let Ok(doc) = serde_json::from_str::<Value>(definition) else {
        return Vec::new();
    };
    let Ok(spec) = serde_json::from_value::<VirtualMachineSpec>(doc["spec"].clone()) else {
        return Vec::new();
    };
    spec.volumes()
        .into_iter()
        .filter_map(|v| match v.source {
            VolumeSource::PersistentVolumeClaim { claim_name } => Some(claim_name),
            VolumeSource::DataVolume { name } => Some(name),
            _ => None,
        })
        .collect()
}

/// A locally administered unicast MAC address from random bytes (`02:…`, as KubeVirt's
/// kubemacpool and libvirt's own prefix avoid vendor ranges).
pub fn mac_from(bytes: [u8; 5]) -> String {
    let [a, b, c, d, e] = bytes;
    format!("02:{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved() -> String {
        json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "vms", "labels": {"app": "web"}},
            "spec": {
                "running": true,
                "dataVolumeTemplates": [
                    {"metadata": {"name": "web-root"}, "spec": {"source": {"blank": {}}}},
                    {"metadata": {"name": "web-scratch"}, "spec": {"source": {"blank": {}}}},
                ],
                "template": {
                    "metadata": {"labels": {"kubevirt.io/vm": "web", "tier": "front"}},
                    "spec": {
                        "domain": {
                            "devices": {
                                "disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                                "interfaces": [{"name": "default", "masquerade": {}, "macAddress": "02:00:00:00:00:01"}],
                            },
                            "firmware": {"uuid": "5d3f0c2a-0000-4000-8000-000000000001"},
                        },
                        "volumes": [
                            {"name": "root", "dataVolume": {"name": "web-root"}},
                            {"name": "scratch", "dataVolume": {"name": "web-scratch"}},
                            {"name": "init", "cloudInitNoCloud": {"userData": "x"}},
                        ],
                    },
                },
            },
        })
        .to_string()
    }

    fn edit(new: bool) -> VmEdit {
        VmEdit {
            new_name: new.then(|| "web-copy".to_string()),
            firmware_uuid: new.then(|| "11111111-2222-4333-8444-555555555555".to_string()),
            volumes: [("root".to_string(), "web-copy-root".to_string())].into(),
            label: Some(("snapback.dev/restore".into(), "r1".into())),
        }
    }

    #[test]
    fn a_new_vm_gets_its_name_uuid_macs_label_and_the_new_volume_and_is_halted() {
        let vm = restored_vm(&saved(), &edit(true), || "02:aa:bb:cc:dd:ee".into()).unwrap();
        assert_eq!(vm["metadata"]["name"], "web-copy");
        assert_eq!(vm["metadata"]["namespace"], "vms");
        assert_eq!(vm["metadata"]["labels"]["snapback.dev/restore"], "r1");
        assert_eq!(vm["metadata"]["labels"]["app"], "web");
        let spec = &vm["spec"];
        assert_eq!(spec["runStrategy"], "Halted");
        assert!(
            spec.get("running").is_none(),
            "running and runStrategy exclude each other"
        );
        let t = &spec["template"];
        assert_eq!(t["metadata"]["labels"]["kubevirt.io/vm"], "web-copy");
        assert_eq!(t["metadata"]["labels"]["tier"], "front");
        assert_eq!(
            t["spec"]["domain"]["firmware"]["uuid"],
            "11111111-2222-4333-8444-555555555555"
        );
        assert_eq!(
            t["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"],
            "02:aa:bb:cc:dd:ee"
        );
        assert_eq!(
            t["spec"]["volumes"][0],
            json!({"name": "root", "dataVolume": {"name": "web-copy-root"}})
        );
        assert_eq!(t["spec"]["volumes"][1]["dataVolume"]["name"], "web-scratch");
        // The template that made the old root DataVolume would make it again: it goes.
        let names: Vec<&str> = spec["dataVolumeTemplates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["web-scratch"]);
    }

    #[test]
    fn in_place_only_the_volumes_change() {
        let vm = restored_vm(&saved(), &edit(false), || {
            unreachable!("no new MACs in place")
        })
        .unwrap();
        assert_eq!(vm["metadata"]["name"], "web");
        assert!(vm["metadata"]["labels"]
            .get("snapback.dev/restore")
            .is_none());
        let spec = &vm["spec"];
        assert_eq!(spec["running"], true, "its run strategy stays");
        assert_eq!(
            spec["template"]["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"],
            "02:00:00:00:00:01"
        );
        assert_eq!(
            spec["template"]["spec"]["volumes"][0]["dataVolume"]["name"],
            "web-copy-root"
        );
    }

    #[test]
    fn a_volume_the_saved_vm_lacks_or_a_definition_that_is_no_vm_is_refused() {
        let mut e = edit(true);
        e.volumes = [("data".to_string(), "x".to_string())].into();
        let err = restored_vm(&saved(), &e, || "02:00:00:00:00:02".into()).unwrap_err();
        assert!(err.contains("no volume data"), "{err}");
        let err = restored_vm("<domain/>", &e, String::new).unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
    }

    #[test]
    fn the_claims_of_a_definition_are_its_pvcs_and_datavolumes() {
        assert_eq!(claims_of(&saved()), ["web-root", "web-scratch"]);
        assert_eq!(mac_from([1, 2, 3, 4, 0xff]), "02:01:02:03:04:ff");
    }
}
