//! Only usage events become rows: an app's own spans (an HTTP server span, a database call)
//! sent on the same pipeline write nothing, are counted per service and answered as refused,
//! while a declared usage span, a span under the usage-tracker's scope and a log record sent as
//! an event still land; `catalog.non_usage_records = store` keeps the old behaviour. On MariaDB
//! and SQLite, over OTLP/gRPC and OTLP/HTTP, on the real binary.

use std::time::Duration;

use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::assert_exposes;
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::otlp_http::Transport;
use usage_pipeline_tests::process::{CollectorProcess, ProcessConfig, temp_dir};

const BIN: &str = env!("CARGO_BIN_EXE_usage-collector-e2e");

/// The real collector on `db`, with `extra` flags; its folder is removed when the test ends.
async fn collector(db: &TestDb, extra: &[&str]) -> (ProcessConfig, CollectorProcess) {
    let dir = temp_dir("usage_events_rule");
    let mut config = ProcessConfig::new(BIN, db.url(), &dir);
    config.extra = extra.iter().map(|s| (*s).to_owned()).collect();
    let process = config.start_ready().await;
    (config, process)
}

fn log_of(config: &ProcessConfig) -> String {
    std::fs::read_to_string(&config.log).unwrap_or_default()
}

/// What a web app instrumented with the OpenTelemetry SDK sends on its trace pipeline: its
/// HTTP server span and its database client span, under their instrumentation libraries.
fn app_spans() -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    under_scope(
        traces_request(
            "web-ide",
            vec![
                span(
                    "GET /ide/{program}",
                    1,
                    T0,
                    T0 + 20_000_000,
                    None,
                    vec![
                        kv("http.request.method", "GET"),
                        kv("http.route", "/ide/{program}"),
                        kv("http.response.status_code", 200i64),
                    ],
                ),
                span(
                    "SELECT programs",
                    2,
                    T0 + 1_000_000,
                    T0 + 4_000_000,
                    None,
                    vec![
                        kv("db.system.name", "mariadb"),
                        kv("db.query.text", "SELECT * FROM programs WHERE id = ?"),
                    ],
                ),
            ],
        ),
        "opentelemetry.instrumentation.flask",
    )
}

/// Usage spans: a declared event named by its span name, and an undeclared one under the
/// usage-tracker's scope.
fn usage_spans() -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    let mut request = traces_request(
        "web-ide",
        vec![span(
            "program_execution",
            3,
            T0,
            T0 + 250_000_000,
            None,
            vec![kv("session.id", "s1"), kv("program.lines", 5i64)],
        )],
    );
    let scoped = under_scope(
        traces_request(
            "web-ide",
            vec![span("compile_program", 4, T0, T0 + SECOND, None, vec![])],
        ),
        "usage",
    );
    request.resource_spans.extend(scoped.resource_spans);
    request
}

async fn only_usage_events_become_rows(db: TestDb, transport: Transport) {
    let (collector, process) = collector(&db, &[]).await;
    let answer = transport
        .send_traces(&collector, app_spans())
        .await
        .expect("the request is answered");
    let partial = answer.partial_success.expect("both spans refused");
    assert_eq!(partial.rejected_spans, 2);
    assert_eq!(
        partial.error_message,
        "span 0 of resource 0, scope 0: span \"GET /ide/{program}\" is not a usage event (it has \
         no `event.name` attribute, its name is not in the tracking plan, and it is not under \
         the `usage` scope); it was not stored: send usage events with an event name (the \
         `event.name` attribute) or under the `usage` scope, or declare the name in the \
         tracking plan (docs/usage-events.md); and 1 more rejected"
    );
    let answer = transport
        .send_traces(&collector, usage_spans())
        .await
        .expect("usage spans taken");
    assert_eq!(answer.partial_success, None);
    let logs = logs_request(
        "web-ide",
        vec![event("export_pdf", T0, vec![kv("pages", 3i64)])],
    );
    let answer = transport.send_logs(&collector, logs).await.unwrap();
    assert_eq!(answer.partial_success, None);
    process.wait_drained(Duration::from_secs(10)).await;

    assert_eq!(db.count("program_executions").await, 1);
    let names = db
        .texts("SELECT event_name FROM usage_events ORDER BY event_name")
        .await;
    assert_eq!(
        names,
        [
            vec![Some("compile_program".to_owned())],
            vec![Some("export_pdf".to_owned())]
        ],
        "no row for the app's own spans"
    );
    let metrics = process.metrics().await;
    assert_exposes(
        &metrics,
        &[
            "usage_collector_records_not_usage_total{service_name=\"web-ide\",signal=\"traces\"} 2",
            "usage_collector_records_rejected_total{signal=\"traces\",reason=\"not_a_usage_event\"} 2",
            "usage_collector_records_accepted_total{signal=\"traces\"} 2",
        ],
    );
    // In the status, per service: the two records that were not usage events.
    let (ok, out, _) = {
        let output = std::process::Command::new(BIN)
            .args(["status", "--json", "--admin-url"])
            .arg(format!("http://{}", collector.admin))
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["services"][0]["service"], "web-ide");
    assert_eq!(
        status["services"][0]["not_usage_last_minute"], 2,
        "{status}"
    );
    // Said in the log, once for now (at most once a minute), at WARN.
    let log = log_of(&collector);
    assert_eq!(
        log.matches("records that are not usage events arrive")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("WARN"), "{log}");
    drop(process);
    std::fs::remove_dir_all(collector.spool_dir.parent().unwrap()).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apps_own_spans_write_no_row_on_mariadb_over_grpc() {
    only_usage_events_become_rows(TestDb::mysql().await, Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apps_own_spans_write_no_row_on_mariadb_over_http() {
    only_usage_events_become_rows(TestDb::mysql().await, Transport::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apps_own_spans_write_no_row_on_sqlite_over_http_json() {
    only_usage_events_become_rows(TestDb::sqlite().await, Transport::HttpJson).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apps_own_spans_write_no_row_on_sqlite_over_grpc() {
    only_usage_events_become_rows(TestDb::sqlite().await, Transport::Grpc).await;
}

/// `non_usage_records = store`: the app's spans land in usage_events as before, still counted.
async fn the_store_setting_keeps_every_record(db: TestDb, transport: Transport) {
    let (collector, process) = collector(&db, &["--non-usage-records", "store"]).await;
    let answer = transport
        .send_traces(&collector, app_spans())
        .await
        .unwrap();
    assert_eq!(answer.partial_success, None);
    process.wait_drained(Duration::from_secs(10)).await;
    let names = db
        .texts("SELECT event_name FROM usage_events ORDER BY event_name")
        .await;
    assert_eq!(
        names,
        [
            vec![Some("GET /ide/{program}".to_owned())],
            vec![Some("SELECT programs".to_owned())]
        ]
    );
    assert_exposes(
        &process.metrics().await,
        &["usage_collector_records_not_usage_total{service_name=\"web-ide\",signal=\"traces\"} 2"],
    );
    drop(process);
    std::fs::remove_dir_all(collector.spool_dir.parent().unwrap()).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_setting_keeps_an_apps_spans_on_mariadb_over_http() {
    the_store_setting_keeps_every_record(TestDb::mysql().await, Transport::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_setting_keeps_an_apps_spans_on_sqlite_over_grpc() {
    the_store_setting_keeps_every_record(TestDb::sqlite().await, Transport::Grpc).await;
}
