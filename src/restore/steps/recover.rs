//! Recovering: postRecovery hooks; in place, only now are the old disks renamed aside.

use std::path::Path;

use super::io_err;
use crate::api::{reason, ConditionType};
use crate::api::{FailureReason, RestorePhase, RestoreRequest};
use crate::error::StepError;
use crate::hooks::HookStage;
use crate::libvirt::domain_xml;
use crate::lifecycle::Journal;
use crate::restore::RestoreEngine;
use crate::source::Source;

impl<J: Journal<RestoreRequest>, S: Source> RestoreEngine<'_, J, S> {
    /// postRecovery hooks; then, when `rename_old`, the replaced disks renamed aside.
    pub(crate) async fn recover(&mut self, rename_old: bool) -> Result<(), StepError> {
        self.hooks(HookStage::PostRecovery, vec![]).await?;
        if rename_old {
            let original = std::fs::read_to_string(self.work_dir().join("original.xml"))
                .map_err(|e| io_err("original XML", e))?;
            if let Some(kept) = self.source.kept_in_place(&original) {
                self.lc.status_mut().replaced_disks = kept.clone();
                self.lc.condition(
                    ConditionType::OldDisksKept,
                    true,
                    reason::LEFT_AS_THEY_WERE,
                    format!(
                        "the VM was repointed from these claims, which are kept: {}",
                        kept.join(", ")
                    ),
                );
                let _ = std::fs::remove_dir_all(self.work_dir());
                return self.lc.finish(RestorePhase::Succeeded, None).await;
            }
            let facts = domain_xml::parse_domain(&original)
                .map_err(|e| StepError::new(FailureReason::Internal, e.to_string()))?;
            let mut kept = Vec::new();
            for d in facts
                .disks
                .iter()
                .filter(|d| d.kind == crate::libvirt::DiskKind::File)
            {
                let from = d.source().to_string();
                let to = format!("{from}.snapback-replaced-{}", self.lc.name());
                if Path::new(&from).exists() {
                    std::fs::rename(&from, &to)
                        .map_err(|e| io_err("cannot rename the replaced disk", e))?;
                    kept.push(to);
                }
            }
            self.lc.status_mut().replaced_disks = kept.clone();
            self.lc.condition(
                ConditionType::OldDisksKept,
                true,
                reason::RENAMED,
                format!(
                    "the replaced disks were renamed, not deleted: {}",
                    kept.join(", ")
                ),
            );
        }
        let _ = std::fs::remove_dir_all(self.work_dir());
        self.lc.finish(RestorePhase::Succeeded, None).await
    }
}
