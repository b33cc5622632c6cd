//! What a pending run counts for in admission (driver/admission.rs): the staging it is
//! expected to need, read from the domain's disks before it starts, or, resumed past
//! Snapshotting, what it holds.
//!
//! The estimate is the same figure Preparing checks against the staging filesystem for a
//! whole export: the allocated bytes of every disk's backing chain (a block device or a raw
//! disk twice its size online, see `engine::whole_export_need`). Whether the run will be an
//! incremental is only decided in Preparing (the chain on the target, the checkpoint's
//! validity), so every run is counted as a full: an upper bound, never too small. An
//! incremental admitted on it holds less, so the budget is kept with room to spare; the
//! cost is that fewer incrementals than could may run at once under a tight budget.

use std::path::Path;

use crate::api::{BackupMode, BackupPhase, BackupRun};
use crate::source::Source;

use super::admission::Candidate;

/// The candidate `run` is. `with_need`: read the domain's disks for the estimate (only
/// worth it with a staging budget); without, a new run counts as needing nothing.
pub async fn candidate<S: Source>(source: &S, run: &BackupRun, with_need: bool) -> Candidate {
    // A local point is a snapshot inside the disks: it stages nothing.
    if run.spec.is_local() {
        return Candidate::New { need: 0 };
    }
    let need = if with_need {
        expected_need(source, run).await
    } else {
        0
    };
    let phase = run.status.as_ref().map(|s| s.phase).unwrap_or_default();
    if matches!(
        phase,
        BackupPhase::Exporting | BackupPhase::Uploading | BackupPhase::Finalizing
    ) {
        let holds = run
            .status
            .as_ref()
            .and_then(|s| s.staging_dir.as_deref())
            .map(|d| tree_bytes(Path::new(d)))
            .unwrap_or(0);
        return Candidate::Resumed {
            holds: holds.max(need),
        };
    }
    Candidate::New { need }
}

/// The staging a full of the run's domain needs; 0 when the domain cannot be read now (the
/// run then fails in Preparing before it stages anything).
async fn expected_need<S: Source>(source: &S, run: &BackupRun) -> u64 {
    let Ok(view) = source.domain(&run.spec.domain).await else {
        return 0;
    };
    let online = crate::engine::plan::online(view.state).unwrap_or(false);
    let files = run.spec.mode == BackupMode::Files;
    let disks: u64 = view
        .facts
        .disks
        .iter()
        .zip(&view.sizes)
        .map(|(d, size)| crate::engine::whole_export_need(d, *size, online, files))
        .sum();
    // A memory run stages the RAM state beside the exports (at most the domain's RAM).
    let memory = match run.spec.memory {
        crate::api::MemoryState::Include if online => {
            crate::libvirt::memory_state::ram_bytes(&view.xml).unwrap_or(0)
        }
        _ => 0,
    };
    disks + memory
}

/// Allocated bytes of every file under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                tree_bytes(&p)
            } else {
                crate::state_dir::allocated_bytes(&p)
            }
        })
        .sum()
}
