//! A database outage after startup: requests are refused fast with a retryable status, readiness
//! says why, and writing resumes by itself when the database is back.

use std::time::{Duration, Instant};

use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::proxy::Proxy;

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_database_is_reported_and_writing_resumes_when_it_returns() {
    let db = TestDb::mysql().await;
    let proxy = Proxy::start("127.0.0.1:3306".parse().unwrap()).await;
    let url = format!("mysql://root@{}/{}", proxy.addr, db.name());
    let mut config = settings(&url);
    config.database.connect_timeout = Duration::from_secs(1);
    let collector = TestCollector::start(config).await;
    let visit = |i: u64| {
        logs_request(
            "web-ide",
            vec![event("page_visit", T0 + i, vec![kv("url.path", "/up")])],
        )
    };
    send_logs(&collector.endpoint(), visit(1), false)
        .await
        .unwrap();

    proxy.cut();
    let status = send_logs(&collector.endpoint(), visit(2), false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let (code, body) = collector.get("/health/ready").await;
    assert_eq!(code, 503, "{body}");
    let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        readiness["checks"]["database"]
            .as_str()
            .unwrap()
            .starts_with("failed: "),
        "{body}"
    );
    // Now refused at once, without touching the database.
    let started = Instant::now();
    let status = send_logs(&collector.endpoint(), visit(3), false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("not ready"), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refusal took {:?}",
        started.elapsed()
    );
    let metrics = collector.get("/metrics").await.1;
    assert!(
        metrics.contains("usage_collector_database_up 0"),
        "{metrics}"
    );

    proxy.restore();
    collector.wait_ready(Duration::from_secs(10)).await;
    for i in 2..=3 {
        send_logs(&collector.endpoint(), visit(i), false)
            .await
            .unwrap();
    }
    assert_eq!(db.count("page_visits").await, 3);
    let metrics = collector.get("/metrics").await.1;
    assert!(
        metrics.contains("usage_collector_database_up 1"),
        "{metrics}"
    );
    collector.stop().await;
}
