//! One migration run at a time on a MySQL-compatible database, whatever node each collector
//! reaches: the `migrate` row of `collector_leases`, taken before the migrator runs (with its
//! own `GET_LOCK` switched off: on a Galera cluster that lock is local to one node) and released
//! after, renewed meanwhile so that a long migration keeps it and a migrator that died loses it
//! within a minute.
//!
//! The table is made here if it is not there yet (the migration that adds it for retention
//! comes later in the list, and says `IF NOT EXISTS` too), with the same definition.

use std::time::Duration;

use sqlx::MySqlPool;

use super::retention::LeaseSql;

/// How long the lease lasts past each renewal.
const TTL: Duration = Duration::from_secs(60);
/// How often it is renewed while the migration runs.
const RENEW_EVERY: Duration = Duration::from_secs(15);
/// How often a collector waiting for another's migration tries again.
const WAIT_EVERY: Duration = Duration::from_millis(500);
/// How long a collector waits for another's migration before giving up (its startup
/// verification then tries again).
const WAIT_AT_MOST: Duration = Duration::from_secs(600);

const TABLE: &str = "CREATE TABLE IF NOT EXISTS collector_leases (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    holder VARCHAR(255) NOT NULL DEFAULT '',
    expires_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

const ROW: &str = "INSERT INTO collector_leases (name, holder, expires_at) \
    VALUES ('migrate', '', '1970-01-01 00:00:00') ON DUPLICATE KEY UPDATE name = name";

/// True for a deadlock or a cluster's certification conflict (1213): the statement changed
/// nothing and may be tried again.
fn is_conflict(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e)
        if e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| e.number() == 1213))
}

/// The `migrate` lease, held.
#[derive(Debug)]
pub struct MigrateLease {
    holder: String,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for MigrateLease {
    /// A lease dropped without [`MigrateLease::release`] (its migration cancelled) stops being
    /// renewed, and lapses.
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl MigrateLease {
    /// Takes the lease, waiting while another collector migrates.
    pub async fn take(pool: &MySqlPool) -> Result<Self, sqlx::Error> {
        sqlx::query(TABLE).execute(pool).await?;
        let holder = format!("migrate-{}", uuid::Uuid::new_v4().simple());
        let sql = LeaseSql::mysql(TTL);
        let started = tokio::time::Instant::now();
        let mut told = false;
        loop {
            // Two collectors on two nodes of a cluster writing the row at once meet as a
            // certification conflict: the one that lost tries again, and finds it held.
            let attempt = async {
                sqlx::query(ROW).execute(pool).await?;
                sqlx::query(sqlx::AssertSqlSafe(sql.take.clone()))
                    .bind(&holder)
                    .bind("migrate")
                    .bind(&holder)
                    .execute(pool)
                    .await
                    .map(|done| done.rows_affected())
            };
            let taken = match attempt.await {
                Ok(taken) => taken,
                Err(e) if is_conflict(&e) => 0,
                Err(e) => return Err(e),
            };
            if taken == 1 {
                break;
            }
            if started.elapsed() >= WAIT_AT_MOST {
                return Err(sqlx::Error::Protocol(format!(
                    "another collector has been migrating this database for {WAIT_AT_MOST:?} \
                     (the `migrate` row of collector_leases); try again once it is done"
                )));
            }
            if !told {
                tracing::info!("another collector is migrating this database: waiting for it");
                told = true;
            }
            tokio::time::sleep(WAIT_EVERY).await;
        }
        let renewer = tokio::spawn({
            let (pool, holder, renew) = (pool.clone(), holder.clone(), sql.renew.clone());
            async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    let renewed = sqlx::query(sqlx::AssertSqlSafe(renew.clone()))
                        .bind("migrate")
                        .bind(&holder)
                        .execute(&pool)
                        .await;
                    if let Err(e) = renewed {
                        tracing::warn!(error = %e, "cannot renew the migration lease; it lapses within a minute if this goes on");
                    }
                }
            }
        });
        Ok(Self { holder, renewer })
    }

    /// Lets the next collector migrate (a failure is logged: the lease lapses by itself).
    pub async fn release(self, pool: &MySqlPool) {
        self.renewer.abort();
        let released = sqlx::query(sqlx::AssertSqlSafe(LeaseSql::mysql(TTL).release))
            .bind("migrate")
            .bind(&self.holder)
            .execute(pool)
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "cannot release the migration lease; it lapses within a minute");
        }
    }
}
