//! The writer: spool → database, checkpoint after commit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::dead_letters::DeadLetters;
use crate::catalog::convert;
use crate::catalog::{Catalog, Mapped, RowBatch};
use crate::config::WriterSettings;
use crate::health::metrics::{ReasonLabels, TableLabels};
use crate::health::{Check, Health, Metrics};
use crate::sink::{Sink, WriteError};
use crate::spool::rows::Rows;
use crate::spool::{self, Payload, Spool, SpoolSignal};

/// Spool records (requests) read per round: bounds the events held in memory at once.
const RECORDS_PER_READ: usize = 4;
/// First wait after a transient failure; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between attempts while the database is away.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Asks the writer to stop: it keeps writing until the spool is empty or the deadline passes.
#[derive(Debug, Clone)]
pub struct Writer {
    stop: watch::Sender<Option<Instant>>,
}

/// The running writer.
pub type WriterTask = JoinHandle<()>;

/// The writer was told to stop while the database was still refusing.
struct Stopped;

impl Writer {
    /// Starts the writer on the spool.
    pub fn spawn(
        spool: Spool,
        sink: Sink,
        settings: WriterSettings,
        metrics: Arc<Metrics>,
        health: Health,
        dead_letters: DeadLetters,
        cache: Arc<crate::spool::cache::RowCache>,
    ) -> (Writer, WriterTask) {
        let (stop, stopping) = watch::channel(None);
        let drain = Drain {
            catalog: sink.catalog().clone(),
            spool,
            sink,
            settings,
            metrics,
            health,
            dead_letters,
            stopping,
            last_failure: std::sync::Mutex::default(),
            cache,
        };
        (Writer { stop }, tokio::spawn(drain.run()))
    }

    /// Stops once the spool is empty or at `deadline`, whichever comes first.
    pub fn stop(&self, deadline: Instant) {
        self.stop.send_replace(Some(deadline));
    }
}

/// Spooled records, decoded, waiting for the writer stage.
struct Decoded {
    /// The events, and rows whose table the catalogue no longer has (spooled by another
    /// collector version).
    rows: Rows,
    heartbeats: Vec<(String, u64)>,
    /// Where the checkpoint moves once they are written.
    end: crate::spool::Position,
    /// How many spool records they came from.
    records: u64,
}

struct Drain {
    spool: Spool,
    sink: Sink,
    catalog: Arc<Catalog>,
    settings: WriterSettings,
    metrics: Arc<Metrics>,
    health: Health,
    dead_letters: DeadLetters,
    stopping: watch::Receiver<Option<Instant>>,
    /// The last transient failure logged, so an outage is logged once, not every retry.
    last_failure: std::sync::Mutex<String>,
    /// Rows the receiver already mapped, by spool position.
    cache: Arc<crate::spool::cache::RowCache>,
}

impl Drain {
    fn deadline(&self) -> Option<Instant> {
        *self.stopping.borrow()
    }

    fn past_deadline(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Two stages, so decoding the next requests overlaps the database writing the current
    /// ones: a reader reads and decodes spooled requests in order; the writer writes several
    /// rounds at once ([`Sink::write_streams`]: one per pooled connection but one), each in its
    /// own transactions, and moves the checkpoint past a round only when it and every round
    /// before it are committed. Several transactions keep the database busy while one commits;
    /// sessions are locked in id order, so writers touching one session wait, not deadlock.
    async fn run(self) {
        let streams = self.sink.write_streams();
        let this = Arc::new(self);
        let (decoded, mut queue) = mpsc::channel::<Decoded>(1);
        let reader = tokio::spawn(this.clone().read_ahead(decoded));
        let mut writes = tokio::task::JoinSet::new();
        // Finished rounds by sequence: Some((end, records)) written, None given up (stopping).
        let mut finished: BTreeMap<u64, Option<(crate::spool::Position, u64)>> = BTreeMap::new();
        let (mut next, mut to_commit) = (0u64, 0u64);
        let (mut closed, mut stopped) = (false, false);
        loop {
            tokio::select! {
                round = queue.recv(), if writes.len() < streams && !closed && !stopped => {
                    match round {
                        Some(_) if this.past_deadline() => stopped = true,
                        Some(round) => {
                            let (seq, writer) = (next, this.clone());
                            next += 1;
                            writes.spawn(async move {
                                let written = writer.write_round(&round).await;
                                (seq, written.then_some((round.end, round.records)))
                            });
                        }
                        None => closed = true,
                    }
                }
                Some(result) = writes.join_next(), if !writes.is_empty() => {
                    match result {
                        Ok((seq, outcome)) => {
                            finished.insert(seq, outcome);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "a write task failed; its rows stay in the spool");
                            stopped = true;
                        }
                    }
                    while let Some(entry) = finished.first_entry() {
                        if *entry.key() != to_commit {
                            break;
                        }
                        match entry.remove() {
                            Some((end, records)) => {
                                if let Err(e) = this.spool.commit(end, records).await {
                                    tracing::error!(error = %e, "cannot record the spool checkpoint; rows will be rewritten (no-ops) after a restart");
                                }
                                to_commit += 1;
                            }
                            None => {
                                // Stopped with the database refusing: the rest stays in the spool.
                                stopped = true;
                                break;
                            }
                        }
                    }
                }
                else => break,
            }
            if (closed || stopped) && writes.is_empty() {
                break;
            }
        }
        drop(queue);
        reader.abort();
        let (records, bytes) = this.spool.depth();
        tracing::info!(
            records,
            bytes,
            "writer stopped; what is left stays in the spool for the next start"
        );
    }

    /// Writes one decoded round and its heartbeats; false if stopped before it was written.
    async fn write_round(&self, round: &Decoded) -> bool {
        for row in &round.rows.unplaced {
            let reason = format!(
                "table `{}` is not in this collector's catalogue (the row was spooled by another version)",
                row.table
            );
            self.dead_letters.keep_unplaced(row, &reason).await;
        }
        for chunk in round.rows.events.chunks(self.settings.batch_size) {
            if self.write_isolating(chunk).await.is_err() {
                return false;
            }
        }
        self.write_heartbeats(&round.heartbeats).await;
        true
    }

    /// The reader stage: spooled requests, in order, decoded. Ends when stopping with nothing
    /// left, at the deadline, or when the writer stops listening.
    async fn read_ahead(self: Arc<Self>, decoded: mpsc::Sender<Decoded>) {
        let mut stopping = self.stopping.clone();
        let mut at = self.spool.checkpoint();
        loop {
            if self.past_deadline() {
                return;
            }
            if !self.health.schema_verified() {
                // Nothing is written before startup verification passes.
                if self.deadline().is_some() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stopping.changed() => {}
                }
                continue;
            }
            let mut batch = match self.spool.read(at, RECORDS_PER_READ).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(error = %e, "spool read failed; retrying");
                    self.health
                        .set_writer(Check::Failed(format!("spool read failed: {e}")));
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
            };
            if batch.records.is_empty() {
                at = batch.end;
                if self.deadline().is_some() {
                    return; // stopping and nothing left
                }
                tokio::select! {
                    () = self.spool.wait_after(at) => {}
                    _ = stopping.changed() => {}
                }
                continue;
            }
            if batch.records.len() < RECORDS_PER_READ && self.deadline().is_none() {
                // A partial batch: give more requests `flush_interval` to arrive and join it.
                let more = tokio::time::timeout(
                    self.settings.flush_interval,
                    self.spool.wait_after(batch.end),
                )
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
                        Err(e) => tracing::debug!(error = %e, "could not extend a partial batch"),
                    }
                }
            }
            at = batch.end;
            let records = batch.records.len() as u64;
            let (rows, heartbeats) = self.decode(batch.records, &batch.ends);
            let next = Decoded {
                rows,
                heartbeats,
                end: batch.end,
                records,
            };
            if decoded.send(next).await.is_err() {
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
        records: Vec<Payload>,
        ends: &[crate::spool::Position],
    ) -> (Rows, Vec<(String, u64)>) {
        let mut rows = Rows::default();
        let mut heartbeats = Vec::new();
        let otlp = |converted: convert::Converted| Rows {
            events: converted.events,
            unplaced: Vec::new(),
        };
        for (record, end) in records.into_iter().zip(ends) {
            if let Some(mapped) = self.cache.take(*end) {
                rows.events.extend(mapped);
                continue;
            }
            let decoded = match record.signal {
                SpoolSignal::Rows => {
                    spool::rows::decode(&self.catalog, &record.body).map_err(|e| e.to_string())
                }
                SpoolSignal::Logs => ExportLogsServiceRequest::decode(&record.body[..])
                    .map(|r| otlp(convert::logs(r, &self.catalog, record.received_unix_nano)))
                    .map_err(|e| e.to_string()),
                SpoolSignal::Traces => ExportTraceServiceRequest::decode(&record.body[..])
                    .map(|r| otlp(convert::traces(r, &self.catalog, record.received_unix_nano)))
                    .map_err(|e| e.to_string()),
                SpoolSignal::Heartbeat => {
                    let instance = String::from_utf8_lossy(&record.body).into_owned();
                    heartbeats.push((instance, record.received_unix_nano));
                    continue;
                }
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

    /// Moves the heartbeat rows forward. A failure is logged and counted but never holds up
    /// the events: the heartbeat's age on `/metrics` is what shows it.
    async fn write_heartbeats(&self, heartbeats: &[(String, u64)]) {
        for (instance, at) in heartbeats {
            let Some(time) =
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(*at / 1000 * 1000))
                    .ok()
                    .map(|t| time::PrimitiveDateTime::new(t.date(), t.time()))
            else {
                continue;
            };
            match self.sink.write_heartbeat(instance, time).await {
                Ok(()) => self.metrics.heartbeat_written(*at as f64 / 1e9),
                Err(error) => {
                    self.metrics.write_failed(error.reason);
                    tracing::warn!(instance, error = %error.message, "heartbeat write failed");
                }
            }
        }
    }

    /// Writes `events`; on a permanent refusal, bisects to find the refused events and sends
    /// them to the dead letters. Transient failures are retried until they pass or the
    /// shutdown deadline comes.
    async fn write_isolating(&self, events: &[Mapped]) -> Result<(), Stopped> {
        let mut pending: Vec<&[Mapped]> = vec![events];
        while let Some(slice) = pending.pop() {
            match self.write_retrying(slice).await? {
                Ok(()) => {}
                Err(error) if slice.len() == 1 => {
                    self.dead_letters
                        .keep(&self.catalog, &slice[0], &error)
                        .await;
                }
                Err(_) => {
                    let (left, right) = slice.split_at(slice.len() / 2);
                    // Right pushed first so the left half is written first.
                    pending.push(right);
                    pending.push(left);
                }
            }
        }
        Ok(())
    }

    /// One slice, retried while the failure is transient. `Ok(Err(e))`: refused for good.
    async fn write_retrying(&self, events: &[Mapped]) -> Result<Result<(), WriteError>, Stopped> {
        if self.settings.discard {
            self.metrics.events_written.inc_by(events.len() as u64);
            return Ok(Ok(()));
        }
        let batch = RowBatch::of(self.catalog.tables().len(), events);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = std::time::Instant::now();
            let span = tracing::info_span!(
                "write_batch",
                events = batch.events,
                rows = batch.row_count()
            );
            let result = tracing::Instrument::instrument(self.sink.write(&batch), span).await;
            match result {
                Ok(written) => {
                    self.last_failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
                    self.metrics
                        .batch_write_duration_seconds
                        .observe(started.elapsed().as_secs_f64());
                    for (table, rows) in &written.rows {
                        self.metrics
                            .rows_written
                            .get_or_create(&TableLabels { table })
                            .inc_by(*rows);
                    }
                    self.metrics.events_written.inc_by(events.len() as u64);
                    self.metrics.database_up.set(1);
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default();
                    self.metrics
                        .last_write_timestamp_seconds
                        .set(now.as_secs_f64());
                    self.health.set_database(Check::Ok);
                    self.health.set_writer(Check::Ok);
                    tracing::debug!(
                        events = batch.events,
                        sessions = written.sessions,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "batch written"
                    );
                    return Ok(Ok(()));
                }
                Err(error) => {
                    self.metrics.write_failed(error.reason);
                    if !error.transient {
                        tracing::warn!(events = batch.events, reason = error.reason, error = %error.message, "database refused a batch; isolating the refused rows");
                        return Ok(Err(error));
                    }
                    if matches!(
                        error.reason,
                        "connection"
                            | "pool_timeout"
                            | "tls"
                            | "too_many_connections"
                            | "read_only"
                    ) {
                        self.metrics.database_up.set(0);
                        self.health
                            .set_database(Check::Failed(error.message.clone()));
                    }
                    self.health.set_writer(Check::Failed(format!(
                        "retrying a batch of {} events ({}): {}",
                        batch.events, error.reason, error.message
                    )));
                    {
                        // Logged once per distinct failure while it lasts; the metrics count each one.
                        let mut last = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
                        if *last != error.message {
                            tracing::warn!(events = batch.events, reason = error.reason, error = %error.message, retry_in_ms = backoff.as_millis() as u64, "batch write failed; retrying until it works (events stay in the spool)");
                            last.clone_from(&error.message);
                        } else {
                            tracing::debug!(
                                events = batch.events,
                                reason = error.reason,
                                "batch write still failing"
                            );
                        }
                    }
                    let wake = Instant::now() + jitter(backoff);
                    if self.deadline().is_some_and(|d| d <= wake) {
                        return Err(Stopped);
                    }
                    tokio::time::sleep_until(wake).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// `wait` plus up to a quarter more, so collectors do not retry in step.
fn jitter(wait: Duration) -> Duration {
    let noise = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    wait + wait / 4 * (noise % 1000) / 1000
}
