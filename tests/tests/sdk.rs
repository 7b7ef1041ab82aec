//! Events sent by the real OpenTelemetry SDK and `opentelemetry-otlp` exporter arrive as rows.

use opentelemetry::KeyValue;
use std::collections::HashMap;

use opentelemetry::Key;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _};
use opentelemetry::trace::{Span as _, Status, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use usage_pipeline_tests::collector::start_with_mysql;

#[tokio::test(flavor = "multi_thread")]
async fn the_otlp_exporter_delivers_log_events_and_spans() {
    let (db, collector) = start_with_mysql().await;
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
    let emit = |name: &'static str, attributes: Vec<(&'static str, AnyValue)>| {
        let mut record = logger.create_log_record();
        record.set_event_name(name);
        record.set_timestamp(std::time::SystemTime::now());
        record.add_attribute("event.id", uuid::Uuid::now_v7().to_string());
        record.add_attribute("session.id", "sdk-1");
        for (key, value) in attributes {
            record.add_attribute(key, value);
        }
        logger.emit(record);
    };
    emit(
        "session_start",
        vec![
            ("user_agent.original", "Mozilla/5.0 \"sdk\"".into()),
            ("client.address", "198.51.100.4".into()),
            ("user.id", "u-sdk".into()),
        ],
    );
    emit(
        "page_visit",
        vec![
            ("url.path", "/ide/naïve 'quote'".into()),
            (
                "http.request.header.referer",
                AnyValue::ListAny(Box::new(vec!["https://example.org/".into()])),
            ),
        ],
    );
    emit(
        "program_execution",
        vec![
            ("program.lines", 20i64.into()),
            ("program.lines_executed", 55i64.into()),
            ("program.duration_ms", 8i64.into()),
            ("program.success", true.into()),
        ],
    );
    let data = HashMap::from([(Key::from("autosave"), AnyValue::from(true))]);
    emit(
        "feature_use",
        vec![
            ("feature.name", "run_button".into()),
            ("feature.data", AnyValue::Map(Box::new(data))),
        ],
    );
    emit("share_link", vec![("link.kind", "public".into())]);
    emit("session_end", vec![]);

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
    let started = std::time::SystemTime::now();
    let mut span = tracer
        .span_builder("program_execution")
        .with_start_time(started)
        .start(&tracer);
    span.set_attribute(KeyValue::new("session.id", "sdk-1"));
    span.set_attribute(KeyValue::new("program.lines", 3i64));
    span.set_status(Status::error("TYPE MISMATCH"));
    span.end_with_timestamp(started + std::time::Duration::from_millis(250));

    tokio::task::spawn_blocking(move || {
        logs.shutdown().expect("logs flushed");
        traces.shutdown().expect("spans flushed");
    })
    .await
    .unwrap();
    collector
        .wait_written(std::time::Duration::from_secs(10))
        .await;

    let s = |t: &str| Some(t.to_owned());
    assert_eq!(
        db.texts("SELECT service, session_id, page_path, referrer FROM page_visits")
            .await,
        [vec![
            s("web-ide-sdk"),
            s("sdk-1"),
            s("/ide/naïve 'quote'"),
            s("https://example.org/")
        ]]
    );
    let features = db
        .texts("SELECT feature_name, CAST(feature_data AS CHAR) FROM feature_usage")
        .await;
    assert_eq!(features[0][0], s("run_button"));
    let data: serde_json::Value = serde_json::from_str(features[0][1].as_deref().unwrap()).unwrap();
    assert_eq!(data, serde_json::json!({"autosave": true}));
    assert_eq!(
        db.texts(
            "SELECT CAST(program_lines AS CHAR), CAST(lines_executed AS CHAR), CAST(execution_time_ms AS CHAR), \
             CAST(success AS CHAR), error_message FROM program_executions ORDER BY success DESC"
        )
        .await,
        [
            vec![s("20"), s("55"), s("8"), s("1"), None],
            vec![s("3"), None, s("250"), s("0"), s("TYPE MISMATCH")],
        ]
    );
    assert_eq!(
        db.texts("SELECT event_name, CAST(attributes AS CHAR) FROM usage_events")
            .await[0][0],
        s("share_link")
    );
    assert_eq!(
        db.texts(
            "SELECT user_id, user_agent, ip_address, CAST(programs_run AS CHAR), CAST(lines_executed AS CHAR), \
             CAST(errors_encountered AS CHAR), CAST(end_time IS NOT NULL AS CHAR) FROM ide_sessions"
        )
        .await,
        [vec![s("u-sdk"), s("Mozilla/5.0 \"sdk\""), s("198.51.100.4"), s("2"), s("55"), s("1"), s("1")]]
    );
    collector.stop().await;
}
