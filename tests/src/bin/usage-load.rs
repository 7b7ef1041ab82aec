//! `usage-load`: a load generator for the usage collector. Sends OTLP/gRPC log records (or
//! spans) as fast as it can or at a fixed rate, with every event unique unless asked for
//! duplicates, retries refusals the way the OpenTelemetry SDKs do, and prints records/s,
//! request latency percentiles, and accepted / refused / rejected counts.
//!
//! ```sh
//! cargo run --release -p usage-pipeline-tests --bin usage-load -- \
//!     --endpoint http://127.0.0.1:4317 --batch 512 --in-flight 8 --duration-secs 10
//! ```

use clap::Parser;
use usage_pipeline_tests::loadgen::{self, Plan};

/// Sends usage events to a collector and reports what happened.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    plan: Plan,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match loadgen::run(Args::parse().plan).await {
        Ok(outcome) => {
            println!("{}", outcome.table());
            if outcome.failed > 0 {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("usage-load: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
