//! Prometheus metrics, served at `GET /metrics`. Counters are atomics, so
//! recording on the hot path takes no lock beyond the label lookup.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use next_chat_core::{BackendError, HistoryObserver, Message};
use next_chat_storage::BusStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub transport: &'static str,
    pub protocol: &'static str,
}

/// How a stateful reconnect went: `resumed` (a new socket took over),
/// `expired` (no reconnect within the window) or `overflowed` (the resend
/// buffer filled while the socket was down); the last two closed the connection.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconnectLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InvocationLabels {
    pub method: &'static str,
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Family<ConnectionLabels, Gauge>,
    pub invocations: Family<InvocationLabels, Counter>,
    pub messages_delivered: Counter,
    pub slow_consumers_closed: Counter,
    pub stateful_reconnects: Family<ReconnectLabels, Counter>,
    pub history_write_seconds: Histogram,
    pub history_write_failures: Counter,
    pub history_unsaved: Gauge,
    pub history_unsaved_bytes: Gauge,
    pub history_refused: Counter,
    /// TCP connections closed at once for `max_unauthenticated_connections_per_ip`.
    pub unauthenticated_connections_refused: Counter,
    /// Requests refused with 403 because `auth: header` answers loopback
    /// clients only (`allow_remote_header_auth` unset).
    pub remote_header_auth_refused: Counter,
    /// What the Redis stream readers took, once the backend is connected.
    bus: Arc<OnceLock<Arc<BusStats>>>,
}

/// The message bus figures of the Redis stream readers (none in embedded mode).
#[derive(Debug)]
struct BusCollector(Arc<OnceLock<Arc<BusStats>>>);

impl Collector for BusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(bus) = self.0.get() else { return Ok(()) };
        let counters = [
            (
                "bus_entries_received",
                "Redis stream entries this instance's readers received (messages of the shards it reads)",
                bus.entries_received(),
            ),
            (
                "bus_bytes_received",
                "Bytes of the Redis stream replies this instance's readers received (RESP encoding)",
                bus.bytes_received(),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let shards = ConstGauge::new(i64::try_from(bus.shards_read()).unwrap_or(i64::MAX));
        shards.encode(encoder.encode_descriptor(
            "bus_shards_read",
            "Redis stream shards this instance reads now: those of groups joined on it",
            None,
            shards.metric_type(),
        )?)?;
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("nextchat");
        let connections = Family::<ConnectionLabels, Gauge>::default();
        registry.register("connections", "Open hub connections", connections.clone());
        let invocations = Family::<InvocationLabels, Counter>::default();
        registry.register(
            "invocations",
            "Hub method invocations by method and outcome",
            invocations.clone(),
        );
        let messages_delivered = Counter::default();
        registry.register(
            "messages_delivered",
            "OnMessage records queued to connections",
            messages_delivered.clone(),
        );
        let slow_consumers_closed = Counter::default();
        registry.register(
            "slow_consumers_closed",
            "Connections closed because their outbound queue was full",
            slow_consumers_closed.clone(),
        );
        let stateful_reconnects = Family::<ReconnectLabels, Counter>::default();
        registry.register(
            "stateful_reconnects",
            "Stateful reconnects by outcome: resumed, expired (window passed), overflowed (buffer full while disconnected)",
            stateful_reconnects.clone(),
        );
        let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
        let history_write_seconds = Histogram::new(buckets);
        registry.register(
            "history_write_seconds",
            "Time to store one batch of history",
            history_write_seconds.clone(),
        );
        let history_write_failures = Counter::default();
        registry.register(
            "history_write_failures",
            "History batches the store refused (they are retried)",
            history_write_failures.clone(),
        );
        let history_unsaved = Gauge::default();
        registry.register(
            "history_unsaved_messages",
            "Accepted messages not yet stored in history",
            history_unsaved.clone(),
        );
        let history_unsaved_bytes = Gauge::default();
        registry.register(
            "history_unsaved_bytes",
            "What the accepted messages not yet stored cost in memory, bounded by history_unsaved_max_bytes",
            history_unsaved_bytes.clone(),
        );
        let history_refused = Counter::default();
        registry.register(
            "history_refused_messages",
            "Messages the history database refused on their own and that were set aside (logged)",
            history_refused.clone(),
        );
        let unauthenticated_connections_refused = Counter::default();
        registry.register(
            "unauthenticated_connections_refused",
            "TCP connections closed at once because their address held max_unauthenticated_connections_per_ip connections not yet authenticated",
            unauthenticated_connections_refused.clone(),
        );
        let remote_header_auth_refused = Counter::default();
        registry.register(
            "remote_header_auth_refused",
            "Requests refused with 403: auth is header and the client is not on loopback (allow_remote_header_auth is off)",
            remote_header_auth_refused.clone(),
        );
        let bus = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(BusCollector(Arc::clone(&bus))));
        Metrics {
            registry,
            connections,
            invocations,
            messages_delivered,
            slow_consumers_closed,
            stateful_reconnects,
            history_write_seconds,
            history_write_failures,
            history_unsaved,
            history_unsaved_bytes,
            history_refused,
            unauthenticated_connections_refused,
            remote_header_auth_refused,
            bus,
        }
    }

    /// Reports the Redis stream readers' figures from now on.
    pub fn observe_bus(&self, stats: Arc<BusStats>) {
        let _ = self.bus.set(stats);
    }

    pub fn invocation(&self, method: &'static str, outcome: &'static str) {
        self.invocations.get_or_create(&InvocationLabels { method, outcome }).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Feeds history batch outcomes into the metrics.
pub struct HistoryMetrics(pub std::sync::Arc<Metrics>);

impl HistoryObserver for HistoryMetrics {
    fn batch_written(&self, _rows: usize, elapsed: Duration) {
        self.0.history_write_seconds.observe(elapsed.as_secs_f64());
    }

    fn batch_failed(&self, _rows: usize, error: &BackendError) {
        self.0.history_write_failures.inc();
        tracing::debug!(%error, refused = error.refused, "history batch failed");
    }

    fn message_refused(&self, _message: &Message, _error: &BackendError) {
        // `append_or_set_aside` has logged it.
        self.0.history_refused.inc();
    }
}
