//! Cost on the application's thread of recording one usage event, side by side:
//!
//! - `tracker_helper`: `usage_tracker::page_visit` through the tracker's layer and queue;
//! - `stock_appender`: the same event and attributes written as `tracing::event!` through the
//!   stock `opentelemetry-appender-tracing` layer with the SDK's batch processor;
//! - `no_subscriber`: the tracker's helper with no subscriber at all (tracking off), measured
//!   before any subscriber existed and again (`no_subscriber_after`) once they have.
//!
//! Both pipelines export over OTLP/gRPC to an in-process server that answers OK at once.
//! At criterion's rates both queues fill up, so the numbers include the (counted) drop path.
//! Run: `cargo bench -p usage-tracker --bench record`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use tracing_subscriber::layer::SubscriberExt;
use usage_tracker::catalog::{events, keys};
use usage_tracker::{EventId, PageVisit, TARGET, TrackerBuilder};

struct Accept;

#[tonic::async_trait]
impl LogsService for Accept {
    async fn export(
        &self,
        _request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// Starts the answering server on its own thread; returns its endpoint.
fn server() -> String {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_service(LogsServiceServer::new(Accept))
                .serve_with_incoming(incoming)
                .await
                .expect("bench server");
        })
    });
    format!("http://{addr}")
}

fn visit() -> PageVisit<'static> {
    PageVisit {
        path: "/ide/programs/42",
        session_id: Some("session-0001"),
        user_id: Some("user-7"),
        referrer: Some("https://example.org/"),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"),
        client_address: Some("203.0.113.7"),
    }
}

fn cost_per_event(c: &mut Criterion) {
    let endpoint = server();
    let mut group = c.benchmark_group("cost_per_event");
    // First, before any subscriber has existed in this process.
    group.bench_function("no_subscriber", |b| {
        b.iter(|| usage_tracker::page_visit(visit()))
    });

    let tracker = TrackerBuilder::new()
        .endpoint(endpoint.clone())
        .start()
        .expect("tracker");
    let subscriber = tracing_subscriber::registry().with(tracker.layer());
    tracing::subscriber::with_default(subscriber, || {
        group.bench_function("tracker_helper", |b| {
            b.iter(|| usage_tracker::page_visit(visit()))
        });
    });
    println!("tracker stats after its run: {:?}", tracker.shutdown());

    let exporter_runtime = tokio::runtime::Runtime::new().expect("runtime");
    let exporter = exporter_runtime.block_on(async {
        opentelemetry_otlp::LogExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .expect("exporter")
    });
    let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder()
        .with_batch_exporter(exporter)
        .build();
    let stock = tracing_subscriber::registry()
        .with(opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(&provider));
    tracing::subscriber::with_default(stock, || {
        group.bench_function("stock_appender", |b| {
            b.iter(|| {
                let v = visit();
                tracing::event!(
                    name: events::PAGE_VISIT,
                    target: TARGET,
                    tracing::Level::INFO,
                    {
                        { keys::EVENT_ID } = EventId::new().as_str(),
                        { keys::SESSION_ID } = v.session_id,
                        { keys::USER_ID } = v.user_id,
                        { keys::URL_PATH } = v.path,
                        { keys::HTTP_REFERER } = v.referrer,
                        { keys::USER_AGENT } = v.user_agent,
                        { keys::CLIENT_ADDRESS } = v.client_address,
                    }
                )
            })
        });
    });
    if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
        eprintln!("stock provider shutdown: {e}");
    }

    // Again, now that subscribers have existed: callsites are registered and cached as disabled.
    group.bench_function("no_subscriber_after", |b| {
        b.iter(|| usage_tracker::page_visit(visit()))
    });
    group.finish();
}

criterion_group!(benches, cost_per_event);
criterion_main!(benches);
