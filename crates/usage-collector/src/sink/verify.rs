//! Startup verification: prove the data path works before reporting ready.
//!
//! Steps, in order, each logged at INFO with the target (host, port, database, user, TLS mode):
//! connect within the timeout; `SELECT 1`; log server version, charset and time zone; check
//! that every table and column the catalogue writes exists with a compatible type (naming
//! every one that does not); prove write permission by writing one probe row per table and
//! a probe session, with the very statements the writer uses, and rolling back.

use std::fmt;

use sqlx::Row;
use time::macros::datetime;

use super::cluster::ClusterFacts;
use super::handle::{PoolRef, Sink};
use crate::catalog::tables::{ColumnType, TableKind};
use crate::catalog::{Catalog, Mapped, RowBatch, SessionRow, Value};

/// A verification step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Open a connection within the connect timeout.
    Connect,
    /// Run `SELECT 1`.
    Query,
    /// Read the server's version, charset and time zone.
    Server,
    /// Apply migrations (`--migrate`, `migrate`).
    Migrate,
    /// Check tables and columns.
    Schema,
    /// Write and roll back a probe row per table.
    WritePermission,
}

impl Step {
    /// The step's name in logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Query => "test query",
            Step::Server => "server facts",
            Step::Migrate => "migrate",
            Step::Schema => "schema check",
            Step::WritePermission => "write permission check",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verification step failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{step} failed for {target}: {message}")]
pub struct VerifyError {
    /// The step.
    pub step: Step,
    /// The database, described without its password.
    pub target: String,
    /// The database's own error text, or the list of schema problems; secrets removed.
    pub message: String,
}

/// What the server said about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFacts {
    /// Version string.
    pub version: String,
    /// Character set of the database.
    pub charset: String,
    /// Session time zone (the collector writes UTC).
    pub time_zone: String,
    /// Galera clustering (MySQL, MariaDB without Galera, TiDB: not a Galera node).
    pub cluster: ClusterFacts,
}

impl ServerFacts {
    /// The cluster facts for the verification log line: empty on a single server.
    fn describe_cluster(&self) -> String {
        let c = &self.cluster;
        if !c.galera {
            return String::new();
        }
        let limit = |n: u64| match n {
            0 => "no limit".to_owned(),
            n => n.to_string(),
        };
        format!(
            ", Galera cluster of {} nodes (write sets up to {} rows, {} bytes)",
            c.size,
            limit(c.max_ws_rows),
            c.max_ws_size
        )
    }
}

impl Sink {
    fn fail(&self, step: Step, message: impl fmt::Display) -> VerifyError {
        VerifyError {
            step,
            target: self.target().to_string(),
            message: self.redactor().redact(&message.to_string()),
        }
    }

    fn step_ok(&self, step: Step, detail: &str) {
        let t = self.target();
        // With several hosts, the one in use.
        let node = self.host_in_use();
        tracing::info!(
            step = step.as_str(),
            backend = t.backend,
            host = %t.host,
            port = t.port,
            node = node.as_deref(),
            database = %t.database,
            user = t.user.as_deref(),
            tls = t.tls.map(tracing::field::display),
            "database {step}: ok{}{detail}",
            if detail.is_empty() { "" } else { ", " },
        );
    }

    /// Applies migrations, as a verification step.
    pub async fn migrate_step(&self) -> Result<(), VerifyError> {
        self.migrate()
            .await
            .map_err(|e| self.fail(Step::Migrate, e))?;
        self.step_ok(Step::Migrate, "schema is current");
        Ok(())
    }

    /// Runs every verification step; the first failure stops the run.
    pub async fn verify(&self) -> Result<ServerFacts, VerifyError> {
        let facts = match self.pool() {
            PoolRef::MySql(pool) => self.mysql_facts(pool).await?,
            PoolRef::Sqlite(pool) => self.sqlite_facts(pool).await?,
            PoolRef::Blackhole => {
                self.step_ok(Step::Connect, "the blackhole stores nothing");
                return Ok(ServerFacts {
                    version: "blackhole".to_owned(),
                    ..ServerFacts::default()
                });
            }
        };
        self.step_ok(
            Step::Server,
            &format!(
                "version {}, charset {}, time zone {}{}",
                facts.version,
                facts.charset,
                facts.time_zone,
                facts.describe_cluster()
            ),
        );
        let problems = self
            .schema_problems()
            .await
            .map_err(|e| self.fail(Step::Schema, e))?;
        if !problems.is_empty() {
            return Err(self.fail(Step::Schema, problems.join("; ")));
        }
        self.step_ok(
            Step::Schema,
            &format!(
                "{} tables with every mapped column",
                self.catalog().tables().len()
            ),
        );
        if !self.is_blackhole() {
            let serves = self
                .schema_serves()
                .await
                .map_err(|e| self.fail(Step::Schema, e))?;
            if !serves.serves_this_release() {
                return Err(self.fail(
                    Step::Schema,
                    format!(
                        "{}: this collector is release {}, older than the schema allows; \
                         run a newer release",
                        serves.describe(),
                        crate::sink::compat::RELEASE
                    ),
                ));
            }
            self.step_ok(Step::Schema, &serves.describe());
        }
        let catalog = self.catalog();
        let probes = probe_events(&catalog);
        self.transaction(
            &catalog,
            &RowBatch::of(catalog.tables().len(), &probes),
            false,
        )
        .await
        .map_err(|e| self.fail(Step::WritePermission, e))?;
        self.step_ok(Step::WritePermission, "probe rows written and rolled back");
        Ok(facts)
    }

    /// A failed step whose driver error may say the node in use is gone: with several hosts,
    /// the next run tries the next one.
    fn fail_node(&self, step: Step, began: u64, error: &sqlx::Error) -> VerifyError {
        let error = self.failure(began, error);
        self.fail(step, error.message)
    }

    async fn mysql_facts(&self, pool: &sqlx::MySqlPool) -> Result<ServerFacts, VerifyError> {
        let began = self.moves();
        let mut conn = pool
            .acquire()
            .await
            .map_err(|e| self.fail_node(Step::Connect, began, &e))?;
        self.step_ok(Step::Connect, "");
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail_node(Step::Query, began, &e))?;
        self.step_ok(Step::Query, "");
        let row = sqlx::query(
            "SELECT CAST(VERSION() AS CHAR), CAST(@@character_set_database AS CHAR), \
             CAST(@@time_zone AS CHAR)",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| self.fail_node(Step::Server, began, &e))?;
        let cluster = self.galera_facts(&mut conn, began).await?;
        self.cluster().learn(&cluster);
        Ok(ServerFacts {
            version: row.try_get(0).map_err(|e| self.fail(Step::Server, e))?,
            charset: row.try_get(1).map_err(|e| self.fail(Step::Server, e))?,
            time_zone: row.try_get(2).map_err(|e| self.fail(Step::Server, e))?,
            cluster,
        })
    }

    /// Whether the server is a Galera node, and if so the cluster's size and write-set limits.
    /// A node outside the primary component fails the step: it would refuse every write.
    async fn galera_facts(
        &self,
        conn: &mut sqlx::MySqlConnection,
        began: u64,
    ) -> Result<ClusterFacts, VerifyError> {
        let wsrep: Result<(i64, i64, i64), sqlx::Error> = sqlx::query_as(
            "SELECT CAST(@@wsrep_on AS SIGNED), CAST(@@wsrep_max_ws_rows AS SIGNED), \
             CAST(@@wsrep_max_ws_size AS SIGNED)",
        )
        .fetch_one(&mut *conn)
        .await;
        let (on, rows, size) = match wsrep {
            Ok(values) => values,
            // 1193, unknown system variable: a server without Galera (MySQL, TiDB).
            Err(sqlx::Error::Database(e))
                if e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                    .is_some_and(|e| e.number() == 1193) =>
            {
                return Ok(ClusterFacts::default());
            }
            Err(e) => return Err(self.fail_node(Step::Server, began, &e)),
        };
        if on != 1 {
            return Ok(ClusterFacts::default());
        }
        let status: Vec<(String, String)> = sqlx::query_as(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_cluster_size', 'wsrep_ready')",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.fail_node(Step::Server, began, &e))?;
        let value = |name: &str| {
            status
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let ready = value("wsrep_ready");
        if !ready.eq_ignore_ascii_case("ON") {
            let error = super::error::NodeNotReady {
                node: self.host_in_use().unwrap_or_default(),
                ready,
            }
            .into_sqlx();
            return Err(self.fail_node(Step::Server, began, &error));
        }
        Ok(ClusterFacts {
            galera: true,
            size: value("wsrep_cluster_size").parse().unwrap_or(0),
            max_ws_rows: u64::try_from(rows).unwrap_or(0),
            max_ws_size: u64::try_from(size).unwrap_or(0),
        })
    }

    async fn sqlite_facts(&self, pool: &sqlx::SqlitePool) -> Result<ServerFacts, VerifyError> {
        let mut conn = pool
            .acquire()
            .await
            .map_err(|e| self.fail(Step::Connect, e))?;
        self.step_ok(Step::Connect, "");
        let version: String = sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.fail(Step::Query, e))?;
        self.step_ok(Step::Query, "");
        Ok(ServerFacts {
            version: format!("SQLite {version}"),
            charset: "UTF-8".to_owned(),
            time_zone: "UTC (the collector writes UTC)".to_owned(),
            cluster: ClusterFacts::default(),
        })
    }

    /// Every missing table, missing column and incompatible column type.
    async fn schema_problems(&self) -> Result<Vec<String>, sqlx::Error> {
        self.schema_problems_for(&self.catalog()).await
    }

    /// What `catalog` needs that the schema lacks (a catalogue about to be put in force).
    pub async fn schema_problems_for(&self, catalog: &Catalog) -> Result<Vec<String>, sqlx::Error> {
        let catalog = catalog.clone();
        let live = self.live_columns(&catalog).await?;
        if let PoolRef::MySql(pool) = self.pool()
            && live.iter().any(|c| c.table == MIGRATIONS_TABLE)
        {
            return Ok(self.compare_all(&catalog, &live, migration_problems(pool).await?));
        }
        Ok(self.compare_all(&catalog, &live, Vec::new()))
    }

    /// The columns of the database's tables (MySQL: every table of the database; SQLite: the
    /// catalogue's and the collector's own).
    pub(crate) async fn live_columns(
        &self,
        catalog: &Catalog,
    ) -> Result<Vec<LiveColumn>, sqlx::Error> {
        let mut live = Vec::new();
        match self.pool() {
            PoolRef::MySql(pool) => {
                let rows = sqlx::query(
                    "SELECT CAST(TABLE_NAME AS CHAR), CAST(COLUMN_NAME AS CHAR), \
                     CAST(DATA_TYPE AS CHAR), CAST(CHARACTER_MAXIMUM_LENGTH AS SIGNED) \
                     FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
                     ORDER BY TABLE_NAME, ORDINAL_POSITION",
                )
                .fetch_all(pool)
                .await?;
                for row in rows {
                    let data_type: String = row.try_get(2)?;
                    live.push(LiveColumn {
                        table: row.try_get(0)?,
                        column: row.try_get(1)?,
                        data_type: data_type.to_ascii_lowercase(),
                        length: row.try_get(3)?,
                    });
                }
            }
            PoolRef::Blackhole => {}
            PoolRef::Sqlite(pool) => {
                let names = catalog.tables().iter().map(|t| t.name);
                for table in names.chain(SYSTEM_TABLES) {
                    let rows = sqlx::query("SELECT name, type FROM pragma_table_info(?)")
                        .bind(table)
                        .fetch_all(pool)
                        .await?;
                    for row in rows {
                        let declared: String = row.try_get(1)?;
                        let (data_type, length) = split_declared(&declared);
                        live.push(LiveColumn {
                            table: table.to_owned(),
                            column: row.try_get(0)?,
                            data_type,
                            length,
                        });
                    }
                }
            }
        }
        Ok(live)
    }

    /// `problems`, then what the live columns lack of the catalogue's and the system tables.
    fn compare_all(
        &self,
        catalog: &Catalog,
        live: &[LiveColumn],
        mut problems: Vec<String>,
    ) -> Vec<String> {
        problems.extend(compare(catalog, live));
        for table in SYSTEM_TABLES {
            if !live.iter().any(|c| c.table == table) {
                problems.push(format!("table `{table}` is missing"));
            }
        }
        problems
    }
}

/// The table sqlx records applied migrations in.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// What the migrations record of a MySQL schema that this collector cannot use as it is: a
/// version left half-applied (DDL commits on its own, so a failed migration leaves its first
/// steps done), or versions this collector has that were never applied. A schema made
/// without the collector's migrations (no `_sqlx_migrations`) is judged by its columns alone.
async fn migration_problems(pool: &sqlx::MySqlPool) -> Result<Vec<String>, sqlx::Error> {
    let applied: Vec<(i64, String, bool)> = sqlx::query_as(
        "SELECT version, CAST(description AS CHAR), success FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(pool)
    .await?;
    let mut problems = Vec::new();
    for (version, description, _) in applied.iter().filter(|(.., success)| !success) {
        problems.push(format!(
            "migration {version} ({description}) was left half-applied: see Upgrading in \
             docs/operations.md to finish it"
        ));
    }
    let missing: Vec<String> = crate::sink::mysql::migrations::migrator()
        .iter()
        .filter(|m| !applied.iter().any(|(version, ..)| *version == m.version))
        .map(|m| format!("{} ({})", m.version, m.description))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "migrations not applied: {}; run `usage-collector migrate`",
            missing.join(", ")
        ));
    }
    Ok(problems)
}

/// Tables the collector writes besides the catalogue's (created by its migrations).
pub const SYSTEM_TABLES: [&str; 4] = [
    "dead_letters",
    "collector_heartbeats",
    "collector_leases",
    crate::sink::sql::DAILY_ROLLUP,
];

/// One column of a table in the database, as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveColumn {
    /// Its table.
    pub table: String,
    /// Its name.
    pub column: String,
    /// Its type, lowercase, without width (`varchar`, `bigint`, `longtext`).
    pub data_type: String,
    /// Its width in characters, for text types that have one.
    pub length: Option<i64>,
}

impl LiveColumn {
    /// A column of `table` (test data and callers that build the list by hand).
    pub fn new(table: &str, column: &str, data_type: &str, length: Option<i64>) -> Self {
        Self {
            table: table.to_owned(),
            column: column.to_owned(),
            data_type: data_type.to_ascii_lowercase(),
            length,
        }
    }
}

/// `VARCHAR(128)` → (`varchar`, Some(128)).
fn split_declared(declared: &str) -> (String, Option<i64>) {
    let lower = declared.to_ascii_lowercase();
    match lower.split_once('(') {
        Some((name, rest)) => (
            name.trim().to_owned(),
            rest.trim_end_matches(')')
                .split(',')
                .next()
                .and_then(|n| n.trim().parse().ok()),
        ),
        None => (lower.trim().to_owned(), None),
    }
}

/// Problems with the live schema, given its columns.
pub fn compare(catalog: &Catalog, live: &[LiveColumn]) -> Vec<String> {
    let mut problems = Vec::new();
    for table in catalog.tables() {
        if !live.iter().any(|c| c.table == table.name) {
            problems.push(format!("table `{}` is missing", table.name));
            continue;
        }
        for column in &table.columns {
            let found = live
                .iter()
                .find(|c| c.table == table.name && c.column.eq_ignore_ascii_case(column.name));
            match found {
                None => problems.push(format!(
                    "column `{}`.`{}` is missing",
                    table.name, column.name
                )),
                Some(LiveColumn {
                    data_type,
                    length: len,
                    ..
                }) => {
                    if let Err(need) = compatible(column.ty, data_type, *len) {
                        problems.push(format!(
                            "column `{}`.`{}` is {}{}, needs {need}",
                            table.name,
                            column.name,
                            data_type,
                            len.map(|l| format!("({l})")).unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    problems
}

pub(crate) fn compatible(ty: ColumnType, data_type: &str, len: Option<i64>) -> Result<(), String> {
    const INTEGERS: [&str; 6] = [
        "tinyint",
        "smallint",
        "mediumint",
        "int",
        "integer",
        "bigint",
    ];
    let ok = match ty {
        ColumnType::EventId => {
            matches!(data_type, "blob" | "mediumblob" | "longblob")
                || (matches!(data_type, "binary" | "varbinary") && len.is_none_or(|l| l >= 16))
        }
        ColumnType::Text { max_chars } => match data_type {
            "varchar" | "char" | "nvarchar" | "nchar" | "varying character" => {
                len.is_none_or(|l| l >= i64::from(max_chars))
            }
            "text" | "mediumtext" | "longtext" | "clob" => true,
            "tinytext" => max_chars <= 63,
            _ => false,
        },
        ColumnType::Int => INTEGERS[1..].contains(&data_type) || data_type == "numeric",
        ColumnType::Int32 => {
            matches!(data_type, "int" | "integer" | "bigint") || data_type == "numeric"
        }
        ColumnType::Bool => {
            INTEGERS.contains(&data_type) || matches!(data_type, "boolean" | "bool" | "bit")
        }
        ColumnType::Float => matches!(data_type, "double" | "real" | "double precision"),
        ColumnType::Timestamp => matches!(data_type, "datetime" | "timestamp"),
        ColumnType::Json => matches!(data_type, "json" | "text" | "mediumtext" | "longtext"),
    };
    if ok {
        return Ok(());
    }
    Err(match ty {
        ColumnType::EventId => "BINARY(16)".to_owned(),
        ColumnType::Text { max_chars } => format!("VARCHAR({max_chars}) or wider"),
        ColumnType::Int => "an integer type".to_owned(),
        ColumnType::Int32 => "INT or BIGINT".to_owned(),
        ColumnType::Bool => "BOOLEAN".to_owned(),
        ColumnType::Float => "DOUBLE".to_owned(),
        ColumnType::Timestamp => "DATETIME(6)".to_owned(),
        ColumnType::Json => "JSON".to_owned(),
    })
}

/// Session id of the write check's probe (rolled back, never committed).
pub const PROBE_SESSION: &str = "usage-collector-write-check";

/// One probe event per event table, each also touching the probe session, shaped like real
/// rows.
fn probe_events(catalog: &Catalog) -> Vec<Mapped> {
    let time = datetime!(2000-01-01 0:00);
    let session = SessionRow {
        service: "probe".to_owned(),
        user_id: None,
        start_time: time,
        last_activity: time,
        end_time: Some(time),
        user_agent: None,
        ip_address: None,
    };
    let mut events = Vec::new();
    for (id, table) in catalog.tables().iter().enumerate() {
        if table.kind != TableKind::Events {
            continue;
        }
        let event_id = *uuid::Uuid::new_v4().as_bytes();
        let row = table
            .columns
            .iter()
            .map(|column| match column.ty {
                ColumnType::EventId => Value::Id(event_id),
                ColumnType::Text { .. } if column.name == "session_id" => {
                    Value::Text(PROBE_SESSION.to_owned())
                }
                ColumnType::Text { .. } => Value::Text("probe".to_owned()),
                ColumnType::Int | ColumnType::Int32 => Value::Int(0),
                ColumnType::Float => Value::Float(0.0),
                ColumnType::Bool => Value::Bool(true),
                ColumnType::Timestamp => Value::Time(time),
                ColumnType::Json => Value::Json("{}".to_owned()),
            })
            .collect();
        events.push(Mapped {
            id: event_id,
            row: Some((id, row)),
            session: Some((PROBE_SESSION.to_owned(), session.clone())),
            truncated: Vec::new(),
        });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_names_each_missing_table_and_column() {
        let catalog = Catalog::built_in();
        let mut live = Vec::new();
        for table in catalog.tables().iter().filter(|t| t.name != "page_visits") {
            for column in &table.columns {
                if table.name == "feature_usage" && column.name == "feature_data" {
                    continue;
                }
                let (ty, len) = match column.ty {
                    ColumnType::Text { .. } if column.name == "error_message" => {
                        ("varchar", Some(10))
                    }
                    ColumnType::Text { max_chars } => ("varchar", Some(i64::from(max_chars))),
                    ColumnType::EventId => ("binary", Some(16)),
                    ColumnType::Int | ColumnType::Int32 => ("bigint", None),
                    ColumnType::Float => ("double", None),
                    ColumnType::Bool => ("tinyint", None),
                    ColumnType::Timestamp => ("datetime", None),
                    ColumnType::Json => ("longtext", None),
                };
                live.push(LiveColumn::new(table.name, column.name, ty, len));
            }
        }
        let problems = compare(&catalog, &live);
        assert_eq!(
            problems,
            [
                "table `page_visits` is missing",
                "column `program_executions`.`error_message` is varchar(10), needs VARCHAR(2048) or wider",
                "column `feature_usage`.`feature_data` is missing",
            ]
        );
    }

    #[test]
    fn declared_sqlite_types_split() {
        assert_eq!(
            split_declared("VARCHAR(128)"),
            ("varchar".into(), Some(128))
        );
        assert_eq!(split_declared("BLOB"), ("blob".into(), None));
    }
}
