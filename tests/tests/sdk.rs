//! Events sent by the real OpenTelemetry SDK and `opentelemetry-otlp` exporter arrive as rows.

use opentelemetry::KeyValue;
use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _};
use opentelemetry::trace::{Span as _, Status, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;

#[tokio::test(flavor = "multi_thread")]
async fn the_otlp_exporter_delivers_log_events_and_spans() {
    let db = TestDb::mysql().await;
    let collector = TestCollector::start(settings(db.url())).await;
    let resource = Resource::builder().with_service_name("web-ide-sdk").build();

    let logs = SdkLoggerProvider::builder()
        .with_resource(resource.clone())
        .with_batch_exporter(
            opentelemetry_otlp::LogExporter::builder()
                .with_tonic()
                .with_compression(opentelemetry_otlp::Compression::Gzip)
                .with_endpoint(collector.endpoint())
                .build()
                .expect("log exporter"),
        )
        .build();
    let logger = logs.logger("usage");
    let mut record = logger.create_log_record();
    record.set_event_name("page_visit");
    record.set_timestamp(std::time::SystemTime::now());
    record.add_attribute("url.path", "/ide/naïve 'quote'");
    record.add_attribute("session.id", "sdk-1");
    record.add_attribute("event.id", uuid::Uuid::now_v7().to_string());
    logger.emit(record);
    let mut record = logger.create_log_record();
    record.set_event_name("feature_use");
    record.add_attribute("feature.name", "run_button");
    record.add_attribute("session.id", "sdk-1");
    logger.emit(record);

    let traces = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(collector.endpoint())
                .build()
                .expect("span exporter"),
        )
        .build();
    let tracer = traces.tracer("usage");
    let mut span = tracer.start("program_execution");
    span.set_attribute(KeyValue::new("session.id", "sdk-1"));
    span.set_attribute(KeyValue::new("program.lines", 3i64));
    span.set_status(Status::error("TYPE MISMATCH"));
    span.end();

    tokio::task::spawn_blocking(move || {
        logs.shutdown().expect("logs flushed");
        traces.shutdown().expect("spans flushed");
    })
    .await
    .unwrap();

    let s = |t: &str| Some(t.to_owned());
    assert_eq!(
        db.texts("SELECT service, session_id, page_path FROM page_visits")
            .await,
        [vec![s("web-ide-sdk"), s("sdk-1"), s("/ide/naïve 'quote'")]]
    );
    assert_eq!(
        db.texts("SELECT feature_name FROM feature_usage").await,
        [vec![s("run_button")]]
    );
    assert_eq!(
        db.texts(
            "SELECT CAST(program_lines AS CHAR), CAST(success AS CHAR), error_message FROM program_executions"
        )
        .await,
        [vec![s("3"), s("0"), s("TYPE MISMATCH")]]
    );
    assert_eq!(
        db.texts(
            "SELECT CAST(programs_run AS CHAR), CAST(errors_encountered AS CHAR) FROM ide_sessions"
        )
        .await,
        [vec![s("1"), s("1")]]
    );
    collector.stop().await;
}
