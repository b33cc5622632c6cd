//! Listing restore points from the target alone: duplicity's collection status gives the
//! backup sets, each set's file list names its run, and the run's manifest says the rest.

use std::path::Path;

use jiff::Timestamp;

use super::select::RestorePoint;
use crate::api::FailureReason;
use crate::catalog::manifest::Manifest;
use crate::duplicity::{self, log::collection_sets, Action, TargetConfig};
use crate::error::StepError;

/// duplicity's `--time` form for a set time.
pub fn dup_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

fn no_chains(e: &duplicity::DuplicityError) -> bool {
    let m = e.message.to_ascii_lowercase();
    m.contains("chains found") || m.contains("no backup chains")
}

/// A backup set whose snapback manifest cannot be read from the target (a damaged or missing
/// volume): not a restore point, and a gap in its chain.
#[derive(Clone, Debug)]
pub struct DamagedSet {
    pub set_time: Timestamp,
    pub full: bool,
    pub chain_start: Timestamp,
    pub error: StepError,
}

/// What the target holds for one domain, oldest first.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub points: Vec<RestorePoint>,
    pub damaged: Vec<DamagedSet>,
}

/// Every restore point of the domain whose backups `target` points at, oldest first.
/// Damaged sets are left out (see `list_sets`).
pub async fn list_points(
    target: &TargetConfig,
    scratch: &Path,
) -> Result<Vec<RestorePoint>, StepError> {
    Ok(list_sets(target, scratch).await?.points)
}

/// Whether a failure to read one set says something about that set rather than the target
/// as a whole (unreachable, wrong key): only then do the other sets stay listable.
fn set_damage(e: &StepError) -> bool {
    !matches!(
        e.reason,
        FailureReason::TargetUnreachable
            | FailureReason::EncryptionKeyError
            | FailureReason::Interrupted
            | FailureReason::Internal
    )
}

/// The restore points and the damaged sets of the domain whose backups `target` points at.
pub async fn list_sets(target: &TargetConfig, scratch: &Path) -> Result<Listing, StepError> {
    let status = match duplicity::run(target, &Action::CollectionStatus, |_| {}).await {
        Ok(o) => o,
        Err(e) if no_chains(&e) => return Ok(Listing::default()),
        Err(e) => return Err(e.into()),
    };
    std::fs::create_dir_all(scratch).map_err(|e| {
        StepError::new(
            FailureReason::Internal,
            format!("cannot create {}: {e}", scratch.display()),
        )
    })?;
    let mut listing = Listing::default();
    for set in collection_sets(&status.messages) {
        match read_set_manifest(target, scratch, set.time).await {
            Ok(Some(manifest)) => listing.points.push(RestorePoint {
                set_time: set.time,
                full: set.full,
                chain_start: set.chain_start,
                manifest,
            }),
            Ok(None) => {} // not a snapback backup set
            Err(e) if set_damage(&e) => listing.damaged.push(DamagedSet {
                set_time: set.time,
                full: set.full,
                chain_start: set.chain_start,
                error: e,
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(listing)
}

/// The snapback manifest stored in the set of `time`; `None` when the set has none.
async fn read_set_manifest(
    target: &TargetConfig,
    scratch: &Path,
    time: Timestamp,
) -> Result<Option<Manifest>, StepError> {
    let time = dup_time(time);
    let files = duplicity::run(
        target,
        &Action::ListCurrentFiles {
            time: Some(time.clone()),
        },
        |_| {},
    )
    .await?;
    let Some(manifest) = files
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .find(|f| f.ends_with(".manifest.json"))
        .map(str::to_string)
    else {
        return Ok(None);
    };
    let dest = scratch.join(&manifest);
    let _ = std::fs::remove_file(&dest);
    let action = Action::Restore {
        dest: dest.display().to_string(),
        time: Some(time),
        file: Some(manifest.clone()),
    };
    duplicity::run(target, &action, |_| {}).await?;
    let text = std::fs::read(&dest).map_err(|e| {
        StepError::new(
            FailureReason::Internal,
            format!("cannot read {}: {e}", dest.display()),
        )
    })?;
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        StepError::new(
            FailureReason::VerificationFailed,
            format!("manifest {manifest}: {e}"),
        )
    })
}
