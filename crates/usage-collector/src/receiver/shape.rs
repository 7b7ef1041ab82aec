//! A request's shape, read from its protobuf bytes before anything is decoded: how many records
//! and values it holds, and which records break a limit. One pass over the bytes, walking only
//! the fields that become memory when decoded (records, attributes, nested values), with
//! prost's own wire-format primitives.
//!
//! This is what makes decoding safe to start: a few kilobytes of gzip can expand to millions of
//! empty records, and each decoded record or value costs a struct whatever its bytes; the shape
//! prices the decoded request before it exists (see [`Shape::decoded_bytes`]).

use prost::bytes::Buf;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

use crate::event::Signal;

/// How deep attribute values may nest (arrays and key-value lists inside each other): deep
/// enough for any usage data, and as JSON (inside the attributes' object) well within what the
/// databases take ([`crate::catalog::mapping::MAX_JSON_DEPTH`]).
pub const MAX_VALUE_DEPTH: usize = 16;

/// Nesting prost's decoder itself refuses (its recursion limit); the walk stops there too.
const DECODER_DEPTH: usize = 100;

/// Bytes one decoded record costs beyond its contents: the `LogRecord` or `Span` struct, its
/// mapped row and session (measured sizes of those structs, rounded up).
const RECORD_COST: usize = 1024;
/// Bytes one decoded attribute or nested value costs beyond its contents (`KeyValue` +
/// `AnyValue`, and its JSON or row value).
const ITEM_COST: usize = 160;
/// Times a request's own bytes are held while it is decoded, mapped and encoded for the spool
/// (the received buffer, the decoded strings, the mapped row values, the spool record).
const BYTES_FACTOR: usize = 4;

/// Limits on what one request may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Records (log records or spans) per request; past it the request is refused.
    pub max_records: usize,
    /// Attributes per record; past it the record is rejected on its own.
    pub max_attributes: usize,
    /// Bytes of one attribute value or event name; past it the record is rejected.
    pub max_value_bytes: usize,
}

/// Why one record is rejected before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// More attributes than [`Limits::max_attributes`].
    TooManyAttributes {
        /// Attributes the record has.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An attribute value or the event name is longer than [`Limits::max_value_bytes`].
    ValueTooLarge {
        /// Its bytes.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// An attribute value nests deeper than [`MAX_VALUE_DEPTH`].
    TooDeep,
}

impl Violation {
    /// Every reason label.
    pub const REASONS: [&'static str; 3] =
        ["too_many_attributes", "value_too_large", "value_too_deep"];

    /// Low-cardinality reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            Violation::TooManyAttributes { .. } => "too_many_attributes",
            Violation::ValueTooLarge { .. } => "value_too_large",
            Violation::TooDeep => "value_too_deep",
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::TooManyAttributes { count, limit } => write!(
                f,
                "{count} attributes; the limit is {limit} (max_attributes_per_record)"
            ),
            Violation::ValueTooLarge { bytes, limit } => write!(
                f,
                "a value of {bytes} bytes; the limit is {limit} (max_attribute_value_bytes)"
            ),
            Violation::TooDeep => write!(f, "a value nested deeper than {MAX_VALUE_DEPTH} levels"),
        }
    }
}

/// Why a whole request is refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// More records than [`Limits::max_records`].
    #[error(
        "the request holds more than {limit} records (max_records_per_request); send smaller batches"
    )]
    TooManyRecords {
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a protobuf message of the expected shape.
    #[error("the request is not a valid OTLP export request: {0}")]
    Malformed(String),
}

/// What a request holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    /// Its bytes.
    pub bytes: usize,
    /// Log records or spans.
    pub records: usize,
    /// Attributes and nested values, at every level.
    pub items: usize,
    /// (position among the request's records, what is wrong), in order.
    pub violations: Vec<(usize, Violation)>,
}

impl Shape {
    /// Reads the shape of an OTLP logs or traces export request.
    pub fn of(bytes: &[u8], signal: Signal, limits: &Limits) -> Result<Shape, ShapeError> {
        let mut walk = Walk {
            limits,
            signal,
            shape: Shape {
                bytes: bytes.len(),
                ..Shape::default()
            },
        };
        walk.request(bytes)?;
        Ok(walk.shape)
    }

    /// What decoding, mapping and spooling this request may hold in memory at once: its bytes
    /// several times over, and a struct per record and per value.
    pub fn decoded_bytes(&self) -> usize {
        self.bytes
            .saturating_mul(BYTES_FACTOR)
            .saturating_add(self.records.saturating_mul(RECORD_COST))
            .saturating_add(self.items.saturating_mul(ITEM_COST))
    }

    /// The most [`Self::decoded_bytes`] can be for a request within these limits: `max_bytes`
    /// of records as small as a record can be.
    pub fn worst_case_bytes(max_bytes: usize, limits: &Limits) -> usize {
        // A record takes at least 2 bytes (its tag and length); a value at least 2 as well.
        let records = (max_bytes / 2).min(limits.max_records);
        let items = max_bytes / 2;
        Shape {
            bytes: max_bytes,
            records,
            items,
            ..Shape::default()
        }
        .decoded_bytes()
    }
}

struct Walk<'a> {
    limits: &'a Limits,
    signal: Signal,
    shape: Shape,
}

/// Each field of the message in `buf`: (field number, its bytes if length-delimited).
fn fields(
    mut buf: &[u8],
    mut on: impl FnMut(u32, Option<&[u8]>) -> Result<(), ShapeError>,
) -> Result<(), ShapeError> {
    let malformed = |e: prost::DecodeError| ShapeError::Malformed(e.to_string());
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).map_err(malformed)?;
        match wire {
            WireType::Varint => {
                decode_varint(&mut buf).map_err(malformed)?;
                on(tag, None)?;
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let n = if wire == WireType::SixtyFourBit { 8 } else { 4 };
                if buf.remaining() < n {
                    return Err(ShapeError::Malformed("buffer underflow".to_owned()));
                }
                buf.advance(n);
                on(tag, None)?;
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).map_err(malformed)?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|len| *len <= buf.remaining())
                    .ok_or_else(|| ShapeError::Malformed("buffer underflow".to_owned()))?;
                let (field, rest) = buf.split_at(len);
                buf = rest;
                on(tag, Some(field))?;
            }
            // A group (a deprecated encoding, only ever in fields this collector does not
            // know) is skipped whole, as the decoder skips it; stopping here instead would
            // hide the rest of the message — an attribute's value after one — from the limits.
            WireType::StartGroup => {
                skip_field(wire, tag, &mut buf, DecodeContext::default()).map_err(malformed)?;
                on(tag, None)?;
            }
            WireType::EndGroup => {
                return Err(ShapeError::Malformed("unexpected end group tag".to_owned()));
            }
        }
    }
    Ok(())
}

impl Walk<'_> {
    /// `Export*ServiceRequest { repeated Resource* resource_* = 1 }`.
    fn request(&mut self, buf: &[u8]) -> Result<(), ShapeError> {
        fields(buf, |tag, field| match (tag, field) {
            (1, Some(resource)) => self.resource_group(resource),
            _ => Ok(()),
        })
    }

    /// `ResourceLogs`/`ResourceSpans { Resource resource = 1; repeated Scope* scope_* = 2 }`.
    fn resource_group(&mut self, buf: &[u8]) -> Result<(), ShapeError> {
        fields(buf, |tag, field| match (tag, field) {
            // Resource { repeated KeyValue attributes = 1 }
            (1, Some(resource)) => self.attributes(resource, 1).map(drop),
            (2, Some(scope)) => self.scope_group(scope),
            _ => Ok(()),
        })
    }

    /// `ScopeLogs`/`ScopeSpans { InstrumentationScope scope = 1; repeated record = 2 }`.
    fn scope_group(&mut self, buf: &[u8]) -> Result<(), ShapeError> {
        fields(buf, |tag, field| match (tag, field) {
            // InstrumentationScope { repeated KeyValue attributes = 3 }
            (1, Some(scope)) => self.attributes(scope, 3).map(drop),
            (2, Some(record)) => self.record(record),
            _ => Ok(()),
        })
    }

    /// A `LogRecord` (attributes 6, body 5, event_name 12) or a `Span` (attributes 9, name 5,
    /// events 11 with attributes 3, links 13 with attributes 4).
    fn record(&mut self, buf: &[u8]) -> Result<(), ShapeError> {
        let index = self.shape.records;
        self.shape.records += 1;
        if self.shape.records > self.limits.max_records {
            return Err(ShapeError::TooManyRecords {
                limit: self.limits.max_records,
            });
        }
        let (attribute_field, name_field) = match self.signal {
            Signal::Log => (6, 12),
            Signal::Span => (9, 5),
        };
        let mut attributes = 0;
        let mut violation = None;
        fields(buf, |tag, field| {
            let Some(field) = field else { return Ok(()) };
            let found = match (self.signal, tag) {
                (_, t) if t == attribute_field => {
                    attributes += 1;
                    self.key_value(field, 0)
                }
                (_, t) if t == name_field => self.value_bytes(field.len()),
                (Signal::Log, 5) => self.any_value(field, 0),
                // An event or a link is a struct of its own, whatever its attributes.
                (Signal::Span, 11) => {
                    self.shape.items += 1;
                    self.attributes(field, 3)?
                }
                (Signal::Span, 13) => {
                    self.shape.items += 1;
                    self.attributes(field, 4)?
                }
                _ => None,
            };
            if violation.is_none() {
                violation = found;
            }
            Ok(())
        })?;
        if attributes > self.limits.max_attributes {
            violation = Some(Violation::TooManyAttributes {
                count: attributes,
                limit: self.limits.max_attributes,
            });
        }
        if let Some(violation) = violation {
            self.shape.violations.push((index, violation));
        }
        Ok(())
    }

    /// The attributes (field `field`) of a message; the first violation among them.
    fn attributes(&mut self, buf: &[u8], field: u32) -> Result<Option<Violation>, ShapeError> {
        let mut violation = None;
        fields(buf, |tag, bytes| {
            if let (true, Some(bytes)) = (tag == field, bytes) {
                let found = self.key_value(bytes, 0);
                violation = violation.take().or(found);
            }
            Ok(())
        })?;
        Ok(violation)
    }

    fn value_bytes(&self, bytes: usize) -> Option<Violation> {
        (bytes > self.limits.max_value_bytes).then_some(Violation::ValueTooLarge {
            bytes,
            limit: self.limits.max_value_bytes,
        })
    }

    /// `KeyValue { string key = 1; AnyValue value = 2 }`.
    fn key_value(&mut self, buf: &[u8], depth: usize) -> Option<Violation> {
        self.shape.items += 1;
        let mut violation = None;
        let walked = fields(buf, |tag, field| {
            if let (2, Some(value)) = (tag, field) {
                // Walked whole either way (its values are counted); nesting is named first.
                let nested = self.any_value(value, depth);
                violation = nested.or_else(|| self.value_bytes(value.len()));
            }
            Ok(())
        });
        // A malformed value is the decoder's to report, with its position.
        walked.ok().and(violation)
    }

    /// `AnyValue { ArrayValue array_value = 5; KeyValueList kvlist_value = 6; … }`, where
    /// `ArrayValue { repeated AnyValue values = 1 }` and `KeyValueList { repeated KeyValue
    /// values = 1 }`.
    fn any_value(&mut self, buf: &[u8], depth: usize) -> Option<Violation> {
        self.shape.items += 1;
        // Past the limit the record is refused, but the decoder still builds the whole value
        // (down to its own limit of 100 levels), so its items are still counted.
        let too_deep = depth > MAX_VALUE_DEPTH;
        if depth > DECODER_DEPTH {
            return Some(Violation::TooDeep);
        }
        let mut violation = too_deep.then_some(Violation::TooDeep);
        let walked = fields(buf, |tag, field| {
            let Some(inner) = field else { return Ok(()) };
            let found = match tag {
                5 => self.nested(inner, depth, false),
                6 => self.nested(inner, depth, true),
                _ => None,
            };
            violation = violation.take().or(found);
            Ok(())
        });
        walked.ok().and(violation)
    }

    fn nested(&mut self, buf: &[u8], depth: usize, key_values: bool) -> Option<Violation> {
        let mut violation = None;
        let walked = fields(buf, |tag, field| {
            if let (1, Some(value)) = (tag, field) {
                let found = if key_values {
                    self.key_value(value, depth + 1)
                } else {
                    self.any_value(value, depth + 1)
                };
                violation = violation.take().or(found);
            }
            Ok(())
        });
        walked.ok().and(violation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::string_attr;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use prost::Message;

    const LIMITS: Limits = Limits {
        max_records: 10,
        max_attributes: 3,
        max_value_bytes: 100,
    };

    fn request(records: Vec<LogRecord>) -> Vec<u8> {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    fn nested(depth: usize) -> AnyValue {
        let mut value = AnyValue {
            value: Some(any_value::Value::IntValue(1)),
        };
        for _ in 0..depth {
            value = AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue {
                    values: vec![value],
                })),
            };
        }
        value
    }

    /// A group in an unknown field (legal protobuf, skipped by the decoder) neither hides the
    /// value after it from the limits nor gets the request refused.
    #[test]
    fn a_group_is_skipped_and_the_value_after_it_still_checked() {
        fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            prost::encoding::encode_key(number, WireType::LengthDelimited, &mut out);
            prost::encoding::encode_varint(bytes.len() as u64, &mut out);
            out.extend_from_slice(bytes);
            out
        }
        // An empty group in field 4 (start 0x23, end 0x24), holding a varint field.
        let group = [0x23, 0x08, 0x01, 0x24];
        let value = field(1, "x".repeat(200).as_bytes()); // AnyValue { string_value }
        let mut key_value = field(1, b"k");
        key_value.extend_from_slice(&group);
        key_value.extend(field(2, &value));
        let mut record = group.to_vec();
        record.extend(field(6, &key_value));
        let bytes = field(1, &field(2, &field(2, &record)));
        let decoded = ExportLogsServiceRequest::decode(bytes.as_slice()).expect("valid protobuf");
        let attributes = &decoded.resource_logs[0].scope_logs[0].log_records[0].attributes;
        assert_eq!(attributes[0].key, "k");
        let shape = Shape::of(&bytes, Signal::Log, &LIMITS).expect("not refused");
        assert_eq!(shape.records, 1);
        assert_eq!(
            shape.violations,
            [(
                0,
                Violation::ValueTooLarge {
                    bytes: value.len(),
                    limit: 100
                }
            )]
        );
        // An end-group key that closes nothing is refused, as the decoder refuses it.
        let mut stray = field(6, &field(1, b"k"));
        stray.push(0x24);
        let bytes = field(1, &field(2, &field(2, &stray)));
        assert!(ExportLogsServiceRequest::decode(bytes.as_slice()).is_err());
        assert!(matches!(
            Shape::of(&bytes, Signal::Log, &LIMITS),
            Err(ShapeError::Malformed(_))
        ));
    }

    #[test]
    fn counts_records_and_values_and_names_the_records_past_a_limit() {
        let ok = LogRecord {
            attributes: vec![string_attr("a", "1"), string_attr("b", "2")],
            ..Default::default()
        };
        let too_many = LogRecord {
            attributes: (0..4).map(|i| string_attr(&format!("k{i}"), "v")).collect(),
            ..Default::default()
        };
        let too_large = LogRecord {
            attributes: vec![string_attr("big", &"x".repeat(200))],
            ..Default::default()
        };
        let long_name = LogRecord {
            event_name: "n".repeat(101),
            ..Default::default()
        };
        let deep = LogRecord {
            attributes: vec![KeyValue {
                key: "deep".into(),
                value: Some(nested(MAX_VALUE_DEPTH + 2)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = request(vec![ok, too_many, too_large, long_name, deep]);
        let shape = Shape::of(&bytes, Signal::Log, &LIMITS).unwrap();
        assert_eq!(shape.records, 5);
        assert!(shape.items >= 2 + 4 + 1 + MAX_VALUE_DEPTH, "{shape:?}");
        let reasons: Vec<(usize, &str)> = shape
            .violations
            .iter()
            .map(|(i, v)| (*i, v.reason()))
            .collect();
        assert_eq!(
            reasons,
            [
                (1, "too_many_attributes"),
                (2, "value_too_large"),
                (3, "value_too_large"),
                (4, "value_too_deep")
            ]
        );
    }

    #[test]
    fn too_many_records_stop_the_walk_and_empty_records_are_priced() {
        let bytes = request(vec![LogRecord::default(); 11]);
        assert_eq!(
            Shape::of(&bytes, Signal::Log, &LIMITS).unwrap_err(),
            ShapeError::TooManyRecords { limit: 10 }
        );
        let bytes = request(vec![LogRecord::default(); 10]);
        let shape = Shape::of(&bytes, Signal::Log, &LIMITS).unwrap();
        assert!(shape.decoded_bytes() >= 10 * RECORD_COST);
        assert!(shape.decoded_bytes() <= Shape::worst_case_bytes(bytes.len(), &LIMITS));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bytes in [&[0x0a, 0xff][..], &[0x0b], &[0x0a, 0x05, 0x12, 0x10]] {
            assert!(matches!(
                Shape::of(bytes, Signal::Log, &LIMITS),
                Err(ShapeError::Malformed(_))
            ));
        }
    }
}
