//! Expiry: deletes the points the rules say are due, oldest first. Each deletion is one
//! libvirt call, so a run killed between two leaves only whole points, and the next run
//! deletes the rest.

use std::path::Path;

use jiff::Timestamp;

use super::rules::{self, Aged, Rule, Why};
use super::{list, lock, recover, Point};
use crate::error::StepError;
use crate::process::crash_point;
use crate::source::Source;

/// What expiry did.
#[derive(Clone, Debug, Default)]
pub struct Expired {
    pub deleted: Vec<(Point, Why)>,
    pub kept: Vec<Point>,
}

/// Deletes the domain's points due at `now` (a parameter: the caller's clock, or a test's),
/// never one in `in_use` (mounted, being read: the browse side knows which). Every point of
/// the domain is considered (`snapback local expire`); a policy expires only its own, with
/// `expire_policy`.
pub async fn expire<S: Source>(
    source: &S,
    state: &Path,
    vm: &str,
    rules: &[Rule],
    now: Timestamp,
    max_count: Option<usize>,
    in_use: &[String],
) -> Result<Expired, StepError> {
    expire_scoped(source, state, vm, (rules, now, max_count), in_use, None).await
}

/// As `expire`, for the points `policy` took: two policies selecting one domain, or a point
/// taken by hand, never expire each other's points by the wrong rules.
pub async fn expire_policy<S: Source>(
    source: &S,
    state: &Path,
    vm: &str,
    (rules, now, max_count): (&[Rule], Timestamp, Option<usize>),
    in_use: &[String],
    policy: &str,
) -> Result<Expired, StepError> {
    expire_scoped(
        source,
        state,
        vm,
        (rules, now, max_count),
        in_use,
        Some(policy),
    )
    .await
}

async fn expire_scoped<S: Source>(
    source: &S,
    state: &Path,
    vm: &str,
    (rules, now, max_count): (&[Rule], Timestamp, Option<usize>),
    in_use: &[String],
    policy: Option<&str>,
) -> Result<Expired, StepError> {
    let view = source.domain(vm).await?;
    let uuid = view.facts.uuid.clone();
    let _lock = lock(state, &uuid)?;
    recover(source, state, &uuid).await?;
    let points: Vec<Point> = list(source, &uuid)
        .await?
        .into_iter()
        .filter(|p| policy.is_none() || p.policy.as_deref() == policy)
        .collect();
    let aged: Vec<Aged> = points
        .iter()
        .map(|p| Aged {
            name: p.name.clone(),
            created: p.rule_time(),
        })
        .collect();
    let due = rules::due(&aged, rules, now, max_count, in_use);
    let mut out = Expired::default();
    for (name, why) in due {
        source.delete_snapshot(&uuid, &name).await?;
        crash_point("local-expire-deleted");
        let p = points
            .iter()
            .find(|p| p.name == name)
            .expect("due names come from the points")
            .clone();
        out.deleted.push((p, why));
    }
    out.kept = points
        .into_iter()
        .filter(|p| !out.deleted.iter().any(|(d, _)| d.name == p.name))
        .collect();
    Ok(out)
}
