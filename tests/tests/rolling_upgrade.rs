//! A rolling upgrade on one MariaDB schema: a collector of the previous release (built from its
//! commit by scripts/previous-release) writes under load; this release migrates the schema
//! while it writes; collectors of both releases then write side by side (some events sent to
//! both, as a client retrying across replicas does); the old one drains and stops. Every
//! acknowledged event is written once, the summaries equal a recount, nothing is dead-lettered,
//! and `check` of both releases accepts the schema.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use usage_pipeline_tests::clients::repo_root;
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::load::{Load, check_present, check_session_counters};
use usage_pipeline_tests::process::{ProcessConfig, temp_dir};
use usage_pipeline_tests::summaries::assert_summaries_match;

const NEW: &str = env!("CARGO_BIN_EXE_usage-collector-e2e");

/// The previous release's collector; panics naming the script when it is not built.
fn previous_release() -> (PathBuf, String) {
    let dir = repo_root().join("tests/previous-release");
    let binary = dir.join("usage-collector");
    let release = std::fs::read_to_string(dir.join("release")).unwrap_or_default();
    assert!(
        binary.is_file() && !release.is_empty(),
        "{} is missing: run scripts/previous-release (scripts/test runs it)",
        binary.display()
    );
    (binary, release.trim().to_owned())
}

fn run(binary: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(binary)
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .expect("run a collector command");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn both_releases_write_side_by_side_while_the_schema_is_migrated() {
    let (old_binary, old_release) = previous_release();
    let db = TestDb::mysql().await;
    let dir = temp_dir("usage_rolling_upgrade");

    // The previous release on its own schema, under load.
    let old_config = ProcessConfig::new(old_binary.to_str().unwrap(), db.url(), &dir.join("old"));
    let old = old_config.start_ready().await;
    let old_load = Load::start(&old_config.endpoint(), 2, 20, Duration::from_millis(20));
    usage_pipeline_tests::poll::until(
        "the old release writing",
        Duration::from_secs(30),
        || async { db.count("page_visits").await },
        |rows| *rows > 100,
    )
    .await;

    // This release migrates the schema while the old one writes.
    let (ok, out) = run(
        std::path::Path::new(NEW),
        &["migrate", "--database-url", db.url()],
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        std::path::Path::new(NEW),
        &["check", "--database-url", db.url()],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "serves collector releases {old_release} to 0.2.0 (this one)"
        )),
        "{out}"
    );
    let (ok, out) = run(&old_binary, &["check", "--database-url", db.url()]);
    assert!(
        ok,
        "the old release still accepts the migrated schema:\n{out}"
    );

    // This release beside it; some events sent to both, as a client retrying elsewhere does.
    let new_config = ProcessConfig::new(NEW, db.url(), &dir.join("new"));
    let new = new_config.start_ready().await;
    let new_load = Load::start(&new_config.endpoint(), 2, 20, Duration::from_millis(20));
    let both = logs_request(
        "web-ide",
        (0..50)
            .map(|n| {
                event(
                    "page_visit",
                    T0 + n * SECOND,
                    vec![
                        kv("event.id", format!("both-{n}").as_str()),
                        kv("session.id", "both"),
                        kv("url.path", "/both"),
                    ],
                )
            })
            .collect(),
    );
    for endpoint in [old_config.endpoint(), new_config.endpoint()] {
        let answer = send_logs(&endpoint, both.clone(), false).await.unwrap();
        assert_eq!(answer.partial_success, None);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The old release drains and stops (SIGTERM, as Kubernetes sends); this one goes on.
    let (old_report, old_acked) = old_load.stop(Duration::from_secs(10)).await;
    let (status, _) = old.terminate(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "the old release stopped cleanly: {status}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (new_report, new_acked) = new_load.stop(Duration::from_secs(10)).await;
    new.wait_drained(Duration::from_secs(30)).await;

    let acked: Vec<String> = old_acked.into_iter().chain(new_acked).collect();
    let (present, duplicated) = check_present(&db, &acked).await;
    println!(
        "old release {old_release}: {old_report:?}; this release: {new_report:?}; \
         acknowledged {}, present {present}, duplicated {duplicated}",
        acked.len()
    );
    assert_eq!(
        present as usize,
        acked.len(),
        "every acknowledged event written"
    );
    assert_eq!(duplicated, 0, "none twice");
    let both_rows = db
        .texts("SELECT CAST(COUNT(*) AS CHAR) FROM page_visits WHERE session_id = 'both'")
        .await;
    assert_eq!(
        both_rows,
        [vec![Some("50".to_owned())]],
        "sent to both, written once"
    );
    let counters = check_session_counters(&db).await;
    assert!(counters.wrong.is_empty(), "{:?}", counters.wrong);
    assert_summaries_match(&db).await;
    assert_eq!(db.count("dead_letters").await, 0);
    drop(new);
    std::fs::remove_dir_all(&dir).ok();
}
