//! Rolling back a failed restore: no half-written disk stays attached to a domain, and an
//! in-place restore puts the domain back on its old disks.

use crate::api::{FailureReason, RestoreRequest};
use crate::error::StepError;
use crate::libvirt::{DomainState, VirtErrorKind};
use crate::lifecycle::Journal;
use crate::restore::RestoreEngine;
use crate::source::Source;

impl<J: Journal<RestoreRequest>, S: Source> RestoreEngine<'_, J, S> {
    /// Undo a failed restore: no half-written disk stays attached to a domain, and an in-place
    /// restore puts the domain back on its old disks.
    pub(crate) async fn rollback(&mut self) -> Result<(), StepError> {
        let s = self.lc.status().clone();
        let mut problems = Vec::new();
        if self.lc.record.spec.in_place {
            // A source whose shutdown is a change of the definition (KubeVirt's run
            // strategy) gets its original definition back even before the swap.
            let redefine = s.swapped
                || (!self.source.disks_are_local()
                    && self.work_dir().join("original.xml").exists());
            if redefine {
                let id = self.lc.record.spec.domain.clone();
                let _ = self.source.destroy(&id).await;
                match std::fs::read_to_string(self.work_dir().join("original.xml")) {
                    Ok(xml) => {
                        if let Err(e) = self.source.define(xml).await {
                            problems.push(format!("redefine the original domain: {e}"));
                        } else {
                            self.lc.status_mut().swapped = false;
                        }
                    }
                    Err(e) => problems.push(format!("original XML: {e}")),
                }
            }
            // Its firmware state goes back before it starts again.
            problems.extend(self.rollback_firmware());
            // Restarted whenever the restore had found it running: also when the failure came
            // after the shutdown and before the redefinition.
            if s.was_running {
                if let Ok(v) = self.source.domain(&self.lc.record.spec.domain).await {
                    if v.state == DomainState::ShutOff {
                        if let Err(e) = self.source.start(&self.lc.record.spec.domain).await {
                            problems.push(format!("restart the original domain: {e}"));
                        }
                    }
                }
            }
        } else {
            if let Some(uuid) = &s.defined_uuid {
                let _ = self.source.destroy(uuid).await;
                if let Err(e) = self.source.undefine(uuid).await {
                    if e.kind != VirtErrorKind::DomainNotFound {
                        problems.push(format!("undefine the new domain: {e}"));
                    }
                }
            }
            problems.extend(self.rollback_firmware());
        }
        // Placed disks this restore made go, unless the VM still reads them (a swap that
        // could not be undone).
        if !(self.lc.record.spec.in_place && self.lc.status().swapped) {
            for object in s.disks.iter().filter_map(|d| d.placed_as.as_deref()) {
                if let Err(e) = self.source.remove_placed(object).await {
                    problems.push(format!("remove {object}: {e}"));
                }
            }
        }
        if self.lc.status().replaced_disks.is_empty() {
            // A named device is the user's: it is left as the failed restore left it.
            for d in s.disks.iter().filter(|d| !d.device) {
                let _ = std::fs::remove_file(&d.path);
                let _ = std::fs::remove_file(format!("{}.part", d.path));
            }
        }
        if s.work_dir.is_some() {
            let _ = std::fs::remove_dir_all(self.work_dir());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StepError::new(FailureReason::Internal, problems.join("; ")))
        }
    }
}
