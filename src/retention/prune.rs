//! Pruning one domain's backups on its target: list the points from the target, plan
//! (pure), then delete whole chains through duplicity's backends.

use std::path::Path;

use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::plan::{plan, Plan, Point};
use super::rules::Rules;
use super::target_files;
use crate::api::{reason, ConditionType};
use crate::api::{set_condition, BackupPhase, BackupPolicySpec, BackupRun, Condition};
use crate::catalog::layout;
use crate::catalog::points::{list_sets, list_time, Listing};
use crate::catalog::select::{chain_damage, RestorePoint};
use crate::duplicity::TargetConfig;
use crate::error::StepError;

/// What pruning a domain did (or would do, in a dry run).
#[derive(Debug)]
pub struct DomainPrune {
    pub points: Vec<RestorePoint>,
    pub plan: Plan,
    /// Files removed from the target.
    pub deleted_files: Vec<String>,
    /// The set times of every set deleted (a files run is known by its set's time only).
    pub deleted_sets: Vec<Timestamp>,
}

/// What retention deleted from a target, as the runs that recorded it know it: whole chains
/// by name (an image chain: its full's run) and every deleted set by its time.
#[derive(Clone, Debug, Default)]
pub struct Deleted {
    pub chains: Vec<String>,
    pub set_times: Vec<Timestamp>,
}

impl Deleted {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.set_times.is_empty()
    }
}

/// Deletes the planned chains' files, one chain at a time and newest files first (an
/// interruption leaves a shorter valid chain); damaged sets and the sets that need them are
/// members too and go with it. Answers the files and the set times deleted.
async fn delete_chains(
    target: &TargetConfig,
    plan: &Plan,
    members: &[(String, Timestamp, Timestamp)],
) -> Result<(Vec<String>, Vec<Timestamp>), StepError> {
    let (mut files_out, mut sets_out) = (Vec::new(), Vec::new());
    if plan.delete_chains.is_empty() {
        return Ok((files_out, sets_out));
    }
    let names = crate::duplicity::backend::list(target).await?;
    for chain in &plan.delete_chains {
        let of_chain: Vec<&(String, Timestamp, Timestamp)> =
            members.iter().filter(|m| &m.0 == chain).collect();
        let (Some(start), Some(end)) = (
            of_chain.iter().map(|m| m.1).min(),
            of_chain.iter().map(|m| m.2).max(),
        ) else {
            continue;
        };
        let files = target_files::chain_files(&names, start, end);
        crate::duplicity::backend::delete(target, &files).await?;
        files_out.extend(files);
        sets_out.extend(of_chain.iter().map(|m| m.2));
    }
    Ok((files_out, sets_out))
}

/// The points to plan, oldest first: every readable point and every damaged set (a damaged
/// set is named by its time: its run is in the manifest that cannot be read), with why each
/// one that cannot be restored cannot. Also each one's (chain, chain start, set time): the
/// set times, not the capture times, name a chain's files on the target.
fn planned_points(listing: &Listing) -> (Vec<Point>, Vec<(String, Timestamp, Timestamp)>) {
    // A damaged set belongs to the chain whose full it was made from; one whose chain has no
    // readable point at all (its full is damaged) forms a chain of its own, named by its
    // full's set time.
    let chain_name = |start: Timestamp| {
        listing
            .points
            .iter()
            .find(|p| p.chain_start == start)
            .map_or_else(
                || format!("set-{}", start.strftime("%Y%m%dT%H%M%SZ")),
                |p| p.manifest.chain.clone(),
            )
    };
    let mut out: Vec<(Point, Timestamp, Timestamp)> = listing
        .points
        .iter()
        .map(|p| {
            let broken = chain_damage(p, &listing.damaged)
                .map(|d| crate::catalog::points::needs_damaged(d.root()));
            let point = Point {
                id: p.manifest.run.clone(),
                time: p.time(),
                chain: p.manifest.chain.clone(),
                full: p.full,
                size: p.size(),
                broken,
            };
            (point, p.chain_start, p.set_time)
        })
        .collect();
    out.extend(listing.damaged.iter().map(|d| {
        let point = Point {
            id: format!("set-{}", d.set_time.strftime("%Y%m%dT%H%M%SZ")),
            time: d.set_time,
            chain: chain_name(d.chain_start),
            full: d.full,
            // Unknown: the manifest with the sizes is what cannot be read.
            size: 0,
            broken: Some(match d.needs {
                None => format!("damaged set at {}", list_time(d.set_time)),
                Some(_) => d.error.message.clone(),
            }),
        };
        (point, d.chain_start, d.set_time)
    }));
    out.sort_by_key(|(_, _, set_time)| *set_time);
    let members = out
        .iter()
        .map(|(p, start, set_time)| (p.chain.clone(), *start, *set_time))
        .collect();
    (out.into_iter().map(|(p, _, _)| p).collect(), members)
}

/// `target` is the domain's own target (`<target>/<domain>`).
pub async fn prune_domain(
    target: &TargetConfig,
    rules: &Rules,
    tz: &TimeZone,
    in_progress: &[String],
    scratch: &Path,
    dry_run: bool,
) -> Result<DomainPrune, StepError> {
    let listing = list_sets(target, scratch).await?;
    let (planned, members) = planned_points(&listing);
    // A run still being written names its chain by its full's run, which a chain known only
    // from damaged sets (its full's manifest unreadable) cannot be matched against: while
    // such a run exists, those chains are left alone.
    let known: Vec<&str> = listing
        .points
        .iter()
        .map(|p| p.manifest.chain.as_str())
        .collect();
    let mut in_progress = in_progress.to_vec();
    if in_progress.iter().any(|c| !known.contains(&c.as_str())) {
        in_progress.extend(
            planned
                .iter()
                .filter(|p| !known.contains(&p.chain.as_str()))
                .map(|p| p.chain.clone()),
        );
    }
    let plan = plan(&planned, rules, tz, Timestamp::now(), &in_progress);
    let (deleted_files, deleted_sets) = if dry_run {
        Default::default()
    } else {
        delete_chains(target, &plan, &members).await?
    };
    let points = listing.points;
    Ok(DomainPrune {
        points,
        plan,
        deleted_files,
        deleted_sets,
    })
}

/// Pruning one domain's files-mode chains (`<target>/<domain>.files`), planned from the
/// target's file names (see `files_chains`). The planner keeps the newest point and every
/// chain a kept point needs, so a chain being extended by a running files backup stays.
pub async fn prune_files_domain(
    target: &TargetConfig,
    rules: &Rules,
    tz: &TimeZone,
    dry_run: bool,
) -> Result<DomainPrune, StepError> {
    let names = crate::duplicity::backend::list(target).await?;
    let listed = super::files_chains::files_points(&names);
    let points: Vec<Point> = listed.iter().map(|(p, _, _)| p.clone()).collect();
    let members: Vec<(String, Timestamp, Timestamp)> = listed
        .iter()
        .map(|(p, start, set)| (p.chain.clone(), *start, *set))
        .collect();
    let plan = plan(&points, rules, tz, Timestamp::now(), &[]);
    let (deleted_files, deleted_sets) = if dry_run {
        Default::default()
    } else {
        delete_chains(target, &plan, &members).await?
    };
    Ok(DomainPrune {
        points: Vec::new(),
        plan,
        deleted_files,
        deleted_sets,
    })
}

/// Retention applied after a successful run, as it is recorded on that run.
#[derive(Debug)]
pub struct AfterRun {
    /// `Pruned`: True with the deleted chains, or False with the reason word.
    pub condition: Condition,
    pub deleted: Deleted,
}

/// Applies a policy's retention to one domain after a successful run. `None` when the policy
/// sets no retention (it keeps everything). A failure is returned as a False condition: it is
/// recorded and simply planned again after the next run, and never deletes part of a chain
/// that a kept point needs.
pub async fn prune_after_run(
    base: &TargetConfig,
    domain: &str,
    policy: &BackupPolicySpec,
    state_dir: &Path,
) -> Option<AfterRun> {
    if policy.retention.is_unset() {
        return None;
    }
    let failed = |reason: &str, message: String| AfterRun {
        condition: Condition::now(ConditionType::Pruned, false, reason, message, None),
        deleted: Deleted::default(),
    };
    let rules = match policy.retention.validate() {
        Ok(r) => r,
        Err(e) => return Some(failed("InvalidSpec", e.to_string())),
    };
    let tz = match policy.time_zone.as_deref().filter(|z| !z.is_empty()) {
        None => TimeZone::UTC,
        Some(z) => match TimeZone::get(z) {
            Ok(t) => t,
            Err(e) => return Some(failed("InvalidSpec", format!("timeZone '{z}': {e}"))),
        },
    };
    let pruned = if policy.mode == crate::api::BackupMode::Files {
        let ft = layout::files_target(base, domain);
        prune_files_domain(&ft, &rules, &tz, false).await
    } else {
        let dt = layout::domain_target(base, domain);
        let scratch = state_dir
            .join("prune-scratch")
            .join(layout::domain_dir(domain));
        let p = prune_domain(&dt, &rules, &tz, &[], &scratch, false).await;
        let _ = std::fs::remove_dir_all(&scratch);
        p
    };
    Some(match pruned {
        Ok(p) => AfterRun {
            condition: Condition::now(
                ConditionType::Pruned,
                true,
                reason::RETENTION_APPLIED,
                format!("deleted chains: {:?}", p.plan.delete_chains),
                None,
            ),
            deleted: Deleted {
                chains: p.plan.delete_chains,
                set_times: p.deleted_sets,
            },
        },
        Err(e) => failed(e.reason.as_str(), e.message),
    })
}

/// The run marked `Expired` when retention deleted its chain from the target; `None` when the
/// run is not a success whose chain or set went (or is already marked). An image run is
/// known by its chain; a files run by its set's time on the target.
pub fn expired(run: &BackupRun, deleted: &Deleted) -> Option<BackupRun> {
    let s = run.status.as_ref()?;
    let files = run.spec.mode == crate::api::BackupMode::Files;
    let gone = if files {
        s.target_time
            .is_some_and(|t| deleted.set_times.contains(&t))
    } else {
        s.chain.as_ref().is_some_and(|c| deleted.chains.contains(c))
    };
    let hit = s.phase == BackupPhase::Succeeded
        && gone
        && !s
            .conditions
            .iter()
            .any(|c| c.type_ == ConditionType::Expired.as_str() && c.status == "True");
    if !hit {
        return None;
    }
    let mut r = run.clone();
    let c = Condition::now(
        ConditionType::Expired,
        true,
        reason::PRUNED,
        "retention deleted this backup's chain from the target".into(),
        None,
    );
    set_condition(&mut r.status.as_mut()?.conditions, c);
    Some(r)
}
