//! A KubeVirt VirtualMachine as a `Source`, through KubeVirt's own APIs only: never the
//! libvirt inside the virt-launcher pod, which would bypass KubeVirt's checkpoint tracking,
//! collide with its jobs and break on migration.
//!
//! One source serves one run. A backup is a VirtualMachineBackup (push mode, through the
//! run's VirtualMachineBackupTracker so KubeVirt keeps the chain's checkpoint) into a PVC
//! made for the run. When it completes, a VirtualMachineExport of that PVC serves its files
//! over HTTPS, with a token snapback generates and hands to KubeVirt in a Secret it creates
//! (it never reads Secrets), and they are downloaded into staging. Chosen over a Job that
//! mounts the PVC: the worker needs no permission to run pods in users' namespaces, and the
//! download resumes with HTTP ranges after a crash. Every object is named after the run, so
//! a resumed run adopts what it finds.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::ObjectMeta;

use crate::api::{FirmwareKind, VmRef};
use crate::cluster::store::{ApiError, ApiErrorKind, Store};
use crate::kubevirt::types::{
    backup_condition, backup_outcome, find_condition, quiesce_result, tracker_source,
    BackupOutcome, KubeVirt, Quiesce, VirtualMachine, VirtualMachineBackup,
    VirtualMachineBackupSpec, VirtualMachineBackupTracker, VirtualMachineBackupTrackerSpec,
    VirtualMachineExport, VirtualMachineExportSpec, VirtualMachineInstance,
};
use crate::kubevirt::{eligible, naming};
use crate::libvirt::domain_xml::{ChainImage, Disk, DiskKind, DomainFacts};
use crate::libvirt::{DomainState, DomainView, JobState, LibvirtError, VirtErrorKind};

use crate::source::{BackupBegun, BackupRequest, DiskExport, JobOutcome, Source};

/// The label on everything a run creates, naming the run.
pub const RUN_LABEL: &str = "snapback.dev/run";

pub struct KubeVirtSource<S: Store> {
    pub(super) store: S,
    pub(super) vm: VmRef,
    /// The run's (or restore's) name: the names of what it creates derive from it.
    pub(super) run: String,
    /// The BackupTarget's name: the tracker is per VM and target.
    target: String,
    /// The storage class of the backup PVC; the cluster's default when `None`.
    storage_class: Option<String>,
    /// How long to wait for the export to be served, or a DataVolume to be ready.
    pub(super) export_wait: Duration,
    /// A restore as a new VM: its name.
    pub(super) new_vm: Option<String>,
}

fn err(kind: VirtErrorKind, message: impl Into<String>) -> LibvirtError {
    LibvirtError {
        kind,
        message: message.into(),
    }
}

fn api(e: ApiError) -> LibvirtError {
    let kind = if e.is(ApiErrorKind::NotFound) {
        VirtErrorKind::DomainNotFound
    } else if e.is(ApiErrorKind::Unavailable) {
        VirtErrorKind::Unavailable
    } else {
        VirtErrorKind::Other
    };
    err(kind, e.to_string())
}

fn meta(ns: &str, name: &str, run: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ns.to_string()),
        labels: Some(
            [(
                RUN_LABEL.to_string(),
                crate::cluster::labels::label_value(run),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

impl<S: Store> KubeVirtSource<S> {
    pub fn new(store: S, vm: VmRef, run: &str, target: &str) -> Self {
        Self {
            store,
            vm,
            run: run.to_string(),
            target: target.to_string(),
            storage_class: None,
            export_wait: Duration::from_secs(600),
            new_vm: None,
        }
    }

    /// The source of a restore of `vm` (from its chain on `target`) by the RestoreRequest
    /// `request`, as a new VM `new_vm` or in place (`None`).
    pub fn for_restore(
        store: S,
        vm: VmRef,
        request: &str,
        target: &str,
        new_vm: Option<String>,
    ) -> Self {
        Self {
            new_vm,
            ..Self::new(store, vm, request, target)
        }
    }

    pub fn with_storage_class(mut self, class: Option<String>) -> Self {
        self.storage_class = class;
        self
    }

    fn ns(&self) -> &str {
        &self.vm.namespace
    }

    fn objects(&self) -> String {
        naming::run_objects(&self.run)
    }

    fn tracker_name(&self) -> String {
        naming::tracker(&self.target, &self.vm)
    }

    async fn vm_and_instance(
        &self,
    ) -> Result<(VirtualMachine, Option<VirtualMachineInstance>), LibvirtError> {
        let vm: Option<VirtualMachine> = self
            .store
            .get(Some(self.ns()), &self.vm.name)
            .await
            .map_err(api)?;
        let vm = vm.ok_or_else(|| {
            err(
                VirtErrorKind::DomainNotFound,
                format!("VirtualMachine {} not found", self.vm.key()),
            )
        })?;
        let vmi = self
            .store
            .get(Some(self.ns()), &self.vm.name)
            .await
            .map_err(api)?;
        Ok((vm, vmi))
    }

    async fn tracker(&self) -> Result<Option<VirtualMachineBackupTracker>, LibvirtError> {
        self.store
            .get(Some(self.ns()), &self.tracker_name())
            .await
            .map_err(api)
    }

    async fn backup(&self) -> Result<Option<VirtualMachineBackup>, LibvirtError> {
        self.store
            .get(Some(self.ns()), &self.objects())
            .await
            .map_err(api)
    }

    /// Creates `obj`, or takes the one of that name a dead run created.
    async fn ensure<K: crate::cluster::Object>(&self, obj: &K) -> Result<K, LibvirtError> {
        match self.store.create(obj).await {
            Ok(o) => Ok(o),
            Err(e) if e.is(ApiErrorKind::AlreadyExists) => {
                let name = obj.meta().name.clone().unwrap_or_default();
                self.store
                    .get::<K>(Some(self.ns()), &name)
                    .await
                    .map_err(api)?
                    .ok_or_else(|| err(VirtErrorKind::Other, format!("{name} vanished")))
            }
            Err(e) => Err(api(e)),
        }
    }

    async fn delete<K: crate::cluster::Object>(&self, name: &str) -> Result<(), LibvirtError> {
        self.store
            .delete::<K>(Some(self.ns()), name)
            .await
            .map_err(api)
    }
}

/// The engine's view of a KubeVirt VM: its claim-backed volumes are the disks, tracked as
/// qcow2 (KubeVirt gives each CBT-eligible volume a qcow2 overlay), sized from the claims.
pub fn view_of(vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>) -> DomainView {
    let key = VmRef {
        namespace: vm.metadata.namespace.clone().unwrap_or_default(),
        name: vm.metadata.name.clone().unwrap_or_default(),
    };
    let statuses = vmi
        .and_then(|i| i.status.as_ref())
        .map(|s| s.volume_status.clone())
        .unwrap_or_default();
    let mut disks = Vec::new();
    let mut sizes = Vec::new();
    for v in vm
        .spec
        .volumes()
        .into_iter()
        .filter(|v| v.source.is_claim())
    {
        let size = statuses
            .iter()
            .find(|s| s.name == v.name)
            .and_then(|s| s.capacity())
            .and_then(|q| naming::quantity_bytes(&q.0))
            .unwrap_or(0);
        disks.push(Disk {
            name: v.name.clone(),
            kind: DiskKind::Network,
            chain: vec![ChainImage {
                path: format!("kubevirt:{}/{}", key.key(), v.name),
                format: "qcow2".into(),
            }],
        });
        sizes.push(size);
    }
    let running = vmi.is_some_and(|i| i.is_running());
    // Shut off only once KubeVirt removed the instance: a stopping one still holds the disks.
    let state = match vmi {
        _ if running => DomainState::Running,
        None => DomainState::ShutOff,
        Some(_) => DomainState::Other,
    };
    let saved = saved_definition(vm);
    DomainView {
        facts: DomainFacts {
            name: key.key(),
            uuid: vm.metadata.uid.clone().unwrap_or_else(|| key.key()),
            disks,
            has_agent_channel: true,
            firmware: Default::default(),
        },
        state,
        xml: saved.clone(),
        inactive_xml: saved,
        sizes,
    }
}

/// The VM as a restore needs it again: its name, labels, annotations and spec; nothing the
/// cluster assigned (uid, resourceVersion, managedFields, status).
pub fn saved_definition(vm: &VirtualMachine) -> String {
    let m = &vm.metadata;
    let doc = serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": m.name, "namespace": m.namespace,
            "labels": m.labels, "annotations": m.annotations,
        },
        "spec": vm.spec,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

impl<S: Store> Source for KubeVirtSource<S> {
    fn location(&self) -> String {
        format!("KubeVirt (namespace {})", self.ns())
    }

    async fn domain(&self, vm: &str) -> Result<DomainView, LibvirtError> {
        if vm == self.vm.key() {
            let (vm, vmi) = self.vm_and_instance().await?;
            return Ok(view_of(&vm, vmi.as_ref()));
        }
        // A restore's VM, by name or by the identity `define` answered.
        let Some(found) = self.find_vm(vm).await? else {
            return Err(err(
                VirtErrorKind::DomainNotFound,
                format!("VirtualMachine {vm} not found in {}", self.ns()),
            ));
        };
        let name = found.metadata.name.clone().unwrap_or_default();
        let vmi = self.store.get(Some(self.ns()), &name).await.map_err(api)?;
        Ok(view_of(&found, vmi.as_ref()))
    }

    async fn domain_names(&self) -> Result<Vec<String>, LibvirtError> {
        Ok(vec![self.vm.key()])
    }

    async fn checkpoints(&self, _vm: &str) -> Result<Vec<String>, LibvirtError> {
        Ok(self
            .tracker()
            .await?
            .and_then(|t| t.latest_checkpoint_name().map(str::to_string))
            .into_iter()
            .collect())
    }

    async fn checkpoint_xml(&self, _vm: &str, name: &str) -> Result<String, LibvirtError> {
        // KubeVirt keeps no checkpoint XML the engine can read; the tracker's record of it
        // says which volumes it covers, written in libvirt's form for the engine.
        let status = self.tracker().await?.and_then(|t| t.status);
        let Some(cp) = status
            .as_ref()
            .and_then(|s| s.latest_checkpoint.as_ref())
            .filter(|c| c.name.as_deref() == Some(name))
        else {
            return Err(err(
                VirtErrorKind::CheckpointNotFound,
                format!("the tracker holds no checkpoint {name}"),
            ));
        };
        let disks: String = cp
            .volumes
            .iter()
            .map(|v| {
                format!(
                    "<disk name='{}' checkpoint='bitmap'/>",
                    crate::libvirt::domain_xml::escape_attr(&v.volume_name)
                )
            })
            .collect();
        Ok(format!(
            "<domaincheckpoint><name>{}</name><disks>{disks}</disks></domaincheckpoint>",
            crate::libvirt::domain_xml::escape_attr(name)
        ))
    }

    async fn validate_checkpoint(&self, _vm: &str, name: &str) -> Result<(), LibvirtError> {
        // After a restart or migration KubeVirt redefines the checkpoint from the bitmaps it
        // finds; waited for, so that a redefinition that works keeps the chain going.
        let deadline = std::time::Instant::now() + self.export_wait;
        let mut t = self.tracker().await?;
        while t.as_ref().is_some_and(|t| t.redefinition_pending())
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_secs(1)).await;
            t = self.tracker().await?;
        }
        match t {
            Some(t) if t.redefinition_pending() => Err(err(
                VirtErrorKind::CheckpointInconsistent,
                "KubeVirt is redefining the checkpoint after a restart or migration",
            )),
            Some(t) if t.latest_checkpoint_name() == Some(name) => Ok(()),
            _ => Err(err(
                VirtErrorKind::CheckpointInconsistent,
                format!("the tracker no longer holds checkpoint {name} (KubeVirt lost it)"),
            )),
        }
    }

    /// KubeVirt owns its checkpoints: the tracker's latest is the chain's, and KubeVirt
    /// deletes none on request, so there is nothing to delete here.
    async fn delete_checkpoint(&self, _vm: &str, _name: &str) -> Result<(), LibvirtError> {
        Ok(())
    }

    /// Called when a restore in place puts the VM on other disks: KubeVirt's checkpoints
    /// describe the old ones, so every tracker snapback made for the VM goes (its other
    /// targets' too), and the next backup of each chain is a full. A tracker kept would let
    /// KubeVirt take an incremental against bitmaps of disks the VM no longer reads.
    async fn forget_checkpoint(&self, _vm: &str, _name: &str) -> Result<(), LibvirtError> {
        let trackers: Vec<VirtualMachineBackupTracker> =
            self.store.list(Some(self.ns()), &[]).await.map_err(api)?;
        for t in trackers {
            let ours = t
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(RUN_LABEL));
            if ours && t.spec.source.name == self.vm.name {
                let name = t.metadata.name.clone().unwrap_or_default();
                self.delete::<VirtualMachineBackupTracker>(&name).await?;
            }
        }
        Ok(())
    }

    async fn remove_stray_bitmap(
        &self,
        _vm: &str,
        _disk_path: &str,
        _bitmap: &str,
    ) -> Result<(), LibvirtError> {
        Ok(())
    }

    async fn begin_backup(
        &self,
        _vm: &str,
        req: &BackupRequest,
    ) -> Result<BackupBegun, LibvirtError> {
        let ns = self.ns().to_string();
        let name = self.objects();
        // A dead run's backup is this run's: taken as it is (the tracker may already have
        // moved on to its checkpoint), never begun twice.
        if let Some(b) = self.backup().await? {
            return Ok(BackupBegun {
                checkpoint: Some(checkpoint_of(&b, &name)?),
            });
        }
        let tracker = VirtualMachineBackupTracker {
            metadata: meta(&ns, &self.tracker_name(), &self.run),
            spec: VirtualMachineBackupTrackerSpec {
                source: crate::kubevirt::types::vm_source(&self.vm.name),
            },
            status: None,
        };
        let tracker = self.ensure(&tracker).await?;
        if tracker.spec.source.name != self.vm.name {
            return Err(err(
                VirtErrorKind::Other,
                format!(
                    "the tracker {} follows VM {}, not {}",
                    self.tracker_name(),
                    tracker.spec.source.name,
                    self.vm.name
                ),
            ));
        }
        let latest = tracker.latest_checkpoint_name().map(str::to_string);
        if let Some(since) = &req.incremental_since {
            if latest.as_deref() != Some(since.as_str()) {
                return Err(err(
                    VirtErrorKind::CheckpointInconsistent,
                    format!(
                        "the tracker's checkpoint is {} instead of {since}",
                        latest.as_deref().unwrap_or("none")
                    ),
                ));
            }
        }
        let (vm, vmi) = self.vm_and_instance().await?;
        // What KubeVirt would wait on forever is said now; a migration it waits out.
        let kubevirt: Option<KubeVirt> = self
            .store
            .list::<KubeVirt>(None, &[])
            .await
            .map_err(api)?
            .into_iter()
            .next();
        if let Err((reason, message)) =
            eligible::readiness(&vm, vmi.as_ref(), kubevirt.as_ref(), jiff::Timestamp::now())
        {
            if reason != eligible::MIGRATING {
                return Err(err(
                    VirtErrorKind::InvalidState,
                    format!("{reason}: {message}"),
                ));
            }
        }
        let view = view_of(&vm, vmi.as_ref());
        let mut pvc = PersistentVolumeClaim {
            metadata: meta(&ns, &name, &self.run),
            ..Default::default()
        };
        pvc.spec = Some(serde_json::from_value(serde_json::json!({
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Filesystem",
            "storageClassName": self.storage_class,
            "resources": {"requests": {"storage": naming::quantity_of(naming::pvc_bytes(&view.sizes))}},
        }))
        .map_err(|e| err(VirtErrorKind::Other, e.to_string()))?);
        // One a dead run made is taken as it is: nothing of it is read back.
        match self.store.create(&pvc).await {
            Ok(_) => {}
            Err(e) if e.is(ApiErrorKind::AlreadyExists) => {}
            Err(e) => return Err(api(e)),
        }
        let mut spec = VirtualMachineBackupSpec::push(tracker_source(&self.tracker_name()), &name);
        spec.skip_quiesce = !req.quiesce;
        spec.force_full_backup = req.incremental_since.is_none();
        let backup = VirtualMachineBackup {
            metadata: meta(&ns, &name, &self.run),
            spec,
            status: None,
        };
        let backup = self.ensure(&backup).await?;
        Ok(BackupBegun {
            checkpoint: Some(checkpoint_of(&backup, &name)?),
        })
    }

    async fn job(&self, _vm: &str) -> Result<JobState, LibvirtError> {
        let Some(b) = self.backup().await? else {
            return Ok(JobState::None);
        };
        Ok(match backup_outcome(&b) {
            BackupOutcome::Completed { .. } => JobState::Completed,
            BackupOutcome::Failed { reason, message } => {
                JobState::Failed(format!("KubeVirt: {reason}: {message}"))
            }
            // KubeVirt reports no byte counts for push mode.
            _ => JobState::Active { done: 0, total: 0 },
        })
    }

    async fn abort_job(&self, _vm: &str) -> Result<(), LibvirtError> {
        // Deleting a running VirtualMachineBackup aborts its libvirt job.
        self.delete::<VirtualMachineBackup>(&self.objects()).await
    }

    async fn freeze(&self, _vm: &str, _timeout: Duration) -> Result<u32, LibvirtError> {
        Err(err(
            VirtErrorKind::Other,
            "KubeVirt freezes the guest itself during a backup",
        ))
    }

    async fn thaw(&self, _vm: &str) -> Result<u32, LibvirtError> {
        Ok(0)
    }

    async fn suspend(&self, _vm: &str) -> Result<(), LibvirtError> {
        Err(err(
            VirtErrorKind::Other,
            "KubeVirt's backup API cannot pause a VM",
        ))
    }

    async fn resume(&self, _vm: &str) -> Result<(), LibvirtError> {
        Ok(())
    }

    async fn agent_command(
        &self,
        _vm: &str,
        _json: String,
        _timeout: Duration,
    ) -> Result<String, LibvirtError> {
        Err(err(
            VirtErrorKind::AgentUnavailable,
            "KubeVirt VMs run no hooks in the guest",
        ))
    }

    fn firmware_state(&self, _vm: &DomainView) -> Vec<(FirmwareKind, PathBuf)> {
        // The VM's persistent state volume (UEFI variables, TPM) is KubeVirt's: not yet.
        Vec::new()
    }

    fn firmware_home(&self, _kind: FirmwareKind, _name: &str, _uuid: &str) -> PathBuf {
        PathBuf::new()
    }

    fn firmware_owner(&self, _kind: FirmwareKind) -> Option<(u32, u32)> {
        None
    }

    async fn define(&self, definition: String) -> Result<String, LibvirtError> {
        self.define_vm(&definition).await
    }

    async fn undefine(&self, vm: &str) -> Result<(), LibvirtError> {
        self.undefine_vm(vm).await
    }

    async fn start(&self, vm: &str) -> Result<(), LibvirtError> {
        self.start_vm(vm).await
    }

    /// KubeVirt shuts the guest down gracefully when the VM is halted.
    async fn shutdown(&self, vm: &str) -> Result<(), LibvirtError> {
        self.halt(vm).await
    }

    /// KubeVirt has no "off at once" but a shorter grace period; the VM is halted and its
    /// instance waited out.
    async fn destroy(&self, vm: &str) -> Result<(), LibvirtError> {
        self.halt_and_wait(vm).await
    }

    fn placement_name(&self, new_vm: Option<&str>, disk: &str, _request: &str) -> Option<String> {
        Some(self.placement(new_vm, disk))
    }

    async fn place_disk(
        &self,
        object: &str,
        image: &std::path::Path,
        virtual_size: u64,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), LibvirtError> {
        self.upload_disk(object, image, virtual_size, progress)
            .await
    }

    async fn remove_placed(&self, object: &str) -> Result<(), LibvirtError> {
        self.remove_data_volume(object).await
    }

    fn rewrite_definition(
        &self,
        saved: &str,
        edit: &crate::libvirt::xml_edit::XmlEdit,
    ) -> Result<String, String> {
        self.rewrite_vm(saved, edit)
    }

    /// A KubeVirt VM's firmware state lives in its persistent state volume: not restored yet.
    fn saved_firmware(&self, _saved: &str) -> Result<crate::libvirt::domain_xml::Firmware, String> {
        Ok(Default::default())
    }

    fn kept_in_place(&self, original: &str) -> Option<Vec<String>> {
        Some(crate::kubevirt::restore_spec::claims_of(original))
    }

    fn quiesces_itself(&self) -> bool {
        true
    }

    async fn quiesce_outcome(&self, _vm: &str) -> Result<Option<(bool, String)>, LibvirtError> {
        let Some(b) = self.backup().await? else {
            return Ok(None);
        };
        let said = b
            .status
            .as_ref()
            .and_then(|s| find_condition(&s.conditions, backup_condition::QUIESCED))
            .and_then(|c| c.message.clone())
            .unwrap_or_default();
        Ok(quiesce_result(&b).map(|q| match q {
            Quiesce::Succeeded => (true, "KubeVirt froze the guest's filesystems".to_string()),
            Quiesce::Failed => (
                false,
                format!("crash-consistent backup: KubeVirt could not freeze the guest: {said}"),
            ),
            Quiesce::Skipped => (false, "not frozen (quiesce: None)".to_string()),
        }))
    }

    async fn job_outcome(&self, _vm: &str) -> Result<Option<JobOutcome>, LibvirtError> {
        let Some(b) = self.backup().await? else {
            return Ok(None);
        };
        let full = b
            .status
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            .map(|t| t != "Incremental");
        Ok(Some(JobOutcome {
            checkpoint: Some(checkpoint_of(&b, &self.objects())?),
            full,
        }))
    }

    fn disks_are_local(&self) -> bool {
        false
    }

    fn fetches_exports(&self) -> bool {
        true
    }

    async fn fetch_exports(
        &self,
        _vm: &str,
        exports: &[DiskExport],
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), LibvirtError> {
        if exports.iter().all(|e| e.file.is_file()) {
            return Ok(());
        }
        let b = self.backup().await?.ok_or_else(|| {
            err(
                VirtErrorKind::Other,
                "the VirtualMachineBackup is gone before its files were fetched",
            )
        })?;
        let created = b
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .ok_or_else(|| err(VirtErrorKind::Other, "the backup has no creationTimestamp"))?;
        let name = self.objects();
        // An export can go away under a long download (its TTL, its pod restarted): it is
        // made again and the download resumes from its part file, a few times.
        let mut last = String::new();
        for attempt in 0..3 {
            let served = self.serve_pvc().await?;
            crate::process::crash_point("kubevirt:export-served");
            let mut done_before = 0u64;
            let mut failed = None;
            for e in exports.iter().filter(|e| !e.file.is_file()) {
                let rel = naming::export_path(&self.vm.name, &name, created, &e.disk);
                let base = done_before;
                match crate::kubevirt::transfer::download(&served.link, &rel, &e.file, |d, _| {
                    progress(base + d, 0)
                })
                .await
                {
                    Ok(got) => done_before += got,
                    Err(x) if x.is_no_space() => {
                        return Err(err(VirtErrorKind::Other, format!("fetching {rel}: {x}")))
                    }
                    Err(x) => {
                        failed = Some(format!("fetching {rel}: {x}"));
                        break;
                    }
                }
            }
            match failed {
                None => return Ok(()),
                Some(m) => {
                    tracing::warn!(attempt, "{m}; exporting the backup volume again");
                    last = m;
                }
            }
        }
        Err(err(VirtErrorKind::Other, last))
    }

    async fn release(&self, _vm: &str) -> Result<(), LibvirtError> {
        let name = self.objects();
        self.delete::<VirtualMachineExport>(&name).await?;
        self.delete::<Secret>(&naming::token_secret(&self.run))
            .await?;
        self.delete::<VirtualMachineBackup>(&name).await?;
        // KubeVirt removes its finalizer once it let go of the backup (an unfinished one is
        // aborted first); the volume goes after that, so the backup never loses its target.
        let deadline = std::time::Instant::now() + self.export_wait;
        while self.backup().await?.is_some() {
            if std::time::Instant::now() >= deadline {
                return Err(err(
                    VirtErrorKind::Other,
                    format!("KubeVirt has not let go of the backup {}/{name}", self.ns()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.delete::<PersistentVolumeClaim>(&name).await
    }
}

/// The checkpoint KubeVirt creates for `b` (named `name`): the one it reports, else the one
/// its naming rule gives from the backup's creation time.
fn checkpoint_of(b: &VirtualMachineBackup, name: &str) -> Result<String, LibvirtError> {
    if let Some(cp) = b.status.as_ref().and_then(|s| s.checkpoint_name.clone()) {
        return Ok(cp);
    }
    let created = b
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .ok_or_else(|| err(VirtErrorKind::Other, "the backup has no creationTimestamp"))?;
    Ok(naming::checkpoint(name, created))
}

/// What a VirtualMachineExport of the backup PVC gives the download.
struct Served {
    link: crate::kubevirt::transfer::ExportTarget,
}

impl<S: Store> KubeVirtSource<S> {
    /// Exports the run's PVC with a fresh token: a Secret snapback creates (a dead run's is
    /// replaced, since snapback never reads Secrets back) and an export naming it; then waits
    /// until KubeVirt serves it (after the backup has let go of the PVC).
    async fn serve_pvc(&self) -> Result<Served, LibvirtError> {
        let ns = self.ns().to_string();
        let name = self.objects();
        let secret_name = naming::token_secret(&self.run);
        self.delete::<VirtualMachineExport>(&name).await?;
        self.delete::<Secret>(&secret_name).await?;
        let token = new_token();
        let secret = Secret {
            metadata: meta(&ns, &secret_name, &self.run),
            string_data: Some([("token".to_string(), token.clone())].into()),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        self.ensure_fresh(&secret).await?;
        let export = VirtualMachineExport {
            metadata: meta(&ns, &name, &self.run),
            spec: VirtualMachineExportSpec {
                // Long enough for a big volume over a slow link; a download outliving it
                // exports again and resumes.
                ttl_duration: Some("12h".into()),
                ..VirtualMachineExportSpec::of_pvc(&name, Some(&secret_name))
            },
            status: None,
        };
        self.ensure_fresh(&export).await?;
        let deadline = std::time::Instant::now() + self.export_wait;
        loop {
            let e: Option<VirtualMachineExport> =
                self.store.get(Some(&ns), &name).await.map_err(api)?;
            if let Some(link) = e
                .as_ref()
                .filter(|e| e.is_ready())
                .and_then(|e| e.internal_link())
                .and_then(|l| crate::kubevirt::transfer::ExportTarget::from_link(l, &name, &token))
            {
                return Ok(Served { link });
            }
            if std::time::Instant::now() >= deadline {
                return Err(err(
                    VirtErrorKind::Other,
                    format!("the export {ns}/{name} of the backup volume was not served in time"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Creates `obj`; one of that name still being deleted is waited out.
    async fn ensure_fresh<K: crate::cluster::Object>(&self, obj: &K) -> Result<(), LibvirtError> {
        for _ in 0..120 {
            match self.store.create(obj).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is(ApiErrorKind::AlreadyExists) => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Err(e) => return Err(api(e)),
            }
        }
        Err(err(
            VirtErrorKind::Other,
            format!(
                "{} is still being deleted",
                obj.meta().name.clone().unwrap_or_default()
            ),
        ))
    }
}

/// The export token: 256 random bits from the OS's generator (through two v4 UUIDs' 122).
fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}
