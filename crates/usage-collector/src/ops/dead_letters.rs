//! `usage-collector dead-letters list` and `replay`.
//!
//! Replaying writes each dead letter's event again, as the writer would have: its row (a
//! repeat is a no-op), its session, and what the row adds to the summaries, in one transaction
//! that also removes the dead letter — so each is written exactly once, or stays kept. One that
//! fails again keeps its place with its new reason; one that cannot be rebuilt (kept by an
//! older release without its session's facts, or for a table the tracking plan no longer has)
//! is marked `not_replayable` with why. A database outage stops the replay: nothing is marked,
//! and running it again goes on where it stopped.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value as Json;
use time::PrimitiveDateTime;

use crate::catalog::{Catalog, ColumnType, Mapped, RowBatch, SessionRow, Value};
use crate::sink::admin::{DeadLetterFilter, DeadLetterGroup, StoredDeadLetter};
use crate::sink::{ErrorKind, Sink, SinkError};

/// Dead letters read per round.
const PAGE: u32 = 200;

/// The reason class of a dead letter that cannot be rebuilt.
pub const NOT_REPLAYABLE: &str = "not_replayable";

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Replayed {
    /// Dead letters written (a row already there is a no-op) and removed.
    pub written: u64,
    /// Dead letters that failed again, by their new reason class.
    pub still_failing: BTreeMap<String, u64>,
    /// Dead letters that cannot be rebuilt (`not_replayable`).
    pub not_replayable: u64,
}

/// The dead letters `filter` takes, grouped by reason, service and table.
pub async fn list(
    sink: &Sink,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetterGroup>, SinkError> {
    sink.dead_letter_groups(filter).await
}

/// The groups as a table for people.
pub fn render(groups: &[DeadLetterGroup]) -> String {
    if groups.is_empty() {
        return "no dead letters\n".to_owned();
    }
    let mut out = format!(
        "{:<18} {:<20} {:<20} {:>7}  {:<19}  {:<19}\n",
        "reason", "service", "table", "count", "oldest (UTC)", "newest (UTC)"
    );
    for g in groups {
        out.push_str(&format!(
            "{:<18} {:<20} {:<20} {:>7}  {:<19}  {:<19}\n",
            g.reason_class,
            if g.service.is_empty() {
                "?"
            } else {
                &g.service
            },
            g.table,
            g.count,
            g.oldest,
            g.newest
        ));
    }
    out
}

/// Writes the dead letters `filter` takes again, with `catalog` (the tracking plan in force).
pub async fn replay(
    sink: &Sink,
    catalog: &Catalog,
    filter: &DeadLetterFilter,
) -> Result<Replayed, SinkError> {
    let mut done = Replayed::default();
    let mut after = 0;
    loop {
        let page = sink.dead_letters(filter, after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(done);
        };
        after = last.id;
        for dead in &page {
            let mapped = match rebuild(catalog, dead) {
                Ok(mapped) => mapped,
                Err(why) => {
                    sink.update_dead_letter(dead.id, NOT_REPLAYABLE, &why)
                        .await?;
                    done.not_replayable += 1;
                    tracing::warn!(
                        dead_letter = dead.id,
                        why,
                        "dead letter cannot be written again"
                    );
                    continue;
                }
            };
            let batch = RowBatch::of(catalog.tables().len(), std::slice::from_ref(&mapped));
            match sink.replay_dead_letter(catalog, &batch, dead.id).await {
                Ok(_) => done.written += 1,
                // The row's own fault, or the schema's: it stays, with the new reason.
                Err(e)
                    if matches!(
                        e.kind,
                        ErrorKind::RowValue | ErrorKind::Schema | ErrorKind::Unknown
                    ) =>
                {
                    sink.update_dead_letter(dead.id, e.reason, &e.message)
                        .await?;
                    *done.still_failing.entry(e.reason.to_owned()).or_default() += 1;
                    tracing::warn!(dead_letter = dead.id, reason = e.reason, error = %e.message, "dead letter failed again; kept with the new reason");
                }
                // An outage, a timeout, a conflict: not the row's doing. Stop; nothing marked.
                Err(e) => return Err(e),
            }
        }
    }
}

/// The event a dead letter kept, placed in `catalog`'s tables.
pub fn rebuild(catalog: &Catalog, dead: &StoredDeadLetter) -> Result<Mapped, String> {
    let id: [u8; 16] = dead
        .event_id
        .as_slice()
        .try_into()
        .map_err(|_| format!("its event id has {} bytes, not 16", dead.event_id.len()))?;
    let data: Json =
        serde_json::from_str(&dead.row_data).map_err(|e| format!("its row is not JSON ({e})"))?;
    let columns = data.get("columns").and_then(Json::as_object);
    let session_id = data.get("session_id").and_then(Json::as_str);
    let row = if dead.table == usage_tracker::catalog::tables::IDE_SESSIONS {
        None
    } else {
        let (table_id, table) = catalog
            .tables()
            .iter()
            .enumerate()
            .find(|(_, t)| t.name == dead.table)
            .ok_or_else(|| {
                format!(
                    "table `{}` is not in the tracking plan in force",
                    dead.table
                )
            })?;
        let mut values = Vec::with_capacity(table.columns.len());
        for column in &table.columns {
            let json = columns
                .and_then(|c| c.get(column.name))
                .unwrap_or(&Json::Null);
            values.push(
                value(column.ty, json).map_err(|why| format!("column `{}`: {why}", column.name))?,
            );
        }
        if let Some(Value::Id(kept)) = values.first_mut() {
            *kept = id;
        }
        Some((table_id, values))
    };
    let session = match (session_id, data.get("session").filter(|s| !s.is_null())) {
        (None, _) => None,
        (Some(session_id), Some(facts)) => Some((session_id.to_owned(), session(facts)?)),
        // A row kept without its session's facts (release 0.1.0): the session as the row
        // tells it.
        (Some(session_id), None) => {
            let Some((_, values)) = &row else {
                return Err(
                    "a session event kept without its session's facts (by release 0.1.0)"
                        .to_owned(),
                );
            };
            let text = |at: usize| match values.get(at) {
                Some(Value::Text(t)) => Some(t.clone()),
                _ => None,
            };
            let Some(Value::Time(at)) = values.get(4) else {
                return Err("its row has no time".to_owned());
            };
            Some((
                session_id.to_owned(),
                SessionRow {
                    service: text(1).unwrap_or_default(),
                    user_id: text(3),
                    start_time: *at,
                    last_activity: *at,
                    end_time: None,
                    user_agent: None,
                    ip_address: None,
                },
            ))
        }
    };
    if row.is_none() && session.is_none() {
        return Err("it holds neither a row nor a session".to_owned());
    }
    Ok(Mapped {
        id,
        row,
        session,
        truncated: Vec::new(),
    })
}

fn session(facts: &Json) -> Result<SessionRow, String> {
    let text = |key: &str| facts.get(key).and_then(Json::as_str).map(str::to_owned);
    let time = |key: &str| -> Result<Option<PrimitiveDateTime>, String> {
        match facts.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(t)) => parse_time(t).map(Some),
            Some(other) => Err(format!("session {key} is {other}")),
        }
    };
    let start = time("start_time")?.ok_or("the session has no start")?;
    Ok(SessionRow {
        service: text("service").unwrap_or_default(),
        user_id: text("user_id"),
        start_time: start,
        last_activity: time("last_activity")?.unwrap_or(start),
        end_time: time("end_time")?,
        user_agent: text("user_agent"),
        ip_address: text("ip_address"),
    })
}

/// A column's value from the JSON a dead letter keeps.
fn value(ty: ColumnType, json: &Json) -> Result<Value, String> {
    if json.is_null() {
        return Ok(Value::Null);
    }
    let wrong = || format!("{json} is not a {ty:?}");
    Ok(match ty {
        ColumnType::EventId => {
            let text = json.as_str().ok_or_else(wrong)?;
            Value::Id(
                *uuid::Uuid::parse_str(text)
                    .map_err(|e| e.to_string())?
                    .as_bytes(),
            )
        }
        ColumnType::Text { .. } => Value::Text(json.as_str().ok_or_else(wrong)?.to_owned()),
        ColumnType::Int | ColumnType::Int32 => Value::Int(json.as_i64().ok_or_else(wrong)?),
        ColumnType::Float => Value::Float(json.as_f64().ok_or_else(wrong)?),
        ColumnType::Bool => match json {
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Bool(n.as_i64() != Some(0)),
            _ => return Err(wrong()),
        },
        ColumnType::Timestamp => Value::Time(parse_time(json.as_str().ok_or_else(wrong)?)?),
        // Kept as the JSON document itself (or the text, when it was not one).
        ColumnType::Json => Value::Json(match json {
            Json::String(text) if serde_json::from_str::<Json>(text).is_err() => json.to_string(),
            Json::String(text) => text.clone(),
            other => other.to_string(),
        }),
    })
}

/// A time as dead letters keep it: `2026-03-04 05:06:07.123456`, or as release 0.1.0 wrote it
/// (`2026-03-04 5:06:07.123456`, fewer digits).
pub fn parse_time(text: &str) -> Result<PrimitiveDateTime, String> {
    let format = time::macros::format_description!(
        version = 2,
        "[year]-[month]-[day] [hour padding:none]:[minute]:[second][optional [.[subsecond]]]"
    );
    PrimitiveDateTime::parse(text, &format).map_err(|e| format!("time {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_of_both_releases_are_read() {
        let a = parse_time("2026-03-04 05:06:07.123456").unwrap();
        let b = parse_time("2026-03-04 5:06:07.123456").unwrap();
        assert_eq!(a, b);
        assert_eq!(parse_time("2026-03-04 05:06:07").unwrap().second(), 7);
        assert!(parse_time("yesterday").is_err());
        let written = crate::writer::dead_letters::time_text(&a);
        assert_eq!(written, "2026-03-04 05:06:07.123456");
    }
}
