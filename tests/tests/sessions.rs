//! Session ids are compared byte for byte, as the collector compares them: ids that differ only
//! in case or accents are separate sessions, in one batch and across batches, and none of their
//! events ends in the dead letters; trailing spaces are not part of an id. On MariaDB (whose
//! default collation would call the first ones equal) and on SQLite.

use std::time::Duration;

use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::fixtures::*;

/// The first and third are one session (trailing spaces dropped); the others are their own.
const IDS: [&str; 4] = ["case-1", "CASE-1", "case-1 ", "cäse-1"];

async fn ids_differing_only_in_case_are_separate_sessions(db: TestDb) {
    let collector = TestCollector::start(settings(db.url())).await;
    let visit = |session: &str, t: u64| {
        event(
            "page_visit",
            T0 + t,
            vec![kv("url.path", "/p"), kv("session.id", session)],
        )
    };
    // Three spellings in one request, then a fourth and the first again in another.
    let first = IDS[..3]
        .iter()
        .enumerate()
        .map(|(i, id)| visit(id, i as u64))
        .collect();
    send_logs(&collector.endpoint(), logs_request("web-ide", first), false)
        .await
        .expect("accepted");
    collector.wait_written(Duration::from_secs(10)).await;
    let second = vec![visit(IDS[3], 10), visit(IDS[0], 11)];
    send_logs(
        &collector.endpoint(),
        logs_request("web-ide", second),
        false,
    )
    .await
    .expect("accepted");
    collector.wait_written(Duration::from_secs(10)).await;

    let mut sessions = db
        .texts("SELECT session_id, CAST(page_visits AS CHAR) FROM ide_sessions")
        .await;
    sessions.sort();
    let mut expected: Vec<Vec<Option<String>>> =
        [("case-1", "3"), ("CASE-1", "1"), ("cäse-1", "1")]
            .iter()
            .map(|(id, visits)| vec![Some((*id).to_owned()), Some((*visits).to_owned())])
            .collect();
    expected.sort();
    assert_eq!(sessions, expected);
    let mut visits = db.texts("SELECT session_id FROM page_visits").await;
    visits.sort();
    assert_eq!(
        visits,
        ["CASE-1", "case-1", "case-1", "case-1", "cäse-1"].map(|id| vec![Some(id.to_owned())])
    );
    assert_eq!(db.count("dead_letters").await, 0);
    let (_, metrics) = collector.get("/metrics").await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("usage_collector_write_failures_total") && !l.ends_with(" 0")),
        "no write failed:\n{metrics}"
    );
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_mariadb() {
    ids_differing_only_in_case_are_separate_sessions(TestDb::mysql().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sqlite() {
    ids_differing_only_in_case_are_separate_sessions(TestDb::sqlite().await).await;
}

/// One request carrying the same event id under two spellings of a service that MariaDB's
/// key calls equal (`web-ide`, `WEB-IDE`): the first is written, the second counts as written
/// already, nothing is set aside and the writer goes on (it does not retry the batch forever).
#[tokio::test(flavor = "multi_thread")]
async fn one_event_under_two_spellings_of_a_service_is_written_once_on_mariadb() {
    let db = TestDb::mysql().await;
    let collector = TestCollector::start(settings(db.url())).await;
    let visit = |service: &str| {
        logs_request(
            service,
            vec![event(
                "page_visit",
                T0,
                vec![
                    kv("url.path", "/p"),
                    kv("event.id", "7d4f3f0e-2b6a-4c55-9a31-0c1f4a9e8b21"),
                ],
            )],
        )
    };
    let mut request = visit("web-ide");
    request.resource_logs.extend(visit("WEB-IDE").resource_logs);
    send_logs(&collector.endpoint(), request, false)
        .await
        .expect("accepted");
    collector.wait_written(Duration::from_secs(10)).await;
    // Then another event, to show the writer is not stuck on the first request.
    send_logs(
        &collector.endpoint(),
        page_visits("web-ide", "/next", 5..6),
        false,
    )
    .await
    .expect("accepted");
    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(db.count("page_visits").await, 2);
    assert_eq!(db.count("dead_letters").await, 0);
    collector.stop().await;
}
