//! Settings: each one declared once, as one field below, whose attribute holds everything about
//! it — its flag, its `USAGE_*` environment variable, its settings-file key and its default.
//!
//! The file key is the argument's id: `writer.batch_size` is `batch_size` under `[writer]`.
//! Layering is clap's own precedence, flag > environment > default, with the settings file
//! slotted in as the defaults: [`parse`] reads the file named by `--config` (or
//! `USAGE_CONFIG`), replaces each `${VAR}` with the variable's value, checks every key and value
//! with the argument's own parser, and hands the values to clap as the arguments' defaults
//! before parsing. So a flag wins over the environment, which wins over the file, which wins
//! over the built-in default; an unknown key or a bad value is refused with its name.
//!
//! Secrets (the database URL, which may hold a password, and the password itself) are
//! [`SecretString`]s: `Debug` shows them redacted and only the sink reads them.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use secrecy::SecretString;

use crate::catalog::Catalog;
pub use crate::catalog::settings::{CatalogSettings, IpAnonymization, PrivacySettings};

/// Everything the collector needs to run.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// The database the events are written to.
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// OTLP/gRPC listen address
    #[arg(
        id = "grpc_listen",
        long = "grpc-listen",
        env = "USAGE_GRPC_LISTEN",
        default_value = "0.0.0.0:4317",
        global = true
    )]
    pub grpc_listen: SocketAddr,
    /// OTLP/HTTP listen address (`POST /v1/logs`, `/v1/traces`); `off` switches it off
    #[arg(
        id = "http_listen",
        long = "http-listen",
        env = "USAGE_HTTP_LISTEN",
        default_value = "0.0.0.0:4318",
        value_parser = listen_or_off,
        global = true
    )]
    pub http_listen: Listen,
    /// Browser origins allowed to send OTLP/HTTP (CORS), comma-separated, such as
    /// `https://ide.example.org`; empty: no CORS headers at all
    #[arg(
        id = "http_cors_origins",
        long = "http-cors-origins",
        env = "USAGE_HTTP_CORS_ORIGINS",
        default_value = "",
        value_parser = cors_origins,
        global = true
    )]
    pub http_cors_origins: CorsOrigins,
    /// Admin HTTP listen address (/metrics, /health/live, /health/ready)
    #[arg(
        id = "admin_listen",
        long = "admin-listen",
        env = "USAGE_ADMIN_LISTEN",
        default_value = "0.0.0.0:9464",
        global = true
    )]
    pub admin_listen: SocketAddr,
    /// What one request, and all requests in flight together, may hold.
    #[command(flatten)]
    pub limits: LimitSettings,
    /// How long connections may stay silent, idle or open.
    #[command(flatten)]
    pub connections: ConnectionSettings,
    /// How rows are grouped into transactions.
    #[command(flatten)]
    pub writer: WriterSettings,
    /// The durable log accepted events wait in.
    #[command(flatten)]
    pub spool: SpoolSettings,
    /// Seconds a shutdown keeps writing spooled events before exiting
    #[arg(id = "shutdown_timeout_secs", long = "shutdown-timeout-secs", env = "USAGE_SHUTDOWN_TIMEOUT_SECS", default_value = "20", value_parser = seconds, global = true)]
    pub shutdown_timeout: Duration,
    /// Seconds between heartbeats through the write path
    #[arg(id = "heartbeat_interval_secs", long = "heartbeat-interval-secs", env = "USAGE_HEARTBEAT_INTERVAL_SECS", default_value = "30", value_parser = positive_seconds, global = true)]
    pub heartbeat_interval: Duration,
    /// This collector's name in `collector_heartbeats` ($HOSTNAME, else usage-collector)
    #[arg(id = "instance", long = "instance", env = "USAGE_INSTANCE", default_value_t = default_instance(), global = true)]
    pub instance: String,
    /// Where the collector's own spans and metrics go.
    #[command(flatten)]
    pub telemetry: crate::telemetry::settings::TelemetrySettings,
    /// Seconds between pushes of the own metrics
    #[arg(id = "telemetry_interval_secs", long = "telemetry-interval-secs", env = "USAGE_TELEMETRY_INTERVAL_SECS", default_value = "15", value_parser = positive_seconds, global = true)]
    pub telemetry_interval: Duration,
    /// How long rows are kept.
    #[command(flatten)]
    pub retention: RetentionSettings,
    /// The collector's own log output.
    #[command(flatten)]
    pub log: LogSettings,
    /// What the collector keeps of the people behind the events.
    #[command(flatten)]
    pub privacy: PrivacySettings,
    /// The tracking plan, and what becomes of records that are not usage events.
    #[command(flatten)]
    pub catalog: CatalogSettings,
    /// Who may send events.
    #[command(flatten)]
    pub auth: AuthSettings,
    /// TLS on the listeners.
    #[command(flatten)]
    pub tls: TlsSettings,
}

/// TLS on the listeners: the OTLP listeners (gRPC and HTTP, one certificate), and (separately)
/// the admin listener. Each is plain
/// TCP unless its certificate and key are set; the files are read again when they change.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsSettings {
    /// Certificate chain (PEM) of the OTLP listeners (gRPC and HTTP); with the key, they take TLS
    /// only [default: none: plain TCP]
    #[arg(
        id = "tls.cert_file",
        long = "tls-cert-file",
        env = "USAGE_TLS_CERT_FILE",
        global = true
    )]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of the OTLP listeners' certificate
    #[arg(
        id = "tls.key_file",
        long = "tls-key-file",
        env = "USAGE_TLS_KEY_FILE",
        global = true
    )]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM): OTLP clients must present a certificate signed by one of them
    /// [default: none: no client certificate asked for]
    #[arg(
        id = "tls.client_ca_file",
        long = "tls-client-ca-file",
        env = "USAGE_TLS_CLIENT_CA_FILE",
        global = true
    )]
    pub client_ca_file: Option<PathBuf>,
    /// Certificate chain (PEM) of the admin listener [default: none: plain HTTP]
    #[arg(
        id = "admin_tls.cert_file",
        long = "admin-tls-cert-file",
        env = "USAGE_ADMIN_TLS_CERT_FILE",
        global = true
    )]
    pub admin_cert_file: Option<PathBuf>,
    /// Private key (PEM) of the admin listener's certificate
    #[arg(
        id = "admin_tls.key_file",
        long = "admin-tls-key-file",
        env = "USAGE_ADMIN_TLS_KEY_FILE",
        global = true
    )]
    pub admin_key_file: Option<PathBuf>,
    /// CA certificates (PEM): admin clients (scrapers, probes) must present a certificate
    /// signed by one of them
    #[arg(
        id = "admin_tls.client_ca_file",
        long = "admin-tls-client-ca-file",
        env = "USAGE_ADMIN_TLS_CLIENT_CA_FILE",
        global = true
    )]
    pub admin_client_ca_file: Option<PathBuf>,
}

impl TlsSettings {
    /// The OTLP listener's TLS files, if it takes TLS.
    pub fn otlp(&self) -> Result<Option<crate::net::tls::TlsFiles>, crate::net::tls::TlsError> {
        crate::net::tls::TlsFiles::from_settings(
            "tls",
            self.cert_file.as_deref(),
            self.key_file.as_deref(),
            self.client_ca_file.as_deref(),
        )
    }

    /// The admin listener's TLS files, if it takes TLS.
    pub fn admin(&self) -> Result<Option<crate::net::tls::TlsFiles>, crate::net::tls::TlsError> {
        crate::net::tls::TlsFiles::from_settings(
            "admin-tls",
            self.admin_cert_file.as_deref(),
            self.admin_key_file.as_deref(),
            self.admin_client_ca_file.as_deref(),
        )
    }
}

/// A listener's address, or none: the listener is switched off (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl Listen {
    /// The word that switches a listener off.
    pub const OFF: &'static str = "off";
}

/// `host:port`, or `off`.
fn listen_or_off(value: &str) -> Result<Listen, String> {
    let value = value.trim();
    if value.eq_ignore_ascii_case(Listen::OFF) {
        return Ok(Listen(None));
    }
    value
        .parse::<SocketAddr>()
        .map(|a| Listen(Some(a)))
        .map_err(|e| format!("`{value}` is neither an address (`0.0.0.0:4318`) nor `off`: {e}"))
}

/// The browser origins allowed to send events (CORS), each exactly as a browser sends it in
/// its `Origin` header: `scheme://host[:port]`, no path, no trailing slash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsOrigins(pub Vec<String>);

impl CorsOrigins {
    /// True when `origin` is one of the allowed origins (compared as browsers send them:
    /// exactly, except that the scheme and host are case-insensitive).
    pub fn allows(&self, origin: &str) -> bool {
        self.0.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }
}

/// `https://ide.example.org,http://localhost:8080` (empty: none).
fn cors_origins(value: &str) -> Result<CorsOrigins, String> {
    let mut out = Vec::new();
    for origin in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        if origin == "*" {
            return Err("`*` is not allowed: list each origin (`https://ide.example.org`)".into());
        }
        let url =
            url::Url::parse(origin).map_err(|e| format!("`{origin}` is not an origin: {e}"))?;
        let serialized = url.origin().ascii_serialization();
        if !matches!(url.scheme(), "http" | "https") || serialized != origin.to_ascii_lowercase() {
            return Err(format!(
                "`{origin}` is not an origin as a browser sends it (`scheme://host[:port]`, \
                 no path or trailing slash{})",
                if serialized == "null" {
                    String::new()
                } else {
                    format!("; did you mean `{serialized}`?")
                }
            ));
        }
        out.push(origin.to_owned());
    }
    Ok(CorsOrigins(out))
}

/// Who may send events.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthSettings {
    /// File of bearer tokens, each optionally bound to the services it may write as; read
    /// again when it changes [default: none: anyone who reaches the port may send]
    #[arg(
        id = "auth.tokens_file",
        long = "auth-tokens-file",
        env = "USAGE_AUTH_TOKENS_FILE",
        global = true
    )]
    pub tokens_file: Option<PathBuf>,
}

/// Database connection settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseSettings {
    /// `mysql://user:pass@host:port/db` or `sqlite://path` (`blackhole://` stores nothing: for
    /// measuring the receive path only)
    #[arg(id = "database.url", long = "database-url", env = "USAGE_DATABASE_URL", default_value = "sqlite://usage.db", value_parser = secret, hide_env_values = true, global = true)]
    pub url: SecretString,
    /// Database password; replaces the URL's. Prefer the file or the environment to a flag.
    #[arg(id = "database.password", long = "database-password", env = "USAGE_DATABASE_PASSWORD", value_parser = secret, hide_env_values = true, global = true)]
    pub password: Option<SecretString>,
    /// File holding the database password (a mounted Kubernetes secret); replaces the URL's.
    #[arg(
        id = "database.password_file",
        long = "database-password-file",
        env = "USAGE_DATABASE_PASSWORD_FILE",
        global = true
    )]
    pub password_file: Option<PathBuf>,
    /// MySQL transport security
    #[arg(
        id = "database.tls",
        long = "database-tls",
        env = "USAGE_DATABASE_TLS",
        value_enum,
        default_value = "preferred",
        global = true
    )]
    pub tls: TlsMode,
    /// CA certificate (PEM) for verify-ca and verify-identity [default: built-in roots]
    #[arg(
        id = "database.tls_ca",
        long = "database-tls-ca",
        env = "USAGE_DATABASE_TLS_CA",
        global = true
    )]
    pub tls_ca: Option<PathBuf>,
    /// The old configuration's switch: `true` means `tls = "disabled"`.
    #[arg(id = "database.disable_ssl", long = "database-disable-ssl", action = clap::ArgAction::Set, default_value = "false", hide = true, global = true)]
    pub disable_ssl: bool,
    /// Database connections in the pool; the writer uses all but one at once (SQLite uses one)
    #[arg(id = "database.pool_size", long = "database-pool-size", env = "USAGE_DATABASE_POOL_SIZE", default_value = "4", value_parser = positive::<u32>, global = true)]
    pub pool_size: u32,
    /// Seconds to wait for a database connection
    #[arg(id = "database.connect_timeout_secs", long = "database-connect-timeout-secs", env = "USAGE_DATABASE_CONNECT_TIMEOUT_SECS", default_value = "5", value_parser = positive_seconds, global = true)]
    pub connect_timeout: Duration,
}

/// What one request, and all requests in flight together, may hold: the bounds that keep the
/// collector's memory and CPU independent of what clients send.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitSettings {
    /// Largest accepted request in bytes, after decompression
    #[arg(id = "max_request_bytes", long = "max-request-bytes", env = "USAGE_MAX_REQUEST_BYTES", default_value = "4194304", value_parser = positive::<usize>, global = true)]
    pub max_request_bytes: usize,
    /// Most records (log records or spans) in one request; a request with more is refused
    #[arg(id = "limits.max_records_per_request", long = "max-records-per-request", env = "USAGE_MAX_RECORDS_PER_REQUEST", default_value = "20000", value_parser = positive::<usize>, global = true)]
    pub max_records_per_request: usize,
    /// Most attributes on one record; a record with more is rejected on its own
    #[arg(id = "limits.max_attributes_per_record", long = "max-attributes-per-record", env = "USAGE_MAX_ATTRIBUTES_PER_RECORD", default_value = "128", value_parser = positive::<usize>, global = true)]
    pub max_attributes_per_record: usize,
    /// Largest attribute value or event name in bytes; a record with a larger one is rejected
    #[arg(id = "limits.max_attribute_value_bytes", long = "max-attribute-value-bytes", env = "USAGE_MAX_ATTRIBUTE_VALUE_BYTES", default_value = "65536", value_parser = positive::<usize>, global = true)]
    pub max_attribute_value_bytes: usize,
    /// Memory budget for requests in flight (received, decoded, not yet spooled), in bytes;
    /// past it requests wait briefly, then are refused with a retryable status
    #[arg(id = "limits.max_inflight_bytes", long = "max-inflight-bytes", env = "USAGE_MAX_INFLIGHT_BYTES", default_value = "67108864", value_parser = positive::<usize>, global = true)]
    pub max_inflight_bytes: usize,
    /// Memory for the receiver's mapped rows kept for the writer, in bytes (a miss only costs
    /// decoding the spooled record again)
    #[arg(
        id = "limits.row_cache_bytes",
        long = "row-cache-bytes",
        env = "USAGE_ROW_CACHE_BYTES",
        default_value = "8388608",
        global = true
    )]
    pub row_cache_bytes: usize,
}

/// How long connections may stay silent, idle or open, and how many, on every listener.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionSettings {
    /// Seconds a new connection may stay silent before it is closed
    #[arg(id = "connections.handshake_timeout_secs", long = "handshake-timeout-secs", env = "USAGE_HANDSHAKE_TIMEOUT_SECS", default_value = "10", value_parser = positive_seconds, global = true)]
    pub handshake_timeout: Duration,
    /// Seconds between HTTP/2 keepalive pings on the OTLP listener; a peer that does not answer
    /// within the same time is disconnected
    #[arg(id = "connections.keepalive_secs", long = "keepalive-secs", env = "USAGE_KEEPALIVE_SECS", default_value = "20", value_parser = positive_seconds, global = true)]
    pub keepalive: Duration,
    /// Most requests at once on one OTLP connection
    #[arg(id = "connections.max_concurrent_streams", long = "max-concurrent-streams", env = "USAGE_MAX_CONCURRENT_STREAMS", default_value = "32", value_parser = positive::<u32>, global = true)]
    pub max_concurrent_streams: u32,
    /// Seconds an OTLP connection lives before it is asked to close (clients reconnect, which
    /// also spreads them over the replicas)
    #[arg(id = "connections.max_age_secs", long = "max-connection-age-secs", env = "USAGE_MAX_CONNECTION_AGE_SECS", default_value = "600", value_parser = positive_seconds, global = true)]
    pub max_age: Duration,
    /// Seconds the admin listener waits for a request's headers, and the longest an admin
    /// connection stays open
    #[arg(id = "connections.admin_timeout_secs", long = "admin-timeout-secs", env = "USAGE_ADMIN_TIMEOUT_SECS", default_value = "10", value_parser = positive_seconds, global = true)]
    pub admin_timeout: Duration,
    /// Seconds an OTLP/HTTP request may take to arrive, headers and body (a client sending
    /// slowly is cut off)
    #[arg(id = "connections.http_request_timeout_secs", long = "http-request-timeout-secs", env = "USAGE_HTTP_REQUEST_TIMEOUT_SECS", default_value = "30", value_parser = positive_seconds, global = true)]
    pub http_request_timeout: Duration,
    /// Most connections open at once on each listener (OTLP/gRPC, OTLP/HTTP, admin), TLS
    /// handshakes included; past it, new connections wait in the listen backlog
    #[arg(id = "connections.max_connections", long = "max-connections", env = "USAGE_MAX_CONNECTIONS", default_value = "1024", value_parser = positive::<usize>, global = true)]
    pub max_connections: usize,
}

/// How rows are grouped into transactions.
#[derive(Debug, Clone, clap::Args)]
pub struct WriterSettings {
    /// Most rows written in one transaction
    #[arg(id = "writer.batch_size", long = "batch-size", env = "USAGE_BATCH_SIZE", default_value = "2048", value_parser = positive::<usize>, global = true)]
    pub batch_size: usize,
    /// Milliseconds to wait for more rows before writing a partial batch
    #[arg(id = "writer.flush_interval_ms", long = "flush-interval-ms", env = "USAGE_FLUSH_INTERVAL_MS", default_value = "5", value_parser = millis, global = true)]
    pub flush_interval: Duration,
    /// Seconds one batch's transaction may take before it counts as failed and is retried
    /// (a hung database or a black-holed network)
    #[arg(id = "writer.write_timeout_secs", long = "write-timeout-secs", env = "USAGE_WRITE_TIMEOUT_SECS", default_value = "10", value_parser = positive_seconds, global = true)]
    pub write_timeout: Duration,
    /// Testing only: the first N batch writes panic, to prove the writer is started again
    #[arg(
        id = "writer.test_panics",
        long = "test-writer-panics",
        default_value = "0",
        hide = true,
        global = true
    )]
    pub test_panics: u32,
}

/// The spool's place and size.
#[derive(Debug, Clone, clap::Args)]
pub struct SpoolSettings {
    /// Spool folder: accepted events wait here until written (one per collector)
    #[arg(
        id = "spool.dir",
        long = "spool-dir",
        env = "USAGE_SPOOL_DIR",
        default_value = "spool",
        global = true
    )]
    pub dir: PathBuf,
    /// Cap on spooled bytes not yet written; past it requests are refused
    #[arg(id = "spool.max_bytes", long = "spool-max-bytes", env = "USAGE_SPOOL_MAX_BYTES", default_value = "1073741824", value_parser = positive::<u64>, global = true)]
    pub max_bytes: u64,
}

/// How long rows are kept: older ones are deleted in small batches by the retention sweep.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionSettings {
    /// Days rows are kept in every retained table (0 keeps them forever)
    #[arg(
        id = "retention.days",
        long = "retention-days",
        env = "USAGE_RETENTION_DAYS",
        default_value = "0",
        global = true
    )]
    pub days: u32,
    /// Days per table, overriding `retention.days`: `page_visits=30,dead_letters=7`
    /// (0 keeps that table forever)
    #[arg(id = "retention.tables", long = "retention-tables", env = "USAGE_RETENTION_TABLES", default_value = "", value_parser = table_days, global = true)]
    pub tables: TableDays,
    /// Seconds between retention sweeps (the first runs once startup verification passes)
    #[arg(id = "retention.interval_secs", long = "retention-interval-secs", env = "USAGE_RETENTION_INTERVAL_SECS", default_value = "3600", value_parser = positive_seconds, global = true)]
    pub interval: Duration,
    /// Most rows one retention DELETE removes (each statement holds its locks briefly)
    #[arg(id = "retention.batch_size", long = "retention-batch-size", env = "USAGE_RETENTION_BATCH_SIZE", default_value = "1000", value_parser = positive::<u32>, global = true)]
    pub batch_size: u32,
}

/// Per-table retention overrides: (table, days), each table at most once: a built-in table
/// ([`crate::sink::retention::TABLES`]) or one of the tracking plan's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableDays(pub Vec<(String, u32)>);

impl TableDays {
    /// The days set for `table`, if it has an override.
    pub fn get(&self, table: &str) -> Option<u32> {
        self.0.iter().find(|(t, _)| t == table).map(|&(_, d)| d)
    }
}

/// `page_visits=30,dead_letters=7` (what a TOML table `[retention.tables]` or an array of
/// `"table=days"` strings flattens to).
fn table_days(value: &str) -> Result<TableDays, String> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (table, days) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}` is not `table=days`"))?;
        let table = table.trim();
        if !usage_tracker::catalog::plan::is_identifier(table)
            || crate::sink::retention::NEVER_SWEPT.contains(&table)
        {
            return Err(format!(
                "`{table}` is not a retained table: one of {}, or an event table of the \
                 tracking plan",
                crate::sink::retention::TABLES.join(", ")
            ));
        }
        let days: u32 = days
            .trim()
            .parse()
            .map_err(|e| format!("`{item}`: days: {e}"))?;
        if out.iter().any(|(t, _)| t == table) {
            return Err(format!("`{table}` is given twice"));
        }
        out.push((table.to_owned(), days));
    }
    Ok(TableDays(out))
}

/// The collector's own log output.
#[derive(Debug, Clone, clap::Args)]
pub struct LogSettings {
    /// Log format
    #[arg(
        id = "log.format",
        long = "log-format",
        env = "USAGE_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub format: LogFormat,
    /// Log filter, for example `info` or `usage_collector=debug` [default: RUST_LOG, else info]
    #[arg(
        id = "log.level",
        long = "log-level",
        env = "USAGE_LOG_LEVEL",
        global = true
    )]
    pub filter: Option<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// MySQL transport security, with the names MySQL's own clients use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// Never encrypt (the old configuration's `disable_ssl: true`).
    Disabled,
    /// Encrypt when the server offers it.
    #[default]
    Preferred,
    /// Always encrypt; do not check the certificate.
    Required,
    /// Always encrypt and check the certificate against the CA.
    VerifyCa,
    /// As `verify-ca`, and check that the certificate names the host.
    VerifyIdentity,
}

impl std::fmt::Display for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsMode::Disabled => "disabled",
            TlsMode::Preferred => "preferred",
            TlsMode::Required => "required",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyIdentity => "verify-identity",
        })
    }
}

/// A setting could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `${VAR}` names a variable that is not set.
    #[error("config file {path}: line {line}: environment variable {var} is not set")]
    UnsetVariable {
        /// The file.
        path: PathBuf,
        /// 1-based line of the reference.
        line: usize,
        /// The variable.
        var: String,
    },
    /// The file is not valid TOML, or names a setting that does not exist.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key.
        message: String,
    },
    /// A value is out of range, malformed, or contradicts another.
    #[error("invalid setting {key}: {message}")]
    Invalid {
        /// The setting, as named in the file.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The password file could not be read.
    #[error("cannot read database password file {path}: {source}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The command line itself (including `--help` and `--version`, which clap answers).
    #[error(transparent)]
    Cli(#[from] clap::Error),
}

/// Where each setting's value came from, for the rules that weigh two settings against each
/// other (a password against a password file).
#[derive(Debug, Clone, Default)]
pub struct Layers {
    /// Layer of each argument id: 0 the built-in default, 1 the file, 2 the environment or a
    /// flag.
    rank: HashMap<String, u8>,
}

impl Layers {
    fn of(&self, id: &str) -> u8 {
        self.rank.get(id).copied().unwrap_or(0)
    }
}

/// Parses the command line `T` from `args`, with the settings file named by `--config` (or
/// `USAGE_CONFIG`) layered under the flags and the environment, `${VAR}` in the file resolved
/// by `lookup`; then finishes the [`Settings`] inside it.
pub fn parse<T, I>(
    args: I,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(T, Layers), ConfigError>
where
    T: CommandFactory + FromArgMatches,
    I: IntoIterator,
    I::Item: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut command = T::command();
    let config = T::command()
        .ignore_errors(true)
        .try_get_matches_from(&args)
        .ok()
        .and_then(|m| m.try_get_one::<PathBuf>("config").ok().flatten().cloned());
    let mut from_file = Vec::new();
    if let Some(path) = config {
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        for (id, value) in file_values(&command, &text, &path, &lookup)? {
            command = command.mut_arg(id.clone(), |arg| arg.default_value(value));
            from_file.push(id);
        }
    }
    let matches = command
        .clone()
        .try_get_matches_from(&args)
        .map_err(|e| name_the_setting(&command, e))?;
    let layers = layers(&command, &matches, &from_file);
    let parsed = T::from_arg_matches(&matches)?;
    Ok((parsed, layers))
}

impl Settings {
    /// The catalogue of `plan`, shaped by these settings: what is kept of client addresses,
    /// what becomes of records that are not usage events, how old an event may be.
    pub fn catalog_of(&self, plan: std::sync::Arc<usage_tracker::catalog::Plan>) -> Catalog {
        let retention = &self.retention;
        Catalog::of_plan(plan)
            .with_ip_anonymization(self.privacy.ip_anonymization)
            .with_non_usage(self.catalog.non_usage_records)
            .with_retention(|table| retention.tables.get(table).unwrap_or(retention.days))
    }

    /// Every setting at its built-in default (the environment ignored).
    pub fn defaults() -> Settings {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        let mut command = Only::command();
        let ids: Vec<_> = command
            .get_arguments()
            .map(|a| a.get_id().clone())
            .collect();
        for id in ids {
            command = command.mut_arg(id, |arg| arg.env(None));
        }
        let matches = command.get_matches_from(["usage-collector"]);
        let only = Only::from_arg_matches(&matches).expect("every default parses (tested)");
        only.settings
    }

    /// Applies the rules between settings: the password (or its file) of the highest layer
    /// wins, a password given directly winning within one layer; the old `disable_ssl` switch
    /// must agree with `tls`.
    pub fn finish(mut self, layers: &Layers) -> Result<Self, ConfigError> {
        let db = &mut self.database;
        if db.disable_ssl {
            match db.tls {
                TlsMode::Disabled => {}
                _ if layers.of("database.tls") == 0 => db.tls = TlsMode::Disabled,
                mode => {
                    return Err(ConfigError::Invalid {
                        key: "database.disable_ssl".to_owned(),
                        message: format!("`disable_ssl = true` contradicts `tls = \"{mode}\"`"),
                    });
                }
            }
        }
        if let Some(path) = &db.password_file {
            let file_wins = db.password.is_none()
                || layers.of("database.password_file") > layers.of("database.password");
            if file_wins {
                db.password = Some(read_password(path)?);
            }
        }
        Ok(self)
    }
}

impl DatabaseSettings {
    /// Settings for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            ..Settings::defaults().database
        }
    }
}

/// This collector's default name: `$HOSTNAME` (a pod's name), else `usage-collector`.
fn default_instance() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "usage-collector".to_owned())
}

/// Each setting of the file as (argument id, value as a flag would give it). Refuses unknown
/// keys, naming them.
fn file_values(
    command: &clap::Command,
    text: &str,
    path: &Path,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let expanded = expand_vars(text, lookup).map_err(|(line, var)| ConfigError::UnsetVariable {
        path: path.to_owned(),
        line,
        var,
    })?;
    let table: toml::Table = toml::from_str(&expanded).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut values = Vec::new();
    let is_setting = |key: &str| command.get_arguments().any(|a| a.get_id() == key);
    flatten("", &table, &is_setting, &mut values);
    let mut out = Vec::new();
    for (key, value) in values {
        if !command.get_arguments().any(|a| a.get_id() == key.as_str()) {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: format!("unknown setting `{key}`"),
            });
        }
        // The value itself is checked by the argument's own parser when clap takes it as the
        // default; a bad one is reported by [`name_the_setting`].
        out.push((key, value));
    }
    Ok(out)
}

/// `[writer] batch_size = 50` → ("writer.batch_size", "50"); a table that is itself a setting,
/// `[retention.tables] page_visits = 30`, → ("retention.tables", "page_visits=30").
fn flatten(
    prefix: &str,
    table: &toml::Table,
    is_setting: &impl Fn(&str) -> bool,
    out: &mut Vec<(String, String)>,
) {
    for (key, value) in table {
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) if is_setting(&key) => {
                let pairs: Vec<String> = inner
                    .iter()
                    .map(|(k, v)| format!("{k}={}", scalar(v)))
                    .collect();
                out.push((key, pairs.join(",")));
            }
            toml::Value::Table(inner) => flatten(&key, inner, is_setting, out),
            toml::Value::String(s) => out.push((key, s.clone())),
            toml::Value::Array(items) => {
                let items: Vec<String> = items.iter().map(scalar).collect();
                out.push((key, items.join(",")));
            }
            other => out.push((key, scalar(other))),
        }
    }
}

/// A TOML value as a flag would give it.
fn scalar(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(_) | toml::Value::Table(_) => String::new(),
    }
}

/// The reason inside a clap error (its value parser's message), without clap's decoration.
fn clap_reason(error: &clap::Error) -> String {
    use std::error::Error;
    match error.source() {
        Some(source) => source.to_string(),
        None => error
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_owned(),
    }
}

/// A bad flag or environment value becomes [`ConfigError::Invalid`] naming the setting as the
/// file does; every other clap outcome (help, version, unknown flag) stays clap's.
fn name_the_setting(command: &clap::Command, error: clap::Error) -> ConfigError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::ValueValidation {
        return ConfigError::Cli(error);
    }
    let flag = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(text)) => text.split_whitespace().next().map(str::to_owned),
        _ => None,
    };
    let id = flag.and_then(|flag| {
        let long = flag.trim_start_matches('-');
        command
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .map(|a| a.get_id().to_string())
    });
    match id {
        Some(key) => ConfigError::Invalid {
            key,
            message: clap_reason(&error),
        },
        None => ConfigError::Cli(error),
    }
}

fn layers(command: &clap::Command, matches: &ArgMatches, from_file: &[String]) -> Layers {
    let mut rank = HashMap::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let layer = match matches.value_source(id) {
            Some(ValueSource::CommandLine | ValueSource::EnvVariable) => 2,
            Some(ValueSource::DefaultValue) if from_file.iter().any(|f| f == id) => 1,
            _ => 0,
        };
        rank.insert(id.to_owned(), layer);
    }
    Layers { rank }
}

/// Replaces each `${NAME}` with `lookup(NAME)`, except on comment lines; a `$` not followed by
/// `{` is kept, so passwords containing `$` survive. Errors with (line, name) on an unset one.
fn expand_vars(
    text: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let name = &after[..end];
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => return Err((index + 1, name.to_owned())),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

fn read_password(path: &Path) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::PasswordFile {
        path: path.to_owned(),
        source,
    })?;
    // Secret mounts and `echo pw > file` end with a newline that is not part of the password.
    Ok(SecretString::from(
        text.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value.to_owned()))
}

/// A whole number greater than zero.
fn positive<T>(value: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + Default + std::fmt::Display,
    T::Err: std::fmt::Display,
{
    let parsed: T = value.trim().parse().map_err(|e| format!("{e}"))?;
    if parsed > T::default() {
        Ok(parsed)
    } else {
        Err(format!("must be greater than zero, got {parsed}"))
    }
}

fn seconds(value: &str) -> Result<Duration, String> {
    let secs: u64 = value.trim().parse().map_err(|e| format!("{e}"))?;
    Ok(Duration::from_secs(secs))
}

fn positive_seconds(value: &str) -> Result<Duration, String> {
    positive::<u64>(value).map(Duration::from_secs)
}

fn millis(value: &str) -> Result<Duration, String> {
    let ms: u64 = value.trim().parse().map_err(|e| format!("{e}"))?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn lookup(var: &str) -> Option<String> {
        match var {
            "DB_PASS" => Some("s3cr$t".to_owned()),
            "HOST" | "DB_HOST" => Some("db.internal".to_owned()),
            _ => None,
        }
    }

    /// The command line with a config file: `--config` pointing at `text` written to a
    /// temporary file.
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Settings,
    }

    fn with_file(text: &str, args: &[&str]) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir().join(format!("usage-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        let mut argv = vec!["usage-collector".to_owned(), "--config".to_owned()];
        argv.push(path.display().to_string());
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let result =
            parse::<Cli, _>(argv, lookup).and_then(|(cli, layers)| cli.settings.finish(&layers));
        std::fs::remove_dir_all(dir).unwrap();
        result
    }

    fn args(args: &[&str]) -> Result<Settings, ConfigError> {
        let argv = std::iter::once("usage-collector").chain(args.iter().copied());
        parse::<Cli, _>(argv, lookup).and_then(|(cli, layers)| cli.settings.finish(&layers))
    }

    #[test]
    fn expands_braced_variables_and_keeps_lone_dollars() {
        let text = "url = \"mysql://u:${DB_PASS}@${HOST}:3306/x\"\n# ${UNSET} in a comment\ncost = \"$5\"\n";
        let out = expand_vars(text, &lookup).unwrap();
        assert_eq!(
            out,
            "url = \"mysql://u:s3cr$t@db.internal:3306/x\"\n# ${UNSET} in a comment\ncost = \"$5\"\n"
        );
    }

    #[test]
    fn unset_variable_is_named_with_its_line() {
        let err = with_file("\n[database]\nurl = \"${NOPE}\"\n", &[]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.ends_with("c.toml: line 3: environment variable NOPE is not set"),
            "{text}"
        );
    }

    #[test]
    fn flag_wins_over_file_and_file_over_default() {
        let settings = with_file(
            "grpc_listen = \"127.0.0.1:5000\"\n[writer]\nbatch_size = 50\n[database]\ndisable_ssl = true\n",
            &["--grpc-listen", "127.0.0.1:6000"],
        )
        .unwrap();
        assert_eq!(settings.grpc_listen.port(), 6000);
        assert_eq!(settings.writer.batch_size, 50);
        assert_eq!(settings.database.tls, TlsMode::Disabled);
        assert_eq!(settings.admin_listen.port(), 9464);
        assert_eq!(settings.database.url.expose_secret(), "sqlite://usage.db");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let err = with_file("[writer]\nbatchsize = 5\n", &[]).unwrap_err();
        assert!(err.to_string().contains("batchsize"), "{err}");
        let err = args(&["--batch-size", "0"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid setting writer.batch_size: must be greater than zero, got 0"
        );
        let err = with_file("[writer]\nbatch_size = 0\n", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid setting writer.batch_size: must be greater than zero, got 0"
        );
        assert!(with_file("[database]\ndisable_ssl = true\ntls = \"required\"\n", &[]).is_err());
    }

    #[test]
    fn the_example_file_in_deploy_parses_with_its_values() {
        let dir = std::env::temp_dir().join(format!("usage-example-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let password = dir.join("password");
        std::fs::write(&password, "from-the-file\n").unwrap();
        let text = include_str!("../../../deploy/collector.example.toml").replace(
            "/run/secrets/usage-db/password",
            &password.display().to_string(),
        );
        let settings = with_file(&text, &[]).unwrap();
        assert_eq!(
            settings.database.url.expose_secret(),
            "mysql://usage@db.internal:3306/usage"
        );
        assert_eq!(
            settings
                .database
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_owned()),
            Some("from-the-file".to_owned())
        );
        assert_eq!(settings.database.tls, TlsMode::Preferred);
        assert_eq!(
            settings.http_listen,
            Listen(Some("0.0.0.0:4318".parse().unwrap()))
        );
        assert_eq!(settings.database.pool_size, 4);
        assert_eq!(
            settings.spool.dir,
            PathBuf::from("/var/lib/usage-collector/spool")
        );
        assert_eq!(settings.writer.batch_size, 2048);
        assert_eq!(settings.log.format, LogFormat::Text);
        assert_eq!(settings.log.filter.as_deref(), Some("info"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tls_files_come_from_the_file_and_flags_and_half_a_pair_is_refused() {
        let settings = with_file(
            "[tls]\ncert_file = \"/etc/tls/tls.crt\"\nkey_file = \"/etc/tls/tls.key\"\n\
             [admin_tls]\ncert_file = \"/etc/admin/tls.crt\"\n",
            &["--tls-client-ca-file", "/etc/tls/ca.crt"],
        )
        .unwrap();
        let otlp = settings
            .tls
            .otlp()
            .unwrap()
            .expect("TLS on the OTLP listener");
        assert_eq!(otlp.cert, Path::new("/etc/tls/tls.crt"));
        assert_eq!(otlp.key, Path::new("/etc/tls/tls.key"));
        assert_eq!(
            otlp.client_ca.as_deref(),
            Some(Path::new("/etc/tls/ca.crt"))
        );
        let half = settings.tls.admin().unwrap_err().to_string();
        assert!(
            half.contains("--admin-tls-cert-file needs --admin-tls-key-file"),
            "{half}"
        );
        let plain = Settings::defaults();
        assert!(plain.tls.otlp().unwrap().is_none() && plain.tls.admin().unwrap().is_none());
        let mut ca_only = Settings::defaults();
        ca_only.tls.client_ca_file = Some(PathBuf::from("/etc/tls/ca.crt"));
        assert!(ca_only.tls.otlp().is_err());
    }

    #[test]
    fn a_password_flag_beats_a_password_file_from_the_file() {
        let settings = with_file(
            "[database]\npassword_file = \"/nonexistent/password\"\n",
            &["--database-password", "from-flag"],
        )
        .unwrap();
        assert_eq!(
            settings.database.password.unwrap().expose_secret(),
            "from-flag"
        );
    }

    #[test]
    fn debug_output_hides_the_url_and_password() {
        let settings = args(&[
            "--database-url",
            "mysql://u:hunter2@h/db",
            "--database-password",
            "hunter3",
        ])
        .unwrap();
        let debug = format!("{settings:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("hunter3"),
            "{debug}"
        );
    }

    /// The settings table of docs/configuration.md names every setting with its flag,
    /// variable, file key and default, so the documentation cannot drift from the declarations.
    #[test]
    fn the_configuration_table_matches_the_declarations() {
        let readme = include_str!("../../../docs/configuration.md");
        let command = crate::cli::Cli::command();
        let rows: Vec<Vec<&str>> = readme
            .lines()
            .filter(|l| l.starts_with("| `--"))
            .map(|l| l.split('|').map(str::trim).collect())
            .collect();
        let unquote = |cell: &str| cell.split('`').nth(1).unwrap_or("").to_owned();
        for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || long == "version" {
                continue;
            }
            let row = rows
                .iter()
                .find(|r| unquote(r[1]) == format!("--{long}"))
                .unwrap_or_else(|| {
                    panic!("--{long} is not in docs/configuration.md's settings table")
                });
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(Some(unquote(row[2])), env, "--{long}: variable");
            if long != "config" {
                assert_eq!(unquote(row[3]), arg.get_id().as_str(), "--{long}: file key");
            }
            if let Some(default) = arg.get_default_values().first() {
                let default = default.to_string_lossy();
                if long != "instance" {
                    assert!(
                        row[4].contains(default.as_ref()),
                        "--{long}: default {default} not in {:?}",
                        row[4]
                    );
                }
            }
        }
    }

    #[test]
    fn otlp_http_is_switched_off_with_off_and_cors_origins_are_checked() {
        let settings = args(&[]).unwrap();
        assert_eq!(
            settings.http_listen,
            Listen(Some("0.0.0.0:4318".parse().unwrap()))
        );
        assert_eq!(settings.http_cors_origins, CorsOrigins::default());
        assert_eq!(
            args(&["--http-listen", "off"]).unwrap().http_listen,
            Listen(None)
        );
        let error = args(&["--http-listen", "nowhere"]).unwrap_err().to_string();
        assert!(error.contains("neither an address"), "{error}");
        let settings = args(&[
            "--http-cors-origins",
            "https://ide.example.org, http://localhost:8080",
        ])
        .unwrap();
        assert!(settings.http_cors_origins.allows("https://ide.example.org"));
        assert!(settings.http_cors_origins.allows("http://localhost:8080"));
        assert!(!settings.http_cors_origins.allows("http://localhost:8081"));
        for (bad, words) in [
            (
                "https://ide.example.org/",
                "did you mean `https://ide.example.org`",
            ),
            ("https://ide.example.org/app", "no path"),
            ("*", "list each origin"),
            ("ide.example.org", "not an origin"),
        ] {
            let error = args(&["--http-cors-origins", bad]).unwrap_err().to_string();
            assert!(error.contains(words), "{bad}: {error}");
        }
        let settings = with_file(
            "http_listen = \"off\"\nhttp_cors_origins = [\"https://a.example\", \"https://b.example\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(settings.http_listen, Listen(None));
        assert_eq!(
            settings.http_cors_origins.0,
            ["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn retention_overrides_come_from_a_toml_table_an_array_or_the_flag() {
        let settings = with_file(
            "[retention]\ndays = 90\n[retention.tables]\npage_visits = 30\ndead_letters = 0\n",
            &[],
        )
        .unwrap();
        assert_eq!(settings.retention.days, 90);
        assert_eq!(settings.retention.tables.get("page_visits"), Some(30));
        assert_eq!(settings.retention.tables.get("dead_letters"), Some(0));
        assert_eq!(settings.retention.tables.get("usage_events"), None);
        let settings = with_file(
            "[retention]\ntables = [\"feature_usage=7\", \"ide_sessions = 14\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(settings.retention.tables.get("feature_usage"), Some(7));
        assert_eq!(settings.retention.tables.get("ide_sessions"), Some(14));
        let settings = with_file(
            "[retention.tables]\npage_visits = 30\n",
            &["--retention-tables", "usage_events=1"],
        )
        .unwrap();
        assert_eq!(
            settings.retention.tables,
            TableDays(vec![("usage_events".to_owned(), 1)])
        );
        let err = with_file("[retention.tables]\ncollector_heartbeats = 3\n", &[]).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "invalid setting retention.tables: `collector_heartbeats` is not a retained table"
            ),
            "{err}"
        );
        let err = args(&["--retention-tables", "Page Visits=3"]).unwrap_err();
        assert!(err.to_string().contains("is not a retained table"), "{err}");
        // A table of the tracking plan takes its own retention.
        let settings = args(&["--retention-tables", "debugger_steps=7"]).unwrap();
        assert_eq!(settings.retention.tables.get("debugger_steps"), Some(7));
        let err = args(&["--retention-tables", "page_visits=30,page_visits=1"]).unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");
        let err = args(&["--retention-tables", "page_visits"]).unwrap_err();
        assert!(err.to_string().contains("not `table=days`"), "{err}");
    }

    #[test]
    fn defaults_parse() {
        let defaults = Settings::defaults();
        assert_eq!(defaults.limits.max_request_bytes, 4 * 1024 * 1024);
        assert_eq!(defaults.writer.write_timeout, Duration::from_secs(10));
        assert_eq!(defaults.writer.batch_size, 2048);
        assert_eq!(DatabaseSettings::new("sqlite://x.db").pool_size, 4);
        assert_eq!(defaults.retention.days, 0);
        assert_eq!(defaults.retention.tables, TableDays::default());
        assert_eq!(defaults.retention.interval, Duration::from_secs(3600));
        assert_eq!(defaults.retention.batch_size, 1000);
    }
}
