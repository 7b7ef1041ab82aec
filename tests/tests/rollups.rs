//! The summaries the collector keeps — `daily_usage_by_service` (and the `daily_usage_summary`
//! view over it) and each session's counters — equal a recount from the raw rows, whatever
//! happens to the events on their way: a batch written again (a retry after a lost commit
//! answer), every event replayed in other batches (a crash before the checkpoint moved), two
//! collectors writing the same events at the same moment, days arriving out of order (a late
//! event moving a session's start to an earlier day), an event twice in one batch, and a
//! session insert that meets another writer's row after part of the batch's sessions went in.
//!
//! The writes go through the collector's own sink (the code the writer runs), so each test can
//! place batches and races exactly; one test runs two whole collectors.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use usage_collector::catalog::{Catalog, Mapped, RowBatch, convert};
use usage_collector::config::DatabaseSettings;
use usage_collector::sink::{ErrorKind, Sink};
use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::{sum, value};
use usage_pipeline_tests::fixtures::{event, kv, logs_request, send_logs};
use usage_pipeline_tests::summaries::{
    RECOUNT_DAYS, RECOUNT_SESSIONS, ROLLUP_DAYS, SESSION_COUNTERS,
};

const DAY: u64 = 86_400_000_000_000;
const HOUR: u64 = 3_600_000_000_000;

/// Noon, two days ago (inside any retention), in ns since the epoch.
fn base() -> u64 {
    let now = usage_collector::event::now_unix_nano();
    now - now % DAY - 2 * DAY + 12 * HOUR
}

/// Page visits, program runs (some failed), feature uses, other events and session starts of
/// two services over three days; half the events carry `event.id`, half get derived ids.
fn records(service: &str) -> Vec<LogRecord> {
    let base = base();
    let mut out = Vec::new();
    for n in 0..240_u64 {
        let day = n % 3;
        let session = format!("s{}", n % 7);
        let time = base + day * DAY + n * 1_000_000;
        let mut attributes = vec![kv("session.id", session.as_str())];
        if n % 2 == 0 {
            attributes.push(kv("event.id", format!("{service}-event-{n}").as_str()));
        }
        let name = match n % 5 {
            0 | 1 => {
                attributes.push(kv("url.path", format!("/p/{n}").as_str()));
                "page_visit"
            }
            2 => {
                attributes.push(kv("program.lines_executed", (n * 3) as i64));
                attributes.push(kv("program.success", n % 4 != 0));
                "program_execution"
            }
            3 => {
                attributes.push(kv("feature.name", "debugger"));
                "feature_use"
            }
            _ if n % 10 == 4 => "session_start",
            _ => "editor_opened",
        };
        out.push(event(name, time, attributes));
    }
    out
}

/// The records of both services, mapped by the collector's catalogue.
fn mapped(catalog: &Catalog) -> Vec<Mapped> {
    let mut out = Vec::new();
    for service in ["ide", "shop"] {
        out.extend(map_records(catalog, service, records(service)));
    }
    out
}

/// `records` of `service` (a resource naming only the service, no scope), mapped by the
/// collector's own conversion, every one valid.
fn map_records(catalog: &Catalog, service: &str, records: Vec<LogRecord>) -> Vec<Mapped> {
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let converted =
        convert::logs_request(&request, catalog, base(), ()).expect("prost's encoding decodes");
    assert_eq!(
        converted.rejected.count, 0,
        "every record valid and mappable: {:?}",
        converted.rejected.first
    );
    converted.events
}

async fn sink(db: &TestDb) -> Sink {
    let sink = Sink::open(
        &DatabaseSettings::new(db.url()),
        Arc::new(Catalog::built_in()),
    )
    .expect("open the sink");
    sink.migrate().await.expect("migrate");
    sink
}

/// Writes `events` in batches of `size`, retrying a batch the database refused for the moment
/// (a deadlock between two writers is retried by the writer too). A failure the writer would
/// take for a row's own value (and dead-letter) fails the test.
async fn write(sink: &Sink, events: &[Mapped], size: usize) {
    let tables = sink.catalog().tables().len();
    for chunk in events.chunks(size) {
        let batch = RowBatch::of(tables, chunk);
        let mut attempts = 0;
        while let Err(e) = sink.write(&batch).await {
            assert_ne!(
                e.kind,
                ErrorKind::RowValue,
                "the writer would dead-letter rows: {e}"
            );
            attempts += 1;
            assert!(attempts < 20, "batch keeps failing: {e}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Asserts the summaries equal a recount from the raw rows, and that the raw rows hold each
/// event once.
async fn assert_exact(db: &TestDb, events: usize) {
    let rows = db.count("page_visits").await
        + db.count("program_executions").await
        + db.count("feature_usage").await
        + db.count("usage_events").await;
    // Session starts have no row of their own.
    let session_starts = 2 * (0..240).filter(|n| n % 5 == 4 && n % 10 == 4).count();
    assert_eq!(rows as usize, events - session_starts, "each event once");
    let recount = db.texts(RECOUNT_DAYS).await;
    assert!(!recount.is_empty());
    assert_eq!(
        db.texts(ROLLUP_DAYS).await,
        recount,
        "daily rollup = recount"
    );
    let sessions = db.texts(SESSION_COUNTERS).await;
    let recount = db.texts(RECOUNT_SESSIONS).await;
    assert_eq!(sessions.len(), 14, "7 sessions in each of 2 services");
    for (kept, counted) in sessions.iter().zip(&recount) {
        assert_eq!(kept[..7], counted[..7], "session counters = recount");
        // The start is the earliest event (compared to the second: the two databases print
        // fractions differently).
        assert_eq!(
            kept[7].as_deref().map(|t| &t[..19]),
            counted[7].as_deref().map(|t| &t[..19]),
            "session start"
        );
    }
    // The view keeps its columns and its meaning: totals per day over every service.
    let view = db
        .texts(
            "SELECT CAST(`date` AS CHAR), CAST(sessions AS CHAR), CAST(page_visits AS CHAR), \
             CAST(programs_run AS CHAR), CAST(program_errors AS CHAR), \
             CAST(features_used AS CHAR) FROM daily_usage_summary ORDER BY 1",
        )
        .await;
    assert_eq!(view.len(), 3, "three days");
    let page_visits: i64 = view
        .iter()
        .map(|r| r[2].as_deref().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(page_visits, db.count("page_visits").await);
}

async fn retries_and_replays(db: TestDb) {
    let sink = sink(&db).await;
    let events = mapped(&sink.catalog());
    // A batch written twice, as after a commit whose answer was lost.
    write(&sink, &events[..100], 100).await;
    write(&sink, &events[..100], 100).await;
    // The rest, then everything replayed in other batches (a crash before the checkpoint).
    write(&sink, &events[100..], 64).await;
    write(&sink, &events, 37).await;
    // A batch holding events already written and one event twice.
    let mut mixed: Vec<Mapped> = events[200..260].to_vec();
    mixed.push(events[250].clone());
    write(&sink, &mixed, mixed.len()).await;
    assert_exact(&db, events.len()).await;
}

#[tokio::test]
async fn retries_and_replays_count_once_on_mariadb() {
    retries_and_replays(TestDb::mysql().await).await;
}

#[tokio::test]
async fn retries_and_replays_count_once_on_sqlite() {
    retries_and_replays(TestDb::sqlite().await).await;
}

/// The same event twice in one batch, nothing written yet: one row, counted once.
async fn twice_in_one_batch(db: TestDb) {
    let sink = sink(&db).await;
    let events = mapped(&sink.catalog());
    let mut first: Vec<Mapped> = events[..60].to_vec();
    first.push(events[31].clone());
    first.push(events[40].clone());
    write(&sink, &first, first.len()).await;
    write(&sink, &events[60..], 100).await;
    assert_exact(&db, events.len()).await;
}

#[tokio::test]
async fn an_event_twice_in_one_batch_counts_once_on_mariadb() {
    twice_in_one_batch(TestDb::mysql().await).await;
}

#[tokio::test]
async fn an_event_twice_in_one_batch_counts_once_on_sqlite() {
    twice_in_one_batch(TestDb::sqlite().await).await;
}

async fn out_of_order_days(db: TestDb) {
    let sink = sink(&db).await;
    let mut events = mapped(&sink.catalog());
    // The latest day first, then the day before, then the first: each session's start moves
    // back a day twice, and its count with it.
    let day = |m: &Mapped| match &m.row {
        Some((_, row)) => match &row[4] {
            usage_collector::catalog::Value::Time(t) => t.date(),
            _ => unreachable!(),
        },
        None => m.session.as_ref().unwrap().1.start_time.date(),
    };
    events.sort_by_key(|m| std::cmp::Reverse(day(m)));
    write(&sink, &events, 50).await;
    assert_exact(&db, events.len()).await;
    // And replayed oldest first.
    events.reverse();
    write(&sink, &events, 80).await;
    assert_exact(&db, events.len()).await;
}

#[tokio::test]
async fn out_of_order_days_move_sessions_on_mariadb() {
    out_of_order_days(TestDb::mysql().await).await;
}

#[tokio::test]
async fn out_of_order_days_move_sessions_on_sqlite() {
    out_of_order_days(TestDb::sqlite().await).await;
}

/// Two collectors (two sinks, each with its pool) write the same events at the same moment,
/// in different batch sizes and orders, four transactions at a time.
#[tokio::test]
async fn two_writers_of_the_same_events_count_once_on_mariadb() {
    let db = TestDb::mysql().await;
    let (a, b) = (sink(&db).await, sink(&db).await);
    let events = mapped(&a.catalog());
    let mut reversed = events.clone();
    reversed.reverse();
    let halves = events.split_at(events.len() / 2);
    tokio::join!(
        write(&a, &events, 40),
        write(&b, &events, 64),
        write(&a, &reversed, 50),
        write(&b, halves.1, 30),
        write(&b, halves.0, 30),
    );
    assert_exact(&db, events.len()).await;
    assert_eq!(db.count("dead_letters").await, 0, "no dead letters");
}

/// Two whole collectors receive the same requests (a client that retried against another
/// replica) at the same time.
#[tokio::test]
async fn two_collectors_receiving_the_same_requests_count_once() {
    let db = TestDb::mysql().await;
    let one = TestCollector::start(settings(db.url())).await;
    let two = TestCollector::start(settings(db.url())).await;
    let requests: Vec<_> = ["ide", "shop"]
        .into_iter()
        .flat_map(|service| {
            records(service)
                .chunks(48)
                .map(|chunk| logs_request(service, chunk.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    let send_all = |endpoint: String, requests: Vec<_>| async move {
        for request in requests {
            send_logs(&endpoint, request, false)
                .await
                .expect("accepted");
        }
    };
    let mut reversed = requests.clone();
    reversed.reverse();
    tokio::join!(
        send_all(one.endpoint(), requests.clone()),
        send_all(two.endpoint(), reversed),
    );
    one.wait_written(Duration::from_secs(20)).await;
    two.wait_written(Duration::from_secs(20)).await;
    assert_exact(&db, 480).await;
    assert_eq!(db.count("dead_letters").await, 0, "no dead letters");
    for collector in [&one, &two] {
        let (_, metrics) = collector.get("/metrics").await;
        let refused = r#"usage_collector_write_failures_total{reason="row_value"}"#;
        assert_eq!(value(&metrics, refused), Some(0.0), "{refused}");
        let dead = sum(&metrics, "usage_collector_dead_letters_total");
        assert_eq!(dead, 0.0, "usage_collector_dead_letters_total");
    }
    one.stop().await;
    two.stop().await;
}

/// A batch of more new sessions than one INSERT statement holds, whose last statement meets a
/// session another writer created meanwhile (a trigger answers "duplicate entry" once): the
/// sessions the earlier statements inserted are counted once, each with its one page visit.
#[tokio::test]
async fn a_session_race_after_part_of_a_batch_went_in_counts_once_on_mariadb() {
    let db = TestDb::mysql().await;
    let sink = sink(&db).await;
    // Non-transactional, so the trigger fires once although its statement is rolled back.
    db.execute("CREATE TABLE race_once (n INT) ENGINE=MEMORY")
        .await;
    db.execute("INSERT INTO race_once VALUES (1)").await;
    const SESSIONS: u64 = 2_400;
    let last = format!("r{:04}", SESSIONS - 1);
    db.execute(&format!(
        "CREATE TRIGGER race BEFORE INSERT ON ide_sessions FOR EACH ROW BEGIN \
         IF NEW.session_id = '{last}' THEN \
         UPDATE race_once SET n = n - 1 WHERE n > 0; \
         IF ROW_COUNT() > 0 THEN SIGNAL SQLSTATE '23000' SET MYSQL_ERRNO = 1062, \
         MESSAGE_TEXT = 'Duplicate entry for key PRIMARY'; END IF; \
         END IF; END"
    ))
    .await;
    let records = (0..SESSIONS)
        .map(|n| {
            let session = format!("r{n:04}");
            event(
                "page_visit",
                base() + n * 1_000_000,
                vec![
                    kv("session.id", session.as_str()),
                    kv("url.path", format!("/p/{n}").as_str()),
                ],
            )
        })
        .collect();
    let events = map_records(&sink.catalog(), "ide", records);
    write(&sink, &events, events.len()).await;
    assert_eq!(
        db.texts("SELECT CAST(n AS CHAR) FROM race_once").await[0][0].as_deref(),
        Some("0"),
        "the trigger raced once"
    );
    assert_eq!(db.count("ide_sessions").await, SESSIONS as i64);
    assert_eq!(
        db.texts("SELECT CAST(COUNT(*) AS CHAR) FROM ide_sessions WHERE page_visits <> 1")
            .await[0][0]
            .as_deref(),
        Some("0"),
        "each session counts its one page visit once"
    );
    let sessions = SESSIONS.to_string();
    assert_eq!(
        db.texts(
            "SELECT CAST(SUM(sessions) AS CHAR), CAST(SUM(page_visits) AS CHAR) \
             FROM daily_usage_by_service"
        )
        .await,
        vec![vec![Some(sessions.clone()), Some(sessions)]],
        "every new session and visit in the daily rollup once"
    );
}

/// An insert that collides every time, with no row of the same event there (a trigger answers
/// "duplicate entry" every time, as a second unique key would), is the rows' fault: the
/// sink refuses it (the writer sets such rows aside) rather than retrying forever or
/// dropping the rows as if written.
#[tokio::test]
async fn an_insert_that_always_collides_with_something_else_is_refused_on_mariadb() {
    let db = TestDb::mysql().await;
    let sink = sink(&db).await;
    db.execute(
        "CREATE TRIGGER race BEFORE INSERT ON page_visits FOR EACH ROW \
         SIGNAL SQLSTATE '23000' SET MYSQL_ERRNO = 1062, \
         MESSAGE_TEXT = 'Duplicate entry for key PRIMARY'",
    )
    .await;
    let events = mapped(&sink.catalog());
    let batch = RowBatch::of(sink.catalog().tables().len(), &events[..20]);
    let e = sink.write(&batch).await.expect_err("every insert collides");
    assert_eq!(e.kind, ErrorKind::RowValue, "{e}");
    assert_eq!(db.count("page_visits").await, 0);
    db.execute("DROP TRIGGER race").await;
    write(&sink, &events, 100).await;
    assert_exact(&db, events.len()).await;
}
