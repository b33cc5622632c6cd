//! The kinds the fake serves through the stand-in: minimal CRDs (names, scope, the status
//! subresource where KubeVirt's and CDI's CRDs have one, any fields kept) and the built-in or
//! aggregated kinds no CRD declares. Schemas are not checked here; the vendored real CRDs in
//! tests/fixtures/kubevirt are for that.

use serde_json::{json, Value};

use crate::apiserver::{ApiServer, Resource};

fn crd(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    status: bool,
) -> Value {
    let mut ver = json!({
        "name": version, "served": true, "storage": true,
        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
    });
    if status {
        ver["subresources"] = json!({"status": {}});
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind,
                      "listKind": format!("{kind}List")},
            "scope": if namespaced { "Namespaced" } else { "Cluster" },
            "versions": [ver],
        },
    })
}

fn builtin(group: &str, version: &str, plural: &str, kind: &str, status: bool) -> Resource {
    Resource {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        kind: kind.into(),
        namespaced: true,
        status_subresource: status,
        custom: false,
        columns: Vec::new(),
    }
}

pub fn register(api: &ApiServer) {
    // The VMI's CRD has no status subresource (virt-handler writes the whole object); the
    // export is served as v1 only here (KubeVirt v1.9 serves a deprecated v1beta1 too, but
    // the stand-in keeps each version apart, so one version is served).
    api.create_all(&[
        crd(
            "kubevirt.io",
            "v1",
            "virtualmachines",
            "VirtualMachine",
            true,
            true,
        ),
        crd(
            "kubevirt.io",
            "v1",
            "virtualmachineinstances",
            "VirtualMachineInstance",
            true,
            false,
        ),
        crd("kubevirt.io", "v1", "kubevirts", "KubeVirt", true, true),
        crd(
            "backup.kubevirt.io",
            "v1alpha1",
            "virtualmachinebackups",
            "VirtualMachineBackup",
            true,
            true,
        ),
        crd(
            "backup.kubevirt.io",
            "v1alpha1",
            "virtualmachinebackuptrackers",
            "VirtualMachineBackupTracker",
            true,
            true,
        ),
        crd(
            "export.kubevirt.io",
            "v1",
            "virtualmachineexports",
            "VirtualMachineExport",
            true,
            true,
        ),
        crd(
            "cdi.kubevirt.io",
            "v1beta1",
            "datavolumes",
            "DataVolume",
            true,
            true,
        ),
        crd(
            "cdi.kubevirt.io",
            "v1beta1",
            "cdiconfigs",
            "CDIConfig",
            false,
            true,
        ),
    ]);
    // Built-in kinds the stand-in lacks, and CDI's aggregated token API (its creates are
    // answered by the fake, see cdi.rs).
    api.serve_kind(builtin(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
    ));
    api.serve_kind(builtin("", "v1", "events", "Event", false));
    api.serve_kind(builtin(
        "upload.cdi.kubevirt.io",
        "v1beta1",
        "uploadtokenrequests",
        "UploadTokenRequest",
        false,
    ));
}
