//! Settings: a typed tree layered from a TOML file, environment variables and flags.
//!
//! Precedence is flag > environment > file > default. Every default is a `const` in
//! [`defaults`] and nowhere else. `${VAR}` inside the file is replaced by the variable's value
//! before parsing (an unset variable is an error naming it). Secrets (the database URL, which
//! may hold a password, and the password itself) are [`SecretString`]s: `Debug` shows them
//! redacted and only the sink reads them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

/// Every default, defined once.
pub mod defaults {
    /// Where OTLP/gRPC is served (the OTLP standard port).
    pub const GRPC_LISTEN: &str = "0.0.0.0:4317";
    /// Where `/metrics` and `/health/*` are served.
    pub const ADMIN_LISTEN: &str = "0.0.0.0:9464";
    /// The embedded database used when none is configured: a SQLite file in the working folder.
    pub const DATABASE_URL: &str = "sqlite://usage.db";
    /// Largest accepted request after decompression (the OTLP specification's recommendation).
    pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
    /// Database connections in the pool: the writer runs a transaction on all but one at once
    /// (three measured fastest on a 2-core machine, with the least database spinning; see
    /// docs/performance.md).
    pub const POOL_SIZE: u32 = 4;
    /// How long to wait for a database connection.
    pub const CONNECT_TIMEOUT_SECS: u64 = 5;
    /// Most rows written in one transaction.
    pub const BATCH_SIZE: usize = 500;
    /// How long the writer waits for more rows before writing a batch that is not full.
    pub const FLUSH_INTERVAL_MS: u64 = 5;
    /// Longest one batch's transaction may take before it counts as failed (a hung database).
    pub const WRITE_TIMEOUT_SECS: u64 = 10;
    /// The spool folder, relative to the working folder.
    pub const SPOOL_DIR: &str = "spool";
    /// Most bytes of accepted events the spool holds before refusing new ones.
    pub const SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;
    /// How long a shutdown keeps writing spooled events to the database before exiting.
    pub const SHUTDOWN_TIMEOUT_SECS: u64 = 20;
    /// How often a heartbeat travels the write path.
    pub const HEARTBEAT_INTERVAL_SECS: u64 = 30;
    /// How often the collector's own metrics are pushed over OTLP (when an endpoint is set).
    pub const TELEMETRY_INTERVAL_SECS: u64 = 15;
    /// This collector's name in `collector_heartbeats` when `HOSTNAME` is not set.
    pub const INSTANCE: &str = "usage-collector";
}

/// Everything the collector needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The database the events are written to.
    pub database: DatabaseSettings,
    /// Address of the OTLP/gRPC receiver.
    pub grpc_listen: SocketAddr,
    /// Address of the admin HTTP server.
    pub admin_listen: SocketAddr,
    /// Largest accepted request, after decompression.
    pub max_request_bytes: usize,
    /// How rows are grouped into transactions.
    pub writer: WriterSettings,
    /// The durable log accepted events wait in.
    pub spool: SpoolSettings,
    /// How long a shutdown keeps writing to the database.
    pub shutdown_timeout: Duration,
    /// How often a heartbeat travels the write path.
    pub heartbeat_interval: Duration,
    /// This collector's name (its heartbeat row).
    pub instance: String,
    /// Where the collector's own metrics and traces go over OTLP/gRPC (Jaeger, Tempo, an
    /// OpenTelemetry Collector); none: only `/metrics` and logs.
    pub telemetry_endpoint: Option<String>,
    /// How often the own metrics are pushed.
    pub telemetry_interval: Duration,
    /// The collector's own log output.
    pub log: LogSettings,
}

/// The spool's place and size.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// Its folder (created if missing); one per collector.
    pub dir: PathBuf,
    /// Cap on bytes of events not yet in the database; past it, requests are refused.
    pub max_bytes: u64,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(defaults::SPOOL_DIR),
            max_bytes: defaults::SPOOL_MAX_BYTES,
        }
    }
}

/// Database connection settings.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `mysql://user:pass@host:port/db` or `sqlite://path`; secret because it may hold a password.
    pub url: SecretString,
    /// A password that replaces the one in the URL (from a file or the environment).
    pub password: Option<SecretString>,
    /// Transport security towards MySQL.
    pub tls: TlsMode,
    /// CA certificate for `verify-ca` and `verify-identity`.
    pub tls_ca: Option<PathBuf>,
    /// Connections in the pool.
    pub pool_size: u32,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
}

impl DatabaseSettings {
    /// Settings for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            password: None,
            tls: TlsMode::Preferred,
            tls_ca: None,
            pool_size: defaults::POOL_SIZE,
            connect_timeout: Duration::from_secs(defaults::CONNECT_TIMEOUT_SECS),
        }
    }
}

/// How rows are grouped into transactions.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Most rows per transaction.
    pub batch_size: usize,
    /// How long to wait for more rows before writing a partial batch.
    pub flush_interval: Duration,
    /// Longest one batch's transaction may take before it counts as failed.
    pub write_timeout: Duration,
}

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            batch_size: defaults::BATCH_SIZE,
            flush_interval: Duration::from_millis(defaults::FLUSH_INTERVAL_MS),
            write_timeout: Duration::from_secs(defaults::WRITE_TIMEOUT_SECS),
        }
    }
}

/// The collector's own log output.
#[derive(Debug, Clone, Default)]
pub struct LogSettings {
    /// Plain text for people or JSON lines for log pipelines.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `usage_collector=debug`; `RUST_LOG` when unset.
    pub filter: Option<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// MySQL transport security, with the names MySQL's own clients use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
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
    /// The file is not valid TOML or has an unknown or mistyped key.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's description, with the key and line.
        message: String,
    },
    /// A value is out of range or contradicts another.
    #[error("invalid setting {key}: {message}")]
    Invalid {
        /// The setting, as named in the file.
        key: &'static str,
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
}

/// The config file's shape: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    grpc_listen: Option<String>,
    admin_listen: Option<String>,
    max_request_bytes: Option<usize>,
    shutdown_timeout_secs: Option<u64>,
    heartbeat_interval_secs: Option<u64>,
    instance: Option<String>,
    telemetry_endpoint: Option<String>,
    telemetry_interval_secs: Option<u64>,
    #[serde(default)]
    database: FileDatabase,
    #[serde(default)]
    spool: FileSpool,
    #[serde(default)]
    writer: FileWriter,
    #[serde(default)]
    log: FileLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDatabase {
    url: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    tls: Option<TlsMode>,
    tls_ca: Option<PathBuf>,
    /// The old configuration's switch; `true` means `tls = "disabled"`.
    disable_ssl: Option<bool>,
    pool_size: Option<u32>,
    connect_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpool {
    dir: Option<PathBuf>,
    max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWriter {
    batch_size: Option<usize>,
    flush_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

/// Settings given as flags or environment variables (clap merges those two; flag wins).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// TOML settings file; `${VAR}` inside it is replaced by the variable's value.
    #[arg(long, env = "USAGE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// `mysql://user:pass@host:port/db` or `sqlite://path` [default: sqlite://usage.db]
    #[arg(
        long,
        env = "USAGE_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url: Option<String>,
    /// File holding the database password (a mounted Kubernetes secret); replaces the URL's.
    #[arg(long, env = "USAGE_DATABASE_PASSWORD_FILE", global = true)]
    pub database_password_file: Option<PathBuf>,
    /// Database password; replaces the URL's. Prefer the file or the environment to a flag.
    #[arg(
        long,
        env = "USAGE_DATABASE_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub database_password: Option<String>,
    /// MySQL transport security [default: preferred]
    #[arg(long, env = "USAGE_DATABASE_TLS", value_enum, global = true)]
    pub database_tls: Option<TlsMode>,
    /// CA certificate (PEM) for verify-ca and verify-identity.
    #[arg(long, env = "USAGE_DATABASE_TLS_CA", global = true)]
    pub database_tls_ca: Option<PathBuf>,
    /// Database connections in the pool; the writer uses all but one at once [default: 4]
    #[arg(long, env = "USAGE_DATABASE_POOL_SIZE", global = true)]
    pub database_pool_size: Option<u32>,
    /// Seconds to wait for a database connection [default: 5]
    #[arg(long, env = "USAGE_DATABASE_CONNECT_TIMEOUT_SECS", global = true)]
    pub database_connect_timeout_secs: Option<u64>,
    /// OTLP/gRPC listen address [default: 0.0.0.0:4317]
    #[arg(long, env = "USAGE_GRPC_LISTEN", global = true)]
    pub grpc_listen: Option<String>,
    /// Admin HTTP listen address (/metrics, /health/live, /health/ready) [default: 0.0.0.0:9464]
    #[arg(long, env = "USAGE_ADMIN_LISTEN", global = true)]
    pub admin_listen: Option<String>,
    /// Largest accepted request in bytes, after decompression [default: 67108864]
    #[arg(long, env = "USAGE_MAX_REQUEST_BYTES", global = true)]
    pub max_request_bytes: Option<usize>,
    /// Most rows written in one transaction [default: 500]
    #[arg(long, env = "USAGE_BATCH_SIZE", global = true)]
    pub batch_size: Option<usize>,
    /// Milliseconds to wait for more rows before writing a partial batch [default: 5]
    #[arg(long, env = "USAGE_FLUSH_INTERVAL_MS", global = true)]
    pub flush_interval_ms: Option<u64>,
    /// Spool folder: accepted events wait here until written [default: spool]
    #[arg(long, env = "USAGE_SPOOL_DIR", global = true)]
    pub spool_dir: Option<PathBuf>,
    /// Cap on spooled bytes not yet written; past it requests are refused [default: 1073741824]
    #[arg(long, env = "USAGE_SPOOL_MAX_BYTES", global = true)]
    pub spool_max_bytes: Option<u64>,
    /// Seconds a shutdown keeps writing spooled events before exiting [default: 20]
    #[arg(long, env = "USAGE_SHUTDOWN_TIMEOUT_SECS", global = true)]
    pub shutdown_timeout_secs: Option<u64>,
    /// Seconds between heartbeats through the write path [default: 30]
    #[arg(long, env = "USAGE_HEARTBEAT_INTERVAL_SECS", global = true)]
    pub heartbeat_interval_secs: Option<u64>,
    /// This collector's name in `collector_heartbeats` [default: $HOSTNAME, else usage-collector]
    #[arg(long, env = "USAGE_INSTANCE", global = true)]
    pub instance: Option<String>,
    /// Send the collector's own metrics and traces over OTLP/gRPC to this endpoint
    /// (`http://jaeger:4317`); never point it at a usage collector [default: none]
    #[arg(long, env = "USAGE_TELEMETRY_ENDPOINT", global = true)]
    pub telemetry_endpoint: Option<String>,
    /// Seconds between pushes of the own metrics [default: 15]
    #[arg(long, env = "USAGE_TELEMETRY_INTERVAL_SECS", global = true)]
    pub telemetry_interval_secs: Option<u64>,
    /// Log format [default: text]
    #[arg(long, env = "USAGE_LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    /// Log filter, for example `info` or `usage_collector=debug` [default: RUST_LOG, else info]
    #[arg(long, env = "USAGE_LOG_LEVEL", global = true)]
    pub log_level: Option<String>,
}

impl Settings {
    /// Builds settings from the file named in `overrides` (if any), then the overrides.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        let file = match &overrides.config {
            Some(path) => FileSettings::read(path, |var| std::env::var(var).ok())?,
            None => FileSettings::default(),
        };
        Self::layer(file, overrides)
    }

    /// Applies `overrides` over `file` over the defaults.
    pub fn layer(file: FileSettings, o: &Overrides) -> Result<Self, ConfigError> {
        let fd = file.database;
        let file_tls = match (fd.tls, fd.disable_ssl) {
            (Some(TlsMode::Disabled) | None, Some(true)) => Some(TlsMode::Disabled),
            (Some(mode), Some(true)) => {
                return Err(ConfigError::Invalid {
                    key: "database.disable_ssl",
                    message: format!("`disable_ssl = true` contradicts `tls = \"{mode}\"`"),
                });
            }
            (tls, _) => tls,
        };
        let password = match (&o.database_password, &o.database_password_file) {
            (Some(password), _) => Some(SecretString::from(password.clone())),
            (None, Some(path)) => Some(read_password(path)?),
            (None, None) => match (fd.password, fd.password_file) {
                (Some(password), _) => Some(SecretString::from(password)),
                (None, Some(path)) => Some(read_password(&path)?),
                (None, None) => None,
            },
        };
        let database = DatabaseSettings {
            url: SecretString::from(
                o.database_url
                    .clone()
                    .or(fd.url)
                    .unwrap_or_else(|| defaults::DATABASE_URL.to_owned()),
            ),
            password,
            tls: o.database_tls.or(file_tls).unwrap_or_default(),
            tls_ca: o.database_tls_ca.clone().or(fd.tls_ca),
            pool_size: positive(
                "database.pool_size",
                o.database_pool_size.or(fd.pool_size),
                defaults::POOL_SIZE,
            )?,
            connect_timeout: Duration::from_secs(positive(
                "database.connect_timeout_secs",
                o.database_connect_timeout_secs.or(fd.connect_timeout_secs),
                defaults::CONNECT_TIMEOUT_SECS,
            )?),
        };
        let fw = file.writer;
        let writer = WriterSettings {
            batch_size: positive(
                "writer.batch_size",
                o.batch_size.or(fw.batch_size),
                defaults::BATCH_SIZE,
            )?,
            flush_interval: Duration::from_millis(
                o.flush_interval_ms
                    .or(fw.flush_interval_ms)
                    .unwrap_or(defaults::FLUSH_INTERVAL_MS),
            ),
            write_timeout: Duration::from_secs(defaults::WRITE_TIMEOUT_SECS),
        };
        Ok(Settings {
            database,
            grpc_listen: address(
                "grpc_listen",
                o.grpc_listen.as_deref().or(file.grpc_listen.as_deref()),
                defaults::GRPC_LISTEN,
            )?,
            admin_listen: address(
                "admin_listen",
                o.admin_listen.as_deref().or(file.admin_listen.as_deref()),
                defaults::ADMIN_LISTEN,
            )?,
            max_request_bytes: positive(
                "max_request_bytes",
                o.max_request_bytes.or(file.max_request_bytes),
                defaults::MAX_REQUEST_BYTES,
            )?,
            writer,
            spool: SpoolSettings {
                dir: o
                    .spool_dir
                    .clone()
                    .or(file.spool.dir)
                    .unwrap_or_else(|| PathBuf::from(defaults::SPOOL_DIR)),
                max_bytes: positive(
                    "spool.max_bytes",
                    o.spool_max_bytes.or(file.spool.max_bytes),
                    defaults::SPOOL_MAX_BYTES,
                )?,
            },
            shutdown_timeout: Duration::from_secs(
                o.shutdown_timeout_secs
                    .or(file.shutdown_timeout_secs)
                    .unwrap_or(defaults::SHUTDOWN_TIMEOUT_SECS),
            ),
            heartbeat_interval: Duration::from_secs(positive(
                "heartbeat_interval_secs",
                o.heartbeat_interval_secs.or(file.heartbeat_interval_secs),
                defaults::HEARTBEAT_INTERVAL_SECS,
            )?),
            instance: o
                .instance
                .clone()
                .or(file.instance)
                .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
                .unwrap_or_else(|| defaults::INSTANCE.to_owned()),
            telemetry_endpoint: o.telemetry_endpoint.clone().or(file.telemetry_endpoint),
            telemetry_interval: Duration::from_secs(positive(
                "telemetry_interval_secs",
                o.telemetry_interval_secs.or(file.telemetry_interval_secs),
                defaults::TELEMETRY_INTERVAL_SECS,
            )?),
            log: LogSettings {
                format: o.log_format.or(file.log.format).unwrap_or_default(),
                filter: o.log_level.clone().or(file.log.level),
            },
        })
    }
}

impl FileSettings {
    /// Reads and parses a settings file, expanding `${VAR}` with `lookup`.
    pub fn read(path: &Path, lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, lookup)
    }

    /// Parses settings text; `path` only names the source in errors.
    pub fn parse(
        text: &str,
        path: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let expanded =
            expand_vars(text, &lookup).map_err(|(line, var)| ConfigError::UnsetVariable {
                path: path.to_owned(),
                line,
                var,
            })?;
        toml::from_str(&expanded).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
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

fn positive<T: PartialOrd + Default + std::fmt::Display + Copy>(
    key: &'static str,
    value: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    let value = value.unwrap_or(default);
    if value > T::default() {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            key,
            message: format!("must be greater than zero, got {value}"),
        })
    }
}

fn address(
    key: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let value = value.unwrap_or(default);
    SocketAddr::from_str(value).map_err(|e| ConfigError::Invalid {
        key,
        message: format!("{value:?} is not a host:port address: {e}"),
    })
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
        let err = FileSettings::parse(
            "\n[database]\nurl = \"${NOPE}\"\n",
            Path::new("c.toml"),
            lookup,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file c.toml: line 3: environment variable NOPE is not set"
        );
    }

    #[test]
    fn flag_wins_over_file_and_file_over_default() {
        let file = FileSettings::parse(
            "grpc_listen = \"127.0.0.1:5000\"\n[writer]\nbatch_size = 50\n[database]\ndisable_ssl = true\n",
            Path::new("c.toml"),
            lookup,
        )
        .unwrap();
        let overrides = Overrides {
            grpc_listen: Some("127.0.0.1:6000".into()),
            ..Overrides::default()
        };
        let settings = Settings::layer(file, &overrides).unwrap();
        assert_eq!(settings.grpc_listen.port(), 6000);
        assert_eq!(settings.writer.batch_size, 50);
        assert_eq!(settings.database.tls, TlsMode::Disabled);
        assert_eq!(settings.admin_listen.port(), 9464);
        assert_eq!(
            settings.database.url.expose_secret(),
            defaults::DATABASE_URL
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let err = FileSettings::parse("[writer]\nbatchsize = 5\n", Path::new("c.toml"), lookup)
            .unwrap_err();
        assert!(err.to_string().contains("batchsize"), "{err}");
        let overrides = Overrides {
            batch_size: Some(0),
            ..Overrides::default()
        };
        let err = Settings::layer(FileSettings::default(), &overrides).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid setting writer.batch_size: must be greater than zero, got 0"
        );
        let file = FileSettings::parse(
            "[database]\ndisable_ssl = true\ntls = \"required\"\n",
            Path::new("c.toml"),
            lookup,
        )
        .unwrap();
        assert!(Settings::layer(file, &Overrides::default()).is_err());
    }

    #[test]
    fn the_example_file_in_deploy_parses() {
        let text = include_str!("../../../deploy/collector.example.toml");
        let file = FileSettings::parse(text, Path::new("collector.example.toml"), lookup).unwrap();
        let settings = Settings::layer(file, &Overrides::default());
        // The example names a password file that only exists in a pod.
        assert!(
            matches!(settings, Err(ConfigError::PasswordFile { .. })),
            "{settings:?}"
        );
    }

    #[test]
    fn debug_output_hides_the_url_and_password() {
        let overrides = Overrides {
            database_url: Some("mysql://u:hunter2@h/db".into()),
            database_password: Some("hunter3".into()),
            ..Overrides::default()
        };
        let settings = Settings::layer(FileSettings::default(), &overrides).unwrap();
        let debug = format!("{settings:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("hunter3"),
            "{debug}"
        );
    }
}
