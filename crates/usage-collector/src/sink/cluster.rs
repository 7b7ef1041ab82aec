//! What the sink knows of a database cluster, and moving to another node when the one in use
//! leaves it.
//!
//! **Facts** ([`ClusterFacts`]), read at startup verification: whether the server is a Galera
//! node (`@@wsrep_on`), the cluster's size, and the write-set limits a transaction must stay
//! within (`wsrep_max_ws_rows`, `wsrep_max_ws_size`). They change what an error means (a
//! deadlock on a Galera node is a certification conflict), what a health check asks (a node
//! outside the primary component still answers `SELECT 1`), and how large the writer makes a
//! transaction.
//!
//! **Hosts** ([`Hosts`]): a database URL may name several hosts,
//! `mysql://user:pw@db-1:3306,db-2:3306,db-3:3306/usage` (the form of MariaDB's and MySQL's
//! Connector/J). The pool dials one at a time, in order. When an operation that started on the
//! host in use fails in a way that says the node is gone or out of the cluster (a connection
//! refused or lost, no connection within the timeout, the collector's own deadline, or a
//! `node_not_ready` answer), the sink moves to the next host: one pool, its connect options
//! switched, and every connection opened before the switch closed instead of reused (the
//! pool's `before_acquire` hook compares the connection's age with the time of the switch).
//! Several write streams failing at once move it once: a failure moves the sink only if no
//! other move happened since its operation began (a compare-and-swap on the move count).
//! Each move is logged once at WARN with the hosts it left and took, and counted
//! (`usage_collector_database_failovers_total`; `usage_collector_database_host{host}` says
//! which host is in use). A URL with one host never moves: it behaves as before.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool};

use super::error::{ErrorKind, Server, SinkError};

/// What verification found out about the server's clustering.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    /// A Galera node (`@@wsrep_on = 1`).
    pub galera: bool,
    /// Nodes in its cluster (`wsrep_cluster_size`).
    pub size: u64,
    /// Most rows one transaction may write (`wsrep_max_ws_rows`; 0: no limit).
    pub max_ws_rows: u64,
    /// Most bytes one transaction's write set may hold (`wsrep_max_ws_size`).
    pub max_ws_size: u64,
}

/// The write-set limits the writer keeps each transaction under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteSetLimits {
    /// Rows written (inserted or updated) per transaction; `u64::MAX`: no limit.
    pub rows: u64,
    /// Bytes per transaction's write set; `u64::MAX`: no limit.
    pub bytes: u64,
}

/// The largest write set Galera takes at all (`wsrep_max_ws_size` cannot be set higher): at or
/// above it, the size is no limit the collector's batches come near.
const GALERA_MAX_WS_SIZE: u64 = 2_147_483_647;

/// The sink's shared view of the cluster: facts from verification, and the hosts.
#[derive(Debug, Default)]
pub struct Cluster {
    galera: AtomicBool,
    max_ws_rows: AtomicU64,
    max_ws_size: AtomicU64,
    hosts: Option<Hosts>,
}

impl Cluster {
    /// A cluster view for a MySQL URL naming `hosts` (one or more), dialled with `options`.
    pub fn new(hosts: Vec<(String, u16)>, options: MySqlConnectOptions) -> Self {
        Self {
            hosts: Some(Hosts {
                hosts,
                current: AtomicUsize::new(0),
                moves: AtomicU64::new(0),
                moved_at: Mutex::new(None),
                options,
            }),
            ..Self::default()
        }
    }

    /// Remembers what verification found.
    pub fn learn(&self, facts: &ClusterFacts) {
        self.galera.store(facts.galera, Ordering::SeqCst);
        self.max_ws_rows.store(facts.max_ws_rows, Ordering::SeqCst);
        self.max_ws_size.store(facts.max_ws_size, Ordering::SeqCst);
    }

    /// What kind of server errors come from.
    pub fn server(&self) -> Server {
        if self.galera.load(Ordering::SeqCst) {
            Server::Galera
        } else {
            Server::Single
        }
    }

    /// The limits a transaction must stay within, if the server has any.
    pub fn write_set_limits(&self) -> Option<WriteSetLimits> {
        if !self.galera.load(Ordering::SeqCst) {
            return None;
        }
        let rows = match self.max_ws_rows.load(Ordering::SeqCst) {
            0 => u64::MAX,
            n => n,
        };
        let bytes = match self.max_ws_size.load(Ordering::SeqCst) {
            n if n >= GALERA_MAX_WS_SIZE || n == 0 => u64::MAX,
            n => n,
        };
        (rows != u64::MAX || bytes != u64::MAX).then_some(WriteSetLimits { rows, bytes })
    }

    /// The hosts, when the sink speaks to a MySQL server.
    pub fn hosts(&self) -> Option<&Hosts> {
        self.hosts.as_ref()
    }

    /// How many moves to another host there have been (0 with one host): an operation notes
    /// it when it begins, and a failure moves the sink only if no other move came between.
    pub fn moves(&self) -> u64 {
        self.hosts
            .as_ref()
            .map_or(0, |h| h.moves.load(Ordering::SeqCst))
    }

    /// After `error` in an operation that began at move count `began`: moves `pool` to the next
    /// host when the error says the node in use is gone or out of the cluster, there is
    /// another host, and nobody moved since. True if it moved.
    pub fn after_failure(&self, began: u64, error: &SinkError, pool: &MySqlPool) -> bool {
        let Some(hosts) = &self.hosts else {
            return false;
        };
        if hosts.hosts.len() < 2 || !leaves_node(error) {
            return false;
        }
        if hosts
            .moves
            .compare_exchange(began, began + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        let from = hosts.current.load(Ordering::SeqCst);
        let to = (from + 1) % hosts.hosts.len();
        *hosts.moved_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        hosts.current.store(to, Ordering::SeqCst);
        let (host, port) = &hosts.hosts[to];
        pool.set_connect_options(hosts.options.clone().host(host).port(*port));
        tracing::warn!(
            from = %hosts.describe(from),
            to = %hosts.describe(to),
            reason = error.reason,
            error = %error.message,
            "database node failed; moving to the next host of the URL (connections to the old one are closed)"
        );
        true
    }
}

/// True for a failure that says the node in use is gone or cannot serve (rather than a
/// problem another node would have too, such as a refused row or a missing table).
fn leaves_node(error: &SinkError) -> bool {
    match error.kind {
        // Not TLS (a certificate problem is every node's) and not a pool closed on shutdown.
        ErrorKind::Connection => !matches!(error.reason, "tls" | "shutdown"),
        // The collector's own deadline: a hung node.
        ErrorKind::Timeout => error.reason == "timeout",
        _ => false,
    }
}

/// The hosts a URL names, and which one is in use.
#[derive(Debug)]
pub struct Hosts {
    hosts: Vec<(String, u16)>,
    current: AtomicUsize,
    moves: AtomicU64,
    /// When the last move happened: connections older than that are to the host left.
    moved_at: Mutex<Option<Instant>>,
    /// The URL's options, the host and port replaced at each move.
    options: MySqlConnectOptions,
}

impl Hosts {
    /// `host:port` of host `index`.
    fn describe(&self, index: usize) -> String {
        let (host, port) = &self.hosts[index];
        format!("{host}:{port}")
    }

    /// `host:port` of every host, in the URL's order.
    pub fn all(&self) -> Vec<String> {
        (0..self.hosts.len()).map(|i| self.describe(i)).collect()
    }

    /// Which of [`Hosts::all`] is in use.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }

    /// `host:port` of the host in use.
    pub fn in_use(&self) -> String {
        self.describe(self.current())
    }

    /// True for a pooled connection opened `age` ago that may be handed out: one opened
    /// before the last move is to the host left, and is closed instead.
    pub fn keeps(&self, age: std::time::Duration) -> bool {
        let moved_at = *self.moved_at.lock().unwrap_or_else(|e| e.into_inner());
        match (moved_at, Instant::now().checked_sub(age)) {
            (Some(moved), Some(opened)) => opened >= moved,
            _ => true,
        }
    }
}

/// Splits a MySQL URL naming several hosts, `mysql://user:pw@h1:3306,h2,h3:3307/db?opts`, into
/// a URL naming the first (for the URL parser, which takes one) and every `(host, port)`
/// (3306 when a host names none). A URL with one host comes back as it is, with that host.
/// `None` when the host list is malformed (an empty entry or a port that is not a number).
pub fn split_hosts(url: &str) -> Option<(String, Vec<(String, u16)>)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let mut parsed = Vec::new();
    for host in hosts.split(',') {
        let host = host.trim();
        // An IPv6 literal keeps its colons inside brackets.
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) if !port.contains(']') => (name, port.parse().ok()?),
            _ => (host, 3306),
        };
        if name.is_empty() {
            return None;
        }
        parsed.push((name.to_owned(), port));
    }
    let first = hosts.split(',').next()?.trim();
    let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    Some((format!("{scheme}://{userinfo}{first}{tail}"), parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_naming_several_hosts_splits_into_the_first_and_the_list() {
        let (url, hosts) = split_hosts(
            "mysql://usage:s3cr@t@db-1:3306,db-2,10.0.0.3:3307/usage?ssl-mode=required",
        )
        .expect("parses");
        assert_eq!(
            url,
            "mysql://usage:s3cr@t@db-1:3306/usage?ssl-mode=required"
        );
        assert_eq!(
            hosts,
            [
                ("db-1".to_owned(), 3306),
                ("db-2".to_owned(), 3306),
                ("10.0.0.3".to_owned(), 3307)
            ]
        );
        let (url, hosts) = split_hosts("mysql://u@127.0.0.1:1/db").expect("one host");
        assert_eq!(url, "mysql://u@127.0.0.1:1/db");
        assert_eq!(hosts, [("127.0.0.1".to_owned(), 1)]);
        let (_, hosts) = split_hosts("mysql://[::1]:3307,[::2]/db").expect("IPv6");
        assert_eq!(
            hosts,
            [("[::1]".to_owned(), 3307), ("[::2]".to_owned(), 3306)]
        );
        assert_eq!(split_hosts("mysql://u@h1,,h2/db"), None);
        assert_eq!(split_hosts("mysql://u@h1:x/db"), None);
    }

    fn error(kind: ErrorKind, reason: &'static str) -> SinkError {
        SinkError {
            kind,
            reason,
            message: reason.to_owned(),
        }
    }

    #[tokio::test]
    async fn a_failure_moves_once_to_the_next_host_and_round() {
        let options = MySqlConnectOptions::new().host("a").port(1).database("db");
        let pool = sqlx::mysql::MySqlPoolOptions::new().connect_lazy_with(options.clone());
        let cluster = Cluster::new(
            vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)],
            options,
        );
        let hosts = cluster.hosts().expect("hosts");
        assert_eq!(hosts.in_use(), "a:1");
        // A row's fault, or a lock, says nothing about the node.
        let began = cluster.moves();
        assert!(!cluster.after_failure(began, &error(ErrorKind::RowValue, "row_value"), &pool));
        assert!(!cluster.after_failure(began, &error(ErrorKind::Conflict, "deadlock"), &pool));
        assert!(!cluster.after_failure(began, &error(ErrorKind::Connection, "tls"), &pool));
        // Two streams failing on the same node move the sink once.
        let gone = error(ErrorKind::Connection, "node_not_ready");
        assert!(cluster.after_failure(began, &gone, &pool));
        assert!(!cluster.after_failure(began, &gone, &pool));
        assert_eq!(hosts.in_use(), "b:2");
        assert_eq!(pool.connect_options().get_host(), "b");
        assert_eq!(pool.connect_options().get_port(), 2);
        // A connection opened before the move is not handed out again.
        assert!(!hosts.keeps(std::time::Duration::from_secs(3600)));
        assert!(hosts.keeps(std::time::Duration::ZERO));
        assert!(cluster.after_failure(
            cluster.moves(),
            &error(ErrorKind::Timeout, "timeout"),
            &pool
        ));
        assert!(cluster.after_failure(
            cluster.moves(),
            &error(ErrorKind::Connection, "pool_timeout"),
            &pool
        ));
        assert_eq!(hosts.in_use(), "a:1", "round to the first again");
        assert_eq!(cluster.moves(), 3);
    }

    #[tokio::test]
    async fn one_host_never_moves() {
        let options = MySqlConnectOptions::new().host("a").port(1).database("db");
        let pool = sqlx::mysql::MySqlPoolOptions::new().connect_lazy_with(options.clone());
        let cluster = Cluster::new(vec![("a".into(), 1)], options);
        let gone = error(ErrorKind::Connection, "connection");
        assert!(!cluster.after_failure(0, &gone, &pool));
        assert_eq!(cluster.moves(), 0);
    }

    #[test]
    fn write_set_limits_only_on_galera_and_only_when_set() {
        let cluster = Cluster::default();
        assert_eq!(cluster.write_set_limits(), None);
        cluster.learn(&ClusterFacts {
            galera: true,
            size: 3,
            max_ws_rows: 0,
            max_ws_size: GALERA_MAX_WS_SIZE,
        });
        assert_eq!(cluster.write_set_limits(), None, "the defaults: no limit");
        assert_eq!(cluster.server(), Server::Galera);
        cluster.learn(&ClusterFacts {
            galera: true,
            size: 3,
            max_ws_rows: 200,
            max_ws_size: 1 << 20,
        });
        assert_eq!(
            cluster.write_set_limits(),
            Some(WriteSetLimits {
                rows: 200,
                bytes: 1 << 20
            })
        );
    }
}
