//! OTLP over gRPC and HTTP: the logs and traces services, and the limits in front of them.
//!
//! - [`shape`]: a request's records and values counted from its bytes before decoding, and the
//!   records that break a per-record limit.
//! - [`auth`]: bearer tokens bound to the services they may write as, read again on change.
//! - [`admission`]: the checks before decoding: size, record count, spool headroom, the
//!   memory budget for requests in flight.
//! - [`decoders`]: the fixed pool of threads that decode and map requests off the runtime.
//! - [`ingest`]: the path every request takes: shutdown gate, metrics, spool, and the answer
//!   (OK once on disk, partial success, or a retryable status with RetryInfo).
//! - [`grpc`]: the tonic services and the server (gzip, size limit, TCP_NODELAY).
//! - [`http`]: OTLP/HTTP (protobuf and JSON, gzip, CORS) in front of the same services.

pub mod admission;
pub mod auth;
pub mod decoders;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod shape;

pub use grpc::serve;
pub use ingest::Ingest;
