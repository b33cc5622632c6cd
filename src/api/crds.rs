//! The CustomResourceDefinitions, generated from the Rust types (`snapback crd`).

use kube::CustomResourceExt;

use super::{BackupPolicy, BackupRun, BackupTarget, RestoreRequest, VirtHost};

/// Every CRD as one multi-document YAML stream, in a stable order.
pub fn all_yaml() -> Result<String, String> {
    let crds = [
        BackupTarget::crd(),
        BackupPolicy::crd(),
        BackupRun::crd(),
        RestoreRequest::crd(),
        VirtHost::crd(),
    ];
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_crds_match_the_rust_types() {
        let generated = all_yaml().unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/snapback.yaml");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "crds/snapback.yaml is stale: run `snapback crd > crds/snapback.yaml`"
        );
    }

    #[test]
    fn every_crd_has_short_names_the_category_and_a_status_subresource() {
        for (crd, short) in [
            (BackupTarget::crd(), "bt"),
            (BackupPolicy::crd(), "bp"),
            (BackupRun::crd(), "br"),
            (RestoreRequest::crd(), "rr"),
            (VirtHost::crd(), "vh"),
        ] {
            let names = &crd.spec.names;
            assert_eq!(
                names.short_names.as_deref(),
                Some(&[short.to_string()][..]),
                "{}",
                names.kind
            );
            assert_eq!(
                names.categories.as_deref(),
                Some(&["snapback".to_string()][..])
            );
            let v = &crd.spec.versions[0];
            assert!(
                v.subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{} has a status subresource",
                names.kind
            );
            assert!(!v
                .additional_printer_columns
                .as_deref()
                .unwrap_or_default()
                .is_empty());
        }
        assert_eq!(VirtHost::crd().spec.scope, "Cluster");
        assert_eq!(BackupRun::crd().spec.scope, "Namespaced");
    }
}
