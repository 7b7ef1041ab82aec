//! Bearer tokens bound to services, against a collector with a tokens file: no or an unknown
//! token is `UNAUTHENTICATED`, a token writing as a service it is not bound to is
//! `PERMISSION_DENIED`, nothing of a refused request is written, the file is read again when it
//! changes, and usage-tracker sends its token end to end.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use tracing_subscriber::layer::SubscriberExt;
use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::value;
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::poll;

const WEB_IDE_TOKEN: &str = "tok-web-ide-0123456789";
const ANY_TOKEN: &str = "tok-any-service-0123456";

/// Sends one page visit as `service`, with `token` if any.
async fn send_as(endpoint: &str, service: &str, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut client = LogsServiceClient::connect(endpoint.to_owned())
        .await
        .expect("connect");
    let mut request = tonic::Request::new(logs_request(
        service,
        vec![event(
            "page_visit",
            T0,
            vec![
                kv("event.id", uuid::Uuid::now_v7().to_string()),
                kv("url.path", format!("/{service}")),
            ],
        )],
    ));
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    client.export(request).await.map(drop)
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_authenticate_and_bind_services_and_are_read_again_on_change() {
    let db = TestDb::mysql().await;
    let mut config = settings(db.url());
    let tokens = config.spool.dir.with_extension("tokens");
    std::fs::write(
        &tokens,
        format!("# test tokens\n{WEB_IDE_TOKEN} web-ide\n{ANY_TOKEN} *\n"),
    )
    .unwrap();
    config.auth.tokens_file = Some(tokens.clone());
    let collector = TestCollector::start(config).await;
    let endpoint = collector.endpoint();

    let missing = send_as(&endpoint, "web-ide", None).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated, "{missing:?}");
    let wrong = send_as(&endpoint, "web-ide", Some("tok-nobody-knows-this-one"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated, "{wrong:?}");
    let forged = send_as(&endpoint, "billing", Some(WEB_IDE_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::PermissionDenied, "{forged:?}");
    assert!(forged.message().contains("billing"), "{forged:?}");
    send_as(&endpoint, "web-ide", Some(WEB_IDE_TOKEN))
        .await
        .expect("its own service");
    send_as(&endpoint, "billing", Some(ANY_TOKEN))
        .await
        .expect("a token bound to any service");
    collector.wait_written(Duration::from_secs(10)).await;
    let rows = db
        .texts("SELECT service FROM page_visits ORDER BY service")
        .await;
    assert_eq!(
        rows,
        [[Some("billing".to_owned())], [Some("web-ide".to_owned())]],
        "refused requests wrote nothing"
    );

    // A rotated file: the new token works without a restart, the removed one no longer does.
    std::fs::write(&tokens, "tok-rotated-0123456789 billing\n").unwrap();
    let _accepted = poll::until(
        "the rotated token accepted",
        Duration::from_secs(10),
        || send_as(&endpoint, "billing", Some("tok-rotated-0123456789")),
        |sent| sent.is_ok(),
    )
    .await;
    let old = send_as(&endpoint, "web-ide", Some(WEB_IDE_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(old.code(), tonic::Code::Unauthenticated);

    let metrics = collector.get("/metrics").await.1;
    assert!(
        value(
            &metrics,
            "usage_collector_requests_refused_total{reason=\"unauthenticated\"}"
        ) >= Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        value(
            &metrics,
            "usage_collector_requests_refused_total{reason=\"permission_denied\"}"
        ),
        Some(1.0)
    );
    assert!(!metrics.contains("tok-"), "no token in the metrics");
    collector.stop().await;
    std::fs::remove_file(tokens).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_tracker_sends_its_token() {
    let db = TestDb::mysql().await;
    let mut config = settings(db.url());
    let tokens = config.spool.dir.with_extension("tokens");
    std::fs::write(&tokens, format!("{WEB_IDE_TOKEN} web-ide\n")).unwrap();
    config.auth.tokens_file = Some(tokens.clone());
    let collector = TestCollector::start(config).await;
    let tracker = usage_tracker::TrackerBuilder::new()
        .endpoint(collector.endpoint())
        .service_name("web-ide")
        .bearer_token(WEB_IDE_TOKEN)
        .start()
        .expect("tracker");
    let subscriber = tracing_subscriber::registry().with(tracker.layer());
    tracing::subscriber::with_default(subscriber, || {
        usage_tracker::page_visit(usage_tracker::PageVisit::new("/with-a-token"));
    });
    assert!(tracker.flush(Duration::from_secs(10)));
    collector.wait_written(Duration::from_secs(10)).await;
    let rows = db.texts("SELECT service, page_path FROM page_visits").await;
    assert_eq!(
        rows,
        [[Some("web-ide".to_owned()), Some("/with-a-token".to_owned())]]
    );
    assert_eq!(tracker.stats().failed, 0);
    drop(tracker);
    collector.stop().await;
    std::fs::remove_file(tokens).unwrap();
}
