//! Each catalogue event becomes exactly the expected row, column by column, on MariaDB and on
//! the embedded SQLite default, whichever transport carries it: OTLP/gRPC, OTLP/HTTP with
//! protobuf, OTLP/HTTP with JSON.

use serde_json::json;
use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::assert_exposes;
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::otlp_http::Transport;

const PAGE_ID: &str = "0190f3a8-8c2e-7d41-9a5b-3c2d1e0f4a5b";
const PATH: &str = "/édition/«quote\"s»\\back'tick";

fn requests() -> (
    opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest,
    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) {
    let long_agent = "é".repeat(600);
    let logs = logs_request(
        "web-ide",
        vec![
            event(
                "page_visit",
                T0,
                vec![
                    kv("event.id", PAGE_ID),
                    kv("session.id", "s1"),
                    kv("url.path", PATH),
                    kv(
                        "http.request.header.referer",
                        strings(&["https://example.org/ß", "x"]),
                    ),
                    kv("user_agent.original", long_agent.as_str()),
                    kv("client.address", "203.0.113.9"),
                ],
            ),
            event(
                "session_start",
                T0 - 10 * SECOND,
                vec![
                    kv("session.id", "s1"),
                    kv("user.id", "u-1"),
                    kv("user_agent.original", "Mozilla/5.0 'quoted' \\ \"agent\""),
                    kv("client.address", "2001:db8::1"),
                ],
            ),
            event(
                "program_execution",
                T0 + SECOND,
                vec![
                    kv("session.id", "s1"),
                    kv("program.lines", 12i64),
                    kv("program.lines_executed", 40.0),
                    kv("program.duration_ms", 15i64),
                    kv("program.success", false),
                    kv("error.message", "SYNTAX ERROR IN 20 \"x\""),
                ],
            ),
            event(
                "feature_use",
                T0 + 2 * SECOND,
                vec![
                    kv("session.id", "s1"),
                    kv("feature.name", "autosave"),
                    kv(
                        "feature.data",
                        kvlist(vec![kv("interval", 30i64), kv("enabled", true)]),
                    ),
                ],
            ),
            event(
                "feature_use",
                T0 + 3 * SECOND,
                vec![
                    kv("feature.name", "theme"),
                    kv("feature.data", "{\"theme\":\"dark\"}"),
                ],
            ),
            event(
                "export_pdf",
                T0 + 4 * SECOND,
                vec![kv("user.id", "u-1"), kv("pages", 3i64), kv("format", "a4")],
            ),
            event(
                "session_end",
                T0 + 60 * SECOND,
                vec![kv("session.id", "s1")],
            ),
        ],
    );
    let traces = traces_request(
        "web-ide",
        vec![span(
            "program_execution",
            7,
            T0 + 5 * SECOND,
            T0 + 5 * SECOND + 250_000_000,
            Some("DIVISION BY ZERO"),
            vec![
                kv("session.id", "s1"),
                kv("program.lines", 5i64),
                kv("program.lines_executed", 7i64),
                kv("program.duration_ms", 99_999i64),
            ],
        )],
    );
    (logs, traces)
}

fn s(text: &str) -> Option<String> {
    Some(text.to_owned())
}

/// With `migrate` false the collector must create the schema itself (the embedded default).
async fn catalogue_roundtrip(db: TestDb, migrate: bool, transport: Transport) {
    let collector = TestCollector::start_unready(settings(db.url()), migrate).await;
    collector
        .wait_ready(std::time::Duration::from_secs(10))
        .await;
    let (logs, traces) = requests();
    let answer = transport
        .send_logs(&collector, logs)
        .await
        .expect("logs accepted");
    assert_eq!(answer.partial_success, None);
    let answer = transport
        .send_traces(&collector, traces)
        .await
        .expect("spans accepted");
    assert_eq!(answer.partial_success, None);
    collector
        .wait_written(std::time::Duration::from_secs(10))
        .await;

    let page = db
        .texts(
            "SELECT HEX(event_id), service, session_id, user_id, CAST(`timestamp` AS CHAR), page_path, \
             referrer, user_agent, ip_address FROM page_visits",
        )
        .await;
    assert_eq!(
        page,
        [vec![
            s(&PAGE_ID.replace('-', "").to_uppercase()),
            s("web-ide"),
            s("s1"),
            None,
            s("2026-03-04 05:06:07.123456"),
            s(PATH),
            s("https://example.org/ß"),
            s(&"é".repeat(512)),
            s("203.0.113.9"),
        ]]
    );

    let session = db
        .texts(
            "SELECT session_id, service, user_id, CAST(start_time AS CHAR), CAST(last_activity AS CHAR), \
             CAST(end_time AS CHAR), CAST(duration_seconds AS CHAR), user_agent, ip_address, \
             CAST(programs_run AS CHAR), CAST(lines_executed AS CHAR), CAST(errors_encountered AS CHAR) \
             FROM ide_sessions",
        )
        .await;
    assert_eq!(
        session,
        [vec![
            s("s1"),
            s("web-ide"),
            s("u-1"),
            s("2026-03-04 05:05:57.123456"),
            s("2026-03-04 05:07:07.123456"),
            s("2026-03-04 05:07:07.123456"),
            s("70"),
            s("Mozilla/5.0 'quoted' \\ \"agent\""),
            s("2001:db8::1"),
            s("2"),
            s("47"),
            s("2"),
        ]]
    );

    let runs = db
        .texts(
            "SELECT session_id, CAST(`timestamp` AS CHAR), CAST(program_lines AS CHAR), \
             CAST(execution_time_ms AS CHAR), CAST(lines_executed AS CHAR), CAST(success AS CHAR), \
             error_message FROM program_executions ORDER BY `timestamp`",
        )
        .await;
    assert_eq!(
        runs,
        [
            vec![
                s("s1"),
                s("2026-03-04 05:06:08.123456"),
                s("12"),
                s("15"),
                s("40"),
                s("0"),
                s("SYNTAX ERROR IN 20 \"x\""),
            ],
            vec![
                s("s1"),
                s("2026-03-04 05:06:12.123456"),
                s("5"),
                s("250"),
                s("7"),
                s("0"),
                s("DIVISION BY ZERO"),
            ],
        ]
    );

    let features = db
        .texts("SELECT session_id, feature_name, CAST(feature_data AS CHAR) FROM feature_usage ORDER BY `timestamp`")
        .await;
    assert_eq!(features.len(), 2);
    assert_eq!(features[0][..2], [s("s1"), s("autosave")]);
    assert_eq!(features[1][..2], [None, s("theme")]);
    let data = |row: &Vec<Option<String>>| -> serde_json::Value {
        serde_json::from_str(row[2].as_deref().expect("feature data")).expect("valid JSON")
    };
    assert_eq!(data(&features[0]), json!({"interval": 30, "enabled": true}));
    assert_eq!(data(&features[1]), json!({"theme": "dark"}));

    let custom = db
        .texts(
            "SELECT event_name, service, session_id, user_id, trace_id, CAST(attributes AS CHAR) FROM usage_events",
        )
        .await;
    assert_eq!(custom.len(), 1);
    assert_eq!(
        custom[0][..5],
        [s("export_pdf"), s("web-ide"), None, s("u-1"), None]
    );
    let attributes: serde_json::Value =
        serde_json::from_str(custom[0][5].as_deref().unwrap()).unwrap();
    assert_eq!(attributes, json!({"pages": 3, "format": "a4"}));

    let metrics = collector.get("/metrics").await.1;
    assert_exposes(
        &metrics,
        &[
            "usage_collector_records_accepted_total{signal=\"logs\"} 7",
            "usage_collector_records_accepted_total{signal=\"traces\"} 1",
            "usage_collector_text_truncated_total{table=\"page_visits\",column=\"user_agent\"} 1",
        ],
    );
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_catalogue_event_becomes_its_row_in_mariadb() {
    catalogue_roundtrip(TestDb::mysql().await, true, Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_catalogue_event_becomes_its_row_in_sqlite() {
    catalogue_roundtrip(TestDb::sqlite().await, false, Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_catalogue_event_becomes_its_row_over_otlp_http_protobuf_in_mariadb() {
    catalogue_roundtrip(TestDb::mysql().await, true, Transport::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_catalogue_event_becomes_its_row_over_otlp_http_json_in_mariadb() {
    catalogue_roundtrip(TestDb::mysql().await, true, Transport::HttpJson).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_catalogue_event_becomes_its_row_over_otlp_http_json_in_sqlite() {
    catalogue_roundtrip(TestDb::sqlite().await, false, Transport::HttpJson).await;
}
