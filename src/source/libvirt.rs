//! A local libvirt as a source: the adapter's calls, and a backup request turned into
//! libvirt's backup and checkpoint XML.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{BackupBegun, BackupRequest, SnapshotInfo, SnapshotRequest, Source};
use crate::api::FirmwareKind;
use crate::libvirt::domain_xml::{backup_xml, checkpoint_create_xml, BackupDisk};
use crate::libvirt::firmware;
use crate::libvirt::{DomainView, JobState, LibvirtError, LibvirtHost};

impl Source for LibvirtHost {
    fn location(&self) -> String {
        self.uri.clone()
    }
    async fn domain(&self, vm: &str) -> Result<DomainView, LibvirtError> {
        LibvirtHost::domain(self, vm).await
    }
    async fn domain_names(&self) -> Result<Vec<String>, LibvirtError> {
        LibvirtHost::domain_names(self).await
    }
    async fn checkpoints(&self, vm: &str) -> Result<Vec<String>, LibvirtError> {
        LibvirtHost::checkpoints(self, vm).await
    }
    async fn checkpoint_xml(&self, vm: &str, name: &str) -> Result<String, LibvirtError> {
        LibvirtHost::checkpoint_xml(self, vm, name).await
    }
    async fn validate_checkpoint(&self, vm: &str, name: &str) -> Result<(), LibvirtError> {
        LibvirtHost::validate_checkpoint(self, vm, name).await
    }
    async fn delete_checkpoint(&self, vm: &str, name: &str) -> Result<(), LibvirtError> {
        LibvirtHost::delete_checkpoint(self, vm, name).await
    }
    async fn forget_checkpoint(&self, vm: &str, name: &str) -> Result<(), LibvirtError> {
        LibvirtHost::forget_checkpoint(self, vm, name).await
    }
    async fn remove_stray_bitmap(
        &self,
        vm: &str,
        disk_path: &str,
        bitmap: &str,
    ) -> Result<(), LibvirtError> {
        LibvirtHost::remove_stray_bitmap(self, vm, disk_path, bitmap).await
    }

    /// libvirt creates the checkpoint under the name asked for, in the same call that begins
    /// the job, so the checkpoint's point in time is the backup's.
    async fn begin_backup(
        &self,
        vm: &str,
        req: &BackupRequest,
    ) -> Result<BackupBegun, LibvirtError> {
        let exports: Vec<BackupDisk> = req
            .exports
            .iter()
            .map(|e| BackupDisk {
                name: e.disk.clone(),
                target: e.file.display().to_string(),
                whole: e.whole,
                bitmap: e.tracked,
            })
            .collect();
        let backup = backup_xml(req.incremental_since.as_deref(), &exports);
        let checkpoint = req
            .checkpoint
            .as_ref()
            .map(|cp| checkpoint_create_xml(cp, &exports));
        self.begin_backup_xml(vm, backup, checkpoint).await?;
        Ok(BackupBegun {
            checkpoint: req.checkpoint.clone(),
        })
    }
    async fn job(&self, vm: &str) -> Result<JobState, LibvirtError> {
        LibvirtHost::job(self, vm).await
    }
    async fn abort_job(&self, vm: &str) -> Result<(), LibvirtError> {
        LibvirtHost::abort_job(self, vm).await
    }
    async fn freeze(&self, vm: &str, timeout: Duration) -> Result<u32, LibvirtError> {
        LibvirtHost::freeze(self, vm, timeout).await
    }
    async fn thaw(&self, vm: &str) -> Result<u32, LibvirtError> {
        LibvirtHost::thaw(self, vm).await
    }
    async fn suspend(&self, vm: &str) -> Result<(), LibvirtError> {
        LibvirtHost::suspend(self, vm).await
    }
    async fn resume(&self, vm: &str) -> Result<(), LibvirtError> {
        LibvirtHost::resume(self, vm).await
    }
    async fn agent_command(
        &self,
        vm: &str,
        json: String,
        timeout: Duration,
    ) -> Result<String, LibvirtError> {
        LibvirtHost::agent_command(self, vm, json, timeout).await
    }
    fn firmware_state(&self, vm: &DomainView) -> Vec<(FirmwareKind, PathBuf)> {
        let fw = &vm.facts.firmware;
        let nvram = firmware::nvram_path(fw, &vm.facts.name).map(|p| (FirmwareKind::Nvram, p));
        let tpm = fw
            .tpm_emulator
            .then(|| (FirmwareKind::TpmState, firmware::tpm_state(&vm.facts.uuid)));
        nvram.into_iter().chain(tpm).collect()
    }
    fn firmware_home(&self, kind: FirmwareKind, name: &str, uuid: &str) -> PathBuf {
        match kind {
            FirmwareKind::Nvram => firmware::default_nvram(name),
            FirmwareKind::TpmState => firmware::tpm_state(uuid),
        }
    }
    /// swtpm runs as its own account (`tss` by default); libvirt chowns the NVRAM itself when
    /// it manages ownership, and otherwise qemu runs as the directory's owner.
    fn firmware_owner(&self, kind: FirmwareKind) -> Option<(u32, u32)> {
        (kind == FirmwareKind::TpmState).then(firmware::swtpm_owner)
    }
    fn saves_memory(&self) -> bool {
        true
    }
    async fn save_memory(&self, vm: &str, file: &Path) -> Result<(), LibvirtError> {
        LibvirtHost::save_memory(self, vm, file).await
    }
    async fn restore_memory(&self, vm: &str, file: &Path) -> Result<(), LibvirtError> {
        LibvirtHost::restore_memory(self, vm, file).await
    }
    async fn define(&self, definition: String) -> Result<String, LibvirtError> {
        LibvirtHost::define(self, definition).await
    }
    async fn undefine(&self, vm: &str) -> Result<(), LibvirtError> {
        LibvirtHost::undefine(self, vm).await
    }
    async fn start(&self, vm: &str) -> Result<(), LibvirtError> {
        LibvirtHost::start(self, vm).await
    }
    async fn shutdown(&self, vm: &str) -> Result<(), LibvirtError> {
        LibvirtHost::shutdown(self, vm).await
    }
    async fn destroy(&self, vm: &str) -> Result<(), LibvirtError> {
        LibvirtHost::destroy(self, vm).await
    }
    async fn snapshots(&self, vm: &str) -> Result<Vec<SnapshotInfo>, LibvirtError> {
        LibvirtHost::snapshots(self, vm).await
    }
    async fn create_snapshot(&self, vm: &str, req: &SnapshotRequest) -> Result<(), LibvirtError> {
        LibvirtHost::create_snapshot(self, vm, req).await
    }
    async fn describe_snapshot(
        &self,
        vm: &str,
        name: &str,
        description: &str,
    ) -> Result<(), LibvirtError> {
        LibvirtHost::describe_snapshot(self, vm, name, description).await
    }
    async fn delete_snapshot(&self, vm: &str, name: &str) -> Result<(), LibvirtError> {
        LibvirtHost::delete_snapshot(self, vm, name).await
    }
    async fn revert_snapshot(&self, vm: &str, name: &str) -> Result<(), LibvirtError> {
        LibvirtHost::revert_snapshot(self, vm, name).await
    }
    async fn record_dropped_checkpoints(
        &self,
        vm: &str,
        names: &[String],
    ) -> Result<(), LibvirtError> {
        LibvirtHost::record_dropped_checkpoints(self, vm, names).await
    }
    async fn dropped_checkpoints(&self, vm: &str) -> Result<Vec<String>, LibvirtError> {
        LibvirtHost::dropped_checkpoints(self, vm).await
    }
}
