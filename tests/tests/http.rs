//! OTLP/HTTP against a real collector and MariaDB: protobuf and JSON (as the OTLP
//! specification's examples write it) for logs and traces, gzip, each status code with its
//! `google.rpc.Status` body in the request's encoding, the size limit after decompression,
//! bearer tokens, CORS, `/v1/metrics`, and the counts on `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;
use usage_collector::config::CorsOrigins;
use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::value;
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::otlp_http::{
    Answer, Encoding, export, export_logs, export_traces, gzip, request,
};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

fn s(text: &str) -> Option<String> {
    Some(text.to_owned())
}

/// A logs request shaped like the OTLP specification's `examples/logs.json`: 64-bit integers
/// as strings and as numbers, hex ids, an enum as an integer, a field this collector does not
/// know (ignored, as the specification asks).
const LOGS_JSON: &str = r#"{
  "resourceLogs": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "web-ide"}}]},
    "scopeLogs": [{
      "scope": {"name": "web-ide.tracker", "version": "1.0.0", "attributes": []},
      "logRecords": [
        {
          "timeUnixNano": "1772600767123456000",
          "observedTimeUnixNano": 1772600767123457000,
          "severityNumber": 9,
          "severityText": "INFO",
          "eventName": "session_start",
          "traceId": "5b8efff798038103d269b633813fc60c",
          "spanId": "eee19b7ec3c1b174",
          "body": {"stringValue": "session started"},
          "attributes": [
            {"key": "session.id", "value": {"stringValue": "s-json"}},
            {"key": "user.id", "value": {"stringValue": "u-json"}},
            {"key": "user_agent.original", "value": {"stringValue": "Mozilla/5.0 (json)"}},
            {"key": "client.address", "value": {"stringValue": "198.51.100.7"}}
          ],
          "droppedAttributesCount": 0,
          "futureField": {"ignored": true}
        },
        {
          "timeUnixNano": 1772600768123456000,
          "eventName": "export_pdf",
          "traceId": "5B8EFFF798038103D269B633813FC60C",
          "spanId": "EEE19B7EC3C1B174",
          "attributes": [
            {"key": "session.id", "value": {"stringValue": "s-json"}},
            {"key": "pages", "value": {"intValue": "3"}},
            {"key": "copies", "value": {"intValue": 2}},
            {"key": "scale", "value": {"doubleValue": 0.5}},
            {"key": "color", "value": {"boolValue": true}},
            {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"stringValue": "b"}]}}},
            {"key": "raw", "value": {"bytesValue": "aGk="}}
          ]
        }
      ]
    }]
  }]
}"#;

/// A traces request shaped like the specification's `examples/trace.json`.
const TRACES_JSON: &str = r#"{
  "resourceSpans": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "web-ide"}}]},
    "scopeSpans": [{
      "scope": {"name": "web-ide.tracker", "version": "1.0.0"},
      "spans": [
        {
          "traceId": "5b8efff798038103d269b633813fc60c",
          "spanId": "0102030405060708",
          "parentSpanId": "",
          "name": "program_execution",
          "kind": 1,
          "startTimeUnixNano": "1772600770123456000",
          "endTimeUnixNano": 1772600770373456000,
          "attributes": [
            {"key": "session.id", "value": {"stringValue": "s-json"}},
            {"key": "program.lines", "value": {"intValue": "5"}},
            {"key": "program.lines_executed", "value": {"intValue": 7}}
          ],
          "status": {"code": 2, "message": "DIVISION BY ZERO"}
        },
        {
          "traceId": "5b8efff798038103d269b633813fc60c",
          "spanId": "1112131415161718",
          "parentSpanId": "0102030405060708",
          "name": "compile",
          "kind": 3,
          "startTimeUnixNano": "1772600771123456000",
          "endTimeUnixNano": "1772600771165456000",
          "attributes": [
            {"key": "event.name", "value": {"stringValue": "compile"}},
            {"key": "language", "value": {"stringValue": "basic"}}
          ],
          "events": [{"timeUnixNano": "1772600771125456000", "name": "parsed", "attributes": []}],
          "links": [],
          "status": {}
        }
      ]
    }]
  }]
}"#;

async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
    request(addr, "POST", path, headers, body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn protobuf_and_json_logs_and_traces_become_their_rows() {
    let db = TestDb::mysql().await;
    let collector = TestCollector::start(settings(db.url())).await;
    let http = collector.http_addr();

    // Protobuf logs, plain.
    let visit = logs_request(
        "web-ide",
        vec![event(
            "page_visit",
            T0,
            vec![
                kv("event.id", "0190f3a8-8c2e-7d41-9a5b-3c2d1e0f4a5b"),
                kv("session.id", "s-proto"),
                kv("url.path", "/proto"),
                kv("client.address", "203.0.113.9"),
            ],
        )],
    );
    let answer = export_logs(http, &visit, Encoding::Protobuf, false)
        .await
        .expect("protobuf logs accepted");
    assert_eq!(answer.partial_success, None);

    // Protobuf spans, gzip.
    let run = traces_request(
        "web-ide",
        vec![span(
            "program_execution",
            9,
            T0 + 2 * SECOND,
            T0 + 2 * SECOND + 15_000_000,
            None,
            vec![
                kv("session.id", "s-proto"),
                kv("program.lines", 12i64),
                kv("program.lines_executed", 40i64),
            ],
        )],
    );
    let answer = export_traces(http, &run, Encoding::Protobuf, true)
        .await
        .expect("gzip protobuf spans accepted");
    assert_eq!(answer.partial_success, None);

    // JSON logs, plain; JSON spans, gzip.
    let answer = post(
        http,
        "/v1/logs",
        &[("content-type", JSON)],
        LOGS_JSON.into(),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("content-type"), Some(JSON));
    assert_eq!(answer.json(), serde_json::json!({}));
    let answer = post(
        http,
        "/v1/traces",
        &[
            ("content-type", "application/json; charset=utf-8"),
            ("content-encoding", "gzip"),
        ],
        gzip(TRACES_JSON.as_bytes()),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json(), serde_json::json!({}));

    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(
        db.texts(
            "SELECT HEX(event_id), service, session_id, CAST(`timestamp` AS CHAR), page_path, \
             ip_address FROM page_visits"
        )
        .await,
        [vec![
            s("0190F3A88C2E7D419A5B3C2D1E0F4A5B"),
            s("web-ide"),
            s("s-proto"),
            s("2026-03-04 05:06:07.123456"),
            s("/proto"),
            s("203.0.113.9"),
        ]]
    );
    assert_eq!(
        db.texts(
            "SELECT session_id, CAST(`timestamp` AS CHAR), CAST(program_lines AS CHAR), \
             CAST(execution_time_ms AS CHAR), CAST(lines_executed AS CHAR), CAST(success AS CHAR), \
             error_message FROM program_executions ORDER BY `timestamp`"
        )
        .await,
        [
            vec![
                s("s-proto"),
                s("2026-03-04 05:06:09.123456"),
                s("12"),
                s("15"),
                s("40"),
                s("1"),
                None,
            ],
            vec![
                s("s-json"),
                s("2026-03-04 05:06:10.123456"),
                s("5"),
                s("250"),
                s("7"),
                s("0"),
                s("DIVISION BY ZERO"),
            ],
        ]
    );
    assert_eq!(
        db.texts(
            "SELECT session_id, service, user_id, CAST(start_time AS CHAR), user_agent, ip_address, \
             CAST(programs_run AS CHAR), CAST(errors_encountered AS CHAR) FROM ide_sessions \
             WHERE session_id = 's-json'"
        )
        .await,
        [vec![
            s("s-json"),
            s("web-ide"),
            s("u-json"),
            s("2026-03-04 05:06:07.123456"),
            s("Mozilla/5.0 (json)"),
            s("198.51.100.7"),
            s("1"),
            s("1"),
        ]]
    );
    let custom = db
        .texts(
            "SELECT event_name, service, session_id, CAST(`timestamp` AS CHAR), trace_id, span_id, \
             CAST(duration_ms AS CHAR), CAST(attributes AS CHAR) FROM usage_events \
             ORDER BY `timestamp`",
        )
        .await;
    assert_eq!(custom.len(), 2, "{custom:?}");
    assert_eq!(
        custom[0][..7],
        [
            s("export_pdf"),
            s("web-ide"),
            s("s-json"),
            s("2026-03-04 05:06:08.123456"),
            s("5b8efff798038103d269b633813fc60c"),
            s("eee19b7ec3c1b174"),
            None,
        ]
    );
    let attributes: serde_json::Value =
        serde_json::from_str(custom[0][7].as_deref().unwrap()).unwrap();
    assert_eq!(
        attributes,
        serde_json::json!({"pages": 3, "copies": 2, "scale": 0.5, "color": true,
                           "tags": ["a", "b"], "raw": "6869"})
    );
    assert_eq!(
        custom[1][..7],
        [
            s("compile"),
            s("web-ide"),
            None,
            s("2026-03-04 05:06:11.123456"),
            s("5b8efff798038103d269b633813fc60c"),
            s("1112131415161718"),
            s("42"),
        ]
    );
    let metrics = collector.get("/metrics").await.1;
    for (series, expected) in [
        (
            "usage_collector_http_requests_total{signal=\"logs\",code=\"200\"}",
            2.0,
        ),
        (
            "usage_collector_http_requests_total{signal=\"traces\",code=\"200\"}",
            2.0,
        ),
        (
            "usage_collector_records_accepted_total{signal=\"logs\"}",
            3.0,
        ),
        (
            "usage_collector_records_accepted_total{signal=\"traces\"}",
            3.0,
        ),
    ] {
        assert_eq!(value(&metrics, series), Some(expected), "{series}");
    }
    collector.stop().await;
}

/// The size limit applies after decompression, and before: a `Content-Length` over it is
/// refused before the body is read.
#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_has_its_status_and_a_status_body_in_the_request_encoding() {
    let db = TestDb::mysql().await;
    let mut config = settings(db.url());
    config.limits.max_request_bytes = 64 * 1024;
    let collector = TestCollector::start(config).await;
    let http = collector.http_addr();
    let check = |answer: &Answer, status: u16, code: i32, content_type: &str, words: &str| {
        assert_eq!(answer.status, status, "{answer:?}");
        assert_eq!(
            answer.header("content-type"),
            Some(content_type),
            "{answer:?}"
        );
        let rpc = answer.rpc_status();
        assert_eq!(rpc.code, code, "{rpc:?}");
        assert!(
            rpc.message.contains(words),
            "{:?} lacks {words:?}",
            rpc.message
        );
    };

    // 400: undecodable protobuf, JSON and gzip.
    let answer = post(
        http,
        "/v1/logs",
        &[("content-type", PROTOBUF)],
        vec![0xff; 20],
    )
    .await;
    check(&answer, 400, 3, PROTOBUF, "");
    let answer = post(
        http,
        "/v1/logs",
        &[("content-type", JSON)],
        br#"{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "not hex"}]}]}]}"#
            .to_vec(),
    )
    .await;
    check(
        &answer,
        400,
        3,
        JSON,
        "not a valid OTLP/JSON export request",
    );
    let answer = post(
        http,
        "/v1/traces",
        &[("content-type", JSON), ("content-encoding", "gzip")],
        b"not gzip at all".to_vec(),
    )
    .await;
    check(&answer, 400, 3, JSON, "not valid gzip");

    // 404 and 405.
    let answer = post(http, "/v1/profiles", &[("content-type", PROTOBUF)], vec![]).await;
    check(&answer, 404, 5, PROTOBUF, "/v1/logs");
    let answer = request(http, "GET", "/v1/logs", &[], vec![]).await;
    check(&answer, 405, 12, JSON, "POST");
    assert_eq!(answer.header("allow"), Some("POST"));

    // 413: declared too large, and inflated too large (small gzips of large requests, protobuf
    // and JSON).
    // About 800 kB: past the limit, within what the collector reads (and discards) to answer
    // a client still sending, rather than closing on it.
    let mut big = large_feature_uses("web-ide");
    big.resource_logs[0].scope_logs[0].log_records.truncate(200);
    let answer = post(
        http,
        "/v1/logs",
        &[("content-type", PROTOBUF)],
        big.encode_to_vec(),
    )
    .await;
    check(&answer, 413, 8, PROTOBUF, "65536 bytes");
    let compressed = gzip(&big.encode_to_vec());
    assert!(compressed.len() < 64 * 1024, "{}", compressed.len());
    let answer = post(
        http,
        "/v1/logs",
        &[("content-type", PROTOBUF), ("content-encoding", "gzip")],
        compressed,
    )
    .await;
    check(&answer, 413, 8, PROTOBUF, "once decompressed");
    let json_bomb = gzip(&Encoding::Json.encode(&big));
    let answer = post(
        http,
        "/v1/logs",
        &[("content-type", JSON), ("content-encoding", "gzip")],
        json_bomb,
    )
    .await;
    check(&answer, 413, 8, JSON, "once decompressed");

    // 415: another content type, another content encoding.
    let answer = post(
        http,
        "/v1/logs",
        &[("content-type", "text/plain")],
        b"x".to_vec(),
    )
    .await;
    check(&answer, 415, 3, JSON, "application/x-protobuf");
    let answer = post(
        http,
        "/v1/logs",
        &[("content-type", PROTOBUF), ("content-encoding", "br")],
        b"x".to_vec(),
    )
    .await;
    check(&answer, 415, 3, PROTOBUF, "gzip");

    // /v1/metrics: not accepted, as over gRPC (UNIMPLEMENTED), in either encoding.
    for (content_type, body) in [(PROTOBUF, vec![]), (JSON, b"{}".to_vec())] {
        let answer = post(http, "/v1/metrics", &[("content-type", content_type)], body).await;
        check(
            &answer,
            501,
            12,
            content_type,
            "send metrics to a metrics backend",
        );
    }

    // Partial success: the records beside an invalid one are kept, the answer says so.
    for (encoding, path) in [
        (Encoding::Protobuf, "/kept-protobuf"),
        (Encoding::Json, "/kept-json"),
    ] {
        let too_many = (0..129).map(|i| kv(&format!("a{i}"), "x")).collect();
        let mixed = logs_request(
            "web-ide",
            vec![
                event("page_visit", T0, vec![kv("url.path", path)]),
                event("page_visit", T0, too_many),
            ],
        );
        let answer = export_logs(http, &mixed, encoding, false)
            .await
            .expect("partial success is 200");
        let partial = answer.partial_success.expect("partial success");
        assert_eq!(partial.rejected_log_records, 1, "{partial:?}");
        assert!(
            partial.error_message.contains("max_attributes_per_record"),
            "{partial:?}"
        );
    }

    let metrics = collector.get("/metrics").await.1;
    for (series, expected) in [
        (
            "usage_collector_http_requests_total{signal=\"logs\",code=\"400\"}",
            2.0,
        ),
        (
            "usage_collector_http_requests_total{signal=\"traces\",code=\"400\"}",
            1.0,
        ),
        (
            "usage_collector_http_requests_total{signal=\"other\",code=\"404\"}",
            1.0,
        ),
        (
            "usage_collector_http_requests_total{signal=\"logs\",code=\"405\"}",
            1.0,
        ),
        (
            "usage_collector_http_requests_total{signal=\"logs\",code=\"413\"}",
            3.0,
        ),
        (
            "usage_collector_http_requests_total{signal=\"logs\",code=\"415\"}",
            2.0,
        ),
        (
            "usage_collector_http_requests_total{signal=\"metrics\",code=\"501\"}",
            2.0,
        ),
        (
            "usage_collector_http_requests_total{signal=\"logs\",code=\"200\"}",
            2.0,
        ),
        (
            "usage_collector_requests_refused_total{reason=\"too_large\"}",
            3.0,
        ),
        (
            "usage_collector_requests_refused_total{reason=\"malformed\"}",
            3.0,
        ),
    ] {
        assert_eq!(value(&metrics, series), Some(expected), "{series}");
    }
    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(
        db.texts("SELECT page_path FROM page_visits ORDER BY page_path")
            .await,
        [vec![s("/kept-json")], vec![s("/kept-protobuf")]]
    );
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_checked_as_over_grpc() {
    const WEB_IDE_TOKEN: &str = "tok-web-ide-0123456789";
    let db = TestDb::mysql().await;
    let mut config = settings(db.url());
    let tokens = config.spool.dir.with_extension("tokens");
    std::fs::write(&tokens, format!("{WEB_IDE_TOKEN} web-ide\n")).unwrap();
    config.auth.tokens_file = Some(tokens.clone());
    let collector = TestCollector::start(config).await;
    let http = collector.http_addr();
    let visit = |service: &str| page_visits(service, "/token", 0..1);
    let bearer = format!("Bearer {WEB_IDE_TOKEN}");
    let send = |service: &'static str, authorization: Option<String>, encoding: Encoding| {
        let request = visit(service);
        async move {
            let headers: Vec<(&str, &str)> = authorization
                .as_deref()
                .map(|a| vec![("authorization", a)])
                .unwrap_or_default();
            export::<_, opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse>(
                http, "/v1/logs", &request, encoding, false, &headers,
            )
            .await
        }
    };
    let missing = send("web-ide", None, Encoding::Protobuf).await.unwrap_err();
    assert_eq!((missing.status, missing.rpc.code), (401, 16), "{missing}");
    assert!(missing.rpc.message.contains("Bearer"), "{missing}");
    let unknown = send(
        "web-ide",
        Some("Bearer tok-nobody-knows-this-one".into()),
        Encoding::Json,
    )
    .await
    .unwrap_err();
    assert_eq!((unknown.status, unknown.rpc.code), (401, 16), "{unknown}");
    let denied = send("billing", Some(bearer.clone()), Encoding::Json)
        .await
        .unwrap_err();
    assert_eq!((denied.status, denied.rpc.code), (403, 7), "{denied}");
    assert!(denied.rpc.message.contains("`billing`"), "{denied}");
    send("web-ide", Some(bearer), Encoding::Protobuf)
        .await
        .expect("the web IDE's token writes as web-ide");
    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(
        db.texts("SELECT service, page_path FROM page_visits").await,
        [vec![s("web-ide"), s("/token")]]
    );
    let metrics = collector.get("/metrics").await.1;
    for (reason, expected) in [("unauthenticated", 2.0), ("permission_denied", 1.0)] {
        let series = format!("usage_collector_requests_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(value(&metrics, &series), Some(expected), "{series}");
    }
    collector.stop().await;
    std::fs::remove_file(tokens).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_answers_listed_origins_only() {
    const IDE: &str = "https://ide.example.org";
    let db = TestDb::mysql().await;
    let mut config = settings(db.url());
    config.http_cors_origins = CorsOrigins(vec![IDE.to_owned(), "http://localhost:8080".into()]);
    let collector = TestCollector::start(config).await;
    let http = collector.http_addr();
    let preflight = |origin: &'static str| async move {
        let headers = [
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type,authorization",
            ),
        ];
        request(http, "OPTIONS", "/v1/logs", &headers, vec![]).await
    };
    let listed = preflight(IDE).await;
    assert_eq!(listed.status, 204, "{listed:?}");
    assert_eq!(listed.header("access-control-allow-origin"), Some(IDE));
    assert_eq!(listed.header("vary"), Some("Origin"));
    assert_eq!(listed.header("access-control-allow-methods"), Some("POST"));
    let allowed = listed.header("access-control-allow-headers").unwrap();
    for header in ["content-type", "content-encoding", "authorization"] {
        assert!(allowed.contains(header), "{allowed}");
    }
    assert_eq!(listed.header("access-control-max-age"), Some("7200"));
    assert_eq!(
        listed.header("access-control-allow-credentials"),
        Some("true")
    );

    let other = preflight("https://evil.example.com").await;
    assert_eq!(other.status, 403, "{other:?}");
    assert!(!other.has_cors_headers(), "{other:?}");

    // The export itself: the allow-origin header for a listed origin (and Retry-After
    // readable by the page), none for another, and the request handled either way.
    let body = Encoding::Json.encode(&page_visits("web-ide", "/cors", 0..1));
    let answer = post(
        http,
        "/v1/logs",
        &[("content-type", JSON), ("origin", "http://localhost:8080")],
        body.clone(),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("http://localhost:8080")
    );
    assert_eq!(
        answer.header("access-control-expose-headers"),
        Some("Retry-After")
    );
    let answer = post(
        http,
        "/v1/logs",
        &[
            ("content-type", JSON),
            ("origin", "https://evil.example.com"),
        ],
        body,
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(!answer.has_cors_headers(), "{answer:?}");
    collector.stop().await;

    // Without origins, no CORS at all: a preflight is a method this server does not take.
    let collector = TestCollector::start(settings(db.url())).await;
    let answer = request(
        collector.http_addr(),
        "OPTIONS",
        "/v1/logs",
        &[("origin", IDE), ("access-control-request-method", "POST")],
        vec![],
    )
    .await;
    assert_eq!(answer.status, 405, "{answer:?}");
    assert!(!answer.has_cors_headers(), "{answer:?}");
    collector.stop().await;
}

/// With the database away and the spool full, a request is refused with 503 and
/// `Retry-After`, and a `google.rpc.Status` carrying RetryInfo.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_is_503_with_retry_after() {
    let mut config = settings("mysql://root@127.0.0.1:1/nowhere");
    config.spool.max_bytes = 16 * 1024;
    let collector = TestCollector::start_unready(config, false).await;
    let http = collector.http_addr();
    let mut refused = None;
    for i in 0..50u64 {
        let visits = page_visits("web-ide", "/fill/spool/with/visits", i * 100..i * 100 + 40);
        match export_logs(http, &visits, Encoding::Protobuf, false).await {
            Ok(_) => continue,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the spool fills up");
    assert_eq!(refused.status, 503, "{refused}");
    assert_eq!(refused.rpc.code, 14, "{refused}");
    assert_eq!(refused.retry_after.as_deref(), Some("2"), "{refused}");
    assert!(refused.rpc.message.contains("spool full"), "{refused}");
    assert_eq!(refused.rpc.details.len(), 1, "RetryInfo: {refused:?}");
    // The same refusal in JSON.
    let answer = post(
        http,
        "/v1/logs",
        &[("content-type", JSON)],
        Encoding::Json.encode(&page_visits("web-ide", "/json", 0..40)),
    )
    .await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.header("retry-after"), Some("2"));
    let json = answer.json();
    assert_eq!(json["code"], 14);
    assert_eq!(
        json["details"][0]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    collector.stop().await;
}

/// When the in-flight budget is in use, a request waits briefly and is then refused with 429
/// and `Retry-After` (retryable), not 413 (final).
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_in_flight_budget_is_429_with_retry_after() {
    let mut config = settings("blackhole://");
    // Two of these requests at a time fit the budget; thirty-two at once do not.
    config.limits.max_request_bytes = 1 << 20;
    config.limits.max_records_per_request = 1000;
    config.limits.max_inflight_bytes = 6 << 20;
    let collector = TestCollector::start_unready(config, false).await;
    let http = collector.http_addr();
    let mut request = large_feature_uses("web-ide");
    request.resource_logs[0].scope_logs[0]
        .log_records
        .truncate(220);
    let body = Encoding::Json.encode(&request);
    assert!(body.len() < 1 << 20, "{}", body.len());
    let mut seen_429 = None;
    for _round in 0..5 {
        let sends =
            (0..32).map(|_| post(http, "/v1/logs", &[("content-type", JSON)], body.clone()));
        let answers = futures_join(sends).await;
        for answer in answers {
            match answer.status {
                200 => {}
                429 => seen_429 = Some(answer),
                other => panic!("unexpected {other}: {answer:?}"),
            }
        }
        if seen_429.is_some() {
            break;
        }
    }
    let answer = seen_429.expect("some request found the budget in use");
    assert_eq!(answer.header("retry-after"), Some("2"));
    let json = answer.json();
    assert_eq!(json["code"], 8);
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("max_inflight_bytes"),
        "{json}"
    );
    assert_eq!(json["details"][0]["retryDelay"], "2s");
    collector.stop().await;
}

/// Runs the futures concurrently, each on its own task.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

/// True once the peer has closed the connection (a read gives 0 bytes or an error); what it
/// sent before is returned too.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> (bool, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (false, String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// A silent connection, a request whose headers never finish, a body that stops coming and an
/// idle kept-alive connection are all closed within their timeouts.
#[tokio::test(flavor = "multi_thread")]
async fn silent_slow_and_idle_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::mysql().await;
    let mut config = settings(db.url());
    config.connections.handshake_timeout = Duration::from_secs(1);
    config.connections.http_request_timeout = Duration::from_secs(1);
    let collector = TestCollector::start(config).await;
    let http = collector.http_addr();
    let limit = Duration::from_secs(5);

    let mut silent = tokio::net::TcpStream::connect(http).await.unwrap();
    assert!(
        closed_within(&mut silent, limit).await.0,
        "silent connection kept"
    );

    let mut slow_headers = tokio::net::TcpStream::connect(http).await.unwrap();
    slow_headers
        .write_all(b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow_headers, limit).await.0,
        "connection with unfinished headers kept"
    );

    let mut slow_body = tokio::net::TcpStream::connect(http).await.unwrap();
    slow_body
        .write_all(
            b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"resourceLogs\":",
        )
        .await
        .unwrap();
    let (closed, answer) = closed_within(&mut slow_body, limit).await;
    assert!(closed, "connection with a stalled body kept");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");

    // A kept-alive connection that sends nothing more after its request.
    let mut idle = tokio::net::TcpStream::connect(http).await.unwrap();
    idle.write_all(b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let (closed, answer) = closed_within(&mut idle, limit).await;
    assert!(closed, "idle kept-alive connection kept");
    assert!(answer.starts_with("HTTP/1.1 501"), "{answer}");
    collector.stop().await;
}

/// A stopping collector answers 503 with `Retry-After` for a moment (clients retry elsewhere),
/// then closes its connections.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_collector_answers_503_then_closes() {
    let db = TestDb::mysql().await;
    let collector = TestCollector::start(settings(db.url())).await;
    let http = collector.http_addr();
    let admin = collector.admin;
    let stopping = tokio::spawn(collector.stop());
    // Sent once the collector says it is shutting down (and before it closes its listeners).
    usage_pipeline_tests::poll::until(
        "readiness says shutting down",
        Duration::from_secs(5),
        || request(admin, "GET", "/health/ready", &[], Vec::new()),
        |answer| String::from_utf8_lossy(&answer.body).contains("shutting down"),
    )
    .await;
    let refused = export_logs(
        http,
        &page_visits("web-ide", "/late", 0..1),
        Encoding::Json,
        false,
    )
    .await
    .expect_err("refused while stopping");
    assert_eq!((refused.status, refused.rpc.code), (503, 14), "{refused}");
    assert_eq!(refused.retry_after.as_deref(), Some("2"));
    assert!(refused.rpc.message.contains("shutting down"), "{refused}");
    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "a stopped collector no longer accepts"
    );
    assert_eq!(db.count("page_visits").await, 0);
}

/// Bodies exactly as the OpenTelemetry JS exporters (`@opentelemetry/exporter-logs-otlp-http`
/// and `exporter-trace-otlp-http` 0.208.0, JSON) sent them: 64-bit integers as numbers and
/// strings, an empty body value, `doubleValue: null` for NaN, `flags`; sent, as those exporters
/// do, with `Transfer-Encoding: chunked`.
const JS_LOGS: &str = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"web-ide-js"}}],"droppedAttributesCount":0},"scopeLogs":[{"scope":{"name":"web-ide"},"logRecords":[{"timeUnixNano":"1772600768123000000","observedTimeUnixNano":"1796039258664000000","body":{},"eventName":"export_pdf","attributes":[{"key":"pages","value":{"intValue":3}},{"key":"big","value":{"intValue":9007199254740991}},{"key":"ratio","value":{"doubleValue":0.25}},{"key":"ok","value":{"boolValue":true}},{"key":"nan","value":{"doubleValue":null}}],"droppedAttributesCount":0}]}]}]}"#;
const JS_TRACES: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"web-ide-js"}}],"droppedAttributesCount":0},"scopeSpans":[{"scope":{"name":"web-ide"},"spans":[{"traceId":"c26b7f19967079d97b6d565e3e7d7fa6","spanId":"f674ac45b8cb08a2","name":"program_execution","kind":1,"startTimeUnixNano":"1772600769123000000","endTimeUnixNano":"1772600769373000000","attributes":[{"key":"session.id","value":{"stringValue":"s-js"}},{"key":"program.lines","value":{"intValue":5}}],"droppedAttributesCount":0,"events":[],"droppedEventsCount":0,"status":{"code":2,"message":"DIVISION BY ZERO"},"links":[],"droppedLinksCount":0,"flags":257}]}]}]}"#;

/// A POST with a chunked body, written by hand; the whole answer.
async fn post_chunked(addr: SocketAddr, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (first, second) = body.split_at(body.len() / 2);
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread")]
async fn json_as_the_opentelemetry_js_exporters_send_it_becomes_rows() {
    let db = TestDb::mysql().await;
    let collector = TestCollector::start(settings(db.url())).await;
    let http = collector.http_addr();
    for (path, body) in [("/v1/logs", JS_LOGS), ("/v1/traces", JS_TRACES)] {
        let answer = post_chunked(http, path, body).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("{}"), "{answer}");
    }
    collector.wait_written(Duration::from_secs(10)).await;
    let custom = db
        .texts(
            "SELECT event_name, service, CAST(`timestamp` AS CHAR), CAST(attributes AS CHAR) \
             FROM usage_events",
        )
        .await;
    assert_eq!(custom.len(), 1, "{custom:?}");
    assert_eq!(
        custom[0][..3],
        [
            s("export_pdf"),
            s("web-ide-js"),
            s("2026-03-04 05:06:08.123000")
        ]
    );
    let attributes: serde_json::Value =
        serde_json::from_str(custom[0][3].as_deref().unwrap()).unwrap();
    assert_eq!(
        attributes,
        serde_json::json!({"pages": 3, "big": 9007199254740991i64, "ratio": 0.25, "ok": true,
                           "nan": null})
    );
    assert_eq!(
        db.texts(
            "SELECT service, session_id, CAST(`timestamp` AS CHAR), CAST(program_lines AS CHAR), \
             CAST(execution_time_ms AS CHAR), CAST(success AS CHAR), error_message \
             FROM program_executions"
        )
        .await,
        [vec![
            s("web-ide-js"),
            s("s-js"),
            s("2026-03-04 05:06:09.123000"),
            s("5"),
            s("250"),
            s("0"),
            s("DIVISION BY ZERO"),
        ]]
    );
    collector.stop().await;
}

/// Opens a connection and sends a request's head and `sent` bytes of its body (of `declared`
/// when given, else chunked), then nothing more; the connection stays open while it is held.
async fn stalled(
    addr: SocketAddr,
    content_type: &str,
    declared: Option<usize>,
    sent: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let length = match declared {
        Some(n) => format!("Content-Length: {n}\r\n"),
        None => "Transfer-Encoding: chunked\r\n".to_owned(),
    };
    let mut request = format!(
        "POST /v1/logs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n{length}\r\n"
    )
    .into_bytes();
    if declared.is_none() && !sent.is_empty() {
        request.extend_from_slice(format!("{:x}\r\n", sent.len()).as_bytes());
        request.extend_from_slice(sent);
        request.extend_from_slice(b"\r\n");
    } else {
        request.extend_from_slice(sent);
    }
    stream.write_all(&request).await.unwrap();
    stream
}

/// Sends a whole request and closes the connection without waiting for the answer.
async fn send_and_go(addr: SocketAddr, content_type: &str, body: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let mut stream = stalled(addr, content_type, Some(body.len()), body).await;
    stream.shutdown().await.unwrap();
}

/// A request's body takes its share of the in-flight budget before it is read (so bodies on
/// their way in cannot hold memory past the budget), and every share comes back: from bodies
/// that never finish, and from requests whose clients disconnect right after sending (the
/// share goes with the decoding work, given back when it ends or is skipped).
#[tokio::test(flavor = "multi_thread")]
async fn bodies_hold_budget_before_they_are_read_and_give_it_back() {
    let mut config = settings("blackhole://");
    config.limits.max_request_bytes = 1 << 20;
    config.limits.max_records_per_request = 1000;
    config.limits.max_inflight_bytes = 6 << 20;
    let collector = TestCollector::start_unready(config, false).await;
    let http = collector.http_addr();
    let small = Encoding::Protobuf.encode(&page_visits("web-ide", "/small", 0..3));

    // Six bodies of 1 MiB declared, a few bytes sent: the whole budget is theirs.
    let mut waiting = Vec::new();
    for _ in 0..6 {
        waiting.push(stalled(http, PROTOBUF, Some(1 << 20), b"\x0a").await);
    }
    let memory = "usage_collector_requests_refused_total{reason=\"memory\"}";
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let answer = post(
                http,
                "/v1/logs",
                &[("content-type", PROTOBUF)],
                small.clone(),
            )
            .await;
            if answer.status != 200 {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a request finds the budget held by the bodies on their way in");
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("2"));
    assert!(
        refused.rpc_status().message.contains("max_inflight_bytes"),
        "{refused:?}"
    );
    let metrics = collector.get("/metrics").await.1;
    assert!(
        value(&metrics, memory).is_some_and(|n| n >= 1.0),
        "{metrics}"
    );

    // Their clients go: the budget comes back.
    drop(waiting);
    let back = |body: Vec<u8>, content_type: &'static str| async move {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let answer = post(
                    http,
                    "/v1/logs",
                    &[("content-type", content_type)],
                    body.clone(),
                )
                .await;
                match answer.status {
                    200 => return,
                    429 => tokio::time::sleep(Duration::from_millis(50)).await,
                    other => panic!("unexpected {other}: {answer:?}"),
                }
            }
        })
        .await
        .expect("the budget comes back");
    };
    back(small.clone(), PROTOBUF).await;

    // Large requests whose clients disconnect right after sending, many at once, in both
    // encodings: whatever was decoded or refused, the budget comes back, and a large request
    // that needs most of it is then admitted.
    let mut request = large_feature_uses("web-ide");
    request.resource_logs[0].scope_logs[0]
        .log_records
        .truncate(220);
    let json = Encoding::Json.encode(&request);
    let protobuf = Encoding::Protobuf.encode(&request);
    assert!(json.len() < 1 << 20, "{}", json.len());
    for _round in 0..3 {
        let sends = (0..16).map(|i| {
            let (content_type, body) = if i % 2 == 0 {
                (JSON, json.clone())
            } else {
                (PROTOBUF, protobuf.clone())
            };
            async move { send_and_go(http, content_type, &body).await }
        });
        futures_join(sends).await;
    }
    back(json.clone(), JSON).await;
    back(protobuf.clone(), PROTOBUF).await;
    // Every 429 answered is a memory refusal counted, by request (before decoding) or by its
    // records (admission); refusals of clients already gone are counted too.
    let metrics = collector.get("/metrics").await.1;
    let count = |series: &str| value(&metrics, series).unwrap_or_else(|| panic!("{series}"));
    let memory = count(memory)
        + count("usage_collector_records_refused_total{signal=\"logs\",reason=\"memory\"}");
    let answered_429 = count("usage_collector_http_requests_total{signal=\"logs\",code=\"429\"}");
    assert!(answered_429 >= 1.0 && memory >= answered_429, "{metrics}");
    // The bodies that never finished were refused as such when their clients went. Each is
    // counted when its connection task sees the close, which may come after the budget it held
    // let the next request in: wait for the sixth, within a bound.
    let incomplete = "usage_collector_requests_refused_total{reason=\"incomplete_body\"}";
    let mut metrics = collector.get("/metrics").await.1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while value(&metrics, incomplete) != Some(6.0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics = collector.get("/metrics").await.1;
    }
    assert_eq!(value(&metrics, incomplete), Some(6.0), "{metrics}");
    collector.stop().await;
}

/// A chunked body (no `Content-Length`) over the limit is refused with 413 once the limit is
/// passed, and nothing of it is taken.
#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_body_over_the_limit_is_413_and_nothing_is_taken() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = settings("blackhole://");
    config.limits.max_request_bytes = 64 << 10;
    let collector = TestCollector::start_unready(config, false).await;
    let http = collector.http_addr();
    let body =
        Encoding::Protobuf.encode(&page_visits("web-ide", "/chunked/over/the/limit", 0..2000));
    assert!(body.len() > 64 << 10, "{}", body.len());
    let mut stream = stalled(http, PROTOBUF, None, &[]).await;
    for chunk in body.chunks(8 << 10) {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(chunk);
        frame.extend_from_slice(b"\r\n");
        stream.write_all(&frame).await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("max_request_bytes") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let metrics = collector.get("/metrics").await.1;
    for (series, expected) in [
        (
            "usage_collector_requests_refused_total{reason=\"too_large\"}",
            1.0,
        ),
        (
            "usage_collector_records_received_total{signal=\"logs\"}",
            0.0,
        ),
        (
            "usage_collector_records_accepted_total{signal=\"logs\"}",
            0.0,
        ),
        (
            "usage_collector_http_requests_total{signal=\"logs\",code=\"413\"}",
            1.0,
        ),
    ] {
        assert_eq!(value(&metrics, series), Some(expected), "{series}");
    }
    collector.stop().await;
}
