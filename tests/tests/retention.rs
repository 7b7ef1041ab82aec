//! Retention on MariaDB and SQLite: a sweep deletes exactly the rows past each table's limit,
//! in statements of at most the batch size; per-table overrides win; on MariaDB two collectors
//! sweeping at once delete each row once, only one of them sweeping (the one holding the
//! retention lease); a sweep that loses its lease stops; and a running collector sweeps by
//! itself once ready.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use time::macros::datetime;
use usage_collector::catalog::Catalog;
use usage_collector::config::{DatabaseSettings, RetentionSettings, Settings, TableDays};
use usage_collector::health::Metrics;
use usage_collector::health::metrics::TableLabels;
use usage_collector::retention::Retention;
use usage_collector::sink::Sink;
use usage_collector::sink::retention::{Deleted, Sweep};
use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition;

/// The sweeps' "now": 30 days back is 2025-02-08 12:00:00.
const NOW: OffsetDateTime = datetime!(2025-03-10 12:00:00 UTC);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

async fn migrated_sink(db: &TestDb) -> Sink {
    let sink = Sink::open(
        &DatabaseSettings::new(db.url()),
        Arc::new(Catalog::built_in()),
    )
    .expect("sink");
    sink.migrate().await.expect("migrations");
    sink
}

fn retention(days: u32, tables: &[(&str, u32)], batch_size: u32) -> RetentionSettings {
    RetentionSettings {
        days,
        tables: TableDays(tables.iter().map(|&(t, d)| (t.to_owned(), d)).collect()),
        batch_size,
        ..Settings::defaults().retention
    }
}

fn deleted_metric(metrics: &Metrics, table: &'static str) -> u64 {
    metrics
        .rows_deleted
        .get(&TableLabels { table })
        .map_or(0, |c| c.get())
}

/// `X'…'`: a 16-byte event id both databases read as a binary literal.
fn event_id(n: u32) -> String {
    format!("X'{n:032x}'")
}

/// Inserts a `page_visits` row numbered `n` at `time`.
async fn page_visit(db: &TestDb, n: u32, time: &str) {
    db.execute(&format!(
        "INSERT INTO page_visits (event_id, service, `timestamp`, page_path) \
         VALUES ({}, 'web', '{time}', '/p{n}')",
        event_id(n)
    ))
    .await;
}

/// Rows on either side of the limits: old ones the sweep must delete, recent ones it must keep.
async fn insert_rows(db: &TestDb) {
    // page_visits: five past the 30 days (one a second past the cutoff), three within.
    for (n, time) in [
        (1, "2024-12-01 00:00:00"),
        (2, "2025-01-01 00:00:00"),
        (3, "2025-01-15 08:30:00.250000"),
        (4, "2025-02-01 00:00:00"),
        (5, "2025-02-08 11:59:59"),
        (6, "2025-02-08 12:00:01"),
        (7, "2025-03-01 00:00:00"),
        (8, "2025-03-10 11:00:00"),
    ] {
        page_visit(db, n, time).await;
    }
    for (table, extra, value, n, time) in [
        (
            "program_executions",
            "success",
            "1",
            11,
            "2025-01-01 00:00:00",
        ),
        (
            "program_executions",
            "success",
            "1",
            12,
            "2025-03-01 00:00:00",
        ),
        (
            "feature_usage",
            "feature_name",
            "'f'",
            21,
            "2024-01-01 00:00:00",
        ),
        (
            "feature_usage",
            "feature_name",
            "'f'",
            22,
            "2025-03-01 00:00:00",
        ),
        (
            "usage_events",
            "event_name, attributes",
            "'e', '{}'",
            31,
            "2024-01-01 00:00:00",
        ),
        (
            "usage_events",
            "event_name, attributes",
            "'e', '{}'",
            32,
            "2025-01-01 00:00:00",
        ),
    ] {
        db.execute(&format!(
            "INSERT INTO {table} (event_id, service, `timestamp`, {extra}) \
             VALUES ({}, 'web', '{time}', {value})",
            event_id(n)
        ))
        .await;
    }
    // ide_sessions: (id, start, last activity, end).
    for (id, start, last, end) in [
        // Ended long ago: deleted.
        (
            "ended-old",
            "2025-01-01 00:00:00",
            "2025-01-01 01:00:00",
            Some("2025-01-01 01:00:00"),
        ),
        // Never ended, inactive for longer than the retention: deleted.
        (
            "abandoned",
            "2025-01-02 00:00:00",
            "2025-01-03 00:00:00",
            None,
        ),
        // Started long ago, never ended, active lately: kept.
        ("active", "2025-01-01 00:00:00", "2025-03-09 00:00:00", None),
        // Ended long ago, but a late event since: kept.
        (
            "late-event",
            "2025-01-01 00:00:00",
            "2025-03-01 00:00:00",
            Some("2025-01-01 02:00:00"),
        ),
        // Recent: kept.
        (
            "recent",
            "2025-03-01 00:00:00",
            "2025-03-01 01:00:00",
            Some("2025-03-01 01:00:00"),
        ),
    ] {
        let end = end.map_or("NULL".to_owned(), |e| format!("'{e}'"));
        db.execute(&format!(
            "INSERT INTO ide_sessions (session_id, service, start_time, last_activity, end_time) \
             VALUES ('{id}', 'web', '{start}', '{last}', {end})"
        ))
        .await;
    }
    // dead_letters: 7 days for them (an override shorter than the default).
    for (n, created) in [
        (41, "2025-01-01 00:00:00"),
        (42, "2025-03-01 00:00:00"),
        (43, "2025-03-05 00:00:00"),
    ] {
        db.execute(&format!(
            "INSERT INTO dead_letters (event_id, table_name, reason, row_data, created_at) \
             VALUES ({}, 'page_visits', 'r', '{{}}', '{created}')",
            event_id(n)
        ))
        .await;
    }
    // Never swept, however old.
    db.execute(
        "INSERT INTO collector_heartbeats (instance, last_beat) VALUES ('old', '2020-01-01 00:00:00')",
    )
    .await;
}

async fn column(db: &TestDb, sql: &str) -> Vec<String> {
    db.texts(sql)
        .await
        .into_iter()
        .map(|row| row[0].clone().unwrap_or_default())
        .collect()
}

async fn removes_exactly_the_rows_past_the_limit(db: TestDb) {
    let sink = migrated_sink(&db).await;
    insert_rows(&db).await;
    let metrics = Arc::new(Metrics::new());
    // 30 days by default; feature_usage kept forever, usage_events a year, dead letters a week.
    let settings = retention(
        30,
        &[
            ("feature_usage", 0),
            ("usage_events", 365),
            ("dead_letters", 7),
        ],
        2,
    );
    let sweeper = Retention::new(sink.clone(), metrics.clone(), settings, STATEMENT_TIMEOUT);
    let outcome = sweeper.sweep_at(NOW).await.expect("sweep");
    let deleted = |table, rows, statements| Deleted {
        table,
        rows,
        statements,
    };
    assert_eq!(
        outcome,
        Sweep::Swept(vec![
            // Five old rows in batches of two: 2, 2, 1 — three statements.
            deleted("page_visits", 5, 3),
            deleted("program_executions", 1, 1),
            deleted("usage_events", 1, 1),
            // Two rows fill a batch, so one more statement finds none.
            deleted("ide_sessions", 2, 2),
            deleted("dead_letters", 2, 2),
        ])
    );
    assert_eq!(
        column(
            &db,
            "SELECT page_path FROM page_visits ORDER BY `timestamp`"
        )
        .await,
        ["/p6", "/p7", "/p8"]
    );
    assert_eq!(
        column(&db, "SELECT HEX(event_id) FROM program_executions").await,
        [format!("{:032X}", 12)]
    );
    assert_eq!(db.count("feature_usage").await, 2, "kept forever");
    assert_eq!(
        column(&db, "SELECT HEX(event_id) FROM usage_events").await,
        [format!("{:032X}", 32)]
    );
    assert_eq!(
        column(
            &db,
            "SELECT session_id FROM ide_sessions ORDER BY session_id"
        )
        .await,
        ["active", "late-event", "recent"]
    );
    assert_eq!(
        column(&db, "SELECT HEX(event_id) FROM dead_letters").await,
        [format!("{:032X}", 43)]
    );
    assert_eq!(db.count("collector_heartbeats").await, 1);
    for (table, rows) in [
        ("page_visits", 5),
        ("program_executions", 1),
        ("usage_events", 1),
        ("ide_sessions", 2),
        ("dead_letters", 2),
        ("feature_usage", 0),
    ] {
        assert_eq!(deleted_metric(&metrics, table), rows, "{table}");
    }
    // A second sweep finds nothing more: one statement per table.
    let again = sweeper.sweep_at(NOW).await.expect("second sweep");
    let Sweep::Swept(again) = again else {
        panic!("{again:?}")
    };
    assert!(
        again.iter().all(|d| d.rows == 0 && d.statements == 1),
        "{again:?}"
    );
    sink.close().await;
}

#[tokio::test]
async fn mysql_sweep_removes_exactly_the_rows_past_the_limit_in_bounded_batches() {
    removes_exactly_the_rows_past_the_limit(TestDb::mysql().await).await;
}

#[tokio::test]
async fn sqlite_sweep_removes_exactly_the_rows_past_the_limit_in_bounded_batches() {
    removes_exactly_the_rows_past_the_limit(TestDb::sqlite().await).await;
}

/// `n` old page visits in one statement.
async fn old_page_visits(db: &TestDb, n: u32) {
    let values: Vec<String> = (1..=n)
        .map(|i| format!("({}, 'web', '2024-01-01 00:00:00', '/old')", event_id(i)))
        .collect();
    db.execute(&format!(
        "INSERT INTO page_visits (event_id, service, `timestamp`, page_path) VALUES {}",
        values.join(", ")
    ))
    .await;
}

#[tokio::test]
async fn two_collectors_sweeping_at_once_on_mysql_delete_each_row_once() {
    const OLD: u32 = 600;
    let db = TestDb::mysql().await;
    let first = migrated_sink(&db).await;
    // A second collector: its own pool, as another replica has.
    let second = Sink::open(
        &DatabaseSettings::new(db.url()),
        Arc::new(Catalog::built_in()),
    )
    .expect("sink");
    second.ping().await.expect("second connects");
    old_page_visits(&db, OLD).await;
    page_visit(&db, OLD + 1, "2025-03-10 00:00:00").await;
    let (metrics_a, metrics_b) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
    // Batches of 3: 200 statements, so the first sweep still holds the lease when the second
    // asks for it.
    let settings = retention(30, &[], 3);
    let a = Retention::new(
        first.clone(),
        metrics_a.clone(),
        settings.clone(),
        STATEMENT_TIMEOUT,
    );
    let b = Retention::new(
        second.clone(),
        metrics_b.clone(),
        settings,
        STATEMENT_TIMEOUT,
    );
    let (outcome_a, outcome_b) = tokio::join!(a.sweep_at(NOW), b.sweep_at(NOW));
    let outcomes = [outcome_a.expect("sweep a"), outcome_b.expect("sweep b")];
    let swept: Vec<&Vec<Deleted>> = outcomes
        .iter()
        .filter_map(|o| match o {
            Sweep::Swept(deleted) => Some(deleted),
            _ => None,
        })
        .collect();
    assert_eq!(swept.len(), 1, "exactly one sweeps: {outcomes:?}");
    assert!(
        outcomes.contains(&Sweep::LockHeld),
        "the other finds the lease taken: {outcomes:?}"
    );
    assert_eq!(swept[0][0].table, "page_visits");
    assert_eq!(swept[0][0].rows, u64::from(OLD));
    assert_eq!(
        deleted_metric(&metrics_a, "page_visits") + deleted_metric(&metrics_b, "page_visits"),
        u64::from(OLD)
    );
    assert_eq!(db.count("page_visits").await, 1);
    // The lease was released: the next round sweeps (and finds nothing).
    let next = b.sweep_at(NOW).await.expect("next sweep");
    assert!(matches!(next, Sweep::Swept(_)), "{next:?}");
    first.close().await;
    second.close().await;
}

/// Another collector holds the retention lease: a sweep skips the round and deletes nothing;
/// once the lease is released, or has expired, the next round sweeps.
async fn a_sweep_skips_the_round_while_another_holds_the_lease(db: TestDb) {
    let sink = migrated_sink(&db).await;
    old_page_visits(&db, 4).await;
    // What another collector's take leaves behind: its name and an expiry an hour ahead.
    db.execute(
        "UPDATE collector_leases SET holder = 'collector-b-1234', \
         expires_at = '2999-01-01 00:00:00' WHERE name = 'retention'",
    )
    .await;
    let metrics = Arc::new(Metrics::new());
    let sweeper = Retention::new(
        sink.clone(),
        metrics.clone(),
        retention(30, &[], 1000),
        STATEMENT_TIMEOUT,
    )
    .with_instance("collector-a");
    assert!(sweeper.holder().starts_with("collector-a-"));
    assert_eq!(sweeper.sweep_at(NOW).await.expect("sweep"), Sweep::LockHeld);
    assert_eq!(db.count("page_visits").await, 4);
    assert_eq!(deleted_metric(&metrics, "page_visits"), 0);
    // The lease expired (its holder died): the next round takes it.
    db.execute(
        "UPDATE collector_leases SET expires_at = '2000-01-01 00:00:00' WHERE name = 'retention'",
    )
    .await;
    assert!(matches!(
        sweeper.sweep_at(NOW).await.expect("sweep"),
        Sweep::Swept(_)
    ));
    assert_eq!(db.count("page_visits").await, 0);
    // Released at the end: no holder, expired.
    let lease = db
        .texts(
            "SELECT holder, CAST(expires_at < '2001-01-01' AS CHAR) FROM collector_leases \
             WHERE name = 'retention'",
        )
        .await;
    assert_eq!(lease, [[Some(String::new()), Some("1".to_owned())]]);
    sink.close().await;
}

#[tokio::test]
async fn a_sweep_skips_the_round_while_another_holds_the_lease_on_mysql() {
    a_sweep_skips_the_round_while_another_holds_the_lease(TestDb::mysql().await).await;
}

#[tokio::test]
async fn a_sweep_skips_the_round_while_another_holds_the_lease_on_sqlite() {
    a_sweep_skips_the_round_while_another_holds_the_lease(TestDb::sqlite().await).await;
}

/// A sweep whose lease another collector took while it ran (it stalled past the expiry)
/// stops after the statement it was running: it never sweeps beside the new holder.
#[tokio::test]
async fn a_sweep_that_loses_its_lease_stops() {
    let db = TestDb::mysql().await;
    let sink = migrated_sink(&db).await;
    old_page_visits(&db, 60).await;
    // The first DELETE takes the lease away, as a collector taking it over would.
    db.execute(
        "CREATE TRIGGER take_over BEFORE DELETE ON page_visits FOR EACH ROW \
         UPDATE collector_leases SET holder = 'collector-b-1234', \
         expires_at = '2999-01-01 00:00:00' WHERE name = 'retention'",
    )
    .await;
    let metrics = Arc::new(Metrics::new());
    let sweeper = Retention::new(
        sink.clone(),
        metrics.clone(),
        retention(30, &[], 10),
        STATEMENT_TIMEOUT,
    );
    let outcome = sweeper.sweep_at(NOW).await.expect("sweep");
    assert_eq!(
        outcome,
        Sweep::LeaseLost(vec![Deleted {
            table: "page_visits",
            rows: 10,
            statements: 1
        }])
    );
    assert_eq!(
        db.count("page_visits").await,
        50,
        "one statement, then it stopped"
    );
    assert_eq!(deleted_metric(&metrics, "page_visits"), 10);
    // The lease stays the other's.
    assert_eq!(
        db.texts("SELECT holder FROM collector_leases WHERE name = 'retention'")
            .await,
        [[Some("collector-b-1234".to_owned())]]
    );
    sink.close().await;
}

#[tokio::test]
async fn a_running_collector_sweeps_once_ready_and_counts_from_zero() {
    let db = TestDb::sqlite().await;
    let sink = migrated_sink(&db).await;
    old_page_visits(&db, 3).await;
    // A visit from now, whatever day the test runs.
    let now = OffsetDateTime::now_utc();
    page_visit(
        &db,
        100,
        &format!(
            "{:04}-{:02}-{:02} 00:00:00",
            now.year(),
            u8::from(now.month()),
            now.day()
        ),
    )
    .await;
    sink.close().await;
    let mut settings = settings(db.url());
    settings.retention.days = 30;
    let collector = TestCollector::start(settings).await;
    let metrics = usage_pipeline_tests::poll::until(
        "the first sweep's deletions on /metrics",
        Duration::from_secs(10),
        || collector.get("/metrics"),
        |(_, text)| {
            exposition::value(
                text,
                r#"usage_collector_rows_deleted_total{table="page_visits"}"#,
            ) == Some(3.0)
        },
    )
    .await
    .1;
    exposition::assert_exposes(
        &metrics,
        &[
            r#"usage_collector_rows_deleted_total{table="feature_usage"} 0"#,
            r#"usage_collector_rows_deleted_total{table="dead_letters"} 0"#,
        ],
    );
    assert_eq!(db.count("page_visits").await, 1);
    // An event already older than the table keeps is rejected on receipt, not written to be
    // deleted; a recent one is written.
    let old =
        usage_pipeline_tests::fixtures::T0 - 400 * 86_400 * usage_pipeline_tests::fixtures::SECOND;
    let recent = u64::try_from(now.unix_timestamp_nanos()).unwrap();
    let visit = |time: u64| {
        usage_pipeline_tests::fixtures::event(
            "page_visit",
            time,
            vec![
                usage_pipeline_tests::fixtures::kv("event.id", uuid::Uuid::now_v7().to_string()),
                usage_pipeline_tests::fixtures::kv("url.path", "/sent"),
            ],
        )
    };
    let response = usage_pipeline_tests::fixtures::send_logs(
        &collector.endpoint(),
        usage_pipeline_tests::fixtures::logs_request("web-ide", vec![visit(old), visit(recent)]),
        false,
    )
    .await
    .unwrap();
    let partial = response.partial_success.expect("the old event rejected");
    assert_eq!(partial.rejected_log_records, 1);
    assert!(
        partial.error_message.contains("retention.days"),
        "{partial:?}"
    );
    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(db.count("page_visits").await, 2);
    collector.stop().await;
}
