//! usage-collector behind a real OpenTelemetry Collector running the recommended configuration
//! (`deploy/otelcol/config.yaml`), on the real binaries and a real MariaDB, and its own spans in
//! a real Jaeger:
//!
//! - the Python SDK → OpenTelemetry Collector → usage-collector → MariaDB, column by column,
//!   every event once; the app's own HTTP span reaches Jaeger and not MySQL;
//! - usage-collector stopped (SIGTERM), killed (SIGKILL) and its database cut while the
//!   OpenTelemetry Collector keeps sending: nothing lost, nothing doubled;
//! - a record usage-collector rejects (partial success): the OpenTelemetry Collector sends it
//!   once and does not retry it;
//! - a throttled answer (spool full: UNAVAILABLE with RetryInfo 2 s): retried, never sooner;
//! - usage-collector's own spans in Jaeger: receiving a request, writing a batch, the app's
//!   trace context carried into both (sent directly; through the gateway it stops there), and a
//!   database outage as error spans.
//!
//! `docs/behind-an-opentelemetry-collector.md` describes what these show, with their figures.
//!
//! Each test prints its figures on a `figures:` line (`cargo test … -- --nocapture`).
//! Needs the peers built by `scripts/peers-setup` and the Python client installed by
//! `scripts/clients-setup` (`scripts/test` runs both first).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::Value;
use usage_pipeline_tests::clients::{self, Run, assert_python_session, client_command};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::{self, Accounting, sum_where, value};
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::load::{Load, check_present, check_session_counters};
use usage_pipeline_tests::otlp_http;
use usage_pipeline_tests::peers::{Backends, Jaeger, OtelCol};
use usage_pipeline_tests::poll;
use usage_pipeline_tests::process::{CollectorProcess, ProcessConfig, free_addr, temp_dir};
use usage_pipeline_tests::proxy::Proxy;

const BIN: &str = env!("CARGO_BIN_EXE_usage-collector-e2e");

/// How long events may take from the OpenTelemetry Collector's queue (its batches wait
/// 200 ms, its retries up to 30 s apart) into MariaDB, on a busy 2-core machine.
const DELIVERY: Duration = Duration::from_secs(90);

/// How long a span may take to reach Jaeger (the collector's batch span processor exports
/// every 5 s).
const SPANS: Duration = Duration::from_secs(40);

/// The OpenTelemetry Collector's exporter towards usage-collector, as its metrics label it.
const TO_USAGE: &str = "exporter=\"otlp_grpc/usage_collector\"";
/// Its exporter towards Jaeger.
const TO_TRACES: &str = "exporter=\"otlp_grpc/traces\"";

const MS: u64 = 1_000_000;

/// A usage-collector process on MariaDB, reached through a proxy a test can cut.
struct Stack {
    db: TestDb,
    proxy: Proxy,
    config: ProcessConfig,
    collector: Option<CollectorProcess>,
    dir: PathBuf,
}

impl Stack {
    /// A fresh database, the proxy in front of it, and usage-collector (`configure` adjusts
    /// its settings) started and ready.
    async fn start(configure: impl FnOnce(&mut ProcessConfig)) -> Self {
        let db = TestDb::mysql().await;
        let (proxy, url) = Proxy::in_front_of(&db).await;
        let dir = temp_dir("usage_behind_otelcol");
        let mut config = ProcessConfig::new(BIN, &url, &dir);
        configure(&mut config);
        let collector = Some(config.start_ready().await);
        Self {
            db,
            proxy,
            config,
            collector,
            dir,
        }
    }

    fn collector(&self) -> &CollectorProcess {
        self.collector.as_ref().expect("usage-collector is running")
    }

    /// usage-collector's `/metrics`.
    async fn metrics(&self) -> String {
        self.collector().metrics().await
    }

    /// Waits until every record the running usage-collector accepted is in the database (its
    /// spool gauge alone can read 0 before the writer has counted a new request).
    async fn wait_written(&self) {
        poll::until(
            "every accepted record written (accepted, written, dead letters, spooled)",
            DELIVERY,
            || async { Accounting::read(&self.metrics().await) },
            |a| a.written + a.dead_letters >= a.accepted && a.spooled_requests == 0.0,
        )
        .await;
    }

    /// Rows of `table` minus its distinct events: 0 when no event is there twice.
    async fn duplicates(&self, table: &str) -> i64 {
        let sql = format!(
            "SELECT CAST(COUNT(*) - COUNT(DISTINCT service, event_id) AS CHAR) FROM {table}"
        );
        self.db.texts(&sql).await[0][0]
            .as_deref()
            .and_then(|n| n.parse().ok())
            .expect("a count")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        drop(self.collector.take());
        if std::thread::panicking() {
            eprintln!(
                "--- usage-collector's log (kept in {}):\n{}",
                self.dir.display(),
                usage_pipeline_tests::service::log_tail(&self.config.log, 60)
            );
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}

/// usage-collector's counter `name` for `signal` (0 when absent).
fn by_signal(metrics: &str, name: &str, signal: &str) -> f64 {
    sum_where(metrics, name, &format!("signal=\"{signal}\""))
}

/// The OpenTelemetry Collector's counter `otelcol_exporter_<name>` of `exporter` (its
/// Prometheus endpoint names counters without `_total`), 0 before its first count.
fn exporter_count(metrics: &str, name: &str, exporter: &str) -> f64 {
    sum_where(metrics, &format!("otelcol_exporter_{name}"), exporter)
}

/// A page visit with its own `event.id`, `ms` milliseconds after [`T0`].
fn visit(id: &str, session: &str, ms: u64) -> opentelemetry_proto::tonic::logs::v1::LogRecord {
    event(
        "page_visit",
        T0 + ms * MS,
        vec![
            kv("event.id", id),
            kv("session.id", session),
            kv("url.path", format!("/ide/{ms}")),
        ],
    )
}

/// `n` new event ids.
fn new_ids(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect()
}

/// The app's HTTP server span, under an instrumentation library's scope, without `event.name`:
/// not a usage event.
fn http_server_span(trace: [u8; 16], id: [u8; 8], start: u64) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: id.to_vec(),
        kind: SpanKind::Server as i32,
        ..span(
            "GET /ide/{program}",
            0,
            start,
            start + 4 * MS,
            None,
            vec![
                kv("http.request.method", "GET"),
                kv("http.route", "/ide/{program}"),
                kv("url.path", "/ide/42"),
                kv("http.response.status_code", 200i64),
            ],
        )
    }
}

/// Now, in nanoseconds since the epoch.
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_events_land_column_by_column_and_app_spans_in_jaeger() {
    let stack = Stack::start(|_| {}).await;
    let jaeger = Jaeger::start().await;
    let otelcol = OtelCol::start(Backends {
        usage_collector: stack.config.grpc,
        traces: jaeger.otlp_addr(),
    })
    .await;

    // The Python program of the migration guide, its exporter pointed at the site's
    // OpenTelemetry Collector instead of usage-collector: 7 log events and 2 program-run spans.
    let service = "web-ide-python";
    let mut command = client_command(clients::python());
    command.arg(clients::client_path("python/web_ide.py"));
    let run: Run = Run::client(
        "the Python client (grpc, to the OpenTelemetry Collector)".to_owned(),
        command,
        (&otelcol.endpoint(), "grpc"),
        service,
        "py-otelcol-1",
    )
    .await;

    // The same app's own HTTP span, as its web framework's instrumentation exports it.
    let trace = *uuid::Uuid::new_v4().as_bytes();
    let app_span = under_scope(
        traces_request(service, vec![http_server_span(trace, [7; 8], now_ns())]),
        "opentelemetry.instrumentation.flask",
    );
    send_traces(&otelcol.endpoint(), app_span)
        .await
        .expect("the OpenTelemetry Collector takes the app's span");

    // Received is counted before a request is spooled, accepted after: wait for both, or the
    // wait for every accepted record to be written could pass before any was accepted.
    let (received, _) = poll::until(
        "usage-collector received and accepted (or rejected) 7 log records and 2 spans",
        DELIVERY,
        || async {
            let metrics = stack.metrics().await;
            let count = |name: &str, signal: &str| by_signal(&metrics, name, signal);
            let taken = |signal: &str| {
                count("usage_collector_records_accepted_total", signal)
                    + count("usage_collector_records_rejected_total", signal)
            };
            let received = "usage_collector_records_received_total";
            (
                (count(received, "logs"), count(received, "traces")),
                (taken("logs"), taken("traces")),
            )
        },
        |((logs, spans), (logs_taken, spans_taken))| {
            *logs >= 7.0 && *spans >= 2.0 && logs_taken >= logs && spans_taken >= spans
        },
    )
    .await;
    stack.wait_written().await;
    assert_python_session(&stack.db, &run).await;
    let mut rows = 0;
    for table in [
        "page_visits",
        "program_executions",
        "feature_usage",
        "usage_events",
    ] {
        assert_eq!(stack.duplicates(table).await, 0, "{table}: an event twice");
        rows += stack.db.count(table).await;
    }
    assert_eq!(rows, 7, "2 visits, 4 runs, 1 feature use, no other row");

    // The app's span went to Jaeger only: usage-collector heard the usage records alone.
    let spans = poll::until(
        "the app's HTTP span in Jaeger",
        DELIVERY,
        || jaeger.spans(service),
        |spans| matches!(spans, Ok(spans) if !spans.is_empty()),
    )
    .await
    .expect("Jaeger's spans");
    let names: Vec<&str> = spans
        .iter()
        .filter_map(|span| span["operationName"].as_str())
        .collect();
    assert_eq!(names, ["GET /ide/{program}"], "{spans:#?}");
    assert_eq!(
        received,
        (7.0, 2.0),
        "usage-collector received the usage records once, and not the app's span"
    );
    let metrics = stack.metrics().await;
    assert_eq!(
        exposition::sum(&metrics, "usage_collector_records_rejected_total"),
        0.0,
        "nothing rejected: {metrics}"
    );
    let otel = otelcol.metrics().await;
    let sent = (
        exporter_count(&otel, "sent_log_records", TO_USAGE),
        exporter_count(&otel, "sent_spans", TO_USAGE),
        exporter_count(&otel, "sent_spans", TO_TRACES),
    );
    assert_eq!(
        sent,
        (7.0, 2.0, 1.0),
        "sent by the OpenTelemetry Collector (logs and spans to usage-collector, spans to \
         Jaeger):\n{otel}"
    );
    eprintln!(
        "figures: python through otelcol: sent 7 logs + 2 spans (usage) + 1 app span; \
         otelcol sent to usage-collector {} logs, {} spans, to Jaeger {} span; usage-collector \
         received {} logs, {} spans; rows {rows}, duplicates 0; app spans in Jaeger {}",
        sent.0,
        sent.1,
        sent.2,
        received.0,
        received.1,
        names.len()
    );
}

/// Waits until `collector` has accepted at least `at_least` log records; returns how many.
async fn accepted_at_least(collector: &CollectorProcess, at_least: f64, what: &str) -> f64 {
    poll::until(
        what,
        DELIVERY,
        || async {
            by_signal(
                &collector.metrics().await,
                "usage_collector_records_accepted_total",
                "logs",
            )
        },
        |n| *n >= at_least,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_killed_and_cut_off_usage_collector_loses_and_doubles_nothing() {
    let mut stack = Stack::start(|_| {}).await;
    let otelcol = OtelCol::start(Backends {
        usage_collector: stack.config.grpc,
        traces: free_addr(),
    })
    .await;
    // Two app instances sending 20 events a request to their OpenTelemetry Collector, every
    // 50 ms, through everything below.
    let load = Load::start(&otelcol.endpoint(), 2, 20, Duration::from_millis(50));
    // Each phase lasts until the running usage-collector has accepted this many records.
    let phase = 300.0;
    accepted_at_least(stack.collector(), phase, "records accepted before SIGTERM").await;

    // SIGTERM: Kubernetes' "please drain"; then a new process on the same ports and spool.
    let (status, took) = stack
        .collector
        .take()
        .expect("running")
        .terminate(Duration::from_secs(30))
        .await;
    assert!(status.success(), "exit after SIGTERM: {status}");
    stack.collector = Some(stack.config.start_ready().await);
    accepted_at_least(
        stack.collector(),
        phase,
        "records accepted after the SIGTERM restart",
    )
    .await;

    // SIGKILL: mid-write, nothing drained; the spool is replayed at start.
    stack.collector.take().expect("running").kill();
    stack.collector = Some(stack.config.start_ready().await);
    let before_cut = accepted_at_least(
        stack.collector(),
        phase,
        "records accepted after the SIGKILL restart",
    )
    .await;

    // A 5-second database cut: the spool takes what arrives meanwhile.
    stack.proxy.cut();
    let cut = Instant::now();
    poll::until(
        "usage-collector sees the database down and keeps accepting, for 5 s",
        DELIVERY,
        || async {
            let metrics = stack.metrics().await;
            (
                value(&metrics, "usage_collector_database_up"),
                by_signal(&metrics, "usage_collector_records_accepted_total", "logs"),
                cut.elapsed(),
            )
        },
        |(up, accepted, down)| {
            *up == Some(0.0) && *accepted >= before_cut + phase && *down >= Duration::from_secs(5)
        },
    )
    .await;
    stack.proxy.restore();
    let cut = cut.elapsed();

    let (report, acked) = load.stop(Duration::from_secs(60)).await;
    assert_eq!(
        (report.failed, report.abandoned),
        (0, 0),
        "the OpenTelemetry Collector refused nothing: {report:?}"
    );
    assert_eq!(report.acknowledged, report.sent, "{report:?}");

    // Everything the OpenTelemetry Collector acknowledged reaches the tables, once.
    let otel = poll::until(
        "the OpenTelemetry Collector has sent every acknowledged record",
        DELIVERY,
        || otelcol.metrics(),
        |otel| exporter_count(otel, "sent_log_records", TO_USAGE) >= acked.len() as f64,
    )
    .await;
    stack.wait_written().await;
    let (present, duplicated) = poll::until(
        "every acknowledged event is a row",
        DELIVERY,
        || check_present(&stack.db, &acked),
        |(present, _)| *present == acked.len() as u64,
    )
    .await;
    let rows = stack.db.count("page_visits").await + stack.db.count("program_executions").await;
    let duplicates =
        stack.duplicates("page_visits").await + stack.duplicates("program_executions").await;
    assert_eq!(
        (present, duplicated, duplicates),
        (acked.len() as u64, 0, 0)
    );
    assert_eq!(
        rows,
        acked.len() as i64,
        "no row but the acknowledged events"
    );
    let counters = check_session_counters(&stack.db).await;
    assert!(counters.wrong.is_empty(), "session counters: {counters:?}");
    let daily = stack
        .db
        .texts(
            "SELECT CAST(SUM(page_visits) + SUM(programs_run) AS CHAR) FROM daily_usage_by_service",
        )
        .await;
    assert_eq!(
        daily[0][0].as_deref(),
        Some(rows.to_string().as_str()),
        "the daily summary counts every row once"
    );
    let sent = exporter_count(&otel, "sent_log_records", TO_USAGE);
    let failed = exporter_count(&otel, "send_failed_log_records", TO_USAGE);
    let enqueue_failed = exporter_count(&otel, "enqueue_failed_log_records", TO_USAGE);
    assert_eq!(
        (sent, failed, enqueue_failed),
        (acked.len() as f64, 0.0, 0.0),
        "the OpenTelemetry Collector's exporter: sent, failed for good, not queued"
    );
    // Why it retried: the gRPC status of each failed attempt, as its log gives it.
    let log = otelcol.log_text();
    let mut why: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Will retry the request after interval"))
        .filter_map(|line| line.split("code = ").nth(1)?.split(' ').next())
        .collect();
    let retries = why.len();
    why.sort_unstable();
    why.dedup();
    assert!(
        retries > 0,
        "the restarts made the OpenTelemetry Collector retry"
    );
    eprintln!(
        "figures: SIGTERM {took:?} to exit, SIGKILL, database cut {cut:?}: sent {} events, \
         acknowledged by otelcol {}, otelcol sent {sent} (failed {failed}), otelcol retries \
         {retries} ({why:?}), rows {rows}, present {present}, duplicates {duplicates}, \
         sessions {} (counters right)",
        report.sent, report.acknowledged, counters.sessions
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_usage_collector_rejects_is_sent_once_and_not_retried() {
    let stack = Stack::start(|_| {}).await;
    let otelcol = OtelCol::start(Backends {
        usage_collector: stack.config.grpc,
        traces: free_addr(),
    })
    .await;
    // Five page visits and one without its path: usage-collector keeps five and rejects one
    // (partial success, `missing_attribute`).
    let ids = new_ids(6);
    let mut records: Vec<_> = (0..5)
        .map(|i| visit(&ids[i], "s-partial", i as u64))
        .collect();
    records.push(event(
        "page_visit",
        T0,
        vec![
            kv("event.id", ids[5].as_str()),
            kv("session.id", "s-partial"),
        ],
    ));
    let answer = send_logs(&otelcol.endpoint(), logs_request("web-ide", records), false)
        .await
        .expect("the OpenTelemetry Collector takes the request");
    assert_eq!(
        answer.partial_success.unwrap_or_default(),
        Default::default(),
        "the app hears OK from its collector, which queued the request"
    );

    // Once the OpenTelemetry Collector counts the request sent (its final outcome, after any
    // retry), usage-collector must have received it exactly once.
    let otel = poll::until(
        "the OpenTelemetry Collector sent the request",
        DELIVERY,
        || otelcol.metrics(),
        |otel| exporter_count(otel, "sent_log_records", TO_USAGE) >= 6.0,
    )
    .await;
    let metrics = stack.metrics().await;
    let received = by_signal(&metrics, "usage_collector_records_received_total", "logs");
    let rejected = value(
        &metrics,
        "usage_collector_records_rejected_total{signal=\"logs\",reason=\"missing_attribute\"}",
    );
    let accepted = by_signal(&metrics, "usage_collector_records_accepted_total", "logs");
    assert_eq!(
        (received, rejected, accepted),
        (6.0, Some(1.0), 5.0),
        "usage-collector received the request once: received, rejected, accepted"
    );
    let sent = exporter_count(&otel, "sent_log_records", TO_USAGE);
    let failed = exporter_count(&otel, "send_failed_log_records", TO_USAGE);
    assert_eq!(
        (sent, failed),
        (6.0, 0.0),
        "v0.161's OTLP exporter counts a partial success as sent, the rejected record \
         included, and nothing as failed:\n{otel}"
    );
    // What it does with the rejection: one WARN line with the count and usage-collector's
    // message, and no retry.
    let log = otelcol.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Partial success response"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("\"dropped_log_records\": 1") && warnings[0].contains("url.path"),
        "the count and the reason: {}",
        warnings[0]
    );
    assert!(
        !log.contains("Will retry the request"),
        "the partial success is not retried:\n{log}"
    );
    stack.wait_written().await;
    assert_eq!(stack.db.count("page_visits").await, 5);
    assert_eq!(stack.duplicates("page_visits").await, 0);
    eprintln!(
        "figures: partial success: sent 6 (1 without url.path), otelcol acknowledged 6, \
         otelcol sent_log_records {sent}, send_failed {failed}, its WARN dropped_log_records 1, \
         usage-collector received {received}, rejected 1, accepted {accepted}; rows 5, \
         duplicates 0, retries 0; its log: {}",
        warnings[0]
    );
}

/// The waits the OpenTelemetry Collector's log announces before its retries ("interval":
/// "2.25s", "1.5s", "750ms"), in seconds.
fn retry_intervals(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|line| line.contains("Will retry the request after interval"))
        .filter_map(|line| {
            let after = line.split("\"interval\": \"").nth(1)?;
            let text = after.split('"').next()?;
            if let Some(ms) = text.strip_suffix("ms") {
                return ms.parse::<f64>().ok().map(|ms| ms / 1000.0);
            }
            let (minutes, seconds) = match text.split_once('m') {
                Some((m, s)) => (m.parse::<f64>().ok()?, s),
                None => (0.0, text),
            };
            let seconds = seconds.strip_suffix('s')?.parse::<f64>().ok()?;
            Some(minutes * 60.0 + seconds)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_export_is_retried_after_the_retry_info_delay() {
    // A spool of 64 KiB, filled while the database is cut: every export is refused with
    // UNAVAILABLE and RetryInfo (2 s) until the database is back.
    let stack = Stack::start(|config| config.spool_max_bytes = 64 * 1024).await;
    stack.proxy.cut();
    let mut size = 64;
    let mut filled = 0;
    while size > 0 {
        let ids = new_ids(size);
        let records = ids.iter().map(|id| visit(id, "s-fill", 0)).collect();
        match send_logs(
            &stack.config.endpoint(),
            logs_request("web-ide", records),
            false,
        )
        .await
        {
            Ok(_) => filled += size,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                size /= 2;
            }
        }
    }
    let refused_so_far = || async {
        value(
            &stack.metrics().await,
            "usage_collector_records_refused_total{signal=\"logs\",reason=\"spool_full\"}",
        )
        .unwrap_or(0.0)
    };
    let baseline = refused_so_far().await;

    let otelcol = OtelCol::start(Backends {
        usage_collector: stack.config.grpc,
        traces: free_addr(),
    })
    .await;
    let ids = new_ids(20);
    let records = ids
        .iter()
        .enumerate()
        .map(|(i, id)| visit(id, "s-throttled", i as u64))
        .collect();
    send_logs(&otelcol.endpoint(), logs_request("web-ide", records), false)
        .await
        .expect("the OpenTelemetry Collector queues the request");

    // Each attempt the OpenTelemetry Collector makes is refused, counting its 20 records:
    // note when each is seen, until three have been.
    let mut attempts: Vec<Instant> = Vec::new();
    let mut seen = baseline;
    let started = Instant::now();
    while attempts.len() < 3 {
        assert!(
            started.elapsed() < DELIVERY,
            "only {} attempts within {DELIVERY:?}",
            attempts.len()
        );
        let now = refused_so_far().await;
        while seen + 20.0 <= now {
            seen += 20.0;
            attempts.push(Instant::now());
        }
        tokio::time::sleep(poll::EVERY).await;
    }
    let gaps: Vec<f64> = attempts
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        .collect();
    // Seen through a 50 ms poll on a busy machine: a gap may look up to a few polls shorter.
    for gap in &gaps {
        assert!(
            *gap >= 1.75,
            "a retry came {gap:.2} s after the refusal, sooner than RetryInfo's 2 s: {gaps:?}"
        );
    }
    let announced = retry_intervals(&otelcol.log_text());
    assert!(
        announced.len() >= 2 && announced.iter().all(|s| *s >= 2.0),
        "every retry waits at least RetryInfo's 2 s: {announced:?}\n{}",
        otelcol.log_text()
    );
    assert!(
        otelcol.log_text().contains("spool full"),
        "the refusal's message reaches the OpenTelemetry Collector's log"
    );

    // The database back: the spool drains, a retry is taken, each event written once.
    stack.proxy.restore();
    poll::until(
        "the throttled events are rows",
        DELIVERY,
        || stack.db.count("page_visits"),
        |rows| *rows == (filled + 20) as i64,
    )
    .await;
    assert_eq!(stack.duplicates("page_visits").await, 0);
    let otel = poll::until(
        "the OpenTelemetry Collector counts the request sent",
        DELIVERY,
        || otelcol.metrics(),
        |otel| exporter_count(otel, "sent_log_records", TO_USAGE) >= 20.0,
    )
    .await;
    let sent = exporter_count(&otel, "sent_log_records", TO_USAGE);
    let failed = exporter_count(&otel, "send_failed_log_records", TO_USAGE);
    assert_eq!((sent, failed), (20.0, 0.0), "{otel}");
    eprintln!(
        "figures: throttled: filler {filled} events, then 20 through otelcol; attempts refused \
         (spool_full) seen {}, gaps between them {gaps:.2?} s, otelcol's announced waits \
         {announced:?} s; otelcol sent {sent}, failed {failed}; rows {} (20 + filler), \
         duplicates 0",
        attempts.len(),
        stack.db.count("page_visits").await
    );
}

/// A span's tag `key`, as Jaeger gives it.
fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|tag| tag["key"] == key)
        .map(|tag| &tag["value"])
}

/// The spans of a Jaeger trace named `name`.
fn named<'a>(trace: &'a Value, name: &str) -> Vec<&'a Value> {
    trace["spans"]
        .as_array()
        .map(|spans| {
            spans
                .iter()
                .filter(|span| span["operationName"] == name)
                .collect()
        })
        .unwrap_or_default()
}

/// The span id `span` names as its parent (`CHILD_OF`), if any.
fn parent_of(span: &Value) -> Option<&str> {
    span["references"]
        .as_array()?
        .iter()
        .find(|r| r["refType"] == "CHILD_OF")?["spanID"]
        .as_str()
}

/// A W3C `traceparent` for a sampled span.
fn traceparent(trace: &[u8; 16], span: &[u8; 8]) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!("00-{}-{}-01", hex(trace), hex(span))
}

/// Sends `request` to usage-collector over gRPC carrying `traceparent`, as an app whose
/// exporter propagates its trace context does.
async fn send_traced(endpoint: &str, request: ExportLogsServiceRequest, traceparent: &str) {
    let mut client = LogsServiceClient::connect(endpoint.to_owned())
        .await
        .expect("connect to usage-collector");
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert(
        "traceparent",
        traceparent.parse().expect("an ASCII header value"),
    );
    client
        .export(request)
        .await
        .expect("usage-collector takes it");
}

#[tokio::test(flavor = "multi_thread")]
async fn own_spans_in_jaeger_receive_and_write_in_the_apps_trace_and_outages_as_errors() {
    let jaeger = Jaeger::start().await;
    let stack = Stack::start(|config| {
        config.extra = vec![
            "--telemetry-traces-endpoint".into(),
            format!("http://{}", jaeger.otlp_addr()),
            "--telemetry-metrics-exporter".into(),
            "none".into(),
        ];
    })
    .await;

    // The app's own span for its export: trace `trace`, span `app`, sent to Jaeger as its
    // SDK would; the export itself carries `traceparent` naming it.
    let trace = *uuid::Uuid::new_v4().as_bytes();
    let app: [u8; 8] = [0x0a, 0x99, 0xa1, 0x01, 0x02, 0x03, 0x04, 0x05];
    let mut app_span = http_server_span(trace, app, now_ns());
    app_span.name = "POST /ide/run".to_owned();
    send_traces(
        &format!("http://{}", jaeger.otlp_addr()),
        traces_request("web-ide", vec![app_span]),
    )
    .await
    .expect("Jaeger takes the app's span");
    // Three page visits and one the plan refuses (no path): partial success, on the span too.
    let ids = new_ids(4);
    let mut records: Vec<_> = (0..3)
        .map(|i| visit(&ids[i], "s-traced", i as u64))
        .collect();
    records.push(event(
        "page_visit",
        T0,
        vec![kv("event.id", ids[3].as_str())],
    ));
    send_traced(
        &stack.config.endpoint(),
        logs_request("web-ide", records),
        &traceparent(&trace, &app),
    )
    .await;
    // Written before the next request arrives, so its batch holds this request's events alone
    // (a batch of several traced requests has a trace of its own, linking to each).
    stack.wait_written().await;
    // Over OTLP/HTTP, in a trace of its own.
    let http_trace = *uuid::Uuid::new_v4().as_bytes();
    let http_ids = new_ids(2);
    let body = logs_request(
        "web-ide",
        http_ids.iter().map(|id| visit(id, "s-http", 9)).collect(),
    )
    .encode_to_vec();
    let http_parent = traceparent(&http_trace, &[0x0b, 0x99, 0xa1, 1, 2, 3, 4, 5]);
    let answer = otlp_http::request(
        stack.config.http,
        "POST",
        "/v1/logs",
        &[
            ("content-type", "application/x-protobuf"),
            ("traceparent", http_parent.as_str()),
        ],
        body,
    )
    .await;
    assert_eq!(answer.status, 200);
    stack.wait_written().await;

    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (trace_hex, http_hex) = (hex(&trace), hex(&http_trace));
    // The app's span, the collector's receive span as its child, and the write of those
    // events as the receive span's child: one trace.
    let found = poll::until(
        "the app's trace holds its span, receive_logs and write_batch",
        SPANS,
        || jaeger.trace(&trace_hex),
        |found| {
            matches!(found, Ok(Some(trace)) if !named(trace, "receive_logs").is_empty()
                && !named(trace, "write_batch").is_empty())
        },
    )
    .await
    .expect("Jaeger's trace")
    .expect("the trace");
    let receive = named(&found, "receive_logs");
    assert_eq!(receive.len(), 1, "{found:#}");
    let receive = receive[0];
    let service = |span: &Value| {
        let process = span["processID"].as_str().unwrap_or_default();
        found["processes"][process]["serviceName"].clone()
    };
    assert_eq!(service(receive), "usage-collector");
    assert_eq!(parent_of(receive), Some(hex(&app).as_str()), "{receive:#}");
    for (key, expected) in [
        ("signal", serde_json::json!("logs")),
        ("transport", serde_json::json!("grpc")),
        ("records", serde_json::json!(4)),
        ("accepted", serde_json::json!(3)),
        ("rejected", serde_json::json!(1)),
        ("outcome", serde_json::json!("rejected")),
        ("code", serde_json::json!("Ok")),
        ("span.kind", serde_json::json!("server")),
        ("otel.scope.name", serde_json::json!("usage-collector.self")),
    ] {
        assert_eq!(tag(receive, key), Some(&expected), "{key}: {receive:#}");
    }
    let writes = named(&found, "write_batch");
    let write = writes[0];
    assert_eq!(service(write), "usage-collector");
    assert_eq!(
        parent_of(write),
        receive["spanID"].as_str(),
        "the write is the receive's child: {write:#}"
    );
    for (key, expected) in [
        ("events", serde_json::json!(3)),
        ("rows", serde_json::json!(3)),
        ("tables", serde_json::json!("page_visits,ide_sessions")),
        ("outcome", serde_json::json!("written")),
        ("span.kind", serde_json::json!("client")),
    ] {
        assert_eq!(tag(write, key), Some(&expected), "{key}: {write:#}");
    }
    assert_eq!(tag(write, "error"), None, "not an error span: {write:#}");
    let http_found = poll::until(
        "the OTLP/HTTP request's trace",
        SPANS,
        || jaeger.trace(&http_hex),
        |found| matches!(found, Ok(Some(trace)) if !named(trace, "write_batch").is_empty()),
    )
    .await
    .expect("Jaeger's trace")
    .expect("the trace");
    let http_receive = named(&http_found, "receive_logs");
    assert_eq!(
        tag(http_receive[0], "transport"),
        Some(&serde_json::json!("http"))
    );
    assert_eq!(tag(http_receive[0], "records"), Some(&serde_json::json!(2)));

    // A database outage: each attempt at the next traced request's batch is an error span,
    // with the failure's reason and retry class, until the database is back.
    stack.proxy.cut();
    let outage = *uuid::Uuid::new_v4().as_bytes();
    let outage_hex = hex(&outage);
    let outage_ids = new_ids(2);
    send_traced(
        &stack.config.endpoint(),
        logs_request(
            "web-ide",
            outage_ids
                .iter()
                .map(|id| visit(id, "s-outage", 20))
                .collect(),
        ),
        &traceparent(&outage, &[0x0c, 0x99, 0xa1, 1, 2, 3, 4, 5]),
    )
    .await;
    let failing = poll::until(
        "error spans of the batch written during the outage",
        SPANS,
        || jaeger.trace(&outage_hex),
        |found| {
            matches!(found, Ok(Some(trace)) if named(trace, "write_batch")
                .iter()
                .filter(|span| tag(span, "error") == Some(&serde_json::json!(true)))
                .count() >= 2)
        },
    )
    .await
    .expect("Jaeger's trace")
    .expect("the trace");
    let errors: Vec<&Value> = named(&failing, "write_batch")
        .into_iter()
        .filter(|span| tag(span, "error") == Some(&serde_json::json!(true)))
        .collect();
    let reasons: Vec<&str> = errors
        .iter()
        .filter_map(|span| tag(span, "error.type")?.as_str())
        .collect();
    for span in &errors {
        assert_eq!(tag(span, "outcome"), Some(&serde_json::json!("failed")));
        assert_eq!(tag(span, "retry_class"), Some(&serde_json::json!("retry")));
        assert_eq!(
            tag(span, "otel.status_code"),
            Some(&serde_json::json!("ERROR"))
        );
        assert!(
            tag(span, "otel.status_description").is_some_and(|d| d != ""),
            "the database's message: {span:#}"
        );
    }
    assert!(
        reasons.iter().all(|r| [
            "connection",
            "pool_timeout",
            "timeout",
            "shutdown",
            "protocol"
        ]
        .contains(r)),
        "failures of a lost database: {reasons:?}"
    );
    stack.proxy.restore();
    let recovered = poll::until(
        "the batch written once the database is back",
        DELIVERY,
        || jaeger.trace(&outage_hex),
        |found| {
            matches!(found, Ok(Some(trace)) if named(trace, "write_batch")
                .iter()
                .any(|span| tag(span, "outcome") == Some(&serde_json::json!("written"))))
        },
    )
    .await
    .expect("Jaeger's trace")
    .expect("the trace");
    stack.wait_written().await;
    assert_eq!(stack.db.count("page_visits").await, 7);

    // Behind the recommended OpenTelemetry Collector, the app's trace context stops there:
    // usage-collector receives the gateway's own export of its queue, which names no parent.
    let otelcol = OtelCol::start(Backends {
        usage_collector: stack.config.grpc,
        traces: jaeger.otlp_addr(),
    })
    .await;
    let gateway_trace = *uuid::Uuid::new_v4().as_bytes();
    let gateway_ids = new_ids(5);
    send_traced(
        &otelcol.endpoint(),
        logs_request(
            "web-ide",
            gateway_ids
                .iter()
                .map(|id| visit(id, "s-gateway", 30))
                .collect(),
        ),
        &traceparent(&gateway_trace, &[0x0d, 0x99, 0xa1, 1, 2, 3, 4, 5]),
    )
    .await;
    let own = poll::until(
        "the receive span of the gateway's export (5 records)",
        SPANS,
        || jaeger.spans("usage-collector"),
        |spans| {
            matches!(spans, Ok(spans) if spans.iter().any(|span| span["operationName"] == "receive_logs"
                && tag(span, "records") == Some(&serde_json::json!(5))))
        },
    )
    .await
    .expect("the collector's spans");
    let through_gateway = own
        .iter()
        .find(|span| {
            span["operationName"] == "receive_logs"
                && tag(span, "records") == Some(&serde_json::json!(5))
        })
        .expect("found above");
    assert_ne!(
        through_gateway["traceID"].as_str(),
        Some(hex(&gateway_trace).as_str()),
        "{through_gateway:#}"
    );
    assert_eq!(parent_of(through_gateway), None, "{through_gateway:#}");
    let count = |name: &str| {
        own.iter()
            .filter(|span| span["operationName"] == name)
            .count()
    };
    eprintln!(
        "figures: own spans in Jaeger: app trace {} spans (app, receive_logs, write_batch), \
         OTLP/HTTP trace {} spans, outage trace {} write_batch spans ({} errors, reasons \
         {reasons:?}, retry_class retry) then written; through the gateway: a receive_logs \
         span of its own trace, no parent; usage-collector spans in Jaeger: {} receive_logs, \
         {} write_batch",
        found["spans"].as_array().map_or(0, Vec::len),
        http_found["spans"].as_array().map_or(0, Vec::len),
        named(&recovered, "write_batch").len(),
        errors.len(),
        count("receive_logs"),
        count("write_batch")
    );
}
