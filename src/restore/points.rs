//! Listing restore points from the target alone: duplicity's collection status gives the
//! backup sets, each set's file list names its run, and the run's manifest says the rest.

use std::path::Path;

use jiff::Timestamp;

use super::select::RestorePoint;
use crate::api::FailureReason;
use crate::duplicity::{self, log::collection_sets, Action, TargetConfig};
use crate::engine::manifest::Manifest;
use crate::engine::StepError;

/// duplicity's `--time` form for a set time.
pub fn dup_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

fn no_chains(e: &duplicity::DuplicityError) -> bool {
    let m = e.message.to_ascii_lowercase();
    m.contains("chains found") || m.contains("no backup chains")
}

/// Every restore point of the domain whose backups `target` points at, oldest first.
pub async fn list_points(
    target: &TargetConfig,
    scratch: &Path,
) -> Result<Vec<RestorePoint>, StepError> {
    let status = match duplicity::run(target, &Action::CollectionStatus, |_| {}).await {
        Ok(o) => o,
        Err(e) if no_chains(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    std::fs::create_dir_all(scratch).map_err(|e| {
        StepError::new(
            FailureReason::Internal,
            format!("cannot create {}: {e}", scratch.display()),
        )
    })?;
    let mut points = Vec::new();
    for set in collection_sets(&status.messages) {
        let time = dup_time(set.time);
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
            continue; // not a snapback backup set
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
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
            StepError::new(
                FailureReason::VerificationFailed,
                format!("manifest {manifest}: {e}"),
            )
        })?;
        points.push(RestorePoint {
            set_time: set.time,
            full: set.full,
            chain_start: set.chain_start,
            manifest,
        });
    }
    Ok(points)
}
