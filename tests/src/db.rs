//! A fresh database per test.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use sqlx::{Connection, Executor, MySqlConnection, Row};

/// The MariaDB server the tests use, without a database name.
pub fn server_url() -> String {
    std::env::var("USAGE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

fn parsed_server_url() -> url::Url {
    let text = server_url();
    url::Url::parse(&text).unwrap_or_else(|e| panic!("USAGE_TEST_MYSQL_URL {text:?}: {e}"))
}

/// The MariaDB server's host and port as `server_url()` names them (port 3306 when it names
/// none): what the collector's messages say it connected to.
pub fn server_host_port() -> (String, u16) {
    let url = parsed_server_url();
    let host = url
        .host_str()
        .expect("a host in the MariaDB URL")
        .to_owned();
    (host, url.port().unwrap_or(3306))
}

/// The MariaDB server's socket address, for a proxy in front of it.
pub fn server_addr() -> SocketAddr {
    let (host, port) = server_host_port();
    (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve the MariaDB host {host}:{port}"))
}

/// `server_url()` with its host and port replaced by `addr` (a proxy in front of the server).
pub fn server_url_via(addr: SocketAddr) -> String {
    let mut url = parsed_server_url();
    url.set_ip_host(addr.ip()).expect("a URL that has a host");
    url.set_port(Some(addr.port()))
        .expect("a URL that has a host");
    url.as_str().trim_end_matches('/').to_owned()
}

/// `server_url()` with other credentials: `user`, and `password` when given.
pub fn server_url_as(user: &str, password: Option<&str>) -> String {
    let mut url = parsed_server_url();
    url.set_username(user).expect("a URL that has a host");
    url.set_password(password).expect("a URL that has a host");
    url.as_str().trim_end_matches('/').to_owned()
}

/// A database that exists for one test.
pub enum TestDb {
    /// A uniquely named MariaDB database, dropped when this value is dropped.
    MySql {
        /// The server it was created on, without a database name (administration, dropping).
        server: String,
        /// Its name.
        name: String,
        /// URL including the database.
        url: String,
        /// Pool for reading rows back.
        pool: sqlx::MySqlPool,
    },
    /// A SQLite file in a temporary folder, removed when this value is dropped.
    Sqlite {
        /// The folder holding the file.
        dir: PathBuf,
        /// URL of the file.
        url: String,
        /// Pool for reading rows back.
        pool: sqlx::SqlitePool,
    },
}

fn as_texts<R: Row>(rows: &[R]) -> Vec<Vec<Option<String>>>
where
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    rows.iter()
        .map(|row| {
            (0..row.len())
                .map(|i| row.get::<Option<String>, _>(i))
                .collect()
        })
        .collect()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

impl TestDb {
    /// Creates an empty MariaDB database with a unique name.
    pub async fn mysql() -> Self {
        Self::mysql_on(&server_url()).await
    }

    /// Creates an empty database with a unique name on the server at `server` (a URL without
    /// a database, such as a cluster node's), read back through that server.
    pub async fn mysql_on(server: &str) -> Self {
        let name = unique("usage_test");
        admin_on(
            server,
            format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"),
        )
        .await
        .unwrap_or_else(|e| panic!("create a test database on MariaDB at {server}: {e}"));
        let url = format!("{server}/{name}");
        let pool = sqlx::MySqlPool::connect(&url)
            .await
            .expect("connect to test database");
        TestDb::MySql {
            server: server.to_owned(),
            name,
            url,
            pool,
        }
    }

    /// Creates an empty SQLite file in a unique temporary folder.
    pub async fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(unique("usage_test"));
        std::fs::create_dir_all(&dir).expect("create temp folder");
        let url = format!("sqlite://{}", dir.join("usage.db").display());
        let options: sqlx::sqlite::SqliteConnectOptions = url.parse().expect("sqlite url");
        let pool = sqlx::SqlitePool::connect_with(options.create_if_missing(true))
            .await
            .expect("open sqlite");
        TestDb::Sqlite { dir, url, pool }
    }

    /// The MariaDB database's name (panics for SQLite).
    pub fn name(&self) -> &str {
        match self {
            TestDb::MySql { name, .. } => name,
            TestDb::Sqlite { .. } => panic!("a SQLite test database has no name"),
        }
    }

    /// The MariaDB database's URL through `proxy` instead of straight to the server.
    pub fn url_via(&self, proxy: SocketAddr) -> String {
        format!("{}/{}", server_url_via(proxy), self.name())
    }

    /// The database's URL, for the collector.
    pub fn url(&self) -> &str {
        match self {
            TestDb::MySql { url, .. } | TestDb::Sqlite { url, .. } => url,
        }
    }

    /// Runs `sql` and returns every row with every column as text (NULL as `None`).
    /// Write `CAST(x AS CHAR)` for non-text columns; on SQLite it becomes `CAST(x AS TEXT)`.
    pub async fn texts(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let result = match self {
            TestDb::MySql { pool, .. } => sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_all(pool)
                .await
                .map(|rows| as_texts(&rows)),
            TestDb::Sqlite { pool, .. } => {
                let sql = sql.replace(" AS CHAR)", " AS TEXT)");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(pool)
                    .await
                    .map(|rows| as_texts(&rows))
            }
        };
        result.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// `SELECT COUNT(*) FROM table`.
    pub async fn count(&self, table: &str) -> i64 {
        let rows = self
            .texts(&format!("SELECT CAST(COUNT(*) AS CHAR) FROM {table}"))
            .await;
        rows[0][0]
            .as_deref()
            .unwrap_or("0")
            .parse()
            .expect("a count")
    }

    /// Runs a statement (schema changes in tests).
    pub async fn execute(&self, sql: &str) {
        let result = match self {
            TestDb::MySql { pool, .. } => pool
                .execute(sqlx::AssertSqlSafe(sql.to_owned()))
                .await
                .map(drop),
            TestDb::Sqlite { pool, .. } => pool
                .execute(sqlx::AssertSqlSafe(sql.to_owned()))
                .await
                .map(drop),
        };
        result.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match self {
            TestDb::MySql { server, name, .. } => {
                let drop = format!("DROP DATABASE IF EXISTS `{name}`");
                if let Err(e) = admin_blocking_on(server.clone(), drop) {
                    eprintln!("could not drop a test database: {e}");
                }
            }
            TestDb::Sqlite { dir, .. } => {
                if let Err(e) = std::fs::remove_dir_all(&*dir) {
                    eprintln!("could not remove {}: {e}", dir.display());
                }
            }
        }
    }
}

/// Runs one statement as the server's administrator.
async fn admin(sql: String) -> Result<(), sqlx::Error> {
    admin_on(&server_url(), sql).await
}

/// Runs one statement as the administrator of the server at `server`.
async fn admin_on(server: &str, sql: String) -> Result<(), sqlx::Error> {
    let mut admin = MySqlConnection::connect(server).await?;
    admin.execute(sqlx::AssertSqlSafe(sql)).await?;
    Ok(())
}

/// [`admin`] from anywhere, a `Drop` included: on a thread with its own runtime.
fn admin_blocking(sql: String) -> Result<(), String> {
    admin_blocking_on(server_url(), sql)
}

/// [`admin_on`] from anywhere, a `Drop` included: on a thread with its own runtime.
fn admin_blocking_on(server: String, sql: String) -> Result<(), String> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(admin_on(&server, sql))
            .map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the thread running the statement panicked".to_owned())?
}

/// A MariaDB account (`name`@`%`) with a password and no privileges, dropped when this value
/// is dropped: an account that exists, so the server's refusals name the password it was
/// given (for an unknown user it answers unpredictably).
pub struct TestAccount {
    /// Its user name.
    pub name: String,
}

impl TestAccount {
    /// Creates the account with `password`.
    pub async fn create(password: &str) -> Self {
        let name = unique("usage_user")[..24].to_owned();
        admin(format!(
            "CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'"
        ))
        .await
        .unwrap_or_else(|e| panic!("create the account {name}: {e}"));
        Self { name }
    }
}

impl Drop for TestAccount {
    fn drop(&mut self) {
        if let Err(e) = admin_blocking(format!("DROP USER IF EXISTS '{}'@'%'", self.name)) {
            eprintln!("could not drop the test account {}: {e}", self.name);
        }
    }
}
