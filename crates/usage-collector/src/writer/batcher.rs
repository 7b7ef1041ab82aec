//! Group commit: many requests, one transaction.
//!
//! A request hands its [`RowBatch`] to the [`Writer`] and waits. The batcher task takes the
//! first waiting batch, keeps taking more until it holds `batch_size` events or
//! `flush_interval` has passed, writes them in one transaction, and then answers every request
//! in it with the same result. While all `concurrency` writes are busy, requests queue and the
//! next transaction is correspondingly larger, so throughput grows with load without waiting
//! on a timer when idle.
//!
//! Invariant: a request hears `Ok` only after the transaction holding its rows committed.
//! A transient failure is retried a few times with backoff before the request hears it; the
//! client then retries, which is safe because every insert is idempotent.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::catalog::RowBatch;
use crate::config::WriterSettings;
use crate::health::metrics::{ReasonLabels, TableLabels};
use crate::health::{Check, Health, Metrics};
use crate::sink::{Sink, WriteError};

/// Attempts for a batch that keeps failing transiently (deadlocks between concurrent writers
/// are the common case) before its requests hear the error.
const ATTEMPTS: u32 = 4;
/// Backoff before the second attempt; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(25);

struct Job {
    batch: RowBatch,
    done: oneshot::Sender<Result<(), WriteError>>,
}

/// The handle requests use to write rows.
#[derive(Clone, Debug)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

/// The running batcher; finishes once every [`Writer`] handle is dropped and the queue is written.
pub type WriterTask = JoinHandle<()>;

impl Writer {
    /// Starts the batcher.
    pub fn spawn(
        sink: Sink,
        settings: WriterSettings,
        metrics: Arc<Metrics>,
        health: Health,
    ) -> (Writer, WriterTask) {
        let (jobs, queue) = mpsc::channel(settings.concurrency * 64);
        let batcher = Batcher {
            sink,
            settings,
            metrics,
            health,
        };
        (Writer { jobs }, tokio::spawn(batcher.run(queue)))
    }

    /// Writes `batch` and returns once it is committed (or has failed).
    pub async fn write(&self, batch: RowBatch) -> Result<(), WriteError> {
        let (done, result) = oneshot::channel();
        let stopped = || WriteError {
            transient: true,
            reason: "shutdown",
            message: "the collector is shutting down".to_owned(),
        };
        self.jobs
            .send(Job { batch, done })
            .await
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }
}

#[derive(Clone)]
struct Batcher {
    sink: Sink,
    settings: WriterSettings,
    metrics: Arc<Metrics>,
    health: Health,
}

impl Batcher {
    async fn run(self, mut queue: mpsc::Receiver<Job>) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        loop {
            // Wait for a free slot first: while every slot is busy, jobs pile up in the queue
            // and the next transaction takes them all.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let Some(first) = queue.recv().await else {
                break;
            };
            let mut jobs = vec![first];
            let mut events = jobs[0].batch.events;
            let deadline = tokio::time::Instant::now() + self.settings.flush_interval;
            while events < self.settings.batch_size {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(job)) => {
                        events += job.batch.events;
                        jobs.push(job);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let this = self.clone();
            tokio::spawn(async move {
                this.write_jobs(jobs).await;
                drop(slot);
            });
        }
        // Every handle is gone: wait for the writes in flight before reporting done.
        let _all = slots.acquire_many(self.settings.concurrency as u32).await;
    }

    async fn write_jobs(&self, jobs: Vec<Job>) {
        let mut batch = RowBatch::default();
        let mut waiting = Vec::with_capacity(jobs.len());
        for job in jobs {
            batch.merge(job.batch);
            waiting.push(job.done);
        }
        let result = self.write_with_retry(&batch).await;
        for done in waiting {
            // The request may have given up (client deadline); its rows are written regardless
            // and its retry will be a no-op.
            if done.send(result.clone()).is_err() {
                tracing::debug!("a request stopped waiting before its batch was written");
            }
        }
    }

    async fn write_with_retry(&self, batch: &RowBatch) -> Result<(), WriteError> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let span = tracing::debug_span!(
                "write_batch",
                events = batch.events,
                rows = batch.row_count(),
                attempt
            );
            let result = tracing::Instrument::instrument(self.sink.write(batch), span).await;
            let elapsed = started.elapsed();
            match result {
                Ok(written) => {
                    self.metrics
                        .batch_write_duration
                        .observe(elapsed.as_secs_f64());
                    for (table, rows) in &written.rows {
                        self.metrics
                            .rows_written
                            .get_or_create(&TableLabels { table })
                            .inc_by(*rows);
                    }
                    self.metrics.database_up.set(1);
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default();
                    self.metrics.last_write.set(now.as_secs_f64());
                    self.health.set_database(Check::Ok);
                    self.health.set_writer(Check::Ok);
                    tracing::debug!(
                        events = batch.events,
                        sessions = written.sessions,
                        elapsed_ms = elapsed.as_millis() as u64,
                        "batch written"
                    );
                    return Ok(());
                }
                Err(error) => {
                    self.metrics
                        .write_failures
                        .get_or_create(&ReasonLabels {
                            reason: error.reason,
                        })
                        .inc();
                    if matches!(
                        error.reason,
                        "connection" | "pool_timeout" | "tls" | "too_many_connections"
                    ) {
                        self.metrics.database_up.set(0);
                        self.health
                            .set_database(Check::Failed(error.message.clone()));
                    }
                    self.health.set_writer(Check::Failed(format!(
                        "last batch write failed ({}): {}",
                        error.reason, error.message
                    )));
                    if !error.transient || attempt == ATTEMPTS {
                        tracing::warn!(
                            events = batch.events,
                            attempt,
                            transient = error.transient,
                            reason = error.reason,
                            error = %error.message,
                            target = %self.sink.target(),
                            "batch write failed; its requests are told to retry or are refused"
                        );
                        return Err(error);
                    }
                    tracing::debug!(attempt, reason = error.reason, error = %error.message, "batch write failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }
}
