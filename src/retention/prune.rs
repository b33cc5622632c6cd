//! Pruning one domain's backups on its target: list the points from the target, plan
//! (pure), then delete whole chains through duplicity's backends.

use std::path::Path;

use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::plan::{plan, Plan, Point};
use super::rules::Rules;
use super::target_files;
use crate::duplicity::TargetConfig;
use crate::engine::StepError;
use crate::restore::points::list_points;
use crate::restore::select::RestorePoint;

/// What pruning a domain did (or would do, in a dry run).
#[derive(Debug)]
pub struct DomainPrune {
    pub points: Vec<RestorePoint>,
    pub plan: Plan,
    /// Files removed from the target.
    pub deleted_files: Vec<String>,
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
    let points = list_points(target, scratch).await?;
    let planned: Vec<Point> = points
        .iter()
        .map(|p| Point {
            id: p.manifest.run.clone(),
            time: p.time(),
            chain: p.manifest.chain.clone(),
            full: p.full,
            size: p.size(),
        })
        .collect();
    let plan = plan(&planned, rules, tz, Timestamp::now(), in_progress);
    let mut deleted_files = Vec::new();
    if !dry_run && !plan.delete_chains.is_empty() {
        let names = target_files::list(target).await?;
        for chain in &plan.delete_chains {
            let members: Vec<&RestorePoint> = points
                .iter()
                .filter(|p| &p.manifest.chain == chain)
                .collect();
            let (Some(start), Some(end)) = (
                members.iter().map(|p| p.chain_start).min(),
                members.iter().map(|p| p.set_time).max(),
            ) else {
                continue;
            };
            let files = target_files::chain_files(&names, start, end);
            // One chain at a time, newest files first: an interruption leaves a shorter valid chain.
            target_files::delete(target, &files).await?;
            deleted_files.extend(files);
        }
    }
    Ok(DomainPrune {
        points,
        plan,
        deleted_files,
    })
}
