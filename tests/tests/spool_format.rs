//! Spool records across collector versions: a spool left by an earlier collector holds OTLP
//! requests as received, not mapped rows, and its events are still written exactly once.

use std::time::Duration;

use prost::Message;
use usage_collector::spool::{Payload, Spool, SpoolSignal};
use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::fixtures::*;

#[tokio::test(flavor = "multi_thread")]
async fn otlp_requests_spooled_by_an_earlier_collector_are_written_once() {
    let db = TestDb::mysql().await;
    let config = settings(db.url());
    let visit = logs_request(
        "web-ide",
        vec![event(
            "page_visit",
            T0,
            vec![
                kv("event.id", "0192f0c1-0000-7000-8000-000000000001"),
                kv("session.id", "s-old"),
                kv("url.path", "/spooled/earlier"),
            ],
        )],
    );
    let run = traces_request(
        "web-ide",
        vec![span(
            "program_execution",
            7,
            T0 + SECOND,
            T0 + 2 * SECOND,
            Some("OUT OF DATA"),
            vec![kv("session.id", "s-old")],
        )],
    );
    {
        // What an earlier collector left in its spool, the database away.
        let (spool, _) = Spool::open(&config.spool.dir, config.spool.max_bytes).expect("spool");
        for (signal, body) in [
            (SpoolSignal::Logs, visit.encode_to_vec()),
            (SpoolSignal::Traces, run.encode_to_vec()),
        ] {
            spool
                .append(Payload {
                    signal,
                    received_unix_nano: T0,
                    body: body.into(),
                })
                .await
                .expect("append");
        }
    }
    let collector = TestCollector::start(config).await;
    // The same page visit again, received now: spooled as rows, and a no-op in the table.
    send_logs(&collector.endpoint(), visit, false)
        .await
        .unwrap();
    collector.wait_written(Duration::from_secs(10)).await;

    let s = |t: &str| Some(t.to_owned());
    assert_eq!(
        db.texts("SELECT page_path, session_id FROM page_visits")
            .await,
        [vec![s("/spooled/earlier"), s("s-old")]]
    );
    assert_eq!(
        db.texts(
            "SELECT CAST(success AS CHAR), error_message, CAST(execution_time_ms AS CHAR) \
             FROM program_executions WHERE session_id = 's-old'"
        )
        .await,
        [vec![s("0"), s("OUT OF DATA"), s("1000")]]
    );
    assert_eq!(
        db.texts(
            "SELECT CAST(programs_run AS CHAR), CAST(errors_encountered AS CHAR) \
             FROM ide_sessions WHERE session_id = 's-old'"
        )
        .await,
        [vec![s("1"), s("1")]]
    );
    collector.stop().await;
}
