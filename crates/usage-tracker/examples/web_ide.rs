//! Plays the web IDE: sessions with page visits, program runs (some failing, some recorded as
//! spans), feature use and session ends, sent to a collector; prints what it sent.
//!
//! ```sh
//! cargo run -p usage-collector &                     # a collector on localhost:4317
//! OTEL_SERVICE_NAME=web-ide cargo run -p usage-tracker --example web_ide -- --sessions 5
//! ```
//!
//! The endpoint comes from `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://localhost:4317`).
//! The pattern is fixed, so a test can predict every row: session `i` has `i % 3 + 1` page
//! visits, two program runs (one log event that succeeds; one span that fails when `i` is odd),
//! one feature use, a custom `share_link` event when `i` is even, and an end.

use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;
use usage_tracker::{
    FeatureUse, PageVisit, ProgramExecution, ProgramRun, SessionStart, TrackerBuilder,
};

fn main() -> std::process::ExitCode {
    let mut sessions = 5u32;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().map(|v| v.parse())) {
            ("--sessions", Some(Ok(n))) => sessions = n,
            _ => {
                eprintln!("usage: web_ide [--sessions N]");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let tracker = match TrackerBuilder::from_env()
        .map_err(usage_tracker::InitError::from)
        .and_then(|b| b.start())
    {
        Ok(tracker) => tracker,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The app's own subscriber (here: plain stdout logs) with the tracker's layer beside it.
    let subscriber = tracing_subscriber::registry()
        .with(tracker.layer())
        .with(tracing_subscriber::fmt::layer().with_target(true));
    let sent = tracing::subscriber::with_default(subscriber, || play(sessions));
    let stats = tracker.shutdown();
    println!("sent: {sent}");
    println!(
        "stats: recorded {} exported {} failed {} dropped {} invalid {}",
        stats.recorded, stats.exported, stats.failed, stats.dropped, stats.invalid
    );
    println!("health: {:?}", tracker.health());
    std::process::ExitCode::SUCCESS
}

/// Records every session's events; returns a summary of what was sent.
fn play(sessions: u32) -> String {
    let (mut visits, mut runs, mut failed, mut spans, mut features, mut custom) =
        (0, 0, 0, 0, 0, 0);
    for i in 0..sessions {
        let id = format!("demo-session-{i}");
        let session = Some(id.as_str());
        usage_tracker::session_start(SessionStart {
            session_id: &id,
            user_id: Some("demo-user"),
            user_agent: Some("Mozilla/5.0 (demo)"),
            client_address: Some("192.0.2.10"),
        });
        for page in 0..(i % 3 + 1) {
            let path = format!("/ide/page/{page}");
            usage_tracker::page_visit(PageVisit {
                session_id: session,
                referrer: Some("https://example.org/"),
                ..PageVisit::new(&path)
            });
            visits += 1;
        }
        usage_tracker::program_execution(ProgramExecution {
            session_id: session,
            lines: Some(10),
            lines_executed: Some(25),
            duration_ms: Some(3),
            ..Default::default()
        });
        let run = ProgramRun::start(session);
        run.lines(4).lines_executed(2);
        std::thread::sleep(Duration::from_millis(2));
        if i % 2 == 1 {
            run.failed("?SYNTAX ERROR IN 20");
            failed += 1;
        }
        run.finish();
        runs += 2;
        spans += 1;
        usage_tracker::feature_use(FeatureUse {
            session_id: session,
            data_json: Some(r#"{"interval":30}"#),
            ..FeatureUse::new("autosave")
        });
        features += 1;
        if i % 2 == 0 {
            usage_tracker::event!("share_link", "session.id" = session, "link.kind" = "public");
            custom += 1;
        }
        tracing::info!(
            session = session,
            "the app's own log line: not a usage event"
        );
        usage_tracker::session_end(&id);
    }
    format!(
        "{sessions} sessions, {visits} page visits, {runs} program runs ({failed} failed, {spans} as spans), \
         {features} feature uses, {custom} custom events"
    )
}
