//! OTLP/gRPC: the logs and traces services, and the limits in front of them.
//!
//! - [`ingest`]: the path every request takes: shutdown gate, metrics, spool, and the answer
//!   (OK once on disk, partial success, or a retryable status with RetryInfo).
//! - [`grpc`]: the tonic services and the server (gzip, size limit, TCP_NODELAY).

pub mod grpc;
pub mod ingest;

pub use grpc::serve;
pub use ingest::Ingest;
