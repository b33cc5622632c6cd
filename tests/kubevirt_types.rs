//! The KubeVirt and CDI types in `snapback::kubevirt::types`, checked against the
//! CRD schemas KubeVirt v1.9.0 and CDI v1.66.0 publish (vendored in
//! `tests/fixtures/kubevirt/`, see its README).
//!
//! Three checks per kind:
//! - an object built with our structs validates against the upstream schema,
//!   and every key we write exists in it (a misspelt field would otherwise pass
//!   JSON-schema validation and be pruned silently by the API server);
//! - a schema-valid example (written here, following the schema) deserialises
//!   into our struct with the values we read;
//! - the VM spec survives deserialise + serialise unchanged.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::VolumeResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use snapback::kubevirt::types::*;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubevirt")
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(path)).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// OpenAPI v3's `nullable: true` (e.g. KubeVirt's `lastProbeTime: null`) has
/// no JSON Schema keyword; the API server accepts null there, so say so in
/// JSON Schema terms.
fn allow_nullable(s: &mut Value) {
    match s {
        Value::Object(map) => {
            if map.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(t)) = map.get("type").cloned() {
                    map.insert("type".into(), json!([t, "null"]));
                }
            }
            map.values_mut().for_each(allow_nullable);
        }
        Value::Array(items) => items.iter_mut().for_each(allow_nullable),
        _ => {}
    }
}

fn schema(kind: &str) -> Value {
    let mut s = raw_schema(kind);
    allow_nullable(&mut s);
    s
}

/// The OpenAPI v3 schema of `kind` as the vendored file holds it: KubeVirt's
/// files are the bare `openAPIV3Schema`, CDI's are whole CRDs, and the
/// UploadTokenRequest (not a CRD) is the closure of its OpenAPI definitions.
fn raw_schema(kind: &str) -> Value {
    match kind {
        "VirtualMachineBackup"
        | "VirtualMachineBackupTracker"
        | "VirtualMachine"
        | "VirtualMachineInstance"
        | "VirtualMachineExport"
        | "KubeVirt" => yaml(&format!("{}.yaml", kind.to_lowercase()))["openAPIV3Schema"].clone(),
        "DataVolume" | "CDIConfig" => {
            let crd = yaml(&format!("{}.yaml", kind.to_lowercase()));
            let v = crd["spec"]["versions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "v1beta1")
                .expect("v1beta1 in the CRD");
            v["schema"]["openAPIV3Schema"].clone()
        }
        "UploadTokenRequest" => {
            let text = std::fs::read_to_string(fixtures().join("uploadtokenrequest.json")).unwrap();
            serde_json::from_str(&text).unwrap()
        }
        other => panic!("no schema for {other}"),
    }
}

fn schema_errors(kind: &str, doc: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(&schema(kind)).unwrap();
    validator
        .iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

/// Follows a local `$ref` (only the UploadTokenRequest schema has them).
fn resolve<'a>(root: &'a Value, mut s: &'a Value) -> &'a Value {
    while let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/definitions/").expect("local ref");
        s = &root["definitions"][name];
    }
    s
}

/// Key paths in `doc` that the schema does not declare. Mirrors the API
/// server's pruning: an object keeps only its `properties` (or anything, under
/// `additionalProperties` or `x-kubernetes-preserve-unknown-fields`). The
/// top-level `metadata` is ObjectMeta, which the server checks itself.
fn unknown_keys(root: &Value, schema: &Value, doc: &Value, path: &str, out: &mut Vec<String>) {
    let schema = resolve(root, schema);
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return;
    }
    match doc {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in map {
                let here = format!("{path}.{k}");
                if path.is_empty()
                    && k == "metadata"
                    && props.is_some_and(|p| p.contains_key("metadata"))
                {
                    continue;
                }
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(sub), _) => unknown_keys(root, sub, v, &here, out),
                    (None, Some(sub)) => unknown_keys(root, sub, v, &here, out),
                    (None, None) => out.push(here),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    unknown_keys(root, item_schema, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn unknown_keys_of(kind: &str, doc: &Value) -> Vec<String> {
    let root = schema(kind);
    let mut out = Vec::new();
    unknown_keys(&root, &root, doc, "", &mut out);
    out
}

/// Serialises `obj` and asserts it is valid for, and fully known to, its schema.
fn assert_fits_schema<T: Serialize + Resource<DynamicType = ()>>(obj: &T) -> Value {
    let doc = serde_json::to_value(obj).unwrap();
    let kind = T::kind(&()).to_string();
    assert_eq!(doc["kind"], kind.as_str());
    assert_eq!(doc["apiVersion"], T::api_version(&()).as_ref());
    let errors = schema_errors(&kind, &doc);
    assert!(
        errors.is_empty(),
        "{kind} does not validate: {errors:#?}\n{doc:#}"
    );
    let unknown = unknown_keys_of(&kind, &doc);
    assert!(
        unknown.is_empty(),
        "{kind} writes fields its schema lacks: {unknown:?}"
    );
    doc
}

/// Reads an example, checks it is itself schema-valid (so it is a fair
/// stand-in for what the API server returns), and deserialises it.
fn example<T: DeserializeOwned + Resource<DynamicType = ()>>(file: &str) -> (Value, T) {
    let mut doc = yaml(&format!("examples/{file}"));
    let kind = T::kind(&()).to_string();
    assert_eq!(doc["kind"], kind.as_str(), "{file}");
    let errors = schema_errors(&kind, &doc);
    assert!(
        errors.is_empty(),
        "example {file} is not schema-valid: {errors:#?}"
    );
    let unknown = unknown_keys_of(&kind, &doc);
    assert!(
        unknown.is_empty(),
        "example {file} has fields its schema lacks: {unknown:?}"
    );
    let obj: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    // Comments aside, keep the parsed form for comparisons.
    doc.as_object_mut().unwrap().remove("#");
    (doc, obj)
}

fn time(s: &str) -> Time {
    Time(s.parse().unwrap())
}

fn meta_named<T: Resource<DynamicType = ()>>(obj: &mut T, ns: &str) {
    obj.meta_mut().namespace = Some(ns.to_string());
}

fn cond(type_: &str, status: &str, reason: &str, message: &str, at: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(time(at)),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// backup.kubevirt.io

#[test]
fn a_backup_we_create_and_the_status_kubevirt_writes_fit_the_v1_9_schema() {
    let mut b = VirtualMachineBackup::new(
        "snapback-web-1-1",
        VirtualMachineBackupSpec {
            force_full_backup: true,
            ..VirtualMachineBackupSpec::push(
                tracker_source("snapback-offsite-web-1"),
                "snapback-web-1-1",
            )
        },
    );
    meta_named(&mut b, "shop");
    let created = assert_fits_schema(&b);
    assert_eq!(created["spec"]["pvcName"], "snapback-web-1-1");
    assert_eq!(created["spec"]["forceFullBackup"], true);
    assert!(created["spec"].get("skipQuiesce").is_none());
    assert!(cel_violations("VirtualMachineBackup", &created).is_empty());

    // The status as a fake KubeVirt writes it; v1.9.0 requires diskTarget.
    b.status = Some(VirtualMachineBackupStatus {
        type_: Some(BACKUP_TYPE_FULL.into()),
        checkpoint_name: Some("snapback-web-1-1-2026-08-01_10-00-00".into()),
        included_volumes: vec![BackupVolumeInfo {
            volume_name: "root".into(),
            disk_target: Some("vda".into()),
            ..Default::default()
        }],
        conditions: vec![
            Condition {
                observed_generation: Some(1),
                ..cond(
                    "Quiesced",
                    "True",
                    backup_reason::QUIESCE_SUCCEEDED,
                    "",
                    "2026-08-01T10:00:01Z",
                )
            },
            cond(
                "Progressing",
                "False",
                backup_reason::COMPLETED,
                "done",
                "2026-08-01T10:02:00Z",
            ),
            cond(
                "Complete",
                "True",
                backup_reason::COMPLETED,
                "done",
                "2026-08-01T10:02:00Z",
            ),
        ],
        ..Default::default()
    });
    assert_fits_schema(&b);
    assert_eq!(
        backup_outcome(&b),
        BackupOutcome::Completed { warning: false }
    );
}

#[test]
fn the_v1_9_schema_requires_what_our_status_leaves_optional() {
    // Our diskTarget is optional because main dropped it; the v1.9.0 schema
    // still requires it. A fake KubeVirt imitating v1.9 must therefore set it.
    let mut b =
        VirtualMachineBackup::new("b", VirtualMachineBackupSpec::push(vm_source("vm"), "p"));
    b.status = Some(VirtualMachineBackupStatus {
        included_volumes: vec![BackupVolumeInfo {
            volume_name: "root".into(),
            ..Default::default()
        }],
        // metav1.Condition requires reason, message and lastTransitionTime.
        conditions: vec![Condition {
            type_: "Complete".into(),
            status: "True".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let errors = schema_errors("VirtualMachineBackup", &serde_json::to_value(&b).unwrap());
    let text = errors.join("\n");
    assert!(text.contains("diskTarget"), "{text}");
    assert!(text.contains("lastTransitionTime"), "{text}");
}

#[test]
fn kubevirts_cel_rules_accept_our_backups_and_refuse_one_without_pvc_name_or_api_group() {
    let b = VirtualMachineBackup::new("b", VirtualMachineBackupSpec::push(vm_source("vm"), "p"));
    assert!(cel_violations("VirtualMachineBackup", &serde_json::to_value(&b).unwrap()).is_empty());

    let mut bad = b.clone();
    bad.spec.pvc_name = None;
    bad.spec.source.api_group = None;
    let v = cel_violations("VirtualMachineBackup", &serde_json::to_value(&bad).unwrap());
    assert_eq!(v.len(), 2, "{v:?}");

    let mut pull = b.clone();
    pull.spec.mode = Some(BackupMode::Pull);
    assert_eq!(
        cel_violations(
            "VirtualMachineBackup",
            &serde_json::to_value(&pull).unwrap()
        )
        .len(),
        1
    );
    pull.spec.token_secret_ref = Some("tok".into());
    assert!(cel_violations(
        "VirtualMachineBackup",
        &serde_json::to_value(&pull).unwrap()
    )
    .is_empty());

    let t = VirtualMachineBackupTracker::new(
        "t",
        VirtualMachineBackupTrackerSpec {
            source: vm_source("vm"),
        },
    );
    assert!(cel_violations(
        "VirtualMachineBackupTracker",
        &serde_json::to_value(&t).unwrap()
    )
    .is_empty());
    let wrong = VirtualMachineBackupTracker::new(
        "t",
        VirtualMachineBackupTrackerSpec {
            source: tracker_source("x"),
        },
    );
    assert!(!cel_violations(
        "VirtualMachineBackupTracker",
        &serde_json::to_value(&wrong).unwrap()
    )
    .is_empty());
}

#[test]
fn a_tracker_we_create_and_its_checkpoint_status_fit_the_schema() {
    let mut t = VirtualMachineBackupTracker::new(
        "snapback-offsite-web-1",
        VirtualMachineBackupTrackerSpec {
            source: vm_source("web-1"),
        },
    );
    meta_named(&mut t, "shop");
    assert_fits_schema(&t);
    t.status = Some(VirtualMachineBackupTrackerStatus {
        latest_checkpoint: Some(BackupCheckpoint {
            name: Some("b-2026-08-01_10-00-00".into()),
            creation_time: Some(time("2026-08-01T10:00:00Z")),
            volumes: vec![BackupVolumeInfo {
                volume_name: "root".into(),
                disk_target: Some("vda".into()),
                ..Default::default()
            }],
        }),
        checkpoint_redefinition_required: Some(true),
    });
    assert_fits_schema(&t);
}

#[test]
fn the_backup_example_reads_as_an_incremental_completed_with_a_warning() {
    let (_, b): (_, VirtualMachineBackup) = example("virtualmachinebackup.yaml");
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.type_.as_deref(), Some(BACKUP_TYPE_INCREMENTAL));
    assert_eq!(
        s.checkpoint_name.as_deref(),
        Some("snapback-web-1-20260801-2026-08-01_10-00-00")
    );
    assert_eq!(s.included_volumes.len(), 2);
    assert_eq!(s.included_volumes[1].disk_target.as_deref(), Some("sdb"));
    assert_eq!(
        backup_outcome(&b),
        BackupOutcome::Completed { warning: true }
    );
    assert_eq!(quiesce_result(&b), Some(Quiesce::Failed));
    assert_eq!(b.spec.source.kind, "VirtualMachineBackupTracker");
    assert_eq!(
        b.metadata.finalizers.as_deref(),
        Some(&[BACKUP_FINALIZER.to_string()][..])
    );
    assert_fits_schema(&b);
}

#[test]
fn the_tracker_example_reads_its_latest_checkpoint() {
    let (_, t): (_, VirtualMachineBackupTracker) = example("virtualmachinebackuptracker.yaml");
    assert_eq!(
        t.latest_checkpoint_name(),
        Some("snapback-web-1-20260801-2026-08-01_10-00-00")
    );
    assert!(!t.redefinition_pending());
    let cp = t
        .status
        .as_ref()
        .unwrap()
        .latest_checkpoint
        .as_ref()
        .unwrap();
    assert_eq!(cp.creation_time, Some(time("2026-08-01T10:00:00Z")));
    assert_eq!(cp.volumes.len(), 2);
}

#[test]
fn a_backup_from_after_v1_9_without_disk_target_still_deserialises() {
    let doc = json!({"apiVersion": "backup.kubevirt.io/v1alpha1", "kind": "VirtualMachineBackup",
        "metadata": {"name": "b"}, "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm"}, "pvcName": "p"},
        "status": {"includedVolumes": [{"volumeName": "root"}], "someFutureField": 1}});
    let b: VirtualMachineBackup = serde_json::from_value(doc).unwrap();
    assert_eq!(b.status.unwrap().included_volumes[0].disk_target, None);
}

// ---------------------------------------------------------------------------
// kubevirt.io VirtualMachine, VirtualMachineInstance, KubeVirt

#[test]
fn the_vm_example_round_trips_its_whole_spec_and_metadata() {
    let (doc, vm): (_, VirtualMachine) = example("virtualmachine.yaml");
    let back = serde_json::to_value(&vm).unwrap();
    assert_eq!(
        back["spec"], doc["spec"],
        "the spec must come back unchanged"
    );
    assert_eq!(back["metadata"], doc["metadata"]);
    assert_eq!(vm.spec.run_strategy.as_deref(), Some(run_strategy::ALWAYS));
    assert!(vm.spec.other.contains_key("dataVolumeTemplates"));
    assert!(vm.spec.other.contains_key("instancetype"));
}

#[test]
fn the_vm_example_lists_volumes_disks_interfaces_and_firmware_uuid() {
    let (_, vm): (_, VirtualMachine) = example("virtualmachine.yaml");
    let vols = vm.spec.volumes();
    assert_eq!(
        vols.iter()
            .map(|v| (v.name.as_str(), v.source.clone()))
            .collect::<Vec<_>>(),
        vec![
            (
                "root",
                VolumeSource::DataVolume {
                    name: "web-1-root".into()
                }
            ),
            (
                "data",
                VolumeSource::PersistentVolumeClaim {
                    claim_name: "web-1-data".into()
                }
            ),
            (
                "cloudinit",
                VolumeSource::Other {
                    kind: "cloudInitNoCloud".into()
                }
            ),
        ]
    );
    let disks = vm.spec.disks();
    assert_eq!(
        disks.iter().map(|d| d.device.as_str()).collect::<Vec<_>>(),
        ["disk", "disk", "cdrom"]
    );
    assert_eq!(disks[1].bus.as_deref(), Some("scsi"));
    assert_eq!(
        vm.spec.interfaces()[0].mac_address.as_deref(),
        Some("02:4f:a1:00:00:0a")
    );
    assert_eq!(
        vm.spec.firmware_uuid(),
        Some("0b4d8a3e-2f5c-5e6a-9b1d-3c7e8f9a0b1c")
    );
    let status = vm.status.as_ref().unwrap();
    assert_eq!(
        status.printable_status.as_deref(),
        Some(printable_status::RUNNING)
    );
    assert_eq!(status.ready, Some(true));
    assert_eq!(vm.cbt_state(), CbtState::Enabled);
}

#[test]
fn a_vm_restored_under_a_new_name_still_fits_the_schema() {
    let (_, vm): (_, VirtualMachine) = example("virtualmachine.yaml");
    let mut spec = vm.spec.clone();
    spec.run_strategy = Some(run_strategy::HALTED.into());
    assert!(spec.set_firmware_uuid("8a1c2b3d-0000-4000-8000-00000000abcd"));
    assert!(spec.set_interface_mac("default", None));
    assert!(spec.set_volume_source(
        "root",
        &VolumeSource::PersistentVolumeClaim {
            claim_name: "web-1-copy-root".into()
        }
    ));
    assert!(spec.set_volume_source(
        "data",
        &VolumeSource::DataVolume {
            name: "web-1-copy-data".into()
        }
    ));
    // A new VM must not re-create the old VM's DataVolumes.
    spec.other.remove("dataVolumeTemplates");
    let mut copy = VirtualMachine::new("web-1-copy", spec);
    meta_named(&mut copy, "shop");
    let doc = assert_fits_schema(&copy);
    assert_eq!(
        doc["spec"]["template"]["spec"]["volumes"][0],
        json!({"name": "root", "persistentVolumeClaim": {"claimName": "web-1-copy-root"}})
    );
    assert_eq!(
        doc["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0].get("macAddress"),
        None
    );
    assert_eq!(doc["spec"]["instancetype"]["name"], "u1.medium");
}

#[test]
fn a_vm_built_with_our_structs_fits_the_schema() {
    let spec = VirtualMachineSpec {
        run_strategy: Some(run_strategy::MANUAL.into()),
        running: None,
        template: json!({"spec": {"domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}, "memory": {"guest": "1Gi"}},
            "volumes": [{"name": "root", "persistentVolumeClaim": {"claimName": "root"}}]}}),
        other: BTreeMap::new(),
    };
    let mut vm = VirtualMachine::new("vm", spec);
    vm.status = Some(VirtualMachineStatus {
        printable_status: Some(printable_status::STOPPED.into()),
        ready: Some(false),
        created: Some(false),
        changed_block_tracking: Some(ChangedBlockTrackingStatus {
            state: "PendingRestart".into(),
        }),
        conditions: vec![],
    });
    assert_fits_schema(&vm);
}

#[test]
fn the_vmi_example_gives_phase_node_cbt_capacity_and_a_finished_migration() {
    let (_, vmi): (_, VirtualMachineInstance) = example("virtualmachineinstance.yaml");
    assert!(vmi.is_running());
    let s = vmi.status.as_ref().unwrap();
    assert_eq!(s.node_name.as_deref(), Some("node-b"));
    assert_eq!(vmi.cbt_state(), CbtState::Enabled);
    assert_eq!(
        s.volume_status[0].capacity(),
        Some(&Quantity("30Gi".into()))
    );
    assert_eq!(s.volume_status[1].capacity(), None);
    let after = "2026-08-01T10:00:00Z".parse().unwrap();
    let during = "2026-08-01T09:31:00Z".parse().unwrap();
    assert!(!is_migrating(&vmi, after));
    assert!(is_migrating(&vmi, during));
}

#[test]
fn a_vmi_status_built_with_our_structs_fits_the_schema() {
    let mut vmi = VirtualMachineInstance::new(
        "vm",
        serde_json::from_value(json!({"domain": {"devices": {}}})).unwrap(),
    );
    vmi.status = Some(VirtualMachineInstanceStatus {
        phase: Some(vmi_phase::RUNNING.into()),
        node_name: Some("node-a".into()),
        migration_state: Some(MigrationState {
            start_timestamp: Some(time("2026-08-01T09:30:00Z")),
            source_node: Some("node-a".into()),
            target_node: Some("node-b".into()),
            completed: Some(false),
            failed: Some(false),
            ..Default::default()
        }),
        changed_block_tracking: Some(ChangedBlockTrackingStatus {
            state: "Initializing".into(),
        }),
        volume_status: vec![VolumeStatus {
            name: "root".into(),
            target: "vda".into(),
            phase: Some("Ready".into()),
            persistent_volume_claim_info: Some(PersistentVolumeClaimInfo {
                claim_name: Some("root".into()),
                capacity: [("storage".to_string(), Quantity("10Gi".into()))].into(),
                volume_mode: Some("Filesystem".into()),
            }),
        }],
        conditions: vec![],
    });
    assert_fits_schema(&vmi);
}

#[test]
fn the_kubevirt_example_has_both_backup_gates_and_cbt_selectors() {
    let (doc, kv): (_, KubeVirt) = example("kubevirt.yaml");
    assert!(kv.missing_backup_gates().is_empty());
    let sel = kv.cbt_selectors().unwrap();
    assert_eq!(
        sel.namespace_label_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["snapback.dev/cbt"],
        "true"
    );
    assert!(sel
        .virtual_machine_label_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .is_some());
    // Configuration snapback does not model comes back unchanged.
    assert_eq!(serde_json::to_value(&kv).unwrap()["spec"], doc["spec"]);
}

#[test]
fn a_kubevirt_configuration_built_with_our_structs_fits_the_schema() {
    let kv = KubeVirt::new(
        "kubevirt",
        KubeVirtSpec {
            configuration: Some(KubeVirtConfiguration {
                developer_configuration: Some(DeveloperConfiguration {
                    feature_gates: vec![
                        feature_gate::INCREMENTAL_BACKUP.into(),
                        feature_gate::UTILITY_VOLUMES.into(),
                    ],
                    ..Default::default()
                }),
                changed_block_tracking_label_selectors: Some(ChangedBlockTrackingSelectors {
                    namespace_label_selector: None,
                    virtual_machine_label_selector: Some(LabelSelector {
                        match_labels: Some(
                            [("changedBlockTracking".to_string(), "true".to_string())].into(),
                        ),
                        match_expressions: None,
                    }),
                }),
                other: BTreeMap::new(),
            }),
            other: BTreeMap::new(),
        },
    );
    assert_fits_schema(&kv);
}

// ---------------------------------------------------------------------------
// export.kubevirt.io

#[test]
fn a_pvc_export_we_create_and_its_ready_status_fit_the_schema() {
    let mut e = VirtualMachineExport::new(
        "snapback-web-1-1",
        VirtualMachineExportSpec {
            ttl_duration: Some("1h".into()),
            ..VirtualMachineExportSpec::of_pvc("snapback-web-1-1", Some("tok"))
        },
    );
    meta_named(&mut e, "shop");
    assert_fits_schema(&e);
    e.status = Some(VirtualMachineExportStatus {
        phase: Some(export_phase::READY.into()),
        service_name: Some("virt-export-snapback-web-1-1".into()),
        token_secret_ref: Some("tok".into()),
        ttl_expiration_time: Some(time("2026-08-01T11:00:00Z")),
        links: Some(VirtualMachineExportLinks {
            internal: Some(VirtualMachineExportLink {
                cert: "PEM".into(),
                volumes: vec![VirtualMachineExportVolume {
                    name: "snapback-web-1-1".into(),
                    formats: vec![VirtualMachineExportVolumeFormat {
                        format: export_format::DIR.into(),
                        url: "https://virt-export-snapback-web-1-1.shop.svc/volumes/snapback-web-1-1/dir".into(),
                    }],
                }],
            }),
            external: None,
        }),
        conditions: vec![Condition {
            last_probe_time: Some(time("2026-08-01T10:00:00Z")),
            ..cond(export_condition::READY, "True", "PodReady", "", "2026-08-01T10:00:00Z")
        }],
        virtual_machine_name: None,
    });
    assert!(e.is_ready());
    assert_fits_schema(&e);
}

#[test]
fn the_export_example_offers_dir_and_tar_gz_for_an_archive_pvc() {
    let (_, e): (_, VirtualMachineExport) = example("virtualmachineexport.yaml");
    assert!(e.is_ready());
    let link = e.internal_link().unwrap();
    let pvc = "snapback-web-1-20260801";
    assert!(link
        .url(pvc, export_format::DIR)
        .unwrap()
        .ends_with("/volumes/snapback-web-1-20260801/dir"));
    assert!(link
        .url(pvc, export_format::TAR_GZ)
        .unwrap()
        .ends_with("/disk.tar.gz"));
    assert_eq!(link.url(pvc, export_format::RAW), None);
    let s = e.status.as_ref().unwrap();
    assert_eq!(
        s.token_secret_ref.as_deref(),
        Some("snapback-web-1-20260801-token")
    );
    assert_eq!(
        s.service_name.as_deref(),
        Some("virt-export-snapback-web-1-20260801")
    );
    // lastProbeTime: null reads as absent.
    assert_eq!(s.conditions[0].last_probe_time, None);
    let ext = s.links.as_ref().unwrap().external.as_ref().unwrap();
    assert!(ext
        .url(pvc, export_format::DIR)
        .unwrap()
        .contains("/api/export.kubevirt.io/v1/namespaces/shop/virtualmachineexports/"));
}

// ---------------------------------------------------------------------------
// CDI

#[test]
fn an_upload_datavolume_we_create_and_its_status_fit_the_cdi_schema() {
    let mut dv = DataVolume::new(
        "web-1-restored-root",
        DataVolumeSpec {
            source: Some(DataVolumeSource::upload()),
            content_type: Some(ContentType::Kubevirt),
            storage: Some(StorageSpec {
                access_modes: vec!["ReadWriteOnce".into()],
                volume_mode: Some("Block".into()),
                storage_class_name: Some("fast".into()),
                resources: Some(VolumeResourceRequirements {
                    requests: Some([("storage".to_string(), Quantity("30Gi".into()))].into()),
                    limits: None,
                }),
            }),
            other: BTreeMap::new(),
        },
    );
    meta_named(&mut dv, "shop");
    let doc = assert_fits_schema(&dv);
    assert_eq!(doc["spec"]["source"], json!({"upload": {}}));
    dv.status = Some(DataVolumeStatus {
        phase: Some(dv_phase::SUCCEEDED.into()),
        progress: Some("100.0%".into()),
        claim_name: Some("web-1-restored-root".into()),
        restart_count: Some(0),
        conditions: vec![Condition {
            last_heartbeat_time: Some(time("2026-08-02T08:10:00Z")),
            ..cond(
                dv_condition::READY,
                "True",
                "Completed",
                "",
                "2026-08-02T08:10:00Z",
            )
        }],
    });
    assert_fits_schema(&dv);
}

#[test]
fn an_http_import_datavolume_fits_the_cdi_schema() {
    let mut source =
        DataVolumeSource::http("https://snapback-restore.snapback.svc/disks/root.qcow2");
    let http = source.http.as_mut().unwrap();
    http.cert_config_map = Some("snapback-restore-ca".into());
    http.secret_extra_headers = vec!["snapback-restore-auth".into()];
    let dv = DataVolume::new(
        "root",
        DataVolumeSpec {
            source: Some(source),
            storage: Some(StorageSpec::default()),
            content_type: None,
            other: BTreeMap::new(),
        },
    );
    assert_fits_schema(&dv);
}

#[test]
fn the_datavolume_example_is_ready_for_upload() {
    let (_, dv): (_, DataVolume) = example("datavolume.yaml");
    assert_eq!(dv.phase(), Some(dv_phase::UPLOAD_READY));
    assert!(dv.spec.source.as_ref().unwrap().upload.is_some());
    assert_eq!(dv.spec.content_type, Some(ContentType::Kubevirt));
    let res = dv
        .spec
        .storage
        .as_ref()
        .unwrap()
        .resources
        .as_ref()
        .unwrap();
    assert_eq!(
        res.requests.as_ref().unwrap()["storage"],
        Quantity("30Gi".into())
    );
    let s = dv.status.as_ref().unwrap();
    assert_eq!(s.progress.as_deref(), Some("N/A"));
    assert!(condition_is_true(&s.conditions, dv_condition::BOUND));
    assert!(!condition_is_true(&s.conditions, dv_condition::READY));
    assert_fits_schema(&dv);
}

#[test]
fn the_cdiconfig_example_gives_the_upload_proxy_url() {
    let (_, c): (_, CDIConfig) = example("cdiconfig.yaml");
    assert_eq!(
        c.status.as_ref().unwrap().upload_proxy_url.as_deref(),
        Some("cdi-uploadproxy.apps.example")
    );
    assert!(c
        .status
        .as_ref()
        .unwrap()
        .upload_proxy_ca
        .as_deref()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert_eq!(c.meta().name.as_deref(), Some(CDI_CONFIG_NAME));
    assert_fits_schema(&c);
}

#[test]
fn an_upload_token_request_matches_cdis_openapi_definition() {
    let mut req = UploadTokenRequest::new(
        "root",
        UploadTokenRequestSpec {
            pvc_name: "web-1-restored-root".into(),
        },
    );
    meta_named(&mut req, "shop");
    let doc = serde_json::to_value(&req).unwrap();
    // The Go struct's status has no omitempty, so the generated definition
    // lists it as required; cdi-apiserver reads a request without it as an
    // empty status. That is the only complaint allowed.
    let errors = schema_errors("UploadTokenRequest", &doc);
    assert!(
        errors.len() == 1 && errors[0].contains("status"),
        "{errors:?}"
    );
    assert!(unknown_keys_of("UploadTokenRequest", &doc).is_empty());

    let (_, resp): (_, UploadTokenRequest) = example("uploadtokenrequest.yaml");
    assert_eq!(
        resp.status.as_ref().unwrap().token.as_deref(),
        Some("eyJhbGciOiJQUzI1NiJ9.fake.fake")
    );
    assert_eq!(resp.spec.pvc_name, "web-1-restored-root");
    assert_fits_schema(&resp);
}

// ---------------------------------------------------------------------------
// The checks themselves

#[test]
fn the_key_check_catches_a_misspelt_field_that_schema_validation_lets_through() {
    let mut doc = serde_json::to_value(VirtualMachineBackup::new(
        "b",
        VirtualMachineBackupSpec::push(vm_source("vm"), "p"),
    ))
    .unwrap();
    let spec = doc["spec"].as_object_mut().unwrap();
    let v = spec.remove("pvcName").unwrap();
    spec.insert("pvcname".into(), v);
    // Unknown properties are allowed by JSON Schema, so this "validates"...
    let errors = schema_errors("VirtualMachineBackup", &doc);
    assert!(errors.is_empty(), "{errors:?}");
    // ...but the API server would prune it, and the key check says so.
    assert_eq!(
        unknown_keys_of("VirtualMachineBackup", &doc),
        vec![".spec.pvcname"]
    );

    // CDIConfig spells URL in capitals; plain camelCase would be wrong.
    let status = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "CDIConfig", "metadata": {"name": "config"},
        "spec": {}, "status": {"uploadProxyUrl": "x"}});
    assert_eq!(
        unknown_keys_of("CDIConfig", &status),
        vec![".status.uploadProxyUrl"]
    );

    // Inside the VM template (typed by the schema, even though we keep it as JSON).
    let vm = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "v"},
        "spec": {"template": {"metadata": {"anything": 1}, "spec": {"domain": {"devices": {}, "firmware": {"uuId": "x"}}}}}});
    assert_eq!(
        unknown_keys_of("VirtualMachine", &vm),
        vec![".spec.template.spec.domain.firmware.uuId"]
    );
}

#[test]
fn the_schemas_refuse_wrong_types_and_enum_values() {
    let doc = json!({"apiVersion": "backup.kubevirt.io/v1alpha1", "kind": "VirtualMachineBackup", "metadata": {"name": "b"},
        "spec": {"source": {"kind": "VirtualMachine", "name": "v"}, "mode": "Copy", "skipQuiesce": "yes"}});
    assert_eq!(schema_errors("VirtualMachineBackup", &doc).len(), 2);
    let dv = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "d"},
        "spec": {"contentType": "raw", "source": {"http": {}}}});
    assert_eq!(schema_errors("DataVolume", &dv).len(), 2);
}

#[test]
fn every_vendored_schema_is_read_and_every_example_is_checked() {
    for kind in [
        "VirtualMachineBackup",
        "VirtualMachineBackupTracker",
        "VirtualMachine",
        "VirtualMachineInstance",
        "VirtualMachineExport",
        "KubeVirt",
        "DataVolume",
        "CDIConfig",
        "UploadTokenRequest",
    ] {
        let s = schema(kind);
        assert!(resolve(&s, &s)["properties"]["spec"].is_object(), "{kind}");
    }
    let examples = std::fs::read_dir(fixtures().join("examples"))
        .unwrap()
        .count();
    assert_eq!(examples, 9, "a new example needs a test that reads it");
}

// ---------------------------------------------------------------------------
// CEL rules of the backup kinds, evaluated as the API server would (with
// oldSelf = self, i.e. as a create).

fn cel_violations(kind: &str, doc: &Value) -> Vec<String> {
    fn walk(schema: &Value, doc: &Value, out: &mut Vec<String>) {
        if let Some(rules) = schema
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
        {
            for r in rules {
                let rule = r["rule"].as_str().unwrap();
                let program =
                    cel::Program::compile(rule).unwrap_or_else(|e| panic!("{rule}: {e:?}"));
                let mut ctx = cel::Context::default();
                ctx.add_variable_from_value("self", cel::to_value(doc).unwrap());
                ctx.add_variable_from_value("oldSelf", cel::to_value(doc).unwrap());
                match program.execute(&ctx) {
                    Ok(cel::Value::Bool(true)) => {}
                    Ok(cel::Value::Bool(false)) => {
                        out.push(r["message"].as_str().unwrap_or(rule).to_string())
                    }
                    other => panic!("{rule} on {doc}: {other:?}"),
                }
            }
        }
        if let (Some(props), Some(obj)) = (
            schema.get("properties").and_then(Value::as_object),
            doc.as_object(),
        ) {
            for (k, sub) in props {
                if let Some(v) = obj.get(k) {
                    walk(sub, v, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&schema(kind), doc, &mut out);
    out
}
