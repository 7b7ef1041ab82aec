//! MySQL connection options from the settings.

use std::sync::Arc;

use secrecy::ExposeSecret;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlSslMode};
use sqlx::{ConnectOptions, Executor};

use crate::config::{DatabaseSettings, TlsMode};
use crate::sink::cluster::Cluster;
use crate::sink::handle::{OpenError, Target};

/// Each statement sees what others committed before it, and reads take no gap locks: after an
/// insert met an event another transaction wrote, the read of what exists sees that row, and
/// writers appending to the same index end do not block each other (see `sink::sql`).
const SESSION_SETUP: &str = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED";

/// A lazily connecting pool for `url` (which names the first of `hosts`), the target it
/// describes, and the cluster view that moves the pool between `hosts`.
pub fn pool(
    settings: &DatabaseSettings,
    url: &url::Url,
    hosts: Vec<(String, u16)>,
) -> Result<(MySqlPool, Target, Arc<Cluster>), OpenError> {
    let mut options = MySqlConnectOptions::from_url(url).map_err(|e| OpenError::Url {
        message: e.to_string(),
    })?;
    if let Some(password) = &settings.password {
        options = options.password(password.expose_secret());
    }
    options = options.ssl_mode(match settings.tls {
        TlsMode::Disabled => MySqlSslMode::Disabled,
        TlsMode::Preferred => MySqlSslMode::Preferred,
        TlsMode::Required => MySqlSslMode::Required,
        TlsMode::VerifyCa => MySqlSslMode::VerifyCa,
        TlsMode::VerifyIdentity => MySqlSslMode::VerifyIdentity,
    });
    if let Some(ca) = &settings.tls_ca {
        options = options.ssl_ca(ca);
    }
    let target = Target {
        backend: "mysql",
        host: options.get_host().to_owned(),
        port: Some(options.get_port()),
        database: options.get_database().unwrap_or_default().to_owned(),
        user: Some(options.get_username().to_owned()),
        tls: Some(settings.tls),
        more_hosts: hosts
            .iter()
            .skip(1)
            .map(|(host, port)| format!("{host}:{port}"))
            .collect(),
    };
    if target.database.is_empty() {
        return Err(OpenError::Url {
            message: "the MySQL URL names no database (mysql://user@host:port/DATABASE)".into(),
        });
    }
    let cluster = Arc::new(Cluster::new(hosts, options.clone()));
    let hosts = cluster.clone();
    let pool = MySqlPoolOptions::new()
        .max_connections(settings.pool_size)
        .acquire_timeout(settings.connect_timeout)
        .after_connect(|conn, _| {
            Box::pin(async move { conn.execute(SESSION_SETUP).await.map(drop) })
        })
        // A connection opened before the sink moved to another host is to the node it left.
        .before_acquire(move |_, meta| {
            let keep = hosts.hosts().is_none_or(|h| h.keeps(meta.age));
            Box::pin(async move { Ok(keep) })
        })
        .connect_lazy_with(options);
    Ok((pool, target, cluster))
}
