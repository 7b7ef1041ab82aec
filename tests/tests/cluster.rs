//! The collector on a real three-node MariaDB Galera cluster (`usage_pipeline_tests::galera`),
//! every test on the real binary, under load from retrying clients, asserting rows (each
//! acknowledged event present once), counters (the session counters and the daily rollup
//! equal a recount of the raw rows), dead letters (none) and each collector's accounting
//! identity (accepted = written, nothing dropped, nothing left in the spool):
//!
//! - two collectors on two nodes receiving the same requests, writing into shared sessions;
//! - certification conflicts between two collectors on two nodes writing the same sessions
//!   and rollup rows: retried under their own reason, never dead-lettered;
//! - a node killed (SIGKILL) under load and brought back by IST: its collector rides it out
//!   on its spool (readiness degraded) and catches up; the other never stops;
//! - the retention sweeper on two collectors on two nodes: each expired row deleted once, and
//!   the two collectors' holds of the retention lease never overlap;
//! - batches far larger than the cluster's write-set limits: split, not refused;
//! - failover: the node a collector with a three-host URL writes to leaves the primary
//!   component, and the collector moves to the next host within seconds.
//!
//! The cluster tests share one cluster and take turns ([`galera::shared`]); each prints its
//! figures on one line. Two more tests need only the single MariaDB server: a URL naming a dead
//! host first, and a single-host URL through an outage (no move); and one checks that every
//! table of the schema has a primary key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use usage_collector::catalog::Catalog;
use usage_collector::config::DatabaseSettings;
use usage_collector::sink::Sink;
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::{sum, value};
use usage_pipeline_tests::galera::{self, Cluster};
use usage_pipeline_tests::load::{Load, Plan, Report, check_present};
use usage_pipeline_tests::process::{CollectorProcess, ProcessConfig, assert_accounted, temp_dir};
use usage_pipeline_tests::{poll, summaries};

const BIN: &str = env!("CARGO_BIN_EXE_usage-collector-e2e");

/// Applies the migrations once, in this process, before any collector starts: sqlx's
/// migration lock is `GET_LOCK`, which each Galera node keeps to itself (see
/// docs/scaling.md), so collectors on two nodes must not both find the schema missing.
async fn migrate(url: &str) {
    let sink = Sink::open(&DatabaseSettings::new(url), Arc::new(Catalog::built_in()))
        .expect("open the sink");
    sink.migrate().await.expect("migrate");
    sink.close().await;
}

/// A fresh database on the cluster (created through node 1) with the schema in place.
async fn database(cluster: &Cluster) -> TestDb {
    let db = TestDb::mysql_on(&cluster.url(1)).await;
    migrate(db.url()).await;
    db
}

/// How to start a collector process; its folder (spool, log) is removed when dropped.
struct Config(ProcessConfig);

impl std::ops::Deref for Config {
    type Target = ProcessConfig;

    fn deref(&self) -> &ProcessConfig {
        &self.0
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        if let Some(dir) = self.0.log.parent()
            && let Err(e) = std::fs::remove_dir_all(dir)
        {
            eprintln!("could not remove {}: {e}", dir.display());
        }
    }
}

/// A collector process writing to `url`, named `instance`, its files under a fresh folder.
fn collector(url: &str, instance: &str, extra: &[&str]) -> Config {
    let mut config = ProcessConfig::new(BIN, url, &temp_dir("usage_cluster"));
    config.extra = ["--instance", instance]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_owned())
        .collect();
    Config(config)
}

/// `node`'s URL for the test's database.
fn node_url(cluster: &Cluster, node: usize, db: &TestDb) -> String {
    format!("{}/{}", cluster.url(node), db.name())
}

/// One test's figures.
#[derive(Debug)]
struct Figures {
    acknowledged: u64,
    rows: i64,
    present: u64,
    duplicates: u64,
    mismatches: usize,
    dead_letters: i64,
}

/// Asserts what every cluster test asserts once its load is over and the collectors drained:
/// every acknowledged event present once, the summaries equal to a recount, no dead letters,
/// each collector's accounting identity (`restarted`: started on a killed one's spool).
/// Prints the figures on one line under `name`, with `more`.
async fn assert_exact(
    name: &str,
    db: &TestDb,
    report: &Report,
    acked: &[String],
    collectors: &[&CollectorProcess],
    more: &str,
) -> Figures {
    let (present, duplicates) = check_present(db, acked).await;
    let rows = db.count("page_visits").await + db.count("program_executions").await;
    let mismatches = summaries::mismatches(db).await;
    let figures = Figures {
        acknowledged: report.acknowledged,
        rows,
        present,
        duplicates,
        mismatches: mismatches.count(),
        dead_letters: db.count("dead_letters").await,
    };
    println!(
        "{name}: acknowledged {} / rows {} (acknowledged present {}) / duplicates {} / counter \
         mismatches {} ({} sessions, {} days recounted) / dead letters {}{more}",
        figures.acknowledged,
        figures.rows,
        figures.present,
        figures.duplicates,
        figures.mismatches,
        mismatches.sessions_counted,
        mismatches.days_counted,
        figures.dead_letters,
    );
    assert!(report.acknowledged > 0, "{name}: nothing acknowledged");
    assert_eq!(report.failed, 0, "{name}: requests refused for good");
    assert_eq!(
        present, report.acknowledged,
        "{name}: acknowledged events missing"
    );
    assert_eq!(duplicates, 0, "{name}: duplicated rows");
    assert!(
        mismatches.sessions_counted > 0,
        "{name}: no session written"
    );
    assert_eq!(
        mismatches,
        summaries::Mismatches {
            days_counted: mismatches.days_counted,
            sessions_counted: mismatches.sessions_counted,
            ..Default::default()
        },
        "{name}: summaries differ from a recount of the raw rows"
    );
    assert_eq!(figures.dead_letters, 0, "{name}: dead letters");
    for (i, collector) in collectors.iter().enumerate() {
        assert_accounted(&format!("{name}, collector {}", i + 1), collector, false).await;
    }
    figures
}

/// The sum of `reason`'s write failures on each collector.
async fn failures(collectors: &[&CollectorProcess], reason: &str) -> f64 {
    let mut total = 0.0;
    for collector in collectors {
        let metrics = collector.metrics().await;
        total += value(
            &metrics,
            &format!("usage_collector_write_failures_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0);
    }
    total
}

async fn events_written(collector: &CollectorProcess) -> f64 {
    sum(
        &collector.metrics().await,
        "usage_collector_events_written_total",
    )
}

/// Two collectors on two nodes receive the same requests (a client retrying against another
/// replica), every client writing into the same six sessions.
#[tokio::test(flavor = "multi_thread")]
async fn two_collectors_on_two_nodes_write_the_same_events_once() {
    let mut guard = galera::shared().await;
    let cluster = guard.as_mut().expect("the cluster");
    let db = database(cluster).await;
    let one = collector(&node_url(cluster, 1, &db), "collector-1", &[]);
    let two = collector(&node_url(cluster, 2, &db), "collector-2", &[]);
    let (a, b) = (one.start_ready().await, two.start_ready().await);
    let load = Load::run(Plan {
        endpoints: vec![one.endpoint(), two.endpoint()],
        shared_sessions: Some(6),
        ..Plan::new(&one.endpoint(), 4, 20, Duration::from_millis(20))
    });
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (report, acked) = load.stop(Duration::from_secs(30)).await;
    a.wait_drained(Duration::from_secs(60)).await;
    b.wait_drained(Duration::from_secs(60)).await;
    let conflicts = failures(&[&a, &b], "certification_conflict").await;
    let more = format!(" (each request sent to both; certification conflicts retried {conflicts})");
    assert_exact(
        "two collectors, same events",
        &db,
        &report,
        &acked,
        &[&a, &b],
        &more,
    )
    .await;
}

/// Two collectors on two nodes write different events into the same two sessions (and so the
/// same rollup rows): their transactions meet as certification conflicts, which are retried
/// under their own reason, never dead-lettered, and counted once.
#[tokio::test(flavor = "multi_thread")]
async fn certification_conflicts_are_retried_never_dead_lettered() {
    let mut guard = galera::shared().await;
    let cluster = guard.as_mut().expect("the cluster");
    let db = database(cluster).await;
    let one = collector(&node_url(cluster, 1, &db), "collector-1", &[]);
    let two = collector(&node_url(cluster, 3, &db), "collector-3", &[]);
    let (a, b) = (one.start_ready().await, two.start_ready().await);
    let plan = |endpoint: &str| Plan {
        shared_sessions: Some(2),
        ..Plan::new(endpoint, 4, 20, Duration::from_millis(5))
    };
    let (load_a, load_b) = (
        Load::run(plan(&one.endpoint())),
        Load::run(plan(&two.endpoint())),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let ((report_a, acked_a), (report_b, acked_b)) = tokio::join!(
        load_a.stop(Duration::from_secs(30)),
        load_b.stop(Duration::from_secs(30))
    );
    a.wait_drained(Duration::from_secs(60)).await;
    b.wait_drained(Duration::from_secs(60)).await;
    let conflicts = failures(&[&a, &b], "certification_conflict").await;
    let deadlocks = failures(&[&a, &b], "deadlock").await;
    let report = Report {
        sent: report_a.sent + report_b.sent,
        acknowledged: report_a.acknowledged + report_b.acknowledged,
        failed: report_a.failed + report_b.failed,
        ..report_a
    };
    let acked: Vec<String> = acked_a.into_iter().chain(acked_b).collect();
    let more = format!(" / certification conflicts retried {conflicts} / deadlocks {deadlocks}");
    assert_exact(
        "certification conflicts",
        &db,
        &report,
        &acked,
        &[&a, &b],
        &more,
    )
    .await;
    assert!(
        conflicts > 0.0,
        "two nodes writing the same two sessions met no certification conflict"
    );
    assert_eq!(
        deadlocks, 0.0,
        "a conflict on Galera is a certification conflict"
    );
}

/// Node 3 is killed (SIGKILL) under load and brought back, catching up by IST. Its collector
/// (pinned to it: a one-host URL) accepts into its spool meanwhile, says degraded, and writes
/// everything once the node is back; the collector on node 1 never stops writing.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_under_load_is_ridden_out_and_caught_up() {
    let mut guard = galera::shared().await;
    let cluster = guard.as_mut().expect("the cluster");
    let db = database(cluster).await;
    let pinned = collector(&node_url(cluster, 3, &db), "collector-3", &[]);
    let other = collector(&node_url(cluster, 1, &db), "collector-1", &[]);
    let (a, b) = (pinned.start_ready().await, other.start_ready().await);
    let load_a = Load::start(&pinned.endpoint(), 4, 20, Duration::from_millis(20));
    let load_b = Load::start(&other.endpoint(), 4, 20, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let before = cluster.transfers(3);
    cluster.kill(3);
    let killed = Instant::now();
    let (_, body) = poll::until(
        "the pinned collector reports the lost node (degraded, still in service)",
        Duration::from_secs(30),
        || a.get("/health/ready"),
        |(status, body)| *status == 200 && body.contains("\"status\":\"degraded\""),
    )
    .await;
    let degraded_after = killed.elapsed();
    let (acked_a, written_b) = (load_a.acknowledged(), events_written(&b).await);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let accepted_during = load_a.acknowledged() - acked_a;
    let written_by_other = events_written(&b).await - written_b;
    assert!(
        accepted_during > 0,
        "the pinned collector stopped accepting: {body}"
    );
    assert!(
        written_by_other > 0.0,
        "the other collector stopped writing"
    );
    let spooled = value(&a.metrics().await, "usage_collector_spool_requests").unwrap_or(0.0);

    let restarting = Instant::now();
    cluster.restart(3).await;
    let rejoined_in = restarting.elapsed();
    let after = cluster.transfers(3);
    // Caught up incrementally: an IST more, no SST more.
    let ist = after.1 > before.1 && after.0 == before.0;
    let caught_up = Instant::now();
    a.wait_drained(Duration::from_secs(90)).await;
    let caught_up_in = caught_up.elapsed();
    poll::until(
        "the pinned collector ok again",
        Duration::from_secs(30),
        || a.get("/health/ready"),
        |(_, body)| body.contains("\"status\":\"ok\""),
    )
    .await;

    let ((report_a, acked_a), (report_b, acked_b)) = tokio::join!(
        load_a.stop(Duration::from_secs(30)),
        load_b.stop(Duration::from_secs(30))
    );
    a.wait_drained(Duration::from_secs(60)).await;
    b.wait_drained(Duration::from_secs(60)).await;
    let report = Report {
        sent: report_a.sent + report_b.sent,
        acknowledged: report_a.acknowledged + report_b.acknowledged,
        failed: report_a.failed + report_b.failed,
        ..report_a
    };
    let acked: Vec<String> = acked_a.into_iter().chain(acked_b).collect();
    let more = format!(
        " / degraded {:.1} s after the kill / accepted into the spool while down {accepted_during} \
         ({spooled} requests spooled) / written meanwhile by the other collector \
         {written_by_other} / node back in {:.1} s (IST: {ist}) / spool drained {:.1} s later",
        degraded_after.as_secs_f64(),
        rejoined_in.as_secs_f64(),
        caught_up_in.as_secs_f64()
    );
    assert_exact(
        "node killed and back",
        &db,
        &report,
        &acked,
        &[&a, &b],
        &more,
    )
    .await;
    let transfers: Vec<String> = cluster
        .log_text(3)
        .lines()
        .filter(|l| {
            ["IST", "SST", "position", "gap", "seqno", "grastate"]
                .iter()
                .any(|w| l.contains(w))
        })
        .map(str::to_owned)
        .collect();
    assert!(
        ist,
        "node 3 did not catch up by IST (SST, IST received before the kill {before:?}, after \
         the restart {after:?}):\n{}",
        transfers.join("\n")
    );
}

/// A retention sweep's hold of the lease, from a collector's JSON log.
#[derive(Debug, Clone)]
struct Hold {
    holder: String,
    from: String,
    until: String,
    rows: u64,
}

/// Every "retention sweep done" line of a collector's JSON log.
fn sweeps(log: &std::path::Path) -> Vec<Hold> {
    let text = std::fs::read_to_string(log).expect("the collector's log");
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("retention sweep done"))
        })
        .map(|line| Hold {
            holder: line["holder"].as_str().unwrap_or_default().to_owned(),
            from: line["held_from"].as_str().unwrap_or_default().to_owned(),
            until: line["held_until"].as_str().unwrap_or_default().to_owned(),
            rows: line["rows"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// Two collectors on two nodes sweep every second over 3 000 expired rows: each row is
/// deleted once (the deletions both count add up to 3 000), and no two sweeps hold the lease
/// at once (their held intervals, logged by each, never overlap).
#[tokio::test(flavor = "multi_thread")]
async fn two_sweepers_on_two_nodes_delete_each_row_once_and_never_at_once() {
    const EXPIRED: u32 = 3_000;
    let mut guard = galera::shared().await;
    let cluster = guard.as_mut().expect("the cluster");
    let db = database(cluster).await;
    let values: Vec<String> = (1..=EXPIRED)
        .map(|n| format!("(X'{n:032x}', 'web', '2024-01-01 00:00:00', '/old')"))
        .collect();
    db.execute(&format!(
        "INSERT INTO page_visits (event_id, service, `timestamp`, page_path) VALUES {}",
        values.join(", ")
    ))
    .await;
    db.execute(
        "INSERT INTO page_visits (event_id, service, `timestamp`, page_path) \
         VALUES (X'ffffffffffffffffffffffffffffffff', 'web', UTC_TIMESTAMP(), '/recent')",
    )
    .await;
    let retention = [
        "--retention-days",
        "30",
        "--retention-interval-secs",
        "1",
        "--retention-batch-size",
        "50",
        "--log-format",
        "json",
    ];
    let one = collector(&node_url(cluster, 1, &db), "sweeper-1", &retention);
    let two = collector(&node_url(cluster, 2, &db), "sweeper-2", &retention);
    let (a, b) = (one.start(), two.start());
    poll::until(
        "every expired row deleted",
        Duration::from_secs(60),
        || db.count("page_visits"),
        |rows| *rows == 1,
    )
    .await;
    // More rounds, finding nothing, each collector trying every second.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let deleted = |metrics: &str| {
        value(
            metrics,
            "usage_collector_rows_deleted_total{table=\"page_visits\"}",
        )
        .unwrap_or(0.0)
    };
    let (by_a, by_b) = (deleted(&a.metrics().await), deleted(&b.metrics().await));
    a.terminate(Duration::from_secs(20)).await;
    b.terminate(Duration::from_secs(20)).await;
    let mut holds: Vec<Hold> = sweeps(&one.log)
        .into_iter()
        .chain(sweeps(&two.log))
        .collect();
    // RFC 3339 times in UTC with the same precision compare as text.
    holds.sort_by(|x, y| x.from.cmp(&y.from));
    let overlaps: Vec<(&Hold, &Hold)> = holds
        .windows(2)
        .filter(|w| w[1].from <= w[0].until)
        .map(|w| (&w[0], &w[1]))
        .collect();
    let swept_by = |prefix: &str| {
        holds
            .iter()
            .filter(|h| h.holder.starts_with(prefix))
            .count()
    };
    let logged: u64 = holds.iter().map(|h| h.rows).sum();
    println!(
        "two sweepers: expired rows {EXPIRED} / deleted by collector 1 {by_a}, by collector 2 \
         {by_b} (logged {logged}) / rows left 1 / sweeps {} (collector 1 {}, collector 2 {}) / \
         overlapping holds {}",
        holds.len(),
        swept_by("sweeper-1-"),
        swept_by("sweeper-2-"),
        overlaps.len()
    );
    assert_eq!(
        by_a + by_b,
        f64::from(EXPIRED),
        "each expired row deleted once"
    );
    assert_eq!(logged, u64::from(EXPIRED));
    assert!(holds.len() >= 2, "{holds:?}");
    assert!(
        overlaps.is_empty(),
        "two sweeps held the lease at once: {overlaps:?}"
    );
    assert!(
        holds
            .iter()
            .all(|h| !h.from.is_empty() && !h.until.is_empty()),
        "{holds:?}"
    );
    assert_eq!(db.count("page_visits").await, 1, "the recent row stays");
}

/// The cluster takes at most 200 rows and 256 KiB per transaction; requests of 2 000 events
/// arrive, batches of up to 5 000. The writer cuts each batch into transactions within the
/// limits, so none is refused. Then node 1's limit drops to 40 rows behind the collector's
/// back: its transactions are refused for their size, written in halves, never dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn batches_larger_than_the_write_set_limits_are_split_not_refused() {
    let mut guard = galera::shared().await;
    let cluster = guard.as_mut().expect("the cluster");
    let db = database(cluster).await;
    for node in 1..=cluster.len() {
        cluster
            .execute(
                node,
                "SET GLOBAL wsrep_max_ws_rows = 200, wsrep_max_ws_size = 262144",
            )
            .await;
    }
    let config = collector(
        &node_url(cluster, 1, &db),
        "collector-1",
        &["--batch-size", "5000"],
    );
    let a = config.start_ready().await;
    let load = Load::start(&config.endpoint(), 2, 2_000, Duration::from_millis(200));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (first, first_acked) = load.stop(Duration::from_secs(30)).await;
    a.wait_drained(Duration::from_secs(90)).await;
    let refused_within_limits = failures(&[&a], "write_set_too_large").await;

    cluster
        .execute(1, "SET GLOBAL wsrep_max_ws_rows = 40")
        .await;
    let load = Load::start(&config.endpoint(), 2, 2_000, Duration::from_millis(200));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (second, second_acked) = load.stop(Duration::from_secs(30)).await;
    a.wait_drained(Duration::from_secs(120)).await;
    let refused_below = failures(&[&a], "write_set_too_large").await - refused_within_limits;
    let batches = value(
        &a.metrics().await,
        "usage_collector_batch_write_duration_seconds_count",
    )
    .unwrap_or(0.0);
    let report = Report {
        sent: first.sent + second.sent,
        acknowledged: first.acknowledged + second.acknowledged,
        failed: first.failed + second.failed,
        ..first
    };
    let acked: Vec<String> = first_acked.into_iter().chain(second_acked).collect();
    let more = format!(
        " / transactions committed {batches} / refused for their size within the limits read \
         at start {refused_within_limits}, after the limit dropped {refused_below}"
    );
    assert_exact("write-set limits", &db, &report, &acked, &[&a], &more).await;
    assert_eq!(
        refused_within_limits, 0.0,
        "a transaction the writer cut to the limits was refused"
    );
    assert!(
        refused_below > 0.0,
        "the lowered limit refused nothing: the reactive split was not exercised"
    );
}

/// A collector's URL names nodes 2, 3 and 1; it writes to node 2 under load when node 2
/// leaves the primary component (isolated; the server keeps running and answering). The
/// collector moves to node 3 within seconds, counts the move and says which host it uses;
/// nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread")]
async fn a_collector_moves_to_the_next_node_when_its_node_leaves_the_cluster() {
    let mut guard = galera::shared().await;
    let cluster = guard.as_mut().expect("the cluster");
    let db = database(cluster).await;
    let url = cluster.multi_host_url(&[2, 3, 1], db.name());
    let config = collector(&url, "collector-failover", &[]);
    let a = config.start_ready().await;
    let host = |n: usize| {
        format!(
            "usage_collector_database_host{{host=\"{}\"}}",
            cluster.sql_addr(n)
        )
    };
    let (node2, node3) = (host(2), host(3));
    let metrics = a.metrics().await;
    assert_eq!(value(&metrics, &node2), Some(1.0), "{metrics}");
    assert_eq!(value(&metrics, &node3), Some(0.0));
    assert_eq!(
        value(&metrics, "usage_collector_database_failovers_total"),
        Some(0.0)
    );
    let load = Load::start(&config.endpoint(), 4, 20, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let isolated = Instant::now();
    let watch = async {
        let moved = poll::until(
            "the collector moved to node 3",
            Duration::from_secs(60),
            || a.metrics(),
            |m| {
                value(m, "usage_collector_database_failovers_total") >= Some(1.0)
                    && value(m, &node3) == Some(1.0)
            },
        )
        .await;
        let moved_after = isolated.elapsed();
        let written = sum(&moved, "usage_collector_events_written_total");
        poll::until(
            "events written through node 3",
            Duration::from_secs(60),
            || events_written(&a),
            |now| *now > written,
        )
        .await;
        (moved_after, isolated.elapsed())
    };
    let isolate = async {
        cluster.isolate(2).await;
        isolated.elapsed().as_secs_f64()
    };
    let (left_after, (moved_after, writing_after)) = tokio::join!(isolate, watch);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (report, acked) = load.stop(Duration::from_secs(30)).await;
    a.wait_drained(Duration::from_secs(60)).await;
    let metrics = a.metrics().await;
    let failovers = value(&metrics, "usage_collector_database_failovers_total").unwrap_or(0.0);
    let not_ready = failures(&[&a], "node_not_ready").await;
    let log = std::fs::read_to_string(&config.log).unwrap_or_default();
    let warned = log
        .lines()
        .filter(|l| l.contains("moving to the next host"))
        .collect::<Vec<_>>();
    let more = format!(
        " / moved to node 3 {:.2} s after node 2 was isolated, writing again after {:.2} s \
         (node 2 said it left after {left_after:.1} s) / failovers {failovers} / \
         node_not_ready answers {not_ready}",
        moved_after.as_secs_f64(),
        writing_after.as_secs_f64(),
    );
    assert_exact("failover", &db, &report, &acked, &[&a], &more).await;
    assert_eq!(failovers, 1.0, "one move, however many streams failed");
    assert_eq!(value(&metrics, &node3), Some(1.0));
    assert_eq!(value(&metrics, &node2), Some(0.0));
    assert!(
        moved_after < Duration::from_secs(20),
        "the collector took {moved_after:?} to move"
    );
    assert_eq!(warned.len(), 1, "one WARN line per move: {warned:?}");
    let line = warned[0];
    assert!(
        line.contains(&cluster.sql_addr(2).to_string())
            && line.contains(&cluster.sql_addr(3).to_string()),
        "{line}"
    );
    cluster.rejoin(2).await;
}

/// Every table the migrations create has a primary key (Galera needs one on every table it
/// replicates rows of; Vitess and TiDB expect one).
#[tokio::test]
async fn every_table_has_a_primary_key() {
    let db = TestDb::mysql().await;
    migrate(db.url()).await;
    let tables = db
        .texts(
            "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES t WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_TYPE = 'BASE TABLE'",
        )
        .await;
    let without = db
        .texts(
            "SELECT CAST(t.TABLE_NAME AS CHAR) FROM information_schema.TABLES t WHERE \
             t.TABLE_SCHEMA = DATABASE() AND t.TABLE_TYPE = 'BASE TABLE' AND NOT EXISTS (\
             SELECT 1 FROM information_schema.TABLE_CONSTRAINTS c WHERE \
             c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME \
             AND c.CONSTRAINT_TYPE = 'PRIMARY KEY')",
        )
        .await;
    assert!(tables.len() >= 10, "{tables:?}");
    assert_eq!(
        without,
        Vec::<Vec<Option<String>>>::new(),
        "tables without a primary key"
    );
}

/// A URL whose first host is down: the collector moves to the second at startup and becomes
/// ready, counting one move; on one server, no cluster needed.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_first_host_is_passed_over() {
    let db = TestDb::mysql().await;
    migrate(db.url()).await;
    let (host, port) = usage_pipeline_tests::db::server_host_port();
    let dead = usage_pipeline_tests::process::free_addr();
    let url = format!("mysql://root@{dead},{host}:{port}/{}", db.name());
    let config = collector(&url, "collector-two-hosts", &[]);
    let a = config.start_ready().await;
    let metrics = a.metrics().await;
    assert_eq!(
        value(&metrics, "usage_collector_database_failovers_total"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &metrics,
            &format!("usage_collector_database_host{{host=\"{host}:{port}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        value(
            &metrics,
            &format!("usage_collector_database_host{{host=\"{dead}\"}}")
        ),
        Some(0.0)
    );
    let load = Load::start(&config.endpoint(), 2, 10, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (report, acked) = load.stop(Duration::from_secs(20)).await;
    a.wait_drained(Duration::from_secs(30)).await;
    assert_exact("dead first host", &db, &report, &acked, &[&a], "").await;
}

/// A URL with one host behaves as before: through an outage the collector waits on its
/// spool for that host and never moves.
#[tokio::test(flavor = "multi_thread")]
async fn a_single_host_url_never_moves() {
    let db = TestDb::mysql().await;
    migrate(db.url()).await;
    let (proxy, url) = usage_pipeline_tests::proxy::Proxy::in_front_of(&db).await;
    let config = collector(&url, "collector-one-host", &[]);
    let a = config.start_ready().await;
    let load = Load::start(&config.endpoint(), 2, 10, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.cut();
    poll::until(
        "the outage reported",
        Duration::from_secs(20),
        || a.get("/health/ready"),
        |(_, body)| body.contains("\"database\":\"failed: "),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    let (report, acked) = load.stop(Duration::from_secs(30)).await;
    a.wait_drained(Duration::from_secs(30)).await;
    let metrics = a.metrics().await;
    assert_eq!(
        value(&metrics, "usage_collector_database_failovers_total"),
        Some(0.0)
    );
    assert_eq!(
        value(
            &metrics,
            &format!("usage_collector_database_host{{host=\"{}\"}}", proxy.addr)
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_exact(
        "single host through an outage",
        &db,
        &report,
        &acked,
        &[&a],
        "",
    )
    .await;
}

/// One throughput measurement: collectors started from `configs`, sent `events` page visits
/// in all (shared evenly) by the load generator's engine (`usage-load`) as fast as they take
/// them.
struct Throughput {
    /// Events the load generators had acknowledged (all of them written once, checked).
    acknowledged: u64,
    /// Seconds until the last was acknowledged (into the spools).
    received_in: f64,
    /// Seconds from the first send until the last event was in the database.
    written_in: f64,
    /// Rows per second the collectors wrote once the load generators were done (the database
    /// path alone, not sharing the CPU with the senders).
    drain_rate: f64,
}

async fn throughput(db: &TestDb, configs: &[&Config], events: u64) -> Throughput {
    use usage_pipeline_tests::loadgen::{self, Attributes, Signal};
    let mut collectors = Vec::new();
    for config in configs {
        collectors.push(config.start_ready().await);
    }
    let started = Instant::now();
    let loads: Vec<_> = configs
        .iter()
        .map(|config| {
            tokio::spawn(loadgen::run(loadgen::Plan {
                endpoint: config.endpoint(),
                signal: Signal::Logs,
                batch: 512,
                in_flight: 8,
                connections: 2,
                duration_secs: 600,
                rate: 0,
                records: events / configs.len() as u64,
                duplicates: false,
                attributes: Attributes::Full,
                derived_ids: false,
            }))
        })
        .collect();
    let mut acknowledged = 0;
    for load in loads {
        let outcome = load.await.expect("load task").expect("load run");
        assert_eq!(outcome.failed, 0, "{}", outcome.table());
        acknowledged += outcome.accepted;
    }
    let received_in = started.elapsed();
    let mut written_then = 0.0;
    for collector in &collectors {
        written_then += events_written(collector).await;
    }
    for collector in &collectors {
        collector.wait_drained(Duration::from_secs(900)).await;
    }
    let written_in = started.elapsed();
    assert_eq!(
        db.count("page_visits").await as u64,
        acknowledged,
        "every event written once"
    );
    Throughput {
        acknowledged,
        received_in: received_in.as_secs_f64(),
        written_in: written_in.as_secs_f64(),
        drain_rate: (acknowledged as f64 - written_then)
            / (written_in - received_in).as_secs_f64().max(0.001),
    }
}

/// Rows per second into one MariaDB server, into the cluster through one collector, and
/// through two collectors on two nodes, on this machine. A measurement, not a check: run by
/// hand in release mode (docs/scaling.md); `USAGE_CLUSTER_BENCH_EVENTS` (default 300 000)
/// events each; `USAGE_CLUSTER_BENCH_COLLECTOR` names another collector binary to measure.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, run by hand: cargo test --release -p usage-pipeline-tests --test cluster -- --ignored throughput"]
async fn throughput_on_one_server_and_on_the_cluster() {
    let events: u64 = std::env::var("USAGE_CLUSTER_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300_000);
    // Another build to compare with (an earlier commit's), else this one.
    let binary = std::env::var("USAGE_CLUSTER_BENCH_COLLECTOR").unwrap_or_else(|_| BIN.to_owned());
    // The collectors migrate (one at a time), so a binary with other migrations runs too.
    let collector = |url: &str, instance: &str| {
        let mut config = collector(url, instance, &[]);
        config.0.binary = binary.clone().into();
        config
    };
    let mut rows = Vec::new();
    {
        let db = TestDb::mysql().await;
        let one = collector(db.url(), "bench-server");
        rows.push((
            "one server, 1 collector",
            throughput(&db, &[&one], events).await,
        ));
    }
    let mut guard = galera::shared().await;
    let cluster = guard.as_mut().expect("the cluster");
    {
        let db = TestDb::mysql_on(&cluster.url(1)).await;
        let one = collector(&node_url(cluster, 1, &db), "bench-1");
        rows.push((
            "3-node Galera, 1 collector",
            throughput(&db, &[&one], events).await,
        ));
    }
    {
        let db = TestDb::mysql_on(&cluster.url(1)).await;
        let one = collector(&node_url(cluster, 1, &db), "bench-1");
        let two = collector(&node_url(cluster, 2, &db), "bench-2");
        rows.push((
            "3-node Galera, 2 collectors on 2 nodes",
            throughput(&db, &[&one, &two], events).await,
        ));
    }
    println!(
        "| database | events | acknowledged in s | all written in s | rows/s end to end | \
         rows/s written after the load |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, t) in rows {
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.0} | {:.0} |",
            t.acknowledged,
            t.received_in,
            t.written_in,
            t.acknowledged as f64 / t.written_in,
            t.drain_rate
        );
    }
}

/// Collectors migrating one database at once on two nodes (as a StatefulSet's pods starting
/// with `--migrate` do): each migration runs once, under the `migrate` lease row (a `GET_LOCK`
/// would be taken on each node apart).
#[tokio::test(flavor = "multi_thread")]
async fn collectors_migrating_at_once_on_two_nodes_apply_each_migration_once() {
    let mut guard = galera::shared().await;
    let cluster = guard.as_mut().expect("the cluster");
    let db = TestDb::mysql_on(&cluster.url(1)).await;
    let (one, two) = (node_url(cluster, 1, &db), node_url(cluster, 2, &db));
    let started = std::time::Instant::now();
    tokio::join!(migrate(&one), migrate(&two), migrate(&one));
    let versions = db
        .texts(
            "SELECT CAST(version AS CHAR), CAST(COUNT(*) AS CHAR), CAST(MIN(success) AS CHAR) \
             FROM _sqlx_migrations GROUP BY version ORDER BY version",
        )
        .await;
    let expected = usage_collector::sink::mysql::migrations::migrator()
        .iter()
        .count();
    assert_eq!(versions.len(), expected, "{versions:?}");
    for row in &versions {
        assert_eq!(row[1].as_deref(), Some("1"), "applied once: {versions:?}");
        assert_eq!(row[2].as_deref(), Some("1"), "applied whole: {versions:?}");
    }
    let lease = db
        .texts("SELECT holder FROM collector_leases WHERE name = 'migrate'")
        .await;
    assert_eq!(lease, [vec![Some(String::new())]], "released");
    println!(
        "three migrations at once on two nodes: {} versions, each once, in {:?}",
        versions.len(),
        started.elapsed()
    );
}
