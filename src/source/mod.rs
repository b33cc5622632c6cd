//! Where a VM and its disks come from: the seam between the engines and the hypervisor.
//!
//! The engines ask a `Source` to look a VM up, list and drop its checkpoints, freeze and
//! pause it, begin a backup job and follow it, and define, power and remove VMs on restore.
//! `LibvirtHost` is the source of a local libvirt (`libvirt.rs`); `FakeSource` (`fake.rs`)
//! keeps VMs in memory so cleanup, rollback and resume are tested without one. KubeVirt's
//! source talks to the Kubernetes API, so it lives with the cluster front-end
//! (`cluster::kubevirt::source`).
//!
//! The trait is shaped for a source that is not libvirt as well. KubeVirt, for one, takes a
//! backup through its own API (a VirtualMachineBackup writing one qcow2 per volume into a
//! volume it mounts), names the checkpoint itself, and freezes the guest on its own. So a
//! backup is asked for with a `BackupRequest` (incremental since which checkpoint, where each
//! disk's export goes), not in libvirt's XML, and `begin_backup` answers with the name the
//! checkpoint really got. The errors and the VM view are the libvirt adapter's types for now:
//! their kinds (not found, unavailable, checkpoint inconsistent, agent unavailable) are not
//! libvirt's alone.

pub mod fake;
mod libvirt;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use fake::FakeSource;
// The snapshot types are the libvirt adapter's, as the VM view is (see above).
pub use crate::libvirt::snapshots::{SnapshotInfo, SnapshotRequest};

use crate::api::FirmwareKind;
use crate::libvirt::domain_xml::Firmware;
use crate::libvirt::xml_edit::XmlEdit;
use crate::libvirt::{DomainView, JobState, LibvirtError};

/// A push-mode backup of some disks of a running VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupRequest {
    /// Only what changed since this checkpoint; everything when `None`.
    pub incremental_since: Option<String>,
    /// The checkpoint to create at the backup's point in time, named as the engine would like.
    pub checkpoint: Option<String>,
    /// One per disk, all at one instant in one job.
    pub exports: Vec<DiskExport>,
    /// For a source that quiesces the guest itself (`Source::quiesces_itself`): whether to.
    pub quiesce: bool,
}

/// One disk of a backup request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskExport {
    /// The disk's target name (`vda`).
    pub disk: String,
    /// The file its export is written to.
    pub file: PathBuf,
    /// Whether the disk keeps a changed-block bitmap: it gets one in the new checkpoint. An
    /// untracked disk (raw file, block device) is left out of it.
    pub tracked: bool,
    /// Exported whole even when the request is incremental: an untracked disk, or one whose
    /// bitmap is newer than the checkpoint the request starts from.
    pub whole: bool,
}

/// What a source that decides for itself made of a backup job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobOutcome {
    pub checkpoint: Option<String>,
    /// `Some(true)`: everything was copied; `Some(false)`: only what changed; `None`: not
    /// said yet.
    pub full: Option<bool>,
}

fn unsupported<T>(source: String, what: &str) -> Result<T, LibvirtError> {
    Err(LibvirtError::new(
        crate::libvirt::VirtErrorKind::Unsupported,
        format!("{what} is not supported by this source ({source})"),
    ))
}

/// What a begun backup job is known by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupBegun {
    /// The checkpoint the job created, under the name the source gave it.
    pub checkpoint: Option<String>,
}

/// The operations the engines need of a hypervisor. `vm` is a name or a UUID.
pub trait Source: Send + Sync {
    /// Where the VMs are, for messages (`qemu:///system`).
    fn location(&self) -> String;

    /// The VM as it is now: identity, run state, disks and their sizes, definition.
    fn domain(&self, vm: &str) -> impl Future<Output = Result<DomainView, LibvirtError>> + Send;
    fn domain_names(&self) -> impl Future<Output = Result<Vec<String>, LibvirtError>> + Send;

    fn checkpoints(
        &self,
        vm: &str,
    ) -> impl Future<Output = Result<Vec<String>, LibvirtError>> + Send;
    /// The checkpoint's definition, saved beside the backup.
    fn checkpoint_xml(
        &self,
        vm: &str,
        name: &str,
    ) -> impl Future<Output = Result<String, LibvirtError>> + Send;
    /// Fails `CheckpointInconsistent` when the checkpoint cannot serve an incremental.
    fn validate_checkpoint(
        &self,
        vm: &str,
        name: &str,
    ) -> impl Future<Output = Result<(), LibvirtError>> + Send;
    /// Deletes a checkpoint and what tracks its changes (its bitmap merges into the parent).
    fn delete_checkpoint(
        &self,
        vm: &str,
        name: &str,
    ) -> impl Future<Output = Result<(), LibvirtError>> + Send;
    /// Forgets a checkpoint's record only (its bitmaps live in disks that are being replaced).
    fn forget_checkpoint(
        &self,
        vm: &str,
        name: &str,
    ) -> impl Future<Output = Result<(), LibvirtError>> + Send;
    /// Removes a change-tracking bitmap no checkpoint owns (left by a killed job).
    fn remove_stray_bitmap(
        &self,
        vm: &str,
        disk_path: &str,
        bitmap: &str,
    ) -> impl Future<Output = Result<(), LibvirtError>> + Send;

    fn begin_backup(
        &self,
        vm: &str,
        req: &BackupRequest,
    ) -> impl Future<Output = Result<BackupBegun, LibvirtError>> + Send;
    fn job(&self, vm: &str) -> impl Future<Output = Result<JobState, LibvirtError>> + Send;
    fn abort_job(&self, vm: &str) -> impl Future<Output = Result<(), LibvirtError>> + Send;

    /// Freezes the guest's filesystems through its agent; answers how many.
    fn freeze(
        &self,
        vm: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<u32, LibvirtError>> + Send;
    fn thaw(&self, vm: &str) -> impl Future<Output = Result<u32, LibvirtError>> + Send;
    /// Pauses the vCPUs.
    fn suspend(&self, vm: &str) -> impl Future<Output = Result<(), LibvirtError>> + Send;
    fn resume(&self, vm: &str) -> impl Future<Output = Result<(), LibvirtError>> + Send;
    /// A guest agent command (JSON in, JSON out): guest-exec for hooks that run in the guest.
    fn agent_command(
        &self,
        vm: &str,
        json: String,
        timeout: Duration,
    ) -> impl Future<Output = Result<String, LibvirtError>> + Send;

    /// The files holding the VM's firmware state (UEFI variable store, TPM state) on this
    /// host, whether or not they exist yet.
    fn firmware_state(&self, vm: &DomainView) -> Vec<(FirmwareKind, PathBuf)>;
    /// Where a VM of this name and UUID keeps that state when its definition names no place.
    fn firmware_home(&self, kind: FirmwareKind, name: &str, uuid: &str) -> PathBuf;
    /// The uid and gid a new file of that state (and its own directory) must have for the
    /// hypervisor to use it; `None` when it takes its directory's owner.
    fn firmware_owner(&self, kind: FirmwareKind) -> Option<(u32, u32)>;

    /// Defines a VM from a saved definition; answers its UUID.
    fn define(
        &self,
        definition: String,
    ) -> impl Future<Output = Result<String, LibvirtError>> + Send;
    fn undefine(&self, vm: &str) -> impl Future<Output = Result<(), LibvirtError>> + Send;
    fn start(&self, vm: &str) -> impl Future<Output = Result<(), LibvirtError>> + Send;
    /// Asks the guest to shut down.
    fn shutdown(&self, vm: &str) -> impl Future<Output = Result<(), LibvirtError>> + Send;
    /// Powers the VM off at once.
    fn destroy(&self, vm: &str) -> impl Future<Output = Result<(), LibvirtError>> + Send;

    /// Whether the source freezes the guest itself while it begins a backup (KubeVirt does,
    /// through its guest agent): the engine then neither freezes nor pauses, passes its wish
    /// in `BackupRequest::quiesce` and reads the result from `quiesce_outcome`.
    fn quiesces_itself(&self) -> bool {
        false
    }

    /// After the job: whether the guest was frozen for it, and what the source said.
    fn quiesce_outcome(
        &self,
        _vm: &str,
    ) -> impl Future<Output = Result<Option<(bool, String)>, LibvirtError>> + Send {
        async { Ok(None) }
    }

    /// What a source that names its own checkpoints (KubeVirt) made of the job begun for the
    /// run: the checkpoint it creates, and whether it is whole (`true`) or incremental, once
    /// known. `None` where the engine's own request is the truth (libvirt).
    fn job_outcome(
        &self,
        _vm: &str,
    ) -> impl Future<Output = Result<Option<JobOutcome>, LibvirtError>> + Send {
        async { Ok(None) }
    }

    /// Whether the source can save a VM's RAM and device state into a file (`save_memory`,
    /// `restore_memory`): points with `memory: Include` need it.
    fn saves_memory(&self) -> bool {
        false
    }

    /// Saves the VM's RAM and device state into `file` and leaves the VM as it was (a paused
    /// VM stays paused), with no record of it kept beside the file. Called while the vCPUs
    /// are paused and after the backup job ended, so the state is of the job's instant.
    fn save_memory(
        &self,
        _vm: &str,
        _file: &Path,
    ) -> impl Future<Output = Result<(), LibvirtError>> + Send {
        async { Err(memory_unsupported()) }
    }

    /// Starts a defined, shut-off VM running from a file `save_memory` wrote (a copy the
    /// source may change), on the disks its own definition names.
    fn restore_memory(
        &self,
        _vm: &str,
        _file: &Path,
    ) -> impl Future<Output = Result<(), LibvirtError>> + Send {
        async { Err(memory_unsupported()) }
    }

    /// Whether the disks' images are files on this machine (their bitmaps can be read).
    fn disks_are_local(&self) -> bool {
        true
    }

    /// Whether a completed job's exports are elsewhere and fetched into staging afterwards
    /// (KubeVirt writes them into a volume in the cluster), so a job that completed while
    /// they are not all in staging yet is resumed by fetching, not failed.
    fn fetches_exports(&self) -> bool {
        false
    }

    /// Brings a completed job's exports to their files; a no-op where the job wrote them
    /// there. Resumable: what is already whole is kept.
    fn fetch_exports(
        &self,
        _vm: &str,
        _exports: &[DiskExport],
        _progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> impl Future<Output = Result<(), LibvirtError>> + Send {
        async { Ok(()) }
    }

    /// Removes what the source created for the run's job (KubeVirt: the backup, its volume,
    /// the export and its token), once the exports are safe or the run gave up.
    fn release(&self, _vm: &str) -> impl Future<Output = Result<(), LibvirtError>> + Send {
        async { Ok(()) }
    }

    // Restore. A source whose disks are not local files (KubeVirt) gets each rebuilt disk
    // placed into storage of its own before the VM is defined on it.

    /// The name of the object a restored disk is placed into (KubeVirt: a DataVolume),
    /// chosen when the restore is resolved and recorded before it is made, so a resumed
    /// restore adopts it and a failed one removes it. `None` where the rebuilt file is the
    /// disk (libvirt). `new_vm` is the new VM's name, `None` in place.
    fn placement_name(&self, _new_vm: Option<&str>, _disk: &str, _request: &str) -> Option<String> {
        None
    }

    /// Copies a rebuilt disk into the object `placement_name` named; one whose copy finished
    /// before is kept. `progress(done, total)` in bytes of the image.
    fn place_disk(
        &self,
        _object: &str,
        _image: &Path,
        _virtual_size: u64,
        _progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> impl Future<Output = Result<(), LibvirtError>> + Send {
        async { Ok(()) }
    }

    /// Removes a placed disk this restore made (on rollback); one it did not make stays.
    fn remove_placed(
        &self,
        _object: &str,
    ) -> impl Future<Output = Result<(), LibvirtError>> + Send {
        async { Ok(()) }
    }

    /// A saved definition as the restore defines it (new name and identity, or in place,
    /// on the restored disks).
    fn rewrite_definition(&self, saved: &str, edit: &XmlEdit) -> Result<String, String> {
        crate::libvirt::xml_edit::rewrite(saved, edit)
    }

    /// The firmware a saved definition boots with (its files are restored with it).
    fn saved_firmware(&self, saved: &str) -> Result<Firmware, String> {
        crate::libvirt::domain_xml::parse_domain(saved)
            .map(|f| f.firmware)
            .map_err(|e| e.to_string())
    }

    // Snapshots (local restore points). A source without them answers `Unsupported`; KubeVirt
    // would map them to VirtualMachineSnapshots.

    /// Every snapshot of the VM, whoever made it.
    fn snapshots(
        &self,
        _vm: &str,
    ) -> impl Future<Output = Result<Vec<SnapshotInfo>, LibvirtError>> + Send {
        async { unsupported(self.location(), "listing snapshots") }
    }
    /// Takes a snapshot under the name asked for; fails (nothing made) when the name is taken.
    fn create_snapshot(
        &self,
        _vm: &str,
        _req: &SnapshotRequest,
    ) -> impl Future<Output = Result<(), LibvirtError>> + Send {
        async { unsupported(self.location(), "taking a snapshot") }
    }
    /// Replaces a snapshot's description (what was measured while it was taken).
    fn describe_snapshot(
        &self,
        _vm: &str,
        _name: &str,
        _description: &str,
    ) -> impl Future<Output = Result<(), LibvirtError>> + Send {
        async { unsupported(self.location(), "describing a snapshot") }
    }
    /// Deletes a snapshot; one that is not there is no error.
    fn delete_snapshot(
        &self,
        _vm: &str,
        _name: &str,
    ) -> impl Future<Output = Result<(), LibvirtError>> + Send {
        async { unsupported(self.location(), "deleting a snapshot") }
    }
    /// Returns the VM to a snapshot: disks, and RAM (running) where the snapshot has it.
    fn revert_snapshot(
        &self,
        _vm: &str,
        _name: &str,
    ) -> impl Future<Output = Result<(), LibvirtError>> + Send {
        async { unsupported(self.location(), "reverting to a snapshot") }
    }
    /// Records, durably with the VM, checkpoints a revert drops: the next backup then knows
    /// its chain was cut by a revert (`FullReason::LocalRevert`). Added to what is recorded.
    fn record_dropped_checkpoints(
        &self,
        _vm: &str,
        _names: &[String],
    ) -> impl Future<Output = Result<(), LibvirtError>> + Send {
        async { unsupported(self.location(), "recording dropped checkpoints") }
    }
    /// The checkpoints reverts dropped; none where the source has no reverts.
    fn dropped_checkpoints(
        &self,
        _vm: &str,
    ) -> impl Future<Output = Result<Vec<String>, LibvirtError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// In place: what the disks the original definition named are kept as, where they stay
    /// as they are (KubeVirt's claims); `None` where the restore renames the old files
    /// aside itself (libvirt).
    fn kept_in_place(&self, _original: &str) -> Option<Vec<String>> {
        None
    }
}

fn memory_unsupported() -> LibvirtError {
    LibvirtError::new(
        crate::libvirt::VirtErrorKind::Other,
        "this source cannot save or load a VM's memory state",
    )
}
