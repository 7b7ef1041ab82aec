//! Admission: what a request must pass before the expensive part (decoding, mapping, the spool
//! append), so that whatever clients send, the collector's memory and CPU stay bounded and
//! every refusal is retryable where waiting can help.
//!
//! In order, each refusal counted under its reason and logged at debug with the limit:
//! 1. the request's size after decompression (`max_request_bytes`; the gRPC layer, before
//!    this) — `RESOURCE_EXHAUSTED`, `requests_refused{reason="too_large"}`;
//! 2. its shape ([`Shape`]): more records than `max_records_per_request` —
//!    `RESOURCE_EXHAUSTED`, `requests_refused{reason="too_many_records"}`;
//! 3. spool headroom: the spool cannot take it — `UNAVAILABLE` with RetryInfo,
//!    `records_refused{reason="spool_full"}`;
//! 4. the memory budget: the request's decoded cost ([`Shape::decoded_bytes`]) must fit in
//!    `max_inflight_bytes` together with every request in flight; it waits up to
//!    [`BUDGET_WAIT`] for room, then gets `RESOURCE_EXHAUSTED` with RetryInfo,
//!    `records_refused{reason="memory"}`.
//!
//! Records that break a per-record limit (attributes, value size, nesting) are rejected on
//! their own later, as partial success; the rest of the request is kept.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::shape::{Limits, Shape, ShapeError};
use crate::event::Signal;
use crate::health::Metrics;
use crate::health::metrics::{ReasonLabels, SignalReasonLabels};
use crate::spool::Spool;

/// How long a request waits for room in the memory budget before it is refused.
pub const BUDGET_WAIT: Duration = Duration::from_millis(250);
/// What a client is told to wait before retrying a refused request.
pub const RETRY_DELAY: Duration = Duration::from_secs(2);
/// The budget is counted in units of this many bytes (a semaphore's permits are `u32`).
const UNIT: usize = 1024;

/// Request-level refusal reasons (before records are counted).
pub const REQUEST_REASONS: [&str; 5] = [
    "too_large",
    "too_many_records",
    "malformed",
    "unauthenticated",
    "permission_denied",
];
/// Record-level refusal reasons added by admission.
pub const RECORD_REASONS: [&str; 1] = ["memory"];

/// A retryable refusal with RetryInfo.
pub fn retryable(code: Code, message: String) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_retry_info(Some(RETRY_DELAY)),
    )
}

/// The admission checks of one collector.
#[derive(Debug, Clone)]
pub struct Admission {
    limits: Limits,
    budget: Arc<Semaphore>,
    budget_units: u32,
    spool: Spool,
    metrics: Arc<Metrics>,
}

/// A share of the in-flight budget, given back when dropped.
#[derive(Debug)]
pub struct Reserved {
    _budget: OwnedSemaphorePermit,
}

/// A request let in: its shape, and its share of the memory budget, given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    /// What the request holds.
    pub shape: Shape,
    _budget: OwnedSemaphorePermit,
}

impl Admission {
    /// Admission with these limits and a memory budget of `max_inflight_bytes`.
    pub fn new(
        limits: Limits,
        max_inflight_bytes: usize,
        spool: Spool,
        metrics: Arc<Metrics>,
    ) -> Self {
        let budget_units = u32::try_from(max_inflight_bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        Self {
            limits,
            budget: Arc::new(Semaphore::new(budget_units as usize)),
            budget_units,
            spool,
            metrics,
        }
    }

    /// The per-record limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn refuse_request(&self, reason: &'static str, status: Status) -> Status {
        self.metrics
            .requests_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
        tracing::debug!(reason, message = status.message(), "request refused");
        status
    }

    fn refuse_records(
        &self,
        signal: Signal,
        records: usize,
        reason: &'static str,
        status: Status,
    ) -> Status {
        self.metrics
            .records_refused
            .get_or_create(&SignalReasonLabels {
                signal: signal.as_str(),
                reason,
            })
            .inc_by(records as u64);
        tracing::debug!(
            reason,
            records,
            message = status.message(),
            "request refused"
        );
        status
    }

    /// Takes `cost` bytes of the in-flight budget, waiting up to [`BUDGET_WAIT`] for room;
    /// refusals count `records` under `memory`.
    async fn acquire(
        &self,
        cost: usize,
        signal: Signal,
        records: usize,
    ) -> Result<OwnedSemaphorePermit, Status> {
        let units = u32::try_from(cost.div_ceil(UNIT)).unwrap_or(u32::MAX);
        if units > self.budget_units {
            // Can never fit, however long it waits (the settings are checked so that a request
            // within the limits always fits; this is a request of tiny values).
            return Err(self.refuse_records(
            signal,
            records,
            "memory",
            Status::resource_exhausted(format!(
                "the request would take about {} MiB to decode, more than the collector's whole \
                 in-flight budget of {} MiB (max_inflight_bytes); send smaller batches",
                cost >> 20,
                (self.budget_units as usize * UNIT) >> 20
            )),
        ));
        }
        let permit = match tokio::time::timeout(
            BUDGET_WAIT,
            self.budget.clone().acquire_many_owned(units),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) | Err(_) => {
                return Err(self.refuse_records(
                signal,
                records,
                "memory",
                retryable(
                    Code::ResourceExhausted,
                    format!(
                        "the collector's in-flight budget of {} MiB is in use (max_inflight_bytes); retry later",
                        (self.budget_units as usize * UNIT) >> 20
                    ),
                ),
            ));
            }
        };
        Ok(permit)
    }

    /// Takes `cost` bytes of the in-flight budget for work before [`Admission::admit`] can
    /// run (an OTLP/JSON request turned into protobuf), given back when the result is dropped.
    pub async fn reserve(&self, cost: usize, signal: Signal) -> Result<Reserved, Status> {
        self.acquire(cost, signal, 0)
            .await
            .map(|permit| Reserved { _budget: permit })
    }

    /// Runs the checks on a request's bytes (already within `max_request_bytes`).
    pub async fn admit(&self, bytes: &[u8], signal: Signal) -> Result<Admitted, Status> {
        let shape = match Shape::of(bytes, signal, &self.limits) {
            Ok(shape) => shape,
            Err(e @ ShapeError::TooManyRecords { .. }) => {
                return Err(self.refuse_request(
                    "too_many_records",
                    Status::resource_exhausted(e.to_string()),
                ));
            }
            Err(e @ ShapeError::Malformed(_)) => {
                return Err(
                    self.refuse_request("malformed", Status::invalid_argument(e.to_string()))
                );
            }
        };
        let (_, waiting) = self.spool.depth();
        let cap = self.spool.capacity();
        if waiting.saturating_add(bytes.len() as u64) > cap {
            return Err(self.refuse_records(
                signal,
                shape.records,
                "spool_full",
                retryable(
                    Code::Unavailable,
                    format!(
                        "spool full: {waiting} of {cap} bytes hold events not yet in the database; retry later"
                    ),
                ),
            ));
        }
        let cost = shape.decoded_bytes();
        let permit = self.acquire(cost, signal, shape.records).await?;
        Ok(Admitted {
            shape,
            _budget: permit,
        })
    }
}
