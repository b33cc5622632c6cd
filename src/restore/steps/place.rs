//! Placing: each rebuilt disk copied where the VM will read it, for a source whose disks are
//! not files on this machine (KubeVirt: uploaded into a DataVolume of the name recorded when
//! the restore was resolved). A disk placed before a crash is not placed again.

use std::path::Path;

use crate::api::RestoreRequest;
use crate::error::StepError;
use crate::lifecycle::{Event, Journal};
use crate::restore::RestoreEngine;
use crate::source::Source;

impl<J: Journal<RestoreRequest>, S: Source> RestoreEngine<'_, J, S> {
    /// Places the disks `todo` (indexes into `disks`); the phase stays Defining, whose next
    /// step defines (or swaps) the VM onto them.
    pub(crate) async fn place(&mut self, todo: Vec<usize>) -> Result<(), StepError> {
        let disks = self.lc.status().disks.clone();
        let total: u64 = todo.iter().map(|&i| disks[i].virtual_size).sum();
        let mut base = 0u64;
        for i in todo {
            let d = &disks[i];
            let Some(object) = d.placed_as.clone() else {
                continue;
            };
            self.lc.report(Event::Note(format!(
                "placing disk {} into {object}",
                d.name
            )));
            let report = &self.lc.report;
            let progress = |done: u64, _: u64| {
                if done > 0 {
                    crate::process::crash_point("restore:defining:placing");
                }
                report(Event::Progress {
                    stage: "Placing",
                    done: base + done.min(d.virtual_size),
                    total,
                })
            };
            self.source
                .place_disk(&object, Path::new(&d.path), d.virtual_size, &progress)
                .await?;
            base += d.virtual_size;
            self.lc.status_mut().disks[i].placed = true;
            self.lc.save().await?;
        }
        Ok(())
    }
}
