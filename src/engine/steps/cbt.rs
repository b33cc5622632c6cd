//! `changedBlockTracking: Enable`: before the backup, the domain's raw disks get their
//! overlays (`crate::cbt`). The outcome is a condition on the run, never its failure: the
//! backup is as good without them (those disks are whole this time).

use std::path::Path;

use crate::api::{reason, BackupRun, ConditionType, DEFAULT_CBT_DIR};
use crate::cbt::plan::CbtState;
use crate::cbt::Cbt;
use crate::engine::BackupEngine;
use crate::lifecycle::Journal;
use crate::source::Source;

impl<J: Journal<BackupRun>, S: Source> BackupEngine<'_, J, S> {
    pub(crate) async fn enable_cbt(&mut self, domain: &str) {
        let spec = &self.lc.record.spec;
        let dir = spec
            .changed_block_tracking_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_CBT_DIR.to_string());
        let cbt = Cbt {
            source: self.source,
            state_dir: &self.ctx.state_dir,
        };
        let (ok, why, message) = match cbt.enable(domain, Path::new(&dir)).await {
            Ok(disks) => {
                let named = |state: CbtState| {
                    disks
                        .iter()
                        .filter(|d| d.state == state)
                        .map(|d| d.disk.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let (pending, enabled) =
                    (named(CbtState::PendingRestart), named(CbtState::Enabled));
                if !pending.is_empty() {
                    (
                        false,
                        reason::PENDING_RESTART,
                        format!("{pending}: overlays defined in {dir}; they take effect at the domain's next start, and until then these disks are whole in every run"),
                    )
                } else if !enabled.is_empty() {
                    (
                        true,
                        reason::ENABLED,
                        format!("{enabled}: changed-block tracking through overlays in {dir}"),
                    )
                } else {
                    return; // qcow2 disks only: libvirt tracks them itself
                }
            }
            Err(e) => (
                false,
                reason::ENABLE_FAILED,
                format!("{}: {}", e.reason, e.message),
            ),
        };
        self.lc
            .condition(ConditionType::ChangedBlockTracking, ok, why, message);
    }
}
