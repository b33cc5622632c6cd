//! Verifying backups on the target (what Proxmox Backup Server calls a verify job): every export
//! of a point's chain is read back from the target and checked against the SHA-256 recorded
//! at backup time, the chain is put together as qcow2 files in a scratch dir, and `qemu-img
//! check` reads each of them. Nothing is defined and nothing on the target is changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::api::FailureReason;
use crate::catalog::manifest::{domain_xml_name, manifest_name, Manifest};
use crate::duplicity::TargetConfig;
use crate::error::StepError;
use crate::qemu_img;
use crate::state_dir;

use super::fetch::fetch_file;
use crate::catalog::points::list_sets;
use crate::catalog::select::{chain_for, damaged_instead, select, At, RestorePoint};

/// Which points to verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Which {
    All,
    One(At),
}

/// The verdict on one backup set.
#[derive(Clone, Debug)]
pub struct PointCheck {
    /// duplicity's time of the set.
    pub set_time: jiff::Timestamp,
    /// When the data was captured (the set time where the manifest is unreadable).
    pub time: jiff::Timestamp,
    pub full: bool,
    /// The run that took it; `None` where the set's manifest cannot be read.
    pub run: Option<String>,
    /// `None`: every export of its chain matches and reads as sound qcow2.
    pub broken: Option<StepError>,
}

impl PointCheck {
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

/// The newest damaged set within what was asked, when no readable point is.
fn damaged_only(damaged: &[jiff::Timestamp], at: &At) -> Option<jiff::Timestamp> {
    damaged
        .iter()
        .copied()
        .filter(|d| match at {
            At::Latest => true,
            At::Time(t) => d.as_second() <= t.as_second(),
            At::Run(_) => false,
        })
        .max()
}

/// Checks the chosen points of the domain whose backups `target` points at, oldest first.
/// `scratch` holds one chain's files at a time and is removed at the end.
pub async fn verify(
    target: &TargetConfig,
    which: &Which,
    scratch: &Path,
) -> Result<Vec<PointCheck>, StepError> {
    let result = verify_in(target, which, scratch).await;
    let _ = std::fs::remove_dir_all(scratch);
    result
}

async fn verify_in(
    target: &TargetConfig,
    which: &Which,
    scratch: &Path,
) -> Result<Vec<PointCheck>, StepError> {
    let listing = list_sets(target, &scratch.join("manifests")).await?;
    let points = listing.points;
    if points.is_empty() && listing.damaged.is_empty() {
        return Err(StepError::new(
            FailureReason::DomainNotFound,
            "the target holds no backups of this domain",
        ));
    }
    let mut out: Vec<PointCheck> = Vec::new();
    if *which == Which::All {
        out.extend(listing.damaged.iter().map(|d| PointCheck {
            set_time: d.set_time,
            time: d.set_time,
            full: d.full,
            run: None,
            broken: Some(d.verdict()),
        }));
    }
    let chosen: Vec<usize> = match which {
        Which::All => (0..points.len()).collect(),
        Which::One(at) => {
            let damaged: Vec<_> = listing.damaged.iter().map(|d| d.set_time).collect();
            // The point asked for is a damaged set, not the older one before it; with no
            // readable point at all, the newest damaged set within what was asked is it.
            let chosen = select(&points, at);
            let instead = match &chosen {
                Ok(i) => damaged_instead(&points[*i], &damaged, at),
                Err(_) => damaged_only(&damaged, at),
            };
            if let Some(d) = instead.and_then(|t| listing.damaged.iter().find(|d| d.set_time == t))
            {
                return Ok(vec![PointCheck {
                    set_time: d.set_time,
                    time: d.set_time,
                    full: d.full,
                    run: None,
                    broken: Some(d.verdict()),
                }]);
            }
            vec![chosen.map_err(|m| StepError::new(FailureReason::InvalidSpec, m))?]
        }
    };
    // One chain at a time: its members are fetched once for all of its points.
    let mut by_chain: BTreeMap<jiff::Timestamp, Vec<usize>> = BTreeMap::new();
    for i in chosen {
        by_chain.entry(points[i].chain_start).or_default().push(i);
    }
    for idxs in by_chain.values() {
        let dir = scratch.join("chain");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| {
            StepError::new(
                FailureReason::Internal,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        let mut members: BTreeMap<usize, Result<(), StepError>> = BTreeMap::new();
        for &i in idxs {
            let broken = match chain_for(&points, i, &listing.damaged) {
                Err(m) => Some(StepError::new(FailureReason::VerificationFailed, m)),
                Ok(chain) => {
                    let mut first_broken = None;
                    for &m in &chain {
                        if let std::collections::btree_map::Entry::Vacant(slot) = members.entry(m) {
                            slot.insert(check_member(target, &points, &chain, m, &dir).await);
                        }
                        if let Some(Err(e)) = members.get(&m) {
                            first_broken = Some(e.clone());
                            break;
                        }
                    }
                    first_broken
                }
            };
            let p = &points[i];
            out.push(PointCheck {
                set_time: p.set_time,
                time: p.time(),
                full: p.full,
                run: Some(p.manifest.run.clone()),
                broken,
            });
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    out.sort_by_key(|c| c.set_time);
    Ok(out)
}

/// Fetches member `m` of `chain` into `dir`, checks its exports' checksums, rebases each
/// incremental onto its parent's fetched export and checks each image. A target that cannot
/// be reached fails the whole verify; a member that is damaged only breaks its points.
async fn check_member(
    target: &TargetConfig,
    points: &[RestorePoint],
    chain: &[usize],
    m: usize,
    dir: &Path,
) -> Result<(), StepError> {
    let p = &points[m];
    let run = &p.manifest.run;
    let broken = |msg: String| StepError::new(FailureReason::VerificationFailed, msg);
    // The manifest as stored in the set (the listing read it already; read it again to make
    // sure the set's own copy is intact too).
    fetch_file(target, dir, p.set_time, &manifest_name(run))
        .await
        .map_err(|e| fetch_error(run, e))?;
    let text = std::fs::read(dir.join(manifest_name(run))).map_err(|e| broken(e.to_string()))?;
    let stored: Manifest = serde_json::from_slice(&text)
        .map_err(|e| broken(format!("{run}: the manifest in the set is unreadable: {e}")))?;
    if stored != p.manifest {
        return Err(broken(format!(
            "{run}: the manifest in the set differs from the one listed"
        )));
    }
    if p.full {
        fetch_file(target, dir, p.set_time, &domain_xml_name(run))
            .await
            .map_err(|e| fetch_error(run, e))?;
    }
    let pos = chain.iter().position(|&c| c == m).unwrap_or(0);
    for d in &p.manifest.disks {
        fetch_file(target, dir, p.set_time, &d.export_file)
            .await
            .map_err(|e| fetch_error(run, e))?;
        let path = dir.join(&d.export_file);
        let sum = sha256(&path).await?;
        if Some(&sum) != d.sha256.as_ref() {
            return Err(broken(format!(
                "{}: the copy on the target does not match the SHA-256 recorded at backup time",
                d.export_file
            )));
        }
        if pos > 0 && d.is_incremental(p.manifest.type_) {
            let parent = &points[chain[pos - 1]];
            let Some(pd) = parent.manifest.disks.iter().find(|x| x.name == d.name) else {
                return Err(broken(format!(
                    "{run}: disk {} has no parent in {}",
                    d.name, parent.manifest.run
                )));
            };
            rebase(&path, &dir.join(&pd.export_file)).await?;
        }
        qemu_img::check(&path.display().to_string())
            .await
            .map_err(|e| broken(format!("{}: {}", d.export_file, e.message)))?;
    }
    Ok(())
}

/// A target that cannot be reached is an answer about the target, not about this point.
fn fetch_error(run: &str, e: StepError) -> StepError {
    match e.reason {
        FailureReason::TargetUnreachable
        | FailureReason::EncryptionKeyError
        | FailureReason::StagingFull => e,
        _ => StepError::new(
            FailureReason::VerificationFailed,
            format!("{run}: cannot be read from the target: {}", e.message),
        ),
    }
}

async fn sha256(path: &Path) -> Result<String, StepError> {
    let p: PathBuf = path.to_path_buf();
    tokio::task::spawn_blocking(move || state_dir::sha256_file(&p))
        .await
        .map_err(|e| StepError::new(FailureReason::Internal, e.to_string()))?
        .map_err(|e| {
            StepError::new(
                FailureReason::Internal,
                format!("cannot read {}: {e}", path.display()),
            )
        })
}

async fn rebase(child: &Path, parent: &Path) -> Result<(), StepError> {
    let argv: Vec<String> = ["rebase", "-u", "-F", "qcow2", "-b"]
        .iter()
        .map(|s| s.to_string())
        .chain([parent.display().to_string(), child.display().to_string()])
        .collect();
    qemu_img::run_qemu_img(
        &argv,
        FailureReason::VerificationFailed,
        FailureReason::StagingFull,
        |_| {},
    )
    .await
}
