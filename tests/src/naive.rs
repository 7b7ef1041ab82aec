//! The database server measured from outside, and the naive client the benches compare the
//! collector with: page-visit rows as 1000-row multi-row INSERTs from a minimal sqlx client.

use std::time::{Duration, Instant};

use sqlx::{MySqlPool, QueryBuilder};

use crate::db::TestDb;
use crate::measure::usage;

/// The database server's process, found by name (MariaDB or MySQL on this machine).
pub fn database_pid() -> Option<u32> {
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
pub fn database_cpu() -> f64 {
    database_pid().map_or(0.0, |pid| usage(pid).0)
}

/// Waits until the database server is idle — done flushing what the previous measurement
/// wrote — so each measurement starts from a quiet server and pays only for its own work: under
/// 5 % of a core over half a second, for at most two minutes.
pub async fn settle() {
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
pub const RAW_CONNECTIONS: u64 = 2;
/// Rows per INSERT of the raw client.
pub const RAW_ROWS: u64 = 1000;
/// Sessions each raw writer's rows belong to, as each load generator sender's requests do.
pub const RAW_SESSIONS: u64 = 64;

/// Writes `events` page-visit rows as 1000-row INSERTs from a minimal client, with random
/// (v4) or time-ordered (v7) ids. Returns (rows per second, database CPU seconds).
pub async fn raw_inserts(db: &TestDb, events: u64, ordered: bool) -> (f64, f64) {
    let pool = MySqlPool::connect(db.url()).await.expect("connect");
    let before = db.count("page_visits").await;
    let per_connection = events / RAW_CONNECTIONS;
    let at = time::OffsetDateTime::now_utc();
    let at = time::PrimitiveDateTime::new(at.date(), at.time());
    settle().await;
    let cpu_before = database_cpu();
    let started = Instant::now();
    let writers: Vec<_> = (0..RAW_CONNECTIONS)
        .map(|w| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.acquire().await.expect("connection");
                let mut done = 0;
                while done < per_connection {
                    let n = (per_connection - done).min(RAW_ROWS);
                    let mut query = QueryBuilder::new(
                        "INSERT INTO page_visits (event_id, service, session_id, user_id, `timestamp`, page_path, \
                         referrer, user_agent, ip_address) ",
                    );
                    query.push_values(0..n, |mut row, i| {
                        let k = w * per_connection + done + i;
                        let id = if ordered {
                            uuid::Uuid::now_v7()
                        } else {
                            uuid::Uuid::new_v4()
                        };
                        row.push_bind(id.as_bytes().to_vec())
                            .push_bind("usage-load")
                            .push_bind(format!("load-session-{w}-{}", k % RAW_SESSIONS))
                            .push_bind(format!("user-{}", k % 1000))
                            .push_bind(at)
                            .push_bind(format!("/load/{w}/{k}"))
                            .push_bind("https://example.org/ide/programs")
                            .push_bind("Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0")
                            .push_bind("203.0.113.7");
                    });
                    query.build().execute(&mut *conn).await.expect("insert");
                    done += n;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let db_cpu = database_cpu() - cpu_before;
    let rows = (db.count("page_visits").await - before) as f64;
    pool.close().await;
    (rows / elapsed, db_cpu)
}
