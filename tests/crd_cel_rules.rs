//! The CEL rules (`x-kubernetes-validations`) in the generated CRDs, evaluated with a real CEL
//! interpreter the way the apiserver applies them: each rule at its place in the schema, with
//! `self` bound to the matching part of the object. Every example passes, and each one-of
//! mistake is refused with the rule's message.

use kube::CustomResourceExt;
use serde_json::{json, Value};
use snapback::api::{BackupPolicy, BackupRun, BackupTarget, RestoreRequest};

fn schema_of(kind: &str) -> Value {
    let crd = match kind {
        "BackupTarget" => BackupTarget::crd(),
        "BackupPolicy" => BackupPolicy::crd(),
        "RestoreRequest" => RestoreRequest::crd(),
        "BackupRun" => BackupRun::crd(),
        other => panic!("no CRD for {other}"),
    };
    serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema,
    )
    .unwrap()
}

/// CEL's reserved words that the Kubernetes apiserver escapes as `__word__` when they are
/// property names (the CustomResourceDefinition docs, "Escaping").
const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// `doc` with its property names escaped as the apiserver does before evaluating a rule.
fn escaped(doc: &Value) -> Value {
    match doc {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let k = if RESERVED.contains(&k.as_str()) {
                        format!("__{k}__")
                    } else {
                        k.replace("__", "__underscores__")
                    };
                    (k, escaped(v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(escaped).collect()),
        v => v.clone(),
    }
}

/// Walks `schema` and `doc` together; returns the messages of the rules that do not hold, and
/// counts the rules evaluated.
fn violations(schema: &Value, doc: &Value, evaluated: &mut usize) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for r in rules {
            let rule = r["rule"].as_str().unwrap();
            let program = cel::Program::compile(rule)
                .unwrap_or_else(|e| panic!("rule does not compile: {rule}: {e:?}"));
            let mut ctx = cel::Context::default();
            ctx.add_variable_from_value("self", cel::to_value(escaped(doc)).unwrap());
            *evaluated += 1;
            match program.execute(&ctx) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    out.push(r["message"].as_str().unwrap_or(rule).to_string())
                }
                other => panic!("rule {rule} on {doc}: {other:?}"),
            }
        }
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        doc.as_object(),
    ) {
        for (k, sub) in props {
            if let Some(v) = obj.get(k) {
                out.extend(violations(sub, v, evaluated));
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), doc.as_array()) {
        for v in arr {
            out.extend(violations(items, v, evaluated));
        }
    }
    // Optional nested structs are emitted as anyOf/allOf wrappers by some generators.
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(alts) = schema.get(key).and_then(Value::as_array) {
            for a in alts {
                out.extend(violations(a, doc, evaluated));
            }
        }
    }
    out
}

fn check(doc: &Value) -> (Vec<String>, usize) {
    let mut n = 0;
    let v = violations(&schema_of(doc["kind"].as_str().unwrap()), doc, &mut n);
    (v, n)
}

#[test]
fn every_example_passes_the_crd_cel_rules() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut evaluated = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
            let (bad, n) = check(&doc);
            assert!(bad.is_empty(), "{}: {bad:?}", path.display());
            evaluated += n;
        }
    }
    assert!(evaluated >= 4, "rules were evaluated: {evaluated}");
}

fn doc(kind: &str, spec: Value) -> Value {
    json!({"apiVersion": "snapback.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec})
}

const FILES_ALONE: &str = "files restores files into a directory: it takes none of newName, inPlace, storageDir, start, resume, targetDevices, overwrite and diskFormat";

#[test]
fn one_of_mistakes_are_refused_with_the_rule_message() {
    let cases = [
        (
            doc(
                "BackupTarget",
                json!({"url": "file:///b", "encryption": {"mode": "Symmetric"}}),
            ),
            "encryption mode Symmetric needs a passphrase",
        ),
        (
            doc(
                "BackupTarget",
                json!({"url": "file:///b", "encryption": {"mode": "Gpg"}}),
            ),
            "encryption mode Gpg needs at least one recipient",
        ),
        (
            doc(
                "BackupTarget",
                json!({"url": "file:///b", "encryption": {"mode": "Symmetric",
                    "passphrase": {"file": "/p", "secretKeyRef": {"name": "s", "key": "k"}}}}),
            ),
            "set exactly one of secretKeyRef and file",
        ),
        (
            doc("RestoreRequest", json!({"domain": "d", "targetRef": "t"})),
            "set exactly one of newName, inPlace: true and files",
        ),
        (
            doc(
                "RestoreRequest",
                json!({"domain": "d", "targetRef": "t", "newName": "n", "inPlace": true}),
            ),
            "set exactly one of newName, inPlace: true and files",
        ),
        (
            doc(
                "RestoreRequest",
                json!({"domain": "d", "targetRef": "t", "newName": "n",
                    "files": {"paths": ["/etc"], "to": "/r"}}),
            ),
            FILES_ALONE,
        ),
        (
            doc(
                "RestoreRequest",
                json!({"domain": "d", "targetRef": "t", "resume": true,
                    "files": {"paths": ["/etc"], "to": "/r"}}),
            ),
            FILES_ALONE,
        ),
        (
            doc(
                "RestoreRequest",
                json!({"domain": "d", "targetRef": "t", "inPlace": true, "diskFormat": "Raw",
                    "files": {"paths": ["/etc"], "to": "/r"}}),
            ),
            FILES_ALONE,
        ),
        (
            doc(
                "RestoreRequest",
                json!({"domain": "d", "targetRef": "t", "targetDevices": {"vdb": "/dev/x"},
                    "files": {"paths": ["/etc"], "to": "/r"}}),
            ),
            FILES_ALONE,
        ),
        (
            doc(
                "RestoreRequest",
                json!({"domain": "d", "source": "Local", "newName": "n"}),
            ),
            "source: Local reverts the domain in place to a local point: it takes inPlace: true and none of storageDir, targetDevices, diskFormat and resume (a point with RAM resumes by itself)",
        ),
        (
            doc(
                "RestoreRequest",
                json!({"domain": "d", "targetRef": "t", "inPlace": true, "localPoint": "p"}),
            ),
            "localPoint names a local point: it needs source: Local",
        ),
        (
            doc("RestoreRequest", json!({"domain": "d", "inPlace": true})),
            "targetRef is required unless source is Local",
        ),
        (
            doc(
                "BackupPolicy",
                json!({"domainSelector": {"names": []}, "targetRef": "t", "schedule": "@daily"}),
            ),
            "select domains by names, globs or metadata",
        ),
        (
            doc(
                "BackupPolicy",
                json!({"domainSelector": {"names": ["web"]}, "virtualMachineSelector": {"names": ["web"]},
                    "targetRef": "t", "schedule": "@daily"}),
            ),
            "select libvirt domains (domainSelector) or KubeVirt VMs (virtualMachineSelector), one of the two",
        ),
        (
            doc(
                "BackupRun",
                json!({"domain": "web", "targetRef": "t", "virtualMachine": {"namespace": "apps", "name": "web"}}),
            ),
            "a run of a KubeVirt VM names it in domain as NAMESPACE/NAME",
        ),
    ];
    for (d, want) in cases {
        let (bad, _) = check(&d);
        assert_eq!(bad, vec![want.to_string()], "{d}");
    }
    // And the right forms pass.
    for ok in [
        doc(
            "BackupTarget",
            json!({"url": "file:///b", "encryption": {"mode": "Symmetric", "passphrase": {"file": "/p"}}}),
        ),
        doc("BackupTarget", json!({"url": "file:///b"})),
        doc(
            "RestoreRequest",
            json!({"domain": "d", "targetRef": "t", "inPlace": true}),
        ),
        // The apiserver's defaults (inPlace, start and overwrite false, empty hooks) are not
        // image fields set.
        doc(
            "RestoreRequest",
            json!({"domain": "d", "targetRef": "t", "inPlace": false, "start": false,
                "overwrite": false, "targetDevices": {}, "hooks": {}, "shutdownTimeoutSeconds": 120,
                "files": {"paths": ["/etc"], "to": "/r"}}),
        ),
        doc(
            "BackupPolicy",
            json!({"domainSelector": {"metadata": {"tier": "gold"}}, "targetRef": "t", "schedule": "@daily"}),
        ),
        doc(
            "BackupPolicy",
            json!({"virtualMachineSelector": {"selector": {"matchLabels": {"backup": "nightly"}}},
                "targetRef": "t", "schedule": "@daily"}),
        ),
        doc(
            "BackupRun",
            json!({"domain": "apps/web", "targetRef": "t", "virtualMachine": {"namespace": "apps", "name": "web"}}),
        ),
    ] {
        assert_eq!(check(&ok).0, Vec::<String>::new(), "{ok}");
    }
}
