//! Wiring: build every stage from the settings, run them, stop them in order.
//!
//! [`Application::build`] binds the listeners first (so tests can ask for port 0 and read the
//! port back), opens (and recovers) the spool, then starts the writer and the startup
//! verification, which keeps retrying with backoff until the database is usable. Requests are
//! accepted into the spool from the start; the writer begins once verification passes.
//! [`Application::run`] serves until the shutdown future resolves, then stops in order: new
//! requests are refused, in-flight ones finish, the writer keeps writing until the spool is
//! empty or the shutdown timeout passes (the rest waits in the spool for the next start), and
//! the pool closes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::catalog::{Catalog, Current};
use crate::config::{ConnectionSettings, LimitSettings, Settings};
use crate::health::metrics::KnownLabels;
use crate::health::{Check, Health, Metrics};
use crate::net::Incoming;
use crate::net::tls::{ALPN_H2, ALPN_HTTP1, Security, Tls, TlsFiles};
use crate::receiver::admission::Admission;
use crate::receiver::shape::{Limits, Shape};
use crate::receiver::{self, Ingest};
use crate::retention::Retention;
use crate::sink::{Sink, Step, VerifyError};
use crate::spool::Spool;
use crate::writer::checkpoint::Parts as WriterParts;
use crate::writer::dead_letters::DeadLetters;
use crate::writer::send::Sender;
use crate::writer::{Writer, WriterTask};

/// First wait between failed verification runs; doubled (with jitter) up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Longest wait between failed verification runs.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long past the shutdown timeout a stopping writer may take to finish its last attempt.
const WRITER_GRACE: Duration = Duration::from_secs(5);
/// How long a stopping collector refuses requests before it closes its connections.
const REFUSE_BEFORE_CLOSE: Duration = Duration::from_millis(300);
/// How often the database is checked after startup (a lost one shows within a few seconds,
/// even with no traffic).
const DATABASE_PROBE: Duration = Duration::from_secs(5);

/// The collector could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The database settings are unusable.
    #[error(transparent)]
    Open(#[from] crate::sink::handle::OpenError),
    /// The gRPC server failed.
    #[error("OTLP/gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The tokens file cannot be used.
    #[error(transparent)]
    Tokens(#[from] crate::receiver::auth::AuthError),
    /// The decode threads could not be started.
    #[error("cannot start the decode threads: {0}")]
    Threads(std::io::Error),
    /// The limits contradict each other.
    #[error(transparent)]
    Limits(#[from] crate::config::ConfigError),
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    /// A listener's TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    /// The tracking plan cannot be used.
    #[error(transparent)]
    Plan(#[from] crate::catalog::settings::LoadError),
}

/// A built collector, listening but not yet serving.
pub struct Application {
    grpc: TcpListener,
    /// OTLP/HTTP, unless switched off.
    http: Option<TcpListener>,
    cors: crate::config::CorsOrigins,
    admin: TcpListener,
    ingest: Ingest,
    writer: Writer,
    writer_task: WriterTask,
    verification: tokio::task::JoinHandle<()>,
    heartbeat: tokio::task::JoinHandle<()>,
    retention: Option<tokio::task::JoinHandle<()>>,
    telemetry: Option<tokio::task::JoinHandle<()>>,
    sink: Sink,
    max_request_bytes: usize,
    connections: ConnectionSettings,
    tokens: Option<Arc<crate::receiver::auth::Tokens>>,
    token_watch: Option<tokio::task::JoinHandle<()>>,
    /// TLS (or plain TCP) on the OTLP and admin listeners.
    otlp_security: Security,
    /// The OTLP listener's TLS, for OTLP/HTTP (HTTP/1.1 only in ALPN).
    http_security: Security,
    admin_security: Security,
    /// The tasks that read the TLS files again when they change.
    tls_watch: Vec<tokio::task::JoinHandle<()>>,
    /// The task that reads the tracking plan again (SIGHUP, a change of the file).
    plan_watch: tokio::task::JoinHandle<()>,
    /// `--instance` and the plan file, for `/status`.
    instance: String,
    plan_file: Option<std::path::PathBuf>,
    shutdown_timeout: Duration,
}

impl Application {
    /// Binds the listeners and starts the writer and the startup verification.
    /// With `migrate`, migrations are applied before verification; the embedded SQLite
    /// database is always migrated, so the collector runs with nothing set up.
    pub async fn build(settings: Settings, migrate: bool) -> Result<Self, AppError> {
        check_limits(&settings.limits)?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind { addr, source })
        };
        let grpc = bind(settings.grpc_listen).await?;
        let http = match settings.http_listen.0 {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let admin = bind(settings.admin_listen).await?;
        let catalog = Current::new(settings.catalog_of(settings.catalog.load()?));
        let sink = Sink::open(&settings.database, catalog.clone())?;
        let metrics = Arc::new(Metrics::new());
        start_metrics_at_zero(&metrics, &catalog.get());
        if sink.hosts().is_some() {
            let sink = sink.clone();
            metrics.attach_database(Arc::new(move || {
                let (hosts, current) = sink.hosts().unwrap_or_default();
                crate::health::metrics::DatabaseHosts {
                    hosts,
                    current,
                    failovers: sink.moves(),
                }
            }));
        }
        let handshake = settings.connections.handshake_timeout;
        let security = |files: Option<TlsFiles>, listener, alpn: &[&[u8]]| {
            files.map_or(Ok(Security::Plain), |files| {
                Tls::load(files, listener, alpn, handshake, metrics.clone()).map(Security::Tls)
            })
        };
        // h2 for gRPC, preferred; http/1.1 offered too, as on the OTLP/HTTP listener (a client
        // that picks it here gets no gRPC: the server speaks HTTP/2 only).
        let otlp_security = security(settings.tls.otlp()?, "otlp", &[ALPN_H2, ALPN_HTTP1])?;
        // OTLP/HTTP: the OTLP listener's certificate; HTTP/1.1 only (a client offered h2 would
        // pick it and find no HTTP/2 server).
        let http_security = if settings.http_listen.0.is_some() {
            security(settings.tls.otlp()?, "otlp_http", &[ALPN_HTTP1])?
        } else {
            Security::Plain
        };
        // The admin server speaks HTTP/1.1 only.
        let admin_security = security(settings.tls.admin()?, "admin", &[ALPN_HTTP1])?;
        let health = Health::new();
        let dir = settings.spool.dir.clone();
        let max_bytes = settings.spool.max_bytes;
        let (spool, recovery) = tokio::task::spawn_blocking(move || Spool::open(&dir, max_bytes))
            .await
            .map_err(|e| crate::spool::SpoolError::Io {
                path: settings.spool.dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        tracing::info!(
            dir = %settings.spool.dir.display(),
            replay_records = recovery.records,
            replay_bytes = recovery.bytes,
            torn_bytes = recovery.torn_bytes,
            quarantined = recovery.quarantined.len(),
            "spool opened"
        );
        metrics
            .spool_quarantined_segments
            .inc_by(recovery.quarantined.len() as u64);
        let depth: crate::health::metrics::SpoolGauge = {
            let spool = spool.clone();
            Arc::new(move || spool.depth())
        };
        metrics.attach_spool(spool.capacity(), depth.clone());
        health.attach_spool(spool.capacity(), depth);
        let dead_letters = DeadLetters::new(
            sink.clone(),
            &settings.spool.dir,
            metrics.clone(),
            settings.writer.write_timeout,
        );
        let cache = Arc::new(crate::spool::cache::RowCache::new(
            settings.limits.row_cache_bytes,
        ));
        let (writer, writer_task) = Writer::spawn(WriterParts {
            spool: spool.clone(),
            sender: Sender::new(
                sink.clone(),
                metrics.clone(),
                health.clone(),
                settings.writer.write_timeout,
            )
            .with_test_panics(settings.writer.test_panics),
            settings: settings.writer.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            dead_letters,
            cache: cache.clone(),
        });
        let heartbeat = tokio::spawn(send_heartbeats(
            spool.clone(),
            health.clone(),
            settings.instance.clone(),
            settings.heartbeat_interval,
        ));
        let telemetry = settings.telemetry.metrics().map(|endpoint| {
            tokio::spawn(crate::telemetry::metrics::push(
                endpoint.to_owned(),
                metrics.clone(),
                settings.instance.clone(),
                settings.telemetry_interval,
            ))
        });
        let migrate = migrate || sink.is_embedded();
        if sink.is_blackhole() {
            tracing::warn!(
                "blackhole sink: rows are discarded and nothing is stored (for measuring the receive path only)"
            );
        }
        // A verification run or a ping may wait for a connection, then for its statements.
        let probe_timeout = settings.database.connect_timeout + settings.writer.write_timeout;
        let (verified_tx, verified_rx) = tokio::sync::oneshot::channel();
        let verification = tokio::spawn({
            let (sink, health, metrics) = (sink.clone(), health.clone(), metrics.clone());
            async move {
                verify_until_ready(&sink, migrate, &health, &metrics, probe_timeout).await;
                // No sweeper (retention off) is no reason to stop.
                let _no_sweeper = verified_tx.send(());
                watch_database(&sink, &health, &metrics, probe_timeout).await;
            }
        });
        let tokens = match &settings.auth.tokens_file {
            Some(path) => Some(Arc::new(crate::receiver::auth::Tokens::load(path)?)),
            None => None,
        };
        let retention =
            (Retention::enabled(&settings.retention) && !sink.is_blackhole()).then(|| {
                let retention = Retention::new(
                    sink.clone(),
                    metrics.clone(),
                    settings.retention.clone(),
                    settings.writer.write_timeout,
                )
                .with_instance(&settings.instance);
                tokio::spawn(retention.run(async move { verified_rx.await.is_ok() }))
            });
        let plan_watch = match &settings.catalog.file {
            Some(file) => tokio::spawn(
                crate::reload::Reload::new(
                    file.clone(),
                    Arc::new(settings.clone()),
                    catalog.clone(),
                    sink.clone(),
                    metrics.clone(),
                    migrate,
                )
                .watch(),
            ),
            None => tokio::spawn(crate::reload::ignore_hangups()),
        };
        let decoders = crate::receiver::decoders::Decoders::start(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        )
        .map_err(AppError::Threads)?;
        let limits = &settings.limits;
        let admission = Admission::new(
            Limits {
                max_records: limits.max_records_per_request,
                max_attributes: limits.max_attributes_per_record,
                max_value_bytes: limits.max_attribute_value_bytes,
            },
            limits.max_inflight_bytes,
            spool.clone(),
            metrics.clone(),
        );
        Ok(Self {
            grpc,
            http,
            cors: settings.http_cors_origins.clone(),
            admin,
            ingest: Ingest {
                catalog,
                spool,
                metrics,
                health,
                cache,
                admission,
                decoders,
                non_usage_log: Arc::default(),
            },
            writer,
            writer_task,
            verification,
            heartbeat,
            retention,
            telemetry,
            sink,
            max_request_bytes: settings.limits.max_request_bytes,
            connections: settings.connections.clone(),
            token_watch: tokens.clone().map(|t| tokio::spawn(t.watch())),
            tokens,
            tls_watch: [&otlp_security, &http_security, &admin_security]
                .into_iter()
                .filter_map(|s| s.tls().map(|tls| tokio::spawn(tls.clone().watch())))
                .collect(),
            otlp_security,
            http_security,
            admin_security,
            plan_watch,
            instance: settings.instance.clone(),
            plan_file: settings.catalog.file.clone(),
            shutdown_timeout: settings.shutdown_timeout,
        })
    }

    /// The OTLP/gRPC address actually bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The OTLP/HTTP address actually bound, unless OTLP/HTTP is switched off.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    /// The admin HTTP address actually bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Readiness state.
    pub fn health(&self) -> Health {
        self.ingest.health.clone()
    }

    /// The spool (for its depth).
    pub fn spool(&self) -> Spool {
        self.ingest.spool.clone()
    }

    /// Metric handles.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.ingest.metrics.clone()
    }

    /// Serves until `shutdown` resolves, then stops in order.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AppError> {
        let (stop, stopped) = watch::channel(false);
        let wait = |mut rx: watch::Receiver<bool>| async move {
            // An error means the sender is gone, which is also a reason to stop.
            let _stopping = rx.wait_for(|stop| *stop).await;
        };
        let http_addr = self
            .http_addr()
            .map_or_else(|| "off".to_owned(), |a| a.to_string());
        tracing::info!(
            grpc = %self.grpc_addr(),
            grpc_tls = self.otlp_security.tls().is_some(),
            http = %http_addr,
            http_tls = self.http_security.tls().is_some(),
            admin = %self.admin_addr(),
            admin_tls = self.admin_security.tls().is_some(),
            database = %self.sink.target(),
            "usage collector listening"
        );
        let health = self.ingest.health.clone();
        let status = crate::ops::status::source(crate::ops::status::Parts {
            instance: self.instance.clone(),
            plan_file: self.plan_file.clone(),
            catalog: self.ingest.catalog.clone(),
            sink: self.sink.clone(),
            spool: self.ingest.spool.clone(),
            health: health.clone(),
            metrics: self.ingest.metrics.clone(),
        });
        let admin_router =
            crate::health::http::router(health.clone(), self.ingest.metrics.clone(), Some(status));
        let admin = tokio::spawn(crate::health::http::serve(
            Incoming::new(
                self.admin,
                self.connections.handshake_timeout,
                self.connections.max_connections,
            ),
            self.admin_security.clone(),
            admin_router,
            self.connections.admin_timeout,
            wait(stopped.clone()),
        ));
        let http = self.http.map(|listener| {
            tokio::spawn(receiver::http::serve(
                Incoming::new(
                    listener,
                    self.connections.handshake_timeout,
                    self.connections.max_connections,
                ),
                self.http_security.clone(),
                self.ingest.clone(),
                receiver::http::Serving {
                    max_request_bytes: self.max_request_bytes,
                    connections: self.connections.clone(),
                    tokens: self.tokens.clone(),
                    cors: self.cors,
                },
                wait(stopped.clone()),
            ))
        });
        let grpc = tokio::spawn(receiver::serve(
            crate::net::tls::Connections::new(
                Incoming::new(
                    self.grpc,
                    self.connections.handshake_timeout,
                    self.connections.max_connections,
                ),
                self.otlp_security.clone(),
            ),
            self.ingest,
            receiver::grpc::Serving {
                max_request_bytes: self.max_request_bytes,
                connections: self.connections.clone(),
                tokens: self.tokens.clone(),
            },
            wait(stopped),
        ));
        shutdown.await;
        tracing::info!(
            timeout_secs = self.shutdown_timeout.as_secs(),
            "shutting down: refusing new requests, finishing those in flight"
        );
        health.set_closing();
        // One deadline for the whole stop: requests in flight, then the writer.
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        // Answer UNAVAILABLE (with RetryInfo) for a moment before closing connections, so
        // clients back off and retry elsewhere instead of seeing a broken stream.
        tokio::time::sleep(REFUSE_BEFORE_CLOSE).await;
        if stop.send(true).is_err() {
            tracing::debug!("servers already stopped");
        }
        // Requests in flight get the shutdown timeout to finish; a stuck one does not hold the
        // exit (the same deadline bounds the writer).
        // A server still running at the deadline is stopped (its connections with it), so
        // nothing answers after the writer and the pool are closed.
        let mut grpc = grpc;
        let grpc_result = match tokio::time::timeout_at(deadline, &mut grpc).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    "requests still in flight at the shutdown timeout; not waiting for them"
                );
                grpc.abort();
                Ok(Ok(()))
            }
        };
        if let Some(mut http) = http {
            match tokio::time::timeout_at(deadline, &mut http).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "OTLP/HTTP server task ended abnormally"),
                Err(_) => {
                    tracing::warn!(
                        "OTLP/HTTP requests still in flight at the shutdown timeout; not waiting for them"
                    );
                    http.abort();
                }
            }
        }
        let admin_result = admin.await;
        self.verification.abort();
        self.heartbeat.abort();
        if let Some(watch) = &self.token_watch {
            watch.abort();
        }
        for watch in &self.tls_watch {
            watch.abort();
        }
        self.plan_watch.abort();
        if let Some(retention) = self.retention {
            // A sweep cut short leaves its lease to expire.
            retention.abort();
            if let Err(e) = retention.await
                && !e.is_cancelled()
            {
                tracing::error!(error = %e, "retention task ended abnormally");
            }
        }
        if let Some(telemetry) = &self.telemetry {
            telemetry.abort();
        }
        self.writer.stop(deadline);
        // The writer stops at the deadline between attempts; a write hung past it is not
        // waited for (its rows stay in the spool).
        match tokio::time::timeout_at(deadline + WRITER_GRACE, self.writer_task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "writer task ended abnormally"),
            Err(_) => tracing::warn!(
                "the writer did not stop at the shutdown deadline; what it held stays in the spool"
            ),
        }
        self.sink.close().await;
        tracing::info!("stopped");
        match grpc_result {
            Ok(result) => result?,
            Err(e) => tracing::error!(error = %e, "gRPC server task ended abnormally"),
        }
        if let Err(e) = admin_result {
            tracing::error!(error = %e, "admin server task ended abnormally");
        }
        Ok(())
    }
}

/// Refuses limits that cannot all hold: a request within the limits must fit in the spool as one
/// record and in the in-flight budget.
fn check_limits(limits: &LimitSettings) -> Result<(), crate::config::ConfigError> {
    use crate::config::ConfigError;
    let largest_record =
        crate::spool::rows::largest_body(limits.max_request_bytes, limits.max_records_per_request);
    if largest_record > crate::spool::format::MAX_BODY {
        return Err(ConfigError::Invalid {
            key: "max_request_bytes".to_owned(),
            message: format!(
                "a request of {} bytes with {} records can take {largest_record} bytes in the spool, \
                 more than one spool record holds ({} bytes); lower max_request_bytes or \
                 limits.max_records_per_request",
                limits.max_request_bytes,
                limits.max_records_per_request,
                crate::spool::format::MAX_BODY
            ),
        });
    }
    let typical = Shape::worst_case_bytes(
        limits.max_request_bytes,
        &Limits {
            max_records: limits.max_records_per_request,
            max_attributes: limits.max_attributes_per_record,
            max_value_bytes: limits.max_attribute_value_bytes,
        },
    )
    .min(limits.max_request_bytes * 4 + limits.max_records_per_request * 1024);
    if limits.max_inflight_bytes < typical {
        return Err(ConfigError::Invalid {
            key: "limits.max_inflight_bytes".to_owned(),
            message: format!(
                "{} bytes cannot hold even one request of max_request_bytes ({}) with \
                 limits.max_records_per_request ({}) records, which needs about {typical} bytes",
                limits.max_inflight_bytes, limits.max_request_bytes, limits.max_records_per_request
            ),
        });
    }
    Ok(())
}

/// Starts every series whose labels the stages know up front at zero.
fn start_metrics_at_zero(metrics: &Metrics, catalog: &Catalog) {
    use crate::catalog::MapError;
    use crate::event::{DecodeError, Signal};
    use crate::receiver::admission::{RECORD_REASONS, REQUEST_REASONS};
    use crate::receiver::shape::Violation;
    use crate::spool::AppendError;
    let rejected: Vec<&str> = DecodeError::REASONS
        .into_iter()
        .chain(MapError::REASONS)
        .chain(Violation::REASONS)
        .collect();
    let refused: Vec<&str> = AppendError::REASONS
        .into_iter()
        .chain(RECORD_REASONS)
        .collect();
    let tables: Vec<&str> = catalog.tables().iter().map(|t| t.name).collect();
    let text_columns: Vec<(&str, &str)> = catalog
        .tables()
        .iter()
        .flat_map(|t| {
            t.columns
                .iter()
                .filter(|c| matches!(c.ty, crate::catalog::ColumnType::Text { .. }))
                .map(|c| (t.name, c.name))
        })
        .collect();
    metrics.start_at_zero(&KnownLabels {
        signals: &[Signal::Log.as_str(), Signal::Span.as_str()],
        rejected: &rejected,
        refused: &refused,
        requests_refused: &REQUEST_REASONS,
        write_failures: &crate::sink::error::REASONS,
        dropped: &["undecodable", "dead_letter_lost", "rejected_on_replay"],
        tables: &tables,
        text_columns: &text_columns,
        retained: &crate::sink::retention::TABLES,
    });
}

/// Runs migrations (when asked) and verification until they pass, reporting each failure in
/// the health checks and the log.
async fn verify_until_ready(
    sink: &Sink,
    migrate: bool,
    health: &Health,
    metrics: &Metrics,
    timeout: Duration,
) {
    let mut waits = crate::backoff::exponential(FIRST_RETRY, MAX_RETRY);
    let mut last_error = String::new();
    loop {
        // Migrations may take long on a large database; verification must not.
        let migrated = if migrate {
            sink.migrate_step().await
        } else {
            Ok(())
        };
        let result = match migrated {
            Err(error) => Err(error),
            Ok(()) => match tokio::time::timeout(timeout, sink.verify()).await {
                Ok(result) => result,
                Err(_) => Err(crate::sink::VerifyError {
                    step: Step::Query,
                    target: sink.target().to_string(),
                    message: format!("the database did not answer within {timeout:?}"),
                }),
            },
        };
        match result {
            Ok(_) => {
                health.set_database(Check::Ok);
                health.set_schema(Check::Ok);
                health.set_verified();
                metrics.database_up.set(1);
                metrics.schema_ok.set(1);
                tracing::info!(database = %sink.target(), "startup verification passed: ready");
                return;
            }
            Err(error) => {
                let wait = waits.next().unwrap_or(MAX_RETRY);
                report(&error, health, metrics);
                // Logged once per distinct failure; /health/ready always has the current one.
                let text = error.to_string();
                if text != last_error {
                    tracing::warn!(
                        step = error.step.as_str(),
                        error = %error,
                        retry_in_ms = wait.as_millis() as u64,
                        "startup verification failed: not ready (retrying with backoff)"
                    );
                    last_error = text;
                } else {
                    tracing::debug!(
                        step = error.step.as_str(),
                        retry_in_ms = wait.as_millis() as u64,
                        "startup verification still failing"
                    );
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// After startup: checks the database every [`DATABASE_PROBE`] whatever the traffic, so a
/// quiet collector notices a lost (or hung) database on its own, and notices when it answers
/// again. A failure shows on readiness (`degraded`) and `usage_collector_database_up`.
async fn watch_database(sink: &Sink, health: &Health, metrics: &Metrics, timeout: Duration) {
    let mut last_error = String::new();
    loop {
        tokio::time::sleep(DATABASE_PROBE).await;
        let pinged = match tokio::time::timeout(timeout, sink.ping()).await {
            Ok(result) => result,
            Err(_) => Err(crate::sink::SinkError::timed_out(
                "a database ping",
                timeout,
            )),
        };
        match pinged {
            Ok(()) => {
                if !health.database_ok() {
                    // The writer's own check clears with its next successful batch.
                    health.set_database(Check::Ok);
                    tracing::info!(database = %sink.target(), "database reachable again");
                }
                metrics.database_up.set(1);
                last_error.clear();
            }
            Err(error) => {
                if error.message != last_error {
                    tracing::warn!(database = %sink.target(), error = %error.message, "database unreachable; events wait in the spool");
                    last_error = error.message.clone();
                }
                health.set_database(Check::Failed(error.message));
                metrics.database_up.set(0);
            }
        }
    }
}

/// Every `interval`, sends a heartbeat down the write path: spool, writer, database.
async fn send_heartbeats(spool: Spool, health: Health, instance: String, interval: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tick.tick().await;
        let payload = crate::spool::Payload {
            signal: crate::spool::SpoolSignal::Heartbeat,
            received_unix_nano: crate::event::now_unix_nano(),
            body: prost::bytes::Bytes::copy_from_slice(instance.as_bytes()),
        };
        // Also how a replica whose spool writes failed (a full disk) notices that they work
        // again while no client sends to it.
        match spool.append(payload).await {
            Ok(_) => health.set_spool_writes(Check::Ok),
            Err(e) => {
                if let crate::spool::AppendError::Io(why) = &e {
                    health.set_spool_writes(Check::Failed(why.clone()));
                }
                // Its growing age on /metrics is what raises the alarm.
                tracing::warn!(error = %e, "cannot spool a heartbeat");
            }
        }
    }
}

fn report(error: &VerifyError, health: &Health, metrics: &Metrics) {
    let failed = Check::Failed(format!("{}: {}", error.step, error.message));
    metrics.schema_ok.set(0);
    match error.step {
        Step::Connect | Step::Query | Step::Server => {
            metrics.database_up.set(0);
            health.set_database(failed);
            health.set_schema(Check::Pending("waiting for the database".to_owned()));
        }
        Step::Migrate | Step::Schema | Step::WritePermission => {
            metrics.database_up.set(1);
            health.set_database(Check::Ok);
            health.set_schema(failed);
        }
    }
}
