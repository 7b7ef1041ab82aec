//! Client addresses are stored as the privacy setting says — as sent, cut to their network, or
//! not at all — before anything reaches the spool. On MariaDB and on SQLite.

use std::time::Duration;

use usage_collector::config::IpAnonymization;
use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::fixtures::*;

async fn stored_addresses(db: &TestDb, mode: IpAnonymization) -> (Option<String>, Option<String>) {
    let mut config = settings(db.url());
    config.privacy.ip_anonymization = mode;
    let spool = config.spool.dir.clone();
    let collector = TestCollector::start(config).await;
    let request = logs_request(
        "web-ide",
        vec![
            event(
                "session_start",
                T0,
                vec![
                    kv("event.id", uuid::Uuid::now_v7().to_string()),
                    kv("session.id", "s-ip"),
                    kv("client.address", "2001:db8:abcd:12::1"),
                ],
            ),
            event(
                "share_link",
                T0 + SECOND,
                vec![
                    kv("event.id", uuid::Uuid::now_v7().to_string()),
                    kv("client.address", "203.0.113.77"),
                ],
            ),
            event(
                "page_visit",
                T0 + SECOND,
                vec![
                    kv("event.id", uuid::Uuid::now_v7().to_string()),
                    kv("session.id", "s-ip"),
                    kv("url.path", "/"),
                    kv("client.address", "203.0.113.77"),
                ],
            ),
        ],
    );
    send_logs(&collector.endpoint(), request, false)
        .await
        .unwrap();
    collector.wait_written(Duration::from_secs(10)).await;
    // The full address never touched the disk either.
    if mode != IpAnonymization::Off {
        for entry in std::fs::read_dir(&spool).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "wal") {
                let bytes = std::fs::read(&path).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                assert!(!text.contains("203.0.113.77"), "{}", path.display());
            }
        }
    }
    let visit = db.texts("SELECT ip_address FROM page_visits").await;
    let session = db.texts("SELECT ip_address FROM ide_sessions").await;
    // A custom event's attributes, kept as JSON, follow the same rule.
    let custom = db
        .texts("SELECT CAST(attributes AS CHAR) FROM usage_events")
        .await;
    let attributes: serde_json::Value =
        serde_json::from_str(custom[0][0].as_deref().unwrap()).unwrap();
    let expected = match mode {
        IpAnonymization::Off => serde_json::json!("203.0.113.77"),
        IpAnonymization::Truncate => serde_json::json!("203.0.113.0"),
        IpAnonymization::Drop => serde_json::Value::Null,
    };
    assert_eq!(attributes["client.address"], expected, "{attributes}");
    collector.stop().await;
    (visit[0][0].clone(), session[0][0].clone())
}

async fn each_mode_stores_what_it_says(
    db: impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = TestDb>>>,
) {
    assert_eq!(
        stored_addresses(&db().await, IpAnonymization::Off).await,
        (
            Some("203.0.113.77".into()),
            Some("2001:db8:abcd:12::1".into())
        )
    );
    assert_eq!(
        stored_addresses(&db().await, IpAnonymization::Truncate).await,
        (Some("203.0.113.0".into()), Some("2001:db8:abcd::".into()))
    );
    assert_eq!(
        stored_addresses(&db().await, IpAnonymization::Drop).await,
        (None, None)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_mariadb() {
    each_mode_stores_what_it_says(|| Box::pin(TestDb::mysql())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sqlite() {
    each_mode_stores_what_it_says(|| Box::pin(TestDb::sqlite())).await;
}
