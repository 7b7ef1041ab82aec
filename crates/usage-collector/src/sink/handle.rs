//! [`Sink`]: the database behind one pool, as the rest of the collector sees it.

use std::fmt;
use std::sync::Arc;

use secrecy::ExposeSecret;
use sqlx::{MySqlPool, SqlitePool};

use super::cluster::{Cluster, WriteSetLimits, split_hosts};
use super::error::{NodeNotReady, Redactor, Server, SinkError};
use super::sql::{self, Written};
use super::{blackhole, mysql, sqlite};
use crate::catalog::{Catalog, Current, RowBatch};
use crate::config::{DatabaseSettings, TlsMode};

/// What the sink connects to, for logs: never the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `mysql` or `sqlite`.
    pub backend: &'static str,
    /// Host name or address (empty for SQLite).
    pub host: String,
    /// TCP port (MySQL).
    pub port: Option<u16>,
    /// Database name, or the SQLite file.
    pub database: String,
    /// User name (MySQL).
    pub user: Option<String>,
    /// TLS mode (MySQL).
    pub tls: Option<TlsMode>,
    /// `host:port` of the other hosts a MySQL URL names, in order (the sink moves to the next
    /// when the node in use fails).
    pub more_hosts: Vec<String>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.user, self.port, self.tls) {
            (Some(user), Some(port), Some(tls)) => {
                write!(f, "{}://{user}@{}:{port}", self.backend, self.host)?;
                for host in &self.more_hosts {
                    write!(f, ",{host}")?;
                }
                write!(f, "/{} (tls {tls})", self.database)
            }
            _ => write!(f, "{}://{}", self.backend, self.database),
        }
    }
}

/// The database URL or options are unusable.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL does not parse or names no database.
    #[error("invalid database URL: {message}")]
    Url {
        /// What is wrong, secrets removed.
        message: String,
    },
    /// The URL's scheme is neither `mysql` nor `sqlite`.
    #[error("unsupported database URL scheme {scheme:?}: use mysql://… or sqlite://…")]
    Scheme {
        /// The scheme given.
        scheme: String,
    },
}

/// The sink's pool, for code that speaks each dialect itself (verification).
pub(crate) enum PoolRef<'a> {
    MySql(&'a MySqlPool),
    Sqlite(&'a SqlitePool),
    Blackhole,
}

#[derive(Clone)]
enum Pool {
    MySql(MySqlPool),
    Sqlite(SqlitePool),
    /// [`blackhole`]: no database at all.
    Blackhole,
}

/// The database the collector writes, behind a connection pool.
#[derive(Clone)]
pub struct Sink {
    pool: Pool,
    catalog: Current,
    target: Arc<Target>,
    redactor: Redactor,
    /// Galera facts and the hosts of the URL (empty for SQLite and the blackhole).
    cluster: Arc<Cluster>,
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("target", &self.target)
            .finish()
    }
}

/// Runs `$body` with `$pool` bound to the sink's pool and `$db` to its sqlx database type, so
/// SQL that is the same on both databases is written once; the blackhole gives `$none`.
macro_rules! with_pool {
    ($self:expr, |$pool:ident, $db:ident| $body:expr, blackhole => $none:expr) => {
        match &$self.pool {
            Pool::MySql($pool) => {
                type $db = sqlx::MySql;
                $body
            }
            Pool::Sqlite($pool) => {
                type $db = sqlx::Sqlite;
                $body
            }
            Pool::Blackhole => $none,
        }
    };
}

impl Sink {
    /// How many transactions the writer runs at once: one per pooled connection but one, which
    /// stays free for heartbeats, dead letters and health checks (at least one).
    pub fn write_streams(&self) -> usize {
        let connections = with_pool!(
            self,
            |pool, _Db| pool.options().get_max_connections() as usize,
            blackhole => blackhole::STREAMS + 1
        );
        connections.saturating_sub(1).max(1)
    }

    /// A sink for the configured database. Connects lazily: nothing is dialled until first use.
    pub fn open(
        settings: &DatabaseSettings,
        catalog: impl Into<Current>,
    ) -> Result<Self, OpenError> {
        let catalog = catalog.into();
        let raw = settings.url.expose_secret();
        let mut secrets = vec![raw.to_owned()];
        if let Some(password) = &settings.password {
            secrets.push(password.expose_secret().to_owned());
        }
        let scheme = raw.split_once(':').map_or("", |(scheme, _)| scheme);
        let mut cluster = Arc::new(Cluster::default());
        let (pool, target) = match scheme {
            "mysql" | "mariadb" => {
                // The URL parser takes one host: it reads the URL naming the first, and the
                // sink keeps the list.
                let (first, hosts) = split_hosts(raw).ok_or_else(|| OpenError::Url {
                    message: "the host list is malformed: name each host once, as \
                              host:port,host:port (mysql://user@db-1:3306,db-2:3306/usage)"
                        .to_owned(),
                })?;
                let url = url::Url::parse(&first).map_err(|e| OpenError::Url {
                    message: e.to_string(),
                })?;
                if let Some(password) = url.password() {
                    secrets.push(password.to_owned());
                    // The URL form of the password may be percent-encoded; hide both forms.
                    if let Ok(decoded) =
                        percent_encoding::percent_decode_str(password).decode_utf8()
                    {
                        secrets.push(decoded.into_owned());
                    }
                }
                let (pool, target, hosts) = mysql::config::pool(settings, &url, hosts)?;
                cluster = hosts;
                (Pool::MySql(pool), target)
            }
            "sqlite" => {
                let (pool, target) = sqlite::config::pool(settings, raw)?;
                (Pool::Sqlite(pool), target)
            }
            blackhole::SCHEME => (
                Pool::Blackhole,
                Target {
                    backend: blackhole::SCHEME,
                    host: String::new(),
                    port: None,
                    database: "nothing is stored".to_owned(),
                    user: None,
                    tls: None,
                    more_hosts: Vec::new(),
                },
            ),
            other => {
                return Err(OpenError::Scheme {
                    scheme: other.to_owned(),
                });
            }
        };
        Ok(Self {
            pool,
            catalog,
            target: Arc::new(target),
            redactor: Redactor::new(secrets),
            cluster,
        })
    }

    /// True for the embedded SQLite database, whose schema the collector always manages.
    pub fn is_embedded(&self) -> bool {
        matches!(self.pool, Pool::Sqlite(_))
    }

    /// True for the [`blackhole`], which stores nothing.
    pub fn is_blackhole(&self) -> bool {
        matches!(self.pool, Pool::Blackhole)
    }

    /// What the sink connects to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The catalogue in force, whose tables the sink writes.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.get()
    }

    /// The handle to the catalogue in force (a reload replaces it for every stage).
    pub fn current(&self) -> &Current {
        &self.catalog
    }

    /// Removes this sink's secrets from text.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// What verification learnt of the server's clustering.
    pub(crate) fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The write-set limits a transaction must stay within (a Galera cluster's
    /// `wsrep_max_ws_rows` and `wsrep_max_ws_size`, as verification read them), if any.
    pub fn write_set_limits(&self) -> Option<WriteSetLimits> {
        self.cluster.write_set_limits()
    }

    /// True once verification found a Galera node.
    pub fn is_galera(&self) -> bool {
        self.cluster.server() == Server::Galera
    }

    /// `host:port` of every host the URL names, and which one is in use (MySQL only).
    pub fn hosts(&self) -> Option<(Vec<String>, usize)> {
        self.cluster.hosts().map(|h| (h.all(), h.current()))
    }

    /// `host:port` of the host in use (MySQL only).
    pub fn host_in_use(&self) -> Option<String> {
        self.cluster.hosts().map(|h| h.in_use())
    }

    /// How many times the sink moved to another host: an operation notes it as it begins,
    /// and passes it to [`Sink::after_failure`] if it fails.
    pub fn moves(&self) -> u64 {
        self.cluster.moves()
    }

    /// After `error` in an operation that began at [`Sink::moves`] `began`: moves to the next
    /// host of the URL if the error says the node in use is gone (see [`super::cluster`]).
    pub fn after_failure(&self, began: u64, error: &SinkError) {
        if let Pool::MySql(pool) = &self.pool {
            self.cluster.after_failure(began, error, pool);
        }
    }

    /// Describes a driver error from an operation that began at move count `began`, as the
    /// server in use means it, and moves to another host if it says the node is gone.
    pub(crate) fn failure(&self, began: u64, error: &sqlx::Error) -> SinkError {
        let error = SinkError::classify_on(error, &self.redactor, self.cluster.server());
        self.after_failure(began, &error);
        error
    }

    /// Writes a batch of rows placed in the catalogue in force, in one transaction.
    pub async fn write(&self, batch: &RowBatch<'_>) -> Result<Written, SinkError> {
        self.write_in(&self.catalog.get(), batch).await
    }

    /// Writes a batch of rows placed in `catalog`, in one transaction.
    pub async fn write_in(
        &self,
        catalog: &Catalog,
        batch: &RowBatch<'_>,
    ) -> Result<Written, SinkError> {
        let began = self.moves();
        self.transaction(catalog, batch, true)
            .await
            .map_err(|e| self.failure(began, &e))
    }

    /// Runs a batch's statements and commits them, or rolls them back (the write check).
    pub(crate) async fn transaction(
        &self,
        catalog: &Catalog,
        batch: &RowBatch<'_>,
        commit: bool,
    ) -> Result<Written, sqlx::Error> {
        with_pool!(self, |pool, Db| {
            let mut tx = pool.begin().await?;
            let written = <Db as sql::Driver>::write_in(&mut tx, catalog, batch).await?;
            if commit {
                tx.commit().await?
            } else {
                tx.rollback().await?
            }
            Ok(written)
        }, blackhole => Ok(blackhole::write(catalog, batch)))
    }

    /// Inserts one dead letter of `service`'s event (a repeat of the same event is a no-op),
    /// with its reason class and the database's reason.
    pub async fn write_dead_letter(
        &self,
        event_id: &[u8; 16],
        service: &str,
        table: &str,
        reason_class: &str,
        reason: &str,
        row_json: &str,
    ) -> Result<(), SinkError> {
        const INSERT: &str = "INSERT INTO dead_letters (event_id, service, table_name, \
             reason_class, reason, row_data) VALUES (?, ?, ?, ?, ?, ?)";
        let mut reason = reason.to_owned();
        crate::catalog::mapping::cut(&mut reason, 2048);
        let began = self.moves();
        let result = with_pool!(self, |pool, Db| {
            let on_duplicate = <Db as sql::Dialect>::ON_DUPLICATE_DEAD_LETTER;
            sqlx::query(sqlx::AssertSqlSafe(format!("{INSERT}{on_duplicate}")))
                .bind(&event_id[..])
                .bind(service)
                .bind(table)
                .bind(reason_class)
                .bind(&reason)
                .bind(row_json)
                .execute(pool)
                .await
                .map(drop)
        }, blackhole => Ok(()));
        result.map_err(|e| self.failure(began, &e))
    }

    /// Moves this collector's heartbeat row forward to `beat`.
    pub async fn write_heartbeat(
        &self,
        instance: &str,
        beat: time::PrimitiveDateTime,
    ) -> Result<(), SinkError> {
        const INSERT: &str = "INSERT INTO collector_heartbeats (instance, last_beat) VALUES (?, ?)";
        let began = self.moves();
        let result = with_pool!(self, |pool, Db| {
            let on_duplicate = <Db as sql::Dialect>::ON_DUPLICATE_HEARTBEAT;
            sqlx::query(sqlx::AssertSqlSafe(format!("{INSERT}{on_duplicate}")))
                .bind(instance)
                .bind(beat)
                .execute(pool)
                .await
                .map(drop)
        }, blackhole => Ok(()));
        result.map_err(|e| self.failure(began, &e))
    }

    /// Runs `SELECT 1` on a pooled connection; on a Galera node, asks instead whether the
    /// node is part of the primary component (`wsrep_ready`), since one that is not still
    /// answers `SELECT 1` but refuses every statement on a table.
    pub async fn ping(&self) -> Result<(), SinkError> {
        let began = self.moves();
        let result = match &self.pool {
            Pool::MySql(pool) if self.is_galera() => self.node_ready(pool).await,
            _ => with_pool!(
                self,
                |pool, _Db| sqlx::query("SELECT 1").execute(pool).await.map(drop),
                blackhole => Ok(())
            ),
        };
        result.map_err(|e| self.failure(began, &e))
    }

    /// `Ok` when the Galera node a pooled connection reaches is ready (`wsrep_ready = ON`).
    async fn node_ready(&self, pool: &MySqlPool) -> Result<(), sqlx::Error> {
        let ready: Option<(String, String)> =
            sqlx::query_as("SHOW GLOBAL STATUS LIKE 'wsrep_ready'")
                .fetch_optional(pool)
                .await?;
        match ready {
            Some((_, value)) if value.eq_ignore_ascii_case("ON") => Ok(()),
            other => Err(NodeNotReady {
                node: self.host_in_use().unwrap_or_default(),
                ready: other.map_or_else(|| "missing".to_owned(), |(_, value)| value),
            }
            .into_sqlx()),
        }
    }

    /// Applies the embedded migrations, then creates and widens what the tracking plan in
    /// force declares ([`super::expand`]). On MySQL both run under the `migrate` lease row of
    /// `collector_leases` (not `GET_LOCK`, which one node of a cluster keeps to itself), so
    /// collectors starting at once on any nodes apply each migration once.
    pub async fn migrate(&self) -> Result<(), String> {
        // Reach the database first: a host that cannot be reached is passed over (with
        // several hosts) by a failure that says so, not by a migrator's error text.
        self.ping().await.map_err(|e| e.message)?;
        let redact = |e: sqlx::Error| self.redactor.redact(&e.to_string());
        match &self.pool {
            Pool::MySql(pool) => {
                let lease = super::migrate_lease::MigrateLease::take(pool)
                    .await
                    .map_err(redact)?;
                let mut migrator = mysql::migrations::migrator();
                migrator.set_locking(false);
                let migrated = migrator.run(pool).await.map_err(|e| redact(e.into()));
                let expanded = match migrated {
                    Ok(()) => self
                        .expand(&self.catalog.get())
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                lease.release(pool).await;
                expanded
            }
            Pool::Sqlite(pool) => {
                sqlite::migrations::migrator()
                    .run(pool)
                    .await
                    .map_err(|e| redact(e.into()))?;
                self.expand(&self.catalog.get())
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Pool::Blackhole => Ok(()),
        }
    }

    pub(crate) fn pool(&self) -> PoolRef<'_> {
        match &self.pool {
            Pool::MySql(pool) => PoolRef::MySql(pool),
            Pool::Sqlite(pool) => PoolRef::Sqlite(pool),
            Pool::Blackhole => PoolRef::Blackhole,
        }
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        with_pool!(self, |pool, _Db| pool.close().await, blackhole => ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(url: &str, pool_size: u32) -> usize {
        let mut settings = DatabaseSettings::new(url);
        settings.pool_size = pool_size;
        // Opening is lazy: nothing is dialled, so no server is needed.
        Sink::open(&settings, Arc::new(Catalog::built_in()))
            .expect("sink")
            .write_streams()
    }

    #[tokio::test]
    async fn the_writer_uses_every_pooled_connection_but_one() {
        assert_eq!(streams("mysql://u@127.0.0.1:1/db", 5), 4);
        assert_eq!(streams("mysql://u@127.0.0.1:1/db", 2), 1);
        assert_eq!(streams("mysql://u@127.0.0.1:1/db", 1), 1);
        // SQLite has one writer connection, and so one stream.
        let dir = std::env::temp_dir().join(format!("usage-streams-{}", std::process::id()));
        let url = format!("sqlite://{}", dir.join("usage.db").display());
        assert_eq!(streams(&url, 5), 1);
    }
}
