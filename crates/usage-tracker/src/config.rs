//! Where and how the tracker exports: settings from the standard OpenTelemetry environment
//! variables or from code.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;

/// The OTLP/gRPC port on this machine: where the specification says an SDK sends by default.
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4317";
/// How long one export request may take (the OpenTelemetry default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Events held for export; when full, new events are dropped and counted.
pub const DEFAULT_QUEUE_SIZE: usize = 2048;
/// Most events in one export request.
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// Longest an event waits in the queue before its batch is sent.
pub const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_millis(200);
/// How long dropping the guard waits for queued events to be sent.
pub const DEFAULT_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// The tracker's settings.
///
/// Build them with [`Config::from_env`], [`Config::from_lookup`] or [`Config::default`] and
/// adjust fields, or use [`TrackerBuilder`](crate::TrackerBuilder). The struct is
/// `#[non_exhaustive]`, so new settings can be added without breaking applications. Its `Debug`
/// output shows header keys only: their values are usually credentials.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// Where log events go (`OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub logs_endpoint: String,
    /// Where spans go (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub traces_endpoint: String,
    /// Extra gRPC metadata, such as `authorization: Bearer …` (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, String)>,
    /// Per-request timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`, in milliseconds).
    pub timeout: Duration,
    /// `service.name` (`OTEL_SERVICE_NAME`; else `OTEL_RESOURCE_ATTRIBUTES`, else the SDK default).
    pub service_name: Option<String>,
    /// Further resource attributes (`OTEL_RESOURCE_ATTRIBUTES`, `k=v,k2=v2`).
    pub resource_attributes: Vec<(String, String)>,
    /// Queue capacity in events.
    pub queue_size: usize,
    /// Most events per export request.
    pub batch_size: usize,
    /// Longest wait before a partial batch is sent.
    pub export_interval: Duration,
    /// How long the guard's drop waits for queued events.
    pub shutdown_deadline: Duration,
    /// When set, `start` sends an empty export request and fails if no answer comes in time.
    pub verify_timeout: Option<Duration>,
    /// Also export the application's other `tracing` events (off: only usage events).
    pub export_app_logs: bool,
    /// TLS for an `https://` logs endpoint (`OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE`, …).
    pub logs_tls: TlsConfig,
    /// TLS for an `https://` traces endpoint (`OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`, …).
    pub traces_tls: TlsConfig,
    /// The tracking plan the collector uses (`USAGE_CATALOG_FILE`), so that an event it would
    /// refuse is refused here, where the application hears of it; `None`: the built-in plan.
    pub catalog_file: Option<PathBuf>,
}

/// TLS for an `https://` endpoint: the CAs the collector's certificate must chain to, and the
/// client's own certificate when the collector asks for one. An `http://` endpoint is plain
/// TCP and ignores these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// CA certificates (PEM) to trust instead of the system's roots
    /// (`OTEL_EXPORTER_OTLP_CERTIFICATE`); `None`: the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`).
    pub client_cert_file: Option<PathBuf>,
    /// Its private key (PEM) (`OTEL_EXPORTER_OTLP_CLIENT_KEY`).
    pub client_key_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            logs_endpoint: DEFAULT_ENDPOINT.to_owned(),
            traces_endpoint: DEFAULT_ENDPOINT.to_owned(),
            headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            service_name: None,
            resource_attributes: Vec::new(),
            queue_size: DEFAULT_QUEUE_SIZE,
            batch_size: DEFAULT_BATCH_SIZE,
            export_interval: DEFAULT_EXPORT_INTERVAL,
            shutdown_deadline: DEFAULT_SHUTDOWN_DEADLINE,
            verify_timeout: None,
            export_app_logs: false,
            logs_tls: TlsConfig::default(),
            traces_tls: TlsConfig::default(),
            catalog_file: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_keys: Vec<String> = self
            .headers
            .iter()
            .map(|(key, _)| format!("{key}: ***"))
            .collect();
        f.debug_struct("Config")
            .field("logs_endpoint", &self.logs_endpoint)
            .field("traces_endpoint", &self.traces_endpoint)
            .field("headers", &header_keys)
            .field("timeout", &self.timeout)
            .field("service_name", &self.service_name)
            .field("resource_attributes", &self.resource_attributes)
            .field("queue_size", &self.queue_size)
            .field("batch_size", &self.batch_size)
            .field("export_interval", &self.export_interval)
            .field("shutdown_deadline", &self.shutdown_deadline)
            .field("verify_timeout", &self.verify_timeout)
            .field("export_app_logs", &self.export_app_logs)
            .field("logs_tls", &self.logs_tls)
            .field("traces_tls", &self.traces_tls)
            .field("catalog_file", &self.catalog_file)
            .finish()
    }
}

/// A standard variable holds a value the tracker cannot use.
///
/// The message names the variable and, for a list, the position and key of the bad entry. It
/// shows the value only for variables that hold no credentials: never for
/// `OTEL_EXPORTER_OTLP_HEADERS`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}{}: {problem}", shown(value.as_deref()))]
pub struct EnvError {
    /// The variable.
    pub variable: &'static str,
    /// Its value, when it is safe to show (`None` for headers).
    pub value: Option<String>,
    /// What is wrong, and where in the value.
    pub problem: String,
}

fn shown(value: Option<&str>) -> String {
    value.map(|v| format!("={v:?}")).unwrap_or_default()
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: its values are credentials and are never shown.
const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";

impl Config {
    /// Settings from the process environment.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Settings from any variable source (tests pass a map instead of the environment).
    ///
    /// The OTLP exporter and the SDK's `Resource::builder()` read the process environment too;
    /// the tracker passes them these settings explicitly, so that what it names in its warnings
    /// and what `verify` checks are what is used, and so that a bad value is an error here
    /// rather than ignored. Where they agree with what the SDK already detected (service name
    /// and resource attributes), the SDK's values are used as they are.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let mut config = Config::default();
        let base = var("OTEL_EXPORTER_OTLP_ENDPOINT");
        if let Some(endpoint) = var("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT").or(base.clone()) {
            config.logs_endpoint = endpoint;
        }
        if let Some(endpoint) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or(base) {
            config.traces_endpoint = endpoint;
        }
        // The signal's own variable wins over the general one.
        let tls = |signal: &str| {
            let file = |name: &str| {
                var(&format!("OTEL_EXPORTER_OTLP_{signal}{name}"))
                    .or_else(|| var(&format!("OTEL_EXPORTER_OTLP_{name}")))
                    .map(PathBuf::from)
            };
            TlsConfig {
                ca_file: file("CERTIFICATE"),
                client_cert_file: file("CLIENT_CERTIFICATE"),
                client_key_file: file("CLIENT_KEY"),
            }
        };
        config.logs_tls = tls("LOGS_");
        config.traces_tls = tls("TRACES_");
        if let Some(headers) = var(HEADERS) {
            config.headers = pairs(&headers, HEADERS)?;
        }
        if let Some(timeout) = var(TIMEOUT) {
            let millis = timeout.trim().parse::<u64>().map_err(|_| EnvError {
                variable: TIMEOUT,
                value: Some(timeout.clone()),
                problem: "must be a whole number of milliseconds".to_owned(),
            })?;
            config.timeout = Duration::from_millis(millis);
        }
        if let Some(attributes) = var(RESOURCE_ATTRIBUTES) {
            config.resource_attributes = pairs(&attributes, RESOURCE_ATTRIBUTES)?;
        }
        config.catalog_file = var("USAGE_CATALOG_FILE").map(PathBuf::from);
        config.service_name = var("OTEL_SERVICE_NAME").or_else(|| {
            config
                .resource_attributes
                .iter()
                .find(|(k, _)| k == crate::catalog::keys::SERVICE_NAME)
                .map(|(_, v)| v.clone())
        });
        Ok(config)
    }
}

/// `k=v,k2=v2` with percent-encoded values, as the OpenTelemetry environment specifies.
///
/// An error names the entry by its position (and its key when it has one), never by its text:
/// a header entry without `=` may well be a bare token.
fn pairs(text: &str, variable: &'static str) -> Result<Vec<(String, String)>, EnvError> {
    let value = (variable != HEADERS).then(|| text.to_owned());
    let error = |problem: String| EnvError {
        variable,
        value: value.clone(),
        problem,
    };
    text.split(',')
        .enumerate()
        .filter(|(_, item)| !item.trim().is_empty())
        .map(|(i, item)| {
            let position = i + 1;
            let (key, value) = item.split_once('=').ok_or_else(|| {
                error(format!(
                    "entry {position} has no '='; each entry must be key=value, separated by commas"
                ))
            })?;
            let key = key.trim();
            if key.is_empty() {
                return Err(error(format!("entry {position} has an empty key")));
            }
            let value = percent_decode_str(value.trim()).decode_utf8_lossy();
            Ok((key.to_owned(), value.into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn standard_variables_are_read() {
        let config = Config::from_lookup(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:4317"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20abc,x-tenant=ide",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attrs,deployment.environment=prod",
            ),
        ]))
        .unwrap();
        assert_eq!(config.logs_endpoint, "http://logs:4317");
        assert_eq!(config.traces_endpoint, "http://collector:4317");
        assert_eq!(
            config.headers[0],
            ("authorization".into(), "Bearer abc".into())
        );
        assert_eq!(config.timeout, Duration::from_millis(2500));
        assert_eq!(config.service_name.as_deref(), Some("from-attrs"));
        let named = Config::from_lookup(env(&[("OTEL_SERVICE_NAME", "web-ide")])).unwrap();
        assert_eq!(named.service_name.as_deref(), Some("web-ide"));
        assert_eq!(named.logs_endpoint, DEFAULT_ENDPOINT);
    }

    #[test]
    fn certificate_variables_are_read_and_the_signal_one_wins() {
        let config = Config::from_lookup(env(&[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                "/etc/traces-ca.pem",
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/client.pem"),
            ("OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY", "/etc/logs-client.key"),
        ]))
        .unwrap();
        assert_eq!(
            config.logs_tls,
            TlsConfig {
                ca_file: Some("/etc/ca.pem".into()),
                client_cert_file: Some("/etc/client.pem".into()),
                client_key_file: Some("/etc/logs-client.key".into()),
            }
        );
        assert_eq!(
            config.traces_tls,
            TlsConfig {
                ca_file: Some("/etc/traces-ca.pem".into()),
                client_cert_file: Some("/etc/client.pem".into()),
                client_key_file: None,
            }
        );
        assert_eq!(
            Config::from_lookup(env(&[])).unwrap().logs_tls,
            TlsConfig::default()
        );
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::from_lookup(env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "5s")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "OTEL_EXPORTER_OTLP_TIMEOUT=\"5s\": must be a whole number of milliseconds"
        );
    }

    #[test]
    fn a_bad_header_entry_is_named_by_position_and_key_never_by_value() {
        for headers in [
            "authorization=Bearer%20s3cr3t-t0ken,Bearer other-s3cr3t",
            "x-tenant=ide,=Bearer%20s3cr3t-t0ken",
        ] {
            let err =
                Config::from_lookup(env(&[("OTEL_EXPORTER_OTLP_HEADERS", headers)])).unwrap_err();
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(shown.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{shown}");
                assert!(shown.contains("entry 2"), "{shown}");
                assert!(!shown.contains("s3cr3t"), "{shown}");
            }
        }
        let attrs = Config::from_lookup(env(&[("OTEL_RESOURCE_ATTRIBUTES", "a=1,oops")]));
        assert_eq!(
            attrs.unwrap_err().to_string(),
            "OTEL_RESOURCE_ATTRIBUTES=\"a=1,oops\": entry 2 has no '='; each entry must be \
             key=value, separated by commas"
        );
    }

    #[test]
    fn header_values_are_not_in_debug_output() {
        let config = Config::from_lookup(env(&[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20s3cr3t",
        )]))
        .unwrap();
        let shown = format!("{config:?}");
        assert!(shown.contains("authorization: ***"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn values_are_percent_decoded_and_bad_escapes_kept() {
        let config = Config::from_lookup(env(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "team=ide%2Ctools,odd=100%zz,utf8=caf%C3%A9",
        )]))
        .unwrap();
        assert_eq!(
            config.resource_attributes,
            [
                ("team".into(), "ide,tools".into()),
                ("odd".into(), "100%zz".into()),
                ("utf8".into(), "café".into()),
            ]
        );
    }
}
