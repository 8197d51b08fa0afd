//! Prometheus metrics, served as text on the admin listener's `/metrics`.
//!
//! Two kinds: what the flows count as it happens (decisions, phase latencies, gateway answers,
//! replies, refused webhooks), kept in [`Metrics`]; and what is read at each scrape
//! ([`Snapshot`]: queue depths, the log's state, connections, write batches). Labels are
//! bounded: tenants, upstreams and purposes come from the configuration, reasons and
//! classes are stable codes; never a number, a body or an id.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allowed`, `denied` or `deferred`.
    pub outcome: &'static str,
    /// The first reason's code; `none` for an allowed message.
    pub reason: &'static str,
    pub purpose: &'static str,
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    /// `sent`, or the error's stable code.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WitnessLabels {
    witness: String,
    /// `cosigned`, `moved` (the witness stood elsewhere: sent again), `ahead` (it cosigned
    /// a larger tree than the log holds), `failed`.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

/// A phase of the send flow, timed.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    /// Waiting for the recipient's turn and reading its facts.
    Gather,
    /// Sealing and the durable write of the record.
    Record,
    /// The gateway's call.
    Forward,
    /// The durable write of the gateway's answer.
    Outcome,
    /// A send's, from its arrival in the flow (its wait for its group included) to its
    /// recorded outcome; a batch group's, from its start to each of its outcomes.
    Total,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Gather => "gather",
            Phase::Record => "record",
            Phase::Forward => "forward",
            Phase::Outcome => "outcome",
            Phase::Total => "total",
        }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// What the flows count.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    phases: HistogramFamily<PhaseLabels>,
    send_groups: Histogram,
    upstream: Family<UpstreamLabels, Counter>,
    witnesses: Family<WitnessLabels, Counter>,
    inbound: Family<CodeLabels, Counter>,
    webhook_refusals: Family<CodeLabels, Counter>,
    reloads: Family<CodeLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Latency buckets from 100 us to about 13 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("consentry");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions on messages, by outcome, first reason, purpose and tenant",
            decisions.clone(),
        );
        let phases: HistogramFamily<PhaseLabels> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "send_phase_seconds",
            "Time spent in each phase of a send, and in all of them (phase=total)",
            phases.clone(),
        );
        // 1, 2, 4 ... 256: a group is at most `flow::combine::GROUP`.
        let send_groups = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        registry.register(
            "send_group_size",
            "Single sends decided together: messages in each group a runner took",
            send_groups.clone(),
        );
        let upstream = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_answers",
            "Gateways' answers to forwarded messages, by upstream and result",
            upstream.clone(),
        );
        let witnesses = Family::<WitnessLabels, Counter>::default();
        registry.register(
            "witness_submissions",
            "Checkpoints sent to witnesses for a cosignature, by witness and outcome",
            witnesses.clone(),
        );
        let inbound = Family::<CodeLabels, Counter>::default();
        registry.register(
            "inbound_replies",
            "Replies received, by how they were classified",
            inbound.clone(),
        );
        let webhook_refusals = Family::<CodeLabels, Counter>::default();
        registry.register(
            "webhook_refusals",
            "Gateway webhooks refused, by reason (a bad signature, a stale timestamp...)",
            webhook_refusals.clone(),
        );
        let reloads = Family::<CodeLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, applied or refused",
            reloads.clone(),
        );
        Metrics {
            registry,
            reloads,
            decisions,
            phases,
            send_groups,
            upstream,
            witnesses,
            inbound,
            webhook_refusals,
        }
    }
}

impl Metrics {
    pub fn decision(&self, labels: DecisionLabels) {
        self.decisions.get_or_create(&labels).inc();
    }

    pub fn phase(&self, phase: Phase, took: Duration) {
        self.phases
            .get_or_create(&PhaseLabels {
                phase: phase.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    /// A group of single sends taken by a runner (`flow::combine`), by its size.
    pub fn send_group(&self, size: usize) {
        self.send_groups.observe(size as f64);
    }

    pub fn upstream_answer(&self, upstream: &str, result: &'static str) {
        self.upstream
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
                result,
            })
            .inc();
    }

    pub fn witness_submission(&self, witness: &str, outcome: &'static str) {
        self.witnesses
            .get_or_create(&WitnessLabels {
                witness: witness.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn inbound(&self, class: &'static str) {
        self.inbound
            .get_or_create(&CodeLabels { code: class })
            .inc();
    }

    pub fn reload(&self, applied: bool) {
        let code = if applied { "applied" } else { "refused" };
        self.reloads.get_or_create(&CodeLabels { code }).inc();
    }

    pub fn webhook_refused(&self, code: &'static str) {
        self.webhook_refusals
            .get_or_create(&CodeLabels { code })
            .inc();
    }

    /// The text exposition (Prometheus 0.0.4 format) of these metrics and a scrape's snapshot.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        let _ =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &snapshot.registry());
        text
    }
}

/// What a scrape reads from the store and the listener.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub deferred: Option<i64>,
    /// Seconds since the oldest deferred message was due, if one is overdue.
    pub deferred_overdue_seconds: Option<f64>,
    pub outbox_pending: Option<i64>,
    pub log_unsequenced: Option<i64>,
    pub log_tree_size: Option<u64>,
    pub checkpoint_age_seconds: Option<f64>,
    pub connections_open: usize,
    /// API handlers and SMPP submits under way, with or without their clients.
    pub requests_in_flight: usize,
    pub connections_evicted: u64,
    pub connections_refused: u64,
    pub tls_handshake_failures: u64,
    /// SQLite's group writer: batches by size bucket (`1`, `2-3`, ...).
    pub write_batches: Vec<(String, u64)>,
    /// Whether the store answered the scrape's reads.
    pub store_up: bool,
    /// The live configuration's version (1 at start, one more at each reload).
    pub config_version: u64,
    /// Each paced upstream: messages waiting for their instant, its rate, its pause.
    pub paced: Vec<crate::pacing::PaceView>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacedLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SizeLabels {
    size: String,
}

impl Snapshot {
    fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("consentry");
        let mut gauge = |name: &str, help: &str, value: Option<f64>| {
            if let Some(value) = value {
                registry.register(name, help, ConstGauge::new(value));
            }
        };
        gauge(
            "config_version",
            "The live configuration: 1 at start, one more at each reload",
            Some(self.config_version as f64),
        );
        gauge(
            "store_up",
            "1 when the store answered this scrape's reads",
            Some(if self.store_up { 1.0 } else { 0.0 }),
        );
        gauge(
            "deferred_messages",
            "Deferred messages waiting for their release",
            self.deferred.map(|v| v as f64),
        );
        gauge(
            "deferred_overdue_seconds",
            "How long the oldest deferred message has been due",
            self.deferred_overdue_seconds,
        );
        gauge(
            "outbox_pending",
            "Deliveries to tenants' webhooks not yet delivered",
            self.outbox_pending.map(|v| v as f64),
        );
        gauge(
            "log_unsequenced",
            "Log entries written but not yet given a leaf index",
            self.log_unsequenced.map(|v| v as f64),
        );
        gauge(
            "log_tree_size",
            "Leaves in the log's tree",
            self.log_tree_size.map(|v| v as f64),
        );
        gauge(
            "checkpoint_age_seconds",
            "Time since the latest signed checkpoint",
            self.checkpoint_age_seconds,
        );
        gauge(
            "connections_open",
            "Connections holding a place on the API listener (open or closing)",
            Some(self.connections_open as f64),
        );
        gauge(
            "requests_in_flight",
            "API handlers and SMPP submits under way; one whose client went away runs to its end",
            Some(self.requests_in_flight as f64),
        );
        registry.register(
            "connections_evicted",
            "Unauthenticated connections closed to make room for another",
            ConstCounter::new(self.connections_evicted),
        );
        registry.register(
            "connections_refused",
            "Connections refused because every place was held by authenticated clients",
            ConstCounter::new(self.connections_refused),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            ConstCounter::new(self.tls_handshake_failures),
        );
        if !self.paced.is_empty() {
            type FloatGauge =
                prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>;
            let waiting = Family::<PacedLabels, FloatGauge>::default();
            let rate = Family::<PacedLabels, FloatGauge>::default();
            let paused = Family::<PacedLabels, FloatGauge>::default();
            for view in &self.paced {
                let labels = PacedLabels {
                    upstream: view.upstream.clone(),
                };
                waiting.get_or_create(&labels).set(view.waiting as f64);
                if let Some(per_second) = view.rate_per_second {
                    rate.get_or_create(&labels).set(per_second);
                }
                paused.get_or_create(&labels).set(view.paused_seconds);
            }
            registry.register(
                "paced_waiting",
                "Messages queued for their instant in an upstream's pace",
                waiting,
            );
            registry.register(
                "paced_rate_per_second",
                "The configured rate of a paced upstream, messages a second",
                rate,
            );
            registry.register(
                "paced_paused_seconds",
                "How long the pause a gateway asked for (429) still lasts",
                paused,
            );
        }
        if !self.write_batches.is_empty() {
            let batches = Family::<SizeLabels, Counter>::default();
            for (size, count) in &self.write_batches {
                batches
                    .get_or_create(&SizeLabels { size: size.clone() })
                    .inc_by(*count);
            }
            registry.register(
                "write_batches",
                "Transactions of the SQLite group writer, by how many writes each held",
                batches,
            );
        }
        registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_each_family_once_with_bounded_labels() {
        let metrics = Metrics::default();
        metrics.decision(DecisionLabels {
            outcome: "denied",
            reason: "opted_out",
            purpose: "marketing",
            tenant: "acme".into(),
        });
        metrics.phase(Phase::Record, Duration::from_millis(2));
        metrics.upstream_answer("gw", "sent");
        let text = metrics.render(&Snapshot {
            store_up: true,
            deferred: Some(3),
            write_batches: vec![("1".into(), 5), ("2-3".into(), 2)],
            paced: vec![crate::pacing::PaceView {
                upstream: "gw".into(),
                waiting: 7,
                rate_per_second: Some(50.0),
                paused_seconds: 0.0,
            }],
            ..Snapshot::default()
        });
        assert!(
            text.contains("consentry_paced_waiting{upstream=\"gw\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("consentry_paced_rate_per_second{upstream=\"gw\"} 50"),
            "{text}"
        );
        assert!(text.contains(
            "consentry_decisions_total{outcome=\"denied\",reason=\"opted_out\",purpose=\"marketing\",tenant=\"acme\"} 1"
        ), "{text}");
        assert!(text.contains("consentry_send_phase_seconds_bucket{phase=\"record\""));
        assert!(text.contains("consentry_deferred_messages 3"));
        assert!(text.contains("consentry_write_batches_total{size=\"2-3\"} 2"));
        assert!(!text.contains("# EOF"));
    }
}
