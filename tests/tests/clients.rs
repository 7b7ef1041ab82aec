//! Real OpenTelemetry clients deliver the web IDE's events as rows, checked column by column
//! on MariaDB:
//!
//! - the Python SDK (`tests/clients/python/web_ide.py`, the program the migration guide quotes)
//!   with its gRPC and its http/protobuf exporters: sessions, page visits, program runs as log
//!   events and as spans, feature use;
//! - Node.js `@opentelemetry/sdk-logs` (`tests/clients/node/web_ide.mjs`) with the OTLP gRPC,
//!   HTTP/JSON and HTTP/protobuf log exporters;
//! - the browser example (`examples/browser/`) in headless Chromium, served from its own origin:
//!   OTLP/HTTP JSON sent with `fetch`, let through by CORS for that origin, refused for another.
//!
//! `scripts/clients-setup` installs the clients (`scripts/test` runs it); without them these
//! tests fail, naming the script.

use std::time::Duration;

use usage_collector::config::CorsOrigins;
use usage_pipeline_tests::clients::{
    self, PageServer, Rows, Run, assert_client_uuid, assert_python_session, client_command, now_us,
    number, us,
};
use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::value;

/// How a client reaches the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Grpc,
    Http,
}

/// A collector on MariaDB for the clients (OTLP/gRPC and OTLP/HTTP), with CORS for
/// `cors_origins`.
async fn collector(cors_origins: &[String]) -> (TestDb, TestCollector) {
    let db = TestDb::mysql().await;
    let mut settings = settings(db.url());
    settings.http_cors_origins = CorsOrigins(cors_origins.to_vec());
    let collector = TestCollector::start(settings).await;
    (db, collector)
}

/// The base URL a client's `OTEL_EXPORTER_OTLP_ENDPOINT` names.
fn endpoint(collector: &TestCollector, transport: Transport) -> String {
    match transport {
        Transport::Grpc => collector.endpoint(),
        Transport::Http => collector.http_endpoint(),
    }
}

fn s(text: &str) -> Option<String> {
    Some(text.to_owned())
}

/// Runs `program` (under `clients/`) with `interpreter` against a new collector, with the
/// exporter `protocol` names (gzip if asked), as `service` playing `session`.
async fn run_client(
    who: &str,
    interpreter: impl AsRef<std::ffi::OsStr>,
    program: &str,
    (transport, protocol, gzip): (Transport, &str, bool),
    service: &str,
    session: &str,
) -> (TestDb, TestCollector, Run) {
    let (db, collector) = collector(&[]).await;
    let mut command = client_command(interpreter);
    command.arg(clients::client_path(program));
    if gzip {
        command.env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip");
    }
    let run = Run::client(
        format!("the {who} client ({protocol})"),
        command,
        (&endpoint(&collector, transport), protocol),
        &format!("{service}-{}", protocol.replace('/', "-")),
        session,
    )
    .await;
    collector.wait_written(Duration::from_secs(10)).await;
    (db, collector, run)
}

/// The Python program of the migration guide, with the exporter `protocol` names.
async fn python_client_delivers_its_session(transport: Transport, protocol: &str, gzip: bool) {
    let (db, collector, run) = run_client(
        "Python",
        clients::python(),
        "python/web_ide.py",
        (transport, protocol, gzip),
        "web-ide-python",
        "py-session-1",
    )
    .await;
    assert_python_session(&db, &run).await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_with_the_grpc_exporter() {
    python_client_delivers_its_session(Transport::Grpc, "grpc", false).await;
}

/// With gzip, as `OTEL_EXPORTER_OTLP_COMPRESSION=gzip` asks.
#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_with_the_http_protobuf_exporter_and_gzip() {
    python_client_delivers_its_session(Transport::Http, "http/protobuf", true).await;
}

/// Checks the rows of `web_ide.mjs`'s session.
async fn assert_node_session(db: &TestDb, run: &Run) {
    let rows = Rows::read(db, run).await;
    let (service, session) = (run.service.as_str(), run.session.as_str());
    let agent = "Mozilla/5.0 (X11; Linux x86_64) web-ide-node";
    assert_eq!(
        rows.page_visits,
        [
            vec![
                s(service),
                s(session),
                s("u-7"),
                s("/ide"),
                s("https://example.org/node"),
                s(agent),
                None,
            ],
            vec![
                s(service),
                s(session),
                s("u-7"),
                s("/ide/programs/naïve.bas"),
                None,
                None,
                None,
            ],
        ]
    );
    assert_eq!(
        rows.session,
        [vec![
            s(session),
            s(service),
            s("u-7"),
            s(agent),
            s("2001:db8::7"),
            s("2"),
            s("145"),
            s("1"),
            s("1"),
            s("1"),
        ]]
    );
    assert_eq!(
        rows.runs,
        [
            vec![
                s(service),
                s(session),
                s("u-7"),
                s("12"),
                s("144"),
                s("1"),
                None
            ],
            vec![
                s(service),
                s(session),
                s("u-7"),
                s("2"),
                s("1"),
                s("0"),
                s("TYPE MISMATCH IN 10")
            ],
        ]
    );
    assert_eq!(rows.run_times_ms, [35, 0]);
    assert_eq!(rows.features.len(), 1);
    assert_eq!(
        rows.features[0].0,
        [s(service), s(session), s("u-7"), s("share")]
    );
    assert_eq!(
        rows.features[0].1,
        serde_json::json!({"target": "link", "public": true, "views": 3})
    );
    assert_eq!(rows.custom.len(), 1);
    assert_eq!(rows.custom[0].0, [s("export_pdf"), s(service), s(session)]);
    assert_eq!(
        rows.custom[0].1,
        serde_json::json!({"pages": 2, "format": "a4"})
    );
    for table in [
        "page_visits",
        "program_executions",
        "feature_usage",
        "usage_events",
    ] {
        for row in db
            .texts(&format!("SELECT HEX(event_id) FROM {table}"))
            .await
        {
            assert_client_uuid(table, &row[0]);
        }
    }
}

/// The Node.js program with the log exporter `protocol` names.
async fn node_client_delivers_its_session(transport: Transport, protocol: &str, gzip: bool) {
    let (db, collector, run) = run_client(
        "Node.js",
        clients::node(),
        "node/web_ide.mjs",
        (transport, protocol, gzip),
        "web-ide-node",
        "node-session-1",
    )
    .await;
    assert_node_session(&db, &run).await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_sdk_logs_with_the_grpc_exporter() {
    node_client_delivers_its_session(Transport::Grpc, "grpc", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_sdk_logs_with_the_http_json_exporter() {
    node_client_delivers_its_session(Transport::Http, "http/json", false).await;
}

/// With gzip, as `OTEL_EXPORTER_OTLP_COMPRESSION=gzip` asks.
#[tokio::test(flavor = "multi_thread")]
async fn node_sdk_logs_with_the_http_protobuf_exporter_and_gzip() {
    node_client_delivers_its_session(Transport::Http, "http/protobuf", true).await;
}

/// The browser example's folder.
fn browser_example() -> std::path::PathBuf {
    clients::repo_root().join("examples/browser")
}

/// Loads the browser example from `page` in headless Chromium, sending to `collector`, and
/// returns its status element once the page is idle.
async fn load_page(
    page: &PageServer,
    collector: &TestCollector,
    session: &str,
) -> clients::Element {
    let url = format!(
        "{}/index.html?endpoint={}&service=web-ide-browser&session={session}",
        page.origin(),
        endpoint(collector, Transport::Http)
    );
    let dom =
        tokio::task::spawn_blocking(move || clients::chromium_dom(&url, Duration::from_secs(10)))
            .await
            .expect("the browser's thread");
    clients::element_by_id(&dom, "status")
        .unwrap_or_else(|| panic!("the page has no status element:\n{dom}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_page_visit_arrives_through_cors() {
    clients::chromium();
    let page = PageServer::start(browser_example()).await;
    let (db, collector) = collector(&[page.origin()]).await;
    let started_us = now_us();
    let status = load_page(&page, &collector, "browser-session-1").await;
    let finished_us = now_us();
    assert_eq!(
        status.attribute("data-state"),
        Some("delivered"),
        "the page's report: {status:?}"
    );
    let event_id = status
        .attribute("data-event-id")
        .expect("the page names its event id");
    collector.wait_written(Duration::from_secs(10)).await;

    let rows = db
        .texts(&format!(
            "SELECT LOWER(HEX(event_id)), service, session_id, user_id, page_path, referrer, \
             ip_address, {} FROM page_visits",
            us("`timestamp`")
        ))
        .await;
    assert_eq!(rows.len(), 1, "one page visit: {rows:?}");
    assert_eq!(
        rows[0][..7],
        [
            s(&event_id.replace('-', "")),
            s("web-ide-browser"),
            s("browser-session-1"),
            None,
            s("/index.html"),
            None,
            None,
        ]
    );
    // The browser's clock is this machine's; the page sends milliseconds.
    let time = number(&rows[0][7]);
    assert!(
        (started_us - 1_000..=finished_us).contains(&time),
        "the visit's time {time} µs lies within the page load ({started_us} ..= {finished_us})"
    );
    let agent = db.texts("SELECT user_agent FROM page_visits").await;
    let agent = agent[0][0].as_deref().unwrap_or_default();
    assert!(
        agent.contains("Chrome/"),
        "the browser's own user agent: {agent:?}"
    );
    // The visit opens the session's row (its user agent comes from `session_start` only).
    let session = db
        .texts(&format!(
            "SELECT session_id, service, user_agent, {}, {} FROM ide_sessions",
            us("start_time"),
            us("last_activity")
        ))
        .await;
    assert_eq!(
        session,
        [vec![
            s("browser-session-1"),
            s("web-ide-browser"),
            None,
            s(&time.to_string()),
            s(&time.to_string())
        ]]
    );
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_page_from_an_unlisted_origin_is_refused() {
    clients::chromium();
    let page = PageServer::start(browser_example()).await;
    // Another origin is allowed, not the page's.
    let other = format!(
        "http://127.0.0.1:{}",
        page.addr.port().wrapping_add(1).max(1)
    );
    let (db, collector) = collector(&[other]).await;
    let status = load_page(&page, &collector, "browser-session-2").await;
    assert_eq!(
        status.attribute("data-state"),
        Some("failed"),
        "the browser must refuse to send: {status:?}"
    );
    assert!(
        status.text.contains("Failed to fetch"),
        "a CORS refusal reaches the page as a network error: {status:?}"
    );
    // The failure is the collector's refusal of the preflight, not an unreachable endpoint:
    // it answered the page's origin 403, and no export reached it.
    let (_, metrics) = collector.get("/metrics").await;
    let requests = |code: &str| {
        value(
            &metrics,
            &format!("usage_collector_http_requests_total{{signal=\"logs\",code=\"{code}\"}}"),
        )
    };
    assert_eq!(requests("403"), Some(1.0), "{metrics}");
    assert_eq!(requests("200"), None, "{metrics}");
    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(db.count("page_visits").await, 0, "nothing was delivered");
    assert_eq!(db.count("ide_sessions").await, 0, "nothing was delivered");
    collector.stop().await;
}

/// The guide's Python code block is `tests/clients/python/web_ide.py`, the program the Python
/// tests run, byte for byte: the guide cannot show code that does not work.
#[test]
fn the_migration_guide_quotes_the_tested_python_client() {
    let guide_path = clients::repo_root().join("docs/migrating-from-the-python-tracker.md");
    let guide = std::fs::read_to_string(&guide_path).expect("the migration guide");
    let program = std::fs::read_to_string(clients::client_path("python/web_ide.py"))
        .expect("the Python client");
    let marker = "<!-- tests/clients/python/web_ide.py -->\n```python\n";
    let start = guide
        .find(marker)
        .unwrap_or_else(|| panic!("{} has no block after {marker:?}", guide_path.display()))
        + marker.len();
    let end = start
        + guide[start..]
            .find("\n```\n")
            .expect("the code block's end")
        + 1;
    let quoted = &guide[start..end];
    if quoted != program {
        let line = quoted
            .lines()
            .zip(program.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| quoted.lines().count().min(program.lines().count()))
            + 1;
        panic!(
            "the guide's Python block differs from tests/clients/python/web_ide.py from line \
             {line}: copy the file into the guide"
        );
    }
}
