//! LVM snapshots around a shut-off domain's export (see `engine/lvm`): taken just before a
//! disk on a logical volume is read, recorded in the run's status first, removed after its
//! export, and removed again by cleanup, by finalizing and by a resumed export, so none is
//! left whatever fails or dies.

use crate::api::{BackupRun, FailureReason};
use crate::engine::lvm::{self, plan, Lookup};
use crate::engine::BackupEngine;
use crate::error::StepError;
use crate::libvirt::{Disk, DiskKind, DomainState};
use crate::lifecycle::Journal;
use crate::source::Source;

impl<J: Journal<BackupRun>, S: Source> BackupEngine<'_, J, S> {
    /// The snapshot the export of `disk` reads instead of the volume, if the disk is a logical
    /// volume this host can snapshot. Otherwise the disk is read as it is, as before; a note
    /// says why when LVM was there but no snapshot could be taken.
    pub(crate) async fn lvm_snapshot(
        &mut self,
        disk: &Disk,
    ) -> Result<Option<plan::Snapshot>, StepError> {
        // A volume holding a qcow2 chain has backing images elsewhere: one snapshot would
        // not make the chain one instant.
        if disk.kind != DiskKind::Block || disk.chain.len() != 1 {
            return Ok(None);
        }
        let lv = match lvm::lookup(disk.source()).await {
            Lookup::Volume(v) => v,
            Lookup::NotLvm(_) => return Ok(None),
        };
        // Asked again now: the domain may have been started since the run found it shut off.
        let state = self.source.domain(&self.domain_id()).await?.state;
        let snap = match plan::decide(
            &lv,
            &self.lc.name(),
            &disk.name,
            state == DomainState::ShutOff,
        ) {
            Ok(s) => s,
            Err(why) => {
                self.note_unsnapshotted(&disk.name, &why);
                return Ok(None);
            }
        };
        // Recorded before it exists: a run killed right after lvcreate still removes it.
        let id = snap.id();
        if !self.lc.status().lvm_snapshots.contains(&id) {
            self.lc.status_mut().lvm_snapshots.push(id);
            self.lc.save().await?;
        }
        if let Err(e) = lvm::create(&snap).await {
            self.note_unsnapshotted(&disk.name, &e);
            return Ok(None);
        }
        Ok(Some(snap))
    }

    fn note_unsnapshotted(&self, disk: &str, why: &str) {
        self.lc.note(format!(
            "disk {disk}: exported from the logical volume itself, without a snapshot: {why}"
        ));
    }

    /// After a disk's export from `snap`: fails the export if the snapshot overflowed (what
    /// was read is then not the volume at one instant), and removes it either way.
    pub(crate) async fn after_lvm_export(
        &mut self,
        snap: &plan::Snapshot,
    ) -> Result<(), StepError> {
        let overflowed = match snap.kind {
            plan::Kind::Classic { .. } => lvm::overflowed(&snap.id()).await,
            plan::Kind::Thin => Ok(false),
        };
        self.remove_lvm_snapshots().await?;
        match overflowed {
            Ok(false) => Ok(()),
            Ok(true) => Err(StepError::new(
                FailureReason::BackupJobFailed,
                format!(
                    "the LVM snapshot {} ran out of space while it was read (was the domain \
                     started during the export?); the next run exports it again",
                    snap.id()
                ),
            )),
            Err(e) => Err(StepError::new(
                FailureReason::BackupJobFailed,
                format!(
                    "cannot read the state of the LVM snapshot {}: {e}",
                    snap.id()
                ),
            )),
        }
    }

    /// Removes every LVM snapshot the run recorded; those already gone are forgotten too.
    pub(crate) async fn remove_lvm_snapshots(&mut self) -> Result<(), StepError> {
        let ids = self.lc.status().lvm_snapshots.clone();
        if ids.is_empty() {
            return Ok(());
        }
        let mut problems = Vec::new();
        for id in ids {
            match lvm::remove(&id).await {
                Ok(()) => self.lc.status_mut().lvm_snapshots.retain(|x| x != &id),
                Err(e) => problems.push(format!("remove the LVM snapshot {id}: {e}")),
            }
        }
        self.lc.save().await?;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StepError::new(FailureReason::Internal, problems.join("; ")))
        }
    }
}
