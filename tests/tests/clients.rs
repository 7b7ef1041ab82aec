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

use std::process::Command;
use std::time::{Duration, SystemTime};

use usage_collector::config::CorsOrigins;
use usage_pipeline_tests::clients::{self, PageServer};
use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::value;

/// How long a client may take to run (they take about a second).
const CLIENT_LIMIT: Duration = Duration::from_secs(90);

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

/// Microseconds since the epoch, now.
fn now_us() -> i64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("a clock after 1970");
    i64::try_from(since.as_micros()).expect("a time that fits")
}

/// SQL for a DATETIME column as microseconds since the epoch (the collector writes UTC).
fn us(column: &str) -> String {
    format!("CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {column}) AS CHAR)")
}

fn s(text: &str) -> Option<String> {
    Some(text.to_owned())
}

fn number(value: &Option<String>) -> i64 {
    value
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a number, not {value:?}"))
}

/// A client's command with no OpenTelemetry variable of this process leaking into it.
fn client_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    command
}

/// One run of a client: what it was told, and when it ran.
struct Run {
    service: String,
    session: String,
    started_us: i64,
    finished_us: i64,
}

impl Run {
    /// Runs `command` (a client playing one session) to its end, then waits until the
    /// collector has written everything it acknowledged.
    async fn client(
        what: String,
        mut command: Command,
        collector: &TestCollector,
        transport: Transport,
        protocol: &str,
        service: &str,
        session: &str,
    ) -> Self {
        command
            .env("OTEL_SERVICE_NAME", service)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                endpoint(collector, transport),
            )
            .arg(session);
        let started_us = now_us();
        let label = what.clone();
        let output =
            tokio::task::spawn_blocking(move || clients::run(&label, command, CLIENT_LIMIT))
                .await
                .expect("the client's thread");
        let finished_us = now_us();
        // Shown when a check below fails: what the client's SDK reported.
        eprintln!(
            "{what} exited 0\n--- stdout\n{}\n--- stderr\n{}",
            output.stdout, output.stderr
        );
        collector.wait_written(Duration::from_secs(10)).await;
        Self {
            service: service.to_owned(),
            session: session.to_owned(),
            started_us,
            finished_us,
        }
    }

    /// Checks that `time` (microseconds) lies within the run.
    fn assert_during(&self, what: &str, time: i64) {
        assert!(
            (self.started_us..=self.finished_us).contains(&time),
            "{what}: {time} µs is not within the client's run ({} ..= {} µs)",
            self.started_us,
            self.finished_us
        );
    }
}

/// Checks that `hex` is an event id the client chose: a random (version 4) UUID.
fn assert_client_uuid(what: &str, hex: &Option<String>) {
    let hex = hex.as_deref().unwrap_or_default();
    let id = uuid::Uuid::try_parse(hex).unwrap_or_else(|e| panic!("{what}: {hex:?}: {e}"));
    assert_eq!(
        id.get_version_num(),
        4,
        "{what}: {id} is not the client's random UUID"
    );
}

/// The rows of one client's session, read back from every table: the columns that depend on
/// nothing but what the client sent, and the event ids and times apart.
struct Rows {
    /// service, session_id, user_id, page_path, referrer, user_agent, ip_address (by time).
    page_visits: Vec<Vec<Option<String>>>,
    /// session_id, service, user_id, user_agent, ip_address, programs_run, lines_executed,
    /// errors_encountered, end_time set, duration_seconds = end − start in whole seconds.
    session: Vec<Vec<Option<String>>>,
    /// service, session_id, user_id, program_lines, lines_executed, success, error_message
    /// (by time), with execution_time_ms apart.
    runs: Vec<Vec<Option<String>>>,
    run_times_ms: Vec<i64>,
    /// service, session_id, user_id, feature_name, and feature_data as JSON.
    features: Vec<(Vec<Option<String>>, serde_json::Value)>,
    /// event_name, service, session_id, and attributes as JSON.
    custom: Vec<(Vec<Option<String>>, serde_json::Value)>,
}

impl Rows {
    /// Reads the rows, and checks for every event row that its time lies within the run and
    /// that the session's times span them: start = earliest, last activity = end = latest.
    /// Event ids of log events must be the client's UUIDs, all distinct.
    async fn read(db: &TestDb, run: &Run) -> Self {
        let json = |text: &Option<String>| -> serde_json::Value {
            serde_json::from_str(text.as_deref().expect("a JSON column")).expect("valid JSON")
        };
        let split_json = |rows: Vec<Vec<Option<String>>>| {
            rows.into_iter()
                .map(|mut row| {
                    let data = json(&row.pop().expect("a JSON column"));
                    (row, data)
                })
                .collect::<Vec<_>>()
        };
        let rows = Self {
            page_visits: db
                .texts(
                    "SELECT service, session_id, user_id, page_path, referrer, user_agent, ip_address \
                     FROM page_visits ORDER BY `timestamp`, id",
                )
                .await,
            session: db
                .texts(
                    "SELECT session_id, service, user_id, user_agent, ip_address, \
                     CAST(programs_run AS CHAR), CAST(lines_executed AS CHAR), \
                     CAST(errors_encountered AS CHAR), CAST(end_time IS NOT NULL AS CHAR), \
                     CAST(duration_seconds = TIMESTAMPDIFF(SECOND, start_time, end_time) AS CHAR) \
                     FROM ide_sessions",
                )
                .await,
            runs: db
                .texts(
                    "SELECT service, session_id, user_id, CAST(program_lines AS CHAR), \
                     CAST(lines_executed AS CHAR), CAST(success AS CHAR), error_message \
                     FROM program_executions ORDER BY `timestamp`, id",
                )
                .await,
            run_times_ms: db
                .texts(
                    "SELECT CAST(execution_time_ms AS CHAR) FROM program_executions \
                     ORDER BY `timestamp`, id",
                )
                .await
                .iter()
                .map(|row| number(&row[0]))
                .collect(),
            features: split_json(
                db.texts(
                    "SELECT service, session_id, user_id, feature_name, CAST(feature_data AS CHAR) \
                     FROM feature_usage ORDER BY `timestamp`, id",
                )
                .await,
            ),
            custom: split_json(
                db.texts(
                    "SELECT event_name, service, session_id, CAST(attributes AS CHAR) \
                     FROM usage_events ORDER BY `timestamp`, id",
                )
                .await,
            ),
        };

        let mut event_times = Vec::new();
        let mut client_ids = Vec::new();
        for table in [
            "page_visits",
            "program_executions",
            "feature_usage",
            "usage_events",
        ] {
            let sql = format!("SELECT HEX(event_id), {} FROM {table}", us("`timestamp`"));
            for row in db.texts(&sql).await {
                let time = number(&row[1]);
                run.assert_during(&format!("{table} row time"), time);
                event_times.push(time);
                client_ids.push((table, row[0].clone()));
            }
        }
        let session_times = db
            .texts(&format!(
                "SELECT {}, {}, {} FROM ide_sessions",
                us("start_time"),
                us("last_activity"),
                us("end_time")
            ))
            .await;
        assert_eq!(session_times.len(), 1, "one session row");
        let [start, last, end] = [0, 1, 2].map(|i| number(&session_times[0][i]));
        run.assert_during("session start_time", start);
        assert!(
            event_times.iter().all(|t| (start..=end).contains(t)),
            "every event of the session lies between its start {start} and end {end}: {event_times:?}"
        );
        assert_eq!(last, end, "last_activity is the session's end");
        let mut distinct: Vec<_> = client_ids.iter().map(|(_, id)| id.clone()).collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), client_ids.len(), "event ids are distinct");
        rows
    }
}

/// Checks the rows of `web_ide.py`'s session.
async fn assert_python_session(db: &TestDb, run: &Run) {
    let rows = Rows::read(db, run).await;
    let (service, session) = (run.service.as_str(), run.session.as_str());
    let agent = "Mozilla/5.0 (X11; Linux x86_64) web-ide-test";
    assert_eq!(
        rows.page_visits,
        [
            vec![
                s(service),
                s(session),
                s("u-42"),
                s("/ide"),
                s("https://example.org/start"),
                s(agent),
                s("203.0.113.7"),
            ],
            vec![
                s(service),
                s(session),
                s("u-42"),
                s("/ide/programs/héllo wörld.bas"),
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
            s("u-42"),
            s(agent),
            s("203.0.113.7"),
            s("4"),
            s("72"),
            s("2"),
            s("1"),
            s("1"),
        ]]
    );
    let run_row = |lines: &str, executed: &str, success: &str, error: Option<&str>| {
        vec![
            s(service),
            s(session),
            s("u-42"),
            s(lines),
            s(executed),
            s(success),
            error.map(str::to_owned),
        ]
    };
    assert_eq!(
        rows.runs,
        [
            run_row("10", "42", "1", None),
            run_row("3", "2", "0", Some("SYNTAX ERROR IN 20")),
            run_row("5", "25", "1", None),
            run_row("4", "3", "0", Some("DIVISION BY ZERO IN 30")),
        ]
    );
    // The log events' times are the app's own; the spans' are their durations (the first one
    // sleeps 200 ms inside).
    let times = &rows.run_times_ms;
    assert_eq!(times[..2], [17, 1], "execution_time_ms of the log events");
    assert!(
        (200..5_000).contains(&times[2]),
        "the 200 ms span's execution_time_ms: {times:?}"
    );
    assert!(
        (0..1_000).contains(&times[3]),
        "the failing span's execution_time_ms: {times:?}"
    );
    assert_eq!(rows.features.len(), 1);
    assert_eq!(
        rows.features[0].0,
        [s(service), s(session), s("u-42"), s("autosave")]
    );
    assert_eq!(
        rows.features[0].1,
        serde_json::json!({"interval": 30, "enabled": true})
    );
    assert!(
        rows.custom.is_empty(),
        "no custom events: {:?}",
        rows.custom
    );

    // The log events carry the client's random ids (the spans' derive from trace and span id).
    for (table, hex) in [
        ("page_visits", "SELECT HEX(event_id) FROM page_visits"),
        ("feature_usage", "SELECT HEX(event_id) FROM feature_usage"),
        (
            "program_executions",
            "SELECT HEX(event_id) FROM program_executions ORDER BY `timestamp`, id LIMIT 2",
        ),
    ] {
        for row in db.texts(hex).await {
            assert_client_uuid(table, &row[0]);
        }
    }
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
        &collector,
        transport,
        protocol,
        &format!("{service}-{}", protocol.replace('/', "-")),
        session,
    )
    .await;
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
