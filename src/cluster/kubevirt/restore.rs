//! A KubeVirt VM restored through KubeVirt's and CDI's APIs: each rebuilt disk uploaded into
//! a DataVolume of its own (`source.upload`, an UploadTokenRequest, CDI's upload proxy), then
//! the VirtualMachine created from the definition saved with the point, or the VM in place
//! stopped (runStrategy Halted), repointed to the new DataVolumes and given its run strategy
//! back. Everything a restore makes carries the label `snapback.dev/restore: <request>`: a
//! resumed restore adopts only what it made, and a failed one deletes only that.
//!
//! The upload token is asked for just before each upload (it lives five minutes) and goes
//! only into the upload's request header: never into a log, the status or an argv.

use std::path::Path;
use std::time::{Duration, Instant};

use kube::api::ObjectMeta;

use super::source::KubeVirtSource;
use crate::cluster::store::{ApiErrorKind, Store};
use crate::kubevirt::restore_spec::{self, VmEdit};
use crate::kubevirt::types::{
    dv_phase, run_strategy, CDIConfig, ContentType, DataVolume, DataVolumeSource, DataVolumeSpec,
    StorageSpec, UploadTokenRequest, UploadTokenRequestSpec, VirtualMachine, CDI_CONFIG_NAME,
};
use crate::kubevirt::{naming, transfer};
use crate::libvirt::xml_edit::XmlEdit;
use crate::libvirt::{LibvirtError, VirtErrorKind};

/// The label on everything a restore makes, naming the RestoreRequest.
pub const RESTORE_LABEL: &str = "snapback.dev/restore";

/// How many times an upload that failed on the way (the proxy or the upload pod gone) is
/// made again, each with a fresh token.
const UPLOAD_TRIES: u32 = 3;

fn err(kind: VirtErrorKind, message: impl Into<String>) -> LibvirtError {
    LibvirtError {
        kind,
        message: message.into(),
    }
}

fn api(e: crate::cluster::store::ApiError) -> LibvirtError {
    let kind = if e.is(ApiErrorKind::NotFound) {
        VirtErrorKind::DomainNotFound
    } else if e.is(ApiErrorKind::Unavailable) {
        VirtErrorKind::Unavailable
    } else {
        VirtErrorKind::Other
    };
    err(kind, e.to_string())
}

/// Whether `meta` says the restore labelled `value` made the object.
fn made_by(meta: &ObjectMeta, value: &str) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(RESTORE_LABEL))
        .is_some_and(|v| v == value)
}

/// A fresh locally administered MAC from the OS's generator (a v4 UUID's random bytes).
fn fresh_mac() -> String {
    let b = uuid::Uuid::new_v4().into_bytes();
    restore_spec::mac_from([b[10], b[11], b[12], b[13], b[14]])
}

impl<S: Store> KubeVirtSource<S> {
    fn restore_label(&self) -> String {
        crate::cluster::labels::label_value(&self.run)
    }

    fn restore_meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.vm.namespace.clone()),
            labels: Some([(RESTORE_LABEL.to_string(), self.restore_label())].into()),
            ..Default::default()
        }
    }

    /// The VM `id` names: the restore's own VM (by name), the new one (by name), or either
    /// by its firmware UUID or uid, as the engine records what `define` answered.
    pub(super) async fn find_vm(&self, id: &str) -> Result<Option<VirtualMachine>, LibvirtError> {
        let ns = self.vm.namespace.clone();
        let name = id.strip_prefix(&format!("{ns}/")).unwrap_or(id);
        let mut candidates = vec![name.to_string(), self.vm.name.clone()];
        candidates.extend(self.new_vm.clone());
        candidates.dedup();
        for (i, c) in candidates.iter().enumerate() {
            let Some(vm) = self
                .store
                .get::<VirtualMachine>(Some(&ns), c)
                .await
                .map_err(api)?
            else {
                continue;
            };
            let by_identity =
                vm.spec.firmware_uuid() == Some(id) || vm.metadata.uid.as_deref() == Some(id);
            if i == 0 || by_identity {
                return Ok(Some(vm));
            }
        }
        Ok(None)
    }

    async fn vm_named(&self, id: &str) -> Result<VirtualMachine, LibvirtError> {
        self.find_vm(id).await?.ok_or_else(|| {
            err(
                VirtErrorKind::DomainNotFound,
                format!("VirtualMachine {id} not found in {}", self.vm.namespace),
            )
        })
    }

    /// Changes the VM's spec with `f` and writes it, retrying when someone wrote in between.
    async fn edit_vm(
        &self,
        id: &str,
        f: impl Fn(&mut VirtualMachine) -> bool,
    ) -> Result<(), LibvirtError> {
        for _ in 0..5 {
            let mut vm = self.vm_named(id).await?;
            if !f(&mut vm) {
                return Ok(());
            }
            match self.store.replace(&vm).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is(ApiErrorKind::Conflict) => continue,
                Err(e) => return Err(api(e)),
            }
        }
        Err(err(
            VirtErrorKind::Other,
            format!("VirtualMachine {id} kept changing under the restore"),
        ))
    }

    /// Sets the VM's run strategy (and drops the deprecated `running`, which excludes it).
    pub(super) async fn set_run_strategy(&self, id: &str, want: &str) -> Result<(), LibvirtError> {
        self.edit_vm(id, |vm| {
            if vm.spec.run_strategy.as_deref() == Some(want) && vm.spec.running.is_none() {
                return false;
            }
            vm.spec.run_strategy = Some(want.to_string());
            vm.spec.running = None;
            true
        })
        .await
    }

    /// Creates the VM a definition describes, or (the VM in place, and a resumed restore's
    /// own) writes the definition's spec over the one of that name. Answers its firmware
    /// UUID, or its uid where it has none.
    pub(super) async fn define_vm(&self, definition: &str) -> Result<String, LibvirtError> {
        let want: VirtualMachine = serde_json::from_str(definition)
            .map_err(|e| err(VirtErrorKind::Other, format!("the VM to define: {e}")))?;
        let name = want.metadata.name.clone().unwrap_or_default();
        let made = match self.store.create(&want).await {
            Ok(vm) => vm,
            Err(e) if e.is(ApiErrorKind::AlreadyExists) => {
                // As a new VM, only one this restore made (before a crash) is taken over: a
                // stranger's that appeared since Resolving is never written.
                if self.new_vm.is_some() {
                    let there = self.vm_named(&name).await?;
                    if !made_by(&there.metadata, &self.restore_label()) {
                        return Err(err(
                            VirtErrorKind::InvalidState,
                            format!(
                                "VirtualMachine {name} exists and was not made by this restore; choose another name"
                            ),
                        ));
                    }
                }
                let spec = want.spec.clone();
                let labels = want.metadata.labels.clone();
                let annotations = want.metadata.annotations.clone();
                self.edit_vm(&name, |vm| {
                    if vm.spec == spec {
                        return false;
                    }
                    vm.spec = spec.clone();
                    vm.metadata.labels = labels.clone();
                    vm.metadata.annotations = annotations.clone();
                    true
                })
                .await?;
                self.vm_named(&name).await?
            }
            Err(e) => return Err(api(e)),
        };
        Ok(made
            .spec
            .firmware_uuid()
            .map(str::to_string)
            .or(made.metadata.uid.clone())
            .unwrap_or(name))
    }

    /// Deletes the new VM, if this restore made it.
    pub(super) async fn undefine_vm(&self, id: &str) -> Result<(), LibvirtError> {
        let vm = self.vm_named(id).await?;
        if !made_by(&vm.metadata, &self.restore_label()) {
            return Err(err(
                VirtErrorKind::Other,
                format!(
                    "VirtualMachine {} was not made by this restore; left alone",
                    vm.metadata.name.clone().unwrap_or_default()
                ),
            ));
        }
        let name = vm.metadata.name.clone().unwrap_or_default();
        self.store
            .delete::<VirtualMachine>(Some(&self.vm.namespace), &name)
            .await
            .map_err(api)
    }

    /// The saved VM as the restore defines it; `edit.disk_paths` maps each volume to its
    /// DataVolume.
    pub(super) fn rewrite_vm(&self, saved: &str, edit: &XmlEdit) -> Result<String, String> {
        let vm_edit = VmEdit {
            new_name: edit.new_name.clone(),
            firmware_uuid: edit.new_uuid.clone(),
            volumes: edit.disk_paths.clone(),
            label: Some((RESTORE_LABEL.to_string(), self.restore_label())),
        };
        let vm = restore_spec::restored_vm(saved, &vm_edit, fresh_mac)?;
        serde_json::to_string_pretty(&vm).map_err(|e| e.to_string())
    }

    pub(super) fn placement(&self, new_vm: Option<&str>, disk: &str) -> String {
        match new_vm {
            Some(n) => naming::restored_volume(n, disk, None),
            None => naming::restored_volume(&self.vm.name, disk, Some(&self.run)),
        }
    }

    async fn data_volume(&self, name: &str) -> Result<Option<DataVolume>, LibvirtError> {
        self.store
            .get(Some(&self.vm.namespace), name)
            .await
            .map_err(api)
    }

    /// The DataVolume `name` of this restore, made if it is not there yet; one of that name
    /// that another made is refused, never written into.
    async fn ensure_data_volume(&self, name: &str, bytes: u64) -> Result<DataVolume, LibvirtError> {
        let dv = DataVolume {
            metadata: self.restore_meta(name),
            spec: DataVolumeSpec {
                source: Some(DataVolumeSource::upload()),
                storage: Some(StorageSpec {
                    resources: Some(
                        serde_json::from_value(serde_json::json!({
                            "requests": {"storage": naming::quantity_of(bytes)}
                        }))
                        .map_err(|e| err(VirtErrorKind::Other, e.to_string()))?,
                    ),
                    ..Default::default()
                }),
                content_type: Some(ContentType::Kubevirt),
                ..Default::default()
            },
            status: None,
        };
        let dv = match self.store.create(&dv).await {
            Ok(d) => d,
            Err(e) if e.is(ApiErrorKind::AlreadyExists) => self
                .data_volume(name)
                .await?
                .ok_or_else(|| err(VirtErrorKind::Other, format!("DataVolume {name} vanished")))?,
            Err(e) => return Err(api(e)),
        };
        if !made_by(&dv.metadata, &self.restore_label()) {
            return Err(err(
                VirtErrorKind::InvalidState,
                format!(
                    "DataVolume {}/{name} exists and was not made by this restore; choose another name",
                    self.vm.namespace
                ),
            ));
        }
        Ok(dv)
    }

    /// Waits until the DataVolume is in one of `phases`; Failed, or the time running out,
    /// is an error.
    async fn wait_phase(&self, name: &str, phases: &[&str]) -> Result<String, LibvirtError> {
        let deadline = Instant::now() + self.export_wait;
        loop {
            let phase = self
                .data_volume(name)
                .await?
                .and_then(|d| d.phase().map(str::to_string))
                .unwrap_or_default();
            if phases.contains(&phase.as_str()) {
                return Ok(phase);
            }
            if phase == dv_phase::FAILED {
                return Err(err(
                    VirtErrorKind::Other,
                    format!("DataVolume {name} failed"),
                ));
            }
            if Instant::now() >= deadline {
                return Err(err(
                    VirtErrorKind::Other,
                    format!(
                        "DataVolume {name} is {} after {}s, not {}",
                        if phase.is_empty() {
                            "without a phase"
                        } else {
                            &phase
                        },
                        self.export_wait.as_secs(),
                        phases.join(" or ")
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Where CDI's upload proxy is and the CA it presents (CDIConfig's status).
    async fn upload_proxy(&self) -> Result<(String, Option<String>), LibvirtError> {
        let cfg: Option<CDIConfig> = self.store.get(None, CDI_CONFIG_NAME).await.map_err(api)?;
        let status = cfg.and_then(|c| c.status).unwrap_or_default();
        let url = status.upload_proxy_url.ok_or_else(|| {
            err(
                VirtErrorKind::Unavailable,
                "CDIConfig says no uploadProxyURL: is CDI installed, with its upload proxy?",
            )
        })?;
        Ok((url, status.upload_proxy_ca))
    }

    /// A token for uploading into the claim `pvc` (cdi-apiserver answers the create with it).
    async fn upload_token(&self, pvc: &str) -> Result<String, LibvirtError> {
        let req = UploadTokenRequest {
            metadata: ObjectMeta {
                name: Some(pvc.to_string()),
                namespace: Some(self.vm.namespace.clone()),
                ..Default::default()
            },
            spec: UploadTokenRequestSpec {
                pvc_name: pvc.to_string(),
            },
            status: None,
        };
        let answer = self.store.create(&req).await.map_err(api)?;
        answer.status.and_then(|s| s.token).ok_or_else(|| {
            err(
                VirtErrorKind::Other,
                "CDI answered the UploadTokenRequest without a token",
            )
        })
    }

    /// Uploads `image` into the DataVolume `name` (made first if need be) and waits until CDI
    /// says it Succeeded. One that Succeeded before (a resumed restore) is kept.
    pub(super) async fn upload_disk(
        &self,
        name: &str,
        image: &Path,
        bytes: u64,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), LibvirtError> {
        let dv = self.ensure_data_volume(name, bytes).await?;
        if dv.phase() == Some(dv_phase::SUCCEEDED) {
            return Ok(());
        }
        let mut last = String::new();
        for attempt in 0..UPLOAD_TRIES {
            let phase = self
                .wait_phase(name, &[dv_phase::UPLOAD_READY, dv_phase::SUCCEEDED])
                .await?;
            if phase == dv_phase::SUCCEEDED {
                return Ok(());
            }
            let (proxy, ca) = self.upload_proxy().await?;
            // The DataVolume's claim has its name.
            let token = self.upload_token(name).await?;
            match transfer::upload(&proxy, ca.as_deref(), &token, image, |sent, total| {
                progress(sent, total.unwrap_or(bytes))
            })
            .await
            {
                Ok(()) => {
                    self.wait_phase(name, &[dv_phase::SUCCEEDED]).await?;
                    return Ok(());
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(attempt, datavolume = name, "upload failed: {e}; again");
                    last = e.to_string();
                }
                Err(e) => {
                    return Err(err(
                        VirtErrorKind::Other,
                        format!("uploading into DataVolume {name}: {e}"),
                    ))
                }
            }
        }
        Err(err(
            VirtErrorKind::Other,
            format!("uploading into DataVolume {name}: {last}"),
        ))
    }

    /// Deletes the DataVolume `name` (its claim goes with it) if this restore made it.
    pub(super) async fn remove_data_volume(&self, name: &str) -> Result<(), LibvirtError> {
        match self.data_volume(name).await? {
            Some(dv) if made_by(&dv.metadata, &self.restore_label()) => self
                .store
                .delete::<DataVolume>(Some(&self.vm.namespace), name)
                .await
                .map_err(api),
            _ => Ok(()),
        }
    }

    /// Stops the VM: KubeVirt shuts the guest down and removes its instance.
    pub(super) async fn halt(&self, id: &str) -> Result<(), LibvirtError> {
        self.set_run_strategy(id, run_strategy::HALTED).await
    }

    /// Stops the VM and returns once its instance is gone, as libvirt's destroy returns once
    /// the domain is off: a definition written before that would not be the one it restarts
    /// with (KubeVirt applies volume changes at the next start).
    pub(super) async fn halt_and_wait(&self, id: &str) -> Result<(), LibvirtError> {
        self.halt(id).await?;
        let name = self.vm_named(id).await?.metadata.name.unwrap_or_default();
        let deadline = Instant::now() + self.export_wait;
        loop {
            let vmi: Option<crate::kubevirt::types::VirtualMachineInstance> = self
                .store
                .get(Some(&self.vm.namespace), &name)
                .await
                .map_err(api)?;
            if vmi.is_none() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(err(
                    VirtErrorKind::InvalidState,
                    format!("VirtualMachine {name} still has an instance after it was halted"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Starts a halted VM (one with another run strategy is left to it) and returns once its
    /// instance runs, as libvirt's start returns once the domain runs: KubeVirt schedules a
    /// pod first, which can take a while.
    pub(super) async fn start_vm(&self, id: &str) -> Result<(), LibvirtError> {
        let vm = self.vm_named(id).await?;
        let halted = vm.spec.run_strategy.as_deref() == Some(run_strategy::HALTED)
            || (vm.spec.run_strategy.is_none() && vm.spec.running != Some(true));
        if halted {
            self.set_run_strategy(id, run_strategy::ALWAYS).await?;
        }
        let name = vm.metadata.name.clone().unwrap_or_default();
        let deadline = Instant::now() + self.export_wait;
        loop {
            let vmi: Option<crate::kubevirt::types::VirtualMachineInstance> = self
                .store
                .get(Some(&self.vm.namespace), &name)
                .await
                .map_err(api)?;
            if vmi.is_some_and(|i| i.is_running()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(err(
                    VirtErrorKind::InvalidState,
                    format!(
                        "VirtualMachine {name} is not running {}s after it was started",
                        self.export_wait.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
