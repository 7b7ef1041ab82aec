//! Keeping each transaction within the database's write-set limits (a Galera cluster's
//! `wsrep_max_ws_rows` and `wsrep_max_ws_size`, as verification read them): a batch that would
//! write more is cut, in order, into parts that each become their own transaction. Each part
//! is exactly-once on its own — a transaction's counters count only the rows it inserted — so
//! the summaries stay exact however a batch is cut.
//!
//! What a part writes is estimated before it is written: one row per event row, one per
//! session it touches (inserted or updated), one per (day, service) of the daily rollup; bytes
//! as the values' sizes plus a per-row and per-value allowance, twice for the rows an upsert
//! may update (Galera carries the row before and after). A part is kept to half of each limit:
//! a replayed batch writes its rows again after a statement meets one already written, and
//! the rows of the failed statement count towards the limit too. Should a part still be
//! refused for its size, the retry policy writes it in halves ([`super::retry`]).

use std::collections::HashSet;

use time::Date;

use crate::catalog::tables::EVENT_COLUMNS;
use crate::catalog::{Mapped, Value};
use crate::sink::cluster::WriteSetLimits;

/// Bytes a row carries in a write set besides its values (keys, headers).
const ROW_OVERHEAD: u64 = 64;
/// Bytes a value carries besides its own (length, type).
const VALUE_OVERHEAD: u64 = 8;
/// Bytes of a session row's fixed columns (times, counters), and of a rollup row.
const SESSION_FIXED: u64 = 120;
const ROLLUP_ROW: u64 = 100;

/// Share of each limit a part may fill (see the module's note on replays).
const HEADROOM: u64 = 2;

/// `events`, cut in order into parts that each stay within `limits` (all of them, in one
/// part, when there are none). Every part holds at least one event.
pub fn parts(events: &[Mapped], limits: Option<WriteSetLimits>) -> Vec<&[Mapped]> {
    let Some(limits) = limits else {
        return vec![events];
    };
    let max_rows = (limits.rows / HEADROOM).max(1);
    let max_bytes = (limits.bytes / HEADROOM).max(1);
    let columns = Columns {
        service: EVENT_COLUMNS.iter().position(|c| c.name == "service"),
        time: EVENT_COLUMNS.iter().position(|c| c.name == "timestamp"),
    };
    let mut out = Vec::new();
    let mut part = Part::default();
    let mut start = 0;
    for (i, event) in events.iter().enumerate() {
        let (rows, bytes) = part.cost(event, columns);
        if i > start && (part.rows + rows > max_rows || part.bytes + bytes > max_bytes) {
            out.push(&events[start..i]);
            start = i;
            part = Part::default();
        }
        part.add(event, columns);
    }
    if start < events.len() {
        out.push(&events[start..]);
    }
    out
}

/// Where an event row holds its service and time.
#[derive(Debug, Clone, Copy)]
struct Columns {
    service: Option<usize>,
    time: Option<usize>,
}

/// What one part writes so far.
#[derive(Debug, Default)]
struct Part {
    rows: u64,
    bytes: u64,
    sessions: HashSet<(String, String)>,
    days: HashSet<(Date, String)>,
}

impl Part {
    /// The rows and bytes `event` adds to the part, and the session and days it touches.
    fn cost(&self, event: &Mapped, columns: Columns) -> (u64, u64) {
        let mut rows = 0;
        let mut bytes = 0;
        let mut days: Vec<(Date, &str)> = Vec::new();
        if let Some((_, values)) = &event.row {
            rows += 1;
            bytes += ROW_OVERHEAD
                + values
                    .iter()
                    .map(|v| value_bytes(v) + VALUE_OVERHEAD)
                    .sum::<u64>();
            let at = |i: Option<usize>| i.and_then(|i| values.get(i));
            if let (Some(Value::Text(service)), Some(Value::Time(time))) =
                (at(columns.service), at(columns.time))
            {
                days.push((time.date(), service));
            }
        }
        if let Some((id, session)) = &event.session {
            if !self
                .sessions
                .contains(&(session.service.clone(), id.clone()))
            {
                let strings = [
                    Some(id.as_str()),
                    Some(session.service.as_str()),
                    session.user_id.as_deref(),
                    session.user_agent.as_deref(),
                    session.ip_address.as_deref(),
                ];
                let text: u64 = strings.iter().flatten().map(|s| s.len() as u64).sum();
                rows += 1;
                // Updated rather than inserted, most of the time: before and after images.
                bytes += 2 * (ROW_OVERHEAD + SESSION_FIXED + text);
            }
            days.push((session.start_time.date(), &session.service));
        }
        days.sort_unstable();
        days.dedup();
        for (day, service) in days {
            if !self.days.contains(&(day, service.to_owned())) {
                rows += 1;
                bytes += 2 * ROLLUP_ROW;
            }
        }
        (rows, bytes)
    }

    fn add(&mut self, event: &Mapped, columns: Columns) {
        let (rows, bytes) = self.cost(event, columns);
        self.rows += rows;
        self.bytes += bytes;
        if let Some((_, values)) = &event.row {
            let at = |i: Option<usize>| i.and_then(|i| values.get(i));
            if let (Some(Value::Text(service)), Some(Value::Time(time))) =
                (at(columns.service), at(columns.time))
            {
                self.days.insert((time.date(), service.clone()));
            }
        }
        if let Some((id, session)) = &event.session {
            self.sessions.insert((session.service.clone(), id.clone()));
            self.days
                .insert((session.start_time.date(), session.service.clone()));
        }
    }
}

fn value_bytes(value: &Value) -> u64 {
    match value {
        Value::Null => 0,
        Value::Id(_) => 16,
        Value::Text(text) | Value::Json(text) => text.len() as u64,
        Value::Int(_) | Value::Float(_) | Value::Time(_) => 8,
        Value::Bool(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SessionRow;
    use time::macros::datetime;

    /// A page visit of `session` (of service `ide`) on `day` of December 2026.
    fn visit(n: u8, session: &str, day: u8) -> Mapped {
        let at = datetime!(2026-12-01 12:00)
            .replace_day(day)
            .expect("a day of December");
        let mut row = vec![Value::Null; EVENT_COLUMNS.len()];
        let at_column = |name: &str| {
            EVENT_COLUMNS
                .iter()
                .position(|c| c.name == name)
                .expect(name)
        };
        row[at_column("event_id")] = Value::Id([n; 16]);
        row[at_column("service")] = Value::Text("ide".into());
        row[at_column("session_id")] = Value::Text(session.into());
        row[at_column("timestamp")] = Value::Time(at);
        row.push(Value::Text("/page".into()));
        Mapped {
            id: [n; 16],
            row: Some((0, row)),
            session: Some((
                session.to_owned(),
                SessionRow {
                    service: "ide".into(),
                    user_id: None,
                    start_time: at,
                    last_activity: at,
                    end_time: None,
                    user_agent: None,
                    ip_address: None,
                },
            )),
            truncated: Vec::new(),
        }
    }

    #[test]
    fn without_limits_a_batch_is_one_transaction() {
        let events: Vec<Mapped> = (0..50).map(|n| visit(n, "s", 1)).collect();
        assert_eq!(parts(&events, None).len(), 1);
    }

    #[test]
    fn rows_of_events_sessions_and_days_stay_within_half_the_limit() {
        // One session, one day: each event adds one row to the session's and the day's one.
        let events: Vec<Mapped> = (0..100).map(|n| visit(n, "s", 1)).collect();
        let limits = WriteSetLimits {
            rows: 20,
            bytes: u64::MAX,
        };
        let cut = parts(&events, Some(limits));
        let sizes: Vec<usize> = cut.iter().map(|p| p.len()).collect();
        assert_eq!(
            sizes,
            [8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 4],
            "8 events + 1 session + 1 day"
        );
        assert_eq!(
            cut.iter().map(|p| p.len()).sum::<usize>(),
            100,
            "in order, none lost"
        );
        assert!(std::ptr::eq(&cut[1][0], &events[8]));
        // A session and a day per event: three rows each.
        let events: Vec<Mapped> = (0..30)
            .map(|n| visit(n, &format!("s{n}"), 1 + n % 28))
            .collect();
        let cut = parts(&events, Some(limits));
        assert!(
            cut.iter().all(|p| p.len() <= 3),
            "{:?}",
            cut.iter().map(|p| p.len()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn bytes_are_kept_within_half_the_limit_and_one_event_always_goes() {
        let events: Vec<Mapped> = (0..40).map(|n| visit(n, "s", 1)).collect();
        let cut = parts(
            &events,
            Some(WriteSetLimits {
                rows: u64::MAX,
                bytes: 4_000,
            }),
        );
        assert!(cut.len() > 1 && cut.len() < 40, "{}", cut.len());
        // A limit no event fits: one event per transaction, never none.
        let cut = parts(&events, Some(WriteSetLimits { rows: 1, bytes: 1 }));
        assert_eq!(cut.len(), 40);
    }
}
