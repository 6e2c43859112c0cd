//! Prometheus metrics, served as text on `GET /metrics`, all prefixed `nautilus_sidecar_`.

use nautilus_protocol::bounded::{Event, Observer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label set naming a reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A short snake_case reason.
    pub reason: String,
}

/// Label set naming a proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProxyLabels {
    /// `api` or `egress`.
    pub proxy: String,
}

/// Label set naming a proxy and a direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BytesLabels {
    /// `api` or `egress`.
    pub proxy: String,
    /// `upstream` (client → target) or `downstream` (target → client).
    pub direction: String,
}

/// Label set naming a listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `http`, `api` or `egress`.
    pub listener: String,
}

/// Label set naming a listener and the timeout that cut a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TimeoutLabels {
    /// `http`, `api` or `egress`.
    pub listener: String,
    /// `handshake`, `header`, `body` or `idle`.
    pub phase: String,
}

/// Label set naming a listener and why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RejectedLabels {
    /// `http`, `api` or `egress`.
    pub listener: String,
    /// A short snake_case reason (`malformed_head`, `head_too_large`, `body_too_large`, ...).
    pub reason: String,
}

/// Label set naming what became of a user's challenge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `answered`, `peer_rate`, `global_rate`, `busy`, `no_link` or `timeout`.
    pub outcome: String,
}

/// Label set naming a listener and the budget that refused a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ScopeLabels {
    /// `api`.
    pub listener: String,
    /// `peer` or `global`.
    pub scope: String,
}

/// Every metric the sidecar keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Signed reports relayed by the agent.
    pub reports_received: Counter,
    /// Reports that did not verify, by reason.
    pub reports_rejected: Family<ReasonLabels, Counter>,
    /// Attestation evidence messages received.
    pub attestations_received: Counter,
    /// Connections to the agent established after the first.
    pub link_reconnects: Counter,
    /// Connections to the agent dropped, by reason.
    pub link_drops: Family<ReasonLabels, Counter>,
    /// 1 while the control link is up.
    pub link_up: Gauge,
    /// Proxied connections accepted.
    pub proxy_connections: Family<ProxyLabels, Counter>,
    /// Proxied bytes.
    pub proxy_bytes: Family<BytesLabels, Counter>,
    /// Egress requests refused, by reason.
    pub egress_refused: Family<ReasonLabels, Counter>,
    /// Connections open, by listener.
    pub listener_connections: Family<ListenerLabels, Gauge>,
    /// Connections closed on arrival because the listener's cap was reached.
    pub listener_refused: Family<ListenerLabels, Counter>,
    /// Connections cut by a timeout, by listener and phase.
    pub listener_timeouts: Family<TimeoutLabels, Counter>,
    /// Sealed snapshots stored.
    pub snapshots_received: Counter,
    /// Sealed snapshot streams refused, by reason.
    pub snapshots_refused: Family<ReasonLabels, Counter>,
    /// Sealed snapshots offered to the agent at boot.
    pub snapshots_offered: Counter,
    /// Sealed snapshots on disk.
    pub snapshots_stored: Gauge,
    /// Sequence of the newest stored snapshot.
    pub last_snapshot_sequence: Gauge,
    /// When the newest snapshot was stored (Unix seconds).
    pub last_snapshot_timestamp_seconds: Gauge,
    /// Requests refused as malformed or oversized, by listener and reason.
    pub rejected_requests: Family<RejectedLabels, Counter>,
    /// Users' challenges, by outcome (answered, or why not).
    pub challenges: Family<OutcomeLabels, Counter>,
    /// Connections closed on arrival because a connection-rate budget was spent.
    pub connections_rate_limited: Family<ScopeLabels, Counter>,
    /// `GET /report?after=…` answered at once because too many were already waiting.
    pub report_waits_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh counters, registered under the `nautilus_sidecar` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nautilus_sidecar");
        let reports_received = Counter::default();
        let reports_rejected = Family::<ReasonLabels, Counter>::default();
        let attestations_received = Counter::default();
        let link_reconnects = Counter::default();
        let link_drops = Family::<ReasonLabels, Counter>::default();
        let link_up = Gauge::default();
        let proxy_connections = Family::<ProxyLabels, Counter>::default();
        let proxy_bytes = Family::<BytesLabels, Counter>::default();
        let egress_refused = Family::<ReasonLabels, Counter>::default();
        let listener_connections = Family::<ListenerLabels, Gauge>::default();
        let listener_refused = Family::<ListenerLabels, Counter>::default();
        let listener_timeouts = Family::<TimeoutLabels, Counter>::default();
        let rejected_requests = Family::<RejectedLabels, Counter>::default();
        let snapshots_received = Counter::default();
        let snapshots_refused = Family::<ReasonLabels, Counter>::default();
        let snapshots_offered = Counter::default();
        let snapshots_stored = Gauge::default();
        let last_snapshot_sequence = Gauge::default();
        let last_snapshot_timestamp_seconds = Gauge::default();
        registry.register(
            "snapshots_received",
            "Sealed snapshots received from the agent and stored",
            snapshots_received.clone(),
        );
        registry.register(
            "snapshots_refused",
            "Sealed snapshot streams refused, by reason",
            snapshots_refused.clone(),
        );
        registry.register(
            "snapshots_offered",
            "Sealed snapshots offered to the agent at boot",
            snapshots_offered.clone(),
        );
        registry.register(
            "snapshots_stored",
            "Sealed snapshots on disk",
            snapshots_stored.clone(),
        );
        registry.register(
            "last_snapshot_sequence",
            "Sequence of the newest stored sealed snapshot",
            last_snapshot_sequence.clone(),
        );
        registry.register(
            "last_snapshot_timestamp_seconds",
            "When the newest sealed snapshot was stored (Unix seconds)",
            last_snapshot_timestamp_seconds.clone(),
        );
        let challenges = Family::<OutcomeLabels, Counter>::default();
        let connections_rate_limited = Family::<ScopeLabels, Counter>::default();
        let report_waits_refused = Counter::default();
        registry.register(
            "report_waits_refused",
            "GET /report?after= requests answered at once because too many were already waiting",
            report_waits_refused.clone(),
        );
        registry.register(
            "reports_received",
            "Signed reports relayed by the agent",
            reports_received.clone(),
        );
        registry.register(
            "reports_rejected",
            "Reports that did not verify, by reason",
            reports_rejected.clone(),
        );
        registry.register(
            "attestations_received",
            "Attestation evidence messages received",
            attestations_received.clone(),
        );
        registry.register(
            "link_reconnects",
            "Connections to the agent established after the first",
            link_reconnects.clone(),
        );
        registry.register(
            "link_drops",
            "Connections to the agent dropped, by reason",
            link_drops.clone(),
        );
        registry.register("link_up", "1 while the control link is up", link_up.clone());
        registry.register(
            "proxy_connections",
            "Proxied connections accepted",
            proxy_connections.clone(),
        );
        registry.register(
            "proxy_bytes",
            "Bytes proxied, by proxy and direction (counted when a connection closes)",
            proxy_bytes.clone(),
        );
        registry.register(
            "egress_refused",
            "Egress proxy requests refused, by reason",
            egress_refused.clone(),
        );
        registry.register(
            "listener_connections",
            "Connections open, by listener",
            listener_connections.clone(),
        );
        registry.register(
            "listener_refused",
            "Connections closed on arrival because the listener's connection cap was reached",
            listener_refused.clone(),
        );
        registry.register(
            "listener_timeouts",
            "Connections cut by a timeout, by listener and phase",
            listener_timeouts.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests refused as malformed or oversized, by listener and reason",
            rejected_requests.clone(),
        );
        registry.register(
            "challenges",
            "Users' challenges, by outcome: answered, or refused (peer_rate, global_rate, busy, no_link, timeout)",
            challenges.clone(),
        );
        registry.register(
            "connections_rate_limited",
            "Connections closed on arrival because a connection-rate budget was spent, by listener and scope",
            connections_rate_limited.clone(),
        );
        Self {
            registry,
            reports_received,
            reports_rejected,
            attestations_received,
            link_reconnects,
            link_drops,
            link_up,
            proxy_connections,
            proxy_bytes,
            egress_refused,
            listener_connections,
            listener_refused,
            listener_timeouts,
            rejected_requests,
            snapshots_received,
            snapshots_refused,
            snapshots_offered,
            snapshots_stored,
            last_snapshot_sequence,
            last_snapshot_timestamp_seconds,
            challenges,
            report_waits_refused,
            connections_rate_limited,
        }
    }

    /// Count a user's challenge by `outcome`.
    pub fn challenge(&self, outcome: &str) {
        self.challenges
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Count a connection `listener` closed because the `scope` (`peer`, `global`) connection
    /// rate was spent.
    pub fn rate_limit_connection(&self, listener: &str, scope: &str) {
        self.connections_rate_limited
            .get_or_create(&ScopeLabels {
                listener: listener.to_owned(),
                scope: scope.to_owned(),
            })
            .inc();
    }

    /// Count a rejected report.
    pub fn reject(&self, reason: &str) {
        self.reports_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Count a dropped control link.
    pub fn drop_link(&self, reason: &str) {
        self.link_drops
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Count a refused egress request (also in `rejected_requests{listener="egress"}`, the
    /// counter every listener shares).
    pub fn refuse_egress(&self, reason: &str) {
        self.egress_refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
        self.reject_request("egress", reason);
    }

    /// Count a request `listener` refused for `reason`.
    pub fn reject_request(&self, listener: &str, reason: &str) {
        self.rejected_requests
            .get_or_create(&RejectedLabels {
                listener: listener.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Count an accepted proxy connection.
    pub fn proxy_connection(&self, proxy: &str) {
        self.proxy_connections
            .get_or_create(&ProxyLabels {
                proxy: proxy.to_owned(),
            })
            .inc();
    }

    /// Count proxied bytes in both directions.
    pub fn proxy_bytes(&self, proxy: &str, upstream: u64, downstream: u64) {
        for (direction, n) in [("upstream", upstream), ("downstream", downstream)] {
            self.proxy_bytes
                .get_or_create(&BytesLabels {
                    proxy: proxy.to_owned(),
                    direction: direction.to_owned(),
                })
                .inc_by(n);
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Observer for Metrics {
    fn observe(&self, listener: &'static str, event: Event) {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        match event {
            Event::Opened => {
                self.listener_connections.get_or_create(&labels).inc();
            }
            Event::Closed => {
                self.listener_connections.get_or_create(&labels).dec();
            }
            Event::Refused => {
                self.listener_refused.get_or_create(&labels).inc();
            }
            Event::Rejected(reason) => self.reject_request(listener, reason),
            Event::TimedOut(phase) => {
                self.listener_timeouts
                    .get_or_create(&TimeoutLabels {
                        listener: labels.listener,
                        phase: phase.as_str().to_owned(),
                    })
                    .inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_exposition() {
        let metrics = Metrics::new();
        metrics.reject("bad_signature");
        metrics.proxy_bytes("api", 3, 4);
        metrics.observe("http", Event::Refused);
        metrics.observe(
            "http",
            Event::TimedOut(nautilus_protocol::bounded::Phase::Body),
        );
        let text = metrics.encode();
        assert!(
            text.contains("nautilus_sidecar_reports_rejected_total{reason=\"bad_signature\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "nautilus_sidecar_proxy_bytes_total{proxy=\"api\",direction=\"downstream\"} 4"
            ),
            "{text}"
        );
        assert!(
            text.contains("nautilus_sidecar_listener_refused_total{listener=\"http\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "nautilus_sidecar_listener_timeouts_total{listener=\"http\",phase=\"body\"} 1"
            ),
            "{text}"
        );
    }
}
