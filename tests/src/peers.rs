//! The peers usage-collector runs beside on a real site, as child processes: an OpenTelemetry
//! Collector with the recommended configuration (`deploy/otelcol/config.yaml`) in front of it,
//! and Jaeger v2 behind that collector for the apps' ordinary traces.
//!
//! `scripts/peers-setup` builds both from the Go modules under `tests/peers/` and links them
//! as `tests/peers/<peer>/bin` (`scripts/test` runs it first). When a peer is missing, or was
//! built from other files than the module's current ones, the functions here panic saying to
//! run it: a peer test never passes without having run its peer.
//!
//! Every peer listens on 127.0.0.1 only, on free ports, with its files in a folder of its own,
//! so several tests can run theirs at once. Each is a [`Service`]: one that does not come up
//! fails the test quoting its log, and a test that fails later prints its peers' logs when they
//! are dropped (and keeps their folders).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use prost::bytes::Bytes;

use crate::clients::repo_root;
use crate::otlp_http;
use crate::process::{free_addr, temp_dir};
use crate::service::Service;

/// The script that builds the peers.
pub const SETUP: &str = "scripts/peers-setup";

/// The recommended OpenTelemetry Collector configuration, relative to the repository.
pub const OTELCOL_CONFIG: &str = "deploy/otelcol/config.yaml";

/// Jaeger's configuration for the tests, relative to the repository.
pub const JAEGER_CONFIG: &str = "tests/peers/jaeger/config.yaml";

/// How long a peer may take to come up (its first start on a busy machine reads a 60 MB
/// binary from a cold disk).
const START_LIMIT: Duration = Duration::from_secs(60);

/// Lines of a peer's log printed when a failing test drops it.
const TAIL_LINES: usize = 60;

fn missing(what: &str, detail: impl std::fmt::Display) -> String {
    format!("not built: {what} ({detail}); run {SETUP} (scripts/test runs it before the tests)")
}

/// The binary `name` of the peer `peer` (`tests/peers/<peer>/bin/<name>`), after checking that
/// it was built from the module's current files: `scripts/peers-setup` keeps a copy of each
/// (go.mod, go.sum, the .go files) in `bin/built-from/`. Otherwise why not, and what to run.
fn built(peer: &str, name: &str) -> Result<PathBuf, String> {
    let module = repo_root().join("tests/peers").join(peer);
    let bin = module.join("bin");
    let binary = bin.join(name);
    if !binary.is_file() {
        return Err(missing(
            &format!("the peer {peer}"),
            format!("no {}", binary.display()),
        ));
    }
    let entries =
        std::fs::read_dir(&module).map_err(|e| format!("cannot list {}: {e}", module.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot list {}: {e}", module.display()))?
            .path();
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !(file == "go.mod" || file == "go.sum" || file.ends_with(".go")) {
            continue;
        }
        let current =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let built = std::fs::read(bin.join("built-from").join(&file)).ok();
        if built.as_deref() != Some(current.as_slice()) {
            return Err(missing(
                &format!("the peer {peer} for the current {file}"),
                format!("{} was built from another {file}", binary.display()),
            ));
        }
    }
    Ok(binary)
}

/// [`built`], or a panic saying why not: a peer test never passes without its peer.
fn binary(peer: &str, name: &str) -> PathBuf {
    built(peer, name).unwrap_or_else(|why| panic!("{why}"))
}

/// The OpenTelemetry Collector distribution (`tests/peers/otelcol`).
pub fn otelcol_binary() -> PathBuf {
    binary("otelcol", "otelcol-usage")
}

/// The OpenTelemetry Collector distribution, or why it cannot be run (for the bench, which
/// leaves its row out then rather than failing).
pub fn otelcol_built() -> Result<PathBuf, String> {
    built("otelcol", "otelcol-usage")
}

/// Jaeger v2 (`tests/peers/jaeger`).
pub fn jaeger_binary() -> PathBuf {
    binary("jaeger", "jaeger")
}

/// GET `path` on `addr`, or `None` while nothing listens there.
async fn get(addr: SocketAddr, path: &str) -> Option<otlp_http::Answer> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(otlp_http::request(addr, "GET", path, &[], Bytes::new()).await)
}

/// `text` with everything but letters, digits, `-`, `_` and `.` percent-encoded, for a query
/// string.
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A peer's process with its folder: on a failing test it prints its log and keeps the folder.
#[derive(Debug)]
struct Peer {
    service: Service,
    dir: PathBuf,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.service.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of {} (kept in {}):\n{}",
                self.service.log().display(),
                self.dir.display(),
                crate::service::log_tail(self.service.log(), TAIL_LINES)
            );
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}

/// Jaeger v2 with in-memory storage: OTLP/gRPC in, the query API out.
#[derive(Debug)]
pub struct Jaeger {
    peer: Peer,
    otlp: SocketAddr,
    query: SocketAddr,
}

impl Jaeger {
    /// Starts Jaeger with `tests/peers/jaeger/config.yaml` on free loopback ports and waits
    /// until its OTLP receiver and its query API answer.
    pub async fn start() -> Self {
        let binary = jaeger_binary();
        let dir = temp_dir("usage_jaeger");
        let (otlp, query, query_grpc) = (free_addr(), free_addr(), free_addr());
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(repo_root().join(JAEGER_CONFIG))
            .env("JAEGER_OTLP_GRPC_LISTEN", otlp.to_string())
            .env("JAEGER_QUERY_HTTP_LISTEN", query.to_string())
            .env("JAEGER_QUERY_GRPC_LISTEN", query_grpc.to_string())
            .current_dir(&dir);
        let mut service = Service::spawn("Jaeger", command, &dir.join("jaeger.log"));
        service.wait_listening(otlp, START_LIMIT).await;
        service
            .wait_until(
                "its query API answers /api/services with 200",
                START_LIMIT,
                || async move {
                    matches!(get(query, "/api/services").await, Some(a) if a.status == 200)
                },
            )
            .await;
        Self {
            peer: Peer { service, dir },
            otlp,
            query,
        }
    }

    /// Its OTLP/gRPC receiver, as `host:port` (what an OTLP exporter's `endpoint` takes).
    pub fn otlp_addr(&self) -> SocketAddr {
        self.otlp
    }

    /// Its query API (HTTP).
    pub fn query_addr(&self) -> SocketAddr {
        self.query
    }

    /// The traces of `service` that Jaeger holds, whatever their time, as its query API gives
    /// them (`GET /api/traces?service=…`: each with `traceID`, `spans` and `processes`), or the
    /// status and body of an answer that is not a list of traces.
    pub async fn traces(&self, service: &str) -> Result<Vec<serde_json::Value>, String> {
        // Without `start` the API looks back one hour only; tests send spans of fixed times.
        let tomorrow = std::time::SystemTime::now() + Duration::from_secs(86_400);
        let end_us = tomorrow
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a time after 1970")
            .as_micros();
        let path = format!(
            "/api/traces?service={}&start=0&end={end_us}&limit=1000",
            query_value(service)
        );
        let answer = get(self.query, &path)
            .await
            .ok_or_else(|| format!("Jaeger's query API at {} is not listening", self.query))?;
        let body = String::from_utf8_lossy(&answer.body).into_owned();
        if answer.status != 200 {
            return Err(format!("GET {path}: {} {body}", answer.status));
        }
        let json: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| format!("GET {path}: not JSON ({e}): {body}"))?;
        match json["data"].as_array() {
            Some(traces) => Ok(traces.clone()),
            // Jaeger answers a service it has never seen with `"data": null`.
            None if json["data"].is_null() && json["errors"].is_null() => Ok(Vec::new()),
            None => Err(format!("GET {path}: no list of traces: {body}")),
        }
    }

    /// The trace `trace_id` (32 hex digits) as Jaeger's query API gives it (`GET
    /// /api/traces/{id}`: `traceID`, `spans`, `processes`), `None` while Jaeger has no span of
    /// it, or the status and body of another answer.
    pub async fn trace(&self, trace_id: &str) -> Result<Option<serde_json::Value>, String> {
        let path = format!("/api/traces/{}", query_value(trace_id));
        let answer = get(self.query, &path)
            .await
            .ok_or_else(|| format!("Jaeger's query API at {} is not listening", self.query))?;
        let body = String::from_utf8_lossy(&answer.body).into_owned();
        match answer.status {
            404 => Ok(None),
            200 => {
                let json: serde_json::Value = serde_json::from_str(&body)
                    .map_err(|e| format!("GET {path}: not JSON ({e}): {body}"))?;
                Ok(json["data"]
                    .as_array()
                    .and_then(|traces| traces.first())
                    .cloned())
            }
            status => Err(format!("GET {path}: {status} {body}")),
        }
    }

    /// Every span of `service` that Jaeger holds, across its traces.
    pub async fn spans(&self, service: &str) -> Result<Vec<serde_json::Value>, String> {
        Ok(self
            .traces(service)
            .await?
            .iter()
            .flat_map(|trace| trace["spans"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        self.peer.service.log()
    }
}

/// Where an OpenTelemetry Collector with the recommended configuration sends what it receives.
#[derive(Debug, Clone, Copy)]
pub struct Backends {
    /// usage-collector's OTLP/gRPC address (`USAGE_COLLECTOR_ENDPOINT`).
    pub usage_collector: SocketAddr,
    /// Jaeger's or Tempo's OTLP/gRPC address (`TRACES_ENDPOINT`).
    pub traces: SocketAddr,
}

/// An OpenTelemetry Collector (the `tests/peers/otelcol` distribution) running
/// `deploy/otelcol/config.yaml`.
#[derive(Debug)]
pub struct OtelCol {
    peer: Peer,
    grpc: SocketAddr,
    http: SocketAddr,
    health: SocketAddr,
    metrics: SocketAddr,
}

impl OtelCol {
    /// The environment that points `deploy/otelcol/config.yaml` at `backends`, with its own
    /// listeners on the given loopback addresses and its persistent queue under `dir`.
    pub fn environment(
        backends: Backends,
        (grpc, http, health, metrics): (SocketAddr, SocketAddr, SocketAddr, SocketAddr),
        dir: &Path,
    ) -> Vec<(&'static str, String)> {
        vec![
            (
                "USAGE_COLLECTOR_ENDPOINT",
                backends.usage_collector.to_string(),
            ),
            ("USAGE_COLLECTOR_INSECURE", "true".to_owned()),
            ("TRACES_ENDPOINT", backends.traces.to_string()),
            ("TRACES_INSECURE", "true".to_owned()),
            ("OTELCOL_OTLP_GRPC_LISTEN", grpc.to_string()),
            ("OTELCOL_OTLP_HTTP_LISTEN", http.to_string()),
            ("OTELCOL_HEALTH_LISTEN", health.to_string()),
            ("OTELCOL_METRICS_HOST", metrics.ip().to_string()),
            ("OTELCOL_METRICS_PORT", metrics.port().to_string()),
            (
                "OTELCOL_FILE_STORAGE_DIR",
                dir.join("file_storage").display().to_string(),
            ),
        ]
    }

    /// Starts the collector with the recommended configuration sending to `backends`, on free
    /// loopback ports, its persistent queue in a folder of its own, and waits until its health
    /// check says it is ready and its OTLP/gRPC receiver listens.
    pub async fn start(backends: Backends) -> Self {
        Self::start_with(
            &otelcol_binary(),
            &repo_root().join(OTELCOL_CONFIG),
            backends,
        )
        .await
    }

    /// As [`OtelCol::start`], with the binary `binary` running the configuration `config`
    /// (which reads the same variables as the recommended one, those it needs).
    pub async fn start_with(binary: &Path, config: &Path, backends: Backends) -> Self {
        let dir = temp_dir("usage_otelcol");
        let (grpc, http, health, metrics) = (free_addr(), free_addr(), free_addr(), free_addr());
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(config)
            .envs(Self::environment(
                backends,
                (grpc, http, health, metrics),
                &dir,
            ))
            .current_dir(&dir);
        let mut service =
            Service::spawn("OpenTelemetry Collector", command, &dir.join("otelcol.log"));
        service
            .wait_until("its health check answers 200", START_LIMIT, || async move {
                matches!(get(health, "/").await, Some(a) if a.status == 200)
            })
            .await;
        service.wait_listening(grpc, START_LIMIT).await;
        Self {
            peer: Peer { service, dir },
            grpc,
            http,
            health,
            metrics,
        }
    }

    /// Its OTLP/gRPC endpoint as a URL, for an SDK or a tonic client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Its OTLP/HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// Its health check (the `health_check` extension).
    pub fn health_addr(&self) -> SocketAddr {
        self.health
    }

    /// Its own metrics, in Prometheus text (`otelcol_…`).
    pub async fn metrics(&self) -> String {
        let answer = get(self.metrics, "/metrics")
            .await
            .unwrap_or_else(|| panic!("nothing listens on {} (its metrics)", self.metrics));
        let body = String::from_utf8_lossy(&answer.body).into_owned();
        assert_eq!(answer.status, 200, "GET /metrics: {body}");
        body
    }

    /// The folder of its persistent sending queue (the `file_storage` extension).
    pub fn storage_dir(&self) -> PathBuf {
        self.peer.dir.join("file_storage")
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        self.peer.service.log()
    }

    /// Its log's text so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.peer.service.pid()
    }
}
