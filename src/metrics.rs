//! Prometheus metrics (prometheus-client) and the small HTTP server for `/metrics`,
//! `/healthz` and `/readyz` that the controller and the agent expose.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyDomain {
    pub policy: String,
    pub domain: String,
}

/// The families both binaries register. Counters get `_total` from the registry.
pub struct Metrics {
    registry: Registry,
    pub backup_attempts: Counter,
    pub backup_success: Counter,
    pub backup_failure: Family<ReasonLabel, Counter>,
    pub backup_duration: Histogram,
    pub backup_bytes: Histogram,
    pub last_success: Family<PolicyDomain, Gauge<f64, AtomicU64>>,
    pub restore_attempts: Counter,
    pub restore_success: Counter,
    pub restore_failure: Family<ReasonLabel, Counter>,
    pub restore_duration: Histogram,
    pub active_runs: Gauge,
    pub scheduling_pass_seconds: Histogram,
    pub verified_points: Family<ResultLabel, Counter>,
    pub last_verify: Family<PolicyDomain, Gauge<f64, AtomicU64>>,
    pub broken_points: Family<PolicyDomain, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `broken`.
    pub result: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let secs = || Histogram::new(exponential_buckets(1.0, 2.0, 16));
        let m = Self {
            backup_attempts: Counter::default(),
            backup_success: Counter::default(),
            backup_failure: Family::default(),
            backup_duration: secs(),
            backup_bytes: Histogram::new(exponential_buckets(1024.0 * 1024.0, 4.0, 12)),
            last_success: Family::default(),
            restore_attempts: Counter::default(),
            restore_success: Counter::default(),
            restore_failure: Family::default(),
            restore_duration: secs(),
            active_runs: Gauge::default(),
            scheduling_pass_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            verified_points: Family::default(),
            last_verify: Family::default(),
            broken_points: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "snapback_backup_attempts",
            "Backups started",
            m.backup_attempts.clone(),
        );
        r.register(
            "snapback_backup_success",
            "Backups that succeeded",
            m.backup_success.clone(),
        );
        r.register(
            "snapback_backup_failure",
            "Backups that failed, by reason word",
            m.backup_failure.clone(),
        );
        r.register(
            "snapback_backup_duration_seconds",
            "Wall time of finished backups",
            m.backup_duration.clone(),
        );
        r.register(
            "snapback_backup_bytes",
            "Bytes uploaded per successful backup",
            m.backup_bytes.clone(),
        );
        r.register(
            "snapback_last_successful_backup_timestamp_seconds",
            "Completion time of the newest successful backup",
            m.last_success.clone(),
        );
        r.register(
            "snapback_restore_attempts",
            "Restores started",
            m.restore_attempts.clone(),
        );
        r.register(
            "snapback_restore_success",
            "Restores that succeeded",
            m.restore_success.clone(),
        );
        r.register(
            "snapback_restore_failure",
            "Restores that failed, by reason word",
            m.restore_failure.clone(),
        );
        r.register(
            "snapback_restore_duration_seconds",
            "Wall time of finished restores",
            m.restore_duration.clone(),
        );
        r.register(
            "snapback_active_runs",
            "Backups and restores in progress",
            m.active_runs.clone(),
        );
        r.register(
            "snapback_scheduling_pass_seconds",
            "Wall time of one controller pass",
            m.scheduling_pass_seconds.clone(),
        );
        r.register(
            "snapback_verified_points",
            "Backup points read back from the target by scheduled verifies, by result",
            m.verified_points.clone(),
        );
        r.register(
            "snapback_last_verify_timestamp_seconds",
            "When the policy's newest scheduled verify of the domain ended",
            m.last_verify.clone(),
        );
        r.register(
            "snapback_verify_broken_points",
            "Points found broken (or a target that could not be read: 1) by the newest verify",
            m.broken_points.clone(),
        );
        Self { registry: r, ..m }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Readiness: the controller is ready once it leads or stands by cleanly, the agent once its
/// first VirtHost is published.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, v: bool) {
        self.ready.store(v, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, health: Health) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let h = health.clone();
                async move {
                    if h.is_ready() {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_the_metrics_the_issue_lists() {
        let m = Metrics::new();
        m.backup_attempts.inc();
        m.backup_failure
            .get_or_create(&ReasonLabel {
                reason: "TargetUnreachable".into(),
            })
            .inc();
        m.last_success
            .get_or_create(&PolicyDomain {
                policy: "nightly".into(),
                domain: "web".into(),
            })
            .set(1.7e9);
        let t = m.encode();
        for name in [
            "snapback_backup_attempts_total 1",
            "snapback_backup_success_total 0",
            "snapback_backup_failure_total{reason=\"TargetUnreachable\"} 1",
            "snapback_backup_duration_seconds_count 0",
            "snapback_backup_bytes_count 0",
            "snapback_last_successful_backup_timestamp_seconds{policy=\"nightly\",domain=\"web\"}",
            "snapback_restore_attempts_total",
            "snapback_restore_success_total",
            "snapback_restore_duration_seconds_count",
            "snapback_active_runs 0",
        ] {
            assert!(t.contains(name), "missing {name} in\n{t}");
        }
    }
}
