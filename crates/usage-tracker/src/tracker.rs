//! [`Tracker`]: the running tracker, its `tracing` layer, its counters, and its shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

use crate::config::{Config, EnvError};
use crate::health::{Health, Shared, Stats};
use crate::pipeline::{self, Control, Queue, StartError};
use crate::record::{AttributeValue, Event, RecordError, TARGET};
use crate::warning::{Warning, WarningKind, Warnings};

/// The tracker could not start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A standard environment variable is unusable.
    #[error("usage tracking: {0}")]
    Env(#[from] EnvError),
    /// The export pipeline could not start, or the collector did not answer `verify`.
    #[error("usage tracking: {0}")]
    Start(#[from] StartError),
    /// `init` found another global subscriber; use `Tracker::layer` in that subscriber instead.
    #[error(
        "usage tracking: a global tracing subscriber is already set; start the tracker with \
         Tracker::builder() and add tracker.layer() to your subscriber"
    )]
    SubscriberAlreadySet,
}

/// Settings for a [`Tracker`], from code or from the environment.
#[derive(Debug, Clone, Default)]
pub struct TrackerBuilder {
    config: Config,
    warnings: Warnings,
}

impl TrackerBuilder {
    /// Defaults, ignoring the environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// The standard OpenTelemetry environment variables (see [`Config::from_env`]).
    pub fn from_env() -> Result<Self, EnvError> {
        Ok(Self::from_config(Config::from_env()?))
    }

    /// These settings.
    pub fn from_config(config: Config) -> Self {
        Self {
            config,
            warnings: Warnings::default(),
        }
    }

    /// Checks events against this tracking plan file, the one the collector reads
    /// (`USAGE_CATALOG_FILE`): an event it would refuse is refused here, where the application
    /// hears of it. Without it, the built-in plan. A file that cannot be read or is not a valid
    /// plan makes [`TrackerBuilder::start`] fail with [`StartError::Plan`].
    pub fn catalog_file(mut self, file: impl Into<std::path::PathBuf>) -> Self {
        self.config.catalog_file = Some(file.into());
        self
    }

    /// Sends logs and spans to this collector endpoint (`http://host:4317`).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        let endpoint = endpoint.into();
        self.config.logs_endpoint = endpoint.clone();
        self.config.traces_endpoint = endpoint;
        self
    }

    /// Adds gRPC metadata to every export request.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.headers.push((key.into(), value.into()));
        self
    }

    /// Sends `authorization: Bearer <token>`.
    pub fn bearer_token(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    /// Trusts the CA certificates in `file` (PEM), instead of the system's roots, for an
    /// `https://` endpoint (as `OTEL_EXPORTER_OTLP_CERTIFICATE` does). A file that cannot be
    /// read or holds no certificate makes `start` fail, naming it.
    pub fn tls_ca_file(mut self, file: impl Into<std::path::PathBuf>) -> Self {
        let file = file.into();
        self.config.logs_tls.ca_file = Some(file.clone());
        self.config.traces_tls.ca_file = Some(file);
        self
    }

    /// Trusts the system's roots for an `https://` endpoint (the default).
    pub fn tls_system_roots(mut self) -> Self {
        self.config.logs_tls.ca_file = None;
        self.config.traces_tls.ca_file = None;
        self
    }

    /// Presents this client certificate chain and key (PEM files) to a collector that asks for
    /// one (mutual TLS; `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `…_CLIENT_KEY`).
    pub fn tls_client_identity(
        mut self,
        cert_file: impl Into<std::path::PathBuf>,
        key_file: impl Into<std::path::PathBuf>,
    ) -> Self {
        let (cert, key) = (cert_file.into(), key_file.into());
        for tls in [&mut self.config.logs_tls, &mut self.config.traces_tls] {
            tls.client_cert_file = Some(cert.clone());
            tls.client_key_file = Some(key.clone());
        }
        self
    }

    /// Per-request timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// The `service.name` resource attribute.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.config.service_name = Some(name.into());
        self
    }

    /// Another resource attribute.
    pub fn resource_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config
            .resource_attributes
            .push((key.into(), value.into()));
        self
    }

    /// Queue capacity in events (default 2048).
    pub fn queue_size(mut self, events: usize) -> Self {
        self.config.queue_size = events;
        self
    }

    /// Longest wait before a partial batch is sent (default 200 ms).
    pub fn export_interval(mut self, interval: Duration) -> Self {
        self.config.export_interval = interval;
        self
    }

    /// How long dropping the tracker waits for queued events (default 5 s).
    pub fn shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.config.shutdown_deadline = deadline;
        self
    }

    /// Makes `start` send an empty export request and fail unless the collector answers in time.
    pub fn verify(mut self, timeout: Duration) -> Self {
        self.config.verify_timeout = Some(timeout);
        self
    }

    /// Also exports the application's other `tracing` events as log records (off by default).
    pub fn export_app_logs(mut self, on: bool) -> Self {
        self.config.export_app_logs = on;
        self
    }

    /// Sends the tracker's warnings (export failing, still failing, working again, events
    /// refused, events left unsent at shutdown, a header not sent) to `handler` instead of
    /// stderr. Each carries its message and the counts; its `Display` is the line the tracker
    /// would have written to stderr.
    ///
    /// The handler runs on the tracker's export thread (or on the thread that shuts the tracker
    /// down), so it should be quick. Warnings never go through the tracker's export; a handler
    /// that logs them with `tracing` under the target `usage_tracker` keeps it that way even with
    /// [`export_app_logs`](Self::export_app_logs) on. A handler that panics is caught and the
    /// warning is written to stderr.
    ///
    /// ```no_run
    /// let tracker = usage_tracker::Tracker::builder()
    ///     .on_warning(|w| tracing::warn!(target: "usage_tracker", failed = w.stats.failed, "{}", w.message))
    ///     .start()?;
    /// # Ok::<(), usage_tracker::InitError>(())
    /// ```
    pub fn on_warning(mut self, handler: impl Fn(&Warning) + Send + Sync + 'static) -> Self {
        self.warnings = Warnings::to(Arc::new(handler));
        self
    }

    /// Starts the export thread. Add [`Tracker::layer`] to the application's subscriber.
    ///
    /// Keep the returned [`Tracker`] for as long as the application records events: dropping
    /// it sends what is queued and stops tracking.
    #[must_use = "dropping the Tracker stops usage tracking at once; keep it alive (e.g. `let _tracker = …`) until the application exits"]
    pub fn start(self) -> Result<Tracker, InitError> {
        Tracker::start(self.config, self.warnings)
    }
}

/// The running tracker. Dropping it flushes queued events, waiting at most the shutdown deadline,
/// and stops tracking: keep it for as long as the application runs.
///
/// Dropping it by mistake is a warning (an error under `deny(unused_must_use)`):
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// fn main() -> Result<(), usage_tracker::InitError> {
///     usage_tracker::init()?; // the tracker would stop here
///     Ok(())
/// }
/// ```
#[derive(Debug)]
#[must_use = "dropping the Tracker stops usage tracking at once; keep it alive (e.g. `let _tracker = …`) until the application exits"]
pub struct Tracker {
    shared: Arc<Shared>,
    queue: Queue,
    logs: SdkLoggerProvider,
    spans: SdkTracerProvider,
    config: Config,
    stopped: AtomicBool,
    _metrics: Vec<opentelemetry::metrics::ObservableCounter<u64>>,
}

impl Tracker {
    /// Settings for a tracker.
    pub fn builder() -> TrackerBuilder {
        TrackerBuilder::new()
    }

    fn start(config: Config, warnings: Warnings) -> Result<Self, InitError> {
        let resource = resource(&config);
        let shared = Arc::new(Shared::new(warnings));
        let queue = pipeline::start(config.clone(), resource.clone(), shared.clone())?;
        let logs = SdkLoggerProvider::builder()
            .with_resource(resource.clone())
            .with_log_processor(queue.clone())
            .build();
        let spans = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(queue.clone())
            .build();
        let metrics = register_metrics(&shared);
        Ok(Self {
            shared,
            queue,
            logs,
            spans,
            config,
            stopped: AtomicBool::new(false),
            _metrics: metrics,
        })
    }

    /// The `tracing` layer that exports usage events (as OTLP logs) and usage spans (as OTLP
    /// spans); every other event and span is left to the application's other layers.
    pub fn layer<S>(&self) -> impl Layer<S> + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let all_events = self.config.export_app_logs;
        let logs =
            OpenTelemetryTracingBridge::new(&self.logs).with_filter(filter_fn(move |meta| {
                meta.target() == TARGET
                    || (all_events && meta.is_event() && !is_telemetry_internal(meta.target()))
            }));
        let spans = tracing_opentelemetry::layer()
            // The instrumentation scope that marks the tracker's records as usage events (its
            // log events carry it too: their `tracing` target is the scope's name).
            .with_tracer(self.spans.tracer(TARGET))
            .with_filter(filter_fn(|meta| meta.target() == TARGET));
        logs.and_then(spans)
    }

    /// Records an event built at run time ([`Event`]), after checking it against the tracking
    /// plan ([`TrackerBuilder::catalog_file`], else the built-in one): an event the collector
    /// would refuse is not sent, counts in [`Stats::invalid`], and its reason is returned.
    pub fn record(&self, event: Event) -> Result<(), RecordError> {
        use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
        if let Err(e) = event.check(&self.queue.plan) {
            let (name, key) = e.event_and_key();
            self.shared.refused(name, key);
            return Err(e);
        }
        let logger = self.logs.logger(TARGET);
        let mut record = logger.create_log_record();
        // The SDK keeps event names as `&'static str`: a name is kept once per process.
        record.set_event_name(crate::catalog::plan::intern(event.name()));
        record.set_timestamp(std::time::SystemTime::now());
        record.set_severity_number(Severity::Info);
        record.set_severity_text("INFO");
        record.add_attribute(
            crate::catalog::keys::EVENT_ID,
            crate::EventId::new().as_str().to_owned(),
        );
        for (key, value) in event.attributes() {
            let value: opentelemetry::logs::AnyValue = match value {
                AttributeValue::String(s) => s.clone().into(),
                AttributeValue::Int(i) => (*i).into(),
                AttributeValue::Float(f) => (*f).into(),
                AttributeValue::Bool(b) => (*b).into(),
            };
            record.add_attribute(key.clone(), value);
        }
        logger.emit(record);
        Ok(())
    }

    /// Counts since start.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Healthy, or degraded with the last error and since when.
    pub fn health(&self) -> Health {
        self.shared.health()
    }

    /// The settings in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sends everything queued; false if `deadline` passed first.
    pub fn flush(&self, deadline: Duration) -> bool {
        self.queue.ask(Control::Flush, deadline)
    }

    /// Sends everything queued and stops, waiting at most the shutdown deadline. Returns the
    /// counts at the end; events still queued at the deadline are reported as a warning.
    pub fn shutdown(&self) -> Stats {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return self.stats();
        }
        let deadline = self.config.shutdown_deadline;
        if !self.queue.stop(deadline) {
            self.shared.warn(
                WarningKind::ShutdownDeadline,
                format!(
                    "shutdown deadline of {deadline:?} passed with {} events not yet sent to {}",
                    self.stats().pending(),
                    self.config.logs_endpoint
                ),
            );
        }
        self.stats()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The resource: what `Resource::builder()` detects (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES` and the SDK's own attributes), plus those of the settings that it
/// does not already hold with the same value: values set in code or read from another source,
/// percent-encoded values (the SDK keeps them encoded), and `OTEL_SERVICE_NAME` when
/// `OTEL_RESOURCE_ATTRIBUTES` also names a service (the specification gives `OTEL_SERVICE_NAME`
/// precedence; the SDK's detectors let the attribute win).
fn resource(config: &Config) -> Resource {
    let detected = Resource::builder().build();
    let wanted = config
        .resource_attributes
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .chain(
            config
                .service_name
                .iter()
                .map(|name| KeyValue::new(crate::catalog::keys::SERVICE_NAME, name.clone())),
        );
    let missing: Vec<KeyValue> = wanted
        .filter(|kv| detected.get(&kv.key).as_ref() != Some(&kv.value))
        .collect();
    if missing.is_empty() {
        return detected;
    }
    let kept = detected
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
    Resource::builder_empty()
        .with_attributes(kept.chain(missing))
        .build()
}

/// The OpenTelemetry crates' own diagnostics, and the tracker's warnings when a warning handler
/// logs them under the target `usage_tracker`, must never become usage events.
fn is_telemetry_internal(target: &str) -> bool {
    [
        "opentelemetry",
        "tonic",
        "h2",
        "hyper",
        "tower",
        "usage_tracker",
    ]
    .iter()
    .any(|prefix| target.starts_with(prefix))
}

/// Reports the counts through the application's global meter provider, if it has one.
fn register_metrics(shared: &Arc<Shared>) -> Vec<opentelemetry::metrics::ObservableCounter<u64>> {
    let meter = opentelemetry::global::meter("usage-tracker");
    type Read = fn(&Stats) -> u64;
    let outcomes: [(&str, Read); 5] = [
        ("recorded", |s| s.recorded),
        ("exported", |s| s.exported),
        ("failed", |s| s.failed),
        ("dropped", |s| s.dropped),
        ("invalid", |s| s.invalid),
    ];
    outcomes
        .into_iter()
        .map(|(outcome, read)| {
            let shared = shared.clone();
            meter
                .u64_observable_counter(format!("usage_tracker.events.{outcome}"))
                .with_description(format!("Usage events {outcome} by the tracker"))
                .with_unit("{event}")
                .with_callback(move |observer| observer.observe(read(&shared.stats()), &[]))
                .build()
        })
        .collect()
}

/// Starts a tracker from the standard environment variables and installs it as the global
/// `tracing` subscriber. An application with its own subscriber uses
/// `Tracker::builder()…start()` and adds `tracker.layer()` instead.
///
/// Keep the returned [`Tracker`] (`let _tracker = usage_tracker::init()?;`, not `init()?;`):
/// dropping it sends what is queued and stops tracking.
#[must_use = "dropping the Tracker stops usage tracking at once; keep it alive (e.g. `let _tracker = usage_tracker::init()?;`) until the application exits"]
pub fn init() -> Result<Tracker, InitError> {
    use tracing_subscriber::layer::SubscriberExt;
    let tracker = TrackerBuilder::from_env()?.start()?;
    let subscriber = tracing_subscriber::registry().with(tracker.layer());
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|_| InitError::SubscriberAlreadySet)?;
    Ok(tracker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resource_has_the_settings_on_top_of_what_the_sdk_detects() {
        let config = Config {
            service_name: Some("web-ide".into()),
            resource_attributes: vec![("team".into(), "ide,tools".into())],
            ..Config::default()
        };
        let resource = resource(&config);
        let get = |key: &'static str| resource.get(&opentelemetry::Key::new(key));
        assert_eq!(get("service.name"), Some("web-ide".into()));
        assert_eq!(get("team"), Some("ide,tools".into()));
        // The SDK's own attributes are kept.
        assert!(get("telemetry.sdk.name").is_some());
    }
}
