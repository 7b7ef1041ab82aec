//! Until the database is usable the collector is not ready and says why, yet it keeps
//! accepting events into its spool; once the problem is fixed it becomes ready by itself and
//! writes what it accepted.

use std::time::Duration;

use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::assert_exposes;
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::poll;

/// The gRPC health status of `service` ("" for the whole server), or the error code when the
/// server does not know the service yet.
async fn grpc_health(endpoint: &str, service: &str) -> Result<i32, tonic::Code> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    client
        .check(request)
        .await
        .map(|response| response.into_inner().status)
        .map_err(|status| status.code())
}

/// Waits until the gRPC health reporter says `status` for the whole server and the logs
/// service (it follows the readiness checks every half second).
async fn wait_grpc_health(endpoint: &str, status: i32) {
    let _accepted = poll::until(
        &format!("gRPC health (server, logs service) {status}"),
        Duration::from_secs(5),
        || async {
            (
                grpc_health(endpoint, "").await,
                grpc_health(endpoint, LOGS).await,
            )
        },
        |seen| *seen == (Ok(status), Ok(status)),
    )
    .await;
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;
const LOGS: &str = "opentelemetry.proto.collector.logs.v1.LogsService";

#[tokio::test(flavor = "multi_thread")]
async fn not_ready_without_the_schema_then_ready_after_migration() {
    let db = TestDb::mysql().await;
    let collector = TestCollector::start_unready(settings(db.url()), false).await;
    let (status, body) = poll::until(
        "readiness reports the schema failure",
        Duration::from_secs(10),
        || collector.get("/health/ready"),
        |(_, body)| body.contains("failed: schema check"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
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
    // tonic-health starts the whole server at SERVING: NOT_SERVING is the reporter's update.
    wait_grpc_health(&collector.endpoint(), NOT_SERVING).await;

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
    assert_exposes(&metrics, &["usage_collector_schema_ok 0"]);

    // Another collector migrates; this one notices on its next verification run and writes.
    let migrator = TestCollector::start(settings(db.url())).await;
    migrator.stop().await;
    collector.wait_ready(Duration::from_secs(30)).await;
    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(db.count("page_visits").await, 1);
    wait_grpc_health(&collector.endpoint(), SERVING).await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_travel_the_write_path_and_report_their_age() {
    let db = TestDb::mysql().await;
    let mut config = settings(db.url());
    config.heartbeat_interval = Duration::from_millis(300);
    config.instance = "collector-hb".to_owned();
    let collector = TestCollector::start(config).await;
    let beats = || async {
        db.texts("SELECT instance, CAST(last_beat AS CHAR) FROM collector_heartbeats")
            .await
    };
    let row = poll::until("a heartbeat row", Duration::from_secs(10), beats, |rows| {
        !rows.is_empty()
    })
    .await;
    assert_eq!(row[0][0].as_deref(), Some("collector-hb"));
    let later = poll::until(
        "the heartbeat row moved forward",
        Duration::from_secs(10),
        beats,
        |rows| rows[0][1] != row[0][1],
    )
    .await;
    assert_eq!(later.len(), 1, "one row per instance: {later:?}");
    assert!(
        later[0][1] > row[0][1],
        "the row moves forward with each beat: {row:?} then {later:?}"
    );
    let metrics = collector.get("/metrics").await.1;
    let age: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("usage_collector_heartbeat_age_seconds "))
        .expect("heartbeat age")
        .parse()
        .unwrap();
    assert!(age < 5.0, "heartbeat age {age}");
    collector.stop().await;
}
