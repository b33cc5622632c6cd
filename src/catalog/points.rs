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

/// A backup set that cannot be read back as a restore point: its own data is damaged (its
/// manifest cannot be read, a volume is missing), or it is whole but its chain needs an
/// earlier set that is damaged (`needs`). Not a restore point either way.
#[derive(Clone, Debug)]
pub struct DamagedSet {
    pub set_time: Timestamp,
    pub full: bool,
    pub chain_start: Timestamp,
    /// The damaged set of the same chain that this set needs; `None` when the set itself is
    /// damaged.
    pub needs: Option<Timestamp>,
    pub error: StepError,
}

impl DamagedSet {
    /// The set whose damage this one stands for: itself, or the damaged set its chain needs.
    pub fn root(&self) -> Timestamp {
        self.needs.unwrap_or(self.set_time)
    }

    /// The verdict on this set as `snapback verify` gives it.
    pub fn verdict(&self) -> StepError {
        match self.needs {
            None => StepError::new(
                FailureReason::VerificationFailed,
                format!("the set's manifest cannot be read: {}", self.error.message),
            ),
            Some(_) => self.error.clone(),
        }
    }

    /// The RUN column of `snapback list` (its run is in the manifest that was not read).
    pub fn label(&self) -> String {
        match self.needs {
            None => format!("(damaged: {})", self.error.reason),
            Some(t) => format!("(needs damaged set {})", list_time(t)),
        }
    }
}

/// A set time as `snapback list` prints it.
pub fn list_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Why a whole set of a chain that needs the damaged set `root` cannot be restored. (What is
/// wrong with `root` is said on its own line: here it would read as this set's damage.)
pub fn needs_damaged(root: Timestamp) -> String {
    format!(
        "its chain needs the damaged set at {}: restore an earlier point, or start a new chain (--type full)",
        list_time(root)
    )
}

const VOLUME_MISSING: &str =
    "a volume of the set is missing from the target (its manifest is there: it was uploaded whole)";

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
    let names = match names {
        Ok(n) => Some(n),
        // Without any chain there is nothing to miss (a new domain's empty target may not
        // even exist yet).
        Err(_) if messages.is_empty() => None,
        Err(e) => {
            tracing::warn!("cannot list the target's files to look for damaged sets: {e}");
            None
        }
    };
    let sets = collection_sets(&messages);
    let mut listing = Listing::default();
    for set in &sets {
        // A set that lost a volume is named so, not by what reading it then fails with (a
        // KeyError from deep in duplicity, which would read as an upload failure).
        let lost = names.as_ref().is_some_and(|n| {
            duplicity::names::complete_sets(n)
                .iter()
                .any(|f| f.end == set.time && duplicity::names::lost_volume(n, f))
        });
        let read = if lost {
            Err(StepError::new(
                FailureReason::VerificationFailed,
                VOLUME_MISSING,
            ))
        } else {
            read_set_manifest(target, scratch, set.time).await
        };
        match read {
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
                needs: None,
                error: e,
            }),
            Err(e) => return Err(e),
        }
    }
    // duplicity leaves out of its collection a full that lost its volumes, and with it every
    // set after it in its chain. Their manifests, written last, say they were uploaded whole:
    // such sets are damaged or unrestorable, not absent, and a listing that dropped them would
    // let a lost point go unnoticed (and "latest" silently mean an older one).
    if let Some(names) = &names {
        let counted: Vec<Timestamp> = sets.iter().map(|s| s.time).collect();
        let uncounted = uncounted_sets(names, &counted, &listing.damaged, &sets);
        listing.damaged.extend(uncounted);
        listing.damaged.sort_by_key(|d| d.set_time);
    }
    Ok(listing)
}

/// The sets whose manifest is among `names` but that duplicity's collection (`counted`)
/// leaves out. Each is either damaged itself (it lost a volume) or whole but unrestorable:
/// its chain needs an earlier damaged set (among `damaged`, the counted sets already found
/// damaged, or another uncounted one), or a set that is not on the target at all.
fn uncounted_sets(
    names: &[String],
    counted: &[Timestamp],
    damaged: &[DamagedSet],
    collection: &[duplicity::log::BackupSet],
) -> Vec<DamagedSet> {
    use duplicity::names::{chain_links, lost_volume, SetKind};
    let links = chain_links(names);
    // The chain of a set: duplicity's where it counts the set, else the names' own.
    let chain_of = |end: Timestamp, by_names: Timestamp| {
        collection
            .iter()
            .find(|s| s.time == end)
            .map_or(by_names, |s| s.chain_start)
    };
    let mut out: Vec<DamagedSet> = Vec::new();
    for l in links.iter().filter(|l| !counted.contains(&l.set.end)) {
        let chain_start = chain_of(l.set.end, l.chain_start);
        // The oldest damaged set before this one in its chain: the one that breaks it.
        let before = links
            .iter()
            .filter(|p| p.set.end < l.set.end && p.chain_start == l.chain_start)
            .find_map(|p| {
                damaged
                    .iter()
                    .chain(&out)
                    .find(|d| d.needs.is_none() && d.set_time == p.set.end)
            });
        let (needs, message) = if lost_volume(names, &l.set) {
            (None, VOLUME_MISSING.to_string())
        } else if let Some(root) = before {
            (Some(root.set_time), needs_damaged(root.set_time))
        } else if !l.linked {
            (
                None,
                format!(
                    "the set it was made from ({}) is not on the target",
                    list_time(l.set.start)
                ),
            )
        } else {
            (
                None,
                "duplicity leaves the set out of its collection, though its manifest and volumes are on the target".to_string(),
            )
        };
        out.push(DamagedSet {
            set_time: l.set.end,
            full: l.set.kind == SetKind::Full,
            chain_start,
            needs,
            error: StepError::new(FailureReason::VerificationFailed, message),
        });
    }
    out
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
        let damaged = uncounted_sets(&names, &[t("2026-11-30T10:00:00Z")], &[], &collection);
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

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_whole_sets_after_a_full_that_lost_its_volume_need_it_and_are_not_themselves_damaged() {
        // duplicity's collection leaves out a full without volumes and every set after it.
        let names = strings(&[
            "duplicity-full.20261130T100000Z.manifest",
            "duplicity-full-signatures.20261130T100000Z.sigtar",
            "duplicity-inc.20261130T100000Z.to.20261130T110000Z.manifest",
            "duplicity-inc.20261130T100000Z.to.20261130T110000Z.vol1.difftar",
            "duplicity-inc.20261130T110000Z.to.20261130T120000Z.manifest",
            "duplicity-inc.20261130T110000Z.to.20261130T120000Z.vol1.difftar",
        ]);
        let damaged = uncounted_sets(&names, &[], &[], &[]);
        let c = t("2026-11-30T10:00:00Z");
        let got: Vec<(Timestamp, Timestamp, Option<Timestamp>)> = damaged
            .iter()
            .map(|d| (d.set_time, d.chain_start, d.needs))
            .collect();
        assert_eq!(
            got,
            [
                (c, c, None),
                (t("2026-11-30T11:00:00Z"), c, Some(c)),
                (t("2026-11-30T12:00:00Z"), c, Some(c)),
            ]
        );
        assert!(damaged[0]
            .error
            .message
            .contains("a volume of the set is missing"));
        for d in &damaged[1..] {
            assert_eq!(d.error.message, needs_damaged(c));
            assert_eq!(d.label(), "(needs damaged set 2026-11-30T10:00:00Z)");
            assert_eq!(d.verdict().message, d.error.message);
        }
        assert_eq!(damaged[0].label(), "(damaged: VerificationFailed)");
        assert!(damaged[0]
            .verdict()
            .message
            .starts_with("the set's manifest cannot be read: a volume"));
    }

    #[test]
    fn an_uncounted_set_after_a_counted_damaged_one_needs_it_and_an_orphan_names_its_missing_parent(
    ) {
        let names = strings(&[
            "duplicity-full.20261130T100000Z.manifest",
            "duplicity-full.20261130T100000Z.vol1.difftar",
            "duplicity-inc.20261130T100000Z.to.20261130T110000Z.manifest",
            "duplicity-inc.20261130T110000Z.to.20261130T120000Z.manifest",
            "duplicity-inc.20261130T110000Z.to.20261130T120000Z.vol1.difftar",
            "duplicity-inc.20261130T130000Z.to.20261130T140000Z.manifest",
            "duplicity-inc.20261130T130000Z.to.20261130T140000Z.vol1.difftar",
        ]);
        let c = t("2026-11-30T10:00:00Z");
        let set = |time: &str| duplicity::log::BackupSet {
            time: t(time),
            full: time == "2026-11-30T10:00:00Z",
            chain_start: c,
        };
        let collection = vec![set("2026-11-30T10:00:00Z"), set("2026-11-30T11:00:00Z")];
        let counted_damage = DamagedSet {
            set_time: t("2026-11-30T11:00:00Z"),
            full: false,
            chain_start: c,
            needs: None,
            error: StepError::new(FailureReason::VerificationFailed, VOLUME_MISSING),
        };
        let damaged = uncounted_sets(
            &names,
            &[c, t("2026-11-30T11:00:00Z")],
            &[counted_damage],
            &collection,
        );
        assert_eq!(damaged.len(), 2);
        assert_eq!(damaged[0].set_time, t("2026-11-30T12:00:00Z"));
        assert_eq!(damaged[0].chain_start, c);
        assert_eq!(damaged[0].needs, Some(t("2026-11-30T11:00:00Z")));
        assert_eq!(damaged[1].set_time, t("2026-11-30T14:00:00Z"));
        assert_eq!(damaged[1].needs, None);
        assert!(
            damaged[1]
                .error
                .message
                .contains("(2026-11-30T13:00:00Z) is not on the target"),
            "{}",
            damaged[1].error.message
        );
    }
}
