//! The path every export request takes, whatever its transport: the shutdown gate, admission,
//! decoding and mapping on the decode threads (so a large request never stalls the runtime's
//! workers, `/health/live` or other clients), the spool append, the counts, and the answer.
//!
//! Each request runs in a span of its own, `receive_logs` or `receive_traces` (exported with the
//! collector's own traces, see `telemetry::traces`): `signal`, `transport`, `records`
//! (received), `accepted`, `rejected`, `outcome` (`ok`; `rejected`: answered with partial
//! success; `refused`: the whole request refused, with an error status and the message) and
//! `code`, the gRPC status code the client heard (OTLP/HTTP answers carry the same code in
//! their body). A request whose client sent `traceparent` is a child of the client's span.

use std::sync::Arc;

use opentelemetry::trace::TraceContextExt;
use prost::bytes::Bytes;
use tonic::{Code, Status};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::admission::{Admission, Reserved, retryable};
use super::auth::Allowed;
use super::shape::{Shape, Violation};
use crate::catalog::convert::{Converted, Skip};
use crate::catalog::{Catalog, Current};
use crate::event::Signal;
use crate::event::wire::Malformed;
use crate::health::metrics::{ColumnLabels, ReasonLabels, SignalLabels, SignalReasonLabels};
use crate::health::{Check, Health, Metrics};
use crate::spool::cache::RowCache;
use crate::spool::{self, AppendError, Payload, Spool, SpoolSignal};
use crate::telemetry::traces::{TRACED, remote_parent};

/// Bytes a mapped event usually takes in a rows record (a page visit: ~300), so encoding a
/// request rarely grows its buffer.
const ROW_BYTES_GUESS: usize = 320;

/// What the client hears when not everything was taken: rejected count and message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Partial {
    /// Records refused on their own.
    pub rejected: i64,
    /// The first problem and how many others there were.
    pub message: String,
}

/// Where an export request came from, for its span.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// `grpc` or `http`.
    pub transport: &'static str,
    /// The client's span, when the request carried W3C `traceparent`.
    pub parent: Option<opentelemetry::Context>,
}

impl Caller {
    /// A request over `transport` with these headers (gRPC metadata or HTTP headers).
    pub fn of(transport: &'static str, headers: &http::HeaderMap) -> Self {
        Self {
            transport,
            parent: remote_parent(headers),
        }
    }
}

/// The span of one export request (see the module's notes).
#[derive(Debug)]
struct Receiving {
    span: tracing::Span,
    /// Its client sent `traceparent`: its events are handed to the writer's spans (see
    /// `telemetry::traces::TRACED`).
    traced: bool,
}

/// The span of one export request; the client's span is its parent.
fn receive_span(signal: Signal, caller: &Caller) -> tracing::Span {
    macro_rules! receive {
        ($name:literal) => {
            tracing::info_span!(
                $name,
                otel.kind = "server",
                signal = signal.as_str(),
                transport = caller.transport,
                records = Empty,
                accepted = Empty,
                rejected = Empty,
                outcome = Empty,
                code = Empty,
                otel.status_code = Empty,
                otel.status_description = Empty,
            )
        };
    }
    let span = match signal {
        Signal::Log => receive!("receive_logs"),
        Signal::Span => receive!("receive_traces"),
    };
    if let Some(parent) = &caller.parent {
        // Fails only when the span is not exported (no telemetry endpoint): nothing to parent.
        let _ = span.set_parent(parent.clone());
    }
    span
}

/// Records on a request's span what its client heard.
fn record_answer(span: &tracing::Span, answer: &Result<Partial, Status>) {
    match answer {
        Ok(partial) => {
            let outcome = if partial.rejected > 0 {
                "rejected"
            } else {
                "ok"
            };
            span.record("outcome", outcome);
            span.record("code", "Ok");
        }
        Err(status) => {
            span.record("outcome", "refused");
            span.record("code", tracing::field::debug(status.code()));
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", status.message());
        }
    }
}

/// Shared by the logs and traces services.
#[derive(Clone, Debug)]
pub struct Ingest {
    /// The table mapping in force, for validation.
    pub catalog: Current,
    /// Where accepted requests are made durable.
    pub spool: Spool,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Shutdown flag and checks.
    pub health: Health,
    /// Where mapped rows wait for the writer, so it need not decode them again.
    pub cache: Arc<RowCache>,
    /// The checks before decoding.
    pub admission: Admission,
    /// The threads that decode and map requests.
    pub decoders: super::decoders::Decoders,
    /// At most one log line a minute about records that are not usage events.
    pub non_usage_log: Arc<NonUsageLog>,
}

/// Says in the log, at most once a minute, that records which are not usage events arrive:
/// a site routing an app's whole trace pipeline to the collector sees it without a line per
/// request (the counts are in `usage_collector_records_not_usage_total`).
#[derive(Debug, Default)]
pub struct NonUsageLog {
    /// When the last line was written, and what arrived since.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl NonUsageLog {
    /// How often a line may be written.
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// Notes a request's records that are not usage events; logs when a minute has passed.
    pub fn note(&self, signal: Signal, converted: &Converted) {
        let n: u64 = converted.non_usage.values().sum();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 += n;
        let due = state.0.is_none_or(|last| last.elapsed() >= Self::EVERY);
        if !due {
            return;
        }
        let (since, total) = (state.0.replace(std::time::Instant::now()), state.1);
        state.1 = 0;
        drop(state);
        let services: Vec<&str> = converted.non_usage.keys().map(|s| &**s).collect();
        tracing::warn!(
            signal = signal.as_str(),
            records = total,
            since_last_line_secs = since.map(|s| s.elapsed().as_secs()),
            services = %services.join(","),
            example = converted.rejected.first.as_deref().unwrap_or_default(),
            non_usage_records = ?converted_setting(converted),
            "records that are not usage events arrive (an app's own spans or logs); they write \
             no row unless catalog.non_usage_records = store (see docs/usage-events.md)"
        );
    }
}

/// Whether the records were stored (a `non_usage` count without a rejection means `store`).
fn converted_setting(converted: &Converted) -> &'static str {
    if converted
        .rejected
        .by_reason
        .iter()
        .any(|(r, _)| *r == "not_a_usage_event")
    {
        "refuse"
    } else {
        "store"
    }
}

/// The records refused before decoding, by their position in the request.
#[derive(Debug)]
pub struct Violations<'a> {
    list: &'a [(usize, Violation)],
    next: usize,
}

impl<'a> Violations<'a> {
    /// Records refused per `shape` (its violations, sorted by position).
    pub fn new(shape: &'a Shape) -> Self {
        Self {
            list: &shape.violations,
            next: 0,
        }
    }
}

impl Skip for Violations<'_> {
    fn refused(&mut self, index: usize) -> Option<(&'static str, String)> {
        while self.list.get(self.next).is_some_and(|(i, _)| *i < index) {
            self.next += 1;
        }
        match self.list.get(self.next) {
            Some((i, violation)) if *i == index => {
                Some((violation.reason(), format!("refused: {violation}")))
            }
            _ => None,
        }
    }
}

/// A decoded request: its mapped events and the spool body that holds them.
struct Prepared {
    converted: Converted,
    body: Vec<u8>,
}

impl Ingest {
    /// Refuses a request before decoding it when the collector is shutting down.
    pub fn gate(&self, signal: Signal) -> Result<(), Status> {
        if !self.health.closing() {
            return Ok(());
        }
        self.metrics
            .records_refused
            .get_or_create(&SignalReasonLabels {
                signal: signal.as_str(),
                reason: "shutdown",
            })
            .inc();
        Err(retryable(
            Code::Unavailable,
            "the collector is shutting down; retry against another".to_owned(),
        ))
    }

    /// Handles one export request's bytes (already decompressed and within
    /// `max_request_bytes`) from `caller`, in a span of its own: gate, admission, decode and
    /// map off the runtime, spool, answer. `reserved` is the budget already held for the bytes
    /// (OTLP/HTTP), which admission turns into the request's decoded cost. `convert` reads the
    /// request's records in place, on a decode thread, while the bytes are held for it.
    pub async fn export<F>(
        &self,
        bytes: Bytes,
        signal: Signal,
        allowed: Allowed,
        caller: Caller,
        reserved: Option<Reserved>,
        convert: F,
    ) -> Result<Partial, Status>
    where
        F: for<'a> FnOnce(&'a [u8], &Catalog, u64, Violations<'a>) -> Result<Converted, Malformed>
            + Send
            + 'static,
    {
        let receiving = Receiving {
            span: receive_span(signal, &caller),
            traced: caller.parent.is_some(),
        };
        let answer = self
            .export_in_span(bytes, signal, allowed, reserved, convert, &receiving)
            .instrument(receiving.span.clone())
            .await;
        record_answer(&receiving.span, &answer);
        answer
    }

    /// [`Ingest::export`] inside the request's span.
    async fn export_in_span<F>(
        &self,
        bytes: Bytes,
        signal: Signal,
        allowed: Allowed,
        reserved: Option<Reserved>,
        convert: F,
        receiving: &Receiving,
    ) -> Result<Partial, Status>
    where
        F: for<'a> FnOnce(&'a [u8], &Catalog, u64, Violations<'a>) -> Result<Converted, Malformed>
            + Send
            + 'static,
    {
        self.gate(signal)?;
        let admitted = self.admission.admit(&bytes, signal, reserved).await?;
        let now = crate::event::now_unix_nano();
        let catalog = self.catalog.get();
        let generation = catalog.generation();
        // The budget goes with the work: if the client disconnects, its future (here) is
        // dropped, but the share is given back only when the decode thread is done with the
        // request (or skips it).
        let (admitted, prepared) = self
            .decoders
            .run(move || {
                let violations = Violations::new(&admitted.shape);
                let prepared = convert(&bytes, &catalog, now, violations)
                    .map_err(|e| {
                        Status::invalid_argument(format!(
                            "the request is not a valid OTLP export request: {e}"
                        ))
                    })
                    .map(|converted| {
                        let mut body = Vec::new();
                        if !converted.events.is_empty() {
                            body.reserve(converted.events.len() * ROW_BYTES_GUESS);
                            spool::rows::encode(&catalog, &converted.events, &mut body);
                        }
                        Prepared { converted, body }
                    });
                (admitted, prepared)
            })
            .await
            .map_err(|e| e.status())?;
        let prepared = prepared?;
        if let Some(service) = prepared
            .converted
            .services
            .iter()
            .find(|s| !allowed.permits(s))
        {
            self.metrics
                .requests_refused
                .get_or_create(&ReasonLabels {
                    reason: "permission_denied",
                })
                .inc();
            return Err(Status::permission_denied(format!(
                "this token may not write as service `{}`; nothing of the request was written",
                crate::health::metrics::bounded(service, 128)
            )));
        }
        // The budget is given back only once the request's memory is gone.
        let answer = self
            .accept(signal, now, generation, prepared, receiving)
            .await;
        drop(admitted);
        answer
    }

    /// Spools a decoded request's valid events; answers once they are on disk. The counts go on
    /// the request's span too.
    async fn accept(
        &self,
        signal: Signal,
        received_unix_nano: u64,
        generation: u64,
        prepared: Prepared,
        receiving: &Receiving,
    ) -> Result<Partial, Status> {
        let span = &receiving.span;
        let Prepared {
            mut converted,
            body,
        } = prepared;
        let labels = SignalLabels {
            signal: signal.as_str(),
        };
        let m = &self.metrics;
        m.records_received
            .get_or_create(&labels)
            .inc_by(converted.received);
        for (reason, n) in &converted.rejected.by_reason {
            m.records_rejected
                .get_or_create(&SignalReasonLabels {
                    signal: signal.as_str(),
                    reason,
                })
                .inc_by(*n);
        }
        for (service, n) in &converted.non_usage {
            m.count_not_usage(service, signal.as_str(), *n);
        }
        for ((service, event, reason), n) in &converted.refused_events {
            m.count_refused_events(service, event, reason, *n);
        }
        if !converted.non_usage.is_empty() {
            self.non_usage_log.note(signal, &converted);
        }
        if converted.rejected.count > 0 {
            tracing::debug!(
                signal = signal.as_str(),
                rejected = converted.rejected.count,
                first = converted.rejected.first.as_deref().unwrap_or_default(),
                "records rejected"
            );
        }
        let valid = converted.events.len() as u64;
        // OpenTelemetry attributes have no unsigned integers: as i64, or they become text.
        span.record("records", converted.received as i64);
        span.record("rejected", converted.rejected.count as i64);
        if valid > 0 {
            // Handed over before the append: the writer may take the events from the spool
            // as soon as they are on disk.
            if receiving.traced {
                TRACED.register(
                    converted.events.iter().map(|event| &event.id),
                    span.context().span().span_context(),
                );
            }
            let cost = body.len();
            let payload = Payload {
                signal: SpoolSignal::Rows,
                received_unix_nano,
                body: body.into(),
            };
            let position = match self.spool.append(payload).await {
                Ok(position) => {
                    self.health.set_spool_writes(Check::Ok);
                    position
                }
                Err(error) => {
                    if receiving.traced {
                        TRACED.forget(converted.events.iter().map(|event| &event.id));
                    }
                    if let AppendError::Io(why) = &error {
                        self.health.set_spool_writes(Check::Failed(why.clone()));
                    }
                    m.records_refused
                        .get_or_create(&SignalReasonLabels {
                            signal: signal.as_str(),
                            reason: error.reason(),
                        })
                        .inc_by(valid);
                    return Err(match error {
                        AppendError::TooLarge { .. } => {
                            tracing::debug!(error = %error, "request refused");
                            Status::resource_exhausted(format!("{error}; send smaller batches"))
                        }
                        AppendError::Full { .. } => {
                            retryable(Code::Unavailable, format!("{error}; retry later"))
                        }
                        AppendError::Io(_) | AppendError::Closed => {
                            tracing::error!(error = %error, "cannot spool a request; refused with a retryable status");
                            retryable(Code::Unavailable, format!("{error}; retry later"))
                        }
                    });
                }
            };
            for (table, column) in &converted.truncated {
                m.text_truncated
                    .get_or_create(&ColumnLabels { table, column })
                    .inc();
            }
            let now = received_unix_nano as f64 / 1e9;
            for ((service, event), n) in &converted.tally {
                m.count_events(service, event, *n, now);
                m.last_minute.accepted(service, *n);
            }
            self.cache.offer(
                position,
                generation,
                std::mem::take(&mut converted.events),
                cost,
            );
        }
        m.records_accepted.get_or_create(&labels).inc_by(valid);
        span.record("accepted", valid as i64);
        Ok(Partial {
            rejected: converted.rejected.count as i64,
            message: converted.rejected.message(),
        })
    }
}
