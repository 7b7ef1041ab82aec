//! From an OTLP export request to mapped events: each record decoded ([`crate::event`]) and
//! mapped ([`super::mapping`]) on its own, with a count and description of those refused.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::catalog::{Catalog, Mapped};
use crate::event::{Origin, UsageEvent, service_name};

/// The records of one request that could not become rows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rejections {
    /// How many.
    pub count: u64,
    /// The first one, described with its position.
    pub first: Option<String>,
    /// Counts by reason label.
    pub by_reason: Vec<(&'static str, u64)>,
}

impl Rejections {
    fn add(&mut self, reason: &'static str, describe: impl FnOnce() -> String) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(describe());
        }
        match self.by_reason.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.by_reason.push((reason, 1)),
        }
    }

    /// The partial-success message: the first problem and how many others there were.
    pub fn message(&self) -> String {
        match (&self.first, self.count) {
            (None, _) => String::new(),
            (Some(first), 1) => first.clone(),
            (Some(first), n) => format!("{first}; and {} more rejected", n - 1),
        }
    }
}

/// A request, converted.
#[derive(Debug, Default)]
pub struct Converted {
    /// The valid records, mapped to rows.
    pub events: Vec<Mapped>,
    /// Records in the request.
    pub received: u64,
    /// Records refused on their own.
    pub rejected: Rejections,
    /// (table, column) of each text value cut to fit.
    pub truncated: Vec<(&'static str, &'static str)>,
    /// Valid events by (service, event name).
    pub tally: HashMap<(Arc<str>, String), u64>,
    /// The `service.name` of every resource in the request.
    pub services: std::collections::BTreeSet<Arc<str>>,
}

/// What the receiver learnt of each record before decoding: whether it is refused (it broke a
/// per-record limit), and the bytes it arrived as.
pub trait Skip {
    /// Why the `index`-th record of the request is refused, if it is.
    fn refused(&mut self, index: usize) -> Option<(&'static str, String)>;

    /// The `index`-th record's bytes as received, if known: derived ids hash them instead of
    /// encoding the decoded record again ([`UsageEvent::from_log`]).
    fn received(&self, _index: usize) -> Option<&[u8]> {
        None
    }
}

/// Nothing is refused before decoding, and the records' bytes are not known.
impl Skip for () {
    fn refused(&mut self, _index: usize) -> Option<(&'static str, String)> {
        None
    }
}

struct Builder<'a, S> {
    catalog: &'a Catalog,
    skip: S,
    out: Converted,
}

impl<'a, S: Skip> Builder<'a, S> {
    fn new(catalog: &'a Catalog, skip: S) -> Self {
        Self {
            catalog,
            skip,
            out: Converted::default(),
        }
    }

    /// Adds the next record: refused before decoding, or decoded by `decode` and mapped.
    fn add(
        &mut self,
        decode: impl FnOnce(Option<&[u8]>) -> Result<UsageEvent, crate::event::DecodeError>,
        position: impl Fn() -> String,
    ) {
        let index = self.out.received as usize;
        self.out.received += 1;
        if let Some((reason, why)) = self.skip.refused(index) {
            return self
                .out
                .rejected
                .add(reason, || format!("{}: {why}", position()));
        }
        let mut event = match decode(self.skip.received(index)) {
            Ok(event) => event,
            Err(e) => {
                return self
                    .out
                    .rejected
                    .add(e.reason(), || format!("{}: {e}", position()));
            }
        };
        match self.catalog.map(&mut event) {
            Ok(mut mapped) => {
                self.out.truncated.append(&mut mapped.truncated);
                self.out.events.push(mapped);
                *self
                    .out
                    .tally
                    .entry((event.service, event.name))
                    .or_default() += 1;
            }
            Err(e) => self.out.rejected.add(e.reason(), || {
                format!("{} (event `{}`): {e}", position(), event.name)
            }),
        }
    }

    fn finish(self) -> Converted {
        self.out
    }
}

/// Converts a logs request received at `now`; each record is decoded and mapped on its own,
/// except those `skip` refuses.
pub fn logs<S: Skip>(
    request: ExportLogsServiceRequest,
    catalog: &Catalog,
    now: u64,
    skip: S,
) -> Converted {
    let mut builder = Builder::new(catalog, skip);
    for (r, resource_logs) in request.resource_logs.into_iter().enumerate() {
        let resource = resource_logs.resource.unwrap_or_default();
        let service: Arc<str> = service_name(&resource.attributes);
        builder.out.services.insert(service.clone());
        for (s, scope_logs) in resource_logs.scope_logs.into_iter().enumerate() {
            let origin = Origin::new(
                &resource.attributes,
                scope_logs.scope.as_ref(),
                &service,
                now,
            );
            for (i, record) in scope_logs.log_records.into_iter().enumerate() {
                builder.add(
                    |received| UsageEvent::from_log(record, received, &origin),
                    || format!("log record {i} of resource {r}, scope {s}"),
                );
            }
        }
    }
    builder.finish()
}

/// Converts a traces request received at `now`; each span is decoded and mapped on its own,
/// except those `skip` refuses.
pub fn traces<S: Skip>(
    request: ExportTraceServiceRequest,
    catalog: &Catalog,
    now: u64,
    skip: S,
) -> Converted {
    let mut builder = Builder::new(catalog, skip);
    for (r, resource_spans) in request.resource_spans.into_iter().enumerate() {
        let resource = resource_spans.resource.unwrap_or_default();
        let service: Arc<str> = service_name(&resource.attributes);
        builder.out.services.insert(service.clone());
        for (s, scope_spans) in resource_spans.scope_spans.into_iter().enumerate() {
            let origin = Origin::new(
                &resource.attributes,
                scope_spans.scope.as_ref(),
                &service,
                now,
            );
            for (i, span) in scope_spans.spans.into_iter().enumerate() {
                builder.add(
                    |received| UsageEvent::from_span(span, received, &origin),
                    || format!("span {i} of resource {r}, scope {s}"),
                );
            }
        }
    }
    builder.finish()
}
