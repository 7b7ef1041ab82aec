//! The tracking plan read again while the collector runs: on SIGHUP, and when the file's
//! contents change (checked every few seconds; a Kubernetes ConfigMap volume swaps a symlink,
//! so contents are compared, not modification times).
//!
//! A new plan is put in force only once it is known to work: the file parses and passes every
//! check of the plan, and the database has every table and column it declares — made by the
//! collector when it runs with `--migrate` (or on the embedded SQLite database), expand only,
//! as `migrate` does. Otherwise the plan in force stays, the reason is logged at ERROR and
//! counted (`usage_collector_catalog_reload_failures_total`); a plan put in force is counted in
//! `usage_collector_catalog_reloads_total` and logged at INFO. Requests already being decoded,
//! and rounds the writer already read, finish with the catalogue they started with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::settings::read_plan;
use crate::catalog::{Catalog, Current};
use crate::config::Settings;
use crate::health::Metrics;
use crate::sink::Sink;

/// How often the file is read to see whether it changed.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Reads the tracking plan again and puts it in force.
#[derive(Debug)]
pub struct Reload {
    /// The plan file.
    file: PathBuf,
    /// The settings that shape a catalogue (privacy, retention, non-usage records).
    settings: Arc<Settings>,
    current: Current,
    sink: Sink,
    metrics: Arc<Metrics>,
    /// Create and widen tables for a new plan.
    migrate: bool,
    /// The contents of the file as last read (tried, whether put in force or not).
    last: Option<Vec<u8>>,
}

/// Why a plan was not put in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read or is not a valid plan.
    #[error(transparent)]
    Load(#[from] crate::catalog::settings::LoadError),
    /// Its tables could not be made.
    #[error("cannot make the plan's tables: {0}")]
    Expand(#[from] crate::sink::expand::ExpandError),
    /// The database lacks what it declares (the collector runs without `--migrate`).
    #[error(
        "the database lacks what the plan declares: {0}; run `usage-collector migrate` with \
         this plan"
    )]
    Schema(String),
    /// The schema could not be read.
    #[error("cannot read the schema: {0}")]
    Database(String),
}

impl Reload {
    /// A reloader of `file` for the stages sharing `current`.
    pub fn new(
        file: PathBuf,
        settings: Arc<Settings>,
        current: Current,
        sink: Sink,
        metrics: Arc<Metrics>,
        migrate: bool,
    ) -> Self {
        let last = std::fs::read(&file).ok();
        Self {
            file,
            settings,
            current,
            sink,
            metrics,
            migrate,
            last,
        }
    }

    /// Reads the file; if it changed (or `always`), tries to put it in force. `None` when
    /// nothing changed.
    pub async fn reload(&mut self, always: bool) -> Option<Result<Arc<Catalog>, ReloadError>> {
        let file = self.file.clone();
        let contents = tokio::task::spawn_blocking(move || std::fs::read(file))
            .await
            .ok()
            .and_then(Result::ok);
        if !always && contents.is_some() && contents == self.last {
            return None;
        }
        if contents.is_some() {
            self.last = contents;
        }
        let result = self.try_reload().await;
        match &result {
            Ok(catalog) => {
                self.metrics.catalog_reloads.inc();
                tracing::info!(
                    file = %self.file.display(),
                    events = catalog.plan().events.len(),
                    tables = catalog.tables().len(),
                    "tracking plan read again and in force"
                );
            }
            Err(error) => {
                self.metrics.catalog_reload_failures.inc();
                tracing::error!(
                    file = %self.file.display(),
                    %error,
                    "tracking plan read again but not used: the plan before stays in force"
                );
            }
        }
        Some(result)
    }

    async fn try_reload(&self) -> Result<Arc<Catalog>, ReloadError> {
        let file = self.file.clone();
        let plan = tokio::task::spawn_blocking(move || read_plan(&file))
            .await
            .map_err(|e| ReloadError::Database(e.to_string()))??;
        let catalog = self.settings.catalog_of(Arc::new(plan));
        if self.migrate || self.sink.is_embedded() {
            self.sink.expand(&catalog).await?;
        }
        let problems = self
            .sink
            .schema_problems_for(&catalog)
            .await
            .map_err(|e| ReloadError::Database(self.sink.redactor().redact(&e.to_string())))?;
        if !problems.is_empty() {
            return Err(ReloadError::Schema(problems.join("; ")));
        }
        self.current.replace(catalog);
        Ok(self.current.get())
    }

    /// Reloads on SIGHUP and when the file changes, until the task is aborted.
    pub async fn watch(mut self) {
        #[cfg(unix)]
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::error!(error = %e, "cannot wait for SIGHUP; the tracking plan is read again only when it changes");
                None
            }
        };
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.tick().await;
        loop {
            #[cfg(unix)]
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hangup.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                    tracing::info!(file = %self.file.display(), "SIGHUP: reading the tracking plan again");
                    true
                }
            };
            #[cfg(not(unix))]
            let forced = {
                tick.tick().await;
                false
            };
            // The outcome is logged and counted by `reload`.
            let _outcome = self.reload(forced).await;
        }
    }
}

/// Without a plan file, SIGHUP has nothing to read again: it is logged instead of ending the
/// process (its default action).
pub async fn ignore_hangups() {
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangup) => {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: no tracking plan file to read again (--catalog-file)");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot wait for SIGHUP"),
    }
}
