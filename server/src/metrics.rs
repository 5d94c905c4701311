//! Prometheus metrics of a node (`GET /metrics`): ingest outcomes and rates, request
//! latencies, and per-group Raft positions, leadership, lags and watermark delay.
//!
//! Counters and histograms are updated on the request path; the per-group gauges are read
//! from openraft's metrics and the state machines when scraped.

use std::sync::Mutex;
use std::time::Duration;

use adclick_proto::model::Tally;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::node::{now_ms, Node};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    group: u64,
}

/// The node's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    clicks: Family<OutcomeLabel, Counter>,
    requests: Family<OpLabel, Counter>,
    failures: Family<OpLabel, Counter>,
    latency: Family<OpLabel, Histogram>,
    leader: Family<GroupLabel, Gauge>,
    term: Family<GroupLabel, Gauge>,
    last_log_index: Family<GroupLabel, Gauge>,
    committed_index: Family<GroupLabel, Gauge>,
    applied_index: Family<GroupLabel, Gauge>,
    apply_lag: Family<GroupLabel, Gauge>,
    watermark_delay: Family<GroupLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The operations timed and counted.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// An ingest request from a client.
    Ingest,
    /// A group's part of a batch, forwarded by the node that took the batch.
    IngestForwarded,
    /// A count query.
    Count,
    /// A top query.
    Top,
    /// An admin call.
    Admin,
}

impl Op {
    fn label(self) -> OpLabel {
        OpLabel {
            op: match self {
                Op::Ingest => "ingest",
                Op::IngestForwarded => "ingest_forwarded",
                Op::Count => "count",
                Op::Top => "top",
                Op::Admin => "admin",
            },
        }
    }
}

impl Metrics {
    /// The metrics of node `node_id`, registered.
    pub fn new(node_id: u64) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "adclick",
            [("node".into(), node_id.to_string().into())].into_iter(),
        );
        let clicks = Family::<OutcomeLabel, Counter>::default();
        let requests = Family::<OpLabel, Counter>::default();
        let failures = Family::<OpLabel, Counter>::default();
        let latency = Family::<OpLabel, Histogram>::new_with_constructor(|| {
            // 100 µs to ~105 s.
            Histogram::new(exponential_buckets(0.0001, 2.0, 21))
        });
        registry.register(
            "ingest_clicks",
            "Clicks answered by ingest requests this node coordinated, by outcome",
            clicks.clone(),
        );
        registry.register(
            "requests",
            "Client requests served, by operation",
            requests.clone(),
        );
        registry.register(
            "request_failures",
            "Client requests that failed, by operation",
            failures.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Client request latency, by operation",
            latency.clone(),
        );
        let gauges = [
            ("raft_is_leader", "1 if this node leads the group"),
            ("raft_term", "Current Raft term of the group"),
            (
                "raft_last_log_index",
                "Last log index of the group on this node",
            ),
            (
                "raft_committed_index",
                "Committed index of the group known to this node",
            ),
            (
                "raft_applied_index",
                "Applied index of the group on this node",
            ),
            ("raft_apply_lag", "Committed but not yet applied entries"),
            (
                "watermark_delay_seconds",
                "Wall clock minus the group's event-time watermark",
            ),
        ];
        let families: Vec<Family<GroupLabel, Gauge>> =
            gauges.iter().map(|_| Family::default()).collect();
        for ((name, help), f) in gauges.iter().zip(&families) {
            registry.register(*name, *help, f.clone());
        }
        let mut it = families.into_iter();
        let mut next = || it.next().unwrap_or_default();
        Metrics {
            registry: Mutex::new(registry),
            clicks,
            requests,
            failures,
            latency,
            leader: next(),
            term: next(),
            last_log_index: next(),
            committed_index: next(),
            applied_index: next(),
            apply_lag: next(),
            watermark_delay: next(),
        }
    }

    /// Records an ingest request's per-click outcomes.
    pub fn record_tally(&self, t: &Tally) {
        for (outcome, n) in [
            ("accepted", t.accepted),
            ("duplicate", t.duplicate),
            ("late", t.late),
            ("rejected", t.rejected),
        ] {
            self.clicks
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(n);
        }
    }

    /// Records a finished request.
    pub fn record(&self, op: Op, elapsed: Duration, ok: bool) {
        let l = op.label();
        self.requests.get_or_create(&l).inc();
        if !ok {
            self.failures.get_or_create(&l).inc();
        }
        self.latency
            .get_or_create(&l)
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition, with the group gauges refreshed from `node`.
    pub fn render(&self, node: &Node) -> String {
        let now = now_ms();
        for g in node.groups() {
            let m = g.metrics();
            let l = GroupLabel { group: g.id };
            let set = |f: &Family<GroupLabel, Gauge>, v: u64| {
                f.get_or_create(&l)
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            };
            set(&self.leader, u64::from(m.current_leader == Some(node.id())));
            set(&self.term, m.current_term);
            set(&self.last_log_index, m.last_log_index.unwrap_or(0));
            let committed = m.local_committed.map_or(0, |c| c.index);
            let applied = m.last_applied.map_or(0, |a| a.index);
            set(&self.committed_index, committed);
            set(&self.applied_index, applied);
            set(&self.apply_lag, committed.saturating_sub(applied));
            if let Ok(Some(w)) = g.reader.watermark_ms() {
                self.watermark_delay
                    .get_or_create(&l)
                    .set((now - w).max(0) / 1000);
            }
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
