//! The command line: `serve` (default), `check`, `migrate`.

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
    /// Apply the embedded migrations and exit.
    Migrate,
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
        let traces = init_logging(&settings);
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

/// Installs the log subscriber: stdout (text or JSON) filtered by the log level, plus, with a
/// telemetry endpoint, the collector's own INFO spans over OTLP. Returns the tracer provider
/// to flush at exit.
fn init_logging(settings: &Settings) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{EnvFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::{Layer, util::SubscriberInitExt};
    let log = &settings.log;
    let filter = match &log.filter {
        Some(filter) => EnvFilter::new(filter),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let ansi = std::io::stdout().is_terminal();
    let stdout = match log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
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
