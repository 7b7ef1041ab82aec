//! Fault tests: under steady load from retrying clients, every event the collector
//! acknowledged is in its table exactly once — through a database outage, SIGKILL, a full
//! spool, a damaged spool, rows the database refuses, and SIGTERM. Each test prints
//! `events sent / acknowledged / present / duplicated`.

use std::path::PathBuf;
use std::time::Duration;

use usage_pipeline_tests::collector::start_with_mysql;
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::{Accounting, assert_exposes, value};
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::load::{Load, Report, check_present, check_session_counters};
use usage_pipeline_tests::poll;
use usage_pipeline_tests::process::{CollectorProcess, ProcessConfig, assert_accounted, temp_dir};
use usage_pipeline_tests::proxy::Proxy;

const BIN: &str = env!("CARGO_BIN_EXE_usage-collector-e2e");

/// Asserts every acknowledged event is present exactly once and every session's counters
/// agree with its program runs; prints the tally. Requests that failed for good (a connection
/// closed by a dying or stopping collector: the OTLP SDKs do not retry a broken stream) were
/// never acknowledged, so they are allowed only when `killed` (SIGKILL or SIGTERM).
async fn assert_exactly_once(
    name: &str,
    db: &TestDb,
    report: &Report,
    acked: &[String],
    killed: bool,
) {
    let (present, duplicated) = check_present(db, acked).await;
    let sessions = check_session_counters(db).await;
    println!(
        "{name}: events sent {} / acknowledged {} / present {} / duplicated {} (refusals retried {}, with RetryInfo {}, abandoned {}); \
         {} sessions, {} program runs, {} with wrong counters",
        report.sent,
        report.acknowledged,
        present,
        duplicated,
        report.refusals,
        report.with_retry_info,
        report.abandoned,
        sessions.sessions,
        sessions.runs,
        sessions.wrong.len()
    );
    assert!(report.acknowledged > 0, "{name}: nothing was acknowledged");
    assert_eq!(
        present, report.acknowledged,
        "{name}: acknowledged events missing"
    );
    // The tables' unique keys make this hold whatever the collector does; kept as a tally.
    assert_eq!(duplicated, 0, "{name}: duplicated rows");
    // The counters are the collector's own work: recounted from program_executions in the
    // batch's transaction, so a replayed or retried batch must not move them.
    assert!(
        sessions.sessions > 0 && sessions.runs > 0,
        "{name}: the load wrote no session or no program run: {sessions:?}"
    );
    assert_eq!(
        sessions.wrong,
        [],
        "{name}: sessions whose counters (programs run, lines executed, errors) disagree with their runs: stored, counted"
    );
    if !killed {
        assert_eq!(report.failed, 0, "{name}: requests refused for good");
    }
}

/// Stops the load (its clients' retries get `patience`), waits until the collector's spool is
/// drained, then asserts [`assert_exactly_once`] and [`assert_accounted`]. `restarted`: the
/// collector was killed or stopped under the load and this process started on its spool.
async fn stop_and_assert_nothing_lost(
    name: &str,
    db: &TestDb,
    collector: &CollectorProcess,
    load: Load,
    patience: Duration,
    restarted: bool,
) -> Report {
    let (report, acked) = load.stop(patience).await;
    collector.wait_drained(Duration::from_secs(60)).await;
    assert_exactly_once(name, db, &report, &acked, restarted).await;
    assert_accounted(name, collector, restarted).await;
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn database_cut_for_20_seconds_under_load() {
    let db = TestDb::mysql().await;
    let (proxy, url) = Proxy::in_front_of(&db).await;
    let dir = temp_dir("usage_fault");
    let config = ProcessConfig::new(BIN, &url, &dir);
    let collector = config.start_ready().await;

    let load = Load::start(&config.endpoint(), 4, 20, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.cut();
    let before = load.acknowledged();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = load.acknowledged() - before;
    let (code, body) = collector.get("/health/ready").await;
    assert_eq!(
        code, 200,
        "the replica stays in service during the outage: {body}"
    );
    assert!(body.contains("\"status\":\"degraded\""), "{body}");
    assert!(body.contains("\"database\":\"failed: "), "{body}");
    assert_eq!(collector.get("/health/ready?strict=1").await.0, 503);
    proxy.restore();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let patience = Duration::from_secs(30);
    stop_and_assert_nothing_lost("database cut 20 s", &db, &collector, load, patience, false).await;
    assert!(
        during > 0,
        "acknowledgements stopped during the outage: the spool should take them"
    );
    drop(collector);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn database_hangs_under_load_then_answers_again() {
    let db = TestDb::mysql().await;
    let (proxy, url) = Proxy::in_front_of(&db).await;
    let dir = temp_dir("usage_fault");
    let mut config = ProcessConfig::new(BIN, &url, &dir);
    config.extra = vec!["--write-timeout-secs".into(), "2".into()];
    let collector = config.start_ready().await;

    let load = Load::start(&config.endpoint(), 4, 20, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Connections stay open and no byte moves: statements hang instead of failing.
    proxy.stall();
    let stalled = std::time::Instant::now();
    let before = load.acknowledged();
    let (_, body) = poll::until(
        "the hung database reported",
        Duration::from_secs(30),
        || collector.get("/health/ready"),
        |(_, body)| body.contains("\"database\":\"failed: "),
    )
    .await;
    let reported = stalled.elapsed();
    let metrics = collector.metrics().await;
    assert_eq!(
        value(&metrics, "usage_collector_database_up"),
        Some(0.0),
        "{body}"
    );
    // The writer's statements time out (or, with every connection hung, waiting for one does).
    assert!(
        ["timeout", "pool_timeout"].iter().any(|reason| value(
            &metrics,
            &format!("usage_collector_write_failures_total{{reason=\"{reason}\"}}")
        ) > Some(0.0)),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = load.acknowledged() - before;
    proxy.restore();
    let patience = Duration::from_secs(30);
    stop_and_assert_nothing_lost("database hung", &db, &collector, load, patience, false).await;
    println!("database hung: reported after {reported:?}; {during} events acknowledged meanwhile");
    assert!(
        during > 0,
        "acknowledgements stopped while the database hung"
    );
    drop(collector);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_then_restart_on_the_same_spool() {
    let db = TestDb::mysql().await;
    let dir = temp_dir("usage_fault");
    let config = ProcessConfig::new(BIN, db.url(), &dir);
    let collector = config.start_ready().await;
    let load = Load::start(&config.endpoint(), 4, 20, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_secs(3)).await;
    collector.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut collector = config.start();
    collector.wait_live(Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let patience = Duration::from_secs(30);
    stop_and_assert_nothing_lost("SIGKILL and restart", &db, &collector, load, patience, true)
        .await;
    drop(collector);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_refuses_with_retry_info_and_the_retries_land() {
    let db = TestDb::mysql().await;
    let (proxy, url) = Proxy::in_front_of(&db).await;
    let dir = temp_dir("usage_fault");
    let mut config = ProcessConfig::new(BIN, &url, &dir);
    config.spool_max_bytes = 64 * 1024;
    let collector = config.start_ready().await;
    proxy.cut();
    let load = Load::start(&config.endpoint(), 3, 20, Duration::from_millis(10));
    poll::until(
        "the spool filled (refusals seen by the clients)",
        Duration::from_secs(30),
        || async { load.refusals() },
        |refusals| *refusals > 0,
    )
    .await;
    let metrics = collector.metrics().await;
    assert_exposes(
        &metrics,
        &["usage_collector_records_refused_total{signal=\"logs\",reason=\"spool_full\"}"],
    );
    let (code, body) = collector.get("/health/ready").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"status\":\"failing\""), "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let name = "spool cap during an outage";
    let patience = Duration::from_secs(60);
    let report = stop_and_assert_nothing_lost(name, &db, &collector, load, patience, false).await;
    assert!(report.with_retry_info > 0, "{report:?}");
    assert_eq!(
        report.abandoned, 0,
        "every refused request was retried until it landed: {report:?}"
    );
    drop(collector);
    std::fs::remove_dir_all(dir).unwrap();
}

fn segments(spool: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "wal") && std::fs::metadata(p).unwrap().len() > 0
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_spool_is_repaired_at_start_and_the_rest_replayed() {
    let db = TestDb::mysql().await;
    let (proxy, url) = Proxy::in_front_of(&db).await;
    proxy.cut(); // nothing is written: everything stays in the spool
    let dir = temp_dir("usage_fault");
    let config = ProcessConfig::new(BIN, &url, &dir);
    let send = |endpoint: String, first: u64| async move {
        for i in first..first + 5 {
            let request = logs_request(
                "spool",
                vec![event(
                    "page_visit",
                    T0 + i,
                    vec![
                        kv("event.id", uuid::Uuid::now_v7().to_string()),
                        kv("url.path", format!("/r/{i}")),
                    ],
                )],
            );
            send_logs(&endpoint, request, false).await.unwrap();
        }
    };
    for first in [0, 5] {
        let mut collector = config.start();
        collector.wait_live(Duration::from_secs(20)).await;
        send(config.endpoint(), first).await;
        collector.kill();
    }
    let files = segments(&config.spool_dir);
    assert_eq!(files.len(), 2, "{files:?}");
    // Corrupt the third record of the first segment; tear the end of the second.
    let mut first = std::fs::read(&files[0]).unwrap();
    let record = first.len() / 5;
    first[2 * record + 30] ^= 0xff;
    std::fs::write(&files[0], &first).unwrap();
    let mut second = std::fs::OpenOptions::new()
        .append(true)
        .open(&files[1])
        .unwrap();
    std::io::Write::write_all(&mut second, &first[..record / 2]).unwrap();
    drop(second);

    proxy.restore();
    let collector = config.start_ready().await;
    collector.wait_drained(Duration::from_secs(30)).await;
    let paths = db
        .texts("SELECT page_path FROM page_visits ORDER BY page_path")
        .await;
    let paths: Vec<String> = paths.into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/r/0", "/r/1", "/r/3", "/r/4", "/r/5", "/r/6", "/r/7", "/r/8", "/r/9"
        ],
        "only the damaged record is lost; the ones after it are replayed"
    );
    let quarantined = std::fs::read_dir(config.spool_dir.join("quarantine"))
        .unwrap()
        .count();
    assert_eq!(quarantined, 1);
    let metrics = collector.metrics().await;
    assert_eq!(
        value(&metrics, "usage_collector_spool_quarantined_segments_total"),
        Some(1.0),
        "{metrics}"
    );
    // This process accepted nothing: it wrote the 9 events it replayed, each once, and lost
    // none it read (the damaged one's bytes are kept in quarantine, not dropped).
    let counted = Accounting::read(&metrics);
    assert_eq!(
        (counted.accepted, counted.written, counted.dropped),
        (0.0, 9.0, 0.0),
        "{counted:?}"
    );
    println!(
        "damaged spool: 10 acknowledged, 9 replayed, the damaged record's bytes kept in quarantine, torn tail cut"
    );
    drop(collector);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_the_database_refuses_become_dead_letters_and_the_rest_is_written() {
    let (db, collector) = start_with_mysql().await;
    // The database refuses some rows for their values (values the collector itself would let
    // through; those it knows the database refuses are rejected on receipt instead).
    db.execute(
        "CREATE TRIGGER refuse_large_programs BEFORE INSERT ON program_executions FOR EACH ROW \
         IF NEW.program_lines >= 1000 THEN \
         SIGNAL SQLSTATE '22003' SET MYSQL_ERRNO = 1264, \
         MESSAGE_TEXT = 'Out of range value for column program_lines'; END IF",
    )
    .await;
    let runs: Vec<_> = (0..10i64)
        .map(|i| {
            let lines = if i % 4 == 1 { 1000 + i } else { i };
            event(
                "program_execution",
                T0 + i as u64,
                vec![
                    kv("event.id", uuid::Uuid::now_v7().to_string()),
                    kv("program.lines", lines),
                ],
            )
        })
        .collect();
    send_logs(&collector.endpoint(), logs_request("ide", runs), false)
        .await
        .unwrap();
    collector.wait_written(Duration::from_secs(20)).await;
    let lines = db
        .texts("SELECT CAST(program_lines AS CHAR) FROM program_executions ORDER BY program_lines")
        .await;
    let lines: Vec<String> = lines.into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(lines, ["0", "2", "3", "4", "6", "7", "8"]);
    let dead = db
        .texts("SELECT table_name, reason, CAST(row_data AS CHAR) FROM dead_letters")
        .await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    for row in &dead {
        assert_eq!(row[0].as_deref(), Some("program_executions"));
        assert!(
            row[1].as_deref().unwrap().contains("Out of range"),
            "{row:?}"
        );
        assert!(
            ["1001", "1005", "1009"]
                .iter()
                .any(|lines| row[2].as_deref().unwrap().contains(lines)),
            "{row:?}"
        );
    }
    let metrics = collector.get("/metrics").await.1;
    assert_exposes(
        &metrics,
        &["usage_collector_dead_letters_total{table=\"program_executions\"} 3"],
    );
    // Bisecting writes the seven good events once each and counts only those as written.
    let counted = Accounting::read(&metrics);
    assert_eq!(
        (
            counted.accepted,
            counted.written,
            counted.dead_letters,
            counted.dropped
        ),
        (10.0, 7.0, 3.0, 0.0),
        "{counted:?}"
    );
    println!(
        "permanent refusals: 10 acknowledged, 7 written, 3 dead letters with reasons, 0 duplicated"
    );
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_exits_cleanly_and_nothing_is_lost() {
    let db = TestDb::mysql().await;
    let dir = temp_dir("usage_fault");
    let mut config = ProcessConfig::new(BIN, db.url(), &dir);
    config.shutdown_timeout_secs = 5;
    let collector = config.start_ready().await;
    let load = Load::start(&config.endpoint(), 4, 20, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, took) = collector.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(config.shutdown_timeout_secs + 5),
        "took {took:?}"
    );
    let mut collector = config.start();
    collector.wait_live(Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("SIGTERM: exited 0 after {took:?}");
    let patience = Duration::from_secs(30);
    stop_and_assert_nothing_lost("SIGTERM and restart", &db, &collector, load, patience, true)
        .await;
    drop(collector);
    std::fs::remove_dir_all(dir).unwrap();
}
