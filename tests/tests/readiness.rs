//! Until the database is usable the collector is not ready and says why, yet it keeps
//! accepting events into its spool; once the problem is fixed it becomes ready by itself and
//! writes what it accepted.

use std::time::Duration;

use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::fixtures::*;

#[tokio::test(flavor = "multi_thread")]
async fn not_ready_without_the_schema_then_ready_after_migration() {
    let db = TestDb::mysql().await;
    let collector = TestCollector::start_unready(settings(db.url()), false).await;
    let started = std::time::Instant::now();
    let body = loop {
        let (status, body) = collector.get("/health/ready").await;
        assert_eq!(status, 503, "{body}");
        if body.contains("failed: schema check") {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no schema failure reported: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(readiness["status"], "degraded");
    assert_eq!(readiness["checks"]["database"], "ok");
    assert_eq!(readiness["checks"]["spool"], "ok");
    let schema = readiness["checks"]["schema"].as_str().unwrap();
    assert!(
        schema.starts_with("failed: schema check: table `page_visits` is missing"),
        "{schema}"
    );
    assert_eq!(collector.get("/health/live").await.0, 200);

    // Accepted into the spool while the schema is missing.
    let request = logs_request(
        "web-ide",
        vec![event("page_visit", T0, vec![kv("url.path", "/")])],
    );
    send_logs(&collector.endpoint(), request, false)
        .await
        .unwrap();
    assert_eq!(collector.spool.depth().0, 1);
    let metrics = collector.get("/metrics").await.1;
    assert!(metrics.contains("usage_collector_schema_ok 0"), "{metrics}");

    // Another collector migrates; this one notices on its next verification run and writes.
    let migrator = TestCollector::start(settings(db.url())).await;
    migrator.stop().await;
    collector.wait_ready(Duration::from_secs(30)).await;
    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(db.count("page_visits").await, 1);
    collector.stop().await;
}
