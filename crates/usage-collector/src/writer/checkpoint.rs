//! The writer's driver: starts the reader, hands each decoded round to a write stream (as many
//! at once as the sink takes), and moves the spool's checkpoint past a round only when it and
//! every round before it are committed. Several transactions keep the database busy while one
//! commits; sessions are locked in id order, so streams touching one session wait, not
//! deadlock.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::batch::{Reader, Round};
use super::dead_letters::DeadLetters;
use super::retry::{Policy, Stopped};
use super::send::Sender;
use crate::config::WriterSettings;
use crate::health::{Health, Metrics};
use crate::spool::cache::RowCache;
use crate::spool::{Position, Spool};

/// Asks the writer to stop: it keeps writing until the spool is empty or the deadline passes.
#[derive(Debug, Clone)]
pub struct Writer {
    stop: watch::Sender<Option<Instant>>,
}

/// The running writer.
pub type WriterTask = JoinHandle<()>;

/// The writer's view of a shutdown: none yet, or the deadline to stop by.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<Option<Instant>>);

impl Stop {
    /// The shutdown deadline, once stopping.
    pub fn deadline(&self) -> Option<Instant> {
        *self.0.borrow()
    }

    /// True once the shutdown deadline has passed.
    pub fn past_deadline(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Resolves when a stop is asked for (or the writer handle is gone).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            // The handle is gone: nothing will ever change; wait forever like an idle writer.
            std::future::pending::<()>().await;
        }
    }
}

/// Everything one writer needs (kept to start it again after a panic).
#[derive(Debug, Clone)]
pub struct Parts {
    /// The spool it drains.
    pub spool: Spool,
    /// Where rows go.
    pub sender: Sender,
    /// Batching settings.
    pub settings: WriterSettings,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Readiness.
    pub health: Health,
    /// Where refused rows go.
    pub dead_letters: DeadLetters,
    /// The receiver's mapped rows.
    pub cache: Arc<RowCache>,
}

struct Driver {
    spool: Spool,
    sender: Sender,
    policy: Policy,
    dead_letters: DeadLetters,
    batch_size: usize,
    stop: Stop,
}

/// Restarts after a panic this close to the previous one count towards giving up.
const RESTART_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Restarts within [`RESTART_WINDOW`] after which the writer stops for good.
const MAX_RESTARTS: usize = 5;

impl Writer {
    /// Starts the writer on the spool, supervised: a panic in it is counted and logged, and it
    /// starts again from the spool's checkpoint (the rows it held are still in the spool, and a
    /// row written twice is a no-op); after [`MAX_RESTARTS`] panics within [`RESTART_WINDOW`] it
    /// stops for good and readiness and liveness fail.
    pub fn spawn(parts: Parts) -> (Writer, WriterTask) {
        let (stop, stopping) = watch::channel(None);
        let stop_view = Stop(stopping);
        (Writer { stop }, tokio::spawn(supervise(parts, stop_view)))
    }

    /// Stops once the spool is empty or at `deadline`, whichever comes first.
    pub fn stop(&self, deadline: Instant) {
        self.stop.send_replace(Some(deadline));
    }
}

async fn supervise(parts: Parts, stop: Stop) {
    let mut restarts: Vec<Instant> = Vec::new();
    let mut waits = crate::backoff::exponential(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(5),
    );
    loop {
        let run = tokio::spawn(start(parts.clone(), stop.clone()));
        let outcome = match run.await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Panicked(e.to_string()),
        };
        let Outcome::Panicked(why) = outcome else {
            return;
        };
        parts.metrics.writer_restarts.inc();
        let now = Instant::now();
        restarts.retain(|at| now.duration_since(*at) < RESTART_WINDOW);
        restarts.push(now);
        if restarts.len() >= MAX_RESTARTS || stop.deadline().is_some() {
            tracing::error!(error = %why, restarts = restarts.len(), "writer failed again; stopped for good: events stay in the spool until the collector restarts");
            parts.health.set_writer_dead(format!(
                "stopped after {} failures in a minute: {why}",
                restarts.len()
            ));
            return;
        }
        let wait = waits.next().unwrap_or(std::time::Duration::from_secs(5));
        tracing::error!(error = %why, retry_in_ms = wait.as_millis() as u64, "writer failed; starting it again from the spool's checkpoint");
        parts
            .health
            .set_writer(crate::health::Check::Failed(format!(
                "restarted after: {why}"
            )));
        tokio::time::sleep(wait).await;
    }
}

/// How a writer run ended.
enum Outcome {
    /// Stopped as asked (or with nothing left to do).
    Stopped,
    /// A panic in the writer; it may be started again.
    Panicked(String),
}

/// One run of the writer, from the spool's checkpoint.
async fn start(parts: Parts, stop_view: Stop) -> Outcome {
    {
        let reader = Reader {
            spool: parts.spool.clone(),
            cache: parts.cache,
            catalog: parts.sender.catalog().clone(),
            metrics: parts.metrics.clone(),
            health: parts.health.clone(),
            flush_interval: parts.settings.flush_interval,
            stop: stop_view.clone(),
        };
        let driver = Driver {
            spool: parts.spool,
            policy: Policy::new(parts.metrics, parts.health, stop_view.clone()),
            sender: parts.sender,
            dead_letters: parts.dead_letters,
            batch_size: parts.settings.batch_size,
            stop: stop_view,
        };
        driver.run(reader).await
    }
}

impl Driver {
    async fn run(self, reader: Reader) -> Outcome {
        let streams = self.sender.sink().write_streams();
        let this = Arc::new(self);
        let (rounds, mut queue) = mpsc::channel::<Round>(1);
        let reader = tokio::spawn(reader.run(rounds));
        let mut writes = tokio::task::JoinSet::new();
        // Finished rounds by sequence: Some((end, records)) written, None given up (stopping).
        let mut finished: BTreeMap<u64, Option<(Position, u64)>> = BTreeMap::new();
        let (mut next, mut to_commit) = (0u64, 0u64);
        let (mut closed, mut stopped) = (false, false);
        let mut panicked = None;
        loop {
            tokio::select! {
                round = queue.recv(), if writes.len() < streams && !closed && !stopped => {
                    match round {
                        Some(_) if this.stop.past_deadline() => stopped = true,
                        Some(round) => {
                            let (seq, writer) = (next, this.clone());
                            next += 1;
                            writes.spawn(async move {
                                let written = writer.write_round(&round).await.is_ok();
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
                            // Its rows stay in the spool; the rounds after it are not committed.
                            panicked = Some(e.to_string());
                            writes.abort_all();
                            break;
                        }
                    }
                    stopped |= this.commit_in_order(&mut finished, &mut to_commit).await;
                }
                else => break,
            }
            if (closed || stopped) && writes.is_empty() {
                break;
            }
        }
        drop(queue);
        reader.abort();
        if let Some(why) = panicked {
            return Outcome::Panicked(why);
        }
        if closed && this.stop.deadline().is_none() {
            // The reader ends on its own only when stopping: it failed.
            return Outcome::Panicked("the spool reader stopped".to_owned());
        }
        let (records, bytes) = this.spool.depth();
        tracing::info!(
            records,
            bytes,
            "writer stopped; what is left stays in the spool for the next start"
        );
        Outcome::Stopped
    }

    /// Moves the checkpoint past every finished round that follows the last committed one
    /// without a gap; true if a round was given up (stopping with the database refusing).
    async fn commit_in_order(
        &self,
        finished: &mut BTreeMap<u64, Option<(Position, u64)>>,
        to_commit: &mut u64,
    ) -> bool {
        while let Some(entry) = finished.first_entry() {
            if *entry.key() != *to_commit {
                break;
            }
            match entry.remove() {
                Some((end, records)) => {
                    if let Err(e) = self.spool.commit(end, records).await {
                        tracing::error!(error = %e, "cannot record the spool checkpoint; rows will be rewritten (no-ops) after a restart");
                    }
                    *to_commit += 1;
                }
                None => return true, // the rest stays in the spool
            }
        }
        false
    }

    /// Writes one decoded round and its heartbeats; `Err` if stopped before it was written.
    async fn write_round(&self, round: &Round) -> Result<(), Stopped> {
        for row in &round.rows.unplaced {
            let reason = format!(
                "table `{}` is not in this collector's catalogue (the row was spooled by another version)",
                row.table
            );
            self.dead_letters.keep_unplaced(row, &reason).await;
        }
        // The limits startup verification read (none but on a Galera cluster that sets them).
        let limits = self.sender.sink().write_set_limits();
        for chunk in round.rows.events.chunks(self.batch_size) {
            for part in super::split::parts(chunk, limits) {
                self.dead_letters
                    .isolate(&self.policy, &self.sender, &round.catalog, part)
                    .await?;
            }
        }
        self.sender.send_heartbeats(&round.heartbeats).await;
        Ok(())
    }
}
