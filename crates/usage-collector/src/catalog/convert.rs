//! From an OTLP export request's bytes to mapped events: each record read in place
//! ([`crate::event::wire`]), decoded ([`crate::event`]) and mapped ([`super::mapping`]) on its
//! own, with a count and description of those refused. Nothing of a record is copied but the
//! values its row keeps.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::catalog::settings::NonUsageRecords;
use crate::catalog::{Catalog, Mapped};
use crate::event::wire::{self, KeyValue, Malformed, Scope};
use crate::event::{DecodeError, Origin, ResourceDigest, UsageEvent, service_name};

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
    /// Records that are not usage events, by service (refused, or stored as the catalogue's
    /// `non_usage_records` setting says).
    pub non_usage: HashMap<Arc<str>, u64>,
    /// Events refused by their declaration (a missing or mistyped attribute), by service,
    /// event name and reason.
    pub refused_events: HashMap<(Arc<str>, String, &'static str), u64>,
}

/// Which records the receiver refuses before decoding (they broke a per-record limit).
pub trait Skip {
    /// Why the `index`-th record of the request is refused, if it is.
    fn refused(&mut self, index: usize) -> Option<(&'static str, String)>;
}

/// Nothing is refused before decoding.
impl Skip for () {
    fn refused(&mut self, _index: usize) -> Option<(&'static str, String)> {
        None
    }
}

/// Converts the records a walk over a request shows it.
struct Builder<'c, 'a, S> {
    catalog: &'c Catalog,
    skip: S,
    now: u64,
    out: Converted,
    /// The current resource's service and digest, and the current scope's origin.
    service: Arc<str>,
    resource: Option<ResourceDigest>,
    origin: Option<Origin<'a>>,
    /// Resource groups so far, scope groups of the current one, records of the current scope.
    resources: usize,
    scopes: usize,
    records: usize,
    /// Valid events by service and name, looked up without allocating a key per event.
    tally: HashMap<Arc<str>, HashMap<String, u64>>,
}

impl<'c, 'a, S: Skip> Builder<'c, 'a, S> {
    fn new(catalog: &'c Catalog, now: u64, skip: S) -> Self {
        Self {
            catalog,
            skip,
            now,
            out: Converted::default(),
            service: Arc::from(""),
            resource: None,
            origin: None,
            resources: 0,
            scopes: 0,
            records: 0,
            tally: HashMap::new(),
        }
    }

    /// Adds the next record: refused before decoding, or decoded by `decode` and mapped with
    /// its `attributes`.
    fn add(
        &mut self,
        attributes: &[KeyValue<'_>],
        decode: impl FnOnce(&Origin<'_>) -> Result<UsageEvent<'a>, DecodeError>,
        position: impl Fn() -> String,
    ) {
        let index = self.out.received as usize;
        self.out.received += 1;
        self.records += 1;
        if let Some((reason, why)) = self.skip.refused(index) {
            return self
                .out
                .rejected
                .add(reason, || format!("{}: {why}", position()));
        }
        let origin = self
            .origin
            .as_ref()
            .expect("a walk shows a record's scope before the record");
        let event = match decode(origin) {
            Ok(event) => event,
            Err(e) => {
                if matches!(e, DecodeError::NotUsage { .. }) {
                    *self.out.non_usage.entry(self.service.clone()).or_default() += 1;
                }
                return self
                    .out
                    .rejected
                    .add(e.reason(), || format!("{}: {e}", position()));
            }
        };
        // A span named only by its span name is a usage event if the plan declares the name.
        if !event.sent_as_event && !self.catalog.declares(&event.name) {
            *self.out.non_usage.entry(self.service.clone()).or_default() += 1;
            if self.catalog.non_usage() == NonUsageRecords::Refuse {
                let e = DecodeError::NotUsage {
                    what: format!(
                        "span {:?}",
                        crate::health::metrics::bounded(&event.name, 128)
                    ),
                    why: "it has no `event.name` attribute, its name is not in the tracking plan, \
                          and it is not under the `usage` scope",
                };
                return self
                    .out
                    .rejected
                    .add(e.reason(), || format!("{}: {e}", position()));
            }
        }
        match self.catalog.map(&event, attributes) {
            Ok(mut mapped) => {
                self.out.truncated.append(&mut mapped.truncated);
                self.out.events.push(mapped);
                let names = match self.tally.get_mut(&event.service) {
                    Some(names) => names,
                    None => self.tally.entry(event.service.clone()).or_default(),
                };
                match names.get_mut(event.name.as_ref()) {
                    Some(n) => *n += 1,
                    None => {
                        names.insert(event.name.into_owned(), 1);
                    }
                }
            }
            Err(e) => {
                *self
                    .out
                    .refused_events
                    .entry((event.service.clone(), event.name.to_string(), e.reason()))
                    .or_default() += 1;
                self.out.rejected.add(e.reason(), || {
                    format!("{} (event `{}`): {e}", position(), event.name)
                })
            }
        }
    }

    fn finish(mut self) -> Converted {
        for (service, names) in self.tally {
            for (name, n) in names {
                self.out.tally.insert((service.clone(), name), n);
            }
        }
        self.out
    }

    fn next_resource(&mut self, attributes: &[KeyValue<'a>]) {
        self.service = service_name(attributes);
        self.resource = Some(ResourceDigest::new(attributes, &self.service));
        self.out.services.insert(self.service.clone());
        self.resources += 1;
        self.scopes = 0;
    }

    fn next_scope(&mut self, resource: &[KeyValue<'a>], scope: Option<Scope<'a>>) {
        let digest = match &self.resource {
            Some(digest) => digest,
            // A walk shows a resource before its scopes; should it not, hash this one.
            None => self
                .resource
                .insert(ResourceDigest::new(resource, &self.service)),
        };
        self.origin = Some(Origin::new(digest, scope, &self.service, self.now));
        self.scopes += 1;
        self.records = 0;
    }

    /// (resource, scope, record) of the next record, for messages.
    fn position(&self) -> (usize, usize, usize) {
        (
            self.resources.saturating_sub(1),
            self.scopes.saturating_sub(1),
            self.records,
        )
    }
}

impl<'a, S: Skip> wire::Visit<'a, wire::LogRecord<'a>> for Builder<'_, 'a, S> {
    fn resource(&mut self, attributes: &[KeyValue<'a>]) {
        self.next_resource(attributes);
    }

    fn scope(&mut self, resource: &[KeyValue<'a>], scope: Option<Scope<'a>>) {
        self.next_scope(resource, scope);
    }

    fn record(&mut self, record: &wire::LogRecord<'a>) {
        let (r, s, i) = self.position();
        self.add(
            &record.attributes,
            |origin| UsageEvent::of_log(record, origin),
            || format!("log record {i} of resource {r}, scope {s}"),
        );
    }
}

impl<'a, S: Skip> wire::Visit<'a, wire::Span<'a>> for Builder<'_, 'a, S> {
    fn resource(&mut self, attributes: &[KeyValue<'a>]) {
        self.next_resource(attributes);
    }

    fn scope(&mut self, resource: &[KeyValue<'a>], scope: Option<Scope<'a>>) {
        self.next_scope(resource, scope);
    }

    fn record(&mut self, span: &wire::Span<'a>) {
        let (r, s, i) = self.position();
        self.add(
            &span.attributes,
            |origin| UsageEvent::of_span(span, origin),
            || format!("span {i} of resource {r}, scope {s}"),
        );
    }
}

/// Converts a logs request's protobuf bytes received at `now`; each record is decoded and
/// mapped on its own, except those `skip` refuses. Bytes that are not a logs export request
/// are refused whole, with prost's description of what is wrong.
pub fn logs<S: Skip>(
    request: &[u8],
    catalog: &Catalog,
    now: u64,
    skip: S,
) -> Result<Converted, Malformed> {
    let mut builder = Builder::new(catalog, now, skip);
    match wire::request::<wire::LogRecord<'_>>(request, &mut builder) {
        Ok(()) => Ok(builder.finish()),
        Err(e) => {
            // What the walk mapped before the malformed field is thrown away before prost
            // reads the request again.
            drop(builder);
            Err(described::<ExportLogsServiceRequest>(request, e))
        }
    }
}

/// Converts a traces request's protobuf bytes received at `now`, as [`logs`] does.
pub fn traces<S: Skip>(
    request: &[u8],
    catalog: &Catalog,
    now: u64,
    skip: S,
) -> Result<Converted, Malformed> {
    let mut builder = Builder::new(catalog, now, skip);
    match wire::request::<wire::Span<'_>>(request, &mut builder) {
        Ok(()) => Ok(builder.finish()),
        Err(e) => {
            // What the walk mapped before the malformed field is thrown away before prost
            // reads the request again.
            drop(builder);
            Err(described::<ExportTraceServiceRequest>(request, e))
        }
    }
}

/// The error prost's decoder gives for bytes the walk refused: the same words clients have
/// always been answered with (prost names the message and field path; the walk does not
/// build one). Only the refused request pays for it.
fn described<R: Message + Default>(request: &[u8], walked: Malformed) -> Malformed {
    match R::decode(request) {
        Err(e) => Malformed::Wire(e),
        Ok(_) => {
            // The walk is meant to refuse exactly what prost refuses: a request it refuses
            // alone is a defect of the walk, and the client's records are not written.
            tracing::error!(
                error = %walked,
                bytes = request.len(),
                "the receiver refused a request prost's decoder accepts; please report this"
            );
            walked
        }
    }
}

/// Converts a logs request built in memory (or decoded by prost, as the writer does with
/// requests an earlier collector spooled), through its prost encoding.
pub fn logs_request<S: Skip>(
    request: &ExportLogsServiceRequest,
    catalog: &Catalog,
    now: u64,
    skip: S,
) -> Result<Converted, Malformed> {
    logs(&request.encode_to_vec(), catalog, now, skip)
}

/// Converts a traces request built in memory, as [`logs_request`] does.
pub fn traces_request<S: Skip>(
    request: &ExportTraceServiceRequest,
    catalog: &Catalog,
    now: u64,
    skip: S,
) -> Result<Converted, Malformed> {
    traces(&request.encode_to_vec(), catalog, now, skip)
}
