//! The collector's own spans (one per batch write), exported over OTLP through
//! `tracing-opentelemetry` under the instrumentation scope [`SELF_SCOPE`].

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;

use super::SERVICE;
use crate::event::SELF_SCOPE;

/// A tracer provider exporting the collector's spans to `endpoint`, and the tracer to use.
pub fn tracer(
    endpoint: &str,
    instance: &str,
) -> Result<(SdkTracerProvider, opentelemetry_sdk::trace::SdkTracer), String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("cannot export traces to {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(SERVICE)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance.to_owned(),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer(SELF_SCOPE);
    Ok((provider, tracer))
}
