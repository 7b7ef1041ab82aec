//! Borrowed views of an OTLP logs or traces export request, read straight from its protobuf
//! bytes with prost's wire-format primitives: every string and byte field is a slice of the
//! request, so decoding allocates nothing for a flat record (its attribute list is reused from
//! record to record); only nested array and key-value list values get a `Vec` of their own.
//!
//! Invariants, so that a request is refused or accepted exactly as prost's generated decoder
//! refuses or accepts it:
//! - every field the generated code knows is checked for its wire type, every string field
//!   (also those no event reads: schema URLs, severity text, trace state, span events and
//!   links, entity references) for UTF-8, and unknown fields are skipped as prost skips them;
//! - a scalar field sent more than once keeps its last value; a message field sent more than
//!   once is merged (its repeated fields appended, its scalars overwritten), and so is an
//!   `AnyValue`'s oneof: an array or key-value list sent twice is one list;
//! - nesting is counted as prost counts it ([`RECURSION_LIMIT`] levels below the request);
//! - a walk that fails part-way has already shown some records to its visitor: the caller
//!   throws away what it built (the whole request is refused, as prost refuses it).

use prost::encoding::{self, DecodeContext, WireType, check_wire_type, decode_key, decode_varint};

/// How many messages deep prost decodes (`prost::RECURSION_LIMIT`, which it does not export).
pub const RECURSION_LIMIT: u32 = 100;

/// Why the bytes are not an export request.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    /// A key, length, varint or wire type prost refuses.
    #[error(transparent)]
    Wire(#[from] prost::DecodeError),
    /// A length past the end of its message.
    #[error("buffer underflow")]
    Underflow,
    /// A string field that is not UTF-8.
    #[error("invalid string value: data is not UTF-8 encoded")]
    Utf8,
    /// Messages nested deeper than [`RECURSION_LIMIT`].
    #[error("recursion limit reached")]
    TooDeep,
    /// An end-group key that closes no group, or another group than the open one.
    #[error("unexpected end group tag")]
    EndGroup,
}

type Result<T> = std::result::Result<T, Malformed>;

/// An attribute value (an OTLP `AnyValue`), borrowing its strings and bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// An `AnyValue` with none of its fields set.
    Empty,
    /// `string_value`.
    Str(&'a str),
    /// `bool_value`.
    Bool(bool),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// `array_value`.
    Array(Vec<Value<'a>>),
    /// `kvlist_value`.
    KvList(Vec<KeyValue<'a>>),
    /// `bytes_value`.
    Bytes(&'a [u8]),
    /// `string_value_strindex` (a reference into a profile's string table).
    StrIndex(i32),
}

/// An attribute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyValue<'a> {
    /// Its key.
    pub key: &'a str,
    /// Its value, if the `value` field was sent ([`Value::Empty`] when sent empty).
    pub value: Option<Value<'a>>,
    /// `key_strindex` (profiles only).
    pub key_strindex: i32,
}

/// The instrumentation scope of a group of records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scope<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its version.
    pub version: &'a str,
}

/// A log record: the fields a usage event reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogRecord<'a> {
    /// The record's bytes as received (derived ids hash them).
    pub bytes: &'a [u8],
    /// `time_unix_nano`.
    pub time_unix_nano: u64,
    /// `observed_time_unix_nano`.
    pub observed_time_unix_nano: u64,
    /// `event_name`.
    pub event_name: &'a str,
    /// `body`, if sent.
    pub body: Option<Value<'a>>,
    /// `attributes`, in the order sent.
    pub attributes: Vec<KeyValue<'a>>,
    /// `trace_id`, as sent.
    pub trace_id: &'a [u8],
    /// `span_id`, as sent.
    pub span_id: &'a [u8],
}

/// A span's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status<'a> {
    /// `message`.
    pub message: &'a str,
    /// `code` (`StatusCode` as its number).
    pub code: i32,
}

/// A span: the fields a usage event reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Span<'a> {
    /// The span's bytes as received (derived ids hash them).
    pub bytes: &'a [u8],
    /// `name`.
    pub name: &'a str,
    /// `trace_id`, as sent.
    pub trace_id: &'a [u8],
    /// `span_id`, as sent.
    pub span_id: &'a [u8],
    /// `start_time_unix_nano`.
    pub start_time_unix_nano: u64,
    /// `end_time_unix_nano`.
    pub end_time_unix_nano: u64,
    /// `status`, if sent.
    pub status: Option<Status<'a>>,
    /// `attributes`, in the order sent.
    pub attributes: Vec<KeyValue<'a>>,
}

/// A log record or a span, read in place of the previous one (its attribute list reused).
pub trait Record<'a>: Default {
    /// Reads the record in `bytes`; `ctx` is the nesting prost still allows for its fields.
    fn decode(&mut self, bytes: &'a [u8], ctx: u32) -> Result<()>;
}

/// What a walk over a request shows, in the order of the request.
pub trait Visit<'a, R> {
    /// The next resource group, with its resource's attributes (empty without a resource).
    fn resource(&mut self, attributes: &[KeyValue<'a>]);
    /// The next scope group of the current resource, with its scope if it has one.
    fn scope(&mut self, resource: &[KeyValue<'a>], scope: Option<Scope<'a>>);
    /// The next record of the current scope.
    fn record(&mut self, record: &R);
}

/// Walks an `ExportLogsServiceRequest` (`R` = [`LogRecord`]) or `ExportTraceServiceRequest`
/// (`R` = [`Span`]): their groups have the same field numbers. Stops at the first malformed
/// field; what was shown before it must then be thrown away.
pub fn request<'a, R: Record<'a>>(bytes: &'a [u8], visit: &mut impl Visit<'a, R>) -> Result<()> {
    let ctx = RECURSION_LIMIT;
    let mut resource = Vec::new();
    let mut record = R::default();
    fields(bytes, ctx, |tag, wire, buf| {
        if tag != 1 {
            return Ok(false);
        }
        let group = message(wire, buf, ctx)?;
        resource_group(group, ctx - 1, &mut resource, &mut record, visit)?;
        Ok(true)
    })
}

/// `ResourceLogs`/`ResourceSpans { Resource resource = 1; repeated Scope* scope_* = 2;
/// string schema_url = 3 }`: the resource first, wherever it is sent, so that every record
/// knows its service.
fn resource_group<'a, R: Record<'a>>(
    bytes: &'a [u8],
    ctx: u32,
    resource: &mut Vec<KeyValue<'a>>,
    record: &mut R,
    visit: &mut impl Visit<'a, R>,
) -> Result<()> {
    resource.clear();
    fields(bytes, ctx, |tag, wire, buf| {
        match tag {
            1 => resource_fields(message(wire, buf, ctx)?, ctx - 1, resource)?,
            2 => drop(message(wire, buf, ctx)?),
            3 => drop(string(wire, buf)?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    visit.resource(resource);
    fields(bytes, ctx, |tag, wire, buf| {
        if tag != 2 {
            return Ok(false); // read above
        }
        scope_group(message(wire, buf, ctx)?, ctx - 1, resource, record, visit)?;
        Ok(true)
    })
}

/// `ScopeLogs`/`ScopeSpans { InstrumentationScope scope = 1; repeated record = 2; string
/// schema_url = 3 }`: the scope first, wherever it is sent.
fn scope_group<'a, R: Record<'a>>(
    bytes: &'a [u8],
    ctx: u32,
    resource: &[KeyValue<'a>],
    record: &mut R,
    visit: &mut impl Visit<'a, R>,
) -> Result<()> {
    let mut scope = None;
    fields(bytes, ctx, |tag, wire, buf| {
        match tag {
            1 => scope_fields(
                message(wire, buf, ctx)?,
                ctx - 1,
                scope.get_or_insert_default(),
            )?,
            2 => drop(message(wire, buf, ctx)?),
            3 => drop(string(wire, buf)?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    visit.scope(resource, scope);
    fields(bytes, ctx, |tag, wire, buf| {
        if tag != 2 {
            return Ok(false);
        }
        record.decode(message(wire, buf, ctx)?, ctx - 1)?;
        visit.record(record);
        Ok(true)
    })
}

/// `Resource { repeated KeyValue attributes = 1; uint32 dropped_attributes_count = 2;
/// repeated EntityRef entity_refs = 3 }`.
fn resource_fields<'a>(
    bytes: &'a [u8],
    ctx: u32,
    attributes: &mut Vec<KeyValue<'a>>,
) -> Result<()> {
    fields(bytes, ctx, |tag, wire, buf| {
        match tag {
            1 => attributes.push(key_value(message(wire, buf, ctx)?, ctx - 1)?),
            2 => drop(uint32(wire, buf)?),
            3 => entity_ref(message(wire, buf, ctx)?, ctx - 1)?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// `EntityRef { string schema_url = 1; string type = 2; repeated string id_keys = 3;
/// repeated string description_keys = 4 }`: checked, not kept.
fn entity_ref(bytes: &[u8], ctx: u32) -> Result<()> {
    fields(bytes, ctx, |tag, wire, buf| {
        if !(1..=4).contains(&tag) {
            return Ok(false);
        }
        string(wire, buf)?;
        Ok(true)
    })
}

/// `InstrumentationScope { string name = 1; string version = 2; repeated KeyValue attributes
/// = 3; uint32 dropped_attributes_count = 4 }`, merged into `scope`.
fn scope_fields<'a>(bytes: &'a [u8], ctx: u32, scope: &mut Scope<'a>) -> Result<()> {
    fields(bytes, ctx, |tag, wire, buf| {
        match tag {
            1 => scope.name = string(wire, buf)?,
            2 => scope.version = string(wire, buf)?,
            3 => drop(key_value(message(wire, buf, ctx)?, ctx - 1)?),
            4 => drop(uint32(wire, buf)?),
            _ => return Ok(false),
        }
        Ok(true)
    })
}

impl<'a> Record<'a> for LogRecord<'a> {
    /// `LogRecord { fixed64 time_unix_nano = 1; SeverityNumber severity_number = 2; string
    /// severity_text = 3; AnyValue body = 5; repeated KeyValue attributes = 6; uint32
    /// dropped_attributes_count = 7; fixed32 flags = 8; bytes trace_id = 9; bytes span_id =
    /// 10; fixed64 observed_time_unix_nano = 11; string event_name = 12 }`.
    fn decode(&mut self, bytes: &'a [u8], ctx: u32) -> Result<()> {
        let mut attributes = std::mem::take(&mut self.attributes);
        attributes.clear();
        *self = LogRecord {
            bytes,
            attributes,
            ..LogRecord::default()
        };
        fields(bytes, ctx, |tag, wire, buf| {
            match tag {
                1 => self.time_unix_nano = fixed64(wire, buf)?,
                2 => drop(int32(wire, buf)?),
                3 => drop(string(wire, buf)?),
                5 => any_value(
                    message(wire, buf, ctx)?,
                    ctx - 1,
                    self.body.get_or_insert(Value::Empty),
                )?,
                6 => self
                    .attributes
                    .push(key_value(message(wire, buf, ctx)?, ctx - 1)?),
                7 => drop(uint32(wire, buf)?),
                8 => drop(fixed32(wire, buf)?),
                9 => self.trace_id = bytes_field(wire, buf)?,
                10 => self.span_id = bytes_field(wire, buf)?,
                11 => self.observed_time_unix_nano = fixed64(wire, buf)?,
                12 => self.event_name = string(wire, buf)?,
                _ => return Ok(false),
            }
            Ok(true)
        })
    }
}

impl<'a> Record<'a> for Span<'a> {
    /// `Span { bytes trace_id = 1; bytes span_id = 2; string trace_state = 3; bytes
    /// parent_span_id = 4; string name = 5; SpanKind kind = 6; fixed64 start_time_unix_nano =
    /// 7; fixed64 end_time_unix_nano = 8; repeated KeyValue attributes = 9; uint32
    /// dropped_attributes_count = 10; repeated Event events = 11; uint32 dropped_events_count =
    /// 12; repeated Link links = 13; uint32 dropped_links_count = 14; Status status = 15;
    /// fixed32 flags = 16 }`.
    fn decode(&mut self, bytes: &'a [u8], ctx: u32) -> Result<()> {
        let mut attributes = std::mem::take(&mut self.attributes);
        attributes.clear();
        *self = Span {
            bytes,
            attributes,
            ..Span::default()
        };
        fields(bytes, ctx, |tag, wire, buf| {
            match tag {
                1 => self.trace_id = bytes_field(wire, buf)?,
                2 => self.span_id = bytes_field(wire, buf)?,
                3 => drop(string(wire, buf)?),
                4 => drop(bytes_field(wire, buf)?),
                5 => self.name = string(wire, buf)?,
                6 => drop(int32(wire, buf)?),
                7 => self.start_time_unix_nano = fixed64(wire, buf)?,
                8 => self.end_time_unix_nano = fixed64(wire, buf)?,
                9 => self
                    .attributes
                    .push(key_value(message(wire, buf, ctx)?, ctx - 1)?),
                10 | 12 | 14 => drop(uint32(wire, buf)?),
                11 => span_event(message(wire, buf, ctx)?, ctx - 1)?,
                13 => span_link(message(wire, buf, ctx)?, ctx - 1)?,
                15 => status(
                    message(wire, buf, ctx)?,
                    ctx - 1,
                    self.status.get_or_insert_default(),
                )?,
                16 => drop(fixed32(wire, buf)?),
                _ => return Ok(false),
            }
            Ok(true)
        })
    }
}

/// `Span.Event { fixed64 time_unix_nano = 1; string name = 2; repeated KeyValue attributes =
/// 3; uint32 dropped_attributes_count = 4 }`: checked, not kept.
fn span_event(bytes: &[u8], ctx: u32) -> Result<()> {
    fields(bytes, ctx, |tag, wire, buf| {
        match tag {
            1 => drop(fixed64(wire, buf)?),
            2 => drop(string(wire, buf)?),
            3 => drop(key_value(message(wire, buf, ctx)?, ctx - 1)?),
            4 => drop(uint32(wire, buf)?),
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// `Span.Link { bytes trace_id = 1; bytes span_id = 2; string trace_state = 3; repeated
/// KeyValue attributes = 4; uint32 dropped_attributes_count = 5; fixed32 flags = 6 }`:
/// checked, not kept.
fn span_link(bytes: &[u8], ctx: u32) -> Result<()> {
    fields(bytes, ctx, |tag, wire, buf| {
        match tag {
            1 | 2 => drop(bytes_field(wire, buf)?),
            3 => drop(string(wire, buf)?),
            4 => drop(key_value(message(wire, buf, ctx)?, ctx - 1)?),
            5 => drop(uint32(wire, buf)?),
            6 => drop(fixed32(wire, buf)?),
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// `Status { string message = 2; StatusCode code = 3 }`, merged into `status`.
fn status<'a>(bytes: &'a [u8], ctx: u32, status: &mut Status<'a>) -> Result<()> {
    fields(bytes, ctx, |tag, wire, buf| {
        match tag {
            2 => status.message = string(wire, buf)?,
            3 => status.code = int32(wire, buf)?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// `KeyValue { string key = 1; AnyValue value = 2; int32 key_strindex = 3 }`.
pub fn key_value<'a>(bytes: &'a [u8], ctx: u32) -> Result<KeyValue<'a>> {
    let mut kv = KeyValue::default();
    fields(bytes, ctx, |tag, wire, buf| {
        match tag {
            1 => kv.key = string(wire, buf)?,
            2 => any_value(
                message(wire, buf, ctx)?,
                ctx - 1,
                kv.value.get_or_insert(Value::Empty),
            )?,
            3 => kv.key_strindex = int32(wire, buf)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(kv)
}

/// `AnyValue { oneof value { string string_value = 1; bool bool_value = 2; int64 int_value =
/// 3; double double_value = 4; ArrayValue array_value = 5; KeyValueList kvlist_value = 6;
/// bytes bytes_value = 7; int32 string_value_strindex = 8 } }`, merged into `value` as prost
/// merges a oneof: a list sent again while the value is that kind of list is appended to.
pub fn any_value<'a>(bytes: &'a [u8], ctx: u32, value: &mut Value<'a>) -> Result<()> {
    fields(bytes, ctx, |tag, wire, buf| {
        match tag {
            1 => *value = Value::Str(string(wire, buf)?),
            2 => *value = Value::Bool(boolean(wire, buf)?),
            3 => *value = Value::Int(int64(wire, buf)?),
            4 => *value = Value::Double(double(wire, buf)?),
            5 => {
                let list = message(wire, buf, ctx)?;
                let mut values = match std::mem::replace(value, Value::Empty) {
                    Value::Array(values) => values,
                    _ => Vec::new(),
                };
                // `ArrayValue { repeated AnyValue values = 1 }`
                fields(list, ctx - 1, |tag, wire, buf| {
                    if tag != 1 {
                        return Ok(false);
                    }
                    let mut item = Value::Empty;
                    any_value(message(wire, buf, ctx - 1)?, ctx - 2, &mut item)?;
                    values.push(item);
                    Ok(true)
                })?;
                *value = Value::Array(values);
            }
            6 => {
                let list = message(wire, buf, ctx)?;
                let mut values = match std::mem::replace(value, Value::Empty) {
                    Value::KvList(values) => values,
                    _ => Vec::new(),
                };
                // `KeyValueList { repeated KeyValue values = 1 }`
                fields(list, ctx - 1, |tag, wire, buf| {
                    if tag != 1 {
                        return Ok(false);
                    }
                    values.push(key_value(message(wire, buf, ctx - 1)?, ctx - 2)?);
                    Ok(true)
                })?;
                *value = Value::KvList(values);
            }
            7 => *value = Value::Bytes(bytes_field(wire, buf)?),
            8 => *value = Value::StrIndex(int32(wire, buf)?),
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// Calls `on(tag, wire type, rest)` for each field of the message in `bytes`; `on` reads the
/// value of a field it knows from `rest` and returns true, or returns false and the field is
/// skipped. `ctx` is the nesting prost still allows for the message's fields.
fn fields<'a>(
    mut bytes: &'a [u8],
    ctx: u32,
    mut on: impl FnMut(u32, WireType, &mut &'a [u8]) -> Result<bool>,
) -> Result<()> {
    while !bytes.is_empty() {
        let (tag, wire) = decode_key(&mut bytes)?;
        if !on(tag, wire, &mut bytes)? {
            skip(tag, wire, &mut bytes, ctx)?;
        }
    }
    Ok(())
}

/// Skips an unknown field as prost does: a group's fields count one level of nesting each.
fn skip(tag: u32, wire: WireType, bytes: &mut &[u8], ctx: u32) -> Result<()> {
    if ctx == 0 {
        return Err(Malformed::TooDeep);
    }
    match wire {
        WireType::StartGroup => loop {
            let (inner_tag, inner_wire) = decode_key(bytes)?;
            if inner_wire == WireType::EndGroup {
                return if inner_tag == tag {
                    Ok(())
                } else {
                    Err(Malformed::EndGroup)
                };
            }
            skip(inner_tag, inner_wire, bytes, ctx - 1)?;
        },
        // Nothing nested: prost's own skip, whose nesting budget does not matter here.
        _ => Ok(encoding::skip_field(
            wire,
            tag,
            bytes,
            DecodeContext::default(),
        )?),
    }
}

/// A length-delimited field's bytes.
fn delimited<'a>(wire: WireType, bytes: &mut &'a [u8]) -> Result<&'a [u8]> {
    check_wire_type(WireType::LengthDelimited, wire)?;
    let len = decode_varint(bytes)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= bytes.len())
        .ok_or(Malformed::Underflow)?;
    let (field, rest) = bytes.split_at(len);
    *bytes = rest;
    Ok(field)
}

/// A nested message's bytes, refused past the nesting prost allows.
fn message<'a>(wire: WireType, bytes: &mut &'a [u8], ctx: u32) -> Result<&'a [u8]> {
    check_wire_type(WireType::LengthDelimited, wire)?;
    if ctx == 0 {
        return Err(Malformed::TooDeep);
    }
    delimited(wire, bytes)
}

fn string<'a>(wire: WireType, bytes: &mut &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(delimited(wire, bytes)?).map_err(|_| Malformed::Utf8)
}

fn bytes_field<'a>(wire: WireType, bytes: &mut &'a [u8]) -> Result<&'a [u8]> {
    delimited(wire, bytes)
}

/// Scalar fields, read by prost's own functions (same wire types, same varint rules).
macro_rules! scalar {
    ($($name:ident: $ty:ty = $module:ident;)*) => {$(
        fn $name(wire: WireType, bytes: &mut &[u8]) -> Result<$ty> {
            let mut value = <$ty>::default();
            encoding::$module::merge(wire, &mut value, bytes, DecodeContext::default())?;
            Ok(value)
        }
    )*};
}

scalar! {
    fixed64: u64 = fixed64;
    fixed32: u32 = fixed32;
    uint32: u32 = uint32;
    int32: i32 = int32;
    int64: i64 = int64;
    boolean: bool = bool;
    double: f64 = double;
}

/// The prost form of a view (for the resource digest, which hashes prost's encoding of the
/// resource's attributes, and for tests).
pub fn to_prost(kv: &KeyValue<'_>) -> opentelemetry_proto::tonic::common::v1::KeyValue {
    opentelemetry_proto::tonic::common::v1::KeyValue {
        key: kv.key.to_owned(),
        value: kv.value.as_ref().map(any_to_prost),
        key_strindex: kv.key_strindex,
    }
}

fn any_to_prost(value: &Value<'_>) -> opentelemetry_proto::tonic::common::v1::AnyValue {
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList, any_value::Value as V};
    let value = match value {
        Value::Empty => None,
        Value::Str(s) => Some(V::StringValue((*s).to_owned())),
        Value::Bool(b) => Some(V::BoolValue(*b)),
        Value::Int(i) => Some(V::IntValue(*i)),
        Value::Double(d) => Some(V::DoubleValue(*d)),
        Value::Array(values) => Some(V::ArrayValue(ArrayValue {
            values: values.iter().map(any_to_prost).collect(),
        })),
        Value::KvList(values) => Some(V::KvlistValue(KeyValueList {
            values: values.iter().map(to_prost).collect(),
        })),
        Value::Bytes(b) => Some(V::BytesValue(b.to_vec())),
        Value::StrIndex(i) => Some(V::StringValueStrindex(*i)),
    };
    opentelemetry_proto::tonic::common::v1::AnyValue { value }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue as PAnyValue, ArrayValue, InstrumentationScope, KeyValue as PKeyValue,
        KeyValueList, any_value::Value as PValue,
    };
    use opentelemetry_proto::tonic::logs::v1::{LogRecord as PLogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{
        ResourceSpans, ScopeSpans, Span as PSpan, Status as PStatus, span,
    };
    use prost::Message;

    use crate::catalog::Catalog;
    use crate::catalog::convert::{self, Converted};

    fn pkv(key: &str, value: PValue) -> PKeyValue {
        PKeyValue {
            key: key.to_owned(),
            value: Some(PAnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    /// A log record's bytes, times, event name, body, attributes, trace and span ids.
    type SeenLog = (
        Vec<u8>,
        u64,
        u64,
        String,
        Option<PAnyValue>,
        Vec<PKeyValue>,
        Vec<u8>,
        Vec<u8>,
    );

    /// A span's name, ids, times, status and attributes.
    type SeenSpan = (
        String,
        Vec<u8>,
        Vec<u8>,
        u64,
        u64,
        Option<(String, i32)>,
        Vec<PKeyValue>,
    );

    /// What the walk reads of a request, in prost's types: prost's decoding of the same bytes
    /// must give the same.
    #[derive(Debug, Default)]
    struct Seen {
        resources: Vec<Vec<PKeyValue>>,
        scopes: Vec<Option<(String, String)>>,
        logs: Vec<SeenLog>,
        spans: Vec<SeenSpan>,
    }

    fn prost_attributes(attributes: &[KeyValue<'_>]) -> Vec<PKeyValue> {
        attributes.iter().map(to_prost).collect()
    }

    impl<'a> Visit<'a, LogRecord<'a>> for Seen {
        fn resource(&mut self, attributes: &[KeyValue<'a>]) {
            self.resources.push(prost_attributes(attributes));
        }
        fn scope(&mut self, _: &[KeyValue<'a>], scope: Option<Scope<'a>>) {
            self.scopes
                .push(scope.map(|s| (s.name.to_owned(), s.version.to_owned())));
        }
        fn record(&mut self, r: &LogRecord<'a>) {
            self.logs.push((
                r.bytes.to_vec(),
                r.time_unix_nano,
                r.observed_time_unix_nano,
                r.event_name.to_owned(),
                r.body.as_ref().map(any_to_prost),
                prost_attributes(&r.attributes),
                r.trace_id.to_vec(),
                r.span_id.to_vec(),
            ));
        }
    }

    impl<'a> Visit<'a, Span<'a>> for Seen {
        fn resource(&mut self, attributes: &[KeyValue<'a>]) {
            self.resources.push(prost_attributes(attributes));
        }
        fn scope(&mut self, _: &[KeyValue<'a>], scope: Option<Scope<'a>>) {
            self.scopes
                .push(scope.map(|s| (s.name.to_owned(), s.version.to_owned())));
        }
        fn record(&mut self, s: &Span<'a>) {
            self.spans.push((
                s.name.to_owned(),
                s.trace_id.to_vec(),
                s.span_id.to_vec(),
                s.start_time_unix_nano,
                s.end_time_unix_nano,
                s.status.map(|s| (s.message.to_owned(), s.code)),
                prost_attributes(&s.attributes),
            ));
        }
    }

    fn walk_logs(bytes: &[u8]) -> Result<Seen> {
        let mut seen = Seen::default();
        request::<LogRecord<'_>>(bytes, &mut seen).map(|()| seen)
    }

    fn walk_traces(bytes: &[u8]) -> Result<Seen> {
        let mut seen = Seen::default();
        request::<Span<'_>>(bytes, &mut seen).map(|()| seen)
    }

    /// What prost decodes of the same bytes, as [`Seen`] (the record bytes from the walk, which
    /// prost does not keep, once prost decodes them to that same record: derived ids hash them,
    /// so they must be the record's own, in order, across resources and scopes).
    fn prost_logs(bytes: &[u8], walked: &Seen) -> Seen {
        let request = ExportLogsServiceRequest::decode(bytes).expect("prost decodes it");
        let mut seen = Seen::default();
        let mut n = 0;
        for group in request.resource_logs {
            seen.resources
                .push(group.resource.map(|r| r.attributes).unwrap_or_default());
            for scope in group.scope_logs {
                seen.scopes.push(scope.scope.map(|s| (s.name, s.version)));
                for r in scope.log_records {
                    // Compared as prost encodes them (a NaN body is not equal to itself).
                    let own = PLogRecord::decode(walked.logs[n].0.as_slice())
                        .map(|own| own.encode_to_vec());
                    assert_eq!(
                        own,
                        Ok(r.encode_to_vec()),
                        "record {n}'s bytes are another's"
                    );
                    seen.logs.push((
                        walked.logs[n].0.clone(),
                        r.time_unix_nano,
                        r.observed_time_unix_nano,
                        r.event_name,
                        r.body,
                        r.attributes,
                        r.trace_id,
                        r.span_id,
                    ));
                    n += 1;
                }
            }
        }
        seen
    }

    fn prost_traces(bytes: &[u8]) -> Seen {
        let request = ExportTraceServiceRequest::decode(bytes).expect("prost decodes it");
        let mut seen = Seen::default();
        for group in request.resource_spans {
            seen.resources
                .push(group.resource.map(|r| r.attributes).unwrap_or_default());
            for scope in group.scope_spans {
                seen.scopes.push(scope.scope.map(|s| (s.name, s.version)));
                for s in scope.spans {
                    seen.spans.push((
                        s.name,
                        s.trace_id,
                        s.span_id,
                        s.start_time_unix_nano,
                        s.end_time_unix_nano,
                        s.status.map(|s| (s.message, s.code)),
                        s.attributes,
                    ));
                }
            }
        }
        seen
    }

    /// The walk and prost agree on `bytes`: both refuse them, or both read the same.
    fn agree_logs(bytes: &[u8]) -> bool {
        match (walk_logs(bytes), ExportLogsServiceRequest::decode(bytes)) {
            (Ok(seen), Ok(_)) => {
                // As text: a NaN is not equal to itself.
                assert_eq!(
                    format!("{seen:?}"),
                    format!("{:?}", prost_logs(bytes, &seen))
                );
                true
            }
            (Err(_), Err(_)) => false,
            (walked, prost) => panic!(
                "the walk and prost disagree on {bytes:02x?}: walk {:?}, prost {:?}",
                walked.err(),
                prost.err()
            ),
        }
    }

    fn agree_traces(bytes: &[u8]) -> bool {
        match (walk_traces(bytes), ExportTraceServiceRequest::decode(bytes)) {
            (Ok(seen), Ok(_)) => {
                assert_eq!(format!("{seen:?}"), format!("{:?}", prost_traces(bytes)));
                true
            }
            (Err(_), Err(_)) => false,
            (walked, prost) => panic!(
                "the walk and prost disagree on {bytes:02x?}: walk {:?}, prost {:?}",
                walked.err(),
                prost.err()
            ),
        }
    }

    fn every_kind() -> Vec<PKeyValue> {
        vec![
            pkv("s", PValue::StringValue("text ü".into())),
            pkv("empty", PValue::StringValue(String::new())),
            pkv("b", PValue::BoolValue(true)),
            pkv("f", PValue::BoolValue(false)),
            pkv("i", PValue::IntValue(-42)),
            pkv("d", PValue::DoubleValue(1.5)),
            pkv("bytes", PValue::BytesValue(vec![0, 1, 0xff])),
            pkv("strindex", PValue::StringValueStrindex(-3)),
            pkv(
                "array",
                PValue::ArrayValue(ArrayValue {
                    values: vec![
                        PAnyValue {
                            value: Some(PValue::IntValue(1)),
                        },
                        PAnyValue { value: None },
                        PAnyValue {
                            value: Some(PValue::ArrayValue(ArrayValue::default())),
                        },
                    ],
                }),
            ),
            pkv(
                "kvlist",
                PValue::KvlistValue(KeyValueList {
                    values: vec![
                        pkv("inner", PValue::StringValue("x".into())),
                        PKeyValue {
                            key: "no value".into(),
                            ..Default::default()
                        },
                        pkv(
                            "deeper",
                            PValue::KvlistValue(KeyValueList {
                                values: vec![pkv("n", PValue::DoubleValue(-0.0))],
                            }),
                        ),
                    ],
                }),
            ),
            PKeyValue {
                key: "empty value".into(),
                value: Some(PAnyValue { value: None }),
                key_strindex: 7,
            },
        ]
    }

    #[test]
    fn every_any_value_kind_is_read_in_place() {
        let attributes = every_kind();
        for kv in &attributes {
            let bytes = kv.encode_to_vec();
            let view = key_value(&bytes, RECURSION_LIMIT).unwrap();
            assert_eq!(&to_prost(&view), kv);
        }
        let bytes = pkv("s", PValue::StringValue("abc".into())).encode_to_vec();
        let view = key_value(&bytes, RECURSION_LIMIT).unwrap();
        assert_eq!(view.value, Some(Value::Str("abc")));
        // Borrowed from the bytes, not copied.
        let Some(Value::Str(s)) = view.value else {
            unreachable!()
        };
        assert!(bytes.as_ptr_range().contains(&s.as_ptr()));
        let bytes = attributes[8].encode_to_vec();
        assert_eq!(
            key_value(&bytes, RECURSION_LIMIT).unwrap().value,
            Some(Value::Array(vec![
                Value::Int(1),
                Value::Empty,
                Value::Array(vec![])
            ]))
        );

        let request = logs_request(vec![PLogRecord {
            event_name: "x".into(),
            time_unix_nano: 5,
            observed_time_unix_nano: 6,
            severity_text: "INFO".into(),
            body: Some(PAnyValue {
                value: Some(PValue::KvlistValue(KeyValueList {
                    values: every_kind(),
                })),
            }),
            attributes: every_kind(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            ..Default::default()
        }]);
        assert!(agree_logs(&request.encode_to_vec()));
    }

    fn logs_request(records: Vec<PLogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![pkv("service.name", PValue::StringValue("ide".into()))],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "app".into(),
                        version: "1".into(),
                        attributes: every_kind(),
                        ..Default::default()
                    }),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// Appends field `tag` of wire type `wire` and `value` (already encoded for that type).
    fn field(out: &mut Vec<u8>, tag: u32, wire: WireType, value: &[u8]) {
        encoding::encode_key(tag, wire, out);
        if wire == WireType::LengthDelimited {
            encoding::encode_varint(value.len() as u64, out);
        }
        out.extend_from_slice(value);
    }

    fn nested(tag: u32, inner: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        field(&mut out, tag, WireType::LengthDelimited, inner);
        out
    }

    /// A request of one resource group, one scope group and `record` (a log record's fields).
    fn wrap(record: &[u8]) -> Vec<u8> {
        nested(1, &nested(2, &nested(2, record)))
    }

    #[test]
    fn repeated_scalars_keep_the_last_value_and_messages_merge() {
        let mut record = Vec::new();
        field(&mut record, 12, WireType::LengthDelimited, b"first");
        field(&mut record, 1, WireType::SixtyFourBit, &7u64.to_le_bytes());
        field(&mut record, 12, WireType::LengthDelimited, b"last");
        field(&mut record, 1, WireType::SixtyFourBit, &9u64.to_le_bytes());
        // An attribute whose value is sent twice: the two arrays are one.
        let array = |n: i64| {
            PAnyValue {
                value: Some(PValue::ArrayValue(ArrayValue {
                    values: vec![PAnyValue {
                        value: Some(PValue::IntValue(n)),
                    }],
                })),
            }
            .encode_to_vec()
        };
        let mut kv = Vec::new();
        field(&mut kv, 1, WireType::LengthDelimited, b"list");
        field(&mut kv, 2, WireType::LengthDelimited, &array(1));
        field(&mut kv, 2, WireType::LengthDelimited, &array(2));
        field(&mut record, 6, WireType::LengthDelimited, &kv);
        // The body: a string, then an int replaces it.
        field(&mut record, 5, WireType::LengthDelimited, &[0x0a, 1, b'a']);
        field(&mut record, 5, WireType::LengthDelimited, &[0x18, 3]);
        let bytes = wrap(&record);
        assert!(agree_logs(&bytes));
        let seen = walk_logs(&bytes).unwrap();
        let (_, time, _, name, body, attributes, ..) = &seen.logs[0];
        assert_eq!((*time, name.as_str()), (9, "last"));
        assert_eq!(body.as_ref().unwrap().value, Some(PValue::IntValue(3)));
        assert_eq!(
            attributes[0].value.as_ref().unwrap().value,
            Some(PValue::ArrayValue(ArrayValue {
                values: [1, 2]
                    .map(|n| PAnyValue {
                        value: Some(PValue::IntValue(n))
                    })
                    .into()
            }))
        );

        // A resource and a scope sent twice, the resource after the records: merged, and read
        // before the records.
        let service = pkv("service.name", PValue::StringValue("ide".into())).encode_to_vec();
        let other = pkv("host", PValue::StringValue("h".into())).encode_to_vec();
        let mut scope_group = Vec::new();
        field(
            &mut scope_group,
            1,
            WireType::LengthDelimited,
            &nested(1, b"a"),
        );
        field(&mut scope_group, 2, WireType::LengthDelimited, &record);
        field(
            &mut scope_group,
            1,
            WireType::LengthDelimited,
            &nested(2, b"v2"),
        );
        let mut group = Vec::new();
        field(&mut group, 2, WireType::LengthDelimited, &scope_group);
        field(
            &mut group,
            1,
            WireType::LengthDelimited,
            &nested(1, &service),
        );
        field(&mut group, 1, WireType::LengthDelimited, &nested(1, &other));
        let bytes = nested(1, &group);
        assert!(agree_logs(&bytes));
        let seen = walk_logs(&bytes).unwrap();
        assert_eq!(seen.resources[0].len(), 2);
        assert_eq!(seen.scopes[0], Some(("a".into(), "v2".into())));
    }

    #[test]
    fn unknown_fields_are_skipped_and_count_in_the_record_bytes() {
        let mut record = PLogRecord {
            event_name: "x".into(),
            ..Default::default()
        }
        .encode_to_vec();
        field(&mut record, 99, WireType::LengthDelimited, b"new");
        field(&mut record, 98, WireType::Varint, &[0x96, 0x01]);
        field(&mut record, 97, WireType::ThirtyTwoBit, &[1, 2, 3, 4]);
        // A group holding a field: skipped whole.
        encoding::encode_key(96, WireType::StartGroup, &mut record);
        field(&mut record, 1, WireType::Varint, &[1]);
        encoding::encode_key(96, WireType::EndGroup, &mut record);
        let mut bytes = wrap(&record);
        field(&mut bytes, 5, WireType::Varint, &[1]); // unknown in the request itself
        assert!(agree_logs(&bytes));
        assert_eq!(walk_logs(&bytes).unwrap().logs[0].0, record);
        // A group closed by another tag is refused.
        let mut bad = record.clone();
        encoding::encode_key(95, WireType::StartGroup, &mut bad);
        encoding::encode_key(94, WireType::EndGroup, &mut bad);
        assert!(!agree_logs(&wrap(&bad)));
    }

    #[test]
    fn bad_utf8_anywhere_and_wrong_wire_types_are_refused() {
        let bad = [0xff, 0xfe];
        // Strings the events read, and strings they do not.
        let mut cases = Vec::new();
        for tag in [3, 12] {
            cases.push(wrap(&nested(tag, &bad)));
        }
        cases.push(wrap(&nested(6, &nested(1, &bad))));
        cases.push(wrap(&nested(6, &nested(2, &nested(1, &bad)))));
        cases.push(nested(1, &nested(3, &bad)));
        cases.push(nested(1, &nested(2, &nested(3, &bad))));
        cases.push(nested(1, &nested(2, &nested(1, &nested(2, &bad)))));
        cases.push(nested(1, &nested(1, &nested(3, &nested(2, &bad)))));
        // A known field with the wrong wire type: a fixed64 time sent as a varint.
        cases.push(wrap(&[0x08, 0x01]));
        for bytes in &cases {
            assert!(!agree_logs(bytes), "{bytes:02x?}");
            assert!(matches!(
                convert::logs(bytes, &Catalog::built_in(), 1, ()),
                Err(Malformed::Wire(_))
            ));
        }
        // Span fields no event reads: an event's name, a link's trace state, a status message.
        for span in [
            nested(11, &nested(2, &bad)),
            nested(13, &nested(3, &bad)),
            nested(15, &nested(2, &bad)),
            nested(3, &bad),
        ] {
            assert!(!agree_traces(&wrap(&span)));
        }
        // The answer is prost's own description.
        let error = convert::logs(&cases[0], &Catalog::built_in(), 1, ()).unwrap_err();
        assert_eq!(
            error.to_string(),
            ExportLogsServiceRequest::decode(&cases[0][..])
                .unwrap_err()
                .to_string()
        );
    }

    #[test]
    fn every_truncation_is_refused_as_prost_refuses_it() {
        let request = logs_request(vec![
            PLogRecord {
                event_name: "page_visit".into(),
                time_unix_nano: 1_764_504_000_123_456_789,
                attributes: every_kind(),
                ..Default::default()
            };
            2
        ]);
        let bytes = request.encode_to_vec();
        let mut refused = 0;
        for end in 0..bytes.len() {
            refused += usize::from(!agree_logs(&bytes[..end]));
        }
        assert!(refused > bytes.len() / 2, "{refused} of {}", bytes.len());
        assert!(agree_logs(&bytes));
    }

    #[test]
    fn nesting_is_limited_where_prost_limits_it() {
        let value = |depth: usize| {
            let mut value = PAnyValue {
                value: Some(PValue::IntValue(1)),
            };
            for _ in 0..depth {
                value = PAnyValue {
                    value: Some(PValue::ArrayValue(ArrayValue {
                        values: vec![value],
                    })),
                };
            }
            value
        };
        let mut accepted = Vec::new();
        for depth in 40..52 {
            let request = logs_request(vec![PLogRecord {
                attributes: vec![PKeyValue {
                    key: "deep".into(),
                    value: Some(value(depth)),
                    ..Default::default()
                }],
                ..Default::default()
            }]);
            accepted.push(agree_logs(&request.encode_to_vec()));
        }
        assert!(accepted[0] && !accepted[accepted.len() - 1], "{accepted:?}");
        // A group nested in an unknown field counts too.
        for depth in 90..100 {
            let mut record = Vec::new();
            for _ in 0..depth {
                encoding::encode_key(50, WireType::StartGroup, &mut record);
            }
            for _ in 0..depth {
                encoding::encode_key(50, WireType::EndGroup, &mut record);
            }
            agree_logs(&wrap(&record));
        }
    }

    /// A small deterministic generator (no dependency): xorshift.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len() as u64) as usize]
        }
    }

    fn any(rng: &mut Rng, depth: u32) -> PValue {
        match rng.below(if depth > 2 { 6 } else { 8 }) {
            0 => PValue::StringValue(rng.pick(&["", "a", "/ide", "[1,{\"a\":2}]", "x y"]).into()),
            1 => PValue::BoolValue(rng.below(2) == 1),
            2 => PValue::IntValue(rng.next() as i64 >> rng.below(64)),
            3 => PValue::DoubleValue([1.5, 12.0, -0.0, f64::NAN, 1e300][rng.below(5) as usize]),
            4 => PValue::BytesValue(vec![rng.below(256) as u8; rng.below(3) as usize]),
            5 => PValue::StringValueStrindex(rng.below(5) as i32 - 2),
            6 => PValue::ArrayValue(ArrayValue {
                values: (0..rng.below(4))
                    .map(|_| PAnyValue {
                        value: (rng.below(5) > 0).then(|| any(rng, depth + 1)),
                    })
                    .collect(),
            }),
            _ => PValue::KvlistValue(KeyValueList {
                values: (0..rng.below(4))
                    .map(|_| attribute(rng, depth + 1))
                    .collect(),
            }),
        }
    }

    const KEYS: [&str; 16] = [
        "event.name",
        "event.id",
        "session.id",
        "user.id",
        "url.path",
        "http.request.header.referer",
        "user_agent.original",
        "client.address",
        "program.lines",
        "program.success",
        "program.duration_ms",
        "error.message",
        "feature.name",
        "feature.data",
        "pages",
        "other",
    ];

    fn attribute(rng: &mut Rng, depth: u32) -> PKeyValue {
        let key = rng.pick(&KEYS).to_owned();
        let value = match rng.below(10) {
            0 => None,
            1 => Some(PAnyValue { value: None }),
            2..=4 if key == "event.name" => Some(PAnyValue {
                value: Some(PValue::StringValue(
                    rng.pick(&[
                        "page_visit",
                        "program_execution",
                        "feature_use",
                        "session_start",
                        "session_end",
                        "custom",
                    ])
                    .into(),
                )),
            }),
            2..=4 if key == "event.id" => Some(PAnyValue {
                value: Some(PValue::StringValue(
                    rng.pick(&["01890a5d-ac96-774b-bcce-b302099a8057", "order-42", ""])
                        .into(),
                )),
            }),
            _ => Some(PAnyValue {
                value: Some(any(rng, depth)),
            }),
        };
        PKeyValue {
            key,
            value,
            ..Default::default()
        }
    }

    fn attributes(rng: &mut Rng) -> Vec<PKeyValue> {
        (0..rng.below(7)).map(|_| attribute(rng, 0)).collect()
    }

    const T: u64 = 1_764_504_000_123_456_789;

    fn time(rng: &mut Rng) -> u64 {
        [0, T, T + rng.below(1 << 40), 1][rng.below(4) as usize]
    }

    fn resource(rng: &mut Rng) -> Option<Resource> {
        (rng.below(5) > 0).then(|| Resource {
            attributes: [
                vec![pkv(
                    "service.name",
                    PValue::StringValue(rng.pick(&["ide", "shop ", "", "ide"]).into()),
                )],
                attributes(rng),
            ]
            .concat(),
            ..Default::default()
        })
    }

    fn scope(rng: &mut Rng) -> Option<InstrumentationScope> {
        (rng.below(3) > 0).then(|| InstrumentationScope {
            name: rng.pick(&["app", "", "usage-collector.self"]).into(),
            version: rng.pick(&["", "1.0"]).into(),
            ..Default::default()
        })
    }

    fn ids(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
        match rng.below(3) {
            0 => (Vec::new(), Vec::new()),
            1 => (vec![rng.below(3) as u8; 16], vec![rng.below(3) as u8; 8]),
            _ => (vec![1; 15], vec![2; 8]),
        }
    }

    fn random_logs(rng: &mut Rng) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: (0..1 + rng.below(2))
                .map(|_| ResourceLogs {
                    resource: resource(rng),
                    scope_logs: (0..1 + rng.below(2))
                        .map(|_| ScopeLogs {
                            scope: scope(rng),
                            log_records: (0..rng.below(6))
                                .map(|_| {
                                    let (trace_id, span_id) = ids(rng);
                                    PLogRecord {
                                        time_unix_nano: time(rng),
                                        observed_time_unix_nano: time(rng),
                                        event_name: rng
                                            .pick(&["", "page_visit", "program_execution", "x"])
                                            .into(),
                                        body: (rng.below(3) == 0).then(|| PAnyValue {
                                            value: Some(any(rng, 0)),
                                        }),
                                        attributes: attributes(rng),
                                        trace_id,
                                        span_id,
                                        ..Default::default()
                                    }
                                })
                                .collect(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn random_traces(rng: &mut Rng) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: (0..1 + rng.below(2))
                .map(|_| ResourceSpans {
                    resource: resource(rng),
                    scope_spans: (0..1 + rng.below(2))
                        .map(|_| ScopeSpans {
                            scope: scope(rng),
                            spans: (0..rng.below(6))
                                .map(|_| {
                                    let (trace_id, span_id) = ids(rng);
                                    let start = time(rng);
                                    PSpan {
                                        name: rng
                                            .pick(&["", "program_execution", "page_visit", "run"])
                                            .into(),
                                        trace_id,
                                        span_id,
                                        start_time_unix_nano: start,
                                        end_time_unix_nano: start
                                            .wrapping_add(rng.below(1 << 32))
                                            .wrapping_sub(rng.below(2)),
                                        status: (rng.below(2) == 0).then(|| PStatus {
                                            message: rng.pick(&["", "boom"]).into(),
                                            code: rng.below(4) as i32,
                                        }),
                                        attributes: attributes(rng),
                                        events: (0..rng.below(2))
                                            .map(|_| span::Event {
                                                name: "e".into(),
                                                attributes: attributes(rng),
                                                ..Default::default()
                                            })
                                            .collect(),
                                        ..Default::default()
                                    }
                                })
                                .collect(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// Everything a conversion says, to compare two.
    fn summary(converted: &Converted) -> String {
        let mut tally: Vec<_> = converted.tally.iter().collect();
        tally.sort();
        format!(
            "{:?}\n{} {:?}\n{:?}\n{tally:?}\n{:?}",
            converted.events,
            converted.received,
            converted.rejected,
            converted.truncated,
            converted.services
        )
    }

    /// A copy of `bytes` with one byte changed (most changes make the request malformed;
    /// some keep it valid with other values).
    fn mutate(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        if !out.is_empty() {
            let at = rng.below(out.len() as u64) as usize;
            out[at] = rng.below(256) as u8;
        }
        out
    }

    /// For many generated requests: the walk reads exactly what prost decodes, refuses exactly
    /// what prost refuses, and converting the bytes gives what converting prost's decoding of
    /// them gives (events, rows, ids, rejections and their messages, tally, services) — the
    /// same bytes when the client encodes canonically, as every SDK does.
    #[test]
    fn generated_requests_convert_as_prost_decodes_them() {
        let catalog = Catalog::built_in();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut valid, mut refused) = (0, 0);
        for _ in 0..400 {
            let logs = random_logs(&mut rng).encode_to_vec();
            let traces = random_traces(&mut rng).encode_to_vec();
            assert!(agree_logs(&logs));
            assert!(agree_traces(&traces));
            let request = ExportLogsServiceRequest::decode(&logs[..]).unwrap();
            assert_eq!(
                summary(&convert::logs(&logs, &catalog, 7, ()).unwrap()),
                summary(&convert::logs_request(&request, &catalog, 7, ()).unwrap())
            );
            let request = ExportTraceServiceRequest::decode(&traces[..]).unwrap();
            assert_eq!(
                summary(&convert::traces(&traces, &catalog, 7, ()).unwrap()),
                summary(&convert::traces_request(&request, &catalog, 7, ()).unwrap())
            );
            for _ in 0..4 {
                let changed = mutate(&mut rng, &logs);
                let decodes = agree_logs(&changed);
                assert_eq!(
                    decodes,
                    convert::logs(&changed, &catalog, 7, ()).is_ok(),
                    "{changed:02x?}"
                );
                if decodes {
                    valid += 1
                } else {
                    refused += 1
                }
                let changed = mutate(&mut rng, &traces);
                let decodes = agree_traces(&changed);
                assert_eq!(decodes, convert::traces(&changed, &catalog, 7, ()).is_ok());
            }
        }
        assert!(
            valid > 100 && refused > 100,
            "{valid} valid, {refused} refused"
        );
    }
}
