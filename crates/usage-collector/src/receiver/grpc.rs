//! The OTLP/gRPC services and server.
//!
//! The gRPC health service (`grpc.health.v1`) answers SERVING exactly when `/health/ready`
//! says ready, for the server as a whole and for each OTLP service, so Kubernetes gRPC probes
//! and HTTP probes agree.
//!
//! The services are hand-written over tonic's server primitives, with a codec that hands each
//! request over as its bytes, rather than the services `opentelemetry-proto` generates: those
//! decode inside tonic's codec, on a runtime worker, before any handler code runs, so nothing
//! could check a request before decoding it. Here admission (size, record count, bytes in
//! flight, spool headroom) runs first and decoding happens on the blocking pool. Measured on a
//! 2-core machine with the blackhole sink, 512 records a request, 8 in flight, eight alternated
//! pairs: 479 739 records/s median with this path, 435 447 with the generated services (no
//! faster; see docs/performance.md).
//!
//! Requests may be gzip-compressed. The size limit applies after decompression; a request over
//! it gets RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE for an uncompressed one, which OTLP
//! clients would retry forever, so the status is rewritten on the way out).

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderValue;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use prost::bytes::{Buf, Bytes};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::admission::Reserved;
use super::auth::{Allowed, Tokens};
use super::ingest::{Caller, Ingest};
use crate::catalog::convert;
use crate::config::ConnectionSettings;
use crate::event::Signal;
use crate::health::metrics::ReasonLabels;
use crate::net::tls::Connections;

/// gRPC status codes as they appear in the `grpc-status` header.
const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

/// One OTLP export method: the service it belongs to, and what it does with a request's
/// protobuf bytes (handed over undecoded, so each request is decoded exactly once).
pub trait Export: Send + Sync + 'static {
    /// The gRPC service name, e.g. `opentelemetry.proto.collector.logs.v1.LogsService`.
    const SERVICE: &'static str;
    /// The response message.
    type Response: Message + Default + Send + 'static;
    /// Handles one request from `caller`, who may write as `allowed`.
    fn export(
        &self,
        request: Bytes,
        allowed: Allowed,
        caller: Caller,
    ) -> impl Future<Output = Result<Self::Response, Status>> + Send;
}

/// Answers OTLP logs.
#[derive(Clone, Debug)]
pub struct Logs(pub Ingest);

/// Answers OTLP traces.
#[derive(Clone, Debug)]
pub struct Traces(pub Ingest);

/// Refuses OTLP metrics with a message saying what the collector takes.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMetrics;

impl Export for Logs {
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    type Response = ExportLogsServiceResponse;

    async fn export(
        &self,
        bytes: Bytes,
        allowed: Allowed,
        caller: Caller,
    ) -> Result<ExportLogsServiceResponse, Status> {
        self.export_reserved(bytes, allowed, caller, None).await
    }
}

impl Logs {
    /// Handles one request whose bytes already hold `reserved` of the in-flight budget.
    pub async fn export_reserved(
        &self,
        bytes: Bytes,
        allowed: Allowed,
        caller: Caller,
        reserved: Option<Reserved>,
    ) -> Result<ExportLogsServiceResponse, Status> {
        let partial = self
            .0
            .export(
                bytes,
                Signal::Log,
                allowed,
                caller,
                reserved,
                |request, catalog, now, skip| convert::logs(request, catalog, now, skip),
            )
            .await?;
        Ok(ExportLogsServiceResponse {
            partial_success: (partial.rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: partial.rejected,
                error_message: partial.message,
            }),
        })
    }
}

impl Export for Traces {
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    type Response = ExportTraceServiceResponse;

    async fn export(
        &self,
        bytes: Bytes,
        allowed: Allowed,
        caller: Caller,
    ) -> Result<ExportTraceServiceResponse, Status> {
        self.export_reserved(bytes, allowed, caller, None).await
    }
}

impl Traces {
    /// Handles one request whose bytes already hold `reserved` of the in-flight budget.
    pub async fn export_reserved(
        &self,
        bytes: Bytes,
        allowed: Allowed,
        caller: Caller,
        reserved: Option<Reserved>,
    ) -> Result<ExportTraceServiceResponse, Status> {
        let partial = self
            .0
            .export(
                bytes,
                Signal::Span,
                allowed,
                caller,
                reserved,
                |request, catalog, now, skip| convert::traces(request, catalog, now, skip),
            )
            .await?;
        Ok(ExportTraceServiceResponse {
            partial_success: (partial.rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: partial.rejected,
                error_message: partial.message,
            }),
        })
    }
}

#[tonic::async_trait]
impl MetricsService for NoMetrics {
    async fn export(
        &self,
        _request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        Err(no_metrics())
    }
}

/// The answer to OTLP metrics, on either transport.
pub fn no_metrics() -> Status {
    Status::unimplemented(
        "this collector takes usage events as OTLP logs or spans; send metrics to a metrics backend",
    )
}

/// The gRPC codec of an [`Export`] service: hands the request's bytes over undecoded (after
/// any decompression) and encodes the response with prost.
struct RawRequests<R>(PhantomData<R>);

impl<R: Message + Default + Send + 'static> Codec for RawRequests<R> {
    type Encode = R;
    type Decode = Bytes;
    type Encoder = RawRequests<R>;
    type Decoder = RawRequests<Bytes>;

    fn encoder(&mut self) -> Self::Encoder {
        RawRequests(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawRequests(PhantomData)
    }
}

impl<R: Message> Encoder for RawRequests<R> {
    type Item = R;
    type Error = Status;

    fn encode(&mut self, item: R, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}

impl Decoder for RawRequests<Bytes> {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Serves one [`Export`] method over gRPC (gzip accepted, requests up to a size limit, bearer
/// tokens checked when there is a tokens file).
pub struct ExportServer<E> {
    export: Arc<E>,
    max_request_bytes: usize,
    tokens: Option<Arc<Tokens>>,
    metrics: Arc<crate::health::Metrics>,
}

impl<E> Clone for ExportServer<E> {
    fn clone(&self) -> Self {
        Self {
            export: self.export.clone(),
            max_request_bytes: self.max_request_bytes,
            tokens: self.tokens.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<E: Export> ExportServer<E> {
    /// Serves `export`, refusing requests larger than `max_request_bytes` once decompressed,
    /// and, with `tokens`, requests without a known bearer token.
    pub fn new(
        export: E,
        max_request_bytes: usize,
        tokens: Option<Arc<Tokens>>,
        metrics: Arc<crate::health::Metrics>,
    ) -> Self {
        Self {
            export: Arc::new(export),
            max_request_bytes,
            tokens,
            metrics,
        }
    }
}

impl<E: Export> NamedService for ExportServer<E> {
    const NAME: &'static str = E::SERVICE;
}

/// One call of an [`Export`] method, by a caller who may write as the services allowed.
struct Call<E>(Arc<E>, Allowed, Caller);

impl<E: Export> UnaryService<Bytes> for Call<E> {
    type Response = E::Response;
    type Future = BoxFuture<Response<E::Response>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let (export, allowed, caller) = (self.0.clone(), self.1.clone(), self.2.clone());
        Box::pin(async move {
            export
                .export(request.into_inner(), allowed, caller)
                .await
                .map(Response::new)
        })
    }
}

impl<E, B> tower::Service<http::Request<B>> for ExportServer<E>
where
    E: Export,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let is_export = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(E::SERVICE))
            == Some("/Export");
        if !is_export {
            let method = request.uri().path().to_owned();
            return Box::pin(async move {
                Ok(Status::unimplemented(format!("no method {method}")).into_http())
            });
        }
        if !is_grpc(request.headers()) {
            // The gRPC specification: a request that is not gRPC gets HTTP 415, not a decode
            // attempt.
            return Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::empty());
                *response.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
                response.headers_mut().insert(
                    http::header::ACCEPT,
                    HeaderValue::from_static("application/grpc"),
                );
                Ok(response)
            });
        }
        let allowed = match &self.tokens {
            None => Allowed::Any,
            Some(tokens) => {
                match tokens.check(request.headers().get(http::header::AUTHORIZATION)) {
                    Ok(allowed) => allowed,
                    Err(status) => {
                        self.metrics
                            .requests_refused
                            .get_or_create(&ReasonLabels {
                                reason: "unauthenticated",
                            })
                            .inc();
                        tracing::debug!(
                            reason = status.message(),
                            "request refused: no valid bearer token"
                        );
                        return Box::pin(async move { Ok(status.into_http()) });
                    }
                }
            }
        };
        let call = Call(
            self.export.clone(),
            allowed,
            Caller::of("grpc", request.headers()),
        );
        let limit = self.max_request_bytes;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawRequests::<E::Response>(PhantomData))
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit);
            Ok(grpc.unary(call, request).await)
        })
    }
}

/// True when the request's content type is gRPC's (`application/grpc`, `application/grpc+proto`).
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v == "application/grpc"
                || v.starts_with("application/grpc+")
                || v.starts_with("application/grpc;")
        })
}

/// How the OTLP/gRPC server treats requests and connections.
#[derive(Debug, Clone)]
pub struct Serving {
    /// Largest request after decompression.
    pub max_request_bytes: usize,
    /// Timeouts and limits per connection.
    pub connections: ConnectionSettings,
    /// Bearer tokens, when a tokens file is set.
    pub tokens: Option<Arc<Tokens>>,
}

/// Serves OTLP/gRPC on `incoming` (plain or TLS connections) until `shutdown` completes.
pub async fn serve(
    incoming: Connections,
    ingest: Ingest,
    serving: Serving,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let Serving {
        max_request_bytes,
        connections,
        tokens,
    } = serving;
    let metrics = ingest.metrics.clone();
    let too_large = tower::util::MapResponseLayer::new(move |mut response: http::Response<_>| {
        let headers = response.headers_mut();
        let status = headers.get("grpc-status").cloned();
        // tonic's own answers to a request over the size limit: OUT_OF_RANGE for a plain one
        // (rewritten: OTLP clients would retry it forever), RESOURCE_EXHAUSTED while inflating
        // a compressed one.
        let inflated_too_far = status.as_ref().is_some_and(|v| v == RESOURCE_EXHAUSTED)
            && headers.get("grpc-message").is_some_and(|m| {
                m.as_bytes()
                    .starts_with(b"Error%20decompressing:%20size%20limit")
            });
        if status.as_ref().is_some_and(|v| v == OUT_OF_RANGE) || inflated_too_far {
            headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
            metrics
                .requests_refused
                .get_or_create(&ReasonLabels {
                    reason: "too_large",
                })
                .inc();
        }
        response
    });
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = tokio::spawn(report_readiness(reporter, ingest.health.clone()));
    let logs = ExportServer::new(
        Logs(ingest.clone()),
        max_request_bytes,
        tokens.clone(),
        ingest.metrics.clone(),
    );
    let metrics = ingest.metrics.clone();
    let traces = ExportServer::new(Traces(ingest), max_request_bytes, tokens, metrics);
    let served = tonic::transport::Server::builder()
        // A peer that stops answering pings is gone (a half-open or black-holed connection).
        .http2_keepalive_interval(Some(connections.keepalive))
        .http2_keepalive_timeout(Some(connections.keepalive))
        .max_concurrent_streams(connections.max_concurrent_streams)
        // Connections are asked to close after a while (clients reconnect, spreading over the
        // replicas), and closed for good if they have not within the handshake timeout more.
        .max_connection_age(connections.max_age)
        .max_connection_age_grace(connections.handshake_timeout)
        .layer(too_large)
        .add_service(health_service)
        .add_service(logs)
        .add_service(traces)
        .add_service(MetricsServiceServer::new(NoMetrics))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    readiness.abort();
    served
}

/// How often the gRPC health status follows the readiness checks.
const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

async fn report_readiness(
    reporter: tonic_health::server::HealthReporter,
    health: crate::health::Health,
) {
    use tonic_health::ServingStatus;
    let names = ["", <Logs as Export>::SERVICE, <Traces as Export>::SERVICE];
    loop {
        let status = if health.readiness(false).1 {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in names {
            reporter.set_service_status(name, status).await;
        }
        tokio::time::sleep(HEALTH_EVERY).await;
    }
}
