//! Events and tables from a tracking plan file, without recompiling: a custom event lands in its
//! own typed table column by column (MariaDB and SQLite, OTLP/gRPC and OTLP/HTTP); `migrate`
//! adds a column the file gains and refuses a change that would lose data; a record that does
//! not match its declaration is refused with the reason while its neighbours land; the file is
//! read again while the collector runs (a change, SIGHUP), and a broken one keeps the last good.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use serde_json::json;
use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::{assert_exposes, value};
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::otlp_http::Transport;
use usage_pipeline_tests::poll;
use usage_pipeline_tests::process::{ProcessConfig, temp_dir};

/// A site's plan: the built-in events, plus a debugger step with a value of every type.
fn plan(extra_columns: &str) -> String {
    format!(
        "{}\n{}",
        usage_tracker::catalog::plan::BUILT_IN_TOML,
        r#"
[[events]]
name = "debugger_step"
table = "debugger_steps"
description = "The debugger stopped on a line."
counts = [{ daily = "other_events" }]
columns = [
    { column = "line", attribute = "debugger.line", type = "int32", required = true },
    { column = "breakpoints", attribute = "debugger.breakpoints", type = "int" },
    { column = "file", attribute = "code.file.path", type = "string", max_chars = 64 },
    { column = "hit_ratio", attribute = "debugger.hit_ratio", type = "float" },
    { column = "paused", attribute = "debugger.paused", type = "bool" },
    { column = "started_at", attribute = "debugger.started_at", type = "time" },
    { column = "watch", attribute = "debugger.watch", type = "json" },
"#
    ) + extra_columns
        + "]\n"
}

fn write_plan(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tracking-plan.toml");
    std::fs::write(&path, text).expect("write the plan");
    path
}

fn step(line: i64, extra: Vec<KeyValue>) -> opentelemetry_proto::tonic::logs::v1::LogRecord {
    let mut attributes = vec![
        kv("session.id", "s1"),
        kv("debugger.line", line),
        kv("debugger.breakpoints", 3i64),
        kv("code.file.path", "main.bas"),
        kv("debugger.hit_ratio", 0.25),
        kv("debugger.paused", true),
        kv("debugger.started_at", "2026-03-04T05:06:00.123456+01:00"),
        kv(
            "debugger.watch",
            kvlist(vec![kv("x", 1i64), kv("name", "total")]),
        ),
    ];
    attributes.extend(extra);
    event("debugger_step", T0 + line as u64 * SECOND, attributes)
}

fn s(text: &str) -> Option<String> {
    Some(text.to_owned())
}

async fn custom_event_lands_in_its_table(db: TestDb, transport: Transport) {
    let dir = temp_dir("usage_plan");
    let mut config = settings(db.url());
    config.catalog.file = Some(write_plan(&dir, &plan("")));
    let collector = TestCollector::start(config).await;
    let logs = logs_request(
        "web-ide",
        vec![
            step(10, vec![]),
            // Mismatched: a string where an int32 goes; refused with the reason.
            event(
                "debugger_step",
                T0 + 11 * SECOND,
                vec![kv("debugger.line", "eleven")],
            ),
            // Missing the required line.
            event(
                "debugger_step",
                T0 + 12 * SECOND,
                vec![kv("debugger.paused", false)],
            ),
            // An event the plan does not declare still lands in usage_events.
            event("export_pdf", T0 + 13 * SECOND, vec![kv("pages", 3i64)]),
            page_visit_at(T0 + 14 * SECOND),
        ],
    );
    let answer = transport
        .send_logs(&collector, logs)
        .await
        .expect("the request is taken");
    let partial = answer.partial_success.expect("two records refused");
    assert_eq!(partial.rejected_log_records, 2);
    assert!(
        partial.error_message.contains(
            "(event `debugger_step`): attribute `debugger.line` must be an integer, got string \"eleven\""
        ),
        "{}",
        partial.error_message
    );
    assert!(
        partial.error_message.contains("and 1 more rejected"),
        "{}",
        partial.error_message
    );
    collector.wait_written(Duration::from_secs(10)).await;

    let rows = db
        .texts(
            "SELECT service, session_id, CAST(`timestamp` AS CHAR), CAST(line AS CHAR), \
             CAST(breakpoints AS CHAR), file, CAST(hit_ratio AS CHAR), CAST(paused AS CHAR), \
             CAST(started_at AS CHAR), CAST(watch AS CHAR) FROM debugger_steps",
        )
        .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0][..9],
        [
            s("web-ide"),
            s("s1"),
            s("2026-03-04 05:06:17.123456"),
            s("10"),
            s("3"),
            s("main.bas"),
            s("0.25"),
            s("1"),
            s("2026-03-04 04:06:00.123456"),
        ]
    );
    let watch: serde_json::Value = serde_json::from_str(rows[0][9].as_deref().unwrap()).unwrap();
    assert_eq!(watch, json!({"x": 1, "name": "total"}));
    assert_eq!(db.count("page_visits").await, 1, "the neighbour landed");
    let other = db.texts("SELECT event_name FROM usage_events").await;
    assert_eq!(other, [vec![s("export_pdf")]]);
    // The plan's count: the step and export_pdf are both other events of the day.
    let daily = db
        .texts("SELECT CAST(SUM(other_events) AS CHAR) FROM daily_usage_by_service")
        .await;
    assert_eq!(daily, [vec![s("2")]]);

    let metrics = collector.get("/metrics").await.1;
    assert_exposes(
        &metrics,
        &[
            "usage_collector_events_refused_total{service_name=\"web-ide\",event=\"debugger_step\",reason=\"wrong_type\"} 1",
            "usage_collector_events_refused_total{service_name=\"web-ide\",event=\"debugger_step\",reason=\"missing_attribute\"} 1",
            "usage_collector_rows_written_total{table=\"debugger_steps\"} 1",
        ],
    );
    collector.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

fn page_visit_at(time: u64) -> opentelemetry_proto::tonic::logs::v1::LogRecord {
    event(
        "page_visit",
        time,
        vec![kv("session.id", "s1"), kv("url.path", "/ide")],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_event_lands_in_its_own_table_on_mariadb_over_grpc() {
    custom_event_lands_in_its_table(TestDb::mysql().await, Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_event_lands_in_its_own_table_on_mariadb_over_http() {
    custom_event_lands_in_its_table(TestDb::mysql().await, Transport::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_event_lands_in_its_own_table_on_sqlite_over_http_json() {
    custom_event_lands_in_its_table(TestDb::sqlite().await, Transport::HttpJson).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_event_lands_in_its_own_table_on_sqlite_over_grpc() {
    custom_event_lands_in_its_table(TestDb::sqlite().await, Transport::Grpc).await;
}

/// Runs the real `usage-collector` command.
fn collector(args: &[&str], plan: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_usage-collector-e2e"))
        .args(args)
        .arg("--catalog-file")
        .arg(plan)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .expect("run usage-collector");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

async fn migrate_adds_columns_and_refuses_losing_changes(db: TestDb) {
    let dir = temp_dir("usage_plan_migrate");
    let path = write_plan(&dir, &plan(""));
    let (ok, out) = collector(&["check", "--database-url", db.url()], &path);
    assert!(!ok, "the plan's table is not there yet:\n{out}");
    assert!(out.contains("table `debugger_steps` is missing"), "{out}");
    let (ok, out) = collector(&["migrate", "--database-url", db.url()], &path);
    assert!(ok, "{out}");
    assert!(out.contains("create table `debugger_steps`"), "{out}");
    let (ok, out) = collector(&["check", "--database-url", db.url()], &path);
    assert!(ok, "{out}");

    // The file gains a column: migrate adds it, and a second run has nothing to do.
    write_plan(
        &dir,
        &plan(
            "    { column = \"condition\", attribute = \"debugger.condition\", type = \"string\", max_chars = 256 },\n",
        ),
    );
    let (ok, out) = collector(&["migrate", "--database-url", db.url()], &path);
    assert!(ok, "{out}");
    assert!(
        out.contains("add column `debugger_steps`.`condition` (VARCHAR(256))"),
        "{out}"
    );
    let (ok, out) = collector(&["migrate", "--database-url", db.url()], &path);
    assert!(ok && !out.contains("schema changed"), "{out}");
    db.execute(
        "INSERT INTO debugger_steps (event_id, service, `timestamp`, line, file, `condition`) \
         VALUES (X'00000000000000000000000000000001', 'web-ide', '2026-03-04 05:06:07', 7, \
         'main.bas', 'x > 1')",
    )
    .await;

    // Narrowing the file column, turning line into text and dropping the condition: refused,
    // each named, and nothing changed.
    let narrowed = plan("")
        .replace(
            "type = \"string\", max_chars = 64",
            "type = \"string\", max_chars = 8",
        )
        .replace(
            "attribute = \"debugger.line\", type = \"int32\"",
            "attribute = \"debugger.line\", type = \"string\", max_chars = 16",
        );
    write_plan(&dir, &narrowed);
    let (ok, out) = collector(&["migrate", "--database-url", db.url()], &path);
    assert!(!ok, "{out}");
    for refusal in [
        "event `debugger_step`, column `debugger_steps`.`file`: narrowing it from VARCHAR(64) to VARCHAR(8) would cut stored values",
        "event `debugger_step`, column `debugger_steps`.`line`: it holds INT; reading it as VARCHAR(16) would reinterpret stored values",
        "event `debugger_step`, column `debugger_steps`.`condition`: the plan no longer declares it; the collector never drops a column",
    ] {
        assert!(out.contains(refusal), "{refusal}\nnot in:\n{out}");
    }
    let kept = db
        .texts("SELECT CAST(line AS CHAR), file, `condition` FROM debugger_steps")
        .await;
    assert_eq!(kept, [vec![s("7"), s("main.bas"), s("x > 1")]]);

    // A broken file is refused with every problem named.
    write_plan(
        &dir,
        "version = 1\n[[events]]\nname = \"x\"\ntable = \"Bad Name\"\n",
    );
    let (ok, out) = collector(&["check", "--database-url", db.url()], &path);
    assert!(!ok, "{out}");
    assert!(
        out.contains("event `x`: table `Bad Name` is not a name the collector writes"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_adds_a_column_and_refuses_a_losing_change_on_mariadb() {
    migrate_adds_columns_and_refuses_losing_changes(TestDb::mysql().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_adds_a_column_and_refuses_a_losing_change_on_sqlite() {
    migrate_adds_columns_and_refuses_losing_changes(TestDb::sqlite().await).await;
}

/// The plan read again while the collector runs: a change of the file (with `--migrate`, the
/// new column is made), SIGHUP, and a broken file that keeps the plan before.
#[tokio::test(flavor = "multi_thread")]
async fn the_plan_is_read_again_without_a_restart_and_a_broken_one_is_kept_out_on_mariadb() {
    plan_is_read_again(TestDb::mysql().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_plan_is_read_again_without_a_restart_and_a_broken_one_is_kept_out_on_sqlite() {
    plan_is_read_again(TestDb::sqlite().await).await;
}

async fn plan_is_read_again(db: TestDb) {
    let dir = temp_dir("usage_plan_reload");
    let path = write_plan(&dir, &plan(""));
    let mut config = ProcessConfig::new(
        env!("CARGO_BIN_EXE_usage-collector-e2e"),
        db.url(),
        &dir.join("collector"),
    );
    config.extra = vec!["--catalog-file".into(), path.display().to_string()];
    let process = config.start_ready().await;
    let reloads = |metrics: &str| {
        (
            value(metrics, "usage_collector_catalog_reloads_total"),
            value(metrics, "usage_collector_catalog_reload_failures_total"),
        )
    };
    assert_eq!(reloads(&process.metrics().await), (Some(0.0), Some(0.0)));

    // A new column and a new event, written to the file: in force within seconds.
    let grown = plan(
        "    { column = \"condition\", attribute = \"debugger.condition\", type = \"string\", max_chars = 256 },\n",
    ) + r#"
[[events]]
name = "lesson_done"
table = "lessons"
columns = [{ column = "lesson", attribute = "lesson.id", type = "string", max_chars = 32, required = true }]
"#;
    write_plan(&dir, &grown);
    poll::until(
        "the changed plan in force",
        Duration::from_secs(20),
        || async { reloads(&process.metrics().await) },
        |counts| *counts == (Some(1.0), Some(0.0)),
    )
    .await;
    let endpoint = config.endpoint();
    let request = logs_request(
        "web-ide",
        vec![
            step(20, vec![kv("debugger.condition", "x > 1")]),
            event("lesson_done", T0, vec![kv("lesson.id", "loops-1")]),
        ],
    );
    let answer = send_logs(&endpoint, request, false)
        .await
        .expect("accepted");
    assert_eq!(answer.partial_success, None);
    process.wait_drained(Duration::from_secs(10)).await;
    assert_eq!(
        db.texts("SELECT CAST(line AS CHAR), `condition` FROM debugger_steps")
            .await,
        [vec![s("20"), s("x > 1")]]
    );
    assert_eq!(
        db.texts("SELECT service, lesson FROM lessons").await,
        [vec![s("web-ide"), s("loops-1")]]
    );

    // A broken file: the plan before stays, the failure is counted and logged at ERROR.
    std::fs::write(&path, "version = 1\n[[events]]\nname = \"lesson_done\"\n").unwrap();
    poll::until(
        "the broken plan refused",
        Duration::from_secs(20),
        || async { reloads(&process.metrics().await) },
        |counts| *counts == (Some(1.0), Some(1.0)),
    )
    .await;
    let answer = send_logs(
        &endpoint,
        logs_request(
            "web-ide",
            vec![event(
                "lesson_done",
                T0 + SECOND,
                vec![kv("lesson.id", "loops-2")],
            )],
        ),
        false,
    )
    .await
    .expect("accepted");
    assert_eq!(
        answer.partial_success, None,
        "the good plan is still in force"
    );
    process.wait_drained(Duration::from_secs(10)).await;
    assert_eq!(db.count("lessons").await, 2);
    let log = std::fs::read_to_string(&config.log).unwrap();
    assert!(
        log.contains("ERROR") && log.contains("tracking plan read again but not used"),
        "{log}"
    );

    // SIGHUP reads the file even when it did not change: the good plan again, counted.
    std::fs::write(&path, &grown).unwrap();
    poll::until(
        "the good plan back",
        Duration::from_secs(20),
        || async { reloads(&process.metrics().await) },
        |counts| *counts == (Some(2.0), Some(1.0)),
    )
    .await;
    let status = Command::new("kill")
        .args(["-HUP", &process.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    poll::until(
        "SIGHUP read the plan again",
        Duration::from_secs(20),
        || async { reloads(&process.metrics().await) },
        |counts| *counts == (Some(3.0), Some(1.0)),
    )
    .await;
    assert!(
        std::fs::read_to_string(&config.log)
            .unwrap()
            .contains("SIGHUP: reading the tracking plan again")
    );
    process.terminate(Duration::from_secs(20)).await;
    std::fs::remove_dir_all(&dir).ok();
}

/// The README's example end to end: the event declared in a file, its table made by the
/// collector, the event sent by the OpenTelemetry Python SDK, the row read back.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_sends_an_event_of_the_sites_plan() {
    let db = TestDb::mysql().await;
    let dir = temp_dir("usage_plan_python");
    let mut config = settings(db.url());
    config.catalog.file = Some(write_plan(&dir, &plan("")));
    let collector = TestCollector::start(config).await;
    let mut command = Command::new(usage_pipeline_tests::clients::python());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    command
        .arg(usage_pipeline_tests::clients::client_path(
            "python/custom_event.py",
        ))
        .arg("py-debug-1")
        .env("OTEL_SERVICE_NAME", "web-ide-python")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.http_endpoint());
    tokio::task::spawn_blocking(move || {
        usage_pipeline_tests::clients::run("the Python client", command, Duration::from_secs(60))
    })
    .await
    .expect("the client's thread");
    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(
        db.texts(
            "SELECT service, session_id, CAST(line AS CHAR), CAST(breakpoints AS CHAR), file, \
             CAST(hit_ratio AS CHAR), CAST(paused AS CHAR) FROM debugger_steps"
        )
        .await,
        [vec![
            s("web-ide-python"),
            s("py-debug-1"),
            s("42"),
            s("3"),
            s("main.bas"),
            s("0.5"),
            s("0"),
        ]]
    );
    collector.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// usage-tracker records an event of the site's plan built at run time, and refuses, before
/// sending, one the collector would refuse (named, counted as invalid).
#[tokio::test(flavor = "multi_thread")]
async fn the_rust_tracker_records_an_event_of_the_sites_plan_and_refuses_a_bad_one() {
    use usage_tracker::{Event, RecordError, TrackerBuilder};
    let db = TestDb::mysql().await;
    let dir = temp_dir("usage_plan_tracker");
    let path = write_plan(&dir, &plan(""));
    let mut config = settings(db.url());
    config.catalog.file = Some(path.clone());
    let collector = TestCollector::start(config).await;
    let tracker = TrackerBuilder::new()
        .endpoint(collector.endpoint())
        .service_name("web-ide-rust")
        .catalog_file(&path)
        .export_interval(Duration::from_millis(50))
        .start()
        .expect("the tracker starts with the plan");
    let step = Event::new("debugger_step")
        .attribute("session.id", "rs-1")
        .attribute("debugger.line", 7)
        .attribute("code.file.path", "main.bas")
        .attribute("debugger.hit_ratio", 1.5)
        .attribute("debugger.started_at", "2026-03-04T05:06:00Z");
    tracker.record(step).expect("a valid event");
    let refused = tracker
        .record(Event::new("debugger_step").attribute("debugger.line", "seven"))
        .unwrap_err();
    assert_eq!(
        refused,
        RecordError::WrongType {
            event: "debugger_step",
            key: "debugger.line",
            expected: "an integer within 32 bits",
            got: "string \"seven\"".to_owned(),
        }
    );
    let missing = tracker
        .record(Event::new("debugger_step").attribute("code.file.path", "x"))
        .unwrap_err();
    assert_eq!(
        missing.to_string(),
        "event `debugger_step` needs attribute `debugger.line`"
    );
    assert!(tracker.flush(Duration::from_secs(10)));
    let stats = tracker.shutdown();
    assert_eq!((stats.exported, stats.invalid), (1, 2), "{stats:?}");
    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(
        db.texts(
            "SELECT service, session_id, CAST(line AS CHAR), file, CAST(hit_ratio AS CHAR), \
             CAST(started_at AS CHAR) FROM debugger_steps"
        )
        .await,
        [vec![
            s("web-ide-rust"),
            s("rs-1"),
            s("7"),
            s("main.bas"),
            s("1.5"),
            s("2026-03-04 05:06:00.000000"),
        ]]
    );

    // A plan file that is not one stops the tracker's start, naming the file and the problem.
    std::fs::write(&path, "version = 3").unwrap();
    let error = TrackerBuilder::new()
        .endpoint(collector.endpoint())
        .catalog_file(&path)
        .start()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("cannot use the tracking plan") && error.contains("version 3"),
        "{error}"
    );
    collector.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// Retention sweeps the plan's own tables too, by their `timestamp`, with their own override.
#[tokio::test(flavor = "multi_thread")]
async fn retention_sweeps_the_tables_of_the_plan() {
    let db = TestDb::mysql().await;
    let dir = temp_dir("usage_plan_retention");
    let mut config = settings(db.url());
    config.catalog.file = Some(write_plan(&dir, &plan("")));
    config.retention.tables =
        usage_collector::config::TableDays(vec![("debugger_steps".to_owned(), 30)]);
    config.retention.interval = Duration::from_secs(1);
    let collector = TestCollector::start(config).await;
    for (n, age) in [(1, "400 DAY"), (2, "31 DAY"), (3, "29 DAY"), (4, "0 DAY")] {
        db.execute(&format!(
            "INSERT INTO debugger_steps (event_id, service, `timestamp`, line) VALUES \
             (UNHEX(LPAD('{n}', 32, '0')), 'web-ide', UTC_TIMESTAMP(6) - INTERVAL {age}, {n})"
        ))
        .await;
    }
    poll::until(
        "the steps older than 30 days deleted",
        Duration::from_secs(30),
        || async {
            db.texts("SELECT CAST(line AS CHAR) FROM debugger_steps ORDER BY line")
                .await
        },
        |rows| *rows == [vec![s("3")], vec![s("4")]],
    )
    .await;
    assert_exposes(
        &collector.get("/metrics").await.1,
        &["usage_collector_rows_deleted_total{table=\"debugger_steps\"} 2"],
    );
    collector.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}
