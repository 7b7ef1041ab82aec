//! The recommended OpenTelemetry Collector configuration (`deploy/otelcol/config.yaml`) in a
//! real OpenTelemetry Collector, between an app and usage-collector (on MariaDB) and Jaeger:
//! the app's usage events become rows exactly once, its ordinary traces reach Jaeger and write
//! no row, and its ordinary logs go to neither.
//!
//! Needs the peers built by `scripts/peers-setup` (`scripts/test` runs it first).

use std::time::Duration;

use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use usage_pipeline_tests::collector::start_with_mysql;
use usage_pipeline_tests::exposition;
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::peers::{Backends, Jaeger, OtelCol};
use usage_pipeline_tests::poll;

/// How long a record may take through the OpenTelemetry Collector (its batches wait 200 ms)
/// and usage-collector's spool into MariaDB, on a busy 2-core machine.
const DELIVERY: Duration = Duration::from_secs(30);

const MS: u64 = 1_000_000;

#[tokio::test(flavor = "multi_thread")]
async fn usage_events_reach_mysql_and_app_traces_reach_jaeger_through_the_recommended_collector() {
    let (db, collector) = start_with_mysql().await;
    let jaeger = Jaeger::start().await;
    let otelcol = OtelCol::start(Backends {
        usage_collector: collector.grpc,
        traces: jaeger.otlp_addr(),
    })
    .await;

    // What a web IDE sends its site's collector: three page visits as log records with an
    // event name, an ordinary request log beside them, an HTTP server span and a program run
    // recorded as a span with `event.name`.
    let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let paths = ["/ide", "/ide/programs/42", "/docs/basic"];
    let mut records: Vec<LogRecord> = (0..3)
        .map(|i| {
            event(
                "page_visit",
                T0 + i as u64 * SECOND,
                vec![
                    kv("event.id", ids[i].as_str()),
                    kv("session.id", "s-peers"),
                    kv("url.path", paths[i]),
                ],
            )
        })
        .collect();
    records.push(LogRecord {
        time_unix_nano: T0,
        severity_text: "INFO".to_owned(),
        body: Some(v("GET /ide 200 in 3 ms")),
        attributes: vec![kv("http.route", "/ide")],
        ..Default::default()
    });
    let logs = send_logs(&otelcol.endpoint(), logs_request("web-ide", records), true)
        .await
        .expect("the OpenTelemetry Collector accepts the logs");
    // Go's OTLP receiver answers with an empty partial success rather than none.
    assert_eq!(
        logs.partial_success.unwrap_or_default(),
        Default::default(),
        "nothing rejected"
    );

    let request_span = opentelemetry_proto::tonic::trace::v1::Span {
        kind: SpanKind::Server as i32,
        ..span(
            "GET /ide",
            1,
            T0,
            T0 + 3 * MS,
            None,
            vec![
                kv("http.request.method", "GET"),
                kv("http.route", "/ide"),
                kv("url.path", "/ide"),
                kv("http.response.status_code", 200i64),
            ],
        )
    };
    let run_span = span(
        "program_execution",
        2,
        T0 + 5 * SECOND,
        T0 + 5 * SECOND + 250 * MS,
        None,
        vec![
            kv("event.name", "program_execution"),
            kv("session.id", "s-peers"),
            kv("program.lines", 12i64),
            kv("program.lines_executed", 340i64),
        ],
    );
    let traces = send_traces(
        &otelcol.endpoint(),
        traces_request("web-ide", vec![request_span, run_span]),
    )
    .await
    .expect("the OpenTelemetry Collector accepts the spans");
    assert_eq!(
        traces.partial_success.unwrap_or_default(),
        Default::default(),
        "nothing rejected"
    );

    // usage-collector hears exactly the usage records: the gateway kept the request log and
    // the HTTP span from it.
    let metrics = poll::until(
        "usage-collector received 3 log records and 1 span (logs, traces)",
        DELIVERY,
        || async {
            let text = collector.get("/metrics").await.1;
            let received = |signal: &str| {
                exposition::value(
                    &text,
                    &format!("usage_collector_records_received_total{{signal=\"{signal}\"}}"),
                )
            };
            (received("logs"), received("traces"), text)
        },
        |(logs, traces, _)| *logs >= Some(3.0) && *traces >= Some(1.0),
    )
    .await;
    assert_eq!(
        (metrics.0, metrics.1),
        (Some(3.0), Some(1.0)),
        "records usage-collector received (logs, traces): only the usage records, once"
    );
    collector.wait_written(DELIVERY).await;

    // Each usage event is one row, column by column.
    let s = |t: &str| Some(t.to_owned());
    let visits = db
        .texts(
            "SELECT LOWER(HEX(event_id)), service, session_id, user_id, CAST(`timestamp` AS CHAR), \
             page_path, referrer, user_agent, ip_address FROM page_visits ORDER BY `timestamp`",
        )
        .await;
    let hex = |id: &str| Some(id.replace('-', ""));
    assert_eq!(
        visits,
        [
            vec![
                hex(&ids[0]),
                s("web-ide"),
                s("s-peers"),
                None,
                s("2026-03-04 05:06:07.123456"),
                s("/ide"),
                None,
                None,
                None,
            ],
            vec![
                hex(&ids[1]),
                s("web-ide"),
                s("s-peers"),
                None,
                s("2026-03-04 05:06:08.123456"),
                s("/ide/programs/42"),
                None,
                None,
                None,
            ],
            vec![
                hex(&ids[2]),
                s("web-ide"),
                s("s-peers"),
                None,
                s("2026-03-04 05:06:09.123456"),
                s("/docs/basic"),
                None,
                None,
                None,
            ],
        ]
    );
    let runs = db
        .texts(
            "SELECT service, session_id, CAST(`timestamp` AS CHAR), CAST(program_lines AS CHAR), \
             CAST(lines_executed AS CHAR), CAST(execution_time_ms AS CHAR), CAST(success AS CHAR), \
             error_message FROM program_executions",
        )
        .await;
    assert_eq!(
        runs,
        [vec![
            s("web-ide"),
            s("s-peers"),
            s("2026-03-04 05:06:12.123456"),
            s("12"),
            s("340"),
            s("250"),
            s("1"),
            None,
        ]]
    );
    // The app's ordinary span and log wrote nothing.
    assert_eq!(db.count("usage_events").await, 0, "usage_events");
    assert_eq!(db.count("feature_usage").await, 0, "feature_usage");

    // Jaeger has the HTTP span, and only it: the program run went to usage-collector alone.
    let spans = poll::until(
        "the HTTP span of web-ide in Jaeger",
        DELIVERY,
        || jaeger.spans("web-ide"),
        |spans| matches!(spans, Ok(spans) if !spans.is_empty()),
    )
    .await
    .expect("Jaeger's traces");
    let names: Vec<&str> = spans
        .iter()
        .map(|span| span["operationName"].as_str().expect("an operationName"))
        .collect();
    assert_eq!(names, ["GET /ide"], "spans in Jaeger: {spans:#?}");
    let tag = |key: &str| {
        spans[0]["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .find(|tag| tag["key"] == key)
            .map(|tag| tag["value"].clone())
    };
    assert_eq!(tag("span.kind"), Some(serde_json::json!("server")));
    assert_eq!(tag("http.route"), Some(serde_json::json!("/ide")));
    assert_eq!(spans[0]["duration"], 3_000, "duration in µs");

    // The persistent queue is where the configuration says.
    assert!(
        otelcol
            .storage_dir()
            .read_dir()
            .expect("file_storage folder")
            .next()
            .is_some(),
        "the persistent queue's files in {}",
        otelcol.storage_dir().display()
    );

    drop(otelcol);
    drop(jaeger);
    collector.stop().await;
}
