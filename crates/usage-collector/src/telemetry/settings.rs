//! Where the collector's own telemetry goes: one endpoint per signal, or none, as the
//! OpenTelemetry SDKs take it (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`),
//! with the collector's own flags and file keys beside them. Declared here, beside the code
//! that exports; `config` only gathers them.

/// The collector's own spans and metrics: where each goes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TelemetrySettings {
    /// Send the collector's own metrics and traces over OTLP/gRPC to this endpoint
    /// (`http://otel-collector:4317`), unless a signal has its own below; never point it at a
    /// usage collector
    #[arg(
        id = "telemetry_endpoint",
        long = "telemetry-endpoint",
        env = "USAGE_TELEMETRY_ENDPOINT",
        global = true
    )]
    pub endpoint: Option<String>,
    /// The OTLP/gRPC endpoint of the own spans (`http://jaeger:4317`) [default: the telemetry
    /// endpoint]
    #[arg(
        id = "telemetry.traces_endpoint",
        long = "telemetry-traces-endpoint",
        env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        global = true
    )]
    pub traces_endpoint: Option<String>,
    /// The OTLP/gRPC endpoint of the own metrics [default: the telemetry endpoint]
    #[arg(
        id = "telemetry.metrics_endpoint",
        long = "telemetry-metrics-endpoint",
        env = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        global = true
    )]
    pub metrics_endpoint: Option<String>,
    /// Whether the own spans are exported: `otlp`, or `none`
    #[arg(
        id = "telemetry.traces_exporter",
        long = "telemetry-traces-exporter",
        env = "OTEL_TRACES_EXPORTER",
        value_enum,
        default_value = "otlp",
        global = true
    )]
    pub traces_exporter: Exporter,
    /// Whether the own metrics are pushed: `otlp`, or `none` (`/metrics` serves them either way)
    #[arg(
        id = "telemetry.metrics_exporter",
        long = "telemetry-metrics-exporter",
        env = "OTEL_METRICS_EXPORTER",
        value_enum,
        default_value = "otlp",
        global = true
    )]
    pub metrics_exporter: Exporter,
}

/// An exporter of one signal, as `OTEL_TRACES_EXPORTER` and `OTEL_METRICS_EXPORTER` name it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Exporter {
    /// OTLP/gRPC, to the signal's endpoint (when one is set).
    #[default]
    Otlp,
    /// Not exported.
    None,
}

impl TelemetrySettings {
    /// Where the own spans go, if anywhere.
    pub fn traces(&self) -> Option<&str> {
        Self::resolve(
            self.traces_exporter,
            self.traces_endpoint.as_deref(),
            self.endpoint.as_deref(),
        )
    }

    /// Where the own metrics go, if anywhere.
    pub fn metrics(&self) -> Option<&str> {
        Self::resolve(
            self.metrics_exporter,
            self.metrics_endpoint.as_deref(),
            self.endpoint.as_deref(),
        )
    }

    fn resolve<'a>(
        exporter: Exporter,
        own: Option<&'a str>,
        shared: Option<&'a str>,
    ) -> Option<&'a str> {
        match exporter {
            Exporter::None => None,
            Exporter::Otlp => own.or(shared).filter(|e| !e.trim().is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_signal_has_its_endpoint_or_none() {
        let mut settings = TelemetrySettings {
            endpoint: Some("http://gateway:4317".into()),
            ..TelemetrySettings::default()
        };
        assert_eq!(settings.traces(), Some("http://gateway:4317"));
        assert_eq!(settings.metrics(), Some("http://gateway:4317"));
        settings.traces_endpoint = Some("http://jaeger:4317".into());
        settings.metrics_exporter = Exporter::None;
        assert_eq!(settings.traces(), Some("http://jaeger:4317"));
        assert_eq!(settings.metrics(), None);
        let nothing = TelemetrySettings::default();
        assert_eq!((nothing.traces(), nothing.metrics()), (None, None));
    }
}
