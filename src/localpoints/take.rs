//! Taking a point: an internal snapshot with the VM's RAM, the guest's filesystems frozen
//! through its agent around it where one answers, the pause measured and recorded.

use std::path::Path;
use std::time::Instant;

use jiff::Timestamp;

use super::journal::{self, Entry, Op};
use super::point::{self, Point, Recorded};
use super::{lock, recover, thaw, FREEZE_TIMEOUT};
use crate::api::FailureReason;
use crate::error::StepError;
use crate::libvirt::DomainState;
use crate::process::crash_point;
use crate::source::{SnapshotRequest, Source};

/// How many names `point_name` tries before giving up (each refused one exists already).
const NAME_ATTEMPTS: u32 = 100;

#[derive(Clone, Debug)]
pub struct TakeOptions {
    /// Freeze the guest's filesystems through its agent (best effort: a guest without one
    /// gets a crash-consistent point, and says so on the point).
    pub quiesce: bool,
    /// The policy taking it, recorded on the point: only that policy's rules expire it.
    pub policy: Option<String>,
    /// The schedule's tick the point answers, recorded for its rules.
    pub scheduled: Option<Timestamp>,
}

/// Why a domain cannot have a point, if it cannot: every disk must be qcow2 (the snapshot is
/// internal, in the images). External points (memory in a file, overlays on the disks) are
/// not built: libvirt 9.0 cannot revert to them ("revert to external snapshot not supported
/// yet"), so they would be points that cannot be gone back to.
pub fn unsupported_disks(formats: &[(String, String)]) -> Option<String> {
    let other: Vec<String> = formats
        .iter()
        .filter(|(_, f)| f != "qcow2")
        .map(|(d, f)| format!("{d} ({f})"))
        .collect();
    (!other.is_empty()).then(|| {
        format!(
            "local points need every disk in qcow2 (internal snapshots); not qcow2: {}. External points are not built: libvirt 9.0 cannot revert them",
            other.join(", ")
        )
    })
}

pub async fn take<S: Source>(
    source: &S,
    state: &Path,
    vm: &str,
    opts: &TakeOptions,
) -> Result<Point, StepError> {
    let view = source.domain(vm).await?;
    let uuid = view.facts.uuid.clone();
    let _lock = lock(state, &uuid)?;
    recover(source, state, &uuid).await?;

    let formats: Vec<(String, String)> = view
        .facts
        .disks
        .iter()
        .map(|d| (d.name.clone(), d.format().to_string()))
        .collect();
    if let Some(m) = unsupported_disks(&formats) {
        return Err(StepError::new(FailureReason::InvalidSpec, m));
    }
    let running = match view.state {
        DomainState::Running => true,
        DomainState::ShutOff => false,
        s => {
            return Err(StepError::new(
                FailureReason::InvalidSpec,
                format!("{vm} is {s:?}: a point is taken of a running or shut-off domain"),
            ))
        }
    };

    let created = Timestamp::now();
    let existing: Vec<String> = source
        .snapshots(&uuid)
        .await?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let mut attempt = 0;
    loop {
        let name = point::point_name(created, attempt);
        attempt += 1;
        if existing.contains(&name) {
            continue;
        }
        if attempt > NAME_ATTEMPTS {
            return Err(StepError::new(
                FailureReason::Internal,
                "no free point name after 100 tries",
            ));
        }
        match take_as(
            source,
            state,
            &uuid,
            &name,
            Recorded {
                created,
                policy: opts.policy.clone(),
                scheduled: opts.scheduled,
                ..Default::default()
            },
            running,
            view.facts.has_agent_channel && opts.quiesce,
        )
        .await
        {
            Err(e) if e.message.contains("already exists") => continue,
            r => {
                return r.map(|rec| Point {
                    name,
                    domain: view.facts.name.clone(),
                    created,
                    memory: running,
                    internal: true,
                    quiesced: rec.quiesced,
                    paused_ms: rec.paused_ms,
                    policy: rec.policy,
                    scheduled: rec.scheduled,
                })
            }
        }
    }
}

async fn take_as<S: Source>(
    source: &S,
    state: &Path,
    uuid: &str,
    name: &str,
    base: Recorded,
    running: bool,
    quiesce: bool,
) -> Result<Recorded, StepError> {
    let freeze = running && quiesce;
    journal::write(
        state,
        uuid,
        &Entry {
            op: Op::Take,
            point: name.to_string(),
            may_be_frozen: freeze,
            dropped: vec![],
        },
    )?;
    let mut rec = base;
    if freeze {
        match source.freeze(uuid, FREEZE_TIMEOUT).await {
            Ok(_) => rec.quiesced = true,
            Err(e) => {
                tracing::warn!(error = %e, "not quiesced: the point is crash-consistent");
                thaw(source, uuid).await?;
            }
        }
    }
    crash_point("local-take-frozen");
    let req = SnapshotRequest {
        name: name.to_string(),
        description: point::description(&rec),
        memory: running,
    };
    // libvirt pauses the vCPUs for the whole internal snapshot with memory (QEMU's savevm),
    // so the call's duration is the guest's pause, to within a round trip to libvirtd.
    let t0 = Instant::now();
    let made = source.create_snapshot(uuid, &req).await;
    let paused = t0.elapsed();
    crash_point("local-take-created");
    if rec.quiesced {
        thaw(source, uuid).await?;
    }
    if let Err(e) = made {
        journal::clear(state, uuid)?;
        return Err(e.into());
    }
    if running {
        rec.paused_ms = Some(paused.as_millis() as u64);
        source
            .describe_snapshot(uuid, name, &point::description(&rec))
            .await?;
    }
    journal::clear(state, uuid)?;
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_with_a_raw_disk_cannot_have_a_point_and_is_told_which() {
        let f = |v: &[(&str, &str)]| {
            unsupported_disks(
                &v.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(f(&[("vda", "qcow2"), ("vdb", "qcow2")]), None);
        let m = f(&[("vda", "qcow2"), ("vdb", "raw")]).unwrap();
        assert!(m.contains("vdb (raw)") && !m.contains("vda"), "{m}");
    }
}
