//! Retries, ordering, partial success, limits and compression, against MariaDB.

use opentelemetry_proto::tonic::logs::v1::LogRecord;
use usage_pipeline_tests::collector::{TestCollector, settings, start_with_mysql};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::assert_exposes;
use usage_pipeline_tests::fixtures::*;

fn run(session: &str, i: u8, ok: bool) -> LogRecord {
    let mut attributes = vec![
        kv("session.id", session),
        kv("program.lines", 10i64),
        kv("program.lines_executed", i64::from(i) * 10),
    ];
    if !ok {
        attributes.push(kv("error.message", "OUT OF DATA"));
    }
    event("program_execution", T0 + u64::from(i) * SECOND, attributes)
}

#[tokio::test(flavor = "multi_thread")]
async fn session_counters_are_right_after_retries_and_out_of_order_arrival() {
    let (db, collector) = start_with_mysql().await;
    let endpoint = collector.endpoint();
    // Runs arrive before the session start, and everything is sent twice.
    let runs = logs_request(
        "web-ide",
        vec![run("s9", 1, true), run("s9", 2, false), run("s9", 3, true)],
    );
    let span_run = traces_request(
        "web-ide",
        vec![span(
            "program_execution",
            1,
            T0 + 4 * SECOND,
            T0 + 5 * SECOND,
            None,
            vec![kv("session.id", "s9")],
        )],
    );
    let start = logs_request(
        "web-ide",
        vec![event(
            "session_start",
            T0 - 30 * SECOND,
            vec![kv("session.id", "s9")],
        )],
    );
    let end = logs_request(
        "web-ide",
        vec![event(
            "session_end",
            T0 + 90 * SECOND,
            vec![kv("session.id", "s9")],
        )],
    );
    for _ in 0..2 {
        send_logs(&endpoint, runs.clone(), false).await.unwrap();
        send_traces(&endpoint, span_run.clone()).await.unwrap();
        send_logs(&endpoint, end.clone(), false).await.unwrap();
        send_logs(&endpoint, start.clone(), false).await.unwrap();
    }
    collector
        .wait_written(std::time::Duration::from_secs(10))
        .await;
    assert_eq!(db.count("program_executions").await, 4);
    let session = db
        .texts(
            "SELECT CAST(start_time AS CHAR), CAST(end_time AS CHAR), CAST(duration_seconds AS CHAR), \
             CAST(programs_run AS CHAR), CAST(lines_executed AS CHAR), CAST(errors_encountered AS CHAR) \
             FROM ide_sessions WHERE session_id = 's9'",
        )
        .await;
    let s = |t: &str| Some(t.to_owned());
    assert_eq!(
        session,
        [vec![
            s("2026-03-04 05:05:37.123456"),
            s("2026-03-04 05:07:37.123456"),
            s("120"),
            s("4"),
            s("60"),
            s("1"),
        ]]
    );
    let summary = db
        .texts("SELECT CAST(programs_run AS CHAR), CAST(page_visits AS CHAR) FROM session_summary WHERE session_id = 's9'")
        .await;
    assert_eq!(summary, [vec![s("4"), s("0")]]);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_request_twice_leaves_one_row_per_event() {
    let (db, collector) = start_with_mysql().await;
    // No event.id: the collector derives a stable id from the record itself.
    let request = logs_request(
        "web-ide",
        (0..50)
            .map(|i| {
                event(
                    "page_visit",
                    T0 + i * SECOND,
                    vec![kv("url.path", format!("/p/{i}"))],
                )
            })
            .collect(),
    );
    for _ in 0..2 {
        send_logs(&collector.endpoint(), request.clone(), true)
            .await
            .unwrap();
    }
    collector
        .wait_written(std::time::Duration::from_secs(10))
        .await;
    assert_eq!(db.count("page_visits").await, 50);
    let metrics = collector.get("/metrics").await.1;
    assert_exposes(
        &metrics,
        &[
            "usage_collector_rows_written_total{table=\"page_visits\"} 100",
            "usage_collector_records_accepted_total{signal=\"logs\"} 100",
        ],
    );
    // Reconciliation: every accepted event was written (a repeat is a no-op write).
    assert_exposes(
        &metrics,
        &[
            "usage_collector_events_written_total 100",
            "usage_collector_events_total{service_name=\"web-ide\",event=\"page_visit\"} 100",
            "usage_collector_service_last_seen_timestamp_seconds{service_name=\"web-ide\"}",
        ],
    );
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_records_are_refused_alone_and_valid_ones_written() {
    let (db, collector) = start_with_mysql().await;
    let request = logs_request(
        "web-ide",
        vec![
            event("page_visit", T0, vec![kv("url.path", "/ok/1")]),
            event("page_visit", T0, vec![kv("user_agent.original", "no path")]),
            event("program_execution", T0, vec![kv("program.lines", "twelve")]),
            LogRecord {
                time_unix_nano: T0,
                ..Default::default()
            },
            event(
                "feature_use",
                T0,
                vec![kv("feature.name", "x"), kv("feature.data", "{not json")],
            ),
            event("page_visit", T0 + 1, vec![kv("url.path", "/ok/2")]),
        ],
    );
    let answer = send_logs(&collector.endpoint(), request, false)
        .await
        .unwrap();
    let partial = answer.partial_success.expect("partial success");
    assert_eq!(partial.rejected_log_records, 4);
    assert_eq!(
        partial.error_message,
        "log record 1 of resource 0, scope 0 (event `page_visit`): event `page_visit` needs attribute \
         `url.path`; and 3 more rejected"
    );
    collector
        .wait_written(std::time::Duration::from_secs(10))
        .await;
    let paths = db
        .texts("SELECT page_path FROM page_visits ORDER BY page_path")
        .await;
    assert_eq!(
        paths,
        [
            vec![Some("/ok/1".to_owned())],
            vec![Some("/ok/2".to_owned())]
        ]
    );
    assert_eq!(
        db.count("program_executions").await + db.count("feature_usage").await,
        0
    );
    let metrics = collector.get("/metrics").await.1;
    assert_exposes(
        &metrics,
        &[
            "usage_collector_records_rejected_total{signal=\"logs\",reason=\"missing_attribute\"} 1",
            "usage_collector_records_rejected_total{signal=\"logs\",reason=\"wrong_type\"} 2",
            // A log record with no name, under no usage scope: an app's log, not a usage event.
            "usage_collector_records_rejected_total{signal=\"logs\",reason=\"not_a_usage_event\"} 1",
            "usage_collector_records_accepted_total{signal=\"logs\"} 2",
        ],
    );
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_requests_get_resource_exhausted_and_metrics_are_unimplemented() {
    let db = TestDb::mysql().await;
    let mut config = settings(db.url());
    config.limits.max_request_bytes = 64 * 1024;
    let collector = TestCollector::start(config).await;
    let big = page_visits("web-ide", &"/x".repeat(300), 0..200);
    for gzip in [false, true] {
        let status = send_logs(&collector.endpoint(), big.clone(), gzip)
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "gzip={gzip}: {status:?}"
        );
    }
    assert_eq!(db.count("page_visits").await, 0);
    // A small gzip request is fine.
    let small = logs_request(
        "web-ide",
        vec![event("page_visit", T0, vec![kv("url.path", "/small")])],
    );
    send_logs(&collector.endpoint(), small, true).await.unwrap();
    collector
        .wait_written(std::time::Duration::from_secs(10))
        .await;
    assert_eq!(db.count("page_visits").await, 1);

    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    let mut client = MetricsServiceClient::connect(collector.endpoint())
        .await
        .unwrap();
    let status = client
        .export(ExportMetricsServiceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(
        status
            .message()
            .contains("usage events as OTLP logs or spans"),
        "{status:?}"
    );
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_protobuf_gets_invalid_argument_and_well_formed_bytes_land() {
    use prost::Message;
    use prost::bytes::Bytes;
    use usage_pipeline_tests::loadgen::{Signal, send_encoded};
    let (db, collector) = start_with_mysql().await;
    let endpoint = collector.endpoint();
    // A length-delimited field that claims more bytes than follow.
    let garbage = Bytes::from_static(b"\x0a\xff\x01\x00");
    for signal in [Signal::Logs, Signal::Traces] {
        let status = send_encoded(&endpoint, signal, garbage.clone())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("not a valid OTLP export request"),
            "{status:?}"
        );
    }
    // The same path takes a well-formed request's bytes as they are.
    let good = logs_request(
        "web-ide",
        vec![event("page_visit", T0, vec![kv("url.path", "/ok")])],
    );
    let rejected = send_encoded(&endpoint, Signal::Logs, Bytes::from(good.encode_to_vec()))
        .await
        .unwrap();
    assert_eq!(rejected, 0);
    collector
        .wait_written(std::time::Duration::from_secs(10))
        .await;
    assert_eq!(db.count("page_visits").await, 1);
    collector.stop().await;
}
