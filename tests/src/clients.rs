//! Real OpenTelemetry clients as child processes: the Python and Node.js programs of
//! `tests/clients/`, and the browser example `examples/browser/` in headless Chromium, served
//! from its own origin.
//!
//! `scripts/clients-setup` installs what they need (`scripts/test` runs it first). When
//! something is missing or older than its lock file, the functions here panic saying to run
//! it: a client test never passes without having run its client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
