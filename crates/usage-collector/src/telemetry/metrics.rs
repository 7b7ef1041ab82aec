//! The collector's metrics, pushed over OTLP/gRPC every interval: the very values `/metrics`
//! shows, read from the same handles ([`crate::health::Metrics::snapshot`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::SERVICE;
use crate::event::{SELF_SCOPE, string_attr};
use crate::health::Metrics;
use crate::health::metrics::{Point, Sample};

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Pushes the metrics to `endpoint` every `every`, until the task is aborted. A failed push is
/// logged (once per distinct error) and retried at the next interval.
pub async fn push(endpoint: String, metrics: Arc<Metrics>, instance: String, every: Duration) {
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
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        string_attr("service.name", SERVICE),
                        string_attr("service.instance.id", &instance),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: SELF_SCOPE.to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..Default::default()
                    }),
                    metrics: to_otlp(&metrics, start, now_nanos()),
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

fn attributes(labels: &[(&str, String)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| string_attr(k, v)).collect()
}

/// The metrics as OTLP: counters as cumulative monotonic sums, gauges, histograms.
pub fn to_otlp(metrics: &Metrics, start: u64, now: u64) -> Vec<Metric> {
    let number = |sample: &Sample, value: f64| NumberDataPoint {
        attributes: attributes(&sample.labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    let mut out = Vec::new();
    for (name, help, samples) in metrics.snapshot() {
        let Some(first) = samples.first() else {
            continue;
        };
        let data = match &first.point {
            Point::Counter(_) => metric::Data::Sum(Sum {
                data_points: samples
                    .iter()
                    .filter_map(|s| match s.point {
                        Point::Counter(v) => Some(number(s, v)),
                        _ => None,
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            Point::Gauge(_) => metric::Data::Gauge(Gauge {
                data_points: samples
                    .iter()
                    .filter_map(|s| match s.point {
                        Point::Gauge(v) => Some(number(s, v)),
                        _ => None,
                    })
                    .collect(),
            }),
            Point::Histogram { .. } => metric::Data::Histogram(Histogram {
                data_points: samples
                    .iter()
                    .filter_map(|s| match &s.point {
                        Point::Histogram {
                            count,
                            sum,
                            bounds,
                            counts,
                        } => Some(HistogramDataPoint {
                            attributes: attributes(&s.labels),
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            count: *count,
                            sum: Some(*sum),
                            bucket_counts: counts.clone(),
                            explicit_bounds: bounds.clone(),
                            ..Default::default()
                        }),
                        _ => None,
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        };
        out.push(Metric {
            name,
            description: help.trim().to_owned(),
            data: Some(data),
            ..Default::default()
        });
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
            .get_or_create(&crate::health::metrics::TableLabels {
                table: "page_visits",
            })
            .inc_by(4);
        m.batch_write_duration_seconds.observe(0.003);
        m.database_up.set(1);
        let metrics = to_otlp(&m, 1, 2);
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
                    == Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                            "page_visits".into(),
                        ),
                    )
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
