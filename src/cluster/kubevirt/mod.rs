//! The kubevirt-worker's side of the cluster: it drives BackupRuns and RestoreRequests of
//! KubeVirt VMs (those labelled `snapback.dev/kubevirt`) through the same engines and phases
//! as a node agent's, with a `KubeVirtSource` in place of the local libvirt. It needs no node
//! access: KubeVirt takes the backup and the files come to its staging dir over HTTPS; a
//! restore rebuilds the disks in its work dir and uploads them through CDI.

mod restore;
pub mod source;

use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{BackupRun, FailureReason, RestoreRequest, VmRef};
use crate::cluster::agent::site::AgentSite;
use crate::cluster::store::Store;
use crate::driver::Driver;
use crate::lifecycle::{Journal, Lifecycle, Reporter};
use crate::metrics::Metrics;
use source::KubeVirtSource;

/// Where the worker keeps its staging and locks, and how it makes backup volumes.
pub struct Place<'a> {
    pub state_dir: &'a Path,
    /// The storage class of the backup volumes; the cluster's default when `None`.
    pub storage_class: Option<String>,
    pub metrics: Option<&'a Metrics>,
    /// The namespace snapback runs in: only its runs may name VMs of other namespaces.
    pub own_namespace: Option<String>,
}

/// Drives one run of a KubeVirt VM to its end (a resumed one from where it stopped) and
/// writes its status to the API as it goes.
pub async fn drive_run<S: Store>(
    store: &S,
    run: BackupRun,
    place: &Place<'_>,
    report: Reporter,
    cancel: watch::Receiver<bool>,
) -> BackupRun {
    let state_dir = place.state_dir;
    let metrics = place.metrics;
    let site = AgentSite::new(store.clone(), state_dir.to_path_buf());
    let Some(vm) = run.spec.virtual_machine.clone() else {
        let mut lc = Lifecycle::new(run, &site, report, cancel);
        lc.fail(crate::error::StepError::new(
            FailureReason::InvalidSpec,
            "the run names no spec.virtualMachine",
        ))
        .await;
        return lc.record;
    };
    let run_ns = run.metadata.namespace.clone().unwrap_or_default();
    if vm.namespace != run_ns && place.own_namespace.as_deref() != Some(run_ns.as_str()) {
        // Whoever may create runs in one namespace must not copy another's disks.
        let mut lc = Lifecycle::new(run, &site, report, cancel);
        lc.fail(crate::error::StepError::new(
            FailureReason::InvalidSpec,
            format!(
                "the run in namespace {run_ns} names VM {}: a run may back up the VMs of its own namespace only (or be in snapback's namespace)",
                vm.key()
            ),
        ))
        .await;
        return lc.record;
    }
    let name = run.metadata.name.clone().unwrap_or_default();
    let source = KubeVirtSource::new(store.clone(), vm, &name, &run.spec.target_ref)
        .with_storage_class(place.storage_class.clone());
    let driver = Driver {
        host: &source,
        state_dir,
        poll: Duration::from_secs(1),
        metrics,
    };
    let done = driver.backup(&site, run, report, cancel).await.run;
    // The end is written once more, in case a write during the run was lost.
    if let Err(e) = Journal::<BackupRun>::save(&site, &done).await {
        tracing::warn!(run = %name, "cannot record its end: {e}");
    }
    done
}

/// The VM a restore names, or why the worker refuses it (a pure check, before anything).
fn restore_vm(req: &RestoreRequest, own_namespace: Option<&str>) -> Result<VmRef, String> {
    let Some((ns, name)) = crate::catalog::layout::kubevirt_vm(&req.spec.domain) else {
        return Err(format!(
            "spec.domain {} does not name a KubeVirt VM as NAMESPACE/NAME",
            req.spec.domain
        ));
    };
    let req_ns = req.metadata.namespace.clone().unwrap_or_default();
    if ns != req_ns && own_namespace != Some(req_ns.as_str()) {
        // As for runs: whoever may create restores in one namespace must not write VMs of
        // another's, nor read its disks back.
        return Err(format!(
            "the restore in namespace {req_ns} names VM {ns}/{name}: a restore may bring back the VMs of its own namespace only (or be in snapback's namespace)"
        ));
    }
    if req.spec.files.is_some() {
        return Err(
            "files restores read files-mode backups, which only libvirt domains have: a \
                    KubeVirt VM is backed up as images"
                .to_string(),
        );
    }
    if req.spec.hooks != crate::api::Hooks::default() || !req.spec.target_devices.is_empty() {
        return Err(
            "hooks and targetDevices have no KubeVirt counterpart: KubeVirt runs no \
                    commands for snapback, and its disks are DataVolumes"
                .to_string(),
        );
    }
    Ok(VmRef {
        namespace: ns.to_string(),
        name: name.to_string(),
    })
}

/// Drives one RestoreRequest of a KubeVirt VM (`spec.domain` is `NAMESPACE/NAME`) to its end
/// (a resumed one from where it stopped), writing its status to the API as it goes.
pub async fn drive_restore<S: Store>(
    store: &S,
    req: RestoreRequest,
    place: &Place<'_>,
    report: Reporter,
    cancel: watch::Receiver<bool>,
) -> RestoreRequest {
    let site = AgentSite::new(store.clone(), place.state_dir.to_path_buf());
    let vm = match restore_vm(&req, place.own_namespace.as_deref()) {
        Ok(vm) => vm,
        Err(message) => {
            let mut lc = Lifecycle::new(req, &site, report, cancel);
            lc.fail(crate::error::StepError::new(
                FailureReason::InvalidSpec,
                message,
            ))
            .await;
            return lc.record;
        }
    };
    let name = req.metadata.name.clone().unwrap_or_default();
    let source = KubeVirtSource::for_restore(
        store.clone(),
        vm,
        &name,
        &req.spec.target_ref,
        req.spec.new_name.clone(),
    );
    let driver = Driver {
        host: &source,
        state_dir: place.state_dir,
        poll: Duration::from_secs(1),
        metrics: place.metrics,
    };
    let done = driver.restore(&site, req, report, cancel).await;
    if let Err(e) = Journal::<RestoreRequest>::save(&site, &done).await {
        tracing::warn!(restore = %name, "cannot record its end: {e}");
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ns: &str, domain: &str) -> RestoreRequest {
        let mut r = RestoreRequest::new(
            "r",
            serde_json::from_value(serde_json::json!({
                "domain": domain, "targetRef": "t", "newName": "copy",
            }))
            .unwrap(),
        );
        r.metadata.namespace = Some(ns.into());
        r
    }

    #[test]
    fn a_restore_names_a_vm_of_its_own_namespace_unless_it_is_in_snapbacks() {
        let own = Some("snapback-system");
        let vm = restore_vm(&req("apps", "apps/web"), own).unwrap();
        assert_eq!((vm.namespace.as_str(), vm.name.as_str()), ("apps", "web"));
        let err = restore_vm(&req("tenant-b", "apps/web"), own).unwrap_err();
        assert!(err.contains("its own namespace"), "{err}");
        assert!(restore_vm(&req("snapback-system", "apps/web"), own).is_ok());
        let err = restore_vm(&req("apps", "web"), own).unwrap_err();
        assert!(err.contains("NAMESPACE/NAME"), "{err}");
    }

    #[test]
    fn hooks_and_target_devices_have_no_kubevirt_counterpart() {
        let mut r = req("apps", "apps/web");
        r.spec.target_devices = [("rootdisk".to_string(), "/dev/sdb".to_string())].into();
        let err = restore_vm(&r, None).unwrap_err();
        assert!(err.contains("targetDevices"), "{err}");
    }
}
