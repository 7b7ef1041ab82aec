//! The command line: `serve` (default), `check`, `migrate`, and the operator's commands:
//! `status`, `dead-letters list|replay`, `rollups rebuild`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::catalog::Current;
use crate::config::{ConfigError, LogFormat, Settings};
use crate::sink::Sink;

/// Receives usage events over OTLP (gRPC or HTTP) and writes them as database rows, exactly once.
#[derive(Debug, Parser)]
#[command(name = "usage-collector", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML settings file; `${VAR}` inside it is replaced by the variable's value
    #[arg(long, env = "USAGE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive events and write them (the default).
    Serve {
        /// Apply migrations before serving.
        #[arg(long, env = "USAGE_MIGRATE")]
        migrate: bool,
    },
    /// Verify the database (connect, query, schema, write permission) and exit 0 only if all pass.
    Check,
    /// Apply the embedded migrations and make the tracking plan's tables, then exit.
    Migrate,
    /// What a running collector is doing: its admin port's /status as a table (or JSON).
    Status {
        /// The collector's admin address.
        #[arg(long, env = "USAGE_ADMIN_URL", default_value = "http://127.0.0.1:9464")]
        admin_url: String,
        /// CA certificates (PEM) of an https admin listener [default: the web's usual roots]
        #[arg(long)]
        admin_ca_file: Option<PathBuf>,
        /// Print the JSON answer as it is (proto/admin.openapi.json).
        #[arg(long)]
        json: bool,
    },
    /// Rows the database refused for good.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// The daily rollup and the session counters.
    #[command(subcommand)]
    Rollups(RollupCommand),
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// Counts by reason, service and table, with the oldest and newest of each.
    List {
        #[command(flatten)]
        filter: DeadLetterArgs,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Writes each one again, exactly once (rollups and counters included); those that fail
    /// again stay with their new reason.
    Replay {
        #[command(flatten)]
        filter: DeadLetterArgs,
        /// JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct DeadLetterArgs {
    /// Only this reason (`row_value`, `not_in_catalogue`, `not_replayable`, …)
    #[arg(long)]
    reason: Option<String>,
    /// Only those kept at or after this time: `2026-12-01` or `2026-12-01T10:00:00Z` (UTC)
    #[arg(long, value_parser = since)]
    since: Option<time::PrimitiveDateTime>,
}

#[derive(Debug, Subcommand)]
enum RollupCommand {
    /// Recompute the daily rollup and the counters of the sessions started on these days from
    /// the raw rows, while collectors write (a day whose rows retention deleted gets the counts
    /// of what is left: rebuild only days within retention).
    Rebuild {
        /// The first day (UTC), `2026-12-01`
        #[arg(long, value_parser = day)]
        from: time::Date,
        /// The last day [default: the first]
        #[arg(long, value_parser = day)]
        to: Option<time::Date>,
    },
}

fn day(text: &str) -> Result<time::Date, String> {
    time::Date::parse(
        text,
        &time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map_err(|e| format!("{text:?} is not a day like 2026-12-01: {e}"))
}

fn since(text: &str) -> Result<time::PrimitiveDateTime, String> {
    if let Ok(day) = day(text) {
        return Ok(time::PrimitiveDateTime::new(day, time::Time::MIDNIGHT));
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.to_offset(time::UtcOffset::UTC))
        .map(|t| time::PrimitiveDateTime::new(t.date(), t.time()))
        .map_err(|e| format!("{text:?} is neither a day (2026-12-01) nor an RFC 3339 time: {e}"))
}

/// Runs the command line; the whole of `main`.
pub fn main() -> ExitCode {
    let parsed = crate::config::parse::<Cli, _>(std::env::args_os(), |var| std::env::var(var).ok())
        .and_then(|(cli, layers)| {
            let settings = cli.settings.finish(&layers)?;
            Ok((cli.command, settings))
        });
    let (command, settings) = match parsed {
        Ok(parsed) => parsed,
        // --help, --version, and clap's own usage errors.
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("usage-collector: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("usage-collector: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // A command's answer (a table, JSON) is its stdout; its log lines go to stderr.
        let answers = !matches!(command, None | Some(Command::Serve { .. }));
        let traces = init_logging(&settings, answers);
        let code = run(
            command.unwrap_or(Command::Serve { migrate: false }),
            settings,
        )
        .await;
        if let Some(provider) = traces {
            // Sends the last spans; the export thread may block, so not on a runtime worker.
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if !matches!(flushed, Ok(Ok(()))) {
                eprintln!("usage-collector: the last spans may not have been sent: {flushed:?}");
            }
        }
        code
    })
}

async fn run(command: Command, settings: Settings) -> ExitCode {
    match command {
        Command::Serve { migrate } => {
            let app = match Application::build(settings, migrate).await {
                Ok(app) => app,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start");
                    return ExitCode::FAILURE;
                }
            };
            match app.run(shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "stopped with an error");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status {
            admin_url,
            admin_ca_file,
            json,
        } => {
            let fetched = crate::ops::status::fetch(
                &admin_url,
                admin_ca_file.as_deref(),
                std::time::Duration::from_secs(10),
            )
            .await;
            match fetched {
                Ok(status) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&status).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Ok(status) => {
                    print!("{}", crate::ops::status::render(&status));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("usage-collector status: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DeadLetters(action) => operate(&settings, Operation::DeadLetters(action)).await,
        Command::Rollups(action) => operate(&settings, Operation::Rollups(action)).await,
        Command::Check | Command::Migrate => {
            let plan = match settings.catalog.load() {
                Ok(plan) => plan,
                Err(e) => {
                    tracing::error!(error = %e, "check failed");
                    return ExitCode::FAILURE;
                }
            };
            let catalog = Current::new(settings.catalog_of(plan));
            let sink = match Sink::open(&settings.database, catalog) {
                Ok(sink) => sink,
                Err(e) => {
                    tracing::error!(error = %e, "check failed");
                    return ExitCode::FAILURE;
                }
            };
            let result = match command {
                Command::Migrate => sink.migrate_step().await.map(drop),
                _ => sink.verify().await.map(drop),
            };
            sink.close().await;
            match result {
                Ok(()) => {
                    tracing::info!(database = %sink.target(), "all steps passed");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(step = e.step.as_str(), "{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

enum Operation {
    DeadLetters(DeadLetterCommand),
    Rollups(RollupCommand),
}

/// Runs an operator's command against the configured database, with the tracking plan in force.
async fn operate(settings: &Settings, operation: Operation) -> ExitCode {
    let plan = match settings.catalog.load() {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("usage-collector: {e}");
            return ExitCode::FAILURE;
        }
    };
    let catalog = settings.catalog_of(plan);
    let sink = match Sink::open(&settings.database, catalog.clone()) {
        Ok(sink) => sink,
        Err(e) => {
            eprintln!("usage-collector: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match operation {
        Operation::DeadLetters(DeadLetterCommand::List { filter, json }) => {
            let filter = filter.into();
            match crate::ops::dead_letters::list(&sink, &filter).await {
                Ok(groups) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&groups).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Ok(groups) => {
                    print!("{}", crate::ops::dead_letters::render(&groups));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("usage-collector dead-letters list: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Operation::DeadLetters(DeadLetterCommand::Replay { filter, json }) => {
            let filter = filter.into();
            match crate::ops::dead_letters::replay(&sink, &catalog, &filter).await {
                Ok(done) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&done).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Ok(done) => {
                    let failing: u64 = done.still_failing.values().sum();
                    println!(
                        "written again and removed: {}; failed again (kept with the new reason): \
                         {failing}{}; not replayable: {}",
                        done.written,
                        if failing > 0 {
                            format!(" {:?}", done.still_failing)
                        } else {
                            String::new()
                        },
                        done.not_replayable
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "usage-collector dead-letters replay: stopped ({}: {}); the dead letters \
                         not yet replayed are kept: run it again once the database answers",
                        e.reason, e.message
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Operation::Rollups(RollupCommand::Rebuild { from, to }) => {
            let to = to.unwrap_or(from);
            if to < from {
                eprintln!("usage-collector rollups rebuild: --to {to} is before --from {from}");
                return ExitCode::from(2);
            }
            match crate::ops::rollups::rebuild(&sink, &catalog, from, to).await {
                Ok(days) => {
                    for day in &days {
                        println!(
                            "{}: {} services, {} sessions recounted",
                            day.date, day.services, day.sessions
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err((days, e)) => {
                    eprintln!(
                        "usage-collector rollups rebuild: stopped after {} days ({}: {})",
                        days.len(),
                        e.reason,
                        e.message
                    );
                    ExitCode::FAILURE
                }
            }
        }
    };
    sink.close().await;
    code
}

impl From<DeadLetterArgs> for crate::sink::admin::DeadLetterFilter {
    fn from(args: DeadLetterArgs) -> Self {
        Self {
            reason: args.reason,
            since: args.since,
        }
    }
}

/// Installs the log subscriber: stdout (text or JSON) filtered by the log level, plus, with a
/// telemetry endpoint, the collector's own INFO spans over OTLP. Returns the tracer provider
/// to flush at exit.
fn init_logging(
    settings: &Settings,
    to_stderr: bool,
) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{EnvFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::{Layer, util::SubscriberInitExt};
    let log = &settings.log;
    let filter = match &log.filter {
        Some(filter) => EnvFilter::new(filter),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let stdout = match (log.format, to_stderr) {
        (LogFormat::Text, false) => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
        (LogFormat::Text, true) => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        (LogFormat::Json, false) => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .boxed(),
        (LogFormat::Json, true) => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let mut provider = None;
    let spans = settings.telemetry.traces().and_then(|endpoint| {
        match crate::telemetry::traces::tracer(endpoint, &settings.instance) {
            Ok((tracer_provider, tracer)) => {
                provider = Some(tracer_provider);
                let only_ours = Targets::new().with_target("usage_collector", tracing::Level::INFO);
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(only_ours),
                )
            }
            Err(e) => {
                eprintln!("usage-collector: {e}; own traces are not exported");
                None
            }
        }
    });
    let installed = tracing_subscriber::registry()
        .with(stdout.with_filter(filter))
        .with(spans)
        .try_init();
    if let Err(e) = installed {
        eprintln!("usage-collector: cannot install the log subscriber: {e}");
    }
    provider
}

/// Resolves on SIGINT or SIGTERM (Kubernetes' "please drain").
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    result = interrupt => if let Err(e) = result {
                        tracing::error!(error = %e, "cannot wait for SIGINT");
                    },
                    _ = terminate.recv() => {},
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot wait for SIGTERM; stopping on SIGINT only");
                if let Err(e) = interrupt.await {
                    tracing::error!(error = %e, "cannot wait for SIGINT");
                }
            }
        }
    }
    #[cfg(not(unix))]
    if let Err(e) = interrupt.await {
        tracing::error!(error = %e, "cannot wait for SIGINT");
    }
}
