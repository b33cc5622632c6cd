//! Local restore points: snapshots of a running VM with its RAM, kept on the host beside the
//! disks (a lost disk loses them), taken, listed, expired by rules and reverted to through
//! the `Source` seam.
//!
//! - `rules.rs`: which points are due for deletion (pure);
//! - `point.rs`: the point, its name, and the mark that tells snapback's own snapshots from
//!   others' (pure);
//! - `journal.rs`: what an operation is in the middle of, so a killed one is finished;
//! - `take.rs`, `expire.rs`, `revert.rs`: the operations.
//!
//! Every operation on a domain holds the domain's local-points lock; a revert also holds the
//! domain's exclusive lock, so no backup runs while the disks go back.

pub mod expire;
pub mod journal;
pub mod point;
pub mod revert;
pub mod rules;
pub mod take;

#[cfg(test)]
mod fake_tests;

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use crate::api::FailureReason;
use crate::error::StepError;
use crate::libvirt::VirtErrorKind;
use crate::source::Source;
pub use point::Point;

/// How long a freeze of the guest's filesystems may take before the take goes on without.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(30);

/// The domain's points, oldest first (snapshots snapback did not make are left out).
pub async fn list<S: Source>(source: &S, vm: &str) -> Result<Vec<Point>, StepError> {
    let view = source.domain(vm).await?;
    let snaps = source.snapshots(&view.facts.uuid).await?;
    Ok(point::points_of(&view.facts.name, &snaps))
}

/// The lock of local-point operations on one domain (`None`: another holds it).
fn lock(state: &Path, uuid: &str) -> Result<File, StepError> {
    crate::state_dir::lock(state, "localpoints", uuid)
        .map_err(|e| {
            StepError::new(
                FailureReason::Internal,
                format!("cannot lock {}: {e}", state.display()),
            )
        })?
        .ok_or_else(|| {
            StepError::new(
                FailureReason::Busy,
                "another local-point operation on this domain is running",
            )
        })
}

/// Finishes what a killed operation on the domain left: thaws a guest it may have left
/// frozen, and deletes a point whose take did not finish (it may hold a frozen guest's RAM
/// and has no measured pause). A reverted domain stays reverted; rerunning the revert
/// brings it to the point again.
async fn recover<S: Source>(source: &S, state: &Path, uuid: &str) -> Result<(), StepError> {
    let Some(entry) = journal::read(state, uuid)? else {
        return Ok(());
    };
    tracing::warn!(op = ?entry.op, point = %entry.point, "finishing a local-point operation that was killed");
    if entry.may_be_frozen {
        thaw(source, uuid).await?;
    }
    if !entry.dropped.is_empty() {
        source
            .record_dropped_checkpoints(uuid, &entry.dropped)
            .await?;
    }
    if entry.op == journal::Op::Take {
        let ours =
            source.snapshots(uuid).await?.iter().any(|s| {
                s.name == entry.point && point::parse_description(&s.description).is_some()
            });
        if ours {
            source.delete_snapshot(uuid, &entry.point).await?;
        }
    }
    journal::clear(state, uuid)
}

/// Thaws the guest; a guest without an agent, or not frozen, is no error. An agent that
/// does not answer is: the guest may still be frozen, so the journal entry stays.
async fn thaw<S: Source>(source: &S, uuid: &str) -> Result<(), StepError> {
    match source.thaw(uuid).await {
        Ok(_) => Ok(()),
        Err(e)
            if e.kind == VirtErrorKind::AgentUnavailable
                && e.message.contains("not configured") =>
        {
            Ok(())
        }
        Err(e) if e.kind == VirtErrorKind::InvalidState => Ok(()),
        Err(e) => Err(StepError::new(
            FailureReason::QuiesceFailed,
            format!("cannot thaw the guest's filesystems: {}", e.message),
        )),
    }
}
