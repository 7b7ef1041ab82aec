//! Every metric the collector exports, named once, here.
//!
//! Names follow `usage_collector_<noun>_<unit>` (counters gain `_total` on exposition). Labels
//! are low-cardinality: signal, reason, table, column — never an error message.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The prefix of every metric name.
pub const NAMESPACE: &str = "usage_collector";

/// Metric names, without the namespace prefix and the counters' `_total` suffix.
pub mod names {
    /// Records that arrived, valid or not.
    pub const RECORDS_RECEIVED: &str = "records_received";
    /// Valid records acknowledged: on disk in the spool, to be written exactly once.
    pub const RECORDS_ACCEPTED: &str = "records_accepted";
    /// Records refused on their own, reported to the client as partial success.
    pub const RECORDS_REJECTED: &str = "records_rejected";
    /// Records of whole requests refused with a retryable or final gRPC status.
    pub const RECORDS_REFUSED: &str = "records_refused";
    /// Requests refused before their records could be counted (too large).
    pub const REQUESTS_REFUSED: &str = "requests_refused";
    /// Rows committed, by table; an event sent again counts again (its insert is a no-op).
    pub const ROWS_WRITTEN: &str = "rows_written";
    /// Batch writes that failed, by reason.
    pub const WRITE_FAILURES: &str = "write_failures";
    /// Text values cut to their column's width.
    pub const TEXT_TRUNCATED: &str = "text_truncated";
    /// Time to write one batch.
    pub const BATCH_WRITE_DURATION: &str = "batch_write_duration_seconds";
    /// 1 while the last database contact succeeded.
    pub const DATABASE_UP: &str = "database_up";
    /// 1 while the schema check passes.
    pub const SCHEMA_OK: &str = "schema_ok";
    /// Unix time of the last successful batch write.
    pub const LAST_WRITE: &str = "last_write_timestamp_seconds";
    /// Requests in the spool, not yet in the database.
    pub const SPOOL_RECORDS: &str = "spool_records";
    /// Bytes in the spool, not yet in the database.
    pub const SPOOL_BYTES: &str = "spool_bytes";
    /// The spool's cap in bytes.
    pub const SPOOL_CAPACITY: &str = "spool_capacity_bytes";
    /// Spool segments found corrupt at start and copied to quarantine.
    pub const SPOOL_QUARANTINED: &str = "spool_quarantined_segments";
    /// Rows the database refused for good, kept as dead letters, by table.
    pub const DEAD_LETTERS: &str = "dead_letters";
    /// Dead letters that could be kept neither in the table nor in the file (only logged).
    pub const DEAD_LETTERS_LOST: &str = "dead_letters_lost";
    /// Events committed to the database (a repeat of an already written event counts again).
    pub const EVENTS_WRITTEN: &str = "events_written";
    /// Accepted records lost after acknowledgement, by reason (must stay 0).
    pub const RECORDS_DROPPED: &str = "records_dropped";
    /// Accepted events by service and event name (bounded; overflow goes to `other`).
    pub const EVENTS: &str = "events";
    /// Unix time each service last sent events (bounded; overflow goes to `other`).
    pub const SERVICE_LAST_SEEN: &str = "service_last_seen_timestamp_seconds";
    /// Unix time of the last heartbeat that reached the database.
    pub const HEARTBEAT_LAST_WRITTEN: &str = "heartbeat_last_written_timestamp_seconds";
    /// Seconds since the last heartbeat reached the database (since start, before the first).
    pub const HEARTBEAT_AGE: &str = "heartbeat_age_seconds";
    /// Always 1, labelled with the version.
    pub const BUILD_INFO: &str = "build_info";
}

/// Labels: the OTLP signal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    /// `logs` or `traces`.
    pub signal: &'static str,
}

/// Labels: signal and reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalReasonLabels {
    /// `logs` or `traces`.
    pub signal: &'static str,
    /// Why, as a short fixed word.
    pub reason: &'static str,
}

/// Labels: reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why, as a short fixed word.
    pub reason: &'static str,
}

/// Labels: table.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// Table name.
    pub table: &'static str,
}

/// Labels: table and column.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ColumnLabels {
    /// Table name.
    pub table: &'static str,
    /// Column name.
    pub column: &'static str,
}

/// Labels: service and event name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `service.name` of the sender (not `service`, which Prometheus Operator scrapes set as a
    /// target label and would rename to `exported_service`).
    pub service_name: String,
    /// Event name.
    pub event: String,
}

/// Labels: service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// `service.name` of the sender (see [`EventLabels`]).
    pub service_name: String,
}

/// Most (service, event) pairs with their own series; the rest count as `other`.
pub const MAX_EVENT_SERIES: usize = 200;
/// Most services with their own last-seen series; the rest count as `other`.
pub const MAX_SERVICES: usize = 50;
/// The label value that stands for everything past a bound.
pub const OTHER: &str = "other";

/// (service, event) pairs and services that have their own series.
type SeenLabels = (
    std::collections::HashSet<(String, String)>,
    std::collections::HashSet<String>,
);

/// Labels: version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The collector's version.
    pub version: &'static str,
}

/// Handles to every metric, and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    /// See [`names::RECORDS_RECEIVED`].
    pub records_received: Family<SignalLabels, Counter>,
    /// See [`names::RECORDS_ACCEPTED`].
    pub records_accepted: Family<SignalLabels, Counter>,
    /// See [`names::RECORDS_REJECTED`].
    pub records_rejected: Family<SignalReasonLabels, Counter>,
    /// See [`names::RECORDS_REFUSED`].
    pub records_refused: Family<SignalReasonLabels, Counter>,
    /// See [`names::REQUESTS_REFUSED`].
    pub requests_refused: Family<ReasonLabels, Counter>,
    /// See [`names::ROWS_WRITTEN`].
    pub rows_written: Family<TableLabels, Counter>,
    /// See [`names::WRITE_FAILURES`].
    pub write_failures: Family<ReasonLabels, Counter>,
    /// See [`names::TEXT_TRUNCATED`].
    pub text_truncated: Family<ColumnLabels, Counter>,
    /// See [`names::BATCH_WRITE_DURATION`].
    pub batch_write_duration: Histogram,
    /// See [`names::DATABASE_UP`].
    pub database_up: Gauge,
    /// See [`names::SCHEMA_OK`].
    pub schema_ok: Gauge,
    /// See [`names::LAST_WRITE`].
    pub last_write: Gauge<f64, AtomicU64>,
    /// See [`names::SPOOL_RECORDS`].
    pub spool_records: Gauge,
    /// See [`names::SPOOL_BYTES`].
    pub spool_bytes: Gauge,
    /// See [`names::SPOOL_CAPACITY`].
    pub spool_capacity: Gauge,
    /// See [`names::SPOOL_QUARANTINED`].
    pub spool_quarantined: Counter,
    /// See [`names::DEAD_LETTERS`].
    pub dead_letters: Family<TableLabels, Counter>,
    /// See [`names::DEAD_LETTERS_LOST`].
    pub dead_letters_lost: Counter,
    /// See [`names::EVENTS_WRITTEN`].
    pub events_written: Counter,
    /// See [`names::RECORDS_DROPPED`].
    pub records_dropped: Family<ReasonLabels, Counter>,
    /// See [`names::EVENTS`].
    pub events: Family<EventLabels, Counter>,
    /// See [`names::SERVICE_LAST_SEEN`].
    pub service_last_seen: Family<ServiceLabels, Gauge<f64, AtomicU64>>,
    /// See [`names::HEARTBEAT_LAST_WRITTEN`].
    pub heartbeat_last_written: Gauge<f64, AtomicU64>,
    /// See [`names::HEARTBEAT_AGE`]; computed at each scrape.
    pub heartbeat_age: Gauge<f64, AtomicU64>,
    /// When the collector started (the heartbeat age before the first heartbeat).
    started: std::time::SystemTime,
    /// Label values already given their own series, to keep the bounds.
    seen: std::sync::Mutex<SeenLabels>,
    /// Read at each scrape for the spool gauges.
    spool: std::sync::OnceLock<crate::spool::Spool>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(NAMESPACE);
        let m = Metrics {
            records_received: Family::default(),
            records_accepted: Family::default(),
            records_rejected: Family::default(),
            records_refused: Family::default(),
            requests_refused: Family::default(),
            rows_written: Family::default(),
            write_failures: Family::default(),
            text_truncated: Family::default(),
            batch_write_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            database_up: Gauge::default(),
            schema_ok: Gauge::default(),
            last_write: Gauge::default(),
            spool_records: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_capacity: Gauge::default(),
            spool_quarantined: Counter::default(),
            dead_letters: Family::default(),
            dead_letters_lost: Counter::default(),
            events_written: Counter::default(),
            records_dropped: Family::default(),
            events: Family::default(),
            service_last_seen: Family::default(),
            heartbeat_last_written: Gauge::default(),
            heartbeat_age: Gauge::default(),
            started: std::time::SystemTime::now(),
            seen: std::sync::Mutex::default(),
            spool: std::sync::OnceLock::new(),
            registry: Registry::default(),
        };
        registry.register(
            names::RECORDS_RECEIVED,
            "Records that arrived, valid or not",
            m.records_received.clone(),
        );
        registry.register(
            names::RECORDS_ACCEPTED,
            "Valid records acknowledged (on disk in the spool)",
            m.records_accepted.clone(),
        );
        registry.register(
            names::RECORDS_REJECTED,
            "Invalid records refused on their own (partial success)",
            m.records_rejected.clone(),
        );
        registry.register(
            names::RECORDS_REFUSED,
            "Records of requests refused as a whole",
            m.records_refused.clone(),
        );
        registry.register(
            names::REQUESTS_REFUSED,
            "Requests refused before their records were counted",
            m.requests_refused.clone(),
        );
        registry.register(
            names::ROWS_WRITTEN,
            "Rows committed, by table (a repeated event is a no-op that counts again)",
            m.rows_written.clone(),
        );
        registry.register(
            names::WRITE_FAILURES,
            "Failed batch writes, by reason",
            m.write_failures.clone(),
        );
        registry.register(
            names::TEXT_TRUNCATED,
            "Text values cut to their column's width",
            m.text_truncated.clone(),
        );
        registry.register(
            names::BATCH_WRITE_DURATION,
            "Time to write one batch",
            m.batch_write_duration.clone(),
        );
        registry.register(
            names::DATABASE_UP,
            "1 while the last database contact succeeded",
            m.database_up.clone(),
        );
        registry.register(
            names::SCHEMA_OK,
            "1 while the schema check passes",
            m.schema_ok.clone(),
        );
        registry.register(
            names::LAST_WRITE,
            "Unix time of the last successful batch write",
            m.last_write.clone(),
        );
        registry.register(
            names::SPOOL_RECORDS,
            "Requests in the spool, not yet in the database",
            m.spool_records.clone(),
        );
        registry.register(
            names::SPOOL_BYTES,
            "Bytes in the spool, not yet in the database",
            m.spool_bytes.clone(),
        );
        registry.register(
            names::SPOOL_CAPACITY,
            "The spool's cap in bytes",
            m.spool_capacity.clone(),
        );
        registry.register(
            names::SPOOL_QUARANTINED,
            "Corrupt spool segments copied to quarantine at start",
            m.spool_quarantined.clone(),
        );
        registry.register(
            names::DEAD_LETTERS,
            "Rows refused by the database for good, kept as dead letters",
            m.dead_letters.clone(),
        );
        registry.register(
            names::DEAD_LETTERS_LOST,
            "Dead letters kept neither in the table nor in the file",
            m.dead_letters_lost.clone(),
        );
        registry.register(
            names::EVENTS_WRITTEN,
            "Events committed to the database (repeats count again)",
            m.events_written.clone(),
        );
        registry.register(
            names::RECORDS_DROPPED,
            "Accepted records lost after acknowledgement, by reason (must stay 0)",
            m.records_dropped.clone(),
        );
        registry.register(
            names::EVENTS,
            "Accepted events by service and event name (bounded, overflow in other)",
            m.events.clone(),
        );
        registry.register(
            names::SERVICE_LAST_SEEN,
            "Unix time each service last sent events (bounded, overflow in other)",
            m.service_last_seen.clone(),
        );
        registry.register(
            names::HEARTBEAT_LAST_WRITTEN,
            "Unix time of the last heartbeat that reached the database",
            m.heartbeat_last_written.clone(),
        );
        registry.register(
            names::HEARTBEAT_AGE,
            "Seconds since the last heartbeat reached the database",
            m.heartbeat_age.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(names::BUILD_INFO, "Always 1; the version is a label", build);
        let m = Metrics { registry, ..m };
        m.start_known_series_at_zero();
        m
    }

    /// Creates every series whose labels are known up front, at zero, so dashboards and
    /// `increase()` alerts see the first event and a missing series never hides a problem.
    fn start_known_series_at_zero(&self) {
        use crate::catalog::MapError;
        use crate::event::DecodeError;
        use crate::spool::AppendError;
        use usage_tracker::catalog::tables;
        const SIGNALS: [&str; 2] = ["logs", "traces"];
        const TABLES: [&str; 5] = [
            tables::PAGE_VISITS,
            tables::IDE_SESSIONS,
            tables::PROGRAM_EXECUTIONS,
            tables::FEATURE_USAGE,
            tables::USAGE_EVENTS,
        ];
        for signal in SIGNALS {
            self.records_received
                .get_or_create(&SignalLabels { signal })
                .inc_by(0);
            self.records_accepted
                .get_or_create(&SignalLabels { signal })
                .inc_by(0);
            for reason in DecodeError::REASONS.into_iter().chain(MapError::REASONS) {
                self.records_rejected
                    .get_or_create(&SignalReasonLabels { signal, reason })
                    .inc_by(0);
            }
            for reason in AppendError::REASONS {
                self.records_refused
                    .get_or_create(&SignalReasonLabels { signal, reason })
                    .inc_by(0);
            }
        }
        self.requests_refused
            .get_or_create(&ReasonLabels {
                reason: "too_large",
            })
            .inc_by(0);
        for reason in crate::sink::error::REASONS {
            self.write_failures
                .get_or_create(&ReasonLabels { reason })
                .inc_by(0);
        }
        for reason in ["undecodable", "dead_letter_lost"] {
            self.records_dropped
                .get_or_create(&ReasonLabels { reason })
                .inc_by(0);
        }
        for table in TABLES {
            self.rows_written
                .get_or_create(&TableLabels { table })
                .inc_by(0);
            self.dead_letters
                .get_or_create(&TableLabels { table })
                .inc_by(0);
        }
    }

    /// Counts accepted events of `service` named `event`, and marks the service as seen now.
    /// Past the bounds, new services and event names are counted under `other`.
    pub fn count_events(&self, service: &str, event: &str, n: u64, now_unix_seconds: f64) {
        let (service, event) = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let (pairs, services) = &mut *seen;
            let service = if services.contains(service) || services.len() < MAX_SERVICES {
                services.insert(service.to_owned());
                service.to_owned()
            } else {
                OTHER.to_owned()
            };
            let pair = (service.clone(), event.to_owned());
            if pairs.contains(&pair) || pairs.len() < MAX_EVENT_SERIES {
                pairs.insert(pair.clone());
                pair
            } else {
                (service, OTHER.to_owned())
            }
        };
        self.service_last_seen
            .get_or_create(&ServiceLabels {
                service_name: service.clone(),
            })
            .set(now_unix_seconds);
        self.events
            .get_or_create(&EventLabels {
                service_name: service,
                event,
            })
            .inc_by(n);
    }

    /// Counts one failed write attempt.
    pub fn write_failed(&self, reason: &'static str) {
        self.write_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A heartbeat sent at `unix_seconds` reached the database.
    pub fn heartbeat_written(&self, unix_seconds: f64) {
        if unix_seconds > self.heartbeat_last_written.get() {
            self.heartbeat_last_written.set(unix_seconds);
        }
    }

    /// The spool whose depth the spool gauges show, read at each scrape.
    pub fn attach_spool(&self, spool: crate::spool::Spool) {
        self.spool_capacity
            .set(i64::try_from(spool.capacity()).unwrap_or(i64::MAX));
        if self.spool.set(spool).is_err() {
            tracing::debug!("spool already attached to the metrics");
        }
    }

    /// The exposition text (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let since = match self.heartbeat_last_written.get() {
            last if last > 0.0 => last,
            _ => self
                .started
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(now, |d| d.as_secs_f64()),
        };
        self.heartbeat_age.set((now - since).max(0.0));
        if let Some(spool) = self.spool.get() {
            let (records, bytes) = spool.depth();
            self.spool_records
                .set(i64::try_from(records).unwrap_or(i64::MAX));
            self.spool_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_series_are_bounded() {
        let m = Metrics::new();
        for i in 0..MAX_SERVICES + 5 {
            m.count_events(&format!("svc-{i}"), "page_visit", 1, 1.0);
        }
        let text = m.encode().unwrap();
        assert!(
            text.contains(
                "usage_collector_events_total{service_name=\"other\",event=\"page_visit\"} 5"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "usage_collector_service_last_seen_timestamp_seconds{service_name=\"svc-0\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn names_carry_the_namespace_and_counters_their_suffix() {
        let m = Metrics::new();
        m.rows_written
            .get_or_create(&TableLabels {
                table: "page_visits",
            })
            .inc_by(3);
        let text = m.encode().unwrap();
        assert!(
            text.contains("usage_collector_rows_written_total{table=\"page_visits\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("usage_collector_build_info{version=\""),
            "{text}"
        );
    }
}
