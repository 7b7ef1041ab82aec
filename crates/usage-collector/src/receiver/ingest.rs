//! The path every export request takes, whatever its transport: the shutdown gate, admission,
//! decoding and mapping on the decode threads (so a large request never stalls the runtime's
//! workers, `/health/live` or other clients), the spool append, the counts, and the answer.

use std::sync::Arc;

use prost::bytes::Bytes;
use tonic::{Code, Status};

use super::admission::{Admission, Reserved, retryable};
use super::auth::Allowed;
use super::shape::{Shape, Violation};
use crate::catalog::Catalog;
use crate::catalog::convert::{Converted, Skip};
use crate::event::Signal;
use crate::event::wire::Malformed;
use crate::health::metrics::{ColumnLabels, ReasonLabels, SignalLabels, SignalReasonLabels};
use crate::health::{Check, Health, Metrics};
use crate::spool::cache::RowCache;
use crate::spool::{self, AppendError, Payload, Spool, SpoolSignal};

/// Bytes a mapped event usually takes in a rows record (a page visit: ~300), so encoding a
/// request rarely grows its buffer.
const ROW_BYTES_GUESS: usize = 320;

/// What the client hears when not everything was taken: rejected count and message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Partial {
    /// Records refused on their own.
    pub rejected: i64,
    /// The first problem and how many others there were.
    pub message: String,
}

/// Shared by the logs and traces services.
#[derive(Clone, Debug)]
pub struct Ingest {
    /// The table mapping, for validation.
    pub catalog: Arc<Catalog>,
    /// Where accepted requests are made durable.
    pub spool: Spool,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Shutdown flag and checks.
    pub health: Health,
    /// Where mapped rows wait for the writer, so it need not decode them again.
    pub cache: Arc<RowCache>,
    /// The checks before decoding.
    pub admission: Admission,
    /// The threads that decode and map requests.
    pub decoders: super::decoders::Decoders,
}

/// The records refused before decoding, by their position in the request.
#[derive(Debug)]
pub struct Violations<'a> {
    list: &'a [(usize, Violation)],
    next: usize,
}

impl<'a> Violations<'a> {
    /// Records refused per `shape` (its violations, sorted by position).
    pub fn new(shape: &'a Shape) -> Self {
        Self {
            list: &shape.violations,
            next: 0,
        }
    }
}

impl Skip for Violations<'_> {
    fn refused(&mut self, index: usize) -> Option<(&'static str, String)> {
        while self.list.get(self.next).is_some_and(|(i, _)| *i < index) {
            self.next += 1;
        }
        match self.list.get(self.next) {
            Some((i, violation)) if *i == index => {
                Some((violation.reason(), format!("refused: {violation}")))
            }
            _ => None,
        }
    }
}

/// A decoded request: its mapped events and the spool body that holds them.
struct Prepared {
    converted: Converted,
    body: Vec<u8>,
}

impl Ingest {
    /// Refuses a request before decoding it when the collector is shutting down.
    pub fn gate(&self, signal: Signal) -> Result<(), Status> {
        if !self.health.closing() {
            return Ok(());
        }
        self.metrics
            .records_refused
            .get_or_create(&SignalReasonLabels {
                signal: signal.as_str(),
                reason: "shutdown",
            })
            .inc();
        Err(retryable(
            Code::Unavailable,
            "the collector is shutting down; retry against another".to_owned(),
        ))
    }

    /// Handles one export request's bytes (already decompressed and within
    /// `max_request_bytes`): gate, admission, decode and map off the runtime, spool, answer.
    /// `reserved` is the budget already held for the bytes (OTLP/HTTP), which admission turns
    /// into the request's decoded cost. `convert` reads the request's records in place, on a
    /// decode thread, while the bytes are held for it.
    pub async fn export<F>(
        &self,
        bytes: Bytes,
        signal: Signal,
        allowed: Allowed,
        reserved: Option<Reserved>,
        convert: F,
    ) -> Result<Partial, Status>
    where
        F: for<'a> FnOnce(&'a [u8], &Catalog, u64, Violations<'a>) -> Result<Converted, Malformed>
            + Send
            + 'static,
    {
        self.gate(signal)?;
        let admitted = self.admission.admit(&bytes, signal, reserved).await?;
        let now = crate::event::now_unix_nano();
        let catalog = self.catalog.clone();
        // The budget goes with the work: if the client disconnects, its future (here) is
        // dropped, but the share is given back only when the decode thread is done with the
        // request (or skips it).
        let (admitted, prepared) = self
            .decoders
            .run(move || {
                let violations = Violations::new(&admitted.shape);
                let prepared = convert(&bytes, &catalog, now, violations)
                    .map_err(|e| {
                        Status::invalid_argument(format!(
                            "the request is not a valid OTLP export request: {e}"
                        ))
                    })
                    .map(|converted| {
                        let mut body = Vec::new();
                        if !converted.events.is_empty() {
                            body.reserve(converted.events.len() * ROW_BYTES_GUESS);
                            spool::rows::encode(&catalog, &converted.events, &mut body);
                        }
                        Prepared { converted, body }
                    });
                (admitted, prepared)
            })
            .await
            .map_err(|e| e.status())?;
        let prepared = prepared?;
        if let Some(service) = prepared
            .converted
            .services
            .iter()
            .find(|s| !allowed.permits(s))
        {
            self.metrics
                .requests_refused
                .get_or_create(&ReasonLabels {
                    reason: "permission_denied",
                })
                .inc();
            return Err(Status::permission_denied(format!(
                "this token may not write as service `{}`; nothing of the request was written",
                crate::health::metrics::bounded(service, 128)
            )));
        }
        // The budget is given back only once the request's memory is gone.
        let answer = self.accept(signal, now, prepared).await;
        drop(admitted);
        answer
    }

    /// Spools a decoded request's valid events; answers once they are on disk.
    async fn accept(
        &self,
        signal: Signal,
        received_unix_nano: u64,
        prepared: Prepared,
    ) -> Result<Partial, Status> {
        let Prepared {
            mut converted,
            body,
        } = prepared;
        let labels = SignalLabels {
            signal: signal.as_str(),
        };
        let m = &self.metrics;
        m.records_received
            .get_or_create(&labels)
            .inc_by(converted.received);
        for (reason, n) in &converted.rejected.by_reason {
            m.records_rejected
                .get_or_create(&SignalReasonLabels {
                    signal: signal.as_str(),
                    reason,
                })
                .inc_by(*n);
        }
        if converted.rejected.count > 0 {
            tracing::debug!(
                signal = signal.as_str(),
                rejected = converted.rejected.count,
                first = converted.rejected.first.as_deref().unwrap_or_default(),
                "records rejected"
            );
        }
        let valid = converted.events.len() as u64;
        if valid > 0 {
            let cost = body.len();
            let payload = Payload {
                signal: SpoolSignal::Rows,
                received_unix_nano,
                body: body.into(),
            };
            let position = match self.spool.append(payload).await {
                Ok(position) => {
                    self.health.set_spool_writes(Check::Ok);
                    position
                }
                Err(error) => {
                    if let AppendError::Io(why) = &error {
                        self.health.set_spool_writes(Check::Failed(why.clone()));
                    }
                    m.records_refused
                        .get_or_create(&SignalReasonLabels {
                            signal: signal.as_str(),
                            reason: error.reason(),
                        })
                        .inc_by(valid);
                    return Err(match error {
                        AppendError::TooLarge { .. } => {
                            tracing::debug!(error = %error, "request refused");
                            Status::resource_exhausted(format!("{error}; send smaller batches"))
                        }
                        AppendError::Full { .. } => {
                            retryable(Code::Unavailable, format!("{error}; retry later"))
                        }
                        AppendError::Io(_) | AppendError::Closed => {
                            tracing::error!(error = %error, "cannot spool a request; refused with a retryable status");
                            retryable(Code::Unavailable, format!("{error}; retry later"))
                        }
                    });
                }
            };
            for (table, column) in &converted.truncated {
                m.text_truncated
                    .get_or_create(&ColumnLabels { table, column })
                    .inc();
            }
            let now = received_unix_nano as f64 / 1e9;
            for ((service, event), n) in &converted.tally {
                m.count_events(service, event, *n, now);
            }
            self.cache
                .offer(position, std::mem::take(&mut converted.events), cost);
        }
        m.records_accepted.get_or_create(&labels).inc_by(valid);
        Ok(Partial {
            rejected: converted.rejected.count as i64,
            message: converted.rejected.message(),
        })
    }
}
