//! Reconciling checkpoints at the start of every run: what failed or replaced runs of this
//! domain left in libvirt or in the disk images goes, so that QEMU does not track writes for
//! bitmaps nobody reads and a name is never found taken.
//!
//! Leftovers arise when cleanup could not finish: the domain was shut off or destroyed during
//! the backup (libvirt cannot delete an inactive domain's checkpoint), qemu was killed, or the
//! process itself died. Measured on libvirt 9.0: a checkpoint created by a job that never
//! finished is kept, with a clean bitmap after `destroy`, no bitmap after `kill -9`.

use crate::api::BackupRun;
use crate::engine::{history, BackupEngine};
use crate::libvirt::{bitmaps, DomainView};
use crate::lifecycle::{Event, Journal};
use crate::source::Source;

impl<J: Journal<BackupRun>, S: Source> BackupEngine<'_, J, S> {
    /// Best effort: a leftover that cannot be removed is reported and the run goes on.
    pub(crate) async fn reconcile_checkpoints(&mut self, view: &DomainView) {
        let id = self.domain_id();
        let stale =
            history::stale_checkpoints(&self.ctx.history, &view.facts.uuid, &self.lc.name());
        if stale.is_empty() {
            return;
        }
        let mut removed = Vec::new();
        let mut problems = Vec::new();
        match self.source.checkpoints(&id).await {
            Ok(list) => {
                for cp in list.iter().filter(|c| stale.contains(*c)) {
                    match self.source.delete_checkpoint(&id, cp).await {
                        Ok(()) => removed.push(format!("checkpoint {cp}")),
                        Err(e) => problems.push(format!("checkpoint {cp}: {e}")),
                    }
                }
            }
            Err(e) => problems.push(format!("list checkpoints: {e}")),
        }
        // Bitmaps whose checkpoint record is gone: libvirt no longer sees them.
        let known = self.source.checkpoints(&id).await.unwrap_or_default();
        let local = self.source.disks_are_local();
        for disk in view
            .facts
            .disks
            .iter()
            .filter(|d| local && d.format() == "qcow2")
        {
            let found = match bitmaps::image_bitmaps(disk.source()) {
                Ok(b) => b,
                Err(e) => {
                    problems.push(format!("bitmaps of {}: {e}", disk.name));
                    continue;
                }
            };
            for b in found
                .iter()
                .filter(|b| stale.contains(*b) && !known.contains(*b))
            {
                match self.source.remove_stray_bitmap(&id, disk.source(), b).await {
                    Ok(()) => removed.push(format!("bitmap {b} of {}", disk.name)),
                    Err(e) => problems.push(format!("bitmap {b} of {}: {e}", disk.name)),
                }
            }
        }
        if !removed.is_empty() {
            self.lc.report(Event::Note(format!(
                "removed what earlier runs left: {}",
                removed.join(", ")
            )));
        }
        if !problems.is_empty() {
            self.lc.report(Event::Note(format!(
                "could not remove what earlier runs left: {}",
                problems.join("; ")
            )));
        }
    }
}
