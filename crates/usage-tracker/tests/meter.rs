//! The tracker reports its counts through the application's meter provider.

use std::time::Duration;

use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use tracing_subscriber::layer::SubscriberExt;
use usage_tracker::{PageVisit, TrackerBuilder};

fn value(exporter: &InMemoryMetricExporter, name: &str) -> Option<u64> {
    let exported = exporter.get_finished_metrics().expect("metrics");
    let mut found = None;
    for resource in &exported {
        for scope in resource.scope_metrics() {
            for metric in scope.metrics().filter(|m| m.name() == name) {
                if let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() {
                    found = sum.data_points().map(|p| p.value()).last();
                }
            }
        }
    }
    found
}

#[test]
fn counts_are_reported_as_opentelemetry_metrics() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());

    // Nothing listens on port 9 of loopback: every export fails.
    let tracker = TrackerBuilder::new()
        .endpoint("http://127.0.0.1:9")
        .start()
        .unwrap();
    let subscriber = tracing_subscriber::registry().with(tracker.layer());
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..3 {
            usage_tracker::page_visit(PageVisit {
                path: "/m",
                ..Default::default()
            });
        }
    });
    assert!(tracker.flush(Duration::from_secs(10)));
    provider.force_flush().unwrap();
    assert_eq!(value(&exporter, "usage_tracker.events.recorded"), Some(3));
    assert_eq!(value(&exporter, "usage_tracker.events.failed"), Some(3));
    assert_eq!(value(&exporter, "usage_tracker.events.exported"), Some(0));
    assert_eq!(value(&exporter, "usage_tracker.events.dropped"), Some(0));
}
