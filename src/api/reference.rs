//! The field reference (`snapback crd --reference`, committed as docs/reference.md): every
//! spec field of every kind with its type, default and description, read from the generated
//! CRD schemas, so the documentation cannot drift from the types.

use std::fmt::Write as _;

use kube::CustomResourceExt;
use serde_json::Value;

use super::{BackupPolicy, BackupRun, BackupTarget, RestoreRequest, VirtHost};

fn type_of(s: &Value) -> String {
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        let vals: Vec<String> = e
            .iter()
            .filter_map(|v| v.as_str().map(|x| format!("`{x}`")))
            .collect();
        return format!("one of {}", vals.join(", "));
    }
    match s.get("type").and_then(Value::as_str) {
        Some("array") => format!(
            "list of {}",
            s.get("items").map(type_of).unwrap_or_else(|| "any".into())
        ),
        Some("object") if s.get("properties").is_none() => "map".into(),
        Some(t) => t.into(),
        None if s.get("x-kubernetes-int-or-string").is_some() => "int or string".into(),
        None => "object".into(),
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn walk(out: &mut String, path: &str, s: &Value) {
    let Some(props) = s.get("properties").and_then(Value::as_object) else {
        return;
    };
    let req: Vec<&str> = s
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, sub) in props {
        let p = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        let default = sub
            .get("default")
            .map(|d| format!("`{d}`"))
            .unwrap_or_default();
        let desc = sub.get("description").and_then(Value::as_str).unwrap_or("");
        let _ = writeln!(
            out,
            "| `{p}` | {} | {} | {} | {} |",
            cell(&type_of(sub)),
            if req.contains(&name.as_str()) {
                "yes"
            } else {
                ""
            },
            cell(&default),
            cell(desc)
        );
        walk(out, &p, sub);
        if let Some(items) = sub.get("items") {
            walk(out, &format!("{p}[]"), items);
        }
        if let Some(rules) = sub
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
        {
            for r in rules {
                let _ = writeln!(
                    out,
                    "| `{p}` | rule | | | {} (`{}`) |",
                    cell(r["message"].as_str().unwrap_or("")),
                    cell(r["rule"].as_str().unwrap_or(""))
                );
            }
        }
    }
}

/// The whole reference as Markdown.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Resource field reference\n\nGenerated from the CRD schemas by `snapback crd --reference`; \
         a test fails when this file is stale. Group `snapback.dev`, version `v1alpha1`.\n",
    );
    for crd in [
        BackupTarget::crd(),
        BackupPolicy::crd(),
        BackupRun::crd(),
        RestoreRequest::crd(),
        VirtHost::crd(),
    ] {
        let v = &crd.spec.versions[0];
        let schema = serde_json::to_value(&v.schema.as_ref().unwrap().open_api_v3_schema)
            .unwrap_or_default();
        let names = &crd.spec.names;
        let _ = writeln!(
            out,
            "\n## {} (`{}`, {})\n",
            names.kind,
            names.short_names.clone().unwrap_or_default().join(", "),
            crd.spec.scope.to_lowercase()
        );
        if let Some(rules) = schema["properties"]["spec"]
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
        {
            for r in rules {
                let _ = writeln!(
                    out,
                    "Rule: {} (`{}`)\n",
                    r["message"].as_str().unwrap_or(""),
                    r["rule"].as_str().unwrap_or("")
                );
            }
        }
        out.push_str(
            "| field | type | required | default | description |\n|---|---|---|---|---|\n",
        );
        walk(&mut out, "spec", &schema["properties"]["spec"]);
        out.push_str("\nStatus fields:\n\n| field | type | required | default | description |\n|---|---|---|---|---|\n");
        walk(&mut out, "status", &schema["properties"]["status"]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_field_reference_matches_the_schemas() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == super::markdown(),
            "docs/reference.md is stale: run `snapback crd --reference > docs/reference.md`"
        );
    }

    #[test]
    fn the_reference_lists_nested_fields_with_defaults_and_rules() {
        let md = super::markdown();
        for want in [
            "| `spec.schedule` | string | yes |",
            "| `spec.retention.keepDaily` |",
            "| `spec.consistency.quiesce` | one of `Preferred`, `Required`, `None` |",
            "set exactly one of newName, inPlace: true and files",
            "| `spec.files.paths` | list of string | yes |",
            "| `status.phase` |",
        ] {
            assert!(md.contains(want), "missing {want}");
        }
    }
}
