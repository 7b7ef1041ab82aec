//! The real `usage-collector` command as a child process, for tests that kill or stop it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A loopback address with a free port (bound, then released, so a restart can reuse it).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// A new, uniquely named folder under the system's temporary folder.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}_{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    dir
}

/// How to start a collector process; `start` may be called again for a restart.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// The collector binary (a test passes `env!("CARGO_BIN_EXE_usage-collector-e2e")`).
    pub binary: PathBuf,
    /// Database URL.
    pub database_url: String,
    /// OTLP/gRPC address (fixed, so clients reconnect after a restart).
    pub grpc: SocketAddr,
    /// OTLP/HTTP address.
    pub http: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// Spool folder (kept across restarts).
    pub spool_dir: PathBuf,
    /// Spool cap.
    pub spool_max_bytes: u64,
    /// Shutdown deadline.
    pub shutdown_timeout_secs: u64,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    /// Extra arguments (for example the telemetry endpoint).
    pub extra: Vec<String>,
    /// Environment variables set for the process (no `OTEL_*` of the test's own reaches it).
    pub env: Vec<(String, String)>,
}

impl ProcessConfig {
    /// Fresh ports and a fresh spool folder under `dir`.
    pub fn new(binary: &str, database_url: &str, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("collector folder");
        Self {
            binary: PathBuf::from(binary),
            database_url: database_url.to_owned(),
            grpc: free_addr(),
            http: free_addr(),
            admin: free_addr(),
            spool_dir: dir.join("spool"),
            spool_max_bytes: 1 << 30,
            shutdown_timeout_secs: 10,
            log: dir.join("collector.log"),
            extra: Vec::new(),
            env: Vec::new(),
        }
    }

    /// The OTLP endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The OTLP/HTTP base URL.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Starts the process and waits until it is live and ready (20 s at most each).
    pub async fn start_ready(&self) -> CollectorProcess {
        let mut collector = self.start();
        collector.wait_live(Duration::from_secs(20)).await;
        collector.wait_ready(Duration::from_secs(20)).await;
        collector
    }

    /// Starts the process (with `--migrate`), appending its output to the log file.
    pub fn start(&self) -> CollectorProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("collector log file");
        let mut command = Command::new(&self.binary);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("OTEL_") {
                command.env_remove(key);
            }
        }
        let child = command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(["serve", "--migrate"])
            .args(["--database-url", &self.database_url])
            .args(["--grpc-listen", &self.grpc.to_string()])
            .args(["--http-listen", &self.http.to_string()])
            .args(["--admin-listen", &self.admin.to_string()])
            .arg("--spool-dir")
            .arg(&self.spool_dir)
            .args(["--spool-max-bytes", &self.spool_max_bytes.to_string()])
            .args([
                "--shutdown-timeout-secs",
                &self.shutdown_timeout_secs.to_string(),
            ])
            .args(["--database-connect-timeout-secs", "1"])
            .args(&self.extra)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start usage-collector");
        CollectorProcess {
            child,
            admin: self.admin,
        }
    }
}

/// A running collector process; killed if dropped while running.
pub struct CollectorProcess {
    child: Child,
    admin: SocketAddr,
}

impl CollectorProcess {
    /// Waits until `/health/live` answers; panics at once if the process exits.
    pub async fn wait_live(&mut self, limit: Duration) {
        let admin = self.admin;
        crate::poll::until(
            "collector live (admin port status)",
            limit,
            || {
                if let Some(status) = self.child.try_wait().expect("child status") {
                    panic!("the collector exited while starting: {status}");
                }
                async move {
                    if tokio::net::TcpStream::connect(admin).await.is_err() {
                        return None;
                    }
                    Some(crate::fixtures::http_get(admin, "/health/live").await.0)
                }
            },
            |status| *status == Some(200),
        )
        .await;
    }

    /// Polls `/health/ready` until 200.
    pub async fn wait_ready(&self, limit: Duration) {
        crate::collector::wait_ready(self.admin, limit).await;
    }

    /// Waits until the spool holds no request (`usage_collector_spool_requests` is 0).
    pub async fn wait_drained(&self, limit: Duration) {
        crate::poll::until(
            "spool drained (usage_collector_spool_requests)",
            limit,
            || async {
                crate::exposition::value(&self.metrics().await, "usage_collector_spool_requests")
            },
            |records| *records == Some(0.0),
        )
        .await;
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET on the admin port.
    pub async fn get(&self, path: &str) -> (u16, String) {
        crate::fixtures::http_get(self.admin, path).await
    }

    /// SIGKILL: the process dies at once, mid-write.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then waits up to `limit` for the exit.
    pub async fn terminate(mut self, limit: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "no exit within {limit:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Err(e) = self.child.kill() {
                eprintln!("could not kill a test collector: {e}");
            }
            // Reaping fails only if it was already reaped.
            self.child.wait().ok();
        }
    }
}

/// Where a process started on a spool stands once the load is over and its spool is drained,
/// from its own `/metrics`.
///
/// `records_accepted_total` counts records acknowledged (each acceptance is one spool entry,
/// a client's retry of a request another acceptance and another entry);
/// `events_written_total` counts the events of each committed batch, a repeat included;
/// dead letters count events refused for good. With the spool empty every entry this process
/// read was written or dead-lettered, so `written + dead letters >= accepted`, and nothing
/// this load sends is refused by the database, so there are no dead letters. When the process
/// started on an empty spool it wrote only entries it accepted, each once: `written ==
/// accepted`. A process restarted on the spool of one that was killed or stopped also writes
/// what that one accepted and had not checkpointed, which its counters never saw accepted: there
/// only `written >= accepted` holds. Dropped records must be 0 in every case.
pub async fn assert_accounted(name: &str, collector: &CollectorProcess, restarted: bool) {
    let metrics = collector.metrics().await;
    let counted = crate::exposition::Accounting::read(&metrics);
    println!("{name}: {counted:?}");
    assert_eq!(counted.dropped, 0.0, "{name}: records dropped\n{metrics}");
    assert_eq!(counted.spooled_requests, 0.0, "{name}: still spooled");
    assert_eq!(
        counted.dead_letters, 0.0,
        "{name}: healthy events became dead letters\n{metrics}"
    );
    assert!(
        counted.accepted > 0.0,
        "{name}: this process accepted nothing"
    );
    if restarted {
        assert!(
            counted.written >= counted.accepted,
            "{name}: accepted records not written: {counted:?}"
        );
    } else {
        assert_eq!(
            counted.written, counted.accepted,
            "{name}: events written differ from records accepted: {counted:?}"
        );
    }
}
