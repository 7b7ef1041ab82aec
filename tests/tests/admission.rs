//! Hostile and heavy input against the real `usage-collector` process: a few kilobytes chosen
//! badly must not cost gigabytes, freeze the collector, or grow `/metrics`; every limit gets
//! its documented answer and the valid records beside the refused ones are kept; silent
//! connections are closed.

use std::time::{Duration, Instant};

use prost::Message;
use prost::bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::value;
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::loadgen::{Signal, send_encoded_with};
use usage_pipeline_tests::measure::peak_rss_mib;
use usage_pipeline_tests::process::{CollectorProcess, ProcessConfig, temp_dir};

const BIN: &str = env!("CARGO_BIN_EXE_usage-collector-e2e");

async fn start(
    db: &TestDb,
    dir: &std::path::Path,
    extra: &[&str],
) -> (ProcessConfig, CollectorProcess) {
    let mut config = ProcessConfig::new(BIN, db.url(), dir);
    config.extra = extra.iter().map(|s| (*s).to_owned()).collect();
    let mut collector = config.start();
    collector.wait_live(Duration::from_secs(20)).await;
    (config, collector)
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_amplification_is_refused_with_memory_bounded() {
    let db = TestDb::mysql().await;
    let dir = temp_dir("usage_admission");
    let (config, collector) = start(&db, &dir, &[]).await;
    // 32 MB of empty records in about 32 KiB of gzip: past max_request_bytes once inflated.
    let millions = Bytes::from(empty_records(16_000_000));
    let refused = send_encoded_with(&config.endpoint(), Signal::Logs, millions, true)
        .await
        .expect_err("sixteen million records are refused");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    // Two million of them fit in 4 MiB: refused by their count, before decoding.
    let two_million = Bytes::from(empty_records(2_000_000));
    let refused = send_encoded_with(&config.endpoint(), Signal::Logs, two_million, true)
        .await
        .expect_err("two million records are refused");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("max_records_per_request"),
        "{refused:?}"
    );
    let rss = peak_rss_mib(collector.pid());
    let metrics = collector.get("/metrics").await.1;
    for reason in ["too_large", "too_many_records"] {
        let series = format!("usage_collector_requests_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(value(&metrics, &series), Some(1.0), "{reason}");
    }
    println!(
        "gzip amplification: 16 and 2 million empty records refused; collector peak RSS {rss:.0} MiB"
    );
    assert!(rss < 300.0, "peak RSS {rss:.0} MiB");
    drop(collector);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn each_limit_gets_its_answer_and_the_valid_records_are_kept() {
    let db = TestDb::mysql().await;
    let dir = temp_dir("usage_admission");
    let (config, collector) = start(
        &db,
        &dir,
        &[
            "--max-records-per-request",
            "50",
            "--max-attributes-per-record",
            "8",
            "--max-attribute-value-bytes",
            "1000",
        ],
    )
    .await;
    collector.wait_ready(Duration::from_secs(20)).await;
    let visit = |path: &str, extra: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>| {
        let mut attributes = vec![
            kv("event.id", uuid::Uuid::now_v7().to_string()),
            kv("url.path", path),
        ];
        attributes.extend(extra);
        event("page_visit", T0, attributes)
    };
    let deep_kv = {
        let mut value = v(1i64);
        for _ in 0..40 {
            value = opentelemetry_proto::tonic::common::v1::AnyValue {
                value: Some(
                    opentelemetry_proto::tonic::common::v1::any_value::Value::ArrayValue(
                        opentelemetry_proto::tonic::common::v1::ArrayValue {
                            values: vec![value],
                        },
                    ),
                ),
            };
        }
        opentelemetry_proto::tonic::common::v1::KeyValue {
            key: "nested".into(),
            value: Some(value),
            ..Default::default()
        }
    };
    let records = vec![
        visit("/kept-1", vec![]),
        visit("/many", (0..9).map(|i| kv(&format!("a{i}"), "x")).collect()),
        visit("/large", vec![kv("referrer", "r".repeat(1001))]),
        visit("/deep", vec![deep_kv]),
        visit("/kept-2", vec![]),
    ];
    let response = send_logs(&config.endpoint(), logs_request("web-ide", records), false)
        .await
        .expect("partial success");
    let partial = response.partial_success.expect("partial success");
    assert_eq!(partial.rejected_log_records, 3, "{partial:?}");
    assert!(
        partial.error_message.contains("max_attributes_per_record")
            && partial.error_message.contains("and 2 more rejected"),
        "{partial:?}"
    );
    let too_many: Vec<_> = (0..51).map(|i| visit(&format!("/n/{i}"), vec![])).collect();
    let refused = send_logs(&config.endpoint(), logs_request("web-ide", too_many), false)
        .await
        .expect_err("51 records are refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("max_records_per_request"),
        "{refused:?}"
    );

    let started = Instant::now();
    loop {
        let rows = db
            .texts("SELECT page_path FROM page_visits ORDER BY page_path")
            .await;
        if rows.len() >= 2 {
            let paths: Vec<_> = rows.into_iter().map(|r| r[0].clone().unwrap()).collect();
            assert_eq!(paths, ["/kept-1", "/kept-2"]);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "rows not written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = collector.get("/metrics").await.1;
    for reason in ["too_many_attributes", "value_too_large", "value_too_deep"] {
        let series = format!(
            "usage_collector_records_rejected_total{{signal=\"logs\",reason=\"{reason}\"}}"
        );
        assert_eq!(value(&metrics, &series), Some(1.0), "{reason}");
    }
    drop(collector);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn large_requests_do_not_stall_liveness_or_other_clients() {
    let db = TestDb::mysql().await;
    let dir = temp_dir("usage_admission");
    let (config, collector) = start(&db, &dir, &[]).await;
    collector.wait_ready(Duration::from_secs(20)).await;
    // A 1 MiB resource attribute and 2 000 records without event.id, eight times at once.
    let heavy = {
        let records: Vec<_> = (0..2_000u64)
            .map(|i| {
                event(
                    "page_visit",
                    T0 + i,
                    vec![kv("url.path", format!("/heavy/{i}"))],
                )
            })
            .collect();
        let mut request = logs_request("heavy", records);
        request.resource_logs[0]
            .resource
            .as_mut()
            .unwrap()
            .attributes
            .push(kv("blob", "b".repeat(1 << 20)));
        Bytes::from(request.encode_to_vec())
    };
    let mut heavy_sends = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (endpoint, body) = (config.endpoint(), heavy.clone());
        heavy_sends
            .spawn(async move { send_encoded_with(&endpoint, Signal::Logs, body, false).await });
    }
    // Meanwhile: liveness and another client's small request answer.
    let started = Instant::now();
    let (code, _) = collector.get("/health/live").await;
    let live = started.elapsed();
    assert_eq!(code, 200);
    let small = logs_request(
        "small",
        vec![event(
            "page_visit",
            T0,
            vec![
                kv("event.id", uuid::Uuid::now_v7().to_string()),
                kv("url.path", "/small"),
            ],
        )],
    );
    let started = Instant::now();
    send_logs(&config.endpoint(), small, false)
        .await
        .expect("small request acknowledged");
    let small_took = started.elapsed();
    let mut heavy_ok = 0;
    while let Some(result) = heavy_sends.join_next().await {
        match result.unwrap() {
            Ok(_) => heavy_ok += 1,
            // The in-flight budget may ask some to come back later: retryable, with RetryInfo.
            Err(status) => assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}"),
        }
    }
    println!(
        "8 heavy requests ({heavy_ok} acknowledged): /health/live answered in {live:?}, a small request in {small_took:?}"
    );
    assert!(heavy_ok > 0);
    assert!(live < Duration::from_secs(2), "liveness waited {live:?}");
    assert!(
        small_took < Duration::from_secs(5),
        "the small request waited {small_took:?}"
    );
    assert!(peak_rss_mib(collector.pid()) < 300.0);
    drop(collector);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_stay_small_after_huge_names() {
    let db = TestDb::mysql().await;
    let dir = temp_dir("usage_admission");
    let (config, collector) = start(&db, &dir, &[]).await;
    collector.wait_ready(Duration::from_secs(20)).await;
    for i in 0..4 {
        let name = format!("{i}{}", "n".repeat(60_000));
        let service = format!("{i}{}", "s".repeat(60_000));
        let request = logs_request(
            &service,
            vec![event(
                &name,
                T0,
                vec![kv("event.id", uuid::Uuid::now_v7().to_string())],
            )],
        );
        send_logs(&config.endpoint(), request, false)
            .await
            .expect("accepted");
    }
    let metrics = collector.get("/metrics").await.1;
    println!(
        "/metrics after four 60 KB service and event names: {} bytes",
        metrics.len()
    );
    assert!(metrics.len() < 64 * 1024, "{} bytes", metrics.len());
    assert!(
        metrics.contains(&format!("service_name=\"0{}\"", "s".repeat(63))),
        "labels cut to 64 bytes"
    );
    drop(collector);
    std::fs::remove_dir_all(dir).unwrap();
}

/// True once the peer has closed the connection (a read gives 0 bytes or an error).
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // the server's SETTINGS, pings, GOAWAY: keep reading
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_idle_connections_are_closed_and_non_grpc_gets_415() {
    let db = TestDb::mysql().await;
    let dir = temp_dir("usage_admission");
    let (config, collector) = start(
        &db,
        &dir,
        &[
            "--handshake-timeout-secs",
            "1",
            "--keepalive-secs",
            "1",
            "--admin-timeout-secs",
            "1",
        ],
    )
    .await;
    collector.wait_ready(Duration::from_secs(20)).await;
    // A TCP connection that sends nothing.
    let mut silent = tokio::net::TcpStream::connect(config.grpc).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "silent connection kept"
    );
    // An HTTP/2 preface and settings, then nothing: it never answers the keepalive pings.
    let mut preface = tokio::net::TcpStream::connect(config.grpc).await.unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    preface
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    assert!(
        closed_within(&mut preface, Duration::from_secs(8)).await,
        "idle HTTP/2 connection kept"
    );
    // Slowloris on the admin port: half a request line, then nothing.
    let mut slow = tokio::net::TcpStream::connect(config.admin).await.unwrap();
    slow.write_all(b"GET /metr").await.unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).await,
        "slow admin connection kept"
    );
    // Not gRPC: HTTP/2 with a JSON content type on the export path.
    let channel = tonic::transport::Endpoint::from_shared(config.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "{}/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            config.endpoint()
        ))
        .header("content-type", "application/json")
        .body(tonic::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(channel, request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    drop(collector);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_during_an_outage_does_not_grow_memory() {
    use usage_pipeline_tests::proxy::Proxy;
    let db = TestDb::mysql().await;
    let dir = temp_dir("usage_admission");
    let (proxy, url) = Proxy::in_front_of(&db).await;
    let mut config = ProcessConfig::new(BIN, &url, &dir);
    config.spool_max_bytes = 1 << 30;
    // No heartbeat joins the 40 requests in the spool while the test runs.
    config.extra = vec!["--heartbeat-interval-secs".into(), "3600".into()];
    let collector = config.start_ready().await;
    collector.wait_ready(Duration::from_secs(20)).await;
    proxy.cut();
    let rss_before = peak_rss_mib(collector.pid());
    // 40 requests of nearly 4 MiB each: 160 MB waiting in the spool for the database.
    let body = Bytes::from(large_feature_uses("backlog").encode_to_vec());
    for _ in 0..40 {
        send_encoded_with(&config.endpoint(), Signal::Logs, body.clone(), false)
            .await
            .expect("spooled during the outage");
    }
    let rss = peak_rss_mib(collector.pid());
    let metrics = collector.get("/metrics").await.1;
    assert_eq!(
        value(&metrics, "usage_collector_spool_requests"),
        Some(40.0)
    );
    println!(
        "40 requests of {} bytes spooled during an outage: peak RSS {rss_before:.0} → {rss:.0} MiB",
        body.len()
    );
    assert!(rss < 300.0, "peak RSS {rss:.0} MiB");
    proxy.restore();
    drop(collector);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Whether `stream` receives any byte within `limit`.
async fn answered_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn each_listener_keeps_at_most_max_connections_open() {
    use usage_pipeline_tests::collector::{TestCollector, settings};
    let db = TestDb::mysql().await;
    let mut config = settings(db.url());
    config.connections.max_connections = 2;
    let collector = TestCollector::start(config).await;
    // On each OTLP listener: two connections that started a request and stopped hold both
    // places; a third connection is not served until one of them closes.
    let listeners: [(&str, std::net::SocketAddr, &[u8], &[u8]); 2] = [
        (
            "OTLP/HTTP",
            collector.http_addr(),
            b"POST /v1/logs HTTP/1.1\r\n",
            b"GET /v1/logs HTTP/1.1\r\nHost: collector\r\n\r\n",
        ),
        (
            "OTLP/gRPC",
            collector.grpc,
            b"PRI * HTTP/2.0\r\n",
            // The HTTP/2 preface and an empty SETTINGS frame: the server answers with its own.
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
        ),
    ];
    for (name, addr, partial, whole) in listeners {
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(partial).await.unwrap();
            held.push(stream);
        }
        // The kernel completes the third connection, but the collector does not take it.
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        third.write_all(whole).await.unwrap();
        assert!(
            !answered_within(&mut third, Duration::from_secs(1)).await,
            "{name}: a third connection was served beside two open ones"
        );
        drop(held.pop());
        assert!(
            answered_within(&mut third, Duration::from_secs(5)).await,
            "{name}: the third connection was not served once a place was free"
        );
    }
    // The admin listener has its own places: it still answers.
    let (status, _) = collector.get("/health/live").await;
    assert_eq!(status, 200);
    collector.stop().await;
}
