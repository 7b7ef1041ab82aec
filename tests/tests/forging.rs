//! An event id and a session belong to the service that wrote them: a service that sends
//! another service's event id or session id first — they travel in logs and `traceparent`
//! headers — creates rows of its own and changes nothing of the other's. On MariaDB and on the
//! embedded SQLite database.

use std::time::Duration;

use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::fixtures::*;

async fn a_first_copy_from_another_service_changes_nothing(db: TestDb) {
    let collector = TestCollector::start(settings(db.url())).await;
    let event_id = uuid::Uuid::now_v7().to_string();
    let visit = |path: &str| {
        event(
            "page_visit",
            T0,
            vec![
                kv("event.id", event_id.clone()),
                kv("session.id", "s-1"),
                kv("url.path", path),
            ],
        )
    };
    let run = |lines: i64, ok: bool| {
        event(
            "program_execution",
            T0 + SECOND,
            vec![
                kv("event.id", uuid::Uuid::now_v7().to_string()),
                kv("session.id", "s-1"),
                kv("program.lines", lines),
                kv("program.lines_executed", lines),
                kv("program.success", ok),
            ],
        )
    };
    // The forger goes first, with the genuine event's id and session.
    let forged = logs_request(
        "billing",
        vec![
            visit("/forged-by-attacker"),
            run(999, false),
            run(999, false),
        ],
    );
    send_logs(&collector.endpoint(), forged, false)
        .await
        .unwrap();
    collector.wait_written(Duration::from_secs(10)).await;
    let genuine = logs_request("web-ide", vec![visit("/ide"), run(12, true)]);
    send_logs(&collector.endpoint(), genuine, false)
        .await
        .unwrap();
    collector.wait_written(Duration::from_secs(10)).await;
    // A span whose trace and span ids another service learnt from a traceparent header.
    let span_of = |service: &str, lines: i64| {
        traces_request(
            service,
            vec![span(
                "program_execution",
                7,
                T0 + 2 * SECOND,
                T0 + 3 * SECOND,
                None,
                vec![kv("session.id", "s-2"), kv("program.lines", lines)],
            )],
        )
    };
    send_traces(&collector.endpoint(), span_of("billing", 999))
        .await
        .unwrap();
    send_traces(&collector.endpoint(), span_of("web-ide", 12))
        .await
        .unwrap();
    collector.wait_written(Duration::from_secs(10)).await;

    let visits = db
        .texts("SELECT service, page_path FROM page_visits ORDER BY service")
        .await;
    assert_eq!(
        visits,
        [
            [Some("billing".into()), Some("/forged-by-attacker".into())],
            [Some("web-ide".into()), Some("/ide".into())]
        ]
    );
    let runs = db
        .texts(
            "SELECT CAST(program_lines AS CHAR) FROM program_executions \
             WHERE service = 'web-ide' ORDER BY program_lines",
        )
        .await;
    assert_eq!(runs, [[Some("12".into())], [Some("12".into())]]);
    let sessions = db
        .texts(
            "SELECT service, session_id, CAST(programs_run AS CHAR), \
             CAST(lines_executed AS CHAR), CAST(errors_encountered AS CHAR) \
             FROM ide_sessions WHERE session_id = 's-1' ORDER BY service",
        )
        .await;
    assert_eq!(
        sessions,
        [
            [
                Some("billing".into()),
                Some("s-1".into()),
                Some("2".into()),
                Some("1998".into()),
                Some("2".into())
            ],
            [
                Some("web-ide".into()),
                Some("s-1".into()),
                Some("1".into()),
                Some("12".into()),
                Some("0".into())
            ]
        ],
        "each service's session counts only its own runs"
    );
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_mariadb() {
    a_first_copy_from_another_service_changes_nothing(TestDb::mysql().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sqlite() {
    a_first_copy_from_another_service_changes_nothing(TestDb::sqlite().await).await;
}
