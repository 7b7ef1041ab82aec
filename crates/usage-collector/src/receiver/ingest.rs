//! The path every export request takes after decoding.

use std::sync::Arc;

use tonic::Status;

use super::convert::Converted;
use crate::catalog::Catalog;
use crate::event::Signal;
use crate::health::metrics::{ColumnLabels, SignalLabels, SignalReasonLabels};
use crate::health::{Health, Metrics};
use crate::writer::Writer;

/// What the client hears when not everything was written: rejected count and message.
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
    /// The table mapping.
    pub catalog: Arc<Catalog>,
    /// Where rows go.
    pub writer: Writer,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Readiness gate.
    pub health: Health,
    /// Events per batch handed to the writer.
    pub batch_size: usize,
}

impl Ingest {
    /// Refuses a request before decoding it when the collector cannot take events.
    pub fn gate(&self, signal: Signal) -> Result<(), Status> {
        self.health.accepting().map_err(|why| {
            self.metrics
                .records_refused
                .get_or_create(&SignalReasonLabels {
                    signal: signal.as_str(),
                    reason: "not_ready",
                })
                .inc();
            Status::unavailable(format!("collector not ready, retry later: {why}"))
        })
    }

    /// Writes a converted request; answers once every valid record is committed.
    pub async fn write(&self, signal: Signal, converted: Converted) -> Result<Partial, Status> {
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
        for (table, column) in &converted.truncated {
            m.text_truncated
                .get_or_create(&ColumnLabels { table, column })
                .inc();
        }
        if converted.rejected.count > 0 {
            tracing::debug!(
                signal = signal.as_str(),
                rejected = converted.rejected.count,
                first = converted.rejected.first.as_deref().unwrap_or_default(),
                "records rejected"
            );
        }
        let valid = converted.received - converted.rejected.count;
        for batch in converted.batches {
            if let Err(error) = self.writer.write(batch).await {
                m.records_refused
                    .get_or_create(&SignalReasonLabels {
                        signal: signal.as_str(),
                        reason: error.reason,
                    })
                    .inc_by(valid);
                let retryable = error.transient
                    || matches!(
                        error.reason,
                        "missing_table" | "missing_column" | "permission"
                    );
                return Err(if retryable {
                    Status::unavailable(format!(
                        "database write failed, retry later: {}",
                        error.message
                    ))
                } else {
                    Status::internal(format!("database refused the rows: {}", error.message))
                });
            }
        }
        m.records_accepted.get_or_create(&labels).inc_by(valid);
        Ok(Partial {
            rejected: converted.rejected.count as i64,
            message: converted.rejected.message(),
        })
    }
}
