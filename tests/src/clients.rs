//! Real OpenTelemetry clients as child processes: the Python and Node.js programs of
//! `tests/clients/`, and the browser example `examples/browser/` in headless Chromium, served
//! from its own origin; a web IDE session played by a client ([`Run`]) and its rows read back
//! ([`Rows`], [`assert_python_session`]), for the client tests and the tests behind an
//! OpenTelemetry Collector alike.
//!
//! `scripts/clients-setup` installs what they need (`scripts/test` runs it first). When
//! something is missing or older than its lock file, the functions here panic saying to run
//! it: a client test never passes without having run its client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::db::TestDb;

/// The script that installs the clients' tools.
pub const SETUP: &str = "scripts/clients-setup";

/// Where Debian's chromium package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the repository")
        .to_owned()
}

/// `tests/clients/<rest>` in the repository.
pub fn client_path(rest: &str) -> PathBuf {
    repo_root().join("tests/clients").join(rest)
}

fn missing(what: &str, detail: impl std::fmt::Display) -> ! {
    panic!("not installed: {what} ({detail}); run {SETUP} (scripts/test runs it before the tests)")
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The Python interpreter of the client's virtual environment, after checking that the
/// environment was made from the current `requirements.txt`.
pub fn python() -> PathBuf {
    let venv = client_path("python/.venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        missing(
            "the Python client's environment",
            format!("no {}", python.display()),
        );
    }
    let wanted = read(&client_path("python/requirements.txt")).expect("requirements.txt");
    if read(&venv.join("requirements.txt")).as_deref() != Some(wanted.as_str()) {
        missing(
            "the Python client's environment for the current requirements.txt",
            format!("{} was made from other requirements", venv.display()),
        );
    }
    python
}

/// The Node.js program, after checking that the client's `node_modules` was installed from
/// the current `package-lock.json`.
pub fn node() -> PathBuf {
    let modules = client_path("node/node_modules");
    // scripts/clients-setup keeps a copy of the lock file beside the linked node_modules.
    let installed = read(&modules.join("../package-lock.json"));
    let wanted = read(&client_path("node/package-lock.json")).expect("package-lock.json");
    match installed {
        None => missing(
            "the Node client's packages",
            format!("no {}", modules.display()),
        ),
        Some(lock) if lock != wanted => missing(
            "the Node client's packages for the current package-lock.json",
            format!("{} was installed from another lock file", modules.display()),
        ),
        Some(_) => {}
    }
    let node = PathBuf::from("node");
    match Command::new(&node).arg("--version").output() {
        Ok(out) if out.status.success() => node,
        Ok(out) => missing("Node.js", format!("`node --version`: {}", out.status)),
        Err(e) => missing("Node.js", format!("`node`: {e}")),
    }
}

/// Debian's Chromium.
pub fn chromium() -> PathBuf {
    let chromium = PathBuf::from(CHROMIUM);
    if !chromium.exists() {
        missing("Chromium", format!("no {CHROMIUM}"));
    }
    chromium
}

/// What a finished client printed.
#[derive(Debug)]
pub struct Output {
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `command` to its end (at most `limit`, then it is killed) and returns what it printed;
/// panics, quoting its output, unless it exits 0. Blocking: call it from `spawn_blocking`.
pub fn run(what: &str, mut command: Command, limit: Duration) -> Output {
    let dir = crate::process::temp_dir("usage_client");
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let file = |path: &Path| std::fs::File::create(path).expect("a client output file");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file(&out_path))
        .stderr(file(&err_path))
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {command:?}: {e}"));
    let started = Instant::now();
    let status = loop {
        match child.try_wait().expect("wait for a client") {
            Some(status) => break Some(status),
            None if started.elapsed() > limit => {
                if let Err(e) = child.kill() {
                    eprintln!("{what}: could not kill the client: {e}");
                }
                child.wait().expect("wait for a killed client");
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let output = Output {
        stdout: read(&out_path).unwrap_or_default(),
        stderr: read(&err_path).unwrap_or_default(),
    };
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("could not remove {}: {e}", dir.display());
    }
    match status {
        Some(status) if status.success() => output,
        Some(status) => panic!(
            "{what} failed ({status}):\n--- stdout\n{}\n--- stderr\n{}",
            output.stdout, output.stderr
        ),
        None => panic!(
            "{what} did not finish within {limit:?}:\n--- stdout\n{}\n--- stderr\n{}",
            output.stdout, output.stderr
        ),
    }
}

/// Loads `url` in headless Chromium (a new profile each time) until the page is idle (its
/// requests answered, at most `budget` of virtual time) and returns the page's DOM then.
/// Blocking: call it from `spawn_blocking`.
pub fn chromium_dom(url: &str, budget: Duration) -> String {
    let profile = crate::process::temp_dir("usage_chromium");
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .arg("--dump-dom")
        .arg(url);
    let output = run(
        &format!("headless Chromium loading {url}"),
        command,
        Duration::from_secs(60),
    );
    if let Err(e) = std::fs::remove_dir_all(&profile) {
        eprintln!("could not remove {}: {e}", profile.display());
    }
    output.stdout
}

/// The element with `id="<id>"` in a dumped DOM: its attributes and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// `name="value"` attributes, in order.
    pub attributes: Vec<(String, String)>,
    /// Text up to the element's first child tag or end tag.
    pub text: String,
}

impl Element {
    /// The value of attribute `name`.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Finds the element with `id="<id>"` in Chromium's `--dump-dom` output (which writes
/// attributes as `name="value"`, with `&quot;` and `&amp;` escaped).
pub fn element_by_id(dom: &str, id: &str) -> Option<Element> {
    let at = dom.find(&format!(" id=\"{id}\""))?;
    let open = dom[..at].rfind('<')?;
    let close = at + dom[at..].find('>')?;
    let tag = &dom[open + 1..close];
    let mut attributes = Vec::new();
    let mut rest = tag.split_once(' ').map_or("", |(_, r)| r);
    while let Some((name, after)) = rest.split_once("=\"") {
        let (value, after) = after.split_once('"')?;
        attributes.push((name.trim().to_owned(), unescape(value)));
        rest = after;
    }
    let body = &dom[close + 1..];
    let text = unescape(&body[..body.find('<').unwrap_or(body.len())]);
    Some(Element { attributes, text })
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A static file server on 127.0.0.1 (its own port, so its pages have their own origin),
/// serving one folder: `GET /name` answers the file `name` in it, `/` answers `index.html`.
/// Stopped when dropped.
pub struct PageServer {
    /// Its address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    /// Serves `dir` on a new loopback port.
    pub async fn start(dir: PathBuf) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the page server");
        let addr = listener.local_addr().expect("page server address");
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        eprintln!("page server: accept: {e}");
                        continue;
                    }
                };
                let dir = dir.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_file(stream, &dir).await {
                        eprintln!("page server: {e}");
                    }
                });
            }
        });
        Self { addr, task }
    }

    /// Its origin, as a browser names it in `Origin` headers.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_file(mut stream: tokio::net::TcpStream, dir: &Path) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split(' ').nth(1).unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let name = match path.trim_start_matches('/') {
        "" => "index.html",
        name => name,
    };
    let file = (!name.contains("..") && !name.contains('\\'))
        .then(|| dir.join(name))
        .and_then(|path| std::fs::read(path).ok());
    let (status, kind, body) = match file {
        Some(body) => {
            let kind = match Path::new(name).extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript; charset=utf-8",
                _ => "application/octet-stream",
            };
            ("200 OK", kind, body)
        }
        None => (
            "404 Not Found",
            "text/plain",
            format!("no {name}").into_bytes(),
        ),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}

// --- A web IDE session played by a client, and its rows read back --------------------------

/// How long a client may take to run (they take about a second).
pub const CLIENT_LIMIT: Duration = Duration::from_secs(90);

fn s(text: &str) -> Option<String> {
    Some(text.to_owned())
}

/// Microseconds since the epoch, now.
pub fn now_us() -> i64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("a clock after 1970");
    i64::try_from(since.as_micros()).expect("a time that fits")
}

/// SQL for a DATETIME column as microseconds since the epoch (the collector writes UTC).
pub fn us(column: &str) -> String {
    format!("CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {column}) AS CHAR)")
}

/// A column read as text, as a number (panics naming it otherwise).
pub fn number(value: &Option<String>) -> i64 {
    value
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a number, not {value:?}"))
}

/// A client's command with no OpenTelemetry variable of this process leaking into it.
pub fn client_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    command
}

/// One run of a client playing a web IDE session: what it was told, and when it ran.
#[derive(Debug, Clone)]
pub struct Run {
    /// Its `OTEL_SERVICE_NAME`.
    pub service: String,
    /// The session it played.
    pub session: String,
    /// When it started, in microseconds since the epoch.
    pub started_us: i64,
    /// When it had exited.
    pub finished_us: i64,
}

impl Run {
    /// Runs `command` (a client playing `session` as `service`) to its end, its exporter
    /// `protocol` sending to `endpoint` (`OTEL_EXPORTER_OTLP_ENDPOINT`). It is not waited for
    /// what it sent to be written: that is the caller's business.
    pub async fn client(
        what: String,
        mut command: Command,
        (endpoint, protocol): (&str, &str),
        service: &str,
        session: &str,
    ) -> Self {
        command
            .env("OTEL_SERVICE_NAME", service)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .arg(session);
        let started_us = now_us();
        let label = what.clone();
        let output = tokio::task::spawn_blocking(move || run(&label, command, CLIENT_LIMIT))
            .await
            .expect("the client's thread");
        let finished_us = now_us();
        // Shown when a check after it fails: what the client's SDK reported.
        eprintln!(
            "{what} exited 0\n--- stdout\n{}\n--- stderr\n{}",
            output.stdout, output.stderr
        );
        Self {
            service: service.to_owned(),
            session: session.to_owned(),
            started_us,
            finished_us,
        }
    }

    /// Checks that `time` (microseconds) lies within the run.
    pub fn assert_during(&self, what: &str, time: i64) {
        assert!(
            (self.started_us..=self.finished_us).contains(&time),
            "{what}: {time} µs is not within the client's run ({} ..= {} µs)",
            self.started_us,
            self.finished_us
        );
    }
}

/// Checks that `hex` is an event id the client chose: a random (version 4) UUID.
pub fn assert_client_uuid(what: &str, hex: &Option<String>) {
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
#[derive(Debug)]
pub struct Rows {
    /// service, session_id, user_id, page_path, referrer, user_agent, ip_address (by time).
    pub page_visits: Vec<Vec<Option<String>>>,
    /// session_id, service, user_id, user_agent, ip_address, programs_run, lines_executed,
    /// errors_encountered, end_time set, duration_seconds = end − start in whole seconds.
    pub session: Vec<Vec<Option<String>>>,
    /// service, session_id, user_id, program_lines, lines_executed, success, error_message
    /// (by time), with execution_time_ms apart.
    pub runs: Vec<Vec<Option<String>>>,
    /// execution_time_ms of each run, in the same order.
    pub run_times_ms: Vec<i64>,
    /// service, session_id, user_id, feature_name, and feature_data as JSON.
    pub features: Vec<(Vec<Option<String>>, serde_json::Value)>,
    /// event_name, service, session_id, and attributes as JSON.
    pub custom: Vec<(Vec<Option<String>>, serde_json::Value)>,
}

impl Rows {
    /// Reads the rows, and checks for every event row that its time lies within the run and
    /// that the session's times span them: start = earliest, last activity = end = latest.
    /// Event ids of log events must be the client's UUIDs, all distinct.
    pub async fn read(db: &TestDb, run: &Run) -> Self {
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

/// Checks the rows of `web_ide.py`'s session (`tests/clients/python/web_ide.py`), column by
/// column.
pub async fn assert_python_session(db: &TestDb, run: &Run) {
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
