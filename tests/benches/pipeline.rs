//! The pipeline bench: one command, every measurement side by side, rows counted in the
//! database (not requests sent).
//!
//! - (a) the naive client: page-visit rows as 1000-row multi-row INSERTs from a minimal sqlx
//!   client with random 16-byte ids (UUID v4), 2 connections; (a') the same with time-ordered
//!   ids (UUID v7) — what MariaDB itself can take, and what the id order alone changes;
//! - (b) end to end: load generator → collector (spool on, fsync before OK) → MariaDB, until
//!   every event is written: page visits without `event.id` (the collector derives the id, as
//!   for the Python SDK), sessions from a pool of 64 per sender; (b') the same with `event.id`;
//! - (a), (a'), (b), (b') alternate, `USAGE_BENCH_ROUNDS` times (default 3); the table gives
//!   each round and the median of (b)/(a);
//! - (c) no database: the collector decoding, mapping and spooling, rows discarded; beside it,
//!   in alternation, rotel (an OTLP collector in Rust, PyPI package `rotel`, installed by the
//!   bench into a virtual environment under `~/.cache/usage-pipeline/rotel-venv`) receiving
//!   the same load into its blackhole exporter (`USAGE_BENCH_ROTEL=0` skips it), and the
//!   OpenTelemetry Collector of `tests/peers/otelcol` (built by `scripts/peers-setup`; left out,
//!   saying why, when it is not) running `tests/peers/otelcol/bench-queue.yaml`: its OTLP
//!   receiver and a persistent sending queue on file_storage with fsync, the closest thing it
//!   has to our spool, drained by the debug exporter (`USAGE_BENCH_OTELCOL=0` skips it);
//! - (d) growth: for each size in `USAGE_BENCH_GROWTH` (default `0,1000000,10000000` rows
//!   already in `page_visits`, preloaded with `INSERT … SELECT` from MariaDB's sequence
//!   tables, a million rows per statement): the end-to-end rate of (b), (a) and (a') with
//!   `USAGE_BENCH_GROWTH_RAW` rows (default 200000), the time of a recount from the raw rows
//!   (what the old `daily_usage_summary` view did on every read), and the summary queries'
//!   times (median of 5).
//! - `USAGE_BENCH_BASELINE=/path/to/usage-collector` adds the same (b) and (d) measurements of
//!   another collector binary (for example one built from an earlier commit), in the same run:
//!   before and after side by side on a machine whose speed drifts.
//!
//! Run: `cargo bench -p usage-pipeline-tests --bench pipeline` (needs MariaDB at
//! `USAGE_TEST_MYSQL_URL`, default `mysql://root@127.0.0.1:3306`, as the tests do). `USAGE_BENCH_EVENTS` sets the events of (a) and (b) (default 1000000:
//! enough that the database's deferred page flushing is paid inside each measurement, not
//! after it), `USAGE_BENCH_SECONDS` the length of (c) (default 10). Each measurement starts
//! once the database server is idle. The header names the machine. The 10-million-row size
//! needs about 4 GB of disk for a few minutes (each database is dropped after its size).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::MySqlPool;
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::loadgen::{self, Attributes, Plan, Signal};
use usage_pipeline_tests::measure::{env_u64, machine, usage};
use usage_pipeline_tests::naive::{database_cpu, raw_inserts, settle};
use usage_pipeline_tests::peers::{self, Backends, OtelCol};
use usage_pipeline_tests::process::{CollectorProcess, ProcessConfig, free_addr};

const BIN: &str = env!("CARGO_BIN_EXE_usage-collector-e2e");

/// A fresh MariaDB database migrated by collector binary `bin`.
async fn migrated_db(bin: &str) -> TestDb {
    let db = TestDb::mysql().await;
    let migrated = std::process::Command::new(bin)
        .args(["migrate", "--database-url", db.url()])
        .env("NO_COLOR", "1")
        .output()
        .expect("migrate");
    assert!(migrated.status.success(), "{migrated:?}");
    db
}

fn plan(endpoint: String, records: u64, seconds: u64, derived_ids: bool) -> Plan {
    Plan {
        endpoint,
        signal: Signal::Logs,
        batch: 512,
        in_flight: 8,
        connections: 2,
        duration_secs: seconds,
        rate: 0,
        records,
        duplicates: false,
        attributes: Attributes::Full,
        derived_ids,
    }
}

async fn written(collector: &CollectorProcess) -> f64 {
    let metrics = collector.get("/metrics").await.1;
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("usage_collector_events_written_total ")?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

async fn start(config: &ProcessConfig) -> (CollectorProcess, u32) {
    let mut collector = config.start();
    collector.wait_live(Duration::from_secs(30)).await;
    let started = Instant::now();
    while collector.get("/health/ready").await.0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "collector not ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = collector.pid();
    (collector, pid)
}

/// The rotel version the bench installs.
const ROTEL: &str = "rotel==0.0.1a15";

/// The `rotel-agent` binary of the `rotel` package, installed into a virtual environment the
/// bench creates (once); `None` (and why, on stderr) when it cannot be had.
fn rotel_agent() -> Option<PathBuf> {
    if std::env::var("USAGE_BENCH_ROTEL").is_ok_and(|v| v == "0") {
        return None;
    }
    let home = std::env::var_os("HOME")?;
    let venv = PathBuf::from(home).join(".cache/usage-pipeline/rotel-venv");
    let python = venv.join("bin/python");
    let run = |program: &Path, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .map_err(|e| e.to_string())
            .and_then(|o| {
                o.status
                    .success()
                    .then_some(())
                    .ok_or_else(|| String::from_utf8_lossy(&o.stderr).into_owned())
            })
    };
    let installed = (|| {
        if !python.exists() {
            run(
                Path::new("python3"),
                &["-m", "venv", &venv.to_string_lossy()],
            )?;
        }
        run(&python, &["-m", "pip", "install", "--quiet", ROTEL])?;
        let found = std::fs::read_dir(venv.join("lib")).map_err(|e| e.to_string())?;
        found
            .flatten()
            .map(|d| d.path().join("site-packages/rotel/rotel-agent"))
            .find(|p| p.exists())
            .ok_or_else(|| "no rotel-agent in the rotel package".to_owned())
    })();
    installed.map_err(|e| eprintln!("rotel skipped: {e}")).ok()
}

/// rotel receiving `seconds` of the (c) load into its blackhole exporter: (records/s, p50 ms,
/// p99 ms, CPU s, peak RSS MiB).
async fn rotel_blackhole(agent: &Path, dir: &Path, seconds: u64) -> (f64, f64, f64, f64, f64) {
    let (grpc, http) = (
        usage_pipeline_tests::process::free_addr(),
        usage_pipeline_tests::process::free_addr(),
    );
    let log = std::fs::File::create(dir.join("rotel.log")).expect("rotel log");
    let mut child = std::process::Command::new(agent)
        .args(["start", "--exporter", "blackhole"])
        .args(["--otlp-grpc-endpoint", &grpc.to_string()])
        .args(["--otlp-http-endpoint", &http.to_string()])
        .stdout(log.try_clone().expect("rotel log"))
        .stderr(log)
        .spawn()
        .expect("start rotel");
    let started = Instant::now();
    while tokio::net::TcpStream::connect(grpc).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "rotel did not listen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settle().await;
    let cpu_at_start = usage(child.id()).0;
    let outcome = loadgen::run(plan(format!("http://{grpc}"), 0, seconds, true))
        .await
        .expect("load");
    let (cpu, rss) = usage(child.id());
    if let Err(e) = child.kill().and_then(|()| child.wait().map(drop)) {
        eprintln!("could not stop rotel: {e}");
    }
    (
        outcome.records_per_second,
        outcome.p50_ms,
        outcome.p99_ms,
        cpu - cpu_at_start,
        rss,
    )
}

/// The OpenTelemetry Collector's binary and the bench's configuration for it, or `None` (and
/// why, on stderr) when it is skipped or not built.
fn otelcol_peer() -> Option<(PathBuf, PathBuf)> {
    if std::env::var("USAGE_BENCH_OTELCOL").is_ok_and(|v| v == "0") {
        return None;
    }
    match peers::otelcol_built() {
        Ok(binary) => Some((
            binary,
            usage_pipeline_tests::clients::repo_root().join("tests/peers/otelcol/bench-queue.yaml"),
        )),
        Err(why) => {
            eprintln!("the OpenTelemetry Collector skipped: {why}");
            None
        }
    }
}

/// The OpenTelemetry Collector receiving `seconds` of the (c) load into its persistent queue:
/// (records/s, p50 ms, p99 ms, CPU s, peak RSS MiB, seconds its exporter needed after the load
/// to have taken every accepted record out of the queue).
async fn otelcol_queue(
    (binary, config): &(PathBuf, PathBuf),
    seconds: u64,
) -> (f64, f64, f64, f64, f64, f64) {
    // It sends nowhere but to its debug exporter; the backends are unused addresses.
    let unused = Backends {
        usage_collector: free_addr(),
        traces: free_addr(),
    };
    let otelcol = OtelCol::start_with(binary, config, unused).await;
    settle().await;
    let pid = otelcol.pid();
    let cpu_at_start = usage(pid).0;
    let outcome = loadgen::run(plan(otelcol.endpoint(), 0, seconds, true))
        .await
        .expect("load");
    let (cpu, rss) = usage(pid);
    // The queue's consumers must keep up, or the rate would be the disk's, not the collector's:
    // every accepted record leaves through the exporter.
    let load_ended = Instant::now();
    loop {
        let metrics = otelcol.metrics().await;
        let sent = usage_pipeline_tests::exposition::sum_where(
            &metrics,
            "otelcol_exporter_sent_log_records",
            "exporter=\"debug\"",
        );
        if sent >= outcome.accepted as f64 {
            break;
        }
        assert!(
            load_ended.elapsed() < Duration::from_secs(120),
            "the OpenTelemetry Collector's queue did not drain: {sent} of {} records sent",
            outcome.accepted
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = load_ended.elapsed().as_secs_f64();
    (
        outcome.records_per_second,
        outcome.p50_ms,
        outcome.p99_ms,
        cpu - cpu_at_start,
        rss,
        drained,
    )
}

/// One end-to-end measurement.
struct EndToEnd {
    rows_per_second: f64,
    rows: f64,
    p50_ms: f64,
    p99_ms: f64,
    collector_cpu: f64,
    collector_rss: f64,
    database_cpu: f64,
}

/// Load generator → collector → `db` until every accepted event is written; rows counted in
/// `page_visits` (beyond those already there).
async fn end_to_end(
    bin: &str,
    db: &TestDb,
    dir: &Path,
    events: u64,
    derived_ids: bool,
) -> EndToEnd {
    let before = db.count("page_visits").await;
    let config = ProcessConfig::new(
        bin,
        db.url(),
        &dir.join(uuid::Uuid::new_v4().simple().to_string()),
    );
    let (collector, pid) = start(&config).await;
    settle().await;
    let (cpu_at_start, cpu_before) = (usage(pid).0, database_cpu());
    let started = Instant::now();
    let load = loadgen::run(plan(config.endpoint(), events, 3600, derived_ids))
        .await
        .expect("load");
    while written(&collector).await < load.accepted as f64 {
        assert!(
            started.elapsed() < Duration::from_secs(1200),
            "not all events written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rows = (db.count("page_visits").await - before) as f64;
    let database_cpu = database_cpu() - cpu_before;
    let (cpu, rss) = usage(pid);
    drop(collector);
    EndToEnd {
        rows_per_second: rows / elapsed,
        rows,
        p50_ms: load.p50_ms,
        p99_ms: load.p99_ms,
        collector_cpu: cpu - cpu_at_start,
        collector_rss: rss,
        database_cpu,
    }
}

/// Fills `page_visits` with `rows` rows (ids below any time-ordered id of today, times 100 ms
/// apart over the days before, 20 visits per session), their sessions, and (with `rollup`, the
/// current schema) the daily rollup from them; returns the seconds a recount from the raw rows
/// took.
async fn preload(db: &TestDb, rows: u64, rollup: bool) -> f64 {
    const CHUNK: u64 = 1_000_000;
    let mut from = 0;
    while from < rows {
        let to = (from + CHUNK).min(rows) - 1;
        db.execute(&format!(
            "INSERT INTO page_visits (event_id, service, session_id, user_id, `timestamp`, \
             page_path, referrer, user_agent, ip_address) \
             SELECT UNHEX(LPAD(HEX(seq), 32, '0')), 'usage-load', \
             CONCAT('pre-', LPAD(seq DIV 20, 8, '0')), CONCAT('user-', seq MOD 1000), \
             TIMESTAMPADD(MICROSECOND, -({rows} - seq) * 100000, UTC_TIMESTAMP(6) - INTERVAL 1 HOUR), \
             CONCAT('/pre/', seq), 'https://example.org/ide/programs', \
             'Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0', \
             '203.0.113.7' FROM seq_{from}_to_{to}"
        ))
        .await;
        from = to + 1;
    }
    if rows > 0 {
        db.execute(&format!(
            "INSERT INTO ide_sessions (session_id, service, user_id, start_time, last_activity{}) \
             SELECT CONCAT('pre-', LPAD(seq, 8, '0')), 'usage-load', \
             CONCAT('user-', seq MOD 1000), \
             TIMESTAMPADD(MICROSECOND, -({rows} - seq * 20) * 100000, UTC_TIMESTAMP(6) - INTERVAL 1 HOUR), \
             TIMESTAMPADD(MICROSECOND, -({rows} - seq * 20 - 19) * 100000, UTC_TIMESTAMP(6) - INTERVAL 1 HOUR) \
             {} FROM seq_0_to_{}",
            if rollup { ", page_visits" } else { "" },
            if rollup { ", 20" } else { "" },
            rows / 20 - 1
        ))
        .await;
    }
    let started = Instant::now();
    let recount = "SELECT DATE(`timestamp`), service, COUNT(*) FROM page_visits GROUP BY 1, 2";
    if rollup {
        db.execute(&format!(
            "INSERT INTO daily_usage_by_service (`date`, service, page_visits) {recount}"
        ))
        .await;
    } else {
        db.texts(&format!(
            "SELECT CAST(COUNT(*) AS CHAR) FROM ({recount}) AS days"
        ))
        .await;
    }
    started.elapsed().as_secs_f64()
}

/// Median milliseconds of five runs of `sql` (every row fetched).
async fn query_ms(db: &TestDb, sql: &'static str) -> f64 {
    let pool = MySqlPool::connect(db.url()).await.expect("connect");
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        sqlx::query(sql).fetch_all(&pool).await.expect(sql);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    pool.close().await;
    times.sort_by(f64::total_cmp);
    times[2]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list
    }
    let events = env_u64("USAGE_BENCH_EVENTS", 1_000_000);
    let seconds = env_u64("USAGE_BENCH_SECONDS", 10);
    let rounds = env_u64("USAGE_BENCH_ROUNDS", 3).max(1);
    let growth_raw = env_u64("USAGE_BENCH_GROWTH_RAW", 200_000);
    // A collector built from an earlier commit, measured beside this one ("before").
    let baseline = std::env::var("USAGE_BENCH_BASELINE").ok();
    let growth: Vec<u64> = std::env::var("USAGE_BENCH_GROWTH")
        .unwrap_or_else(|_| "0,1000000,10000000".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("usage_bench_{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("bench folder");
    println!("# Pipeline bench — {}", machine());
    println!(
        "# {events} page-visit events (~500 B rows), 512 per request, 8 requests in flight; each measurement starts with the database idle\n"
    );

    // (c) no database, first: the database's deferred flushing after (a) and (b) would slow
    // the spool's fsyncs. The blackhole sink: the writer runs as in production and stores
    // nothing. rotel's blackhole beside it, in alternation.
    let rotel = rotel_agent();
    let otelcol = otelcol_peer();
    println!(
        "| round | receive path, no database, {seconds} s | records/s | vs rotel | p50 ms | p99 ms | CPU s | peak RSS MB |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let (mut receive_ratios, mut otelcol_ratios) = (Vec::new(), Vec::new());
    let mut discard_line = String::new();
    for round in 1..=rounds {
        let config = ProcessConfig::new(BIN, "blackhole://", &dir.join(format!("discard{round}")));
        let (collector, pid) = start(&config).await;
        settle().await;
        let cpu_at_start = usage(pid).0;
        let discard = loadgen::run(plan(config.endpoint(), 0, seconds, true))
            .await
            .expect("load");
        let (discard_cpu, discard_rss) = usage(pid);
        let discard_cpu = discard_cpu - cpu_at_start;
        drop(collector);
        discard_line = format!(
            "| all | (c) decode + map + spool, rows discarded, {seconds} s (last round) | {:.0} | | {:.1} | {:.1} | {discard_cpu:.1} | {discard_rss:.0} | |",
            discard.records_per_second, discard.p50_ms, discard.p99_ms
        );
        let rotel_rate = match &rotel {
            Some(agent) => {
                let (rate, p50, p99, cpu, rss) = rotel_blackhole(agent, &dir, seconds).await;
                receive_ratios.push(discard.records_per_second / rate);
                println!(
                    "| {round} | rotel {ROTEL}, blackhole exporter | {rate:.0} | 1.00 | {p50:.1} | {p99:.1} | {cpu:.1} | {rss:.0} |"
                );
                Some(rate)
            }
            None => None,
        };
        let versus = |rate: f64| rotel_rate.map_or(String::new(), |r| format!("{:.2}", rate / r));
        if let Some(peer) = &otelcol {
            let (rate, p50, p99, cpu, rss, drained) = otelcol_queue(peer, seconds).await;
            otelcol_ratios.push(discard.records_per_second / rate);
            println!(
                "| {round} | OpenTelemetry Collector v0.161.0: OTLP receiver, persistent queue (file_storage, fsync), debug exporter (queue empty {drained:.1} s after) | {rate:.0} | {} | {p50:.1} | {p99:.1} | {cpu:.1} | {rss:.0} |",
                versus(rate)
            );
        }
        let versus = versus(discard.records_per_second);
        println!(
            "| {round} | (c) this collector: decode, validate, map, fsync to the spool, rows discarded | {:.0} | {versus} | {:.1} | {:.1} | {discard_cpu:.1} | {discard_rss:.0} |",
            discard.records_per_second, discard.p50_ms, discard.p99_ms
        );
    }
    if !receive_ratios.is_empty() {
        println!(
            "\nmedian over {rounds} rounds: (c)/rotel {:.2}\n",
            median(&mut receive_ratios)
        );
    }
    if !otelcol_ratios.is_empty() {
        println!(
            "median over {rounds} rounds: (c)/OpenTelemetry Collector {:.2}\n",
            median(&mut otelcol_ratios)
        );
    }

    println!(
        "| round | measurement | rows/s | vs (a) | p50 ms | p99 ms | collector CPU s | collector peak RSS MB | database CPU s |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let (mut ratios, mut ratios_with_ids, mut ordered_ratios, mut baseline_ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut peak_rss: f64 = 0.0;
    for round in 1..=rounds {
        let db = migrated_db(BIN).await;
        let (raw, raw_cpu) = raw_inserts(&db, events, false).await;
        drop(db);
        let db = migrated_db(BIN).await;
        let (ordered, ordered_cpu) = raw_inserts(&db, events, true).await;
        drop(db);
        let db = migrated_db(BIN).await;
        let derived = end_to_end(BIN, &db, &dir, events, true).await;
        drop(db);
        let db = migrated_db(BIN).await;
        let with_ids = end_to_end(BIN, &db, &dir, events, false).await;
        drop(db);
        let before = match &baseline {
            Some(bin) => {
                let db = migrated_db(bin).await;
                Some(end_to_end(bin, &db, &dir, events, true).await)
            }
            None => None,
        };
        if let Some(before) = &before {
            baseline_ratios.push(before.rows_per_second / raw);
        }
        ratios.push(derived.rows_per_second / raw);
        ratios_with_ids.push(with_ids.rows_per_second / raw);
        ordered_ratios.push(ordered / raw);
        peak_rss = peak_rss
            .max(derived.collector_rss)
            .max(with_ids.collector_rss);
        println!(
            "| {round} | (a) raw 1000-row INSERTs, random ids (v4), 2 connections | {raw:.0} | 1.00 | | | | | {raw_cpu:.1} |"
        );
        println!(
            "| {round} | (a') raw 1000-row INSERTs, time-ordered ids (v7), 2 connections | {ordered:.0} | {:.2} | | | | | {ordered_cpu:.1} |",
            ordered / raw
        );
        let mut measured = vec![
            (
                "(b) end to end, no `event.id` (derived ids), 64 sessions per sender",
                &derived,
            ),
            ("(b') end to end, with `event.id`", &with_ids),
        ];
        if let Some(before) = &before {
            measured.push(("(b0) as (b), the baseline collector", before));
        }
        for (name, e) in measured {
            println!(
                "| {round} | {name}, {:.0} rows | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} |",
                e.rows,
                e.rows_per_second,
                e.rows_per_second / raw,
                e.p50_ms,
                e.p99_ms,
                e.collector_cpu,
                e.collector_rss,
                e.database_cpu
            );
        }
    }
    println!("{discard_line}");
    println!(
        "\nmedian over {rounds} rounds: (b)/(a) {:.2}, (b')/(a) {:.2}, (a')/(a) {:.2}; collector peak RSS {peak_rss:.0} MB\n",
        median(&mut ratios),
        median(&mut ratios_with_ids),
        median(&mut ordered_ratios)
    );
    if !baseline_ratios.is_empty() {
        println!(
            "baseline collector (`USAGE_BENCH_BASELINE`): (b0)/(a) median {:.2}\n",
            median(&mut baseline_ratios)
        );
    }

    // (d) growth.
    println!(
        "| collector | rows already in page_visits | preload s | (b) rows/s | (b) vs 0 | (a) random ids rows/s | (a') ordered ids rows/s | recount from raw rows ms (the old view) | daily_usage_summary ms | one session's summary ms | 100 latest sessions ms | collector CPU s | collector peak RSS MB |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut collectors = vec![("this", BIN.to_owned())];
    if let Some(bin) = &baseline {
        collectors.push(("baseline", bin.clone()));
    }
    let mut base_rate = std::collections::HashMap::new();
    for size in growth {
        for (which, bin) in &collectors {
            let db = migrated_db(bin).await;
            let started = Instant::now();
            let recount_s = preload(&db, size, *which == "this").await;
            let preload_s = started.elapsed().as_secs_f64();
            let e = end_to_end(bin, &db, &dir, events, true).await;
            let base = *base_rate.entry(*which).or_insert(e.rows_per_second);
            let (raw, _) = raw_inserts(&db, growth_raw, false).await;
            let (ordered, _) = raw_inserts(&db, growth_raw, true).await;
            let daily = query_ms(&db, "SELECT * FROM daily_usage_summary").await;
            let one = query_ms(
                &db,
                "SELECT * FROM session_summary WHERE service = 'usage-load' AND session_id = 'load-session-3-17'",
            )
            .await;
            let latest = query_ms(
                &db,
                "SELECT * FROM session_summary ORDER BY start_time DESC LIMIT 100",
            )
            .await;
            println!(
                "| {which} | {size} | {preload_s:.0} | {:.0} | {:.2} | {raw:.0} | {ordered:.0} | {:.0} | {daily:.1} | {one:.1} | {latest:.1} | {:.1} | {:.0} |",
                e.rows_per_second,
                e.rows_per_second / base,
                recount_s * 1000.0,
                e.collector_cpu,
                e.collector_rss
            );
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("could not remove {}: {e}", dir.display());
    }
}
