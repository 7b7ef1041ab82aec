//! An OTLP/HTTP client for tests (hyper's own HTTP/1.1 client): raw requests with their
//! answers, the export calls in either encoding, and [`Transport`], which sends the same request
//! over gRPC, OTLP/HTTP protobuf or OTLP/HTTP JSON.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use prost::bytes::Bytes;

use crate::collector::TestCollector;

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// True when the answer carries any `Access-Control-*` header.
    pub fn has_cors_headers(&self) -> bool {
        self.headers
            .keys()
            .any(|k| k.as_str().starts_with("access-control-"))
    }

    /// The body as the `google.rpc.Status` of a refusal, read as its `Content-Type` says
    /// (protobuf, or JSON with `code`, `message` and `details`).
    pub fn rpc_status(&self) -> tonic_types::pb::Status {
        match self.header("content-type") {
            Some("application/x-protobuf") => {
                tonic_types::pb::Status::decode(&self.body[..]).expect("a google.rpc.Status")
            }
            Some("application/json") => {
                let json = self.json();
                tonic_types::pb::Status {
                    code: json["code"].as_i64().expect("a code") as i32,
                    message: json["message"].as_str().expect("a message").to_owned(),
                    details: Vec::new(),
                }
            }
            other => panic!("not a status body ({other:?}): {:?}", self.body),
        }
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Sends one HTTP/1.1 request on a new connection and reads the whole answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the OTLP/HTTP port");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    let connection = tokio::spawn(connection);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(body.into()))
        .expect("a valid request");
    let response = sender.send_request(request).await.expect("an answer");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the answer's body").to_bytes();
    drop(sender);
    connection.abort();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// OTLP/HTTP's two encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json` (the OTLP/JSON mapping).
    Json,
}

impl Encoding {
    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }

    /// `message` in this encoding (JSON as opentelemetry-proto's serde mapping writes it:
    /// hex ids, 64-bit integers as strings).
    pub fn encode<T: Message + serde::Serialize>(self, message: &T) -> Vec<u8> {
        match self {
            Encoding::Protobuf => message.encode_to_vec(),
            Encoding::Json => serde_json::to_vec(message).expect("JSON"),
        }
    }

    fn decode<T: Message + Default + serde::de::DeserializeOwned>(self, body: &[u8]) -> T {
        match self {
            Encoding::Protobuf => T::decode(body).expect("a protobuf answer"),
            Encoding::Json => serde_json::from_slice(body).unwrap_or_else(|e| {
                panic!("a JSON answer ({e}): {}", String::from_utf8_lossy(body))
            }),
        }
    }
}

/// `bytes` gzip-compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

/// An OTLP/HTTP export that was refused.
#[derive(Debug, Clone)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, if any.
    pub retry_after: Option<String>,
    /// The `google.rpc.Status` body.
    pub rpc: tonic_types::pb::Status,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP {} (code {}): {}",
            self.status, self.rpc.code, self.rpc.message
        )
    }
}

/// POSTs one export request to `path`; the decoded answer, or the refusal.
pub async fn export<Req, Resp>(
    addr: SocketAddr,
    path: &str,
    request: &Req,
    encoding: Encoding,
    compress: bool,
    extra_headers: &[(&str, &str)],
) -> Result<Resp, Refused>
where
    Req: Message + serde::Serialize,
    Resp: Message + Default + serde::de::DeserializeOwned,
{
    let mut body = encoding.encode(request);
    let mut headers = vec![("content-type", encoding.content_type())];
    if compress {
        body = gzip(&body);
        headers.push(("content-encoding", "gzip"));
    }
    headers.extend_from_slice(extra_headers);
    let answer = self::request(addr, "POST", path, &headers, body).await;
    if answer.status == 200 {
        assert_eq!(
            answer.header("content-type"),
            Some(encoding.content_type()),
            "the answer is in the request's encoding"
        );
        Ok(encoding.decode(&answer.body))
    } else {
        Err(Refused {
            status: answer.status,
            retry_after: answer.header("retry-after").map(str::to_owned),
            rpc: answer.rpc_status(),
        })
    }
}

/// Exports logs to `/v1/logs`.
pub async fn export_logs(
    addr: SocketAddr,
    request: &ExportLogsServiceRequest,
    encoding: Encoding,
    compress: bool,
) -> Result<ExportLogsServiceResponse, Refused> {
    export(addr, "/v1/logs", request, encoding, compress, &[]).await
}

/// Exports spans to `/v1/traces`.
pub async fn export_traces(
    addr: SocketAddr,
    request: &ExportTraceServiceRequest,
    encoding: Encoding,
    compress: bool,
) -> Result<ExportTraceServiceResponse, Refused> {
    export(addr, "/v1/traces", request, encoding, compress, &[]).await
}

/// Where a collector takes OTLP: an in-process [`TestCollector`], or the real binary started
/// from a [`crate::process::ProcessConfig`].
pub trait Endpoints {
    /// The OTLP/gRPC endpoint as a URL.
    fn grpc_endpoint(&self) -> String;
    /// The OTLP/HTTP address.
    fn http_address(&self) -> std::net::SocketAddr;
}

impl Endpoints for TestCollector {
    fn grpc_endpoint(&self) -> String {
        self.endpoint()
    }

    fn http_address(&self) -> std::net::SocketAddr {
        self.http_addr()
    }
}

impl Endpoints for crate::process::ProcessConfig {
    fn grpc_endpoint(&self) -> String {
        self.endpoint()
    }

    fn http_address(&self) -> std::net::SocketAddr {
        self.http
    }
}

/// How a test sends OTLP to a collector: the same request, any transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf.
    HttpProtobuf,
    /// OTLP/HTTP with JSON.
    HttpJson,
}

impl Transport {
    /// Every transport.
    pub const ALL: [Transport; 3] = [
        Transport::Grpc,
        Transport::HttpProtobuf,
        Transport::HttpJson,
    ];

    /// Sends logs; a refusal as text.
    pub async fn send_logs(
        self,
        collector: &impl Endpoints,
        request: ExportLogsServiceRequest,
    ) -> Result<ExportLogsServiceResponse, String> {
        match self {
            Transport::Grpc => {
                crate::fixtures::send_logs(&collector.grpc_endpoint(), request, false)
                    .await
                    .map_err(|s| format!("{s:?}"))
            }
            Transport::HttpProtobuf | Transport::HttpJson => {
                export_logs(collector.http_address(), &request, self.encoding(), false)
                    .await
                    .map_err(|r| r.to_string())
            }
        }
    }

    /// Sends spans; a refusal as text.
    pub async fn send_traces(
        self,
        collector: &impl Endpoints,
        request: ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse, String> {
        match self {
            Transport::Grpc => crate::fixtures::send_traces(&collector.grpc_endpoint(), request)
                .await
                .map_err(|s| format!("{s:?}")),
            Transport::HttpProtobuf | Transport::HttpJson => {
                export_traces(collector.http_address(), &request, self.encoding(), false)
                    .await
                    .map_err(|r| r.to_string())
            }
        }
    }

    fn encoding(self) -> Encoding {
        match self {
            Transport::HttpJson => Encoding::Json,
            Transport::Grpc | Transport::HttpProtobuf => Encoding::Protobuf,
        }
    }
}
