//! What a driven backup ended with, and the metrics every finished run and restore records.

use crate::api::{BackupPhase, BackupRun, RestorePhase, RestoreRequest};
use crate::metrics::{Metrics, PolicyDomain, ReasonLabel};

/// What retention did after a successful run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pruned {
    /// Retention ran and deleted this many whole chains (maybe none).
    Chains(usize),
    /// Retention failed; the run's `Pruned` condition says why.
    Failed,
}

#[derive(Clone, Debug)]
pub struct BackupOutcome {
    pub run: BackupRun,
    /// `None` when no retention applies (no policy, or it keeps everything).
    pub pruned: Option<Pruned>,
}

impl BackupOutcome {
    /// One line for logs and the daemon's output: `Succeeded, pruned 1 chain(s)`.
    pub fn summary(&self) -> String {
        let s = self.run.status.clone().unwrap_or_default();
        let mut out = match &s.failure {
            Some(f) => format!("{:?} ({})", s.phase, f.reason),
            None => format!("{:?}", s.phase),
        };
        match self.pruned {
            Some(Pruned::Chains(n)) => out.push_str(&format!(", pruned {n} chain(s)")),
            Some(Pruned::Failed) => out.push_str(", prune failed"),
            None => {}
        }
        out
    }
}

/// Counts a backup or restore as in progress for as long as it lives.
pub(crate) struct Active<'a>(&'a Metrics);

impl<'a> Active<'a> {
    pub(crate) fn new(m: &'a Metrics, fresh: bool, backup: bool) -> Self {
        m.active_runs.inc();
        if fresh {
            if backup {
                m.backup_attempts.inc();
            } else {
                m.restore_attempts.inc();
            }
        }
        Self(m)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active_runs.dec();
    }
}

fn seconds_between(a: Option<jiff::Timestamp>, b: Option<jiff::Timestamp>) -> Option<f64> {
    Some((b?.as_millisecond() - a?.as_millisecond()) as f64 / 1000.0)
}

pub(crate) fn record_backup(m: &Metrics, run: &BackupRun) {
    let s = run.status.clone().unwrap_or_default();
    match (s.phase, &s.failure) {
        (BackupPhase::Succeeded, _) => {
            m.backup_success.inc();
            m.backup_bytes.observe(s.size_bytes as f64);
            if let Some(t) = s.completion_time {
                m.last_success
                    .get_or_create(&PolicyDomain {
                        policy: run.spec.policy_ref.clone().unwrap_or_default(),
                        domain: run.spec.domain.clone(),
                    })
                    .set(t.as_millisecond() as f64 / 1000.0);
            }
        }
        (BackupPhase::Failed, Some(f)) => {
            m.backup_failure
                .get_or_create(&ReasonLabel {
                    reason: f.reason.as_str().to_string(),
                })
                .inc();
        }
        _ => {}
    }
    if let Some(secs) = seconds_between(s.start_time, s.completion_time) {
        m.backup_duration.observe(secs);
    }
}

pub(crate) fn record_restore(m: &Metrics, req: &RestoreRequest) {
    let s = req.status.clone().unwrap_or_default();
    match (s.phase, &s.failure) {
        (RestorePhase::Succeeded, _) => {
            m.restore_success.inc();
        }
        (RestorePhase::Failed, Some(f)) => {
            m.restore_failure
                .get_or_create(&ReasonLabel {
                    reason: f.reason.as_str().to_string(),
                })
                .inc();
        }
        _ => {}
    }
    if let Some(secs) = seconds_between(s.start_time, s.completion_time) {
        m.restore_duration.observe(secs);
    }
}

/// A scheduled verify's points, and the domain's newest verify time and broken count.
pub(crate) fn record_verify(
    m: &Metrics,
    policy: &str,
    domain: &str,
    outcome: &Result<Vec<crate::restore::verify::PointCheck>, crate::error::StepError>,
    broken: usize,
    at: jiff::Timestamp,
) {
    if let Ok(checks) = outcome {
        for c in checks {
            let result = if c.ok() { "ok" } else { "broken" };
            m.verified_points
                .get_or_create(&crate::metrics::ResultLabel {
                    result: result.into(),
                })
                .inc();
        }
    }
    let key = PolicyDomain {
        policy: policy.into(),
        domain: domain.into(),
    };
    m.last_verify
        .get_or_create(&key)
        .set(at.as_millisecond() as f64 / 1000.0);
    m.broken_points.get_or_create(&key).set(broken as i64);
}
