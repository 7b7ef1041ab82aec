//! A database written before the keys per service (migration 4) and the rollups (migration 5)
//! keeps its rows through the upgrade: the migrations change keys and add summaries without
//! touching the seed's columns or data, the summaries are filled from the rows already there,
//! and a collector then writes beside them, exactly once, with counts that go on from there.

use std::time::Duration;

use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::fixtures::*;

/// Rows as a collector of schema version 3 wrote them: one session of `web-ide` on
/// 2026-11-02 with two program runs (one failed), a page visit and a feature use.
const OLD_ROWS: &str = "
INSERT INTO ide_sessions (session_id, service, user_id, start_time, last_activity,
    programs_run, lines_executed, errors_encountered)
VALUES ('s-old', 'web-ide', 'u-1', '2026-11-02 09:00:00', '2026-11-02 09:30:00', 2, 30, 1);
INSERT INTO page_visits (event_id, service, session_id, user_id, `timestamp`, page_path, ip_address)
VALUES (UNHEX('00000000000000000000000000000001'), 'web-ide', 's-old', 'u-1',
        '2026-11-02 09:00:01', '/old-page', '203.0.113.77');
INSERT INTO program_executions (event_id, service, session_id, user_id, `timestamp`,
    program_lines, lines_executed, execution_time_ms, success, error_message)
VALUES (UNHEX('00000000000000000000000000000002'), 'web-ide', 's-old', 'u-1',
        '2026-11-02 09:10:00', 10, 10, 5, TRUE, NULL),
       (UNHEX('00000000000000000000000000000003'), 'web-ide', 's-old', 'u-1',
        '2026-11-02 09:20:00', 20, 20, 7, FALSE, 'boom');
INSERT INTO feature_usage (event_id, service, session_id, user_id, `timestamp`, feature_name)
VALUES (UNHEX('00000000000000000000000000000004'), 'web-ide', 's-old', 'u-1',
        '2026-11-02 09:15:00', 'share');
";

async fn summary(db: &TestDb, day: &str) -> Vec<Vec<Option<String>>> {
    db.texts(&format!(
        "SELECT CAST(sessions AS CHAR), CAST(page_visits AS CHAR), CAST(programs_run AS CHAR), \
         CAST(program_errors AS CHAR), CAST(features_used AS CHAR) \
         FROM daily_usage_summary WHERE `date` = '{day}'"
    ))
    .await
}

fn row(values: &[&str]) -> Vec<Vec<Option<String>>> {
    vec![values.iter().map(|v| Some((*v).to_owned())).collect()]
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_written_before_the_key_and_rollup_migrations_keep_working() {
    let db = TestDb::mysql().await;
    let pool = sqlx::MySqlPool::connect(db.url()).await.unwrap();
    let migrator = usage_collector::sink::mysql::migrations::migrator();
    migrator.run_to(3, &pool).await.expect("schema version 3");
    sqlx::raw_sql(OLD_ROWS).execute(&pool).await.unwrap();

    migrator.run(&pool).await.expect("the upgrade");
    pool.close().await;

    // The seed's columns and rows are as they were.
    assert_eq!(
        db.texts(
            "SELECT HEX(event_id), service, session_id, user_id, page_path, ip_address \
             FROM page_visits"
        )
        .await,
        row(&[
            "00000000000000000000000000000001",
            "web-ide",
            "s-old",
            "u-1",
            "/old-page",
            "203.0.113.77"
        ])
    );
    assert_eq!(db.count("program_executions").await, 2);
    // The summaries were filled from the rows already there.
    assert_eq!(
        summary(&db, "2026-11-02").await,
        row(&["1", "1", "2", "1", "1"])
    );
    assert_eq!(
        db.texts(
            "SELECT CAST(programs_run AS CHAR), CAST(lines_executed AS CHAR), \
             CAST(errors_encountered AS CHAR), CAST(page_visits AS CHAR), \
             CAST(features_used AS CHAR) FROM session_summary WHERE session_id = 's-old'"
        )
        .await,
        row(&["2", "30", "1", "1", "1"])
    );

    // A collector writes beside them: a new visit in the old session counts on from the
    // migrated counters, and another service's copy of the old event id is its own row.
    let collector = TestCollector::start(settings(db.url())).await;
    let old_id = "00000000-0000-0000-0000-000000000001";
    let day = 1_793_612_400_000_000_000; // 2026-11-02 09:40:00 UTC
    let visit = |service: &str, id: &str, path: &str| {
        logs_request(
            service,
            vec![event(
                "page_visit",
                day,
                vec![
                    kv("url.path", path),
                    kv("event.id", id),
                    kv("session.id", "s-old"),
                ],
            )],
        )
    };
    for request in [
        visit(
            "web-ide",
            "00000000-0000-0000-0000-0000000000aa",
            "/new-page",
        ),
        // The old event again, as a client retry across the upgrade: written once only.
        visit("web-ide", old_id, "/old-page"),
        visit("billing", old_id, "/billing-page"),
    ] {
        send_logs(&collector.endpoint(), request, false)
            .await
            .expect("accepted");
    }
    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(
        db.texts("SELECT service, page_path FROM page_visits ORDER BY id")
            .await,
        [
            ["web-ide", "/old-page"],
            ["web-ide", "/new-page"],
            ["billing", "/billing-page"],
        ]
        .map(|r| r.map(|v| Some(v.to_owned())).to_vec())
    );
    assert_eq!(
        db.texts(
            "SELECT service, CAST(page_visits AS CHAR) FROM session_summary \
             WHERE session_id = 's-old' ORDER BY service"
        )
        .await,
        [["billing", "1"], ["web-ide", "2"]].map(|r| r.map(|v| Some(v.to_owned())).to_vec())
    );
    assert_eq!(
        summary(&db, "2026-11-02").await,
        row(&["2", "3", "2", "1", "1"])
    );
    collector.stop().await;
}
