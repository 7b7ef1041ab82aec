//! The schema a tracking plan needs, made from the plan: `migrate` creates the tables it
//! declares and adds the columns it gains, after the collector's own migrations.
//!
//! Expand only. What the plan asks is compared with the tables as the database describes them:
//! - a table the database lacks is created, with the columns every event table has (the event
//!   id under a unique key scoped by the service, the time, the session) and the plan's;
//! - a column the table lacks is added (NULL for the rows already there);
//! - a column the plan declares wider than the table has it (a longer string, a 64-bit integer
//!   where the table has 32 bits) is widened, keeping every value;
//! - anything that would lose or reinterpret stored data is refused before any statement runs,
//!   naming the event, the column and the change: a column the table has but the plan no longer
//!   declares (the collector never drops one), a narrower type, another kind of value.
//!
//! `ide_sessions` and `usage_events` are the collector's own and never change here.

use sqlx::Executor;
use usage_tracker::catalog::plan::Plan;
use usage_tracker::catalog::tables;

use super::handle::{PoolRef, Sink};
use super::verify::LiveColumn;
use crate::catalog::tables::{ColumnType, EVENT_COLUMNS, TableKind};
use crate::catalog::{Catalog, Table};

/// Widest text column kept as `VARCHAR` (a wider one is `TEXT`, which holds the 16 383
/// characters a plan may ask for).
const VARCHAR_MAX: u32 = 2048;

/// One change the plan asks of the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create a table.
    CreateTable {
        /// The table.
        table: &'static str,
    },
    /// Add a column.
    AddColumn {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
        /// Its type.
        ty: ColumnType,
    },
    /// Make a column hold wider values, keeping every value.
    Widen {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
        /// What it is now, as the database says.
        from: String,
        /// What it becomes.
        to: ColumnType,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::CreateTable { table } => write!(f, "create table `{table}`"),
            Change::AddColumn { table, column, ty } => {
                write!(f, "add column `{table}`.`{column}` ({})", mysql_type(*ty))
            }
            Change::Widen {
                table,
                column,
                from,
                to,
            } => write!(
                f,
                "widen column `{table}`.`{column}` from {from} to {}",
                mysql_type(*to)
            ),
        }
    }
}

/// What the plan asks, or why it cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the tracking plan asks for changes that would lose or reinterpret stored data, so nothing \
     was changed: {}", .refusals.join("; ")
)]
pub struct Refused {
    /// Each refused change, naming the event, the column and the change.
    pub refusals: Vec<String>,
}

/// The changes `catalog`'s plan asks of a schema with `live` columns, in the order they run.
pub fn plan_changes(catalog: &Catalog, live: &[LiveColumn]) -> Result<Vec<Change>, Refused> {
    let plan = catalog.plan();
    let mut changes = Vec::new();
    let mut refusals = Vec::new();
    for table in catalog.tables() {
        if table.kind != TableKind::Events || table.name == tables::USAGE_EVENTS {
            continue;
        }
        let columns: Vec<&LiveColumn> = live.iter().filter(|c| c.table == table.name).collect();
        if columns.is_empty() {
            changes.push(Change::CreateTable { table: table.name });
            continue;
        }
        for column in &table.columns[EVENT_COLUMNS.len()..] {
            let event = events_of(plan, table.name, column.name);
            match columns
                .iter()
                .find(|c| c.column.eq_ignore_ascii_case(column.name))
            {
                None => changes.push(Change::AddColumn {
                    table: table.name,
                    column: column.name,
                    ty: column.ty,
                }),
                Some(found) => match relation(column.ty, found) {
                    Relation::Same => {}
                    Relation::Widen => changes.push(Change::Widen {
                        table: table.name,
                        column: column.name,
                        from: describe_live(found),
                        to: column.ty,
                    }),
                    Relation::Narrower => refusals.push(format!(
                        "event {event}, column `{}`.`{}`: narrowing it from {} to {} would cut \
                         stored values",
                        table.name,
                        column.name,
                        describe_live(found),
                        mysql_type(column.ty)
                    )),
                    Relation::Other => refusals.push(format!(
                        "event {event}, column `{}`.`{}`: it holds {}; reading it as {} would \
                         reinterpret stored values (add a column of another name instead)",
                        table.name,
                        column.name,
                        describe_live(found),
                        mysql_type(column.ty)
                    )),
                },
            }
        }
        for found in &columns {
            let common = found.column == "id"
                || EVENT_COLUMNS
                    .iter()
                    .any(|c| c.name.eq_ignore_ascii_case(&found.column));
            let declared = table
                .columns
                .iter()
                .any(|c| c.name.eq_ignore_ascii_case(&found.column));
            if !common && !declared {
                refusals.push(format!(
                    "event {}, column `{}`.`{}`: the plan no longer declares it; the collector \
                     never drops a column (its values would be lost): declare it again, or drop \
                     it yourself",
                    events_of(plan, table.name, ""),
                    table.name,
                    found.column
                ));
            }
        }
    }
    if refusals.is_empty() {
        Ok(changes)
    } else {
        Err(Refused { refusals })
    }
}

/// The events of `table` (those declaring `column`, if one does), for messages.
fn events_of(plan: &Plan, table: &str, column: &str) -> String {
    let of_table = plan.events.iter().filter(|e| e.table == table);
    let declaring: Vec<&str> = of_table
        .clone()
        .filter(|e| e.column(column).is_some())
        .map(|e| e.name)
        .collect();
    let names = if declaring.is_empty() {
        of_table.map(|e| e.name).collect()
    } else {
        declaring
    };
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    quoted.join(" and ")
}

/// How a column in the database stands to the type the plan declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    /// It holds what the plan declares (or more, where nothing is lost by keeping it).
    Same,
    /// Same kind of value, narrower: widening it keeps every value.
    Widen,
    /// Same kind, wider than the plan now says: narrowing it would cut values.
    Narrower,
    /// Another kind of value.
    Other,
}

const SMALL_INTS: [&str; 4] = ["tinyint", "smallint", "mediumint", "int"];
const TEXTS: [&str; 4] = ["text", "mediumtext", "longtext", "clob"];

fn relation(declared: ColumnType, live: &LiveColumn) -> Relation {
    let t = live.data_type.as_str();
    match declared {
        ColumnType::Text { max_chars } => match t {
            "varchar" | "char" => match live.length {
                Some(have) if have < i64::from(max_chars) => Relation::Widen,
                Some(have) if have > i64::from(max_chars) => Relation::Narrower,
                _ => Relation::Same,
            },
            // TEXT holds any width a plan may declare.
            _ if TEXTS.contains(&t) || t == "tinytext" => {
                if t == "tinytext" && max_chars > 63 {
                    Relation::Widen
                } else {
                    Relation::Same
                }
            }
            _ => Relation::Other,
        },
        ColumnType::Int => match t {
            "bigint" => Relation::Same,
            // SQLite's INTEGER is 64 bits.
            "integer" => Relation::Same,
            _ if SMALL_INTS.contains(&t) => Relation::Widen,
            _ => Relation::Other,
        },
        ColumnType::Int32 => match t {
            "int" | "integer" => Relation::Same,
            "tinyint" | "smallint" | "mediumint" => Relation::Widen,
            "bigint" => Relation::Narrower,
            _ => Relation::Other,
        },
        ColumnType::Float => match t {
            "double" | "real" | "double precision" => Relation::Same,
            "float" => Relation::Widen,
            _ => Relation::Other,
        },
        ColumnType::Bool => match t {
            "tinyint" | "boolean" | "bool" | "bit" => Relation::Same,
            _ => Relation::Other,
        },
        ColumnType::Timestamp => match t {
            "datetime" | "timestamp" => Relation::Same,
            _ => Relation::Other,
        },
        // MariaDB's JSON is LONGTEXT with a check; SQLite's built-in tables declare TEXT.
        ColumnType::Json => match t {
            "json" => Relation::Same,
            _ if TEXTS.contains(&t) => Relation::Same,
            _ => Relation::Other,
        },
        ColumnType::EventId => Relation::Same,
    }
}

fn describe_live(live: &LiveColumn) -> String {
    match live.length {
        Some(length) if matches!(live.data_type.as_str(), "varchar" | "char") => {
            format!("{}({length})", live.data_type.to_ascii_uppercase())
        }
        _ => live.data_type.to_ascii_uppercase(),
    }
}

/// A column type in MySQL's words.
pub fn mysql_type(ty: ColumnType) -> String {
    match ty {
        ColumnType::EventId => "BINARY(16)".to_owned(),
        ColumnType::Text { max_chars } if max_chars <= VARCHAR_MAX => {
            format!("VARCHAR({max_chars})")
        }
        ColumnType::Text { .. } => "TEXT".to_owned(),
        ColumnType::Int => "BIGINT".to_owned(),
        ColumnType::Int32 => "INT".to_owned(),
        ColumnType::Float => "DOUBLE".to_owned(),
        ColumnType::Bool => "BOOLEAN".to_owned(),
        ColumnType::Timestamp => "DATETIME(6)".to_owned(),
        ColumnType::Json => "JSON".to_owned(),
    }
}

/// A column type in SQLite's words (the same names: SQLite keeps them, and verification reads
/// the widths back).
fn sqlite_type(ty: ColumnType) -> String {
    match ty {
        ColumnType::EventId => "BLOB".to_owned(),
        ColumnType::Timestamp => "DATETIME".to_owned(),
        other => mysql_type(other),
    }
}

/// The statements of one change, for the database behind `pool`.
fn statements(change: &Change, table: Option<&Table>, mysql: bool) -> Vec<String> {
    let ty = |ty| {
        if mysql {
            mysql_type(ty)
        } else {
            sqlite_type(ty)
        }
    };
    match change {
        Change::CreateTable { table: name } => {
            let table = table.expect("the table of a create");
            let mut sql = format!("CREATE TABLE IF NOT EXISTS `{name}` (\n");
            if mysql {
                sql.push_str("    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,\n");
            } else {
                sql.push_str("    id INTEGER PRIMARY KEY AUTOINCREMENT,\n");
            }
            sql.push_str(&format!(
                "    event_id {} NOT NULL,\n",
                ty(ColumnType::EventId)
            ));
            for column in &table.columns[1..] {
                let required = matches!(column.name, "service" | "timestamp");
                sql.push_str(&format!(
                    "    `{}` {} {},\n",
                    column.name,
                    ty(column.ty),
                    if required { "NOT NULL" } else { "NULL" }
                ));
            }
            if mysql {
                sql.push_str(
                    "    UNIQUE KEY uq_service_event (service, event_id),\n    KEY ix_time \
                     (`timestamp`),\n    KEY ix_service_session (service, session_id)\n) \
                     ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
                );
                vec![sql]
            } else {
                let body = sql.trim_end().trim_end_matches(',').to_owned() + "\n)";
                vec![
                    body,
                    format!(
                        "CREATE UNIQUE INDEX IF NOT EXISTS uq_{name}_service_event ON `{name}` \
                         (service, event_id)"
                    ),
                    format!("CREATE INDEX IF NOT EXISTS ix_{name}_time ON `{name}` (`timestamp`)"),
                    format!(
                        "CREATE INDEX IF NOT EXISTS ix_{name}_service_session ON `{name}` \
                         (service, session_id)"
                    ),
                ]
            }
        }
        Change::AddColumn {
            table,
            column,
            ty: t,
        } => vec![format!(
            "ALTER TABLE `{table}` ADD COLUMN `{column}` {} NULL",
            ty(*t)
        )],
        Change::Widen {
            table, column, to, ..
        } => {
            if mysql {
                vec![format!(
                    "ALTER TABLE `{table}` MODIFY COLUMN `{column}` {} NULL",
                    mysql_type(*to)
                )]
            } else {
                // SQLite cannot change a column's declared type: a new column takes the
                // values, and the old one goes.
                let old = format!("{column}__before_widening");
                vec![
                    format!("ALTER TABLE `{table}` RENAME COLUMN `{column}` TO `{old}`"),
                    format!(
                        "ALTER TABLE `{table}` ADD COLUMN `{column}` {} NULL",
                        sqlite_type(*to)
                    ),
                    format!("UPDATE `{table}` SET `{column}` = `{old}`"),
                    format!("ALTER TABLE `{table}` DROP COLUMN `{old}`"),
                ]
            }
        }
    }
}

/// Why the plan's schema could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExpandError {
    /// A change would lose or reinterpret data.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The database failed a statement (or the read of its schema).
    #[error("{change}: {message}")]
    Database {
        /// What was being done.
        change: String,
        /// The database's error, secrets removed.
        message: String,
    },
}

impl Sink {
    /// Makes the schema hold what `catalog`'s plan declares (see the module's rules); returns
    /// the changes made.
    pub async fn expand(&self, catalog: &Catalog) -> Result<Vec<Change>, ExpandError> {
        let database = |change: &str, e: sqlx::Error| ExpandError::Database {
            change: change.to_owned(),
            message: self.redactor().redact(&e.to_string()),
        };
        let live = self
            .live_columns(catalog)
            .await
            .map_err(|e| database("reading the schema", e))?;
        let changes = plan_changes(catalog, &live)?;
        for change in &changes {
            let table = match change {
                Change::CreateTable { table } => catalog.tables().iter().find(|t| t.name == *table),
                _ => None,
            };
            let result = match self.pool() {
                PoolRef::MySql(pool) => run(pool, statements(change, table, true)).await,
                PoolRef::Sqlite(pool) => run(pool, statements(change, table, false)).await,
                PoolRef::Blackhole => Ok(()),
            };
            result.map_err(|e| database(&change.to_string(), e))?;
            tracing::info!(%change, "tracking plan: schema changed");
        }
        Ok(changes)
    }
}

async fn run<'p, DB: sqlx::Database>(
    pool: &'p sqlx::Pool<DB>,
    statements: Vec<String>,
) -> Result<(), sqlx::Error>
where
    &'p sqlx::Pool<DB>: Executor<'p, Database = DB>,
{
    for sql in statements {
        pool.execute(sqlx::AssertSqlSafe(sql)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn catalog(text: &str) -> Catalog {
        Catalog::of_plan(Arc::new(Plan::parse(text).expect("a valid plan")))
    }

    const STEPS: &str = r#"
        version = 1
        [[events]]
        name = "debugger_step"
        table = "debugger_steps"
        columns = [
            { column = "line", attribute = "debugger.line", type = "int32" },
            { column = "note", attribute = "debugger.note", type = "string", max_chars = 64 },
        ]
    "#;

    fn live(columns: &[(&str, &str, Option<i64>)]) -> Vec<LiveColumn> {
        let mut all = vec![
            LiveColumn::new("debugger_steps", "id", "bigint", None),
            LiveColumn::new("debugger_steps", "event_id", "binary", Some(16)),
            LiveColumn::new("debugger_steps", "service", "varchar", Some(128)),
            LiveColumn::new("debugger_steps", "session_id", "varchar", Some(128)),
            LiveColumn::new("debugger_steps", "user_id", "varchar", Some(128)),
            LiveColumn::new("debugger_steps", "timestamp", "datetime", None),
        ];
        for (column, ty, length) in columns {
            all.push(LiveColumn::new("debugger_steps", column, ty, *length));
        }
        all
    }

    #[test]
    fn a_new_table_is_created_and_a_new_column_added() {
        let plan = catalog(STEPS);
        assert_eq!(
            plan_changes(&plan, &[]).unwrap(),
            [Change::CreateTable {
                table: "debugger_steps"
            }]
        );
        let changes = plan_changes(&plan, &live(&[("line", "int", None)])).unwrap();
        assert_eq!(
            changes,
            [Change::AddColumn {
                table: "debugger_steps",
                column: "note",
                ty: ColumnType::Text { max_chars: 64 }
            }]
        );
        assert_eq!(
            changes[0].to_string(),
            "add column `debugger_steps`.`note` (VARCHAR(64))"
        );
    }

    #[test]
    fn wider_is_done_and_narrower_or_another_kind_is_refused_by_name() {
        let plan = catalog(STEPS);
        let changes = plan_changes(
            &plan,
            &live(&[("line", "smallint", None), ("note", "varchar", Some(32))]),
        )
        .unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(
            changes[1].to_string(),
            "widen column `debugger_steps`.`note` from VARCHAR(32) to VARCHAR(64)"
        );
        let refused = plan_changes(
            &plan,
            &live(&[
                ("line", "bigint", None),
                ("note", "datetime", None),
                ("breakpoints", "int", None),
            ]),
        )
        .unwrap_err();
        assert_eq!(
            refused.refusals,
            [
                "event `debugger_step`, column `debugger_steps`.`line`: narrowing it from BIGINT \
                 to INT would cut stored values",
                "event `debugger_step`, column `debugger_steps`.`note`: it holds DATETIME; \
                 reading it as VARCHAR(64) would reinterpret stored values (add a column of \
                 another name instead)",
                "event `debugger_step`, column `debugger_steps`.`breakpoints`: the plan no \
                 longer declares it; the collector never drops a column (its values would be \
                 lost): declare it again, or drop it yourself",
            ]
        );
    }

    #[test]
    fn the_built_in_schema_needs_nothing() {
        let catalog = Catalog::built_in();
        let mut columns = Vec::new();
        for table in catalog.tables() {
            columns.push(LiveColumn::new(table.name, "id", "bigint", None));
            for column in &table.columns {
                let (ty, length) = match column.ty {
                    ColumnType::Text { max_chars } => ("varchar", Some(i64::from(max_chars))),
                    ColumnType::EventId => ("binary", Some(16)),
                    ColumnType::Int => ("bigint", None),
                    ColumnType::Int32 => ("int", None),
                    ColumnType::Float => ("double", None),
                    ColumnType::Bool => ("tinyint", None),
                    ColumnType::Timestamp => ("datetime", None),
                    ColumnType::Json => ("longtext", None),
                };
                columns.push(LiveColumn::new(table.name, column.name, ty, length));
            }
        }
        assert_eq!(plan_changes(&catalog, &columns).unwrap(), []);
    }

    #[test]
    fn a_created_table_has_the_common_columns_and_keys() {
        let plan = catalog(STEPS);
        let table = plan.tables().iter().find(|t| t.name == "debugger_steps");
        let change = Change::CreateTable {
            table: "debugger_steps",
        };
        let mysql = statements(&change, table, true);
        assert!(mysql[0].contains("UNIQUE KEY uq_service_event (service, event_id)"));
        assert!(mysql[0].contains("`line` INT NULL"));
        assert!(mysql[0].contains("`service` VARCHAR(128) NOT NULL"));
        let sqlite = statements(&change, table, false);
        assert_eq!(sqlite.len(), 4);
        assert!(
            sqlite[0].ends_with("`note` VARCHAR(64) NULL\n)"),
            "{}",
            sqlite[0]
        );
    }
}
