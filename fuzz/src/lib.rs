//! What the fuzz targets share: each target is a few lines calling one of these, so the seed
//! generator (`examples/seeds.rs`) and the targets agree on the input formats.
//!
//! Every function here drives the collector's real code path (shape check, reading records in
//! place, catalogue mapping, spool record encoding, spool recovery, settings parsing); nothing is a
//! copy. The assertions are properties the collector promises, not only "no panic".

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;
use usage_collector::catalog::Catalog;
use usage_collector::catalog::convert::{self, Converted};
use usage_collector::event::Signal;
use usage_collector::receiver::ingest::Violations;
use usage_collector::receiver::shape::{Limits, Shape};
use usage_collector::spool::{Payload, Spool, rows};

/// When the fuzzed requests are received (a fixed time, so a crash input replays exactly).
pub const NOW: u64 = 1_772_600_767_123_456_000;

/// The collector's default per-request limits (the defaults of `limits.*` in the settings).
pub fn default_limits() -> Limits {
    let limits = usage_collector::Settings::defaults().limits;
    Limits {
        max_records: limits.max_records_per_request,
        max_attributes: limits.max_attributes_per_record,
        max_value_bytes: limits.max_attribute_value_bytes,
    }
}

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(Catalog::built_in)
}

fn limits() -> &'static Limits {
    static LIMITS: OnceLock<Limits> = OnceLock::new();
    LIMITS.get_or_init(default_limits)
}

/// The receive path of one export request's bytes, as `receiver::ingest` runs it: shape check
/// with the default limits, read each record in place, validate and map it with the built-in
/// catalogue (the records the shape refused skipped), encode the spool record's rows body; then
/// the writer's side, decoding that body again.
///
/// Asserts:
/// - the shape prices at most what [`Shape::worst_case_bytes`] says a request of its size can
///   cost (the admission budget relies on it);
/// - the receiver refuses exactly the requests prost refuses;
/// - the shape counts the same records prost decodes, and names only records that exist (the
///   refusals are applied by position, so a disagreement would refuse the wrong records);
/// - a record the shape did not refuse has at most `max_attributes` attributes;
/// - every record is either mapped or rejected, never lost;
/// - the rows body decodes to exactly the mapped events (cut-text notes aside, which are not
///   spooled), with no row left unplaced.
pub fn otlp(bytes: &[u8], signal: Signal) {
    let limits = limits();
    let Ok(shape) = Shape::of(bytes, signal, limits) else {
        return; // refused before decoding, with a reason
    };
    assert!(
        shape.decoded_bytes() <= Shape::worst_case_bytes(bytes.len(), limits),
        "shape prices {} bytes, more than the worst case for {} bytes: {shape:?}",
        shape.decoded_bytes(),
        bytes.len()
    );
    assert!(
        shape.violations.windows(2).all(|w| w[0].0 < w[1].0),
        "violations out of order: {:?}",
        shape.violations
    );
    let skip = Violations::new(&shape);
    let converted = match signal {
        Signal::Log => {
            let walked = convert::logs(bytes, catalog(), NOW, skip);
            let decoded = ExportLogs::decode(bytes);
            agree(decoded.is_ok(), &walked);
            let (Ok(request), Ok(converted)) = (decoded, walked) else {
                return;
            };
            let attributes = request
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| &s.log_records)
                .map(|r| r.attributes.len())
                .collect();
            check_shape(&shape, attributes, limits);
            converted
        }
        Signal::Span => {
            let walked = convert::traces(bytes, catalog(), NOW, skip);
            let decoded = ExportTraces::decode(bytes);
            agree(decoded.is_ok(), &walked);
            let (Ok(request), Ok(converted)) = (decoded, walked) else {
                return;
            };
            let attributes = request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .map(|s| s.attributes.len())
                .collect();
            check_shape(&shape, attributes, limits);
            converted
        }
    };
    round_trip(&converted);
}

/// The receiver refuses a request exactly when prost's decoder does.
fn agree<T, E: std::fmt::Display>(prost_decodes: bool, walked: &Result<T, E>) {
    if let (true, Err(e)) = (prost_decodes, walked) {
        panic!("prost decodes the request, the receiver refuses it: {e}");
    }
    assert!(
        prost_decodes || walked.is_err(),
        "prost refuses the request, the receiver takes it"
    );
}

/// The size limit the `otlp_http` target inflates to (as `max_request_bytes`).
pub const HTTP_LIMIT: usize = 1 << 20;

/// An OTLP/HTTP request body, as the receiver unpacks it before the common path: the first byte
/// chooses gzip (bit 0), JSON (bit 1) and traces rather than logs (bit 2); the rest is the body.
/// `receiver::http::unpack_body` (inflate within [`HTTP_LIMIT`], OTLP/JSON → protobuf), then,
/// for what it accepts, the receive path of [`otlp`].
///
/// Asserts:
/// - inflating never yields more than the limit (a gzip bomb stops at it);
/// - a body within the limit is never refused as too large, and a plain one over it always is;
/// - the protobuf a JSON body becomes decodes as the request it was made from;
/// - and everything [`otlp`] asserts about the receive path.
pub fn otlp_http(data: &[u8]) {
    use usage_collector::receiver::http::{Unpacked, unpack_body};
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let (gzip, json) = (flags & 1 != 0, flags & 2 != 0);
    let signal = if flags & 4 != 0 {
        Signal::Span
    } else {
        Signal::Log
    };
    let body = prost::bytes::Bytes::copy_from_slice(body);
    match unpack_body(body.clone(), gzip, json, signal, HTTP_LIMIT) {
        Ok(bytes) => {
            if !json {
                assert!(bytes.len() <= HTTP_LIMIT, "{} bytes past the limit", bytes.len());
            } else {
                let decodes = match signal {
                    Signal::Log => ExportLogs::decode(&bytes[..]).is_ok(),
                    Signal::Span => ExportTraces::decode(&bytes[..]).is_ok(),
                };
                assert!(decodes, "the protobuf made from JSON does not decode");
            }
            otlp(&bytes, signal);
        }
        Err(Unpacked::TooLarge { .. }) => {
            assert!(gzip || body.len() > HTTP_LIMIT, "a plain body within the limit refused");
        }
        Err(Unpacked::Gzip(_) | Unpacked::Json(_)) => {
            assert!(gzip || json, "a plain body failed to unpack");
        }
    }
}

type ExportLogs = opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
type ExportTraces = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// The shape against what prost decoded: `attributes` holds each record's attribute count.
fn check_shape(shape: &Shape, attributes: Vec<usize>, limits: &Limits) {
    assert_eq!(
        shape.records,
        attributes.len(),
        "the shape and prost disagree on the number of records"
    );
    let mut refused = shape.violations.iter().map(|(i, _)| *i).peekable();
    for (index, count) in attributes.into_iter().enumerate() {
        if refused.next_if_eq(&index).is_some() {
            continue;
        }
        assert!(
            count <= limits.max_attributes,
            "record {index} has {count} attributes and was not refused"
        );
    }
    assert!(
        refused.next().is_none(),
        "a refusal names a record past the last: {:?}",
        shape.violations
    );
}

/// Every record mapped or rejected; the spooled rows decode to the mapped events.
fn round_trip(converted: &Converted) {
    assert_eq!(
        converted.events.len() as u64 + converted.rejected.count,
        converted.received,
        "records lost between decoding and mapping"
    );
    let mut body = Vec::new();
    rows::encode(catalog(), &converted.events, &mut body);
    let decoded = rows::decode(catalog(), &body).expect("a rows body the receiver wrote decodes");
    assert!(decoded.unplaced.is_empty(), "{:?}", decoded.unplaced);
    assert_eq!(decoded.events.len(), converted.events.len());
    for (back, sent) in decoded.events.iter().zip(&converted.events) {
        let mut sent = sent.clone();
        sent.truncated.clear(); // a note for the metrics, not spooled
        assert_eq!(*back, sent, "the spool round trip changed an event");
    }
}

/// A fresh, empty folder for one fuzz input, on tmpfs when there is one (the spool `fsync`s
/// every append; on tmpfs that is free). Removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Makes the folder.
    pub fn new(prefix: &str) -> Self {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_owned()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        // A folder left by a killed earlier run of the same process id would skew the input.
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).expect("create a temporary folder");
        Self(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// The runtime the spool's async API runs on (one for the process: building one per input
/// would dominate the run).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    })
}

/// Reads every record after the checkpoint, as the writer would, in order. Panics if a read
/// fails: after recovery every kept segment is a clean sequence of records.
pub fn read_all(spool: &Spool) -> Vec<Payload> {
    let mut from = spool.checkpoint();
    let mut out = Vec::new();
    // Each read either returns records or moves past a sealed segment; a bounded number of
    // rounds guards against a read that stops making progress (itself a bug).
    for _ in 0..10_000 {
        let batch = runtime()
            .block_on(spool.read(from, 1000))
            .unwrap_or_else(|e| panic!("reading a recovered spool failed: {e}"));
        if batch.records.is_empty() && batch.end == from {
            return out;
        }
        out.extend(batch.records);
        from = batch.end;
    }
    panic!("reading the spool made no progress after 10 000 reads");
}

/// The spool folder input: the checkpoint file's content, then each segment's bytes, joined
/// by [`SEPARATOR`]. Segments are numbered from 1. An empty first part means no checkpoint
/// file.
pub mod folder {
    use std::path::Path;

    /// Between the parts of the input.
    pub const SEPARATOR: &[u8] = b"\n--segment--\n";

    /// The parts of `data`: (checkpoint, segments).
    pub fn split(data: &[u8]) -> (&[u8], Vec<&[u8]>) {
        let mut parts = Vec::new();
        let mut rest = data;
        while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            parts.push(&rest[..at]);
            rest = &rest[at + SEPARATOR.len()..];
        }
        parts.push(rest);
        let checkpoint = parts.remove(0);
        (checkpoint, parts)
    }

    /// The input a spool folder's files make (for the seed corpus).
    pub fn join(checkpoint: &[u8], segments: &[Vec<u8>]) -> Vec<u8> {
        let mut out = checkpoint.to_vec();
        for segment in segments {
            out.extend_from_slice(SEPARATOR);
            out.extend_from_slice(segment);
        }
        out
    }

    /// Writes the folder `data` describes into `dir`.
    pub fn write(dir: &Path, data: &[u8]) {
        let (checkpoint, segments) = split(data);
        if !checkpoint.is_empty() {
            std::fs::write(dir.join("checkpoint"), checkpoint).expect("write the checkpoint");
        }
        for (n, segment) in segments.iter().enumerate() {
            let path = dir.join(format!("{:020}.wal", n + 1));
            std::fs::write(path, segment).expect("write a segment");
        }
    }
}

/// The settings file `text` through the collector's real command line: argv
/// `usage-collector --config <file>`, `${VAR}` resolved by a fixed lookup (some names unset,
/// some values TOML-significant). It must return `Ok` or an error, never panic.
pub fn config(text: &[u8]) {
    static FILE: OnceLock<TempDir> = OnceLock::new();
    let dir = FILE.get_or_init(|| TempDir::new("fuzz-config"));
    let path = dir.path().join("collector.toml");
    std::fs::write(&path, text).expect("write the settings file");
    let argv = [
        "usage-collector".into(),
        "--config".into(),
        path.into_os_string(),
    ];
    let parsed =
        usage_collector::config::parse::<usage_collector::cli::Cli, _>(argv, lookup_variable);
    // Formatting the error is what the collector does with it.
    if let Err(error) = parsed {
        let _ = error.to_string();
    }
}

/// The environment the settings file is expanded with.
pub fn lookup_variable(name: &str) -> Option<String> {
    match name {
        "QUOTE" => Some("\"".to_owned()),
        "NEWLINE" => Some("\n".to_owned()),
        "NESTED" => Some("${QUOTE}".to_owned()),
        "EMPTY" => Some(String::new()),
        "LONG" => Some("x".repeat(256)),
        "PORT" => Some("4317".to_owned()),
        name if name.is_empty() || name.starts_with("UNSET") => None,
        name => Some(name.to_owned()),
    }
}

/// A tokens file through `Tokens::load`, then a check of a presented token: `Ok` or an error,
/// never a panic, and an error never quotes a token (a word of 16 characters or more).
pub fn tokens(text: &[u8]) {
    static FILE: OnceLock<TempDir> = OnceLock::new();
    let dir = FILE.get_or_init(|| TempDir::new("fuzz-tokens"));
    let path = dir.path().join("tokens");
    std::fs::write(&path, text).expect("write the tokens file");
    match usage_collector::receiver::auth::Tokens::load(&path) {
        Ok(tokens) => {
            let presented = http::HeaderValue::from_static("Bearer fuzz-presented-token-0001");
            // Either answer is fine; it must not panic.
            let _answer = tokens.check(Some(&presented));
        }
        Err(error) => {
            // The message names the file; only the rest of it could quote the file's text.
            let message = error.to_string().replace(&path.display().to_string(), "");
            let text = String::from_utf8_lossy(text);
            for word in text.split_whitespace().filter(|w| w.len() >= 16) {
                assert!(
                    !message.contains(word),
                    "the error quotes a token: {message}"
                );
            }
        }
    }
}

/// A tracking plan file: refused with at least one problem named, or a plan whose catalogue
/// has a table holding each declared column with its declared type, and whose schema on an
/// empty database is one table created per event table (nothing refused: there is nothing to
/// lose).
pub fn tracking_plan(text: &[u8]) {
    use usage_collector::catalog::ColumnType;
    use usage_collector::sink::expand::{Change, plan_changes};
    use usage_tracker::catalog::Plan;
    let Ok(text) = std::str::from_utf8(text) else {
        return; // the collector reads the file as UTF-8 and says so
    };
    let plan = match Plan::parse(text) {
        Ok(plan) => plan,
        Err(error) => {
            assert!(!error.problems.is_empty(), "a refusal names its problems");
            assert!(error.to_string().starts_with("the tracking plan has "));
            return;
        }
    };
    let catalog = Catalog::of_plan(std::sync::Arc::new(plan.clone()));
    for event in &plan.events {
        if event.is_session_event() {
            continue;
        }
        let table = catalog
            .tables()
            .iter()
            .find(|t| t.name == event.table)
            .expect("a table per event table");
        for column in &event.columns {
            let found = table
                .columns
                .iter()
                .find(|c| c.name == column.column)
                .expect("every declared column in its table");
            assert_eq!(found.ty, ColumnType::of(column.kind));
        }
    }
    let changes = plan_changes(&catalog, &[]).expect("nothing to lose on an empty database");
    let mut created: Vec<&str> = changes
        .iter()
        .map(|change| match change {
            Change::CreateTable { table } => *table,
            other => panic!("only creates on an empty database: {other}"),
        })
        .collect();
    created.sort_unstable();
    let mut tables: Vec<&str> = plan
        .events
        .iter()
        .filter(|e| !e.is_session_event())
        .map(|e| e.table)
        .collect();
    tables.sort_unstable();
    tables.dedup();
    assert_eq!(created, tables);
}
