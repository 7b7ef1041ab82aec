//! The database's share of the work per event, on its own: the naive client's 1000-row
//! INSERTs beside the collector's sink writing the same kind of page visits — mapped
//! beforehand, as the writer holds them after reading the spool — in transactions of several
//! sizes (each with its session upserts and rollup upsert).
//!
//! Only the database server and this process run, so the database's CPU seconds per million
//! events are its own cost, not a share of two cores that a load generator and a collector
//! want too (the pipeline bench measures that).
//!
//! Run: `cargo bench -p usage-pipeline-tests --bench sink` (MariaDB at `USAGE_TEST_MYSQL_URL`,
//! default `mysql://root@127.0.0.1:3306`). `USAGE_BENCH_EVENTS` (default 500000) events per
//! measurement, `USAGE_BENCH_ROUNDS` (default 3) alternations, `USAGE_BENCH_BATCHES` (default
//! `500,1024,2048`) the events per transaction (`--batch-size`; a transaction never holds more
//! than one read of the spool, [`RECORDS_PER_READ`] requests).

use std::sync::Arc;
use std::time::{Duration, Instant};

use usage_collector::catalog::{Catalog, Mapped, RowBatch, convert};
use usage_collector::config::DatabaseSettings;
use usage_collector::sink::{ErrorKind, Sink};
use usage_collector::writer::batch::RECORDS_PER_READ;
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::fixtures::{event, kv, logs_request};
use usage_pipeline_tests::loadgen::{Attributes, attributes};
use usage_pipeline_tests::measure::{env_u64, machine};
use usage_pipeline_tests::naive::{database_cpu, raw_inserts, settle};

/// Load generator senders, each with its 64 sessions, as in the pipeline bench.
const SENDERS: usize = 8;
/// Records per request.
const PER_REQUEST: usize = 512;

/// `events` page visits without `event.id` (the collector derives it), stamped from now on,
/// mapped by `catalog` and grouped as the writer reads them: rounds of [`RECORDS_PER_READ`]
/// requests of [`PER_REQUEST`] records, each request one sender's.
fn rounds(catalog: &Catalog, events: usize) -> Vec<Vec<Mapped>> {
    let now = usage_collector::event::now_unix_nano();
    let requests = events.div_ceil(PER_REQUEST);
    let mut out: Vec<Vec<Mapped>> = Vec::new();
    for r in 0..requests {
        let sender = r % SENDERS;
        let records = (0..PER_REQUEST)
            .map(|n| {
                let mut attributes = attributes(Attributes::Full, sender, n);
                attributes[0] = kv("load.id", uuid::Uuid::new_v4().to_string().as_str());
                event(
                    "page_visit",
                    now + (r * PER_REQUEST + n) as u64 * 1_000,
                    attributes,
                )
            })
            .collect();
        let converted =
            convert::logs_request(&logs_request("usage-load", records), catalog, now, ())
                .expect("the load's requests decode");
        assert_eq!(converted.rejected.count, 0, "every record maps");
        if r % RECORDS_PER_READ == 0 {
            out.push(Vec::new());
        }
        out.last_mut().expect("a round").extend(converted.events);
    }
    out
}

/// Writes every round through `sink` in transactions of `batch` events, as many at once as the
/// writer runs; a transaction the database refused for the moment (a deadlock between two of
/// them) is written again, as the writer does. Returns (rows/s, database CPU s).
///
/// The rounds are dealt to the streams in turn beforehand (the writer gives each round to
/// whichever stream is free), so the slowest stream sets the time; the database's CPU is read
/// when the last transaction commits.
async fn write_all(sink: &Sink, rounds: Arc<Vec<Vec<Mapped>>>, batch: usize) -> (f64, f64) {
    let streams = sink.write_streams();
    settle().await;
    let cpu = database_cpu();
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|stream| {
            let (sink, rounds) = (sink.clone(), rounds.clone());
            tokio::spawn(async move {
                let tables = sink.catalog().tables().len();
                for round in rounds.iter().skip(stream).step_by(streams) {
                    for chunk in round.chunks(batch) {
                        let batch = RowBatch::of(tables, chunk);
                        let mut attempts = 0;
                        while let Err(e) = sink.write(&batch).await {
                            assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
                            attempts += 1;
                            assert!(attempts < 20, "a batch keeps failing: {e}");
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a writing task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = database_cpu() - cpu;
    let events: usize = rounds.iter().map(Vec::len).sum();
    (events as f64 / elapsed, cpu)
}

async fn sink(db: &TestDb, catalog: Arc<Catalog>) -> Sink {
    let sink = Sink::open(&DatabaseSettings::new(db.url()), catalog).expect("open the sink");
    sink.migrate().await.expect("migrate");
    sink
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let events = env_u64("USAGE_BENCH_EVENTS", 500_000) as usize;
    let rounds_n = env_u64("USAGE_BENCH_ROUNDS", 3).max(1);
    let batches: Vec<usize> = std::env::var("USAGE_BENCH_BATCHES")
        .unwrap_or_else(|_| "500,1024,2048".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    let catalog = Arc::new(Catalog::built_in());
    let rounds = Arc::new(rounds(&catalog, events));
    let events: usize = rounds.iter().map(Vec::len).sum();
    println!(
        "# Sink bench — {}",
        machine().replace(
            "load generator, collector and MariaDB share them",
            "MariaDB and this process only"
        )
    );
    println!(
        "# {events} page visits per measurement, {SENDERS} senders of 64 sessions, requests of {PER_REQUEST} read {RECORDS_PER_READ} at a time\n"
    );
    println!("| round | measurement | rows/s | database CPU s per million events | vs (a) |");
    println!("| --- | --- | --- | --- | --- |");
    let mut ratios: Vec<(String, Vec<f64>)> = Vec::new();
    for round in 1..=rounds_n {
        let db = TestDb::mysql().await;
        drop(sink(&db, catalog.clone()).await);
        let (rate, cpu) = raw_inserts(&db, events as u64, false).await;
        let naive = cpu / events as f64 * 1e6;
        println!(
            "| {round} | (a) naive client, 1000-row INSERTs, random ids | {rate:.0} | {naive:.1} | 1.00 |"
        );
        drop(db);
        for &batch in &batches {
            let db = TestDb::mysql().await;
            let sink = sink(&db, catalog.clone()).await;
            let (rate, cpu) = write_all(&sink, rounds.clone(), batch).await;
            assert_eq!(
                db.count("page_visits").await as usize,
                events,
                "every event written once"
            );
            let per_million = cpu / events as f64 * 1e6;
            let label = format!("the collector's sink, {batch} events per transaction");
            println!(
                "| {round} | {label} | {rate:.0} | {per_million:.1} | {:.2} |",
                per_million / naive
            );
            match ratios.iter_mut().find(|(l, _)| *l == label) {
                Some((_, r)) => r.push(per_million / naive),
                None => ratios.push((label, vec![per_million / naive])),
            }
        }
    }
    println!("\nMedian database CPU per event against the naive client's:\n");
    for (label, mut r) in ratios {
        r.sort_by(f64::total_cmp);
        println!("- {label}: {:.2}", r[r.len() / 2]);
    }
}
