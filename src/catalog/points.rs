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
    // The file names are read before duplicity's collection: a set whose upload ends in
    // between is then in the collection but not yet in the names, never the other way round
    // (which would call a set just finished damaged).
    let names = duplicity::backend::list(target).await;
    // No chains at all may still mean damaged sets: a lone full that lost a volume.
    let messages = match duplicity::run(target, &Action::CollectionStatus, |_| {}).await {
        Ok(o) => o.messages,
        Err(e) if no_chains(&e) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    std::fs::create_dir_all(scratch).map_err(|e| {
        StepError::new(
            FailureReason::Internal,
            format!("cannot create {}: {e}", scratch.display()),
        )
    })?;
    let mut listing = Listing::default();
    for set in collection_sets(&messages) {
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
    // duplicity leaves out of its collection a set that lost a volume. Its manifest, written
    // last, says it was uploaded whole: such a set is damaged, not absent, and a listing that
    // dropped it would let a lost point go unnoticed (and "latest" silently mean an older one).
    match names {
        Ok(names) => {
            let sets = collection_sets(&messages);
            let counted: Vec<Timestamp> = sets.iter().map(|s| s.time).collect();
            listing
                .damaged
                .extend(uncounted_sets(&names, &counted, &sets));
            listing.damaged.sort_by_key(|d| d.set_time);
        }
        // Without any chain there is nothing to miss (a new domain's empty target may not
        // even exist yet).
        Err(_) if messages.is_empty() => {}
        Err(e) => tracing::warn!("cannot list the target's files to look for damaged sets: {e}"),
    }
    Ok(listing)
}

/// The sets whose manifest is among `names` but that duplicity's collection (`counted`)
/// leaves out: damaged sets. An incremental's chain is the one holding its parent.
fn uncounted_sets(
    names: &[String],
    counted: &[Timestamp],
    collection: &[duplicity::log::BackupSet],
) -> Vec<DamagedSet> {
    duplicity::names::complete_sets(names)
        .into_iter()
        .filter(|f| !counted.contains(&f.end))
        .map(|f| {
            let full = f.kind == duplicity::names::SetKind::Full;
            let chain_start = if full {
                f.end
            } else {
                collection
                    .iter()
                    .find(|s| s.time == f.start)
                    .map_or(f.start, |s| s.chain_start)
            };
            DamagedSet {
                set_time: f.end,
                full,
                chain_start,
                error: StepError::new(
                    FailureReason::VerificationFailed,
                    "a volume of the set is missing from the target (its manifest is there: it was uploaded whole)",
                ),
            }
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_set_with_its_manifest_that_duplicity_does_not_count_is_damaged() {
        let names: Vec<String> = [
            "duplicity-full.20261130T100000Z.manifest.gpg",
            "duplicity-full.20261130T100000Z.vol1.difftar.gpg",
            "duplicity-inc.20261130T100000Z.to.20261130T110000Z.manifest.gpg",
            "duplicity-full.20261130T120000Z.manifest.gpg",
            // A set still being uploaded (no manifest yet) is not damaged.
            "duplicity-inc.20261130T120000Z.to.20261130T130000Z.vol1.difftar.gpg",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let collection = vec![duplicity::log::BackupSet {
            time: t("2026-11-30T10:00:00Z"),
            full: true,
            chain_start: t("2026-11-30T10:00:00Z"),
        }];
        let damaged = uncounted_sets(&names, &[t("2026-11-30T10:00:00Z")], &collection);
        let got: Vec<(Timestamp, bool, Timestamp)> = damaged
            .iter()
            .map(|d| (d.set_time, d.full, d.chain_start))
            .collect();
        assert_eq!(
            got,
            [
                (t("2026-11-30T11:00:00Z"), false, t("2026-11-30T10:00:00Z")),
                (t("2026-11-30T12:00:00Z"), true, t("2026-11-30T12:00:00Z")),
            ]
        );
        assert!(damaged
            .iter()
            .all(|d| d.error.reason == FailureReason::VerificationFailed));
    }
}
