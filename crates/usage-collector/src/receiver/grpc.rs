//! The OTLP/gRPC services and server.
//!
//! The gRPC health service (`grpc.health.v1`) answers SERVING exactly when `/health/ready`
//! says ready, for the server as a whole and for each OTLP service, so Kubernetes gRPC probes
//! and HTTP probes agree.
//!
//! Requests may be gzip-compressed. The size limit applies after decompression; a request over
//! it gets RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE for an uncompressed one, which OTLP
//! clients would retry forever, so the status is rewritten on the way out).

use std::future::Future;

use http::HeaderValue;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::convert;
use super::ingest::Ingest;
use crate::event::Signal;
use crate::health::metrics::ReasonLabels;

/// gRPC status codes as they appear in the `grpc-status` header.
const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

/// Answers OTLP logs.
#[derive(Clone, Debug)]
pub struct Logs(pub Ingest);

/// Answers OTLP traces.
#[derive(Clone, Debug)]
pub struct Traces(pub Ingest);

/// Refuses OTLP metrics with a message saying what the collector takes.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMetrics;

#[tonic::async_trait]
impl LogsService for Logs {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let ingest = &self.0;
        ingest.gate(Signal::Log)?;
        let request = request.into_inner();
        let bytes = request.encode_to_vec();
        let now = convert::now_unix_nano();
        let converted = convert::logs(request, &ingest.catalog, now);
        let partial = ingest.accept(Signal::Log, bytes, now, converted).await?;
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: (partial.rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: partial.rejected,
                error_message: partial.message,
            }),
        }))
    }
}

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let ingest = &self.0;
        ingest.gate(Signal::Span)?;
        let request = request.into_inner();
        let bytes = request.encode_to_vec();
        let now = convert::now_unix_nano();
        let converted = convert::traces(request, &ingest.catalog, now);
        let partial = ingest.accept(Signal::Span, bytes, now, converted).await?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: (partial.rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: partial.rejected,
                error_message: partial.message,
            }),
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for NoMetrics {
    async fn export(
        &self,
        _request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        Err(Status::unimplemented(
            "this collector takes usage events as OTLP logs or spans; send metrics to a metrics backend",
        ))
    }
}

/// Serves OTLP/gRPC on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    ingest: Ingest,
    max_request_bytes: usize,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let metrics = ingest.metrics.clone();
    let too_large = tower::util::MapResponseLayer::new(move |mut response: http::Response<_>| {
        let headers = response.headers_mut();
        if headers
            .get("grpc-status")
            .is_some_and(|v| v == OUT_OF_RANGE)
        {
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
    let logs = LogsServiceServer::new(Logs(ingest.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_request_bytes);
    let traces = TraceServiceServer::new(Traces(ingest))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_request_bytes);
    // Our own listener, so TCP_NODELAY must be asked for (Server::serve(addr) would set it).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tonic::transport::Server::builder()
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
    let names = [
        "",
        <LogsServiceServer<Logs> as tonic::server::NamedService>::NAME,
        <TraceServiceServer<Traces> as tonic::server::NamedService>::NAME,
    ];
    loop {
        let status = if health.readiness().1 {
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
