//! A server a test starts (Prometheus, an OpenTelemetry Collector, Jaeger, a database node) as
//! a child process with its own log file.
//!
//! The rule, as in `scripts/lib/service.sh`: when it does not come up — it exited, or it did not
//! answer in time — the test fails saying which, with the last lines of that server's own log,
//! so the cause is on the screen and not only in a file the test removes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Lines of a server's log quoted when it fails to come up.
const TAIL_LINES: usize = 40;

/// A server process with its log file; killed when dropped.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The last `lines` lines of a file, or a sentence saying why there are none.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) if bytes.is_empty() => format!("({} is empty)", path.display()),
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

impl Service {
    /// Starts `command` with stdout and stderr appended to `log` (created if missing).
    /// Panics, naming the program, if it cannot be started at all.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{name}: cannot open its log {}: {e}", log.display()));
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {command:?}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        }
    }

    /// The server's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, TAIL_LINES)
    }

    /// Panics with the log's last lines if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("child status") {
            panic!(
                "{} exited ({status}); last lines of its log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }

    /// Waits until `addr` accepts TCP connections. Panics at once if the process exits, or after
    /// `limit`, with the log's last lines.
    pub async fn wait_listening(&mut self, addr: SocketAddr, limit: Duration) {
        self.wait_until(&format!("listening on {addr}"), limit, || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
    }

    /// Waits until `ready` says yes. Panics at once if the process exits, or after `limit`,
    /// naming `what` and quoting the log's last lines.
    pub async fn wait_until<F, Fut>(&mut self, what: &str, limit: Duration, mut ready: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if ready().await {
                return;
            }
            self.assert_running();
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{} did not come up ({what}) within {limit:?}; last lines of its log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(crate::poll::EVERY * 2).await;
        }
    }

    /// SIGKILL, and waits for the exit.
    pub fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Err(e) = self.child.kill() {
                eprintln!("could not kill {}: {e}", self.name);
            }
            // Reaping fails only if it was already reaped.
            self.child.wait().ok();
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit (SIGKILL after that).
    pub fn terminate(&mut self, limit: Duration) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if !matches!(sent, Ok(status) if status.success()) {
            eprintln!("could not send SIGTERM to {}", self.name);
        }
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{} did not stop within {limit:?} of SIGTERM: killing it",
            self.name
        );
        self.kill();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}
