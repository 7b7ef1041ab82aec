//! The hostile-input bench: what requests chosen to hurt cost the collector, next to a normal
//! load. Each scenario runs against a fresh `usage-collector` process with default settings and
//! prints its peak RSS, the time the hostile requests took in the server, and the slowest
//! `/health/live` answer meanwhile (probed every 20 ms).
//!
//! Run: `cargo bench -p usage-pipeline-tests --bench hostile` (release build; no database is
//! needed: the collector writes to the blackhole sink, or, for the outage, to a database that
//! does not answer). The header names the machine.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use prost::bytes::Bytes;
use usage_pipeline_tests::fixtures::{
    T0, empty_records, event, kv, large_feature_uses, logs_request,
};
use usage_pipeline_tests::loadgen::{self, Attributes, Plan, Signal, send_encoded_with};
use usage_pipeline_tests::measure::{LivenessProbe, machine, peak_rss_mib};
use usage_pipeline_tests::process::{CollectorProcess, ProcessConfig};

const BIN: &str = env!("CARGO_BIN_EXE_usage-collector-e2e");

async fn start(dir: &Path, name: &str, database: &str) -> (ProcessConfig, CollectorProcess) {
    let config = ProcessConfig::new(BIN, database, &dir.join(name));
    let mut collector = config.start();
    collector.wait_live(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    (config, collector)
}

/// Sends `bodies` at once; (acknowledged, refused with which codes).
async fn send_all(endpoint: &str, bodies: Vec<Bytes>, gzip: bool) -> String {
    let mut sends = tokio::task::JoinSet::new();
    for body in bodies {
        let endpoint = endpoint.to_owned();
        sends.spawn(async move { send_encoded_with(&endpoint, Signal::Logs, body, gzip).await });
    }
    let (mut ok, mut refused) = (0, Vec::new());
    while let Some(result) = sends.join_next().await {
        match result.expect("send task") {
            Ok(_) => ok += 1,
            Err(status) => refused.push(format!("{:?}", status.code())),
        }
    }
    refused.sort();
    refused.dedup();
    if refused.is_empty() {
        format!("{ok} acknowledged")
    } else {
        format!("{ok} acknowledged, refused: {}", refused.join(", "))
    }
}

struct Row {
    scenario: String,
    outcome: String,
    rss: f64,
    server: Duration,
    live: Duration,
}

async fn scenario(
    dir: &Path,
    name: &str,
    database: &str,
    hostile: impl AsyncFnOnce(&ProcessConfig, &CollectorProcess) -> String,
) -> Row {
    let (config, collector) = start(dir, name, database).await;
    let probe = LivenessProbe::start(config.admin);
    let started = Instant::now();
    let outcome = hostile(&config, &collector).await;
    let server = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let live = probe.stop();
    Row {
        scenario: name.to_owned(),
        outcome,
        rss: peak_rss_mib(collector.pid()),
        server,
        live,
    }
}

#[tokio::main]
async fn main() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("usage_hostile_{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("bench folder");
    println!("# Hostile-input bench — {}", machine());
    println!(
        "# default settings; each scenario on a fresh collector; liveness probed every 20 ms\n"
    );
    let blackhole = "blackhole://";
    let mut rows = Vec::new();

    rows.push(
        scenario(
            &dir,
            "normal load: 512 records/request, 8 in flight, 10 s",
            blackhole,
            async |config, _| {
                let outcome = loadgen::run(Plan {
                    endpoint: config.endpoint(),
                    signal: Signal::Logs,
                    batch: 512,
                    in_flight: 8,
                    connections: 2,
                    duration_secs: 10,
                    rate: 0,
                    records: 0,
                    duplicates: false,
                    attributes: Attributes::Full,
                    derived_ids: false,
                })
                .await
                .expect("load");
                format!(
                    "{:.0} records/s, p99 {:.1} ms",
                    outcome.records_per_second, outcome.p99_ms
                )
            },
        )
        .await,
    );
    rows.push(
        scenario(
            &dir,
            "gzip: 16 million empty records (32 MB inflated) ×8",
            blackhole,
            async |config, _| {
                send_all(
                    &config.endpoint(),
                    vec![Bytes::from(empty_records(16_000_000)); 8],
                    true,
                )
                .await
            },
        )
        .await,
    );
    rows.push(
        scenario(
            &dir,
            "gzip: 2 million empty records (4 MB inflated) ×8",
            blackhole,
            async |config, _| {
                send_all(
                    &config.endpoint(),
                    vec![Bytes::from(empty_records(2_000_000)); 8],
                    true,
                )
                .await
            },
        )
        .await,
    );
    rows.push(
        scenario(
            &dir,
            "1 MiB resource attribute, 2 000 records without event.id ×8",
            blackhole,
            async |config, _| {
                let records: Vec<_> = (0..2_000u64)
                    .map(|i| {
                        event(
                            "page_visit",
                            T0 + i,
                            vec![kv("url.path", format!("/p/{i}"))],
                        )
                    })
                    .collect();
                let mut request = logs_request("heavy", records);
                if let Some(resource) = request.resource_logs[0].resource.as_mut() {
                    resource.attributes.push(kv("blob", "b".repeat(1 << 20)));
                }
                send_all(
                    &config.endpoint(),
                    vec![Bytes::from(request.encode_to_vec()); 8],
                    false,
                )
                .await
            },
        )
        .await,
    );
    rows.push(
        scenario(
            &dir,
            "20 000 distinct event names in one request ×4",
            blackhole,
            async |config, _| {
                let records: Vec<_> = (0..20_000u64)
                    .map(|i| {
                        event(
                            &format!("custom_{i}"),
                            T0 + i,
                            vec![kv("event.id", uuid::Uuid::now_v7().to_string())],
                        )
                    })
                    .collect();
                let body = Bytes::from(logs_request("names", records).encode_to_vec());
                send_all(&config.endpoint(), vec![body; 4], false).await
            },
        )
        .await,
    );
    rows.push(
        scenario(
            &dir,
            "60 KB service and event names ×4, then /metrics",
            blackhole,
            async |config, collector| {
                let mut bodies = Vec::new();
                for i in 0..4 {
                    let name = format!("{i}{}", "n".repeat(60_000));
                    let request = logs_request(
                        &format!("{i}{}", "s".repeat(60_000)),
                        vec![event(&name, T0, vec![])],
                    );
                    bodies.push(Bytes::from(request.encode_to_vec()));
                }
                let sent = send_all(&config.endpoint(), bodies, false).await;
                format!(
                    "{sent}; /metrics {} bytes",
                    collector.get("/metrics").await.1.len()
                )
            },
        )
        .await,
    );
    rows.push(
        scenario(
            &dir,
            "database down: 40 requests of 4 MB into the spool",
            "mysql://nobody@127.0.0.1:1/none",
            async |config, _| {
                let body = Bytes::from(large_feature_uses("backlog").encode_to_vec());
                let mut acknowledged = 0;
                for _ in 0..40 {
                    if send_encoded_with(&config.endpoint(), Signal::Logs, body.clone(), false)
                        .await
                        .is_ok()
                    {
                        acknowledged += 1;
                    }
                }
                format!("{acknowledged} acknowledged")
            },
        )
        .await,
    );

    println!("| scenario | outcome | peak RSS MiB | time in server | slowest /health/live |");
    println!("| --- | --- | --- | --- | --- |");
    for row in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} ms | {:.1} ms |",
            row.scenario,
            row.outcome,
            row.rss,
            row.server.as_secs_f64() * 1000.0,
            row.live.as_secs_f64() * 1000.0
        );
    }
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("could not remove {}: {e}", dir.display());
    }
}
