//! The body of a rows record: the events of one accepted request, already mapped to rows.
//!
//! The receiver maps every request to validate it, so it spools the result: the writer reads
//! rows back without decoding OTLP or mapping again, however far behind it is. Tables and
//! columns are named in each record, not numbered, so a collector whose catalogue differs from
//! the one that wrote the record (an upgrade with a spool left behind) still places every value:
//! a column the record lacks is NULL, a column the catalogue no longer has is left out, and an
//! event whose table is gone becomes an [`Unplaced`] row for the dead letters.
//!
//! ```text
//! body    = format:u8(=1) tables:varint table* events:varint event*
//! table   = name:str columns:varint column-name:str*
//! event   = id:[u8;16] place:varint (0 no row, k the k-th table) value* has-session:u8 [session]
//! value   = 0 null | 1 id:[u8;16] | 2 text:str | 3 int:i64le | 4 bool:u8 | 5 time | 6 json:str
//!           | 7 float:f64le (finite)
//! session = id:str service:str user-id:opt-str start:time last-activity:time end:opt-time
//!           user-agent:opt-str ip-address:opt-str
//! time    = unix-seconds:i64le nanoseconds:u32le (UTC)
//! opt-x   = 0 | 1 x
//! str     = length:varint UTF-8 bytes
//! ```
//!
//! `varint` is protobuf's (LEB128, at most 10 bytes); the whole layout, with the rules a reader
//! applies, is described in `proto/spool-rows.md`.
//!
//! # Why not a protobuf message
//!
//! A `usage.spool.v1.Rows` message (tables, events, values as a `oneof`, session, time as
//! seconds + nanos) was measured against this layout on the same 512 typical records
//! (`decode_map` bench, 2-core AMD EPYC VM, 4 processes × 2 rounds alternating, medians, µs per
//! request): encoding 22.5 here against 63.7 with prost's encoding functions writing straight
//! from [`Mapped`] (byte for byte what prost writes) and 207 through `#[derive(prost::Message)]`
//! structs; decoding 146 here against 415 with the derived structs (328 of it prost's decode
//! alone, before placing a value). The body is 13 % larger (85 620 bytes against 75 573).
//! The receiver encodes every request, and the writer decodes whenever its backlog outgrows
//! the row cache (already about a tenth of the collector's CPU with a database behind it), so
//! the layout stays. What protobuf would give for free is kept by hand: tables and columns are
//! named, and the format byte lets a later collector read this layout beside a new one. The
//! measured candidate (the .proto, a hand encoder whose bytes were checked to be prost's, the
//! derived structs) is described in `docs/performance.md`.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{decode_varint, encode_varint};
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::catalog::{Catalog, Mapped, SessionRow, TableId, Value};

/// Layout version of a rows body.
const FORMAT: u8 = 1;
/// Fewest bytes an event takes: its id, its place and its session flag.
const MIN_EVENT_BYTES: usize = 16 + 1 + 1;

/// Why a rows body cannot be read (the record's CRC passed, so this means a writer bug or a
/// body from a newer collector).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowsError {
    /// The body ends in the middle of a value.
    #[error("rows body ends early")]
    Truncated,
    /// A layout version this collector does not know.
    #[error("rows body has format {0}, this collector reads format {FORMAT}")]
    Format(u8),
    /// A byte that is not a known tag, or a number out of range.
    #[error("rows body is malformed: {0}")]
    Malformed(&'static str),
}

/// An event whose table the catalogue no longer has: its row, described, for the dead letters.
#[derive(Debug, Clone, PartialEq)]
pub struct Unplaced {
    /// The event's id.
    pub id: [u8; 16],
    /// The table the record names.
    pub table: String,
    /// Its values by the record's column names.
    pub columns: Vec<(String, Value)>,
}

/// What a rows body holds, placed in the current catalogue.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rows {
    /// Every event (an unplaced one keeps its session update, without a row).
    pub events: Vec<Mapped>,
    /// Rows whose table the catalogue no longer has.
    pub unplaced: Vec<Unplaced>,
}

/// Most bytes one event adds to a rows body beyond the bytes of the record it came from: its
/// id, place and value tags, and the values mapping copies rather than moves (the service, the
/// session and user ids, into both the row and the session, at their columns' widths, four
/// bytes a character), with room to spare.
pub const MAX_EVENT_OVERHEAD: usize = 4096;

/// The largest rows body a request of `request_bytes` with `records` records can give.
pub fn largest_body(request_bytes: usize, records: usize) -> usize {
    request_bytes.saturating_add(records.saturating_mul(MAX_EVENT_OVERHEAD))
}

/// Appends the rows body of `events`, mapped with `catalog`, to `out`.
pub fn encode(catalog: &Catalog, events: &[Mapped], out: &mut Vec<u8>) {
    let tables = catalog.tables();
    // The tables these events use, in first-use order: place k (1-based) is `used[k - 1]`.
    let mut place = vec![0usize; tables.len()];
    let mut used = Vec::new();
    for event in events {
        if let Some((table, _)) = &event.row
            && place[*table] == 0
        {
            used.push(*table);
            place[*table] = used.len();
        }
    }
    out.put_u8(FORMAT);
    encode_varint(used.len() as u64, out);
    for &table in &used {
        put_str(out, tables[table].name);
        encode_varint(tables[table].columns.len() as u64, out);
        for column in &tables[table].columns {
            put_str(out, column.name);
        }
    }
    encode_varint(events.len() as u64, out);
    for event in events {
        out.put_slice(&event.id);
        match &event.row {
            Some((table, values)) => {
                encode_varint(place[*table] as u64, out);
                for value in values {
                    put_value(out, value);
                }
            }
            None => encode_varint(0, out),
        }
        match &event.session {
            Some((id, session)) => {
                out.put_u8(1);
                put_str(out, id);
                put_session(out, session);
            }
            None => out.put_u8(0),
        }
    }
}

/// Where one of a record's tables goes in the current catalogue.
enum Placement {
    /// Same table, same columns in the same order.
    Same(TableId),
    /// Same table; for each current column, the record's column holding it, if any.
    Projected(TableId, Vec<Option<usize>>),
    /// The catalogue has no such table.
    Gone(String, Vec<String>),
}

/// Reads a rows body, placing its rows in `catalog`'s tables.
pub fn decode(catalog: &Catalog, mut body: &[u8]) -> Result<Rows, RowsError> {
    let buf = &mut body;
    match get_u8(buf)? {
        FORMAT => {}
        other => return Err(RowsError::Format(other)),
    }
    let tables = catalog.tables();
    let mut placements = Vec::new();
    for _ in 0..get_len(buf)? {
        let name = get_str(buf)?;
        let columns = (0..get_len(buf)?)
            .map(|_| get_str(buf))
            .collect::<Result<Vec<_>, _>>()?;
        let placement = match tables.iter().position(|t| t.name == name) {
            None => Placement::Gone(
                name.to_owned(),
                columns.iter().map(|c| (*c).to_owned()).collect(),
            ),
            Some(id)
                if tables[id]
                    .columns
                    .iter()
                    .map(|c| c.name)
                    .eq(columns.iter().copied()) =>
            {
                Placement::Same(id)
            }
            Some(id) => Placement::Projected(
                id,
                tables[id]
                    .columns
                    .iter()
                    .map(|c| columns.iter().position(|name| *name == c.name))
                    .collect(),
            ),
        };
        placements.push((placement, columns.len()));
    }
    let count = get_len(buf)?;
    let mut rows = Rows {
        events: Vec::with_capacity(count.min(buf.len() / MIN_EVENT_BYTES)),
        unplaced: Vec::new(),
    };
    for _ in 0..count {
        let id = get_id(buf)?;
        let place = get_len(buf)?;
        let row = match place {
            0 => None,
            k => {
                let (placement, width) = placements.get(k - 1).ok_or(RowsError::Malformed(
                    "row names a table the record does not list",
                ))?;
                // `width` is the number of column names the record listed, so it is bounded
                // by the body's size.
                let mut values = Vec::with_capacity(*width);
                for _ in 0..*width {
                    values.push(get_value(buf)?);
                }
                place_row(placement, id, values, &mut rows.unplaced)
            }
        };
        let session = match get_u8(buf)? {
            0 => None,
            1 => Some((get_str(buf)?.to_owned(), get_session(buf)?)),
            _ => return Err(RowsError::Malformed("session flag")),
        };
        rows.events.push(Mapped {
            id,
            row,
            session,
            truncated: Vec::new(),
        });
    }
    if buf.has_remaining() {
        return Err(RowsError::Malformed("bytes after the last event"));
    }
    Ok(rows)
}

/// One row's values, as the record listed its columns, in the current catalogue's table; a
/// row whose table is gone is set aside as [`Unplaced`].
fn place_row(
    placement: &Placement,
    id: [u8; 16],
    mut values: Vec<Value>,
    unplaced: &mut Vec<Unplaced>,
) -> Option<(TableId, Vec<Value>)> {
    match placement {
        Placement::Same(table) => Some((*table, values)),
        Placement::Projected(table, from) => {
            let projected = from
                .iter()
                .map(|i| {
                    i.map_or(Value::Null, |i| {
                        std::mem::replace(&mut values[i], Value::Null)
                    })
                })
                .collect();
            Some((*table, projected))
        }
        Placement::Gone(table, columns) => {
            unplaced.push(Unplaced {
                id,
                table: table.clone(),
                columns: columns.iter().cloned().zip(values).collect(),
            });
            None
        }
    }
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    encode_varint(text.len() as u64, out);
    out.put_slice(text.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => {
            out.put_u8(1);
            put_str(out, text);
        }
        None => out.put_u8(0),
    }
}

fn put_time(out: &mut Vec<u8>, time: PrimitiveDateTime) {
    let utc = time.assume_utc();
    out.put_i64_le(utc.unix_timestamp());
    out.put_u32_le(utc.nanosecond());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.put_u8(0),
        Value::Id(id) => {
            out.put_u8(1);
            out.put_slice(id);
        }
        Value::Text(text) => {
            out.put_u8(2);
            put_str(out, text);
        }
        Value::Int(int) => {
            out.put_u8(3);
            out.put_i64_le(*int);
        }
        Value::Bool(b) => {
            out.put_u8(4);
            out.put_u8(u8::from(*b));
        }
        Value::Time(time) => {
            out.put_u8(5);
            put_time(out, *time);
        }
        Value::Json(text) => {
            out.put_u8(6);
            put_str(out, text);
        }
        Value::Float(float) => {
            out.put_u8(7);
            out.put_f64_le(*float);
        }
    }
}

fn put_session(out: &mut Vec<u8>, session: &SessionRow) {
    put_str(out, &session.service);
    put_opt_str(out, session.user_id.as_deref());
    put_time(out, session.start_time);
    put_time(out, session.last_activity);
    match session.end_time {
        Some(end) => {
            out.put_u8(1);
            put_time(out, end);
        }
        None => out.put_u8(0),
    }
    put_opt_str(out, session.user_agent.as_deref());
    put_opt_str(out, session.ip_address.as_deref());
}

fn need(buf: &[u8], n: usize) -> Result<(), RowsError> {
    if buf.len() < n {
        return Err(RowsError::Truncated);
    }
    Ok(())
}

fn get_u8(buf: &mut &[u8]) -> Result<u8, RowsError> {
    need(buf, 1)?;
    Ok(buf.get_u8())
}

fn get_len(buf: &mut &[u8]) -> Result<usize, RowsError> {
    let n = decode_varint(buf).map_err(|_| RowsError::Truncated)?;
    usize::try_from(n).map_err(|_| RowsError::Malformed("length"))
}

fn get_id(buf: &mut &[u8]) -> Result<[u8; 16], RowsError> {
    need(buf, 16)?;
    let mut id = [0; 16];
    buf.copy_to_slice(&mut id);
    Ok(id)
}

fn get_str<'a>(buf: &mut &'a [u8]) -> Result<&'a str, RowsError> {
    let len = get_len(buf)?;
    need(buf, len)?;
    let (text, rest) = buf.split_at(len);
    *buf = rest;
    std::str::from_utf8(text).map_err(|_| RowsError::Malformed("text is not UTF-8"))
}

fn get_opt_str(buf: &mut &[u8]) -> Result<Option<String>, RowsError> {
    match get_u8(buf)? {
        0 => Ok(None),
        1 => Ok(Some(get_str(buf)?.to_owned())),
        _ => Err(RowsError::Malformed("optional text flag")),
    }
}

fn get_time(buf: &mut &[u8]) -> Result<PrimitiveDateTime, RowsError> {
    need(buf, 12)?;
    let (seconds, nanos) = (buf.get_i64_le(), buf.get_u32_le());
    let time = OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| t.replace_nanosecond(nanos).ok())
        .ok_or(RowsError::Malformed("time out of range"))?;
    Ok(PrimitiveDateTime::new(time.date(), time.time()))
}

fn get_value(buf: &mut &[u8]) -> Result<Value, RowsError> {
    Ok(match get_u8(buf)? {
        0 => Value::Null,
        1 => Value::Id(get_id(buf)?),
        2 => Value::Text(get_str(buf)?.to_owned()),
        3 => {
            need(buf, 8)?;
            Value::Int(buf.get_i64_le())
        }
        4 => Value::Bool(get_u8(buf)? != 0),
        5 => Value::Time(get_time(buf)?),
        6 => Value::Json(get_str(buf)?.to_owned()),
        7 => {
            need(buf, 8)?;
            let float = buf.get_f64_le();
            if !float.is_finite() {
                return Err(RowsError::Malformed("a float that is not finite"));
            }
            Value::Float(float)
        }
        _ => return Err(RowsError::Malformed("value tag")),
    })
}

fn get_session(buf: &mut &[u8]) -> Result<SessionRow, RowsError> {
    Ok(SessionRow {
        service: get_str(buf)?.to_owned(),
        user_id: get_opt_str(buf)?,
        start_time: get_time(buf)?,
        last_activity: get_time(buf)?,
        end_time: match get_u8(buf)? {
            0 => None,
            1 => Some(get_time(buf)?),
            _ => return Err(RowsError::Malformed("end time flag")),
        },
        user_agent: get_opt_str(buf)?,
        ip_address: get_opt_str(buf)?,
    })
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::catalog::Table;

    fn table(catalog: &Catalog, name: &str) -> TableId {
        catalog
            .tables()
            .iter()
            .position(|t| t.name == name)
            .expect("built-in table")
    }

    /// A row for `table` whose values cycle through every kind of value.
    fn row(catalog: &Catalog, table: TableId, n: u8) -> (TableId, Vec<Value>) {
        let kinds = [
            Value::Id([n; 16]),
            Value::Text(format!("text ñ {n}")),
            Value::Null,
            Value::Int(-7 * i64::from(n)),
            Value::Bool(n.is_multiple_of(2)),
            Value::Time(datetime!(2026-11-28 09:30:01.123_456_789)),
            Value::Json(format!("{{\"n\":{n}}}")),
            Value::Float(f64::from(n) / 4.0),
        ];
        let width = catalog.tables()[table].columns.len();
        (table, kinds.iter().cycle().take(width).cloned().collect())
    }

    fn session(n: u8) -> (String, SessionRow) {
        (
            format!("session-{n}"),
            SessionRow {
                service: "ide".into(),
                user_id: Some(format!("user-{n}")),
                start_time: datetime!(2026-11-28 09:00:00),
                last_activity: datetime!(2026-11-28 09:10:00.5),
                end_time: n
                    .is_multiple_of(2)
                    .then_some(datetime!(2026-11-28 09:20:00)),
                user_agent: Some("Mozilla/5.0".into()),
                ip_address: None,
            },
        )
    }

    fn mapped(
        id: u8,
        row: Option<(TableId, Vec<Value>)>,
        session: Option<(String, SessionRow)>,
    ) -> Mapped {
        Mapped {
            id: [id; 16],
            row,
            session,
            truncated: Vec::new(),
        }
    }

    fn events(catalog: &Catalog) -> Vec<Mapped> {
        let visits = table(catalog, "page_visits");
        let runs = table(catalog, "program_executions");
        vec![
            mapped(1, Some(row(catalog, visits, 1)), Some(session(1))),
            mapped(2, Some(row(catalog, runs, 2)), Some(session(2))),
            mapped(3, None, Some(session(3))),
            mapped(4, Some(row(catalog, visits, 4)), None),
            mapped(5, None, None),
        ]
    }

    #[test]
    fn every_value_and_session_field_round_trips() {
        let catalog = Catalog::built_in();
        let events = events(&catalog);
        let mut body = Vec::new();
        encode(&catalog, &events, &mut body);
        let rows = decode(&catalog, &body).unwrap();
        assert_eq!(rows.events, events);
        assert!(rows.unplaced.is_empty());
        let mut empty = Vec::new();
        encode(&catalog, &[], &mut empty);
        assert_eq!(decode(&catalog, &empty).unwrap(), Rows::default());
    }

    #[test]
    fn a_changed_catalogue_places_values_by_column_name() {
        let old = Catalog::built_in();
        let events = events(&old);
        let mut body = Vec::new();
        encode(&old, &events, &mut body);

        // The new catalogue: page_visits loses its last column and gains one, program runs
        // have no table any more.
        let visits = table(&old, "page_visits");
        let mut tables: Vec<Table> = old.tables().to_vec();
        let dropped = tables[visits].columns.pop().expect("a column");
        tables[visits]
            .columns
            .insert(1, crate::catalog::tables::EVENT_COLUMNS[1]);
        tables[visits].columns[1].name = "added_later";
        tables.retain(|t| t.name != "program_executions");
        let new = Catalog::with_tables(tables);

        let rows = decode(&new, &body).unwrap();
        assert_eq!(rows.events.len(), events.len());
        let new_visits = table(&new, "page_visits");
        for n in [0, 3] {
            let (placed_in, values) = rows.events[n].row.clone().expect("page visit row");
            assert_eq!(placed_in, new_visits);
            let (_, old_values) = events[n].row.clone().unwrap();
            let mut expected = old_values[..old_values.len() - 1].to_vec();
            expected.insert(1, Value::Null);
            assert_eq!(
                values, expected,
                "by name; the new column is NULL, the dropped one gone"
            );
            assert_eq!(rows.events[n].session, events[n].session);
        }
        assert!(
            !new.tables()[new_visits]
                .columns
                .iter()
                .any(|c| c.name == dropped.name)
        );

        // The program run keeps its session update and goes to the dead letters as a row.
        assert_eq!(rows.events[1].row, None);
        assert_eq!(rows.events[1].session, events[1].session);
        assert_eq!(rows.unplaced.len(), 1);
        let unplaced = &rows.unplaced[0];
        assert_eq!(
            (unplaced.id, unplaced.table.as_str()),
            ([2; 16], "program_executions")
        );
        let old_runs = &old.tables()[table(&old, "program_executions")];
        assert_eq!(
            unplaced
                .columns
                .iter()
                .map(|(c, _)| c.as_str())
                .collect::<Vec<_>>(),
            old_runs.columns.iter().map(|c| c.name).collect::<Vec<_>>()
        );
        assert_eq!(
            unplaced
                .columns
                .iter()
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>(),
            events[1].row.clone().unwrap().1
        );
        assert_eq!((&rows.events[2], &rows.events[4]), (&events[2], &events[4]));
    }

    #[test]
    fn any_damage_is_an_error_or_a_value_never_a_panic() {
        let catalog = Catalog::built_in();
        let mut body = Vec::new();
        encode(&catalog, &events(&catalog), &mut body);
        // Every byte set to values that make lengths, counts and tags absurd.
        for at in 0..body.len() {
            for byte in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut damaged = body.clone();
                damaged[at] = byte;
                if let Ok(rows) = decode(&catalog, &damaged) {
                    // A changed byte can only change values, not invent events.
                    assert!(rows.events.len() <= 5, "byte {at} = {byte}");
                }
            }
        }
        // A huge table width or event count, then nothing behind it.
        let mut huge = vec![FORMAT, 1, 1, b't', 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(decode(&catalog, &huge), Err(RowsError::Truncated));
        huge = vec![
            FORMAT, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        assert_eq!(decode(&catalog, &huge), Err(RowsError::Truncated));
    }

    #[test]
    fn damaged_or_unknown_bodies_are_errors() {
        let catalog = Catalog::built_in();
        let mut body = Vec::new();
        encode(&catalog, &events(&catalog), &mut body);
        for cut in [0, 1, 20, body.len() - 1] {
            assert_eq!(
                decode(&catalog, &body[..cut]),
                Err(RowsError::Truncated),
                "cut at {cut}"
            );
        }
        let mut newer = body.clone();
        newer[0] = 9;
        assert_eq!(decode(&catalog, &newer), Err(RowsError::Format(9)));
        let mut extra = body.clone();
        extra.push(0);
        assert!(matches!(
            decode(&catalog, &extra),
            Err(RowsError::Malformed(_))
        ));
    }
}
