//! The path every export request takes after decoding: count, validate, spool, answer.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::catalog::Catalog;
use crate::catalog::convert::Converted;
use crate::event::Signal;
use crate::health::metrics::{ColumnLabels, SignalLabels, SignalReasonLabels};
use crate::health::{Health, Metrics};
use crate::spool::{self, AppendError, Payload, Spool, SpoolSignal};

/// Bytes a mapped event usually takes in a rows record (a page visit: ~300), so encoding a
/// request rarely grows its buffer.
const ROW_BYTES_GUESS: usize = 320;

/// What a client is told to wait before retrying a refused request.
pub const RETRY_DELAY: Duration = Duration::from_secs(2);

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
    pub cache: Arc<crate::spool::cache::RowCache>,
}

fn retryable(message: String) -> Status {
    Status::with_error_details(
        Code::Unavailable,
        message,
        ErrorDetails::with_retry_info(Some(RETRY_DELAY)),
    )
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
            "the collector is shutting down; retry against another".to_owned(),
        ))
    }

    /// Spools a validated request's valid events as mapped rows; answers once they are on
    /// disk.
    pub async fn accept(
        &self,
        signal: Signal,
        received_unix_nano: u64,
        mut converted: Converted,
    ) -> Result<Partial, Status> {
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
            let mut body = Vec::with_capacity(converted.events.len() * ROW_BYTES_GUESS);
            spool::rows::encode(&self.catalog, &converted.events, &mut body);
            let payload = Payload {
                signal: SpoolSignal::Rows,
                received_unix_nano,
                body: body.into(),
            };
            let position = match self.spool.append(payload).await {
                Ok(position) => position,
                Err(error) => {
                    m.records_refused
                        .get_or_create(&SignalReasonLabels {
                            signal: signal.as_str(),
                            reason: error.reason(),
                        })
                        .inc_by(valid);
                    if !matches!(error, AppendError::Full { .. }) {
                        tracing::error!(error = %error, "cannot spool a request; refused with a retryable status");
                    }
                    return Err(retryable(format!("{error}; retry later")));
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
                .offer(position, std::mem::take(&mut converted.events));
        }
        m.records_accepted.get_or_create(&labels).inc_by(valid);
        Ok(Partial {
            rejected: converted.rejected.count as i64,
            message: converted.rejected.message(),
        })
    }
}
