//! Every example manifest validates against the schema of its generated CRD.

use kube::CustomResourceExt;
use snapback::api::{BackupPolicy, BackupTarget, RestoreRequest};

fn schema_of(kind: &str) -> serde_json::Value {
    let crd = match kind {
        "BackupTarget" => BackupTarget::crd(),
        "BackupPolicy" => BackupPolicy::crd(),
        "RestoreRequest" => RestoreRequest::crd(),
        other => panic!("no CRD for {other}"),
    };
    let v = serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema,
    )
    .unwrap();
    assert!(v.is_object());
    v
}

#[test]
fn every_example_manifest_validates_against_its_crd_schema() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        for doc in docs {
            let kind = doc["kind"].as_str().unwrap().to_string();
            let validator = jsonschema::validator_for(&schema_of(&kind)).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&doc)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{}: {kind}: {errors:?}", path.display());
            checked += 1;
        }
    }
    assert_eq!(checked, 7, "every example was checked");

    // And the schema really checks: a wrong type and an unknown enum value are caught.
    let bad = serde_json::json!({"apiVersion": "snapback.dev/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "x"},
        "spec": {"domainSelector": {}, "targetRef": "t", "schedule": "* * * * *", "mode": "Tarball", "suspend": "yes"}});
    let validator = jsonschema::validator_for(&schema_of("BackupPolicy")).unwrap();
    assert!(validator.iter_errors(&bad).count() >= 2);
}
