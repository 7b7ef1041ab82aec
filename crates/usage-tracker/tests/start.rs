//! A tracker that cannot start says why, and keeps the underlying error as its source.

use std::error::Error as _;
use std::time::Duration;

use usage_tracker::{InitError, StartError, TrackerBuilder, VerifyError};

#[test]
fn an_invalid_endpoint_keeps_the_exporters_error() {
    let error = TrackerBuilder::new()
        .endpoint("http://not a host:4317")
        .start()
        .unwrap_err();
    let InitError::Start(StartError::Exporter { endpoint, source }) = &error else {
        panic!("{error:?}");
    };
    assert_eq!(endpoint, "http://not a host:4317");
    assert!(matches!(
        source,
        opentelemetry_otlp::ExporterBuildError::InvalidConfiguration(_)
    ));
    let start = error.source().expect("the start error");
    assert!(
        start
            .source()
            .and_then(|e| e.downcast_ref::<opentelemetry_otlp::ExporterBuildError>())
            .is_some(),
        "{error}"
    );
    assert!(
        error.to_string().contains("http://not a host:4317")
            && error.to_string().contains("invalid endpoint"),
        "{error}"
    );
}

#[test]
fn verify_keeps_the_transport_error() {
    // Nothing listens on port 9 of loopback.
    let error = TrackerBuilder::new()
        .endpoint("http://127.0.0.1:9")
        .verify(Duration::from_secs(5))
        .start()
        .unwrap_err();
    let InitError::Start(StartError::Unreachable { endpoint, source }) = &error else {
        panic!("{error:?}");
    };
    assert_eq!(endpoint, "http://127.0.0.1:9");
    let VerifyError::Connect(transport) = source else {
        panic!("{source:?}");
    };
    assert!(
        source
            .source()
            .and_then(|e| e.downcast_ref::<tonic::transport::Error>())
            .is_some()
    );
    let message = error.to_string();
    assert!(
        message.contains("did not accept an empty export request")
            && message.contains("Connection refused"),
        "{message}"
    );
    assert!(!transport.to_string().is_empty());
}
