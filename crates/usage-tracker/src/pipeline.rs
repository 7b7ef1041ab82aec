//! The export pipeline: a bounded queue in front of one background thread that batches and
//! sends over OTLP/gRPC.
//!
//! The application's threads only clone the record and `try_send` it: when the queue is full
//! the event is dropped and counted, never waited for. The export thread owns a small tokio
//! runtime of its own, so the tracker works the same in a tokio application and in a plain
//! synchronous `main`. Each batch gets the exporter's own retry policy (the OTLP-recommended
//! three retries with backoff, honouring the collector's RetryInfo), then counts as failed;
//! meanwhile the queue keeps absorbing events up to its capacity.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use opentelemetry::logs::AnyValue;
use opentelemetry::{InstrumentationScope, Value};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};
use tokio::sync::mpsc;

use crate::catalog::{self, keys};
use crate::config::{Config, TlsConfig};
use crate::health::Shared;
use crate::warning::WarningKind;

pub(crate) enum Item {
    Log(Box<(SdkLogRecord, InstrumentationScope)>),
    Span(Box<SpanData>),
}

pub(crate) enum Control {
    /// Send everything queued, then answer.
    Flush(std_mpsc::Sender<()>),
    /// Send everything queued, answer, and stop.
    Shutdown(std_mpsc::Sender<()>),
}

/// The application-side end of the pipeline: an OpenTelemetry log and span processor.
#[derive(Clone)]
pub(crate) struct Queue {
    /// The tracking plan: an event it declares must carry what it requires.
    pub(crate) plan: Arc<catalog::Plan>,
    items: mpsc::Sender<Item>,
    control: mpsc::UnboundedSender<Control>,
    shared: Arc<Shared>,
    /// Set by the first shutdown; the providers' own shutdowns after it return at once.
    stopping: Arc<AtomicBool>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("stats", &self.shared.stats())
            .finish()
    }
}

impl Queue {
    fn push(&self, item: Item) {
        self.shared.recorded();
        if self.items.try_send(item).is_err() {
            self.shared.dropped();
        }
    }

    /// Stops the export thread after it sent what is queued; waits at most `deadline`.
    /// Only the first call does anything.
    pub(crate) fn stop(&self, deadline: Duration) -> bool {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return true;
        }
        self.ask(Control::Shutdown, deadline)
    }

    /// Asks the export thread to do `make(ack)` and waits at most `deadline` for its answer.
    pub(crate) fn ask(
        &self,
        make: fn(std_mpsc::Sender<()>) -> Control,
        deadline: Duration,
    ) -> bool {
        let (ack, done) = std_mpsc::channel();
        self.control.send(make(ack)).is_ok() && done.recv_timeout(deadline).is_ok()
    }
}

impl LogProcessor for Queue {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        let name = record.event_name().unwrap_or_default();
        let has_value = |key: &str| {
            record.attributes_iter().any(|(k, v)| {
                k.as_str() == key
                    && !matches!(v, AnyValue::String(s) if s.as_str().trim().is_empty())
            })
        };
        if let Some((event, key)) = self.plan.missing_required(name, has_value) {
            return self.shared.refused(event, key);
        }
        self.push(Item::Log(Box::new((record.clone(), scope.clone()))));
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, Duration::from_secs(30))
            .then_some(())
            .ok_or(opentelemetry_sdk::error::OTelSdkError::Timeout(
                Duration::from_secs(30),
            ))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.stop(timeout)
            .then_some(())
            .ok_or(opentelemetry_sdk::error::OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        // The collector names a span by its `event.name` attribute, else by the span's name.
        let attribute = |key: &str| span.attributes.iter().find(|kv| kv.key.as_str() == key);
        let name = attribute(keys::EVENT_NAME).map(|kv| kv.value.as_str());
        let name = name.as_deref().unwrap_or(&span.name);
        let has_value = |key: &str| {
            attribute(key).is_some_and(
                |kv| !matches!(&kv.value, Value::String(s) if s.as_str().trim().is_empty()),
            )
        };
        if let Some((event, key)) = self.plan.missing_required(name, has_value) {
            return self.shared.refused(event, key);
        }
        self.push(Item::Span(Box::new(span)));
    }

    fn force_flush(&self) -> OTelSdkResult {
        LogProcessor::force_flush(self)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        LogProcessor::shutdown_with_timeout(self, timeout)
    }
}

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The export thread or its runtime could not be created.
    #[error("cannot start the export thread: {0}")]
    Thread(#[source] std::io::Error),
    /// An exporter could not be built (for example, an invalid endpoint).
    #[error("cannot set up export to {endpoint}: {source}")]
    Exporter {
        /// The endpoint.
        endpoint: String,
        /// The exporter's error.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// An endpoint without `http://` or `https://`: whether to use TLS would be a guess (the
    /// OTLP exporter would pick TLS with no trusted roots).
    #[error(
        "the endpoint {endpoint:?} has no scheme: write http://host:4317 (plain) or https://host:4317 (TLS)"
    )]
    Endpoint {
        /// The endpoint.
        endpoint: String,
    },
    /// A TLS file (a CA, a client certificate or key) cannot be used.
    #[error("cannot use the TLS {what} file {file}: {problem}")]
    Tls {
        /// Which file (`CA`, `client certificate`, `client key`).
        what: &'static str,
        /// The file.
        file: std::path::PathBuf,
        /// What is wrong (never the key's contents).
        problem: String,
    },
    /// The tracking plan file cannot be used.
    #[error("cannot use the tracking plan {file}: {problem}")]
    Plan {
        /// The file.
        file: std::path::PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// `verify` was asked for and the collector did not answer.
    #[error("the collector at {endpoint} did not accept an empty export request: {source}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        #[source]
        source: VerifyError,
    },
}

/// Why the collector did not accept `verify`'s empty export request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The endpoint is not a valid URI.
    #[error("invalid endpoint: {}", chain(.0))]
    InvalidEndpoint(#[source] tonic::transport::Error),
    /// No connection (refused, unknown host, TLS failure).
    #[error("{}", chain(.0))]
    Connect(#[source] tonic::transport::Error),
    /// The collector answered with an error status.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(#[source] tonic::Status),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

struct Worker {
    logs: opentelemetry_otlp::LogExporter,
    spans: opentelemetry_otlp::SpanExporter,
    config: Config,
    shared: Arc<Shared>,
}

/// Starts the export thread; returns once its exporters are built (and, when asked, the
/// collector has answered).
pub(crate) fn start(
    config: Config,
    resource: Resource,
    shared: Arc<Shared>,
) -> Result<Queue, StartError> {
    let plan = match &config.catalog_file {
        None => Arc::new(catalog::built_in().clone()),
        Some(file) => {
            let problem = |problem: String| StartError::Plan {
                file: file.clone(),
                problem,
            };
            let text = std::fs::read_to_string(file).map_err(|e| problem(e.to_string()))?;
            Arc::new(catalog::Plan::parse(&text).map_err(|e| problem(e.to_string()))?)
        }
    };
    let (items, item_rx) = mpsc::channel(config.queue_size.max(1));
    let (control, control_rx) = mpsc::unbounded_channel();
    let (ready, started) = std_mpsc::channel();
    let queue = Queue {
        plan,
        items,
        control,
        shared: shared.clone(),
        stopping: Arc::default(),
    };
    std::thread::Builder::new()
        .name("usage-tracker-export".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    // The receiver only disappears if `start` itself is gone.
                    ready.send(Err(StartError::Thread(e))).ok();
                    return;
                }
            };
            runtime.block_on(async move {
                let worker = match Worker::build(config, resource, shared).await {
                    Ok(worker) => worker,
                    Err(e) => {
                        ready.send(Err(e)).ok();
                        return;
                    }
                };
                ready.send(Ok(())).ok();
                worker.run(item_rx, control_rx).await;
            });
        })
        .map_err(StartError::Thread)?;
    match started.recv() {
        Ok(Ok(())) => Ok(queue),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(StartError::Thread(std::io::Error::other(
            "the export thread stopped while starting",
        ))),
    }
}

/// The configured headers as gRPC metadata; an invalid one is left out with a warning that
/// names its key (never its value).
fn metadata(config: &Config, shared: &Shared) -> tonic::metadata::MetadataMap {
    let mut map = tonic::metadata::MetadataMap::new();
    for (key, value) in &config.headers {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes()),
            value.parse(),
        ) {
            map.insert(key, value);
        } else {
            shared.warn(
                WarningKind::InvalidHeader,
                format!("header {key:?} is not a valid gRPC metadata entry; not sent"),
            );
        }
    }
    map
}

impl Worker {
    async fn build(
        config: Config,
        resource: Resource,
        shared: Arc<Shared>,
    ) -> Result<Self, StartError> {
        let exporter_error = |endpoint: &str| {
            let endpoint = endpoint.to_owned();
            move |source| StartError::Exporter { endpoint, source }
        };
        let metadata = metadata(&config, &shared);
        for endpoint in [&config.logs_endpoint, &config.traces_endpoint] {
            if scheme_of(endpoint).is_none() {
                return Err(StartError::Endpoint {
                    endpoint: endpoint.clone(),
                });
            }
        }
        let logs_tls = client_tls(&config.logs_endpoint, &config.logs_tls)?;
        let traces_tls = client_tls(&config.traces_endpoint, &config.traces_tls)?;
        let mut logs = opentelemetry_otlp::LogExporter::builder()
            .with_tonic()
            .with_endpoint(config.logs_endpoint.clone())
            .with_timeout(config.timeout)
            .with_metadata(metadata.clone());
        if let Some(tls) = logs_tls.clone() {
            logs = logs.with_tls_config(tls);
        }
        let mut logs = logs
            .build()
            .map_err(exporter_error(&config.logs_endpoint))?;
        let mut spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.traces_endpoint.clone())
            .with_timeout(config.timeout)
            .with_metadata(metadata.clone());
        if let Some(tls) = traces_tls {
            spans = spans.with_tls_config(tls);
        }
        let mut spans = spans
            .build()
            .map_err(exporter_error(&config.traces_endpoint))?;
        logs.set_resource(&resource);
        spans.set_resource(&resource);
        if let Some(timeout) = config.verify_timeout {
            verify(&config.logs_endpoint, logs_tls, metadata, timeout).await?;
        }
        Ok(Worker {
            logs,
            spans,
            config,
            shared,
        })
    }

    async fn run(
        self,
        mut items: mpsc::Receiver<Item>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        let mut batch = Vec::with_capacity(self.config.batch_size);
        let mut tick = tokio::time::interval(self.config.export_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                order = control.recv() => {
                    let (ack, stop) = match order {
                        Some(Control::Flush(ack)) => (Some(ack), false),
                        Some(Control::Shutdown(ack)) => (Some(ack), true),
                        None => (None, true),
                    };
                    while let Ok(item) = items.try_recv() {
                        batch.push(item);
                        if batch.len() >= self.config.batch_size {
                            self.export(std::mem::take(&mut batch)).await;
                        }
                    }
                    self.export(std::mem::take(&mut batch)).await;
                    self.shared.check_refusals();
                    if let Some(ack) = ack {
                        ack.send(()).ok(); // the asker may have stopped waiting
                    }
                    if stop {
                        return;
                    }
                }
                received = items.recv_many(&mut batch, self.config.batch_size) => {
                    if received == 0 {
                        self.export(std::mem::take(&mut batch)).await;
                        return;
                    }
                    if batch.len() >= self.config.batch_size {
                        self.export(std::mem::take(&mut batch)).await;
                    }
                }
                _ = tick.tick() => {
                    self.shared.check_drops(&self.config.logs_endpoint);
                    self.shared.check_refusals();
                    if !batch.is_empty() {
                        self.export(std::mem::take(&mut batch)).await;
                    }
                }
            }
        }
    }

    /// Sends one batch: its log records in one request, its spans in another.
    async fn export(&self, batch: Vec<Item>) {
        if batch.is_empty() {
            return;
        }
        let mut logs = Vec::new();
        let mut spans = Vec::new();
        for item in batch {
            match item {
                Item::Log(log) => logs.push(log),
                Item::Span(span) => spans.push(*span),
            }
        }
        if !logs.is_empty() {
            let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                logs.iter().map(|b| (&b.0, &b.1)).collect();
            let result = self.logs.export(LogBatch::new(&refs)).await;
            self.settle(logs.len() as u64, &self.config.logs_endpoint, result);
        }
        if !spans.is_empty() {
            let count = spans.len() as u64;
            let result = self.spans.export(spans).await;
            self.settle(count, &self.config.traces_endpoint, result);
        }
    }

    fn settle(&self, events: u64, endpoint: &str, result: OTelSdkResult) {
        match result {
            Ok(()) => self.shared.export_succeeded(events, endpoint),
            Err(e) => self.shared.export_failed(events, endpoint, &e.to_string()),
        }
    }
}

/// An endpoint's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// `endpoint`'s scheme, when it has one of the two.
fn scheme_of(endpoint: &str) -> Option<Scheme> {
    let starts = |prefix: &str| {
        endpoint
            .get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    };
    if starts("https://") {
        Some(Scheme::Https)
    } else if starts("http://") {
        Some(Scheme::Http)
    } else {
        None
    }
}

/// The TLS settings for `endpoint`: `None` for plain `http://`; for `https://`, the CA file's
/// certificates (else the system's roots) and the client certificate, each file read and
/// checked now so that a bad one is an error naming it.
fn client_tls(
    endpoint: &str,
    tls: &TlsConfig,
) -> Result<Option<tonic::transport::ClientTlsConfig>, StartError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    if scheme_of(endpoint) != Some(Scheme::Https) {
        return Ok(None);
    }
    let read = |what: &'static str, file: &std::path::Path| {
        let error = |problem: String| StartError::Tls {
            what,
            file: file.to_owned(),
            problem,
        };
        let bytes = std::fs::read(file).map_err(|e| error(e.to_string()))?;
        let found = if what == "client key" {
            match PrivateKeyDer::from_pem_slice(&bytes) {
                Ok(_) => Ok(true),
                Err(rustls_pki_types::pem::Error::NoItemsFound) => Ok(false),
                Err(e) => Err(e),
            }
        } else {
            CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map(|certs| !certs.is_empty())
        };
        match found {
            Ok(true) => Ok(bytes),
            Ok(false) if what == "client key" => Err(error(
                "no private key in it (a PEM `PRIVATE KEY` section)".to_owned(),
            )),
            Ok(false) => Err(error(
                "no certificate in it (a PEM `CERTIFICATE` section)".to_owned(),
            )),
            Err(e) => Err(error(format!("not valid PEM: {e}"))),
        }
    };
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca_file {
        Some(file) => config.ca_certificate(Certificate::from_pem(read("CA", file)?)),
        None => config.with_native_roots(),
    };
    match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(
                read("client certificate", cert)?,
                read("client key", key)?,
            ));
        }
        (None, None) => {}
        (Some(file), None) | (None, Some(file)) => {
            return Err(StartError::Tls {
                what: if tls.client_cert_file.is_some() {
                    "client certificate"
                } else {
                    "client key"
                },
                file: file.clone(),
                problem: "a client certificate needs its key, and a key its certificate".to_owned(),
            });
        }
    }
    Ok(Some(config))
}

/// Sends an empty logs export request and waits for the answer.
async fn verify(
    endpoint: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    metadata: tonic::metadata::MetadataMap,
    timeout: Duration,
) -> Result<(), StartError> {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    let call = async {
        let mut channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .map_err(VerifyError::InvalidEndpoint)?;
        if let Some(tls) = tls {
            channel = channel.tls_config(tls).map_err(VerifyError::Connect)?;
        }
        let channel = channel.connect().await.map_err(VerifyError::Connect)?;
        let mut request = tonic::Request::new(ExportLogsServiceRequest::default());
        *request.metadata_mut() = metadata;
        LogsServiceClient::new(channel)
            .export(request)
            .await
            .map_err(VerifyError::Status)?;
        Ok(())
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(VerifyError::Timeout(timeout)))
        .map_err(|source| StartError::Unreachable {
            endpoint: endpoint.to_owned(),
            source,
        })
}

/// An error and its causes in one line: tonic's transport error says only "transport error",
/// the reason (connection refused, bad URI) is in its sources.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_with_ca(file: &std::path::Path) -> TlsConfig {
        TlsConfig {
            ca_file: Some(file.to_owned()),
            ..TlsConfig::default()
        }
    }

    #[test]
    fn an_endpoint_s_scheme_is_read_case_blind_and_a_bare_one_has_none() {
        assert_eq!(scheme_of("https://collector:4317"), Some(Scheme::Https));
        assert_eq!(scheme_of("HTTP://collector:4317"), Some(Scheme::Http));
        assert_eq!(scheme_of("collector:4317"), None);
        assert_eq!(scheme_of("http:/collector"), None);
    }

    #[test]
    fn an_unusable_ca_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("usage-tracker-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not-a-ca.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let missing = dir.join("missing.pem");
        for (file, problem) in [
            (&not_pem, "no certificate in it"),
            (&missing, "No such file"),
        ] {
            let error = client_tls("https://collector:4317", &tls_with_ca(file)).unwrap_err();
            let text = error.to_string();
            assert!(text.contains(&file.display().to_string()), "{text}");
            assert!(text.contains("CA") && text.contains(problem), "{text}");
        }
        // A plain endpoint takes no TLS, whatever the files.
        assert!(
            client_tls("http://collector:4317", &tls_with_ca(&missing))
                .unwrap()
                .is_none()
        );
        let half = TlsConfig {
            client_cert_file: Some(not_pem.clone()),
            ..TlsConfig::default()
        };
        let error = client_tls("HTTPS://collector:4317", &half).unwrap_err();
        assert!(error.to_string().contains("needs its key"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
