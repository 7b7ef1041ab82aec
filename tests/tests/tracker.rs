//! The tracker against the real collector and MariaDB: the example's rows, a collector that is
//! down, queue overflow, shutdown, and what is (not) exported.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;
use usage_pipeline_tests::collector::{TestCollector, settings, start_with_mysql};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::process::free_addr;
use usage_tracker::{Health, PageVisit, TrackerBuilder};

/// The compiled `web_ide` example (cargo builds examples before running tests).
fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile folder");
    let path = dir.join("examples").join("web_ide");
    assert!(
        path.exists(),
        "{} is missing: build with cargo test --workspace",
        path.display()
    );
    path
}

fn run_example(endpoint: &str, sessions: u32) -> (String, String) {
    let output = Command::new(example())
        .args(["--sessions", &sessions.to_string()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_SERVICE_NAME", "web-ide-demo")
        .env("NO_COLOR", "1")
        .output()
        .expect("run the example");
    assert!(output.status.success(), "{output:?}");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn s(text: &str) -> Option<String> {
    Some(text.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_examples_events_arrive_as_exactly_the_expected_rows() {
    let (db, collector) = start_with_mysql().await;
    let endpoint = collector.endpoint();
    let (stdout, stderr) = tokio::task::spawn_blocking(move || run_example(&endpoint, 4))
        .await
        .unwrap();
    assert!(
        stdout.contains("sent: 4 sessions, 7 page visits, 8 program runs (2 failed, 4 as spans), 4 feature uses, 2 custom events"),
        "{stdout}"
    );
    assert!(
        stdout.contains("stats: recorded 29 exported 29 failed 0 dropped 0"),
        "{stdout}"
    );
    assert!(stdout.contains("health: Healthy"), "{stdout}");
    assert!(!stderr.contains("usage-tracker WARN"), "{stderr}");
    collector
        .wait_written(std::time::Duration::from_secs(10))
        .await;

    for (table, rows) in [
        ("ide_sessions", 4),
        ("page_visits", 7),
        ("program_executions", 8),
        ("feature_usage", 4),
        ("usage_events", 2),
    ] {
        assert_eq!(db.count(table).await, rows, "{table}");
    }
    let sessions = db
        .texts(
            "SELECT session_id, service, user_id, user_agent, ip_address, CAST(programs_run AS CHAR), \
             CAST(lines_executed AS CHAR), CAST(errors_encountered AS CHAR), CAST(end_time IS NOT NULL AS CHAR) \
             FROM ide_sessions ORDER BY session_id",
        )
        .await;
    for (i, row) in sessions.iter().enumerate() {
        let errors = if i % 2 == 1 { "1" } else { "0" };
        assert_eq!(
            row,
            &[
                s(&format!("demo-session-{i}")),
                s("web-ide-demo"),
                s("demo-user"),
                s("Mozilla/5.0 (demo)"),
                s("192.0.2.10"),
                s("2"),
                s("27"),
                s(errors),
                s("1"),
            ]
        );
    }
    let failed = db
        .texts("SELECT session_id, error_message, CAST(program_lines AS CHAR) FROM program_executions WHERE NOT success ORDER BY session_id")
        .await;
    assert_eq!(
        failed,
        [
            vec![s("demo-session-1"), s("?SYNTAX ERROR IN 20"), s("4")],
            vec![s("demo-session-3"), s("?SYNTAX ERROR IN 20"), s("4")],
        ]
    );
    let spans = db
        .texts("SELECT CAST(COUNT(*) AS CHAR) FROM program_executions WHERE execution_time_ms >= 2 AND program_lines = 4")
        .await;
    assert_eq!(spans, [vec![s("4")]], "span runs carry their own duration");
    let custom = db.texts("SELECT event_name, session_id, CAST(attributes AS CHAR) FROM usage_events ORDER BY session_id").await;
    assert_eq!(custom[0][..2], [s("share_link"), s("demo-session-0")]);
    let attributes: serde_json::Value =
        serde_json::from_str(custom[0][2].as_deref().unwrap()).unwrap();
    assert_eq!(
        attributes,
        serde_json::json!({"link.kind": "public"}),
        "the app's own log line is not exported"
    );
    collector.stop().await;
}

#[test]
fn a_collector_that_is_down_gives_one_clear_warning_and_degraded_health() {
    let endpoint = format!("http://{}", free_addr());
    let (stdout, stderr) = run_example(&endpoint, 2);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("usage-tracker WARN"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains(&endpoint) && warnings[0].contains("Connection refused"),
        "{stderr}"
    );
    assert!(
        stdout.contains("stats: recorded 14 exported 0 failed 14 dropped 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("health: Degraded { last_error: \"cannot export usage events to"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_flow_once_the_collector_comes_up() {
    let db = TestDb::mysql().await;
    let addr = free_addr();
    let tracker = TrackerBuilder::new()
        .endpoint(format!("http://{addr}"))
        .service_name("late-collector")
        .export_interval(Duration::from_millis(50))
        .start()
        .unwrap();
    let subscriber = tracing_subscriber::registry().with(tracker.layer());
    let _default = tracing::subscriber::set_default(subscriber);
    let visit = |path: &str| {
        usage_tracker::page_visit(PageVisit {
            path,
            ..Default::default()
        })
    };
    let started = std::time::Instant::now();
    visit("/while-down");
    let recording_took = started.elapsed();
    tracker.flush(Duration::from_secs(10));
    let stats = tracker.stats();
    assert_eq!(
        (stats.recorded, stats.exported, stats.failed),
        (1, 0, 1),
        "{stats:?} (recording took {recording_took:?})"
    );
    let Health::Degraded { last_error, .. } = tracker.health() else {
        panic!("healthy with the collector down");
    };
    assert!(last_error.contains(&addr.to_string()), "{last_error}");

    let mut config = settings(db.url());
    config.grpc_listen = addr;
    let collector = TestCollector::start(config).await;
    visit("/after-up");
    assert!(tracker.flush(Duration::from_secs(10)));
    assert_eq!(tracker.health(), Health::Healthy);
    assert_eq!(tracker.stats().exported, 1);
    collector
        .wait_written(std::time::Duration::from_secs(10))
        .await;
    assert_eq!(
        db.texts("SELECT page_path, service FROM page_visits").await,
        [vec![s("/after-up"), s("late-collector")]]
    );
    collector.stop().await;
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking() {
    // A server that accepts connections and never answers: the export thread is stuck waiting.
    let black_hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let tracker = TrackerBuilder::new()
        .endpoint(format!("http://{}", black_hole.local_addr().unwrap()))
        .timeout(Duration::from_secs(30))
        .queue_size(10)
        .shutdown_deadline(Duration::from_millis(200))
        .start()
        .unwrap();
    let subscriber = tracing_subscriber::registry().with(tracker.layer());
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..1000 {
            usage_tracker::event!("tick", n = i);
        }
    });
    let stats = tracker.stats();
    assert_eq!(stats.recorded, 1000);
    // At most one batch in flight plus the queue's ten; everything else was dropped, counted.
    assert!(stats.dropped >= 1000 - 10 - 512, "{stats:?}");
    assert!(stats.dropped < 1000, "{stats:?}");
    let at_shutdown = tracker.shutdown();
    assert!(
        at_shutdown.pending() > 0,
        "the black hole never acknowledged: {at_shutdown:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_sends_what_is_queued_and_nothing_else_is_exported() {
    let (db, collector) = start_with_mysql().await;
    let tracker = TrackerBuilder::new()
        .endpoint(collector.endpoint())
        .export_interval(Duration::from_secs(3600))
        .start()
        .unwrap();
    let subscriber = tracing_subscriber::registry().with(tracker.layer());
    tokio::task::spawn_blocking(move || {
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..50 {
                usage_tracker::event!("queued", n = i);
            }
            tracing::info!("an application log line");
            tracing::warn!(target: "opentelemetry_sdk", "an SDK diagnostic");
            let _span = tracing::info_span!("an application span").entered();
        });
        let stats = tracker.shutdown();
        assert_eq!((stats.recorded, stats.exported), (50, 50), "{stats:?}");
    })
    .await
    .unwrap();
    collector
        .wait_written(std::time::Duration::from_secs(10))
        .await;
    assert_eq!(db.count("usage_events").await, 50);
    let names = db
        .texts("SELECT DISTINCT event_name FROM usage_events")
        .await;
    assert_eq!(names, [vec![s("queued")]]);
    collector.stop().await;
}

#[test]
fn verify_names_the_endpoint_that_does_not_answer() {
    let endpoint = format!("http://{}", free_addr());
    let error = TrackerBuilder::new()
        .endpoint(endpoint.clone())
        .verify(Duration::from_secs(2))
        .start()
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&endpoint) && message.contains("did not accept an empty export request"),
        "{message}"
    );
}

#[tracing::instrument(target = "usage", name = "program_execution", skip_all,
                      fields(session.id = %session, program.lines = lines, otel.status_description))]
fn run_program(session: &str, lines: i64, fail: bool) {
    if fail {
        tracing::Span::current().record("otel.status_description", "?OUT OF MEMORY");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn instrumented_functions_are_program_runs() {
    let (db, collector) = start_with_mysql().await;
    let tracker = TrackerBuilder::new()
        .endpoint(collector.endpoint())
        .start()
        .unwrap();
    let subscriber = tracing_subscriber::registry().with(tracker.layer());
    tokio::task::spawn_blocking(move || {
        tracing::subscriber::with_default(subscriber, || {
            run_program("inst-1", 12, false);
            run_program("inst-1", 7, true);
        });
        assert_eq!(tracker.shutdown().exported, 2);
    })
    .await
    .unwrap();
    collector
        .wait_written(std::time::Duration::from_secs(10))
        .await;
    let runs = db
        .texts("SELECT session_id, CAST(program_lines AS CHAR), CAST(success AS CHAR), error_message FROM program_executions ORDER BY program_lines")
        .await;
    assert_eq!(
        runs,
        [
            vec![s("inst-1"), s("7"), s("0"), s("?OUT OF MEMORY")],
            vec![s("inst-1"), s("12"), s("1"), None],
        ]
    );
    collector.stop().await;
}
