//! Uploading in files mode: attach the exports, mount the guest filesystems read-only, put the
//! point's own files beside them, run duplicity over the tree with the run's include/exclude,
//! and take it all down again.

use std::path::PathBuf;

use crate::api::BackupRun;
use crate::api::{BackupType, FailureReason};
use crate::duplicity::argv::Select;
use crate::duplicity::Action;
use crate::engine::BackupEngine;
use crate::error::StepError;
use crate::files::attach::{attach, detach, Layout};
use crate::files::point::{place_point_files, POINT_DIR};
use crate::files::select::selection;
use crate::lifecycle::Journal;
use crate::source::Source;

/// Bytes in use on a mounted filesystem (the upper bound of what duplicity reads there).
fn used_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs writes into the struct we own; `c` is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return 0;
    }
    (s.f_blocks.saturating_sub(s.f_bfree) as u64).saturating_mul(s.f_frsize as u64)
}

impl<J: Journal<BackupRun>, S: Source> BackupEngine<'_, J, S> {
    pub(crate) async fn upload_files(&mut self) -> Result<(), StepError> {
        let staging = self.staging();
        let layout = Layout::for_staging(&staging);
        let exports: Vec<(String, PathBuf)> = self
            .lc
            .status()
            .disks
            .iter()
            .map(|d| (d.name.clone(), staging.join(&d.export_file)))
            .collect();
        let mounted = attach(&layout, &exports).await?;
        crate::process::crash_point("files:mounted");
        let result = self.upload_tree(&layout, &mounted).await;
        // Always taken down, whatever duplicity did; a crash here is undone by the next start.
        let detached = detach(&layout).await;
        result?;
        detached
    }

    async fn upload_tree(
        &mut self,
        layout: &Layout,
        mounted: &[crate::files::attach::Mounted],
    ) -> Result<(), StepError> {
        self.lc.status_mut().filesystems = mounted
            .iter()
            .map(|m| format!("{} ({})", m.name, m.fstype))
            .collect();
        self.lc.save().await?;
        let names: Vec<String> = mounted.iter().map(|m| m.name.clone()).collect();
        let tree = layout.tree.display().to_string();
        let spec = self.lc.record.spec.clone();
        let mut selection = selection(&tree, &names, &spec.include, &spec.exclude)
            .map_err(|e| StepError::new(FailureReason::InvalidSpec, e))?;
        let exports: Vec<String> = self
            .lc
            .status()
            .disks
            .iter()
            .map(|d| d.export_file.clone())
            .collect();
        place_point_files(&self.staging(), &layout.tree, &exports).map_err(|e| {
            StepError::new(
                FailureReason::Internal,
                format!("cannot place the point's own files in the tree: {e}"),
            )
        })?;
        // First, so that no include or exclude of guest paths can leave it out. Without any
        // rule everything is in (and duplicity refuses a lone, redundant include).
        if !selection.is_empty() {
            selection.insert(0, Select::Include(format!("{tree}/{POINT_DIR}")));
        }
        let total = names.iter().map(|n| used_bytes(&layout.tree.join(n))).sum();
        let action = Action::Files {
            incremental: self.lc.status().type_ == Some(BackupType::Incremental),
            source: tree,
            selection,
            current_time: None,
        };
        self.duplicity_with_progress(action, total).await
    }
}
