//! Building the writer's work: the spool read in order from the checkpoint, each record's rows
//! taken from the receiver's cache (or decoded when the cache no longer has them), grouped into
//! rounds of a few requests.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::sync::mpsc;

use super::checkpoint::Stop;
use crate::catalog::{Catalog, Current, convert};
use crate::health::metrics::ReasonLabels;
use crate::health::{Check, Health, Metrics};
use crate::spool::cache::RowCache;
use crate::spool::rows::Rows;
use crate::spool::{self, Payload, Position, Spool, SpoolSignal};

/// Spool records (requests) read per round: bounds the events held in memory at once.
pub const RECORDS_PER_READ: usize = 4;
/// Wait after a failed spool read before trying again.
const READ_RETRY: Duration = Duration::from_secs(5);

/// Spooled records, decoded, waiting for a write stream.
#[derive(Debug)]
pub struct Round {
    /// The events, and rows whose table the catalogue no longer has (spooled by another
    /// collector version).
    pub rows: Rows,
    /// (instance, sent at) of each heartbeat.
    pub heartbeats: Vec<(String, u64)>,
    /// Where the checkpoint moves once they are written.
    pub end: Position,
    /// How many spool records they came from.
    pub records: u64,
    /// The catalogue the events were placed in (the one in force when they were read).
    pub catalog: Arc<Catalog>,
}

/// Reads the spool ahead of the write streams.
#[derive(Debug, Clone)]
pub struct Reader {
    /// The spool.
    pub spool: Spool,
    /// The receiver's mapped rows, by spool position.
    pub cache: Arc<RowCache>,
    /// The catalogue in force, which rows are placed in.
    pub catalog: Current,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Readiness (nothing is read before startup verification passes).
    pub health: Health,
    /// How long to wait for more requests before sending a partial round.
    pub flush_interval: Duration,
    /// Shutdown.
    pub stop: Stop,
}

impl Reader {
    /// Spooled requests, in order, decoded, into `rounds`. Ends when stopping with nothing
    /// left, at the deadline, or when the writer stops listening.
    pub async fn run(self, rounds: mpsc::Sender<Round>) {
        let mut stopping = self.stop.clone();
        let mut at = self.spool.checkpoint();
        loop {
            if self.stop.past_deadline() {
                return;
            }
            if !self.health.schema_verified() {
                // Nothing is written before startup verification passes.
                if self.stop.deadline().is_some() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = stopping.changed() => {}
                }
                continue;
            }
            let mut batch = match self.spool.read(at, RECORDS_PER_READ).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(error = %e, "spool read failed; retrying");
                    self.health
                        .set_writer(Check::Failed(format!("spool read failed: {e}")));
                    tokio::time::sleep(READ_RETRY).await;
                    continue;
                }
            };
            if batch.records.is_empty() {
                at = batch.end;
                if self.stop.deadline().is_some() {
                    return; // stopping and nothing left
                }
                tokio::select! {
                    () = self.spool.wait_after(at) => {}
                    () = stopping.changed() => {}
                }
                continue;
            }
            if batch.records.len() < RECORDS_PER_READ && self.stop.deadline().is_none() {
                // A partial round: give more requests `flush_interval` to arrive and join it.
                let more =
                    tokio::time::timeout(self.flush_interval, self.spool.wait_after(batch.end))
                        .await;
                if more.is_ok() {
                    match self
                        .spool
                        .read(batch.end, RECORDS_PER_READ - batch.records.len())
                        .await
                    {
                        Ok(extra) => {
                            batch.records.extend(extra.records);
                            batch.ends.extend(extra.ends);
                            batch.end = extra.end;
                        }
                        Err(e) => tracing::debug!(error = %e, "could not extend a partial round"),
                    }
                }
            }
            at = batch.end;
            let records = batch.records.len() as u64;
            let catalog = self.catalog.get();
            let (rows, heartbeats) = self.decode(&catalog, batch.records, &batch.ends);
            let round = Round {
                rows,
                heartbeats,
                end: batch.end,
                records,
                catalog,
            };
            if rounds.send(round).await.is_err() {
                return; // the writer stopped
            }
        }
    }

    /// Spooled records back to events (from the cache when the receiver's mapping is still
    /// there), the rows the catalogue has no table for, and the heartbeats. A record that no
    /// longer decodes (only possible across a collector change) is logged and counted as
    /// dropped.
    fn decode(
        &self,
        catalog: &Catalog,
        records: Vec<Payload>,
        ends: &[Position],
    ) -> (Rows, Vec<(String, u64)>) {
        let mut rows = Rows::default();
        let mut heartbeats = Vec::new();
        // Records an earlier collector acknowledged that this one's checks now refuse are
        // counted as dropped, never lost silently.
        let otlp = |converted: convert::Converted| {
            if converted.rejected.count > 0 {
                self.metrics
                    .records_dropped
                    .get_or_create(&ReasonLabels {
                        reason: "rejected_on_replay",
                    })
                    .inc_by(converted.rejected.count);
                tracing::error!(
                    rejected = converted.rejected.count,
                    first = converted.rejected.first.as_deref().unwrap_or_default(),
                    "records spooled by an earlier collector are refused by this one's checks; counted as dropped"
                );
            }
            Rows {
                events: converted.events,
                unplaced: Vec::new(),
            }
        };
        for (record, end) in records.into_iter().zip(ends) {
            if let Some(mapped) = self.cache.take(*end, catalog.generation()) {
                rows.events.extend(mapped);
                continue;
            }
            let decoded = match record.signal {
                SpoolSignal::Rows => {
                    spool::rows::decode(catalog, &record.body).map_err(|e| e.to_string())
                }
                // Through prost's encoding of the request, as an earlier collector derived
                // ids from it.
                SpoolSignal::Logs => ExportLogsServiceRequest::decode(&record.body[..])
                    .map_err(|e| e.to_string())
                    .and_then(|r| {
                        let now = record.received_unix_nano;
                        convert::logs_request(&r, catalog, now, ())
                            .map(otlp)
                            .map_err(|e| e.to_string())
                    }),
                SpoolSignal::Traces => ExportTraceServiceRequest::decode(&record.body[..])
                    .map_err(|e| e.to_string())
                    .and_then(|r| {
                        let now = record.received_unix_nano;
                        convert::traces_request(&r, catalog, now, ())
                            .map(otlp)
                            .map_err(|e| e.to_string())
                    }),
                SpoolSignal::Heartbeat => {
                    let instance = String::from_utf8_lossy(&record.body).into_owned();
                    heartbeats.push((instance, record.received_unix_nano));
                    continue;
                }
                // The spool's reader skips these; nothing to write.
                SpoolSignal::Padding => continue,
            };
            match decoded {
                Ok(decoded) => {
                    rows.events.extend(decoded.events);
                    rows.unplaced.extend(decoded.unplaced);
                }
                Err(error) => {
                    self.metrics
                        .records_dropped
                        .get_or_create(&ReasonLabels {
                            reason: "undecodable",
                        })
                        .inc();
                    tracing::error!(error, signal = ?record.signal, at = ?end, "a spooled record no longer decodes; skipped and counted as dropped");
                }
            }
        }
        (rows, heartbeats)
    }
}
