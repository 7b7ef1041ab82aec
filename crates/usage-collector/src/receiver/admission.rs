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
//!    `records_refused{reason="memory"}`. An OTLP/HTTP request holds budget earlier, from
//!    before its body is read (what its body, inflating it and turning JSON into protobuf
//!    take; a refusal then counts `requests_refused{reason="memory"}`), and that share becomes
//!    its decoded cost here.
//!
//! A request's share of the budget moves with its memory, into the job a decode thread runs,
//! so it is given back when that memory is gone, also when the client has disconnected. Every
//! request waiting for a decode thread holds at least one unit of the budget, so the budget
//! also bounds that queue.
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
pub const REQUEST_REASONS: [&str; 9] = [
    "too_large",
    "too_many_records",
    "malformed",
    "unauthenticated",
    "permission_denied",
    // The in-flight budget had no room for the request's body before it was read or decoded
    // (OTLP/HTTP: its bytes on the wire, inflating it, turning JSON into protobuf).
    "memory",
    // OTLP/HTTP only: another content type or content encoding (415), a body that did not
    // arrive in time (408) or whose connection failed while it was read (400).
    "unsupported_media_type",
    "timeout",
    "incomplete_body",
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

/// A share of the in-flight budget, given back when dropped. It moves with the memory it
/// stands for: into the job a decode thread runs, and on into admission, so that the budget
/// is given back only when that memory is gone (not when a client that disconnected drops its
/// request's future while a decode thread still works on it).
#[derive(Debug)]
pub struct Reserved {
    budget: OwnedSemaphorePermit,
}

impl Reserved {
    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.budget.num_permits() * UNIT
    }

    /// Gives back what is held beyond `bytes` (the memory it stood for is gone).
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = units(bytes) as usize;
        if let Some(extra) = self.budget.num_permits().checked_sub(keep) {
            drop(self.budget.split(extra));
        }
    }
}

/// A request let in: its shape, and its share of the memory budget, given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    /// What the request holds.
    pub shape: Shape,
    _budget: Reserved,
}

/// Budget units for `cost` bytes: at least one, so that every request waiting for a decode
/// thread holds some budget and their number is bounded by it.
fn units(cost: usize) -> u32 {
    u32::try_from(cost.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX)
}

/// Why the budget could not be had.
enum NoRoom {
    /// More than the whole budget: waiting cannot help.
    Never,
    /// In use for [`BUDGET_WAIT`].
    Busy,
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

    /// Takes `units` more of the in-flight budget, waiting up to [`BUDGET_WAIT`] for room.
    async fn take(&self, units: u32) -> Result<OwnedSemaphorePermit, NoRoom> {
        if units > self.budget_units {
            // Can never fit, however long it waits (the settings are checked so that a request
            // within the limits always fits; this is a request of tiny values).
            return Err(NoRoom::Never);
        }
        match tokio::time::timeout(BUDGET_WAIT, self.budget.clone().acquire_many_owned(units)).await
        {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) | Err(_) => Err(NoRoom::Busy),
        }
    }

    /// Makes `held` (if any) at least `cost` bytes of the budget, waiting up to [`BUDGET_WAIT`]
    /// for what is missing (keeping what it holds meanwhile), or gives back what it holds
    /// beyond `cost`.
    async fn fit(&self, held: Option<Reserved>, cost: usize) -> Result<Reserved, NoRoom> {
        let need = units(cost);
        if need > self.budget_units {
            return Err(NoRoom::Never);
        }
        let Some(mut held) = held else {
            return self.take(need).await.map(|budget| Reserved { budget });
        };
        let have = u32::try_from(held.budget.num_permits()).unwrap_or(u32::MAX);
        if have >= need {
            held.shrink_to(cost);
        } else {
            let more = self.take(need - have).await?;
            held.budget.merge(more);
        }
        Ok(held)
    }

    /// The refusal for `no_room` when `cost` bytes were asked for.
    fn no_room(&self, no_room: NoRoom, cost: usize, what: &str) -> Status {
        let budget_mib = (self.budget_units as usize * UNIT) >> 20;
        match no_room {
            NoRoom::Never => Status::resource_exhausted(format!(
                "the request would take about {} MiB {what}, more than the collector's whole \
                 in-flight budget of {budget_mib} MiB (max_inflight_bytes); send smaller batches",
                cost >> 20,
            )),
            NoRoom::Busy => retryable(
                Code::ResourceExhausted,
                format!(
                    "the collector's in-flight budget of {budget_mib} MiB is in use \
                     (max_inflight_bytes); retry later"
                ),
            ),
        }
    }

    /// Makes `held` (or a new share) `cost` bytes of the in-flight budget, for work before
    /// [`Admission::admit`] can run (reading an OTLP/HTTP body, inflating it, turning JSON into
    /// protobuf), waiting up to [`BUDGET_WAIT`] for room; a refusal counts the request under
    /// `requests_refused{reason="memory"}` (its records are not known yet).
    pub async fn reserve(&self, held: Option<Reserved>, cost: usize) -> Result<Reserved, Status> {
        match self.fit(held, cost).await {
            Ok(reserved) => Ok(reserved),
            Err(no_room) => {
                let status = self.no_room(no_room, cost, "in memory before decoding");
                Err(self.refuse_request("memory", status))
            }
        }
    }

    /// Runs the checks on a request's bytes (already within `max_request_bytes`). What
    /// `reserved` holds for the bytes (OTLP/HTTP) becomes the request's decoded cost, growing
    /// or shrinking, without being given back in between.
    pub async fn admit(
        &self,
        bytes: &[u8],
        signal: Signal,
        reserved: Option<Reserved>,
    ) -> Result<Admitted, Status> {
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
        match self.fit(reserved, cost).await {
            Ok(budget) => Ok(Admitted {
                shape,
                _budget: budget,
            }),
            Err(no_room) => {
                let status = self.no_room(no_room, cost, "to decode");
                Err(self.refuse_records(signal, shape.records, "memory", status))
            }
        }
    }
}
