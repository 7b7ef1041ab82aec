//! The collector's own telemetry over OTLP: metrics pushed and one span per batch write, and
//! never a loop back into the usage tables.

use std::time::{Duration, Instant};

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
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use tokio::sync::mpsc;
use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::value;
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::poll;
use usage_pipeline_tests::process::{ProcessConfig, temp_dir};

const BIN: &str = env!("CARGO_BIN_EXE_usage-collector-e2e");

/// A tracing/metrics backend stand-in that hands over what it receives.
#[derive(Clone)]
struct Backend {
    metrics: mpsc::UnboundedSender<ExportMetricsServiceRequest>,
    traces: mpsc::UnboundedSender<ExportTraceServiceRequest>,
}

#[tonic::async_trait]
impl MetricsService for Backend {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics.send(request.into_inner()).ok();
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Backend {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.traces.send(request.into_inner()).ok();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn accepted(request: &ExportMetricsServiceRequest) -> Option<f64> {
    let metric = request.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == "usage_collector_records_accepted")?;
    let Some(metric::Data::Sum(sum)) = &metric.data else {
        return None;
    };
    sum.data_points
        .iter()
        .filter_map(|p| match p.value {
            Some(number_data_point::Value::AsDouble(v)) => Some(v),
            _ => None,
        })
        .reduce(|a, b| a + b)
}

#[tokio::test(flavor = "multi_thread")]
async fn own_metrics_and_batch_spans_go_to_the_telemetry_endpoint_and_never_loop() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let (metrics_tx, mut metrics_rx) = mpsc::unbounded_channel();
    let (traces_tx, mut traces_rx) = mpsc::unbounded_channel();
    let backend = Backend {
        metrics: metrics_tx,
        traces: traces_tx,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(backend.clone()))
            .add_service(TraceServiceServer::new(backend))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let db = TestDb::mysql().await;
    let dir = temp_dir("usage_telemetry");
    let mut config = ProcessConfig::new(BIN, db.url(), &dir);
    config.extra = vec![
        "--telemetry-endpoint".into(),
        format!("http://{backend_addr}"),
        "--telemetry-interval-secs".into(),
        "1".into(),
    ];
    let mut collector = config.start();
    collector.wait_live(Duration::from_secs(20)).await;
    send_logs(
        &config.endpoint(),
        page_visits("web-ide", "/t", 0..3),
        false,
    )
    .await
    .unwrap();

    let started = Instant::now();
    loop {
        let request = tokio::time::timeout(Duration::from_secs(20), metrics_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let resource = &request.resource_metrics[0];
        assert_eq!(
            resource.scope_metrics[0].scope.as_ref().unwrap().name,
            "usage-collector.self"
        );
        if accepted(&request) == Some(3.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no push with the accepted count"
        );
    }
    let started = Instant::now();
    let span = loop {
        let request = tokio::time::timeout(Duration::from_secs(20), traces_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let found = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .find(|s| s.name == "write_batch")
            .cloned();
        if let Some(span) = found {
            break span;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no write_batch span"
        );
    };
    let keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert!(
        keys.contains(&"events") && keys.contains(&"rows"),
        "{keys:?}"
    );
    assert!(span.end_time_unix_nano > span.start_time_unix_nano);
    drop(collector);

    // Pointed at a usage collector by mistake: refused as its own telemetry, nothing written.
    let sink_db = TestDb::mysql().await;
    let target = TestCollector::start(settings(sink_db.url())).await;
    config.extra = vec![
        "--telemetry-endpoint".into(),
        target.endpoint(),
        "--telemetry-interval-secs".into(),
        "1".into(),
    ];
    let mut collector = config.start();
    collector.wait_live(Duration::from_secs(20)).await;
    send_logs(
        &config.endpoint(),
        page_visits("web-ide", "/u", 10..12),
        false,
    )
    .await
    .unwrap();
    let own_refused = || async {
        let metrics = target.get("/metrics").await.1;
        ["logs", "traces"].map(|signal| {
            value(
                &metrics,
                &format!("usage_collector_records_rejected_total{{signal=\"{signal}\",reason=\"own_telemetry\"}}"),
            )
        })
    };
    poll::until(
        "own telemetry refused (logs, traces)",
        Duration::from_secs(20),
        own_refused,
        |refused| refused.iter().any(|n| n.is_some_and(|n| n > 0.0)),
    )
    .await;
    target.wait_written(Duration::from_secs(10)).await;
    assert_eq!(
        sink_db.count("usage_events").await,
        0,
        "own spans became usage rows"
    );
    drop(collector);
    target.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// A backend that takes only spans (as Jaeger does), or only metrics.
#[derive(Clone)]
struct OneSignal {
    tx: mpsc::UnboundedSender<&'static str>,
}

#[tonic::async_trait]
impl MetricsService for OneSignal {
    async fn export(
        &self,
        _request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.tx.send("metrics").ok();
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for OneSignal {
    async fn export(
        &self,
        _request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.tx.send("traces").ok();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts a backend serving only `traces` or only `metrics`; what it receives arrives on the
/// channel, named by signal.
async fn one_signal_backend(
    signal: &str,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<&'static str>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = OneSignal { tx };
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let mut server = tonic::transport::Server::builder();
    match signal {
        "traces" => {
            tokio::spawn(
                server
                    .add_service(TraceServiceServer::new(backend))
                    .serve_with_incoming(incoming),
            );
        }
        _ => {
            tokio::spawn(
                server
                    .add_service(MetricsServiceServer::new(backend))
                    .serve_with_incoming(incoming),
            );
        }
    }
    (addr, rx)
}

/// What arrived on `rx` within `wait`.
async fn received(
    rx: &mut mpsc::UnboundedReceiver<&'static str>,
    wait: Duration,
) -> Vec<&'static str> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(signal)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        seen.push(signal);
    }
    seen
}

/// Spans to a traces-only backend (Jaeger), metrics to a metrics-only one, each through its
/// own setting (flags, then the standard `OTEL_*` variables); a signal set to `none` goes
/// nowhere; and no export is logged as failing.
#[tokio::test(flavor = "multi_thread")]
async fn each_own_signal_goes_only_where_it_is_sent() {
    let (traces_addr, mut traces_rx) = one_signal_backend("traces").await;
    let (metrics_addr, mut metrics_rx) = one_signal_backend("metrics").await;
    let db = TestDb::mysql().await;
    let dir = temp_dir("usage_telemetry_signals");
    let mut config = ProcessConfig::new(BIN, db.url(), &dir);
    config.extra = vec![
        "--telemetry-traces-endpoint".into(),
        format!("http://{traces_addr}"),
        "--telemetry-metrics-endpoint".into(),
        format!("http://{metrics_addr}"),
        "--telemetry-interval-secs".into(),
        "1".into(),
    ];
    let collector = config.start_ready().await;
    send_logs(
        &config.endpoint(),
        page_visits("web-ide", "/s", 0..3),
        false,
    )
    .await
    .unwrap();
    collector.wait_drained(Duration::from_secs(20)).await;
    let spans = received(&mut traces_rx, Duration::from_secs(8)).await;
    let pushes = received(&mut metrics_rx, Duration::from_secs(1)).await;
    assert!(spans.contains(&"traces"), "no spans at the traces endpoint");
    assert!(pushes.len() >= 3, "metrics pushed every second: {pushes:?}");
    collector.terminate(Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(&config.log).unwrap();
    for failing in ["cannot push", "Unimplemented", "ERROR", "WARN"] {
        assert!(!log.contains(failing), "`{failing}` in the log:\n{log}");
    }

    // The standard variables: spans to the traces backend, metrics switched off.
    std::fs::remove_file(&config.log).unwrap();
    config.extra = vec!["--telemetry-interval-secs".into(), "1".into()];
    config.env = vec![
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(),
            format!("http://{traces_addr}"),
        ),
        ("OTEL_METRICS_EXPORTER".into(), "none".into()),
    ];
    let collector = config.start_ready().await;
    send_logs(
        &config.endpoint(),
        page_visits("web-ide", "/t", 10..13),
        false,
    )
    .await
    .unwrap();
    collector.wait_drained(Duration::from_secs(20)).await;
    let spans = received(&mut traces_rx, Duration::from_secs(8)).await;
    let pushes = received(&mut metrics_rx, Duration::from_secs(1)).await;
    assert!(
        spans.contains(&"traces"),
        "no spans through OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    );
    assert_eq!(
        pushes,
        Vec::<&str>::new(),
        "OTEL_METRICS_EXPORTER=none pushes nothing"
    );
    collector.terminate(Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(&config.log).unwrap();
    for failing in ["cannot push", "Unimplemented", "ERROR", "WARN"] {
        assert!(!log.contains(failing), "`{failing}` in the log:\n{log}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
