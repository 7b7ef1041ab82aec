//! Cost of turning an OTLP logs request into rows: decode each record into a usage event, map
//! it through the catalogue, and group the rows into batches; and of the spool's rows records:
//! encoding a request's mapped events (the receiver) and decoding them (the writer, when its
//! cache of mapped rows misses). No I/O.
//!
//! Run with `cargo bench -p usage-pipeline-tests --bench decode_map`; criterion reports the time
//! per request and the records per second.
//!
//! Spool rows on a 2-core AMD EPYC VM (24 GiB, the system allocator), 512 records per request,
//! medians of 8 measurements taken while other builds shared the cores:
//!
//! | case | µs per request |
//! | --- | --- |
//! | `spool_rows/encode_512_records` | 22.5 (17.3–30.9) |
//! | `spool_rows/decode_512_records` | 146 (130–187) |
//!
//! On a quiet machine the same code measured 17 and 114.
//!
//! The receive path (`receive/*`: shape, then decode and map every record) before and after
//! the records were read in place from the request's bytes instead of decoded by prost into
//! owned structs (same VM, the same hour, other builds sharing the cores, so the
//! times swing by a third between runs; the instruction counts, from `valgrind --tool=callgrind`
//! on `examples/receive_cost.rs`, do not):
//!
//! | case | µs per request (medians of 4 runs), before → after | instructions per request, before → after |
//! | --- | --- | --- |
//! | `receive/512_records_with_ids` | 1362–1637 → 863–1395 | 8.74 M → 6.40 M (−27 %) |
//! | `receive/512_records_derived_ids` | 1115–1492 → 1139–1357 | 9.91 M → 8.15 M (−18 %) |
//!
//! After the change, of the 6.40 M instructions (with ids): mapping (`Catalog::map`, which now
//! copies the values rows keep) 2.3 M, reading the records and deciding each event 2.6 M, the
//! shape 0.9 M; the rest is dropping the mapped rows.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message as _;
use prost::bytes::Bytes;
use usage_collector::catalog::Catalog;
use usage_collector::catalog::convert;
use usage_collector::event::Signal;
use usage_collector::receiver::ingest::Violations;
use usage_collector::receiver::shape::{Limits, Shape};
use usage_pipeline_tests::fixtures::*;

/// Page visits, program runs, feature use and custom events, each with an id.
fn request(records: u64) -> ExportLogsServiceRequest {
    mixed_usage(records, true)
}

fn decode_and_map(c: &mut Criterion) {
    let catalog = Catalog::built_in();
    let mut group = c.benchmark_group("decode_and_map");
    for records in [1u64, 512] {
        let input = request(records);
        group.throughput(Throughput::Elements(records));
        group.bench_function(format!("{records}_records"), |b| {
            b.iter_batched(
                || input.clone(),
                |request| convert::logs_request(&request, &catalog, 500, ()).expect("request"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// What the receiver does with a request's bytes before the spool: read its shape, then read
/// every record in place, derive ids and map it; with `event.id` sent, and without it (derived
/// ids, hashing each record's bytes as received).
fn receive(c: &mut Criterion) {
    let catalog = Catalog::built_in();
    let limits = Limits {
        max_records: 10_000,
        max_attributes: 128,
        max_value_bytes: 64 * 1024,
    };
    let mut group = c.benchmark_group("receive");
    group.throughput(Throughput::Elements(512));
    for (name, ids) in [
        ("512_records_with_ids", true),
        ("512_records_derived_ids", false),
    ] {
        let bytes = Bytes::from(mixed_usage(512, ids).encode_to_vec());
        group.bench_function(name, |b| {
            b.iter(|| {
                let shape = Shape::of(&bytes, Signal::Log, &limits).expect("shape");
                convert::logs(&bytes, &catalog, 500, Violations::new(&shape)).expect("request")
            })
        });
    }
    group.finish();
}

fn spool_rows(c: &mut Criterion) {
    let catalog = Catalog::built_in();
    let events = convert::logs_request(&request(512), &catalog, 500, ())
        .expect("request")
        .events;
    let mut body = Vec::new();
    usage_collector::spool::rows::encode(&catalog, &events, &mut body);
    let mut group = c.benchmark_group("spool_rows");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("encode_512_records", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(body.len());
            usage_collector::spool::rows::encode(&catalog, &events, &mut out);
            out
        })
    });
    group.bench_function("decode_512_records", |b| {
        b.iter(|| usage_collector::spool::rows::decode(&catalog, &body).expect("rows"))
    });
    group.finish();
}

criterion_group!(benches, decode_and_map, receive, spool_rows);
criterion_main!(benches);
