//! The tracker's warnings reach the application's handler, never the export; events missing a
//! value the collector requires are refused, counted and warned about.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tracing_subscriber::layer::SubscriberExt;
use usage_tracker::catalog::keys;
use usage_tracker::{FeatureUse, Health, PageVisit, TrackerBuilder, Warning, WarningKind};

/// Every exported log record, as (event name, `url.path` or the body).
type Received = Arc<Mutex<Vec<(String, String)>>>;

struct Record(Received);

#[tonic::async_trait]
impl LogsService for Record {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let records = request
            .into_inner()
            .resource_logs
            .into_iter()
            .flat_map(|r| r.scope_logs)
            .flat_map(|s| s.log_records);
        for record in records {
            let text = |value: Option<&Value>| match value {
                Some(Value::StringValue(s)) => s.clone(),
                other => format!("{other:?}"),
            };
            let path = record
                .attributes
                .iter()
                .find(|kv| kv.key == keys::URL_PATH)
                .and_then(|kv| kv.value.as_ref())
                .map(|v| text(v.value.as_ref()));
            let body = record.body.as_ref().map(|b| text(b.value.as_ref()));
            self.0
                .lock()
                .unwrap()
                .push((record.event_name, path.or(body).unwrap_or_default()));
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// An OTLP logs endpoint on its own thread that keeps what it receives.
fn collector() -> (String, Received) {
    let received = Received::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let service = LogsServiceServer::new(Record(received.clone()));
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        })
    });
    (format!("http://{addr}"), received)
}

fn handler(warnings: &Arc<Mutex<Vec<Warning>>>) -> impl Fn(&Warning) + Send + Sync + 'static {
    let warnings = warnings.clone();
    move |warning: &Warning| {
        // Logged the way the builder's docs suggest: this must not reach the export either.
        tracing::warn!(target: "usage_tracker", "{}", warning.message);
        warnings.lock().unwrap().push(warning.clone());
    }
}

#[test]
fn an_empty_required_value_is_refused_counted_and_warned_about_and_warnings_are_not_exported() {
    let (endpoint, received) = collector();
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let tracker = TrackerBuilder::new()
        .endpoint(endpoint)
        .export_app_logs(true)
        .on_warning(handler(&warnings))
        .start()
        .unwrap();
    let subscriber = tracing_subscriber::registry().with(tracker.layer());
    // Global, so that the handler's own `tracing` line (on the export thread) meets the layer.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    usage_tracker::page_visit(PageVisit::new("/ide"));
    usage_tracker::page_visit(PageVisit::default());
    usage_tracker::feature_use(FeatureUse {
        session_id: Some("s-1"),
        ..FeatureUse::new("  ")
    });
    tracing::info!("an application log line");
    assert!(tracker.flush(Duration::from_secs(10)));

    let stats = tracker.stats();
    assert_eq!(
        (
            stats.recorded,
            stats.exported,
            stats.invalid,
            stats.pending()
        ),
        (4, 2, 2, 0),
        "{stats:?}"
    );
    assert_eq!(
        tracker.health(),
        Health::Healthy,
        "refusals are not export trouble"
    );
    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let warning = &warnings[0];
    assert_eq!(warning.kind, WarningKind::InvalidEvents);
    assert!(
        warning.message.starts_with("2 usage event(s) not sent")
            && warning
                .message
                .contains("feature_use without `feature.name`"),
        "{warning}"
    );
    assert_eq!(warning.stats.invalid, 2);
    assert!(
        warning
            .to_string()
            .starts_with("usage-tracker WARN: 2 usage event(s)")
    );

    // Give a stray export of the handler's log line the time to arrive, then check.
    assert!(tracker.flush(Duration::from_secs(10)));
    let mut received: Vec<(String, String)> = received.lock().unwrap().clone();
    received.sort_by(|a, b| b.0.cmp(&a.0));
    let texts: Vec<&str> = received.iter().map(|(_, text)| text.as_str()).collect();
    assert_eq!(
        texts,
        ["/ide", "an application log line"],
        "only the valid visit and the app's own line are exported: {received:?}"
    );
    assert_eq!(received[0].0, "page_visit");
    assert_eq!(tracker.stats().exported, 2);
}

#[test]
fn a_failing_export_reaches_the_handler_with_the_endpoint_and_counts() {
    // Nothing listens on port 9 of loopback.
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let tracker = TrackerBuilder::new()
        .endpoint("http://127.0.0.1:9")
        .on_warning(handler(&warnings))
        .start()
        .unwrap();
    let subscriber = tracing_subscriber::registry().with(tracker.layer());
    tracing::subscriber::with_default(subscriber, || {
        usage_tracker::page_visit(PageVisit::new("/down"));
    });
    assert!(tracker.flush(Duration::from_secs(10)));
    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].kind, WarningKind::Degraded);
    assert!(
        warnings[0]
            .message
            .starts_with("cannot export usage events to http://127.0.0.1:9"),
        "{}",
        warnings[0]
    );
    assert_eq!(
        (warnings[0].stats.recorded, warnings[0].stats.failed),
        (1, 1)
    );
    assert!(matches!(tracker.health(), Health::Degraded { .. }));
}
