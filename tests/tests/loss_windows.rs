//! The last loss and silence windows, against the real `usage-collector` and MariaDB: a second
//! collector on a spool folder, limits that a spool record could not hold, passing database
//! incidents (each error code retried, never dead-lettered, while a row's own bad value is),
//! a writer that panics, and a database lost while nothing is sent.

use std::time::Duration;

use usage_pipeline_tests::collector::start_with_mysql;
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::value;
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::poll;
use usage_pipeline_tests::process::{ProcessConfig, temp_dir};
use usage_pipeline_tests::proxy::Proxy;

const BIN: &str = env!("CARGO_BIN_EXE_usage-collector-e2e");

fn visits(
    prefix: &str,
    n: u64,
) -> opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
    logs_request(
        "web-ide",
        (0..n)
            .map(|i| {
                event(
                    "page_visit",
                    T0 + i,
                    vec![
                        kv("event.id", uuid::Uuid::now_v7().to_string()),
                        kv("url.path", format!("/{prefix}/{i}")),
                    ],
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_collector_on_the_same_spool_exits_and_the_first_loses_nothing() {
    let db = TestDb::mysql().await;
    let (proxy, url) = Proxy::in_front_of(&db).await;
    let dir = temp_dir("usage_loss");
    let first = ProcessConfig::new(BIN, &url, &dir);
    let collector = first.start_ready().await;
    proxy.cut(); // everything acknowledged waits in the spool
    send_logs(&first.endpoint(), visits("first", 50), false)
        .await
        .expect("acknowledged");

    let mut second = ProcessConfig::new(BIN, &url, &dir.join("second"));
    second.spool_dir = first.spool_dir.clone();
    second.log = dir.join("second.log");
    let status = std::process::Command::new(BIN)
        .args(["serve", "--database-url", &url])
        .args(["--grpc-listen", &second.grpc.to_string()])
        .args(["--http-listen", &second.http.to_string()])
        .args(["--admin-listen", &second.admin.to_string()])
        .arg("--spool-dir")
        .arg(&second.spool_dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run a second collector");
    let output = String::from_utf8_lossy(&status.stdout).into_owned()
        + &String::from_utf8_lossy(&status.stderr);
    assert!(!status.status.success(), "{output}");
    assert!(
        output.contains("is in use by another collector")
            && output.contains(&format!("process {}", collector.pid())),
        "{output}"
    );
    proxy.restore();
    collector.wait_drained(Duration::from_secs(30)).await;
    assert_eq!(
        db.count("page_visits").await,
        50,
        "the first collector lost nothing"
    );
    drop(collector);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn limits_a_spool_record_could_not_hold_are_refused_at_start() {
    let output = std::process::Command::new(BIN)
        .args(["serve", "--database-url", "blackhole://"])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
        ])
        .args(["--max-request-bytes", "300000000"])
        .args(["--max-inflight-bytes", "4000000000"])
        .env("NO_COLOR", "1")
        .output()
        .expect("run the collector");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("invalid setting max_request_bytes") && text.contains("spool record"),
        "{text}"
    );
}

/// Makes every insert into `page_visits` fail with MariaDB error `errno`, as the server does
/// during that incident.
async fn fail_page_visits_with(db: &TestDb, errno: u32, message: &str) {
    db.execute("DROP TRIGGER IF EXISTS incident").await;
    db.execute(&format!(
        "CREATE TRIGGER incident BEFORE INSERT ON page_visits FOR EACH ROW \
         SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = {errno}, MESSAGE_TEXT = '{message}'"
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn passing_database_incidents_are_retried_and_never_dead_lettered() {
    let (db, collector) = start_with_mysql().await;
    let incidents = [
        (1114, "table_full", "The table page_visits is full"),
        (
            1021,
            "disk_full",
            "Disk full; waiting for someone to free some space",
        ),
        (
            1290,
            "read_only",
            "The MariaDB server is running with the --read-only option",
        ),
        (
            1969,
            "statement_timeout",
            "Query execution was interrupted (max_statement_time exceeded)",
        ),
        (
            3024,
            "statement_timeout",
            "Query execution was interrupted, maximum statement execution time exceeded",
        ),
        (1180, "commit_failed", "Got error 1 during COMMIT"),
        (1146, "missing_table", "Table page_visits does not exist"),
        (4999, "unknown", "An error nobody has seen before"),
    ];
    let mut sent = 0;
    for (errno, reason, message) in incidents {
        fail_page_visits_with(&db, errno, message).await;
        send_logs(&collector.endpoint(), visits(reason, 3), false)
            .await
            .expect("acknowledged into the spool");
        sent += 3;
        let series = format!("usage_collector_write_failures_total{{reason=\"{reason}\"}}");
        poll::until(
            &format!("error {errno} counted as {reason}"),
            Duration::from_secs(20),
            || collector.get("/metrics"),
            |(_, metrics)| value(metrics, &series) > Some(0.0),
        )
        .await;
        db.execute("DROP TRIGGER incident").await;
        collector.wait_written(Duration::from_secs(30)).await;
        assert_eq!(db.count("page_visits").await, sent, "after error {errno}");
    }
    assert_eq!(
        db.count("dead_letters").await,
        0,
        "a passing incident dead-lettered rows"
    );

    // A row's own value, refused by the database: only that row is a dead letter.
    db.execute(
        "CREATE TRIGGER bad_value BEFORE INSERT ON page_visits FOR EACH ROW \
         IF NEW.page_path = '/row/1' THEN \
         SIGNAL SQLSTATE '22001' SET MYSQL_ERRNO = 1406, MESSAGE_TEXT = 'Data too long for column page_path'; END IF",
    )
    .await;
    send_logs(&collector.endpoint(), visits("row", 3), false)
        .await
        .unwrap();
    collector.wait_written(Duration::from_secs(30)).await;
    assert_eq!(db.count("page_visits").await, sent + 2);
    let dead = db.texts("SELECT reason FROM dead_letters").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0][0].as_deref().unwrap().contains("Data too long"),
        "{dead:?}"
    );
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_query_is_retried() {
    use sqlx::Connection;
    let (db, collector) = start_with_mysql().await;
    // Another session holds the table: the writer's insert waits for it, and is killed there.
    let mut holder = sqlx::MySqlConnection::connect(db.url()).await.unwrap();
    sqlx::query("LOCK TABLES page_visits WRITE")
        .execute(&mut holder)
        .await
        .unwrap();
    send_logs(&collector.endpoint(), visits("killed", 1), false)
        .await
        .unwrap();
    let waiting = format!(
        "SELECT CAST(ID AS CHAR) FROM information_schema.PROCESSLIST \
         WHERE DB = '{}' AND COMMAND = 'Execute' AND STATE LIKE 'Waiting for table%'",
        db.name()
    );
    let id = poll::until(
        "the writer's insert waiting for the table",
        Duration::from_secs(20),
        || db.texts(&waiting),
        |rows| !rows.is_empty(),
    )
    .await;
    db.execute(&format!("KILL QUERY {}", id[0][0].as_deref().unwrap()))
        .await;
    poll::until(
        "the killed query counted",
        Duration::from_secs(20),
        || collector.get("/metrics"),
        |(_, metrics)| {
            value(
                metrics,
                "usage_collector_write_failures_total{reason=\"query_killed\"}",
            ) >= Some(1.0)
        },
    )
    .await;
    sqlx::query("UNLOCK TABLES")
        .execute(&mut holder)
        .await
        .unwrap();
    collector.wait_written(Duration::from_secs(30)).await;
    assert_eq!(db.count("page_visits").await, 1);
    assert_eq!(db.count("dead_letters").await, 0);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_writer_is_started_again_and_writes_everything() {
    let db = TestDb::mysql().await;
    let dir = temp_dir("usage_loss");
    let mut config = ProcessConfig::new(BIN, db.url(), &dir);
    config.extra = vec!["--test-writer-panics".into(), "2".into()];
    let collector = config.start_ready().await;
    for round in 0..3 {
        send_logs(
            &config.endpoint(),
            visits(&format!("panic{round}"), 10),
            false,
        )
        .await
        .expect("acknowledged");
    }
    collector.wait_drained(Duration::from_secs(30)).await;
    assert_eq!(db.count("page_visits").await, 30);
    let metrics = collector.metrics().await;
    // Two writes panic; when they run at once on two streams, one restart covers both.
    let restarts = value(&metrics, "usage_collector_writer_restarts_total");
    assert!(
        matches!(restarts, Some(r) if (1.0..=2.0).contains(&r)),
        "{metrics}"
    );
    assert_eq!(collector.get("/health/live").await.0, 200);
    let log = std::fs::read_to_string(&config.log).unwrap();
    assert!(log.contains("writer failed; starting it again"), "{log}");
    drop(collector);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_collector_notices_a_lost_database_within_30_seconds() {
    let db = TestDb::mysql().await;
    let (proxy, url) = Proxy::in_front_of(&db).await;
    let dir = temp_dir("usage_loss");
    let config = ProcessConfig::new(BIN, &url, &dir);
    let collector = config.start_ready().await;
    // No traffic at all.
    proxy.cut();
    let cut = std::time::Instant::now();
    poll::until(
        "database_up 0 with no traffic",
        Duration::from_secs(30),
        || collector.metrics(),
        |metrics| value(metrics, "usage_collector_database_up") == Some(0.0),
    )
    .await;
    let noticed = cut.elapsed();
    let (code, body) = collector.get("/health/ready").await;
    assert_eq!(code, 200, "degraded, still in service: {body}");
    assert!(body.contains("\"status\":\"degraded\""), "{body}");
    proxy.restore();
    poll::until(
        "database_up 1 again",
        Duration::from_secs(30),
        || collector.metrics(),
        |metrics| value(metrics, "usage_collector_database_up") == Some(1.0),
    )
    .await;
    println!("idle collector: lost database noticed after {noticed:?}");
    drop(collector);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn values_the_database_would_refuse_are_rejected_on_receipt_not_dead_lettered() {
    let (db, collector) = start_with_mysql().await;
    let run = |lines: i64| {
        event(
            "program_execution",
            T0,
            vec![
                kv("event.id", uuid::Uuid::now_v7().to_string()),
                kv("program.lines", lines),
            ],
        )
    };
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let feature = event(
        "feature_use",
        T0,
        vec![
            kv("event.id", uuid::Uuid::now_v7().to_string()),
            kv("feature.name", "export"),
            kv("feature.data", deep),
        ],
    );
    let request = logs_request(
        "web-ide",
        vec![run(12), run(1 << 40), run(i64::MAX), feature],
    );
    let response = send_logs(&collector.endpoint(), request, false)
        .await
        .expect("partial success");
    let partial = response.partial_success.expect("partial success");
    assert_eq!(partial.rejected_log_records, 3, "{partial:?}");
    assert!(
        partial.error_message.contains("program.lines"),
        "{partial:?}"
    );
    collector.wait_written(Duration::from_secs(20)).await;
    assert_eq!(db.count("program_executions").await, 1);
    assert_eq!(db.count("feature_usage").await, 0);
    assert_eq!(
        db.count("dead_letters").await,
        0,
        "nothing acknowledged was refused later"
    );
    collector.stop().await;
}

/// The settings the Kubernetes set ships start a collector (its limits agree with each other).
#[tokio::test(flavor = "multi_thread")]
async fn the_kubernetes_settings_start_a_collector() {
    let settings = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/base/settings.env"
    ))
    .unwrap();
    let dir = temp_dir("usage_k8s_settings");
    let mut command = std::process::Command::new(BIN);
    for line in settings.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').expect("KEY=value");
        // Paths of the pod are replaced by this test's.
        match key {
            "USAGE_SPOOL_DIR" => command.env(key, dir.join("spool")),
            "USAGE_DATABASE_PASSWORD_FILE" => command.env_remove(key),
            _ => command.env(key, value),
        };
    }
    let admin = usage_pipeline_tests::process::free_addr();
    let mut child = command
        .args(["serve", "--database-url", "blackhole://"])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            &admin.to_string(),
            "--http-listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Live (its admin port answers) and still running, or exited: which, within 20 s.
    let started = std::time::Instant::now();
    let live = loop {
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        if tokio::net::TcpStream::connect(admin).await.is_ok() {
            break true;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "neither live nor exited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exited = child.try_wait().unwrap();
    child.kill().ok();
    let output = child.wait_with_output().unwrap();
    assert!(
        live && exited.is_none(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::remove_dir_all(dir).unwrap();
}
