//! The load generator's engine, shared by `usage-load` and the pipeline bench: concurrent
//! OTLP senders at full speed or a fixed rate, every event unique unless asked for duplicates,
//! refusals retried like the SDKs do, and a report with throughput and latency percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use prost::bytes::{BufMut, Bytes};
use std::marker::PhantomData;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

use crate::fixtures::{T0, event, kv, logs_request, span, traces_request};

/// Which OTLP signal to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Signal {
    /// Log records.
    Logs,
    /// Spans.
    Traces,
}

/// What each record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attributes {
    /// `event.id` and `url.path` only.
    Minimal,
    /// A page visit with every catalogue attribute (about 500 bytes per row).
    Full,
}

/// A load run's shape.
#[derive(Debug, Clone, clap::Args)]
pub struct Plan {
    /// The collector's OTLP/gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    pub endpoint: String,
    /// Log records or spans.
    #[arg(long, value_enum, default_value = "logs")]
    pub signal: Signal,
    /// Records per request.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Requests in flight at once (over all connections).
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// TCP connections.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// How long to send.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Records per second over all senders; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Stop after this many records (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub records: u64,
    /// Resend the same event ids in every request (tests de-duplication).
    #[arg(long)]
    pub duplicates: bool,
    /// Attribute set of each record.
    #[arg(long, value_enum, default_value = "full")]
    pub attributes: Attributes,
    /// Send log records without `event.id`, as the Python SDK does: the collector derives each
    /// id from the record. Each send stamps its records with the current time (so derived ids
    /// follow time, as real traffic's do) and a fresh `load.id` attribute (so every record is
    /// a new event).
    #[arg(long)]
    pub derived_ids: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Accepted records per second.
    pub records_per_second: f64,
    /// Request latency percentiles and maximum, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest request.
    pub max_ms: f64,
    /// Records sent (each once, however often retried).
    pub sent: u64,
    /// Records acknowledged.
    pub accepted: u64,
    /// Records of refused (and retried) requests.
    pub refused: u64,
    /// Records refused on their own (partial success).
    pub rejected: u64,
    /// Records of requests that failed for good.
    pub failed: u64,
}

impl Outcome {
    /// A Markdown table of the outcome.
    pub fn table(&self) -> String {
        format!(
            "| records/s | p50 ms | p99 ms | max ms | sent | accepted | refused (retried) | rejected | failed |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n\
             | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
            self.records_per_second,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.sent,
            self.accepted,
            self.refused,
            self.rejected,
            self.failed
        )
    }
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

fn set_string(attributes: &mut [KeyValue], key: &str, value: String) {
    if let Some(kv) = attributes.iter_mut().find(|kv| kv.key == key) {
        kv.value = Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        });
    }
}

/// The attributes of sender `sender`'s `n`th record in a request: `event.id` (empty, filled in
/// later), `url.path` and, with [`Attributes::Full`], a session of the sender's 64, a user, the
/// referrer, user agent and client address.
pub fn attributes(kind: Attributes, sender: usize, n: usize) -> Vec<KeyValue> {
    let mut attributes = vec![
        kv("event.id", ""),
        kv("url.path", format!("/load/{sender}/{n}")),
    ];
    if let Attributes::Full = kind {
        attributes.extend([
            kv("session.id", format!("load-session-{sender}-{}", n % 64)),
            kv("user.id", format!("user-{}", n % 1000)),
            kv(
                "http.request.header.referer",
                "https://example.org/ide/programs",
            ),
            kv(
                "user_agent.original",
                "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0",
            ),
            kv("client.address", "203.0.113.7"),
        ]);
    }
    attributes
}

/// One sender's request, encoded once: each send writes fresh event ids into the encoded bytes
/// in place, so the generator spends its time sending, not building messages.
struct Request {
    signal: Signal,
    bytes: Vec<u8>,
    /// Where each record's 36-character `event.id` (or `load.id`) value sits in `bytes`.
    ids: Vec<usize>,
    /// With derived ids: where each log record's `time_unix_nano` sits in `bytes`.
    times: Vec<usize>,
}

impl Request {
    fn template(args: &Plan, sender: usize) -> Request {
        // Distinct placeholder ids, found back in the encoding in record order.
        let placeholders: Vec<String> = (0..args.batch)
            .map(|_| uuid::Uuid::new_v4().hyphenated().to_string())
            .collect();
        let derived = args.derived_ids && args.signal == Signal::Logs;
        let attributes = |n: usize| {
            let mut attributes = attributes(args.attributes, sender, n);
            set_string(&mut attributes, "event.id", placeholders[n].clone());
            if derived {
                attributes[0].key = "load.id".to_owned();
            }
            attributes
        };
        let bytes = match args.signal {
            Signal::Logs => logs_request(
                "usage-load",
                (0..args.batch)
                    .map(|n| event("page_visit", T0 + n as u64, attributes(n)))
                    .collect(),
            )
            .encode_to_vec(),
            Signal::Traces => traces_request(
                "usage-load",
                (0..args.batch)
                    .map(|n| {
                        let mut attributes = attributes(n);
                        attributes.push(kv("event.name", "program_execution"));
                        span(
                            "program_execution",
                            (n % 250) as u8 + 1,
                            T0,
                            T0 + 1_000_000,
                            None,
                            attributes,
                        )
                    })
                    .collect(),
            )
            .encode_to_vec(),
        };
        let mut ids = Vec::with_capacity(placeholders.len());
        let mut times = Vec::new();
        let mut from = 0;
        for (n, placeholder) in placeholders.iter().enumerate() {
            if derived {
                // A record's time comes before its attributes in the encoding (field order).
                let time = (T0 + n as u64).to_le_bytes();
                from += bytes[from..]
                    .windows(time.len())
                    .position(|w| w == time)
                    .expect("every record's time is in the encoded request");
                times.push(from);
                from += time.len();
            }
            let at = from
                + bytes[from..]
                    .windows(placeholder.len())
                    .position(|w| w == placeholder.as_bytes())
                    .expect("every placeholder id is in the encoded request");
            ids.push(at);
            from = at + placeholder.len();
        }
        Request {
            signal: args.signal,
            bytes,
            ids,
            times,
        }
    }

    /// Fresh event ids for every record (and, with derived ids, the current time).
    fn renew_ids(&mut self) {
        let now = usage_collector::event::now_unix_nano();
        for (n, &at) in self.times.iter().enumerate() {
            self.bytes[at..at + 8].copy_from_slice(&(now + n as u64).to_le_bytes());
        }
        for &at in &self.ids {
            uuid::Uuid::now_v7()
                .hyphenated()
                .encode_lower(&mut self.bytes[at..at + uuid::fmt::Hyphenated::LENGTH]);
        }
    }
}

/// Sends requests that are already protobuf-encoded and decodes the OTLP response.
struct EncodedRequests<R>(PhantomData<R>);

impl<R> Codec for EncodedRequests<R>
where
    R: Message + Default + Send + 'static,
{
    type Encode = Bytes;
    type Decode = R;
    type Encoder = EncodedRequests<Bytes>;
    type Decoder = EncodedRequests<R>;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedRequests(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        EncodedRequests(PhantomData)
    }
}

impl Encoder for EncodedRequests<Bytes> {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl<R: Message + Default> Decoder for EncodedRequests<R> {
    type Item = R;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<R>, tonic::Status> {
        R::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable response: {e}")))
    }
}

/// The status codes an OTLP client retries (the specification's list).
pub fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::DataLoss
    )
}

/// Sends one already-encoded export request (any bytes: tests send malformed ones too) and
/// returns the records the collector rejected.
pub async fn send_encoded(
    endpoint: &str,
    signal: Signal,
    body: Bytes,
) -> Result<i64, tonic::Status> {
    send_encoded_with(endpoint, signal, body, false).await
}

/// As [`send_encoded`], gzip-compressed on the wire when `gzip`.
pub async fn send_encoded_with(
    endpoint: &str,
    signal: Signal,
    body: Bytes,
    gzip: bool,
) -> Result<i64, tonic::Status> {
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| tonic::Status::invalid_argument(format!("invalid endpoint {endpoint}: {e}")))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("cannot connect to {endpoint}: {e}")))?;
    send(channel, signal, body, gzip).await
}

async fn send(
    channel: Channel,
    signal: Signal,
    body: Bytes,
    gzip: bool,
) -> Result<i64, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    if gzip {
        grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    }
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
    match signal {
        Signal::Logs => grpc
            .unary(
                tonic::Request::new(body),
                PathAndQuery::from_static(
                    "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                ),
                EncodedRequests::<ExportLogsServiceResponse>(PhantomData),
            )
            .await
            .map(|a| {
                a.into_inner()
                    .partial_success
                    .map_or(0, |p| p.rejected_log_records)
            }),
        Signal::Traces => grpc
            .unary(
                tonic::Request::new(body),
                PathAndQuery::from_static(
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                ),
                EncodedRequests::<ExportTraceServiceResponse>(PhantomData),
            )
            .await
            .map(|a| {
                a.into_inner()
                    .partial_success
                    .map_or(0, |p| p.rejected_spans)
            }),
    }
}

/// Runs `plan` and reports.
pub async fn run(plan: Plan) -> Result<Outcome, String> {
    let args = Arc::new(plan);
    let channels: Vec<Channel> = (0..args.connections.max(1))
        .map(|_| {
            Endpoint::from_shared(args.endpoint.clone()).map(|e| e.tcp_nodelay(true).connect_lazy())
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid endpoint {}: {e}", args.endpoint))?;
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration_secs);
    let senders = args.in_flight.max(1);
    let tasks: Vec<_> = (0..senders)
        .map(|sender| {
            let (args, tally, channel) = (
                args.clone(),
                tally.clone(),
                channels[sender % channels.len()].clone(),
            );
            tokio::spawn(async move {
                let mut request = Request::template(&args, sender);
                let mut latencies = Vec::new();
                let per_sender_rate = args.rate as f64 / senders as f64;
                let pause = (per_sender_rate > 0.0)
                    .then(|| Duration::from_secs_f64(args.batch as f64 / per_sender_rate));
                let mut next = Instant::now();
                while Instant::now() < until
                    && (args.records == 0 || tally.sent.load(Ordering::Relaxed) < args.records)
                {
                    if let Some(pause) = pause {
                        tokio::time::sleep_until(next.into()).await;
                        next += pause;
                    }
                    if !args.duplicates || latencies.is_empty() {
                        request.renew_ids();
                    }
                    let body = Bytes::copy_from_slice(&request.bytes);
                    tally.sent.fetch_add(args.batch as u64, Ordering::Relaxed);
                    let mut waits = usage_collector::backoff::exponential(
                        Duration::from_millis(100),
                        Duration::from_secs(5),
                    );
                    loop {
                        let t = Instant::now();
                        match send(channel.clone(), request.signal, body.clone(), false).await {
                            Ok(rejected) => {
                                latencies.push(t.elapsed());
                                tally.rejected.fetch_add(rejected as u64, Ordering::Relaxed);
                                tally.accepted.fetch_add(
                                    args.batch as u64 - rejected as u64,
                                    Ordering::Relaxed,
                                );
                                break;
                            }
                            Err(status)
                                if retryable(status.code())
                                    && Instant::now() < until + Duration::from_secs(30) =>
                            {
                                tally
                                    .refused
                                    .fetch_add(args.batch as u64, Ordering::Relaxed);
                                let hint =
                                    status.get_details_retry_info().and_then(|r| r.retry_delay);
                                let wait = waits.next().unwrap_or(Duration::from_secs(5));
                                tokio::time::sleep(hint.unwrap_or(wait)).await;
                            }
                            Err(status) => {
                                eprintln!(
                                    "usage-load: request failed: {:?} {}",
                                    status.code(),
                                    status.message()
                                );
                                tally.failed.fetch_add(args.batch as u64, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        match task.await {
            Ok(mut l) => latencies.append(&mut l),
            Err(e) => eprintln!("usage-load: a sender failed: {e}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let percentile = |p: f64| -> f64 {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let t = &tally;
    Ok(Outcome {
        records_per_second: t.accepted.load(Ordering::Relaxed) as f64 / elapsed,
        p50_ms: percentile(0.5),
        p99_ms: percentile(0.99),
        max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        sent: t.sent.load(Ordering::Relaxed),
        accepted: t.accepted.load(Ordering::Relaxed),
        refused: t.refused.load(Ordering::Relaxed),
        rejected: t.rejected.load(Ordering::Relaxed),
        failed: t.failed.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    use super::*;

    /// The `event.id` of every record in an encoded request, in order.
    fn event_ids(signal: Signal, bytes: &[u8]) -> Vec<String> {
        let attributes: Vec<Vec<KeyValue>> = match signal {
            Signal::Logs => ExportLogsServiceRequest::decode(bytes)
                .expect("a valid logs request")
                .resource_logs
                .into_iter()
                .flat_map(|r| r.scope_logs)
                .flat_map(|s| s.log_records)
                .map(|l| l.attributes)
                .collect(),
            Signal::Traces => ExportTraceServiceRequest::decode(bytes)
                .expect("a valid traces request")
                .resource_spans
                .into_iter()
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans)
                .map(|s| s.attributes)
                .collect(),
        };
        attributes
            .iter()
            .map(|attributes| {
                let value = attributes
                    .iter()
                    .find(|kv| kv.key == "event.id")
                    .and_then(|kv| kv.value.as_ref()?.value.as_ref());
                match value {
                    Some(any_value::Value::StringValue(id)) => id.clone(),
                    other => panic!("event.id missing or not a string: {other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn every_send_carries_fresh_distinct_event_ids_in_a_valid_request() {
        for signal in [Signal::Logs, Signal::Traces] {
            let plan = Plan {
                endpoint: String::new(),
                signal,
                batch: 64,
                in_flight: 1,
                connections: 1,
                duration_secs: 1,
                rate: 0,
                records: 0,
                duplicates: false,
                attributes: Attributes::Full,
                derived_ids: false,
            };
            let mut request = Request::template(&plan, 3);
            let mut seen = HashSet::new();
            for _ in 0..3 {
                request.renew_ids();
                let ids = event_ids(signal, &request.bytes);
                assert_eq!(ids.len(), 64, "{signal:?}");
                for id in ids {
                    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
                    assert!(seen.insert(id.clone()), "{signal:?}: {id} sent twice");
                }
            }
        }
    }

    #[test]
    fn derived_id_records_carry_no_event_id_and_the_send_time() {
        let plan = Plan {
            endpoint: String::new(),
            signal: Signal::Logs,
            batch: 64,
            in_flight: 1,
            connections: 1,
            duration_secs: 1,
            rate: 0,
            records: 0,
            duplicates: false,
            attributes: Attributes::Full,
            derived_ids: true,
        };
        let mut request = Request::template(&plan, 3);
        let before = usage_collector::event::now_unix_nano();
        request.renew_ids();
        let records: Vec<_> = ExportLogsServiceRequest::decode(&request.bytes[..])
            .expect("a valid logs request")
            .resource_logs
            .into_iter()
            .flat_map(|r| r.scope_logs)
            .flat_map(|s| s.log_records)
            .collect();
        assert_eq!(records.len(), 64);
        let mut ids = HashSet::new();
        for (n, record) in records.iter().enumerate() {
            assert_eq!(record.time_unix_nano, records[0].time_unix_nano + n as u64);
            assert!(record.time_unix_nano >= before);
            assert!(!record.attributes.iter().any(|kv| kv.key == "event.id"));
            let load_id = record.attributes.iter().find(|kv| kv.key == "load.id");
            assert!(
                ids.insert(format!("{load_id:?}")),
                "a fresh load.id per record"
            );
        }
    }
}
