//! The collector's own telemetry over OTLP: its spans (one per batch write) through
//! `tracing-opentelemetry`, and its metrics, pushed periodically, so they land wherever the
//! apps' telemetry goes (Jaeger, Tempo, an OpenTelemetry Collector).
//!
//! The metrics pushed are exactly those of `/metrics`: the exposition is read back and turned
//! into OTLP sums, gauges and histograms, so the two can never disagree.
//!
//! Loop guard: everything is sent under the instrumentation scope [`SELF_SCOPE`], and the
//! receiver refuses records of that scope, so pointing the endpoint at a usage collector by
//! mistake is refused loudly instead of turning write spans into usage rows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

use super::Metrics;

/// Instrumentation scope of everything the collector sends about itself.
pub const SELF_SCOPE: &str = "usage-collector.self";
/// `service.name` of the collector's own telemetry.
pub const SERVICE: &str = "usage-collector";

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

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Pushes the metrics to `endpoint` every `every`, until the task is aborted. A failed push is
/// logged (once per distinct error) and retried at the next interval.
pub async fn push_metrics(
    endpoint: String,
    metrics: Arc<Metrics>,
    instance: String,
    every: Duration,
) {
    let start = now_nanos();
    let channel = match tonic::transport::Endpoint::from_shared(endpoint.clone()) {
        Ok(e) => e.timeout(Duration::from_secs(10)).connect_lazy(),
        Err(e) => {
            tracing::error!(endpoint, error = %e, "invalid telemetry endpoint; own metrics are not pushed");
            return;
        }
    };
    let mut client = MetricsServiceClient::new(channel);
    let mut last_error = String::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let text = match metrics.encode() {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode metrics for the OTLP push");
                continue;
            }
        };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        string("service.name", SERVICE),
                        string("service.instance.id", &instance),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: SELF_SCOPE.to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..Default::default()
                    }),
                    metrics: to_otlp(&text, start, now_nanos()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        match client.export(request).await {
            Ok(_) => last_error.clear(),
            Err(status) => {
                let error = format!("{:?}: {}", status.code(), status.message());
                if error != last_error {
                    tracing::warn!(
                        endpoint,
                        error,
                        "cannot push own metrics over OTLP; retrying at the next interval"
                    );
                    last_error = error;
                }
            }
        }
    }
}

/// A sample line's name, labels and value.
type Sample<'a> = (&'a str, Vec<(String, String)>, f64);

/// One sample line: name, labels, value.
fn sample(line: &str) -> Option<Sample<'_>> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = head.split_once('{') else {
        return Some((head, Vec::new(), value));
    };
    let body = rest.strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => return None,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some((name, labels, value))
}

fn attributes(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| string(k, v)).collect()
}

/// OpenMetrics text → OTLP metrics (cumulative sums for counters, gauges, histograms).
pub fn to_otlp(text: &str, start: u64, now: u64) -> Vec<Metric> {
    let mut types: BTreeMap<&str, &str> = BTreeMap::new();
    let mut help: BTreeMap<&str, &str> = BTreeMap::new();
    let mut samples: Vec<Sample<'_>> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name, kind);
            }
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = rest.split_once(' ') {
                help.insert(name, text);
            }
        } else if !line.starts_with('#')
            && let Some(s) = sample(line)
        {
            samples.push(s);
        }
    }
    let point = |labels: &[(String, String)], value: f64| NumberDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    let mut out = Vec::new();
    for (family, kind) in types {
        let mut metric = Metric {
            name: family.to_owned(),
            description: help.get(family).copied().unwrap_or_default().to_owned(),
            ..Default::default()
        };
        match kind {
            "counter" => {
                let name = format!("{family}_total");
                let points = samples
                    .iter()
                    .filter(|(n, ..)| *n == name)
                    .map(|(_, l, v)| point(l, *v))
                    .collect();
                metric.data = Some(metric::Data::Sum(Sum {
                    data_points: points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }));
            }
            "gauge" => {
                let points = samples
                    .iter()
                    .filter(|(n, ..)| *n == family)
                    .map(|(_, l, v)| point(l, *v))
                    .collect();
                metric.data = Some(metric::Data::Gauge(Gauge {
                    data_points: points,
                }));
            }
            "histogram" => {
                let (bucket, sum, count) = (
                    format!("{family}_bucket"),
                    format!("{family}_sum"),
                    format!("{family}_count"),
                );
                let mut bounds = Vec::new();
                let mut cumulative = Vec::new();
                for (n, labels, v) in &samples {
                    if *n == bucket
                        && let Some((_, le)) = labels.iter().find(|(k, _)| k == "le")
                    {
                        if le != "+Inf" {
                            bounds.push(le.parse().unwrap_or(f64::INFINITY));
                        }
                        cumulative.push(*v as u64);
                    }
                }
                let counts = cumulative
                    .iter()
                    .scan(0, |prev, c| {
                        let own = c.saturating_sub(*prev);
                        *prev = *c;
                        Some(own)
                    })
                    .collect();
                let find = |name: &str| {
                    samples
                        .iter()
                        .find(|(n, ..)| *n == name)
                        .map(|(_, _, v)| *v)
                };
                metric.data = Some(metric::Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count: find(&count).unwrap_or(0.0) as u64,
                        sum: find(&sum),
                        bucket_counts: counts,
                        explicit_bounds: bounds,
                        ..Default::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }));
            }
            _ => continue,
        }
        out.push(metric);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_becomes_otlp() {
        let m = Metrics::new();
        m.rows_written
            .get_or_create(&super::super::metrics::TableLabels {
                table: "page_visits",
            })
            .inc_by(4);
        m.batch_write_duration.observe(0.003);
        m.database_up.set(1);
        let metrics = to_otlp(&m.encode().unwrap(), 1, 2);
        let rows = metrics
            .iter()
            .find(|m| m.name == "usage_collector_rows_written")
            .unwrap();
        let Some(metric::Data::Sum(sum)) = &rows.data else {
            panic!("{rows:?}")
        };
        let point = sum
            .data_points
            .iter()
            .find(|p| {
                p.attributes[0].value.as_ref().unwrap().value
                    == Some(any_value::Value::StringValue("page_visits".into()))
            })
            .unwrap();
        assert_eq!(point.value, Some(number_data_point::Value::AsDouble(4.0)));
        let up = metrics
            .iter()
            .find(|m| m.name == "usage_collector_database_up")
            .unwrap();
        assert!(
            matches!(&up.data, Some(metric::Data::Gauge(g)) if g.data_points[0].value == Some(number_data_point::Value::AsDouble(1.0)))
        );
        let hist = metrics
            .iter()
            .find(|m| m.name == "usage_collector_batch_write_duration_seconds")
            .unwrap();
        let Some(metric::Data::Histogram(h)) = &hist.data else {
            panic!()
        };
        assert_eq!(h.data_points[0].count, 1);
        assert_eq!(h.data_points[0].bucket_counts.iter().sum::<u64>(), 1);
        assert_eq!(
            h.data_points[0].bucket_counts.len(),
            h.data_points[0].explicit_bounds.len() + 1
        );
    }
}
