//! An in-process collector on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use usage_collector::config::{DatabaseSettings, Listen};
use usage_collector::health::Metrics;
use usage_collector::spool::Spool;
use usage_collector::{Application, Settings};

use crate::db::TestDb;

/// Settings for a test collector: loopback, port 0, this database, a fresh spool folder
/// (removed when the collector is stopped, unless kept for a restart).
pub fn settings(database_url: &str) -> Settings {
    let mut settings = Settings::defaults();
    settings.database = DatabaseSettings::new(database_url);
    settings.grpc_listen = "127.0.0.1:0".parse().expect("address");
    settings.admin_listen = "127.0.0.1:0".parse().expect("address");
    settings.http_listen = Listen(Some("127.0.0.1:0".parse().expect("address")));
    settings.spool.dir = std::env::temp_dir().join(format!(
        "usage_test_spool_{}",
        uuid::Uuid::new_v4().simple()
    ));
    settings.shutdown_timeout = Duration::from_secs(5);
    settings.instance = "test-collector".to_owned();
    settings
}

/// Polls `/health/ready` on the admin address `admin` until 200, for a collector in this
/// process or in a child process alike.
pub(crate) async fn wait_ready(admin: SocketAddr, limit: Duration) {
    crate::poll::until(
        "collector ready: /health/ready (status, body)",
        limit,
        || crate::fixtures::http_get(admin, "/health/ready"),
        |(status, _)| *status == 200,
    )
    .await;
}

/// A fresh MariaDB database and a collector with migrations applied, ready, writing to it.
pub async fn start_with_mysql() -> (TestDb, TestCollector) {
    let db = TestDb::mysql().await;
    let collector = TestCollector::start(settings(db.url())).await;
    (db, collector)
}

/// A running collector; stopped when dropped.
pub struct TestCollector {
    /// OTLP/gRPC address.
    pub grpc: SocketAddr,
    /// OTLP/HTTP address (`None` when switched off).
    pub http: Option<SocketAddr>,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Its spool.
    pub spool: Spool,
    spool_dir: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestCollector {
    /// Starts a collector with migrations and waits until it is ready (10 s at most).
    pub async fn start(settings: Settings) -> Self {
        let collector = Self::start_unready(settings, true).await;
        collector.wait_ready(Duration::from_secs(10)).await;
        collector
    }

    /// Starts a collector without waiting for readiness.
    pub async fn start_unready(settings: Settings, migrate: bool) -> Self {
        let spool_dir = settings.spool.dir.clone();
        let app = Application::build(settings, migrate)
            .await
            .expect("collector builds");
        let (grpc, http, admin, metrics, spool) = (
            app.grpc_addr(),
            app.http_addr(),
            app.admin_addr(),
            app.metrics(),
            app.spool(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            app.run(async {
                // A dropped sender also means stop.
                let _ = stopped.await;
            })
            .await
            .expect("collector runs and stops cleanly");
        });
        Self {
            grpc,
            http,
            admin,
            metrics,
            spool,
            spool_dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The gRPC endpoint as a URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The OTLP/HTTP address (panics when OTLP/HTTP is switched off).
    pub fn http_addr(&self) -> SocketAddr {
        self.http.expect("OTLP/HTTP is on")
    }

    /// The OTLP/HTTP base URL (`http://127.0.0.1:port`), as `OTEL_EXPORTER_OTLP_ENDPOINT` takes
    /// it for an `http/protobuf` or `http/json` exporter (which adds `/v1/logs`, `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    /// The gRPC endpoint as an `https://` URL, for a collector with TLS settings
    /// (`settings.tls`); its certificate must name `127.0.0.1`.
    pub fn tls_endpoint(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// GET on the admin port: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        crate::fixtures::http_get(self.admin, path).await
    }

    /// Polls `/health/ready` until 200.
    pub async fn wait_ready(&self, limit: Duration) {
        wait_ready(self.admin, limit).await;
    }

    /// Waits until every accepted request is in the database (the spool is empty).
    pub async fn wait_written(&self, limit: Duration) {
        crate::poll::until(
            "spool drained (requests, bytes)",
            limit,
            || async { self.spool.depth() },
            |(requests, _)| *requests == 0,
        )
        .await;
    }

    /// Stops the collector, waits until it has stopped, and removes its spool folder.
    pub async fn stop(self) {
        let dir = self.spool_dir.clone();
        self.stop_keeping_spool().await;
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("could not remove {}: {e}", dir.display());
        }
    }

    /// Stops the collector and waits until it has stopped; the spool stays for a restart.
    pub async fn stop_keeping_spool(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).expect("collector still running");
        }
        if let Some(task) = self.task.take() {
            task.await.expect("collector task");
        }
    }
}

impl Drop for TestCollector {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
