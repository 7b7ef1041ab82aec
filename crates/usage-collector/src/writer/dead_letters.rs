//! Rows the database refuses for good: found by bisecting their batch (the rest is written),
//! then kept with the reason, in the `dead_letters` table, or — when the database cannot take
//! even that — in `dead-letters.jsonl` in the spool folder.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value as Json, json};

use super::retry::{Decision, Patience, Policy, Stopped, decide};
use super::send::Sender;
use crate::catalog::{Catalog, Mapped, Value};
use crate::health::Metrics;
use crate::health::metrics::TableLabels;
use crate::sink::{Sink, SinkError};
use crate::spool::rows::Unplaced;

/// The `table` label of dead letters whose table the catalogue does not have.
pub const UNPLACED: &str = "not_in_catalogue";

/// Name of the fallback file in the spool folder.
pub const FILE: &str = "dead-letters.jsonl";

/// Where refused rows go.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    sink: Sink,
    file: PathBuf,
    metrics: Arc<Metrics>,
    /// Longest the database may take to keep one; then the file keeps it.
    timeout: std::time::Duration,
}

impl DeadLetters {
    /// Dead letters for `sink`, falling back to a file in `spool_dir` when the database
    /// refuses or takes longer than `timeout`.
    pub fn new(
        sink: Sink,
        spool_dir: &std::path::Path,
        metrics: Arc<Metrics>,
        timeout: std::time::Duration,
    ) -> Self {
        Self {
            sink,
            file: spool_dir.join(FILE),
            metrics,
            timeout,
        }
    }

    /// Writes `events`; when the database refuses the batch for good, bisects it to find the
    /// refused events, writes the others, and keeps each refused one as a dead letter. A row
    /// failing for an unknown reason is kept only once the rest of its batch was written
    /// while it failed; until then it is retried like a database outage.
    pub async fn isolate(
        &self,
        policy: &Policy,
        sender: &Sender,
        catalog: &Catalog,
        events: &[Mapped],
    ) -> Result<(), Stopped> {
        let mut pending: Vec<&[Mapped]> = vec![events];
        let mut written_any = false;
        while let Some(slice) = pending.pop() {
            let error = match policy
                .deliver(sender, catalog, slice, Patience::Bounded)
                .await?
            {
                Ok(()) => {
                    written_any = true;
                    continue;
                }
                Err(error) => error,
            };
            if slice.len() > 1 {
                let (left, right) = slice.split_at(slice.len() / 2);
                // Right pushed first so the left half is written first.
                pending.push(right);
                pending.push(left);
                continue;
            }
            if decide(error.kind) == Decision::Refused || written_any {
                self.keep(catalog, &slice[0], &error).await;
                continue;
            }
            // Nothing of the batch was written: the row is not known to be the cause.
            match policy
                .deliver(sender, catalog, slice, Patience::Unbounded)
                .await?
            {
                Ok(()) => written_any = true,
                Err(error) => self.keep(catalog, &slice[0], &error).await,
            }
        }
        Ok(())
    }

    /// Keeps one refused event with the database's reason.
    pub async fn keep(&self, catalog: &Catalog, event: &Mapped, error: &SinkError) {
        let table = event
            .row
            .as_ref()
            .map_or("ide_sessions", |(id, _)| catalog.tables()[*id].name);
        self.keep_row(
            Kept {
                id: &event.id,
                service: service_of(event),
                table,
                label: table,
                class: error.reason,
                reason: &error.message,
            },
            describe(catalog, event),
        )
        .await;
    }

    /// Keeps a spooled row whose table this collector's catalogue does not have.
    pub async fn keep_unplaced(&self, row: &Unplaced, reason: &str) {
        let columns: Map<String, Json> = row
            .columns
            .iter()
            .map(|(column, value)| (column.clone(), value_json(value)))
            .collect();
        let session_id = columns.get("session_id").cloned().unwrap_or(Json::Null);
        let service = match columns.get("service") {
            Some(Json::String(service)) => service.clone(),
            _ => String::new(),
        };
        let described = json!({ "session_id": session_id, "columns": columns });
        self.keep_row(
            Kept {
                id: &row.id,
                service: &service,
                table: &row.table,
                label: UNPLACED,
                class: UNPLACED,
                reason,
            },
            described,
        )
        .await;
    }

    /// Counts (under `label`) and logs one dead letter, then writes it to the table, else to
    /// the file.
    async fn keep_row(&self, kept: Kept<'_>, row: Json) {
        let Kept {
            id,
            service,
            table,
            label,
            class,
            reason,
        } = kept;
        self.metrics
            .dead_letters
            .get_or_create(&TableLabels { table: label })
            .inc();
        tracing::warn!(
            table,
            service,
            event_id = %uuid::Uuid::from_bytes(*id),
            reason_class = class,
            reason,
            "row not written; kept as a dead letter with the reason"
        );
        let row_text = row.to_string();
        let write = self
            .sink
            .write_dead_letter(id, service, table, class, reason, &row_text);
        let Err(db_error) = tokio::time::timeout(self.timeout, write)
            .await
            .unwrap_or_else(|_| Err(SinkError::timed_out("keeping a dead letter", self.timeout)))
        else {
            return;
        };
        let line = json!({
            "event_id": uuid::Uuid::from_bytes(*id).to_string(),
            "service": service,
            "reason_class": class,
            "table": table,
            "reason": reason,
            "row": row,
            "dead_letter_table_error": db_error.message,
        });
        // File I/O with an fsync: off the runtime's workers.
        let (file, text) = (self.file.clone(), line.to_string());
        let written = tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .and_then(|mut f| {
                    writeln!(f, "{text}")?;
                    f.sync_data()
                })
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(e) = written {
            self.metrics.dead_letters_lost.inc();
            self.metrics
                .records_dropped
                .get_or_create(&crate::health::metrics::ReasonLabels {
                    reason: "dead_letter_lost",
                })
                .inc();
            tracing::error!(
                file = %self.file.display(),
                error = %e,
                row = %line,
                "cannot keep a dead letter in the table or the file; the row is in this log line only"
            );
        }
    }
}

/// The row as JSON: its table, session and column values.
/// What a dead letter records: the event's table, columns and session, enough to write it
/// again (`usage-collector dead-letters replay`).
fn describe(catalog: &Catalog, event: &Mapped) -> Json {
    let mut columns = Map::new();
    if let Some((id, values)) = &event.row {
        for (column, value) in catalog.tables()[*id].columns.iter().zip(values) {
            columns.insert(column.name.to_owned(), value_json(value));
        }
    }
    let session = event.session.as_ref().map(|(_, s)| {
        json!({
            "service": s.service,
            "user_id": s.user_id,
            "start_time": time_text(&s.start_time),
            "last_activity": time_text(&s.last_activity),
            "end_time": s.end_time.as_ref().map(time_text),
            "user_agent": s.user_agent,
            "ip_address": s.ip_address,
        })
    });
    json!({
        "session_id": event.session.as_ref().map(|(id, _)| id.clone()),
        "session": session,
        "columns": columns,
    })
}

/// The service an event was sent by.
fn service_of(event: &Mapped) -> &str {
    match (&event.row, &event.session) {
        (Some((_, values)), _) => match values.get(1) {
            Some(Value::Text(service)) => service,
            _ => "",
        },
        (None, Some((_, session))) => &session.service,
        (None, None) => "",
    }
}

/// One dead letter's identity and reason.
struct Kept<'a> {
    id: &'a [u8; 16],
    service: &'a str,
    table: &'a str,
    /// The metrics' `table` label.
    label: &'static str,
    /// The short reason (`row_value`, `not_in_catalogue`, …).
    class: &'static str,
    /// The database's own words.
    reason: &'a str,
}

/// A time as dead letters write it: `2026-03-04 05:06:07.123456` (UTC).
pub fn time_text(time: &time::PrimitiveDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]"
    );
    time.format(&format).unwrap_or_else(|_| time.to_string())
}

fn value_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Id(id) => Json::String(uuid::Uuid::from_bytes(*id).to_string()),
        Value::Text(text) => Json::String(text.clone()),
        Value::Json(text) => {
            serde_json::from_str(text).unwrap_or_else(|_| Json::String(text.clone()))
        }
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Bool(b) => Json::Bool(*b),
        Value::Time(t) => Json::String(time_text(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseSettings;

    #[tokio::test]
    async fn a_row_whose_table_is_gone_is_kept_with_its_columns_and_counted() {
        let dir = std::env::temp_dir().join(format!("usage-unplaced-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("usage.db").display());
        let sink = Sink::open(&DatabaseSettings::new(&url), Arc::new(Catalog::built_in())).unwrap();
        sink.migrate().await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let dead_letters = DeadLetters::new(
            sink.clone(),
            &dir,
            metrics.clone(),
            std::time::Duration::from_secs(10),
        );
        let row = Unplaced {
            id: [9; 16],
            table: "retired_table".into(),
            columns: vec![
                ("event_id".into(), Value::Id([9; 16])),
                ("session_id".into(), Value::Text("s-1".into())),
                ("page_path".into(), Value::Text("/old".into())),
            ],
        };
        dead_letters
            .keep_unplaced(
                &row,
                "table `retired_table` is not in this collector's catalogue",
            )
            .await;

        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let (table, reason, data): (String, String, String) =
            sqlx::query_as("SELECT table_name, reason, row_data FROM dead_letters")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(table, "retired_table");
        assert!(
            reason.contains("not in this collector's catalogue"),
            "{reason}"
        );
        let data: Json = serde_json::from_str(&data).unwrap();
        assert_eq!(data["columns"]["page_path"], "/old");
        assert_eq!(data["session_id"], "s-1");
        assert_eq!(
            data["columns"]["event_id"],
            uuid::Uuid::from_bytes([9; 16]).to_string()
        );
        assert_eq!(
            metrics
                .dead_letters
                .get_or_create(&TableLabels { table: UNPLACED })
                .get(),
            1
        );
        pool.close().await;
        sink.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
