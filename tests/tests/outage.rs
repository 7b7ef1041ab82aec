//! A database outage after startup: requests are still acknowledged (into the spool), the
//! replica stays ready (`degraded`, 200, so the Service keeps sending to its spool) and says
//! why, the strict form says not ready, and everything lands once the database returns.

use std::time::Duration;

use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::assert_exposes;
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::poll;
use usage_pipeline_tests::proxy::Proxy;

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_database_is_reported_and_spooled_events_land_when_it_returns() {
    let db = TestDb::mysql().await;
    let (proxy, url) = Proxy::in_front_of(&db).await;
    let mut config = settings(&url);
    config.database.connect_timeout = Duration::from_secs(1);
    let collector = TestCollector::start(config).await;
    let visit = |i: u64| page_visits("web-ide", "/up", i..i + 1);
    send_logs(&collector.endpoint(), visit(1), false)
        .await
        .unwrap();
    collector.wait_written(Duration::from_secs(10)).await;

    proxy.cut();
    for i in 2..=4 {
        send_logs(&collector.endpoint(), visit(i), false)
            .await
            .unwrap();
    }
    let (_, body) = poll::until(
        "the outage reported, the replica still ready",
        Duration::from_secs(10),
        || collector.get("/health/ready"),
        |(code, body)| {
            assert_eq!(*code, 200, "a verified replica stays in service: {body}");
            body.contains("\"status\":\"degraded\"") && body.contains("retrying")
        },
    )
    .await;
    let (strict, _) = collector.get("/health/ready?strict=1").await;
    assert_eq!(
        strict, 503,
        "the strict form counts a degraded data path as not ready"
    );
    let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(readiness["status"], "degraded", "{body}");
    assert!(
        readiness["checks"]["database"]
            .as_str()
            .unwrap()
            .starts_with("failed: "),
        "{body}"
    );
    assert!(
        readiness["checks"]["writer"]
            .as_str()
            .unwrap()
            .contains("retrying"),
        "{body}"
    );
    assert_eq!(
        collector.spool.depth().0,
        3,
        "acknowledged and waiting in the spool"
    );
    let metrics = collector.get("/metrics").await.1;
    assert_exposes(
        &metrics,
        &[
            "usage_collector_database_up 0",
            "usage_collector_spool_requests 3",
        ],
    );
    assert_eq!(db.count("page_visits").await, 1);

    proxy.restore();
    collector.wait_written(Duration::from_secs(20)).await;
    collector.wait_ready(Duration::from_secs(10)).await;
    assert_eq!(db.count("page_visits").await, 4);
    let metrics = collector.get("/metrics").await.1;
    assert_exposes(&metrics, &["usage_collector_database_up 1"]);
    collector.stop().await;
}
