//! `usage-collector status`: the `/status` body a collector serves on its admin port, made from
//! its stages at each request, and the command that fetches it and prints it as a table (or as
//! the JSON itself).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::catalog::Current;
use crate::health::status::{
    DeadLetterStatus, PlanStatus, ReadinessStatus, SchemaStatus, SpoolStatus, Status, StatusSource,
    WriterStatus,
};
use crate::health::{Health, Metrics};
use crate::sink::Sink;
use crate::sink::compat::RELEASE;
use crate::spool::Spool;

/// Longest the database may take to answer the status's two queries.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// What the status is made from.
#[derive(Debug, Clone)]
pub struct Parts {
    /// `--instance`.
    pub instance: String,
    /// The plan file, if one is given.
    pub plan_file: Option<PathBuf>,
    /// The catalogue in force.
    pub catalog: Current,
    /// The database.
    pub sink: Sink,
    /// The spool.
    pub spool: Spool,
    /// Readiness.
    pub health: Health,
    /// Counters (and the last minute per service).
    pub metrics: Arc<Metrics>,
}

/// The source the admin server asks for each `/status`.
pub fn source(parts: Parts) -> StatusSource {
    let started = Instant::now();
    let parts = Arc::new(parts);
    Arc::new(move || {
        let parts = parts.clone();
        Box::pin(async move { status(&parts, started).await })
    })
}

async fn status(parts: &Parts, started: Instant) -> Status {
    let catalog = parts.catalog.get();
    let (readiness, _) = parts.health.readiness(false);
    let (records, bytes) = parts.spool.depth();
    let oldest_age_seconds = if records == 0 {
        None
    } else {
        match parts.spool.read(parts.spool.checkpoint(), 1).await {
            Ok(batch) => batch.records.first().map(|oldest| {
                let now = crate::event::now_unix_nano();
                now.saturating_sub(oldest.received_unix_nano) as f64 / 1e9
            }),
            Err(e) => {
                tracing::debug!(error = %e, "status: cannot read the oldest spooled record");
                None
            }
        }
    };
    let last_write = parts.metrics.last_write_timestamp_seconds.get();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let schema = match tokio::time::timeout(QUERY_TIMEOUT, parts.sink.schema_serves()).await {
        Ok(Ok(serves)) => SchemaStatus {
            version: Some(serves.schema_version),
            expected_version: serves.own_version,
            serves: serves.describe(),
            error: None,
        },
        Ok(Err(e)) => schema_error(parts, e.message),
        Err(_) => schema_error(parts, format!("no answer within {QUERY_TIMEOUT:?}")),
    };
    let dead_letters =
        match tokio::time::timeout(QUERY_TIMEOUT, parts.sink.dead_letter_counts()).await {
            Ok(Ok(by_reason)) => DeadLetterStatus {
                total: Some(by_reason.values().sum()),
                by_reason,
                error: None,
            },
            Ok(Err(e)) => DeadLetterStatus {
                total: None,
                by_reason: Default::default(),
                error: Some(e.message),
            },
            Err(_) => DeadLetterStatus {
                total: None,
                by_reason: Default::default(),
                error: Some(format!("no answer within {QUERY_TIMEOUT:?}")),
            },
        };
    Status {
        version: RELEASE.to_owned(),
        instance: parts.instance.clone(),
        uptime_seconds: started.elapsed().as_secs(),
        schema,
        plan: PlanStatus {
            file: parts.plan_file.as_ref().map(|f| f.display().to_string()),
            events: catalog.plan().events.len(),
            tables: catalog.tables().len(),
        },
        readiness: ReadinessStatus {
            status: readiness.status.to_owned(),
            checks: readiness
                .checks
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        },
        spool: SpoolStatus {
            records,
            bytes,
            capacity_bytes: parts.spool.capacity(),
            oldest_age_seconds,
        },
        writer: WriterStatus {
            state: readiness_check(&parts.health, "writer"),
            last_write_unix_seconds: (last_write > 0.0).then_some(last_write),
            last_write_age_seconds: (last_write > 0.0).then(|| (now - last_write).max(0.0)),
        },
        dead_letters,
        services: parts.metrics.last_minute.snapshot(),
    }
}

fn schema_error(parts: &Parts, error: String) -> SchemaStatus {
    let expected_version = match parts.sink.is_embedded() {
        true => crate::sink::sqlite::migrations::migrator(),
        false => crate::sink::mysql::migrations::migrator(),
    }
    .iter()
    .map(|m| m.version)
    .max()
    .unwrap_or(0);
    SchemaStatus {
        version: None,
        expected_version,
        serves: "unknown".to_owned(),
        error: Some(error),
    }
}

fn readiness_check(health: &Health, check: &str) -> String {
    let (readiness, _) = health.readiness(false);
    readiness
        .checks
        .get(check)
        .cloned()
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Why the status could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not one.
    #[error("invalid admin URL {url:?}: {why}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The CA file cannot be used.
    #[error("cannot use the CA file {file}: {why}")]
    Ca {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The collector did not answer as expected.
    #[error("{url}: {why}")]
    Request {
        /// The URL asked.
        url: String,
        /// What went wrong.
        why: String,
    },
}

/// Fetches `/status` from the admin port at `admin` (`http://host:9464`, or `https://…` with
/// the admin listener's CA in `ca_file`, else the web's usual roots), within `timeout`.
pub async fn fetch(
    admin: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<Status, FetchError> {
    let url = format!("{}/status", admin.trim_end_matches('/'));
    let parsed = url::Url::parse(&url).map_err(|e| FetchError::Url {
        url: admin.to_owned(),
        why: e.to_string(),
    })?;
    let request_error = |why: String| FetchError::Request {
        url: url.clone(),
        why,
    };
    let host = parsed.host_str().ok_or_else(|| FetchError::Url {
        url: admin.to_owned(),
        why: "no host".to_owned(),
    })?;
    let tls = match parsed.scheme() {
        "http" => None,
        "https" => Some(client_tls(ca_file)?),
        other => {
            return Err(FetchError::Url {
                url: admin.to_owned(),
                why: format!("scheme {other:?}: use http:// or https://"),
            });
        }
    };
    let port = parsed.port_or_known_default().unwrap_or(9464);
    let request = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| request_error(format!("cannot connect: {e}")))?;
        let body = match tls {
            None => get(tcp, &parsed).await,
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| request_error(format!("host name: {e}")))?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| request_error(format!("TLS: {e}")))?;
                get(stream, &parsed).await
            }
        }
        .map_err(request_error)?;
        serde_json::from_slice::<Status>(&body)
            .map_err(|e| request_error(format!("not a status answer ({e})")))
    };
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| FetchError::Request {
            url: url.clone(),
            why: format!("no answer within {timeout:?}"),
        })?
}

fn client_tls(
    ca_file: Option<&Path>,
) -> Result<Arc<tokio_rustls::rustls::ClientConfig>, FetchError> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(file) => {
            let ca = |why: String| FetchError::Ca {
                file: file.to_owned(),
                why,
            };
            let pem = std::fs::read(file).map_err(|e| ca(e.to_string()))?;
            use rustls_pki_types::pem::PemObject;
            let mut found = 0;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| ca(e.to_string()))?;
                roots.add(cert).map_err(|e| ca(e.to_string()))?;
                found += 1;
            }
            if found == 0 {
                return Err(ca("no certificate in it".to_owned()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Ca {
            file: ca_file.map(Path::to_owned).unwrap_or_default(),
            why: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One HTTP/1.1 GET over `stream`; the body of a 200 answer.
async fn get<S>(stream: S, url: &url::Url) -> Result<Vec<u8>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(connection);
    let authority = url[url::Position::BeforeHost..url::Position::AfterPort].to_owned();
    let request = http::Request::get(url.path())
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(http_body_util::Empty::<prost::bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    driver.abort();
    if status != http::StatusCode::OK {
        return Err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(512)])
        ));
    }
    Ok(body.to_vec())
}

/// The status as a table for people.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        out.push_str(&format!("{key:<22}{value}\n"));
    };
    line(
        "collector",
        format!(
            "{} {} (up {})",
            status.instance,
            status.version,
            human_seconds(status.uptime_seconds as f64)
        ),
    );
    let schema = &status.schema;
    line(
        "schema",
        match (&schema.error, schema.version) {
            (Some(error), _) => format!("unknown: {error}"),
            (None, _) => schema.serves.clone(),
        },
    );
    line(
        "tracking plan",
        format!(
            "{} ({} events, {} tables)",
            status.plan.file.as_deref().unwrap_or("built-in"),
            status.plan.events,
            status.plan.tables
        ),
    );
    line("readiness", status.readiness.status.clone());
    for (check, state) in &status.readiness.checks {
        line(&format!("  {check}"), state.clone());
    }
    let spool = &status.spool;
    line(
        "spool",
        format!(
            "{} requests, {} of {} bytes{}",
            spool.records,
            spool.bytes,
            spool.capacity_bytes,
            spool
                .oldest_age_seconds
                .map(|age| format!(", oldest {} old", human_seconds(age)))
                .unwrap_or_default()
        ),
    );
    line(
        "writer",
        format!(
            "{}{}",
            status.writer.state,
            status
                .writer
                .last_write_age_seconds
                .map(|age| format!(", last write {} ago", human_seconds(age)))
                .unwrap_or_else(|| ", nothing written yet".to_owned())
        ),
    );
    let dead = &status.dead_letters;
    line(
        "dead letters",
        match (&dead.error, dead.total) {
            (Some(error), _) => format!("unknown: {error}"),
            (None, Some(0)) | (None, None) => "none".to_owned(),
            (None, Some(total)) => {
                let reasons: Vec<String> = dead
                    .by_reason
                    .iter()
                    .map(|(reason, n)| format!("{reason} {n}"))
                    .collect();
                format!("{total} ({})", reasons.join(", "))
            }
        },
    );
    out.push_str("\nservice                 accepted/min   written/min   not usage/min\n");
    if status.services.is_empty() {
        out.push_str("(nothing in the last minute)\n");
    }
    for service in &status.services {
        out.push_str(&format!(
            "{:<24}{:>12}{:>14}{:>16}\n",
            service.service,
            service.accepted_last_minute,
            service.written_last_minute,
            service.not_usage_last_minute
        ));
    }
    out
}

fn human_seconds(seconds: f64) -> String {
    match seconds {
        s if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}
