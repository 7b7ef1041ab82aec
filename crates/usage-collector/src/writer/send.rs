//! One attempt at writing one batch: the database call under the write timeout, and what a
//! success or a failure changes in the metrics and the readiness checks.
//!
//! Each attempt is a span, `write_batch` (exported with the collector's own traces, see
//! `telemetry::traces`): `events`, `rows` (event rows, sessions apart), `tables` (those the
//! batch writes to, comma-separated), `outcome` (`written` or `failed`), and for a failure its
//! `error.type` (the reason label of `usage_collector_write_failures_total`) and `retry_class`
//! (what the retry policy does about it: `retry`, `refused`, `suspect`; see `writer::retry`),
//! with an error status and the database's message. When it writes the events of one traced
//! request (whose client sent `traceparent`), it is that request's receive span's child, in the
//! app's trace; when it writes those of several, it has a trace of its own and links to each.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::TraceContextExt;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::retry::{Decision, decide};
use crate::catalog::{Catalog, Current, Mapped, RowBatch};
use crate::health::metrics::TableLabels;
use crate::health::{Check, Health, Metrics};
use crate::sink::{Sink, SinkError};
use crate::telemetry::traces::TRACED;

/// Sends batches to the sink.
#[derive(Debug, Clone)]
pub struct Sender {
    sink: Sink,
    metrics: Arc<Metrics>,
    health: Health,
    /// Longest a batch's transaction may take before it counts as failed (a hung database).
    timeout: Duration,
    /// Testing only: writes left that panic.
    panics: Arc<std::sync::atomic::AtomicU32>,
}

/// The events of a batch by service (a batch holds a few services: a list beats a map).
fn per_service(events: &[Mapped]) -> Vec<(&str, u64)> {
    let mut counts: Vec<(&str, u64)> = Vec::new();
    for event in events {
        let service = match (&event.row, &event.session) {
            (Some((_, row)), _) => match row.get(1) {
                Some(crate::catalog::Value::Text(service)) => service.as_str(),
                _ => continue,
            },
            (None, Some((_, session))) => session.service.as_str(),
            (None, None) => continue,
        };
        match counts.iter_mut().find(|(s, _)| *s == service) {
            Some((_, n)) => *n += 1,
            None => counts.push((service, 1)),
        }
    }
    counts
}

/// The tables a batch writes to, comma-separated, for its span.
fn tables_of(catalog: &Catalog, batch: &RowBatch<'_>) -> String {
    let mut names: Vec<&str> = batch
        .tables()
        .filter_map(|(id, _)| catalog.tables().get(id).map(|table| table.name))
        .collect();
    if !batch.sessions.is_empty() {
        names.push(usage_tracker::catalog::tables::IDE_SESSIONS);
    }
    names.join(",")
}

/// The retry policy's class of a failure, as the span names it.
fn retry_class(error: &SinkError) -> &'static str {
    match decide(error.kind) {
        Decision::Retry => "retry",
        Decision::Refused => "refused",
        Decision::Suspect => "suspect",
        Decision::Split => "split",
    }
}

/// The span of one write attempt: the child of the receive span of the traced request whose
/// events it writes, or linked to each when they are several.
fn write_span(catalog: &Catalog, batch: &RowBatch<'_>, events: &[Mapped]) -> tracing::Span {
    let span = tracing::info_span!(
        "write_batch",
        otel.kind = "client",
        // OpenTelemetry attributes have no unsigned integers: as i64, or they become text.
        events = batch.events as i64,
        rows = batch.row_count() as i64,
        tables = tables_of(catalog, batch),
        outcome = Empty,
        error.type = Empty,
        retry_class = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    let received = TRACED.spans_of(events.iter().map(|event| &event.id));
    if let [one] = received.as_slice() {
        // The events of one request: the write continues its trace. Fails only when the span
        // is not exported: nothing to parent then.
        let _ =
            span.set_parent(opentelemetry::Context::new().with_remote_span_context(one.clone()));
    } else {
        // Several: one trace cannot hold them all, so the write has its own and links to each.
        for link in received {
            span.add_link(link);
        }
    }
    span
}

impl Sender {
    /// A sender writing to `sink`, giving each batch at most `timeout`.
    pub fn new(sink: Sink, metrics: Arc<Metrics>, health: Health, timeout: Duration) -> Self {
        Self {
            sink,
            metrics,
            health,
            timeout,
            panics: Arc::default(),
        }
    }

    /// Testing only: the next `n` writes panic.
    pub fn with_test_panics(self, n: u32) -> Self {
        self.panics.store(n, std::sync::atomic::Ordering::SeqCst);
        self
    }

    /// The catalogue in force.
    pub fn catalog(&self) -> &Current {
        self.sink.current()
    }

    /// The sink.
    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// Writes `events`, mapped by `catalog`, in one transaction, once. A failure is counted by
    /// reason; what to do about it is the retry policy's business.
    pub async fn send(&self, catalog: &Catalog, events: &[Mapped]) -> Result<(), SinkError> {
        use std::sync::atomic::Ordering;
        if self.panics.load(Ordering::SeqCst) > 0
            && self
                .panics
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            panic!("test fault: a batch write panics (--test-writer-panics)");
        }
        let batch = RowBatch::of(catalog.tables().len(), events);
        let started = std::time::Instant::now();
        let span = write_span(catalog, &batch, events);
        let began = self.sink.moves();
        let write =
            tracing::Instrument::instrument(self.sink.write_in(catalog, &batch), span.clone());
        let result = match tokio::time::timeout(self.timeout, write).await {
            Ok(result) => result,
            Err(_) => {
                let error = SinkError::timed_out("the batch's transaction", self.timeout);
                // A node that hangs: with several hosts, the next attempt goes to another.
                self.sink.after_failure(began, &error);
                Err(error)
            }
        };
        match result {
            Ok(written) => {
                span.record("outcome", "written");
                TRACED.forget(events.iter().map(|event| &event.id));
                self.metrics
                    .batch_write_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
                for (table, rows) in &written.rows {
                    self.metrics
                        .rows_written
                        .get_or_create(&TableLabels { table })
                        .inc_by(*rows);
                }
                if written.sessions > 0 {
                    self.metrics
                        .rows_written
                        .get_or_create(&TableLabels {
                            table: usage_tracker::catalog::tables::IDE_SESSIONS,
                        })
                        .inc_by(written.sessions);
                }
                self.metrics.events_written.inc_by(events.len() as u64);
                for (service, n) in per_service(events) {
                    self.metrics.last_minute.written(service, n);
                }
                self.metrics.database_up.set(1);
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                self.metrics
                    .last_write_timestamp_seconds
                    .set(now.as_secs_f64());
                self.health.set_database(Check::Ok);
                self.health.set_writer(Check::Ok);
                tracing::debug!(
                    events = batch.events,
                    sessions = written.sessions,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "batch written"
                );
                Ok(())
            }
            Err(error) => {
                span.record("outcome", "failed");
                span.record("error.type", error.reason);
                span.record("retry_class", retry_class(&error));
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", error.message.as_str());
                self.metrics.write_failed(error.reason);
                Err(error)
            }
        }
    }

    /// Moves the heartbeat rows forward. A failure is logged and counted but never holds up
    /// the events: the heartbeat's age on `/metrics` is what shows it.
    pub async fn send_heartbeats(&self, heartbeats: &[(String, u64)]) {
        for (instance, at) in heartbeats {
            let Some(time) =
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(*at / 1000 * 1000))
                    .ok()
                    .map(|t| time::PrimitiveDateTime::new(t.date(), t.time()))
            else {
                continue;
            };
            let write = self.sink.write_heartbeat(instance, time);
            let result = match tokio::time::timeout(self.timeout, write).await {
                Ok(result) => result,
                Err(_) => Err(SinkError::timed_out("the heartbeat write", self.timeout)),
            };
            match result {
                Ok(()) => self.metrics.heartbeat_written(*at as f64 / 1e9),
                Err(error) => {
                    self.metrics.write_failed(error.reason);
                    tracing::warn!(instance, error = %error.message, "heartbeat write failed");
                }
            }
        }
    }
}
