//! Every metric the collector exports, declared once, here: its name is the field's name
//! (with the `usage_collector_` prefix; counters gain `_total` on exposition), its help text the
//! field's doc comment, its type the field's type.
//!
//! Labels are low-cardinality: signal, reason, table, column — never an error message. The two
//! labels a client chooses (its `service.name` and event names) are cut to
//! [`MAX_LABEL_BYTES`] and bounded in number; past the bound they count under `other`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;

use super::series::label_sets;
pub use super::series::{Counter, Family, FloatGauge, Gauge, Histogram, Point, Sample, Series};

/// The prefix of every metric name.
pub const NAMESPACE: &str = "usage_collector";

label_sets! {
    /// Labels: the OTLP signal.
    SignalLabels {
        /// `logs` or `traces`.
        signal: &'static str,
    }
    /// Labels: signal and reason.
    SignalReasonLabels {
        /// `logs` or `traces`.
        signal: &'static str,
        /// Why, as a short fixed word.
        reason: &'static str,
    }
    /// Labels: reason.
    ReasonLabels {
        /// Why, as a short fixed word.
        reason: &'static str,
    }
    /// Labels: table.
    TableLabels {
        /// Table name.
        table: &'static str,
    }
    /// Labels: table and column.
    ColumnLabels {
        /// Table name.
        table: &'static str,
        /// Column name.
        column: &'static str,
    }
    /// Labels: service and event name, as the client sent them (cut and bounded).
    EventLabels {
        /// `service.name` of the sender (not `service`, which the Prometheus Operator sets on
        /// every target).
        service_name: String,
        /// Event name.
        event: String,
    }
    /// Labels: service, as the client sent it (cut and bounded).
    ServiceLabels {
        /// `service.name` of the sender.
        service_name: String,
    }
    /// Labels: service (cut and bounded) and signal.
    ServiceSignalLabels {
        /// `service.name` of the sender.
        service_name: String,
        /// `logs` or `traces`.
        signal: &'static str,
    }
    /// Labels: service and event name (cut and bounded), and reason.
    EventReasonLabels {
        /// `service.name` of the sender.
        service_name: String,
        /// Event name.
        event: String,
        /// Why, as a short fixed word.
        reason: &'static str,
    }
    /// Labels: an OTLP/HTTP answer.
    HttpLabels {
        /// `logs`, `traces`, `metrics`, or `other` (any other path).
        signal: &'static str,
        /// The HTTP status code, such as `200` or `429`.
        code: &'static str,
    }
    /// Labels: listener.
    ListenerLabels {
        /// `otlp` (gRPC), `otlp_http` or `admin`.
        listener: &'static str,
    }
    /// Labels: listener and reason.
    ListenerReasonLabels {
        /// `otlp` (gRPC), `otlp_http` or `admin`.
        listener: &'static str,
        /// Why, as a short fixed word.
        reason: &'static str,
    }
    /// Labels: a database host.
    HostLabels {
        /// `host:port`, as the database URL names it.
        host: String,
    }
    /// Labels: version.
    BuildLabels {
        /// The collector's version.
        version: &'static str,
    }
}

/// Most (service, event) pairs with their own series; the rest count as `other`.
pub const MAX_EVENT_SERIES: usize = 200;
/// Most services with their own last-seen series; the rest count as `other`.
pub const MAX_SERVICES: usize = 50;
/// Longest label value taken from a client, in bytes (cut at a character boundary).
pub const MAX_LABEL_BYTES: usize = 64;
/// The label value that stands for everything past a bound.
pub const OTHER: &str = "other";

/// Upper bounds of the batch-write-time buckets, in seconds (1 ms to ~8 s).
fn batch_time_buckets() -> Histogram {
    Histogram::new((0..14).map(|i| 0.001 * 2f64.powi(i)))
}

/// A metric's exposed name: the namespace and the field's name, except for the standard
/// `process_*` metrics every Prometheus client exports under their own names.
fn full_name(field: &str) -> String {
    if field.starts_with("process_") {
        field.to_owned()
    } else {
        format!("{NAMESPACE}_{field}")
    }
}

/// A metric's help text from its doc comment (the exposition adds its own full stop).
fn help(doc: &'static str) -> &'static str {
    doc.trim().trim_end_matches('.')
}

/// Declares the metrics: the struct of handles, their registration and their snapshot.
macro_rules! metrics {
    ($( $(#[doc = $doc:literal])+ $name:ident : $ty:ty = $init:expr; )+) => {
        /// Handles to every metric, and the registry that exposes them.
        pub struct Metrics {
            $( $(#[doc = $doc])+ pub $name: $ty, )+
            /// When the collector started (the heartbeat age before the first heartbeat).
            started: SystemTime,
            /// Label values already given their own series, to keep the bounds.
            seen: Mutex<SeenLabels>,
            /// Read at each scrape for the spool gauges.
            spool: OnceLock<SpoolGauge>,
            /// Read at each scrape for the database host gauge and the failover count.
            database: OnceLock<DatabaseGauge>,
            /// Failovers already added to the counter (concurrent scrapes add each once).
            failovers_counted: std::sync::atomic::AtomicU64,
            /// Per-service counts of the last minute (for `usage-collector status`, not exposed
            /// as a metric: the counters above hold the totals).
            pub last_minute: super::window::LastMinute,
            registry: Registry,
        }

        impl Metrics {
            /// Creates and registers every metric.
            pub fn new() -> Self {
                let mut registry = Registry::default();
                $( let $name: $ty = $init;
                   registry.register(full_name(stringify!($name)), help(concat!($($doc),+)), $name.clone()); )+
                Metrics {
                    $( $name, )+
                    started: SystemTime::now(),
                    seen: Mutex::default(),
                    spool: OnceLock::new(),
                    database: OnceLock::new(),
                    failovers_counted: Default::default(),
                    last_minute: super::window::LastMinute::default(),
                    registry,
                }
            }

            /// Every metric's current values, for the OTLP push: (full name, help, samples).
            pub fn snapshot(&self) -> Vec<(String, &'static str, Vec<Sample>)> {
                self.refresh();
                let mut out = Vec::new();
                $( {
                    let mut samples = Vec::new();
                    self.$name.samples(&mut samples);
                    out.push((full_name(stringify!($name)), help(concat!($($doc),+)), samples));
                } )+
                out
            }
        }
    };
}

metrics! {
    /// Records that arrived, valid or not.
    records_received: Family<SignalLabels, Counter> = Family::default();
    /// Valid records acknowledged: on disk in the spool, to be written exactly once.
    records_accepted: Family<SignalLabels, Counter> = Family::default();
    /// Invalid records refused on their own, reported to the client as partial success.
    records_rejected: Family<SignalReasonLabels, Counter> = Family::default();
    /// Records of whole requests refused with a retryable or final status.
    records_refused: Family<SignalReasonLabels, Counter> = Family::default();
    /// Requests refused before their records were counted (too large, malformed, no room in the
    /// in-flight budget for their bytes, and OTLP/HTTP's own refusals), by reason.
    requests_refused: Family<ReasonLabels, Counter> = Family::default();
    /// OTLP/HTTP requests answered, by signal and HTTP status code.
    http_requests: Family<HttpLabels, Counter> = Family::default();
    /// Rows committed, by table (a repeated event is a no-op that counts again).
    rows_written: Family<TableLabels, Counter> = Family::default();
    /// Failed batch write attempts, by reason.
    write_failures: Family<ReasonLabels, Counter> = Family::default();
    /// Text values cut to their column's width.
    text_truncated: Family<ColumnLabels, Counter> = Family::default();
    /// Time to write one batch.
    batch_write_duration_seconds: Histogram = batch_time_buckets();
    /// 1 while the last database contact succeeded.
    database_up: Gauge = Gauge::default();
    /// 1 while the schema check passes.
    schema_ok: Gauge = Gauge::default();
    /// 1 for the host of the database URL the collector writes to, 0 for its other hosts.
    database_host: Family<HostLabels, Gauge> = Family::default();
    /// Times the collector moved to the next host of the database URL because the node in
    /// use failed or left the cluster.
    database_failovers: Counter = Counter::default();
    /// Unix time of the last successful batch write.
    last_write_timestamp_seconds: FloatGauge = FloatGauge::default();
    /// Requests (spool records) in the spool, not yet in the database.
    spool_requests: Gauge = Gauge::default();
    /// Bytes in the spool, not yet in the database.
    spool_bytes: Gauge = Gauge::default();
    /// The spool's cap in bytes.
    spool_capacity_bytes: Gauge = Gauge::default();
    /// Corrupt spool segments copied to quarantine at start.
    spool_quarantined_segments: Counter = Counter::default();
    /// Rows refused by the database for good, kept as dead letters, by table.
    dead_letters: Family<TableLabels, Counter> = Family::default();
    /// Rows deleted by the retention sweep, by table.
    rows_deleted: Family<TableLabels, Counter> = Family::default();
    /// Dead letters kept neither in the table nor in the file (only logged).
    dead_letters_lost: Counter = Counter::default();
    /// Times the writer was started again after a failure (a panic).
    writer_restarts: Counter = Counter::default();
    /// Events committed to the database (repeats count again).
    events_written: Counter = Counter::default();
    /// Accepted records lost after acknowledgement, by reason (must stay 0).
    records_dropped: Family<ReasonLabels, Counter> = Family::default();
    /// Accepted events by service and event name (bounded, overflow in other).
    events: Family<EventLabels, Counter> = Family::default();
    /// Events refused for their attributes (missing, mistyped, out of range), by service,
    /// event name (bounded, overflow in other) and reason; the sender hears it as partial
    /// success.
    events_refused: Family<EventReasonLabels, Counter> = Family::default();
    /// Records that are not usage events (an app's own spans and logs: no event name, not in
    /// the tracking plan, not under the `usage` scope), by service and signal; refused, unless
    /// `catalog.non_usage_records = store`.
    records_not_usage: Family<ServiceSignalLabels, Counter> = Family::default();
    /// Times the tracking plan file was read again and is now in force.
    catalog_reloads: Counter = Counter::default();
    /// Times the tracking plan file changed but could not be used (the plan before stays in
    /// force).
    catalog_reload_failures: Counter = Counter::default();
    /// Unix time each service last sent events (bounded, overflow in other).
    service_last_seen_timestamp_seconds: Family<ServiceLabels, FloatGauge> = Family::default();
    /// Unix time of the last heartbeat that reached the database.
    heartbeat_last_written_timestamp_seconds: FloatGauge = FloatGauge::default();
    /// Seconds since the last heartbeat reached the database (since start, before the first).
    heartbeat_age_seconds: FloatGauge = FloatGauge::default();
    /// TLS certificate and key files read again after a change and now in force, by listener.
    tls_reloads: Family<ListenerLabels, Counter> = Family::default();
    /// TLS files that changed but cannot be used (the certificate before stays in force).
    tls_reload_failures: Family<ListenerLabels, Counter> = Family::default();
    /// TLS handshakes that failed or timed out (plaintext to a TLS port, an untrusted client
    /// certificate), by listener and reason; the connection is closed.
    tls_handshake_failures: Family<ListenerReasonLabels, Counter> = Family::default();
    /// Always 1; the version is a label.
    build_info: Family<BuildLabels, Gauge> = Family::default();
    /// CPU time the collector has used, in seconds.
    process_cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
    /// Resident memory, in bytes.
    process_resident_memory_bytes: Gauge = Gauge::default();
    /// Open file descriptors (sockets, spool segments).
    process_open_fds: Gauge = Gauge::default();
    /// When the collector started, in seconds since the Unix epoch.
    process_start_time_seconds: FloatGauge = FloatGauge::default();
}

/// (service, event) pairs and services that have their own series.
type SeenLabels = (HashSet<(String, String)>, HashSet<String>);

/// The spool's depth at this moment: (requests, bytes), read at each scrape.
pub type SpoolGauge = Arc<dyn Fn() -> (u64, u64) + Send + Sync>;

/// The database's hosts at this moment, read at each scrape.
pub type DatabaseGauge = Arc<dyn Fn() -> DatabaseHosts + Send + Sync>;

/// The hosts a database URL names and which is in use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseHosts {
    /// `host:port` of each, in the URL's order.
    pub hosts: Vec<String>,
    /// The one in use (an index into `hosts`).
    pub current: usize,
    /// Moves to another host so far.
    pub failovers: u64,
}

/// Label values the collector's stages know up front, so their series start at zero.
#[derive(Debug, Clone, Copy, Default)]
pub struct KnownLabels<'a> {
    /// OTLP signals.
    pub signals: &'a [&'static str],
    /// Reasons a record is rejected on its own.
    pub rejected: &'a [&'static str],
    /// Reasons a whole request's records are refused.
    pub refused: &'a [&'static str],
    /// Reasons a request is refused before decoding.
    pub requests_refused: &'a [&'static str],
    /// Reasons a batch write fails.
    pub write_failures: &'a [&'static str],
    /// Reasons an accepted record is lost.
    pub dropped: &'a [&'static str],
    /// Tables written.
    pub tables: &'a [&'static str],
    /// (table, column) of every text column, which a value may be cut to fit.
    pub text_columns: &'a [(&'static str, &'static str)],
    /// Tables the retention sweep deletes from.
    pub retained: &'a [&'static str],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// `value` cut to at most `max` bytes, at a character boundary.
pub fn bounded(value: &str, max: usize) -> &str {
    if value.len() <= max {
        return value;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Metrics {
    /// Creates every series whose labels are known up front, at zero, so dashboards and
    /// `increase()` alerts see the first event and a missing series never hides a problem.
    pub fn start_at_zero(&self, known: &KnownLabels<'_>) {
        self.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        for &signal in known.signals {
            self.records_received
                .get_or_create(&SignalLabels { signal });
            self.records_accepted
                .get_or_create(&SignalLabels { signal });
            for &reason in known.rejected {
                self.records_rejected
                    .get_or_create(&SignalReasonLabels { signal, reason });
            }
            for &reason in known.refused {
                self.records_refused
                    .get_or_create(&SignalReasonLabels { signal, reason });
            }
        }
        for &reason in known.requests_refused {
            self.requests_refused
                .get_or_create(&ReasonLabels { reason });
        }
        for &reason in known.write_failures {
            self.write_failures.get_or_create(&ReasonLabels { reason });
        }
        for &reason in known.dropped {
            self.records_dropped.get_or_create(&ReasonLabels { reason });
        }
        for &table in known.tables {
            self.rows_written.get_or_create(&TableLabels { table });
            self.dead_letters.get_or_create(&TableLabels { table });
        }
        for &table in known.retained {
            self.rows_deleted.get_or_create(&TableLabels { table });
        }
        for &(table, column) in known.text_columns {
            self.text_truncated
                .get_or_create(&ColumnLabels { table, column });
        }
    }

    /// `service` and `event` as label values: cut to [`MAX_LABEL_BYTES`], and past the bounds
    /// `other` (a new service, or a new pair).
    fn bounded_pair(&self, service: &str, event: &str) -> (String, String) {
        let (service, event) = (
            bounded(service, MAX_LABEL_BYTES),
            bounded(event, MAX_LABEL_BYTES),
        );
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
    }

    /// Counts `n` records of `service` that are not usage events.
    pub fn count_not_usage(&self, service: &str, signal: &'static str, n: u64) {
        self.last_minute.not_usage(service, n);
        let (service_name, _) = self.bounded_pair(service, "");
        self.records_not_usage
            .get_or_create(&ServiceSignalLabels {
                service_name,
                signal,
            })
            .inc_by(n);
    }

    /// Counts `n` events of `service` named `event` refused for `reason`.
    pub fn count_refused_events(&self, service: &str, event: &str, reason: &'static str, n: u64) {
        let (service_name, event) = self.bounded_pair(service, event);
        self.events_refused
            .get_or_create(&EventReasonLabels {
                service_name,
                event,
                reason,
            })
            .inc_by(n);
    }

    /// Counts accepted events of `service` named `event`, and marks the service as seen now.
    /// Both values are cut to [`MAX_LABEL_BYTES`]; past the bounds, new services and event
    /// names are counted under `other`.
    pub fn count_events(&self, service: &str, event: &str, n: u64, now_unix_seconds: f64) {
        let (service, event) = self.bounded_pair(service, event);
        self.service_last_seen_timestamp_seconds
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
        if unix_seconds > self.heartbeat_last_written_timestamp_seconds.get() {
            self.heartbeat_last_written_timestamp_seconds
                .set(unix_seconds);
        }
    }

    /// Where the spool gauges read the spool's depth at each scrape, and its cap.
    pub fn attach_spool(&self, capacity: u64, depth: SpoolGauge) {
        self.spool_capacity_bytes
            .set(i64::try_from(capacity).unwrap_or(i64::MAX));
        if self.spool.set(depth).is_err() {
            tracing::debug!("spool already attached to the metrics");
        }
    }

    /// Where the database gauges read the hosts and the one in use at each scrape.
    pub fn attach_database(&self, hosts: DatabaseGauge) {
        if self.database.set(hosts).is_err() {
            tracing::debug!("database already attached to the metrics");
        }
        self.refresh_database();
    }

    /// The host gauge and the failover count, from the sink's own state (so the count and
    /// the log line of each move come from one place and cannot drift apart).
    fn refresh_database(&self) {
        let Some(read) = self.database.get() else {
            return;
        };
        let now = read();
        for (i, host) in now.hosts.iter().enumerate() {
            self.database_host
                .get_or_create(&HostLabels { host: host.clone() })
                .set(i64::from(i == now.current));
        }
        let counted = self
            .failovers_counted
            .fetch_max(now.failovers, std::sync::atomic::Ordering::SeqCst);
        if now.failovers > counted {
            self.database_failovers.inc_by(now.failovers - counted);
        }
    }

    /// Brings the gauges computed at read time up to date (heartbeat age, spool depth, the
    /// database host, the process's own figures).
    fn refresh(&self) {
        self.refresh_process();
        self.refresh_database();
        let now = unix_now();
        let since = match self.heartbeat_last_written_timestamp_seconds.get() {
            last if last > 0.0 => last,
            _ => self
                .started
                .duration_since(UNIX_EPOCH)
                .map_or(now, |d| d.as_secs_f64()),
        };
        self.heartbeat_age_seconds.set((now - since).max(0.0));
        if let Some(depth) = self.spool.get() {
            let (records, bytes) = depth();
            self.spool_requests
                .set(i64::try_from(records).unwrap_or(i64::MAX));
            self.spool_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// The process's CPU time, memory and open files, from Linux's `/proc/self` (left as they
    /// are where it cannot be read).
    fn refresh_process(&self) {
        /// Clock ticks per second of `/proc/self/stat`'s CPU times, and bytes per page of
        /// `statm` (the values of every Linux the collector runs on).
        const TICKS: f64 = 100.0;
        const PAGE: i64 = 4096;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
            if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
                let total = (user + system) / TICKS;
                let seen = self.process_cpu_seconds.get();
                if total > seen {
                    self.process_cpu_seconds.inc_by(total - seen);
                }
            }
        }
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|m| m.split_whitespace().nth(1)?.parse::<i64>().ok())
        {
            self.process_resident_memory_bytes.set(pages * PAGE);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.process_open_fds
                .set(i64::try_from(fds.count()).unwrap_or(i64::MAX));
        }
        if self.process_start_time_seconds.get() == 0.0 {
            self.process_start_time_seconds.set(
                self.started
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
            );
        }
    }

    /// The exposition text in the OpenMetrics format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.refresh();
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The exposition text in the Prometheus text format (version 0.0.4), for scrapers that
    /// ask for it.
    pub fn encode_prometheus(&self) -> Result<String, std::fmt::Error> {
        self.refresh();
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_label_values_are_cut() {
        let m = Metrics::new();
        let long = "é".repeat(1000);
        m.count_events(&long, &long, 1, 1.0);
        let text = m.encode().unwrap();
        let cut = "é".repeat(MAX_LABEL_BYTES / 2);
        assert!(
            text.contains(&format!(
                "usage_collector_events_total{{service_name=\"{cut}\",event=\"{cut}\"}} 1"
            )),
            "{text}"
        );
        // Every metric's header, and the one series cut to its bound: not a thousand characters
        // twice over.
        assert!(text.len() < 12 * 1024, "{} bytes", text.len());
    }

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
        m.start_at_zero(&KnownLabels::default());
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
