//! The pipeline bench: one command, three measurements side by side, rows counted in the
//! database (not requests sent).
//!
//! - (a) raw: the same rows as multi-row INSERTs from a minimal sqlx client — 500 page visits
//!   and an upsert of the 64 sessions they belong to per transaction, 2 connections — what
//!   MariaDB itself can take; (a0) the page visits alone, for reference;
//! - (b) end to end: load generator → collector (spool on, fsync before OK) → MariaDB, until
//!   every event is written;
//! - (c) no database: the collector decoding, mapping and spooling, rows discarded.
//!
//! Run: `cargo bench -p usage-pipeline-tests --bench pipeline` (needs MariaDB at
//! `USAGE_TEST_MYSQL_URL`, default `mysql://root@127.0.0.1:3306`, as the tests do). `USAGE_BENCH_EVENTS` sets the events of (a) and (b) (default 1000000:
//! enough that the database's deferred page flushing is paid inside each measurement, not
//! after it), `USAGE_BENCH_SECONDS` the length of (c) (default 10). Each measurement starts
//! once the database server is idle. The header names the machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::{MySqlPool, QueryBuilder};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::loadgen::{self, Attributes, Plan, Signal};
use usage_pipeline_tests::measure::{machine, usage};
use usage_pipeline_tests::process::{CollectorProcess, ProcessConfig};

const BIN: &str = env!("CARGO_BIN_EXE_usage-collector-e2e");

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The database server's process, found by name (MariaDB or MySQL on this machine).
fn database_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            matches!(comm.trim(), "mariadbd" | "mysqld").then_some(pid)
        })
}

/// CPU seconds the database server has used so far (0 when it is not found).
fn database_cpu() -> f64 {
    database_pid().map_or(0.0, |pid| usage(pid).0)
}

/// Waits until the database server is idle — done flushing what the previous measurement
/// wrote — so each measurement starts from a quiet server and pays only for its own work: under
/// 5 % of a core over half a second, for at most two minutes.
async fn settle() {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = database_cpu();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = database_cpu();
        if now - last < 0.025 {
            return;
        }
        last = now;
    }
    eprintln!("the database server was still busy after two minutes; measuring anyway");
}

/// Connections of the raw client (more add latency, not throughput, on this machine).
const RAW_CONNECTIONS: u64 = 2;
/// Sessions each raw writer's rows belong to, as each load generator sender's requests do.
const RAW_SESSIONS: u64 = 64;

/// Writes `events` page-visit rows as 500-row INSERTs from a minimal client; with `sessions`,
/// each batch also upserts the sessions its rows belong to, in one transaction, as the
/// collector must (the same rows it writes). Returns page-visit rows per second.
async fn raw_inserts(db: &TestDb, events: u64, sessions: bool) -> f64 {
    let pool = MySqlPool::connect(db.url()).await.expect("connect");
    let per_connection = events / RAW_CONNECTIONS;
    // A fixed time, as the load generator's records carry.
    let at = time::macros::datetime!(2026-01-01 0:00);
    let started = Instant::now();
    let writers: Vec<_> = (0..RAW_CONNECTIONS)
        .map(|w| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.acquire().await.expect("connection");
                let mut done = 0;
                while done < per_connection {
                    let n = (per_connection - done).min(500);
                    let mut query = QueryBuilder::new(
                        "INSERT INTO page_visits (event_id, service, session_id, user_id, `timestamp`, page_path, \
                         referrer, user_agent, ip_address) ",
                    );
                    query.push_values(0..n, |mut row, i| {
                        let k = w * per_connection + done + i;
                        row.push_bind(uuid::Uuid::now_v7().as_bytes().to_vec())
                            .push_bind("usage-load")
                            .push_bind(format!("load-session-{w}-{}", k % RAW_SESSIONS))
                            .push_bind(format!("user-{}", k % 1000))
                            .push_bind(at)
                            .push_bind(format!("/load/{w}/{k}"))
                            .push_bind("https://example.org/ide/programs")
                            .push_bind("Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0")
                            .push_bind("203.0.113.7");
                    });
                    query.push(" ON DUPLICATE KEY UPDATE event_id = event_id");
                    if sessions {
                        sqlx::query("BEGIN").execute(&mut *conn).await.expect("begin");
                    }
                    query.build().execute(&mut *conn).await.expect("insert");
                    if sessions {
                        let mut upsert = QueryBuilder::new(
                            "INSERT INTO ide_sessions (session_id, service, user_id, start_time, last_activity) ",
                        );
                        upsert.push_values(0..RAW_SESSIONS.min(n), |mut row, s| {
                            row.push_bind(format!("load-session-{w}-{s}"))
                                .push_bind("usage-load")
                                .push_bind(format!("user-{s}"))
                                .push_bind(at)
                                .push_bind(at);
                        });
                        upsert.push(
                            " ON DUPLICATE KEY UPDATE start_time = LEAST(start_time, VALUES(start_time)), \
                             last_activity = GREATEST(last_activity, VALUES(last_activity))",
                        );
                        upsert.build().execute(&mut *conn).await.expect("upsert");
                        sqlx::query("COMMIT").execute(&mut *conn).await.expect("commit");
                    }
                    done += n;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rows = db.count("page_visits").await as f64;
    pool.close().await;
    rows / elapsed
}

/// A fresh, migrated MariaDB database.
async fn migrated_db() -> TestDb {
    let db = TestDb::mysql().await;
    let migrated = std::process::Command::new(BIN)
        .args(["migrate", "--database-url", db.url()])
        .env("NO_COLOR", "1")
        .output()
        .expect("migrate");
    assert!(migrated.status.success(), "{migrated:?}");
    db
}

fn plan(endpoint: String, records: u64, seconds: u64) -> Plan {
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

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list
    }
    let events = env_u64("USAGE_BENCH_EVENTS", 1_000_000);
    let seconds = env_u64("USAGE_BENCH_SECONDS", 10);
    let dir: PathBuf =
        std::env::temp_dir().join(format!("usage_bench_{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("bench folder");
    println!("# Pipeline bench — {}", machine());
    println!(
        "# {events} page-visit events (~500 B rows), 512 per request, 8 requests in flight; each measurement starts with the database idle\n"
    );

    // (c) no database, first: the database's deferred flushing after (a) and (b) would slow
    // the spool's fsyncs.
    // The blackhole sink: the writer runs as in production and stores nothing.
    let config = ProcessConfig::new(BIN, "blackhole://", &dir.join("discard"));
    let (collector, pid) = start(&config).await;
    settle().await;
    let cpu_at_start = usage(pid).0;
    let discard = loadgen::run(plan(config.endpoint(), 0, seconds))
        .await
        .expect("load");
    let (discard_cpu, discard_rss) = usage(pid);
    let discard_cpu = discard_cpu - cpu_at_start;
    drop(collector);

    // (a) raw inserts: the same rows as (b) — page visits and their sessions — and, for
    // reference, the page visits alone.
    let raw_db = migrated_db().await;
    settle().await;
    let cpu_before = database_cpu();
    let raw = raw_inserts(&raw_db, events, true).await;
    let raw_db_cpu = database_cpu() - cpu_before;
    let visits_db = migrated_db().await;
    settle().await;
    let cpu_before = database_cpu();
    let raw_visits = raw_inserts(&visits_db, events, false).await;
    let raw_visits_db_cpu = database_cpu() - cpu_before;

    // (b) end to end
    let e2e_db = TestDb::mysql().await;
    let config = ProcessConfig::new(BIN, e2e_db.url(), &dir.join("e2e"));
    let (collector, pid) = start(&config).await;
    settle().await;
    let (cpu_at_start, cpu_before) = (usage(pid).0, database_cpu());
    let started = Instant::now();
    let load = loadgen::run(plan(config.endpoint(), events, 3600))
        .await
        .expect("load");
    while written(&collector).await < load.accepted as f64 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not all events written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rows = e2e_db.count("page_visits").await as f64;
    let e2e_db_cpu = database_cpu() - cpu_before;
    let (e2e_cpu, e2e_rss) = usage(pid);
    let e2e_cpu = e2e_cpu - cpu_at_start;
    drop(collector);
    let e2e = rows / elapsed;

    println!(
        "| measurement | rows/s | vs (a) | p50 ms | p99 ms | collector CPU s | collector peak RSS MB | database CPU s |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| (a) raw multi-row INSERTs of the same rows: 500 page visits + their 64 sessions upserted per transaction, 2 connections | {raw:.0} | 1.00 | | | | | {raw_db_cpu:.1} |"
    );
    println!(
        "| (a0) raw multi-row INSERTs of the page visits alone, 500 rows, 2 connections (reference) | {raw_visits:.0} | {:.2} | | | | | {raw_visits_db_cpu:.1} |",
        raw_visits / raw
    );
    println!(
        "| (b) end to end, spool on, {rows:.0} rows counted in MariaDB | {e2e:.0} | {:.2} | {:.1} | {:.1} | {e2e_cpu:.1} | {e2e_rss:.0} | {e2e_db_cpu:.1} |",
        e2e / raw,
        load.p50_ms,
        load.p99_ms
    );
    println!(
        "| (c) decode + map + spool, rows discarded, {seconds} s | {:.0} | | {:.1} | {:.1} | {discard_cpu:.1} | {discard_rss:.0} | |",
        discard.records_per_second, discard.p50_ms, discard.p99_ms
    );
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("could not remove {}: {e}", dir.display());
    }
}
