//! What Resolving decides once it has the spec, the original domain and the chosen point
//! (pure): whether the destination is well said, which directory gets the restored disks,
//! and what they are called. `steps/resolve.rs` gathers (libvirt, the target) and applies.

use std::path::{Path, PathBuf};

use crate::api::{FailureReason, RestoreRequestSpec, RestoredDisk};
use crate::catalog::layout;
use crate::catalog::manifest::Manifest;
use crate::error::StepError;

/// Where restored disks go when nothing says otherwise.
pub const DEFAULT_STORAGE: &str = "/var/lib/libvirt/images";

fn invalid(message: impl Into<String>) -> StepError {
    StepError::new(FailureReason::InvalidSpec, message)
}

/// Exactly one of a new name and in place, and a new name libvirt can take.
pub fn check_destination(spec: &RestoreRequestSpec) -> Result<(), StepError> {
    match (&spec.new_name, spec.in_place) {
        (Some(_), true) => Err(invalid("choose one of --as NAME and --in-place")),
        (None, false) => Err(invalid("say where to restore: --as NEWNAME or --in-place")),
        (Some(n), false)
            if n.trim().is_empty() || n.contains('/') || n.chars().any(char::is_control) =>
        {
            // Debug-quoted: a control character in the name must not split the message.
            Err(invalid(format!(
                "{n:?} is not a valid domain name (no '/', no control characters)"
            )))
        }
        _ => Ok(()),
    }
}

/// The spec's storage dir; in place, else the directory of the original's first disk.
pub fn storage_dir(spec: &RestoreRequestSpec, original_first_disk: Option<&str>) -> PathBuf {
    if let Some(d) = &spec.storage_dir {
        return PathBuf::from(d);
    }
    original_first_disk
        .and_then(|p| Path::new(p).parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STORAGE))
}

/// One restored disk per disk of the point: `<domain>-<disk>.qcow2` for a new domain, with
/// `-restored-<request>` in place, so the original's files are never overwritten.
pub fn restored_disks(
    spec: &RestoreRequestSpec,
    request: &str,
    point: &Manifest,
    storage: &Path,
) -> Vec<RestoredDisk> {
    let base = spec.new_name.clone().unwrap_or_else(|| spec.domain.clone());
    let suffix = if spec.in_place {
        format!("-restored-{request}")
    } else {
        String::new()
    };
    point
        .disks
        .iter()
        .map(|d| RestoredDisk {
            name: d.name.clone(),
            path: storage
                .join(format!(
                    "{}-{}{suffix}.qcow2",
                    layout::domain_dir(&base),
                    d.name
                ))
                .display()
                .to_string(),
            virtual_size: d.virtual_size,
            verified: false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(new_name: Option<&str>, in_place: bool, storage: Option<&str>) -> RestoreRequestSpec {
        let mut s: RestoreRequestSpec =
            serde_json::from_value(serde_json::json!({"domain": "web", "targetRef": "t"})).unwrap();
        s.new_name = new_name.map(String::from);
        s.in_place = in_place;
        s.storage_dir = storage.map(String::from);
        s
    }

    #[test]
    fn a_destination_is_one_of_a_valid_new_name_or_in_place() {
        let table = [
            (spec(Some("copy"), false, None), true),
            (spec(None, true, None), true),
            (spec(Some("copy"), true, None), false),
            (spec(None, false, None), false),
            (spec(Some("a/b"), false, None), false),
            (spec(Some("a\nb"), false, None), false),
            (spec(Some(" "), false, None), false),
        ];
        for (s, ok) in table {
            assert_eq!(check_destination(&s).is_ok(), ok, "{:?}", s.new_name);
        }
    }

    #[test]
    fn disks_go_beside_the_original_in_place_and_never_take_its_file_names() {
        let in_place = spec(None, true, None);
        let dir = storage_dir(&in_place, Some("/data/vms/web.qcow2"));
        assert_eq!(dir, PathBuf::from("/data/vms"));
        assert_eq!(
            storage_dir(
                &spec(Some("c"), false, Some("/x")),
                Some("/data/vms/web.qcow2")
            ),
            PathBuf::from("/x")
        );
        assert_eq!(
            storage_dir(&spec(Some("c"), false, None), None),
            PathBuf::from(DEFAULT_STORAGE)
        );
        let manifest: Manifest = serde_json::from_value(serde_json::json!({
            "apiVersion": "snapback.dev/v1alpha1", "run": "r1", "domain": "web",
            "type": "Full", "chain": "r1", "chainIndex": 0, "online": true,
            "disks": [{"name": "vda", "source": "/data/vms/web.qcow2", "format": "qcow2",
                "virtualSize": 1024, "exportFile": "r1.vda.qcow2"}]
        }))
        .unwrap();
        let d = restored_disks(&in_place, "req", &manifest, &dir);
        assert_eq!(d[0].path, "/data/vms/web-vda-restored-req.qcow2");
        let d = restored_disks(&spec(Some("copy"), false, None), "req", &manifest, &dir);
        assert_eq!(d[0].path, "/data/vms/copy-vda.qcow2");
    }
}
