//! Where and how the tracker exports: settings from the standard OpenTelemetry environment
//! variables or from code.

use std::time::Duration;

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
#[derive(Debug, Clone, PartialEq)]
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
        }
    }
}

/// A standard variable holds a value the tracker cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?}: {problem}")]
pub struct EnvError {
    /// The variable.
    pub variable: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong.
    pub problem: &'static str,
}

impl Config {
    /// Settings from the process environment.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Settings from any variable source (tests pass a map instead of the environment).
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
        if let Some(headers) = var("OTEL_EXPORTER_OTLP_HEADERS") {
            config.headers = pairs(&headers, "OTEL_EXPORTER_OTLP_HEADERS")?;
        }
        if let Some(timeout) = var("OTEL_EXPORTER_OTLP_TIMEOUT") {
            let millis = timeout.trim().parse::<u64>().map_err(|_| EnvError {
                variable: "OTEL_EXPORTER_OTLP_TIMEOUT",
                value: timeout.clone(),
                problem: "must be a whole number of milliseconds",
            })?;
            config.timeout = Duration::from_millis(millis);
        }
        if let Some(attributes) = var("OTEL_RESOURCE_ATTRIBUTES") {
            config.resource_attributes = pairs(&attributes, "OTEL_RESOURCE_ATTRIBUTES")?;
        }
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
fn pairs(text: &str, variable: &'static str) -> Result<Vec<(String, String)>, EnvError> {
    text.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let (key, value) = item.split_once('=').ok_or_else(|| EnvError {
                variable,
                value: text.to_owned(),
                problem: "each entry must be key=value, separated by commas",
            })?;
            Ok((key.trim().to_owned(), percent_decode(value.trim())))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn bad_values_are_named() {
        let err = Config::from_lookup(env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "5s")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "OTEL_EXPORTER_OTLP_TIMEOUT=\"5s\": must be a whole number of milliseconds"
        );
    }
}
