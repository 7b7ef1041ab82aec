//! The collector's own spans, exported over OTLP through `tracing-opentelemetry` under the
//! instrumentation scope [`SELF_SCOPE`]:
//!
//! - `receive_logs` / `receive_traces` (`receiver/ingest.rs`): one per export request that
//!   reaches the ingest path, with what it held and what the client heard; a child of the
//!   client's span when the request carries W3C `traceparent` ([`remote_parent`]);
//! - `write_batch` (`writer/send.rs`): one per attempt at writing a batch, with its tables and
//!   rows, and, when it fails, the reason and the retry class, with an error status.
//!
//! A request's events are written later, by the writer, after the spool: the two stages meet
//! only there. [`TRACED`] carries the receive span of a traced request (one whose client sent
//! `traceparent`) over to the writes of its events: a `write_batch` span that writes the events
//! of one such request is that receive span's child, so the app's export, the collector's
//! receive and its write are one trace in Jaeger; one that writes the events of several links
//! to each receive span (Jaeger shows them as `FOLLOWS_FROM` references).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

use super::SERVICE;
use crate::event::SELF_SCOPE;

/// A tracer provider exporting the collector's spans to `endpoint`, and the tracer to use.
pub fn tracer(
    endpoint: &str,
    instance: &str,
) -> Result<(SdkTracerProvider, opentelemetry_sdk::trace::SdkTracer), String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("cannot export traces to {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(SERVICE)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance.to_owned(),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer(SELF_SCOPE);
    Ok((provider, tracer))
}

/// A request's headers as the propagator reads them.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The client's span named by a request's W3C `traceparent` (and `tracestate`) header, or
/// `None` when it has none or an invalid one. gRPC metadata are HTTP/2 headers, so both
/// transports read it the same way.
pub fn remote_parent(headers: &http::HeaderMap) -> Option<opentelemetry::Context> {
    // Most requests carry none: skip the propagator's parsing for them.
    if !headers.contains_key("traceparent") {
        return None;
    }
    let context = TraceContextPropagator::new().extract(&Headers(headers));
    context.span().span_context().is_valid().then_some(context)
}

/// Events of traced requests held at once; past it the oldest are forgotten (their writes then
/// carry no link). About 80 bytes each: at most about 1.3 MiB.
const TRACED_EVENTS: usize = 16_384;
/// Links one `write_batch` span carries at most (a batch of many small traced requests).
pub const MAX_LINKS: usize = 32;

/// The receive spans of traced requests whose events are not yet written, by event id. See
/// the module's notes.
#[derive(Debug)]
pub struct Traced {
    /// Nothing held: the writer's check on every batch is one atomic load.
    empty: AtomicBool,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    by_event: HashMap<[u8; 16], SpanContext>,
    /// Insertion order, for forgetting the oldest (may name events written since).
    order: VecDeque<[u8; 16]>,
}

impl Default for Traced {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's hand-over from receive spans to write spans. Process-wide, as the tracing
/// subscriber that exports both is.
pub static TRACED: LazyLock<Traced> = LazyLock::new(Traced::new);

impl Traced {
    /// Holding nothing.
    pub fn new() -> Self {
        Self {
            empty: AtomicBool::new(true),
            held: Mutex::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that the events `ids` were received in the span `span` (ignored unless it is a
    /// valid, sampled span: an unsampled one is not exported, so nothing could link to it).
    pub fn register<'a>(&self, ids: impl Iterator<Item = &'a [u8; 16]>, span: &SpanContext) {
        if !span.is_valid() || !span.is_sampled() {
            return;
        }
        let mut held = self.held();
        for id in ids {
            if held.by_event.insert(*id, span.clone()).is_none() {
                held.order.push_back(*id);
            }
        }
        while held.order.len() > TRACED_EVENTS {
            if let Some(old) = held.order.pop_front() {
                held.by_event.remove(&old);
            }
        }
        self.empty
            .store(held.by_event.is_empty(), Ordering::Relaxed);
    }

    /// The distinct receive spans of the events `ids` (at most [`MAX_LINKS`]), in the order
    /// their events come.
    pub fn spans_of<'a>(&self, ids: impl Iterator<Item = &'a [u8; 16]>) -> Vec<SpanContext> {
        let mut spans: Vec<SpanContext> = Vec::new();
        if self.empty.load(Ordering::Relaxed) {
            return spans;
        }
        let held = self.held();
        for id in ids {
            if let Some(span) = held.by_event.get(id)
                && !spans.iter().any(|s| s.span_id() == span.span_id())
            {
                spans.push(span.clone());
                if spans.len() == MAX_LINKS {
                    break;
                }
            }
        }
        spans
    }

    /// Forgets the events `ids`, once written.
    pub fn forget<'a>(&self, ids: impl Iterator<Item = &'a [u8; 16]>) {
        if self.empty.load(Ordering::Relaxed) {
            return;
        }
        let mut held = self.held();
        for id in ids {
            held.by_event.remove(id);
        }
        if held.by_event.is_empty() {
            // The order list only names forgotten events now.
            held.order.clear();
        }
        self.empty
            .store(held.by_event.is_empty(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    fn span(id: u64, sampled: bool) -> SpanContext {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        SpanContext::new(
            TraceId::from(7u128),
            SpanId::from(id),
            flags,
            true,
            TraceState::default(),
        )
    }

    #[test]
    fn a_traceparent_header_names_the_parent() {
        let mut headers = http::HeaderMap::new();
        assert!(remote_parent(&headers).is_none());
        headers.insert("traceparent", "not a trace".parse().unwrap());
        assert!(remote_parent(&headers).is_none(), "an invalid one is none");
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let parent = remote_parent(&headers).expect("a parent");
        let span = parent.span();
        let context = span.span_context();
        assert_eq!(
            context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(context.span_id().to_string(), "b7ad6b7169203331");
        assert!(context.is_remote() && context.is_sampled());
    }

    #[test]
    fn write_spans_find_the_receive_spans_of_their_events_until_written() {
        let traced = Traced::new();
        let (a, b, c) = ([1u8; 16], [2u8; 16], [3u8; 16]);
        traced.register([a, b].iter(), &span(10, true));
        traced.register([c].iter(), &span(11, true));
        traced.register([[4u8; 16]].iter(), &span(12, false));
        let found = traced.spans_of([a, b, c, [4u8; 16]].iter());
        let ids: Vec<SpanId> = found.iter().map(SpanContext::span_id).collect();
        assert_eq!(
            ids,
            [SpanId::from(10), SpanId::from(11)],
            "distinct, sampled only"
        );
        traced.forget([a, b].iter());
        assert_eq!(traced.spans_of([a, b].iter()), []);
        assert_eq!(traced.spans_of([c].iter()).len(), 1);
        traced.forget([c].iter());
        assert!(traced.empty.load(Ordering::Relaxed));
    }

    #[test]
    fn the_oldest_are_forgotten_past_the_bound() {
        let traced = Traced::new();
        let ids: Vec<[u8; 16]> = (0..TRACED_EVENTS as u128 + 10)
            .map(u128::to_be_bytes)
            .collect();
        traced.register(ids.iter(), &span(1, true));
        assert!(traced.spans_of(ids[..10].iter()).is_empty(), "the oldest");
        assert_eq!(traced.spans_of(ids[10..].iter()).len(), 1);
        assert_eq!(traced.held().by_event.len(), TRACED_EVENTS);
    }
}
