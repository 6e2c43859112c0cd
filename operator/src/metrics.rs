//! Prometheus metrics of the operator, in the text format served at `/metrics`.
//!
//! - `nautilus_operator_reconciles_total`: reconciles started.
//! - `nautilus_operator_reconcile_failures_total{category}`: failed reconciles by error category
//!   (the same PascalCase word used as the Event reason).
//! - `nautilus_operator_reconcile_duration_seconds`: histogram of reconcile durations.
//! - `nautilus_operator_attestation_verifications_total{result}`: verification outcomes
//!   (`Verified`, `SimulatedAttestation`, `Pending`, or the failure reason).
//! - `nautilus_operator_writes_total{kind}`: writes the reconciler sent (server-side applies of
//!   children by kind, `NautilusMasterStatus` for status patches). Idle resources add none.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    /// Error category.
    pub category: String,
}

/// Label set of the verification counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// Verification result.
    pub result: String,
}

/// Label set of the write counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Kind of the object written.
    pub kind: String,
}

/// Label set of the rejected-request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why the request was refused (`malformed_head`, `head_too_large`).
    pub reason: String,
}

/// The operator's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<CategoryLabel, Counter>,
    duration: Histogram,
    verifications: Family<ResultLabel, Counter>,
    writes: Family<KindLabel, Counter>,
    rejected: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `nautilus_operator` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nautilus_operator");
        let reconciles = Counter::default();
        let failures = Family::<CategoryLabel, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let verifications = Family::<ResultLabel, Counter>::default();
        let writes = Family::<KindLabel, Counter>::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Failed reconciles by error category",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles",
            duration.clone(),
        );
        registry.register(
            "attestation_verifications",
            "Attestation verifications by result",
            verifications.clone(),
        );
        registry.register(
            "writes",
            "Writes the reconciler sent, by kind",
            writes.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests to the metrics and health endpoint refused as malformed or oversized, by reason",
            rejected.clone(),
        );
        Self {
            registry,
            writes,
            rejected,
            reconciles,
            failures,
            duration,
            verifications,
        }
    }

    /// Count a reconcile; the returned timer records its duration when dropped.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    /// Count a failed reconcile.
    pub fn reconcile_failed(&self, category: &str) {
        self.failures
            .get_or_create(&CategoryLabel {
                category: category.to_owned(),
            })
            .inc();
    }

    /// Count a server-side apply of a child of `kind`.
    pub fn child_applied(&self, kind: &str) {
        self.writes
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Count a request the admin endpoint refused.
    pub fn request_rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Count a status patch.
    pub fn status_patched(&self) {
        self.child_applied("NautilusMasterStatus");
    }

    /// Count a verification result.
    pub fn verification(&self, result: &str) {
        self.verifications
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Records a reconcile's duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_encodes() {
        let m = Metrics::new();
        drop(m.reconcile_started());
        m.reconcile_failed("KubeApi");
        m.verification("Verified");
        m.verification("Verified");
        let text = m.encode();
        assert!(
            text.contains("nautilus_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("nautilus_operator_reconcile_failures_total{category=\"KubeApi\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "nautilus_operator_attestation_verifications_total{result=\"Verified\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("nautilus_operator_reconcile_duration_seconds_count 1"));
    }
}
