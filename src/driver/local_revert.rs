//! A RestoreRequest with `source: Local`: the domain reverted in place to one of its local
//! restore points (`localpoints::revert`, which drops the checkpoints first so the revert is
//! safe beside snapback's incrementals; the next backup is a full, `LocalRevert`).
//!
//! A request killed midway is reverted again when it is driven again: the revert finishes
//! what a killed one left (see `localpoints::revert`).

use jiff::Timestamp;

use super::{Driver, Site};
use crate::api::{
    BackupType, Failure, FailureReason, PointRef, RestorePhase, RestoreRequest,
    RestoreRequestStatus,
};
use crate::error::StepError;
use crate::lifecycle::Journal;
use crate::localpoints::{self, revert::revert, Point};
use crate::source::Source;
use crate::units::human_duration;

/// The point a request names: `localPoint`, else the newest at or before `at` (RFC 3339,
/// or `latest`/unset for the newest).
pub fn choose_point<'a>(
    points: &'a [Point],
    name: Option<&str>,
    at: Option<&str>,
) -> Result<&'a Point, StepError> {
    let invalid = |m: String| StepError::new(FailureReason::InvalidSpec, m);
    if let Some(n) = name {
        return points
            .iter()
            .find(|p| p.name == n)
            .ok_or_else(|| invalid(format!("no local point {n} (see `snapback local list`)")));
    }
    let at = match at
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "latest")
    {
        None => None,
        Some(a) => Some(
            a.parse::<Timestamp>()
                .map_err(|e| invalid(format!("at '{a}' is not an RFC 3339 time: {e}")))?,
        ),
    };
    points
        .iter()
        .filter(|p| at.is_none_or(|t| p.created <= t))
        .max_by_key(|p| p.created)
        .ok_or_else(|| invalid("the domain has no local point at or before that time".into()))
}

impl<S: Source> Driver<'_, S> {
    /// Reverts the request's domain to the point it names and records the outcome.
    pub async fn revert_local<T: Site>(&self, site: &T, mut req: RestoreRequest) -> RestoreRequest {
        let started = Timestamp::now();
        let s = req.status.get_or_insert_with(RestoreRequestStatus::default);
        s.phase = RestorePhase::Resolving;
        s.start_time.get_or_insert(started);
        let outcome = self.revert_chosen(&mut req).await;
        let s = req.status.get_or_insert_with(RestoreRequestStatus::default);
        s.completion_time = Some(Timestamp::now());
        s.duration = Some(human_duration(Timestamp::now().duration_since(started)));
        match outcome {
            Ok(()) => s.phase = RestorePhase::Succeeded,
            Err(e) => {
                s.phase = RestorePhase::Failed;
                s.failure = Some(Failure {
                    reason: e.reason,
                    message: e.message,
                });
            }
        }
        if let Err(e) = Journal::<RestoreRequest>::save(site, &req).await {
            tracing::warn!(restore = ?req.metadata.name, "cannot record the revert: {e}");
        }
        req
    }

    async fn revert_chosen(&self, req: &mut RestoreRequest) -> Result<(), StepError> {
        let domain = req.spec.domain.clone();
        let points = localpoints::list(self.host, &domain).await?;
        let p = choose_point(
            &points,
            req.spec.local_point.as_deref(),
            req.spec.at.as_deref(),
        )?
        .clone();
        let s = req.status.get_or_insert_with(RestoreRequestStatus::default);
        s.point = Some(PointRef {
            run: p.name.clone(),
            time: p.created,
            type_: Some(BackupType::Local),
            chain: String::new(),
            chain_index: 0,
        });
        s.defined_domain = Some(domain.clone());
        s.phase = RestorePhase::Starting;
        let r = revert(self.host, self.state_dir, &domain, &p.name).await?;
        if !r.dropped_checkpoints.is_empty() {
            tracing::info!(
                domain = %domain,
                checkpoints = ?r.dropped_checkpoints,
                "checkpoints dropped for the revert: the next backup is a full (LocalRevert)"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(name: &str, at: &str) -> Point {
        Point {
            name: name.into(),
            domain: "web".into(),
            created: at.parse().unwrap(),
            memory: true,
            internal: true,
            quiesced: false,
            paused_ms: None,
            policy: None,
            scheduled: None,
        }
    }

    #[test]
    fn a_point_is_chosen_by_name_or_as_the_newest_at_or_before_the_time() {
        let pts = [
            point("a", "2026-12-01T01:00:00Z"),
            point("b", "2026-12-01T02:00:00Z"),
            point("c", "2026-12-01T03:00:00Z"),
        ];
        let pick =
            |n: Option<&str>, at: Option<&str>| choose_point(&pts, n, at).map(|p| p.name.clone());
        assert_eq!(pick(Some("a"), None).unwrap(), "a");
        assert_eq!(pick(None, None).unwrap(), "c");
        assert_eq!(pick(None, Some("latest")).unwrap(), "c");
        assert_eq!(pick(None, Some("2026-12-01T02:30:00Z")).unwrap(), "b");
        assert_eq!(pick(None, Some("2026-12-01T02:00:00Z")).unwrap(), "b");
        for (n, at) in [
            (Some("zz"), None),
            (None, Some("2026-12-01T00:59:59Z")),
            (None, Some("yesterday")),
        ] {
            let e = choose_point(&pts, n, at).unwrap_err();
            assert_eq!(e.reason, FailureReason::InvalidSpec, "{n:?} {at:?}");
        }
    }
}
