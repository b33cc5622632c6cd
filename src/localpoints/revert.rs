//! Reverting a domain to a point, safely with checkpoints present.
//!
//! QEMU 7.2 cannot load an internal snapshot while a disk has a dirty bitmap: it exits
//! ("Device has active dirty bitmaps"), the domain is left shut off and every bitmap turns
//! inconsistent. snapback's own incrementals keep bitmaps (libvirt checkpoints). So the
//! revert first records the checkpoints it is about to drop in the domain's definition
//! (durable with the domain, read by the next backup: a full with reason `LocalRevert`),
//! then deletes them (libvirt removes their bitmaps), then reverts. The chain would be cut
//! anyway: after a revert the disks are no longer what the last checkpoint tracked.
//!
//! The other design the issue allows (rebuilding the disk out of place from the snapshot and
//! keeping the checkpoints) keeps nothing worth having: the bitmaps describe the disk as it
//! was before the revert, so the next backup could not be incremental from them either, and
//! it costs a full copy of every disk and a domain stopped for the copy.

use std::path::Path;
use std::time::{Duration, Instant};

use super::journal::{self, Entry, Op};
use super::{list, lock, recover, thaw, Point};
use crate::api::FailureReason;
use crate::error::StepError;
use crate::libvirt::DomainState;
use crate::process::crash_point;
use crate::source::Source;

/// What a revert did and how long it took.
#[derive(Clone, Debug)]
pub struct Reverted {
    pub point: Point,
    /// The checkpoints dropped first (the next backup is a full).
    pub dropped_checkpoints: Vec<String>,
    /// The revert call itself: the guest does not run during it.
    pub revert_time: Duration,
    /// The whole operation, checkpoints dropped and guest thawed included.
    pub total_time: Duration,
}

/// How long the guest agent may take to be connected again after a revert.
const AGENT_BACK: Duration = Duration::from_secs(60);

/// Thaws the reverted guest. libvirt drops its connection to the guest agent across the
/// revert and connects again when the agent's port opens, so "not connected" is waited out
/// (polled to a deadline: the agent's return is an event of the guest, not of snapback).
async fn thaw_after_revert<S: Source>(source: &S, uuid: &str) -> Result<(), StepError> {
    let deadline = Instant::now() + AGENT_BACK;
    loop {
        match thaw(source, uuid).await {
            Err(e) if e.message.contains("not connected") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            r => return r,
        }
    }
}

pub async fn revert<S: Source>(
    source: &S,
    state: &Path,
    vm: &str,
    to: &str,
) -> Result<Reverted, StepError> {
    let started = Instant::now();
    let view = source.domain(vm).await?;
    let uuid = view.facts.uuid.clone();
    let _lock = lock(state, &uuid)?;
    // No backup of the domain runs while its disks go back (backups hold this shared).
    let _domain = crate::state_dir::domain_lock(state, &uuid, true)
        .map_err(|e| StepError::new(FailureReason::Internal, e.to_string()))?
        .ok_or_else(|| {
            StepError::new(
                FailureReason::Busy,
                "a backup or restore of this domain is running",
            )
        })?;
    recover(source, state, &uuid).await?;
    let points = list(source, &uuid).await?;
    let Some(point) = points.into_iter().find(|p| p.name == to) else {
        let others = source.snapshots(&uuid).await?.iter().any(|s| s.name == to);
        let why = if others {
            "snapback did not make it, and never reverts to a snapshot it did not make"
        } else {
            "no such point (see `snapback local list`)"
        };
        return Err(StepError::new(
            FailureReason::InvalidSpec,
            format!("cannot revert {vm} to '{to}': {why}"),
        ));
    };
    let was_running = view.state == DomainState::Running;

    let checkpoints = source.checkpoints(&uuid).await?;
    // Everything the record must hold after the revert: what earlier reverts dropped too,
    // as the revert brings back the definition of the point's time, record and all.
    let mut record = source.dropped_checkpoints(&uuid).await?;
    for cp in &checkpoints {
        if !record.contains(cp) {
            record.push(cp.clone());
        }
    }
    journal::write(
        state,
        &uuid,
        &Entry {
            op: Op::Revert,
            point: point.name.clone(),
            may_be_frozen: point.quiesced,
            dropped: record.clone(),
        },
    )?;
    if !checkpoints.is_empty() {
        // Recorded before dropping: a revert killed in between still explains the full.
        source
            .record_dropped_checkpoints(&uuid, &checkpoints)
            .await?;
        crash_point("local-revert-recorded");
        for cp in checkpoints.iter().rev() {
            source.delete_checkpoint(&uuid, cp).await?;
        }
    }
    crash_point("local-revert-checkpoints-dropped");

    let t0 = Instant::now();
    let res = source.revert_snapshot(&uuid, &point.name).await;
    let revert_time = t0.elapsed();
    if let Err(e) = res {
        // Leave the VM as it was: running on its own disks (a failed revert does not touch
        // them; a QEMU that exited is started again).
        if was_running {
            if let Ok(v) = source.domain(&uuid).await {
                if v.state == DomainState::ShutOff {
                    if let Err(se) = source.start(&uuid).await {
                        tracing::error!(error = %se, "cannot start the domain again after a failed revert");
                    }
                }
            }
        }
        journal::clear(state, &uuid)?;
        return Err(StepError::new(
            FailureReason::LibvirtError,
            format!("revert of {vm} to {} failed: {}", point.name, e.message),
        ));
    }
    crash_point("local-revert-loaded");
    // The revert brought back the definition the domain had at the point, without the
    // record: it is made again.
    if !record.is_empty() {
        source.record_dropped_checkpoints(&uuid, &record).await?;
    }
    crash_point("local-revert-reverted");
    // A point taken with the filesystems frozen comes back frozen: its RAM says so.
    if point.quiesced {
        thaw_after_revert(source, &uuid).await?;
    }
    journal::clear(state, &uuid)?;
    Ok(Reverted {
        point,
        dropped_checkpoints: checkpoints,
        revert_time,
        total_time: started.elapsed(),
    })
}
