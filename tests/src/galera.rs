//! A real MariaDB Galera cluster on loopback: three (or more) `mariadbd` processes, each with
//! its own data folder, log and ports (SQL, group communication, IST, SST by rsync), for the
//! cluster tests.
//!
//! Node 1 is created with `mariadb-install-db` and bootstraps the cluster
//! (`--wsrep-new-cluster`); the others join it by state transfer (rsync) from an empty data
//! folder. [`Cluster::start`] returns once every node counts the whole cluster
//! (`wsrep_cluster_size`) and is `Synced`; a node that does not come up fails the test with
//! the last lines of its own log ([`crate::service::Service`]).
//!
//! Faults a test can cause: [`Cluster::kill`] (SIGKILL, the node's process group with its
//! state-transfer helpers), [`Cluster::restart`] (the node rejoins and catches up by
//! incremental state transfer, IST), [`Cluster::isolate`] (the server keeps running and
//! answering, but leaves the primary component: `gmcast.isolate=1` cuts its group
//! communication, and after the group's suspect timeout it answers `WSREP has not yet prepared
//! node for application use`, error 1047) and [`Cluster::rejoin`].
//!
//! Clean-up: dropping the cluster kills every node and removes the folder. Because a test
//! binary may keep one cluster for all its tests ([`shared`]) and statics are never dropped, a
//! small watchdog process does the same once the test process is gone, however it ended.
//!
//! The cluster is kept small: 128 MiB of buffer pool, a 64 MiB write-set cache and a 48 MiB
//! redo log per node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, MySqlConnection, Row};

use crate::process::free_addr;
use crate::service::Service;

/// Galera's provider library, as Debian's `galera-4` installs it.
pub const PROVIDER: &str = "/usr/lib/galera/libgalera_smm.so";
/// How long a node may take to come up (a joiner's state transfer included).
const START_LIMIT: Duration = Duration::from_secs(90);
/// How long a node may take to leave the primary component after being isolated (the group's
/// suspect and inactive timeouts, 5 s and 15 s by default).
const LEAVE_LIMIT: Duration = Duration::from_secs(40);

/// One node's loopback ports.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// SQL clients.
    pub sql: u16,
    /// Group communication (gcomm).
    pub gcomm: u16,
    /// Incremental state transfer (IST) receiver.
    pub ist: u16,
    /// Snapshot state transfer (SST, rsync) receiver.
    pub sst: u16,
}

struct Node {
    /// 1-based, as the tests and the logs name it.
    number: usize,
    ports: Ports,
    dir: PathBuf,
    service: Option<Service>,
}

impl Node {
    fn datadir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("mariadbd.log")
    }

    fn name(&self) -> String {
        format!(
            "galera node {} (SQL on 127.0.0.1:{})",
            self.number, self.ports.sql
        )
    }
}

/// A running Galera cluster; stopped and removed when dropped.
pub struct Cluster {
    dir: PathBuf,
    nodes: Vec<Node>,
    /// Kills the nodes and removes `dir` once this process is gone.
    watchdog: Option<Child>,
    /// Extra server options every node starts with.
    options: Vec<String>,
}

/// True when this process runs as root (then the servers run as the `mysql` user, as mariadbd
/// refuses to run as root).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs a command, panicking with its output when it fails.
fn run(what: &str, command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what}: {command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Makes `path` the `mysql` user's when the servers run as that user.
fn hand_to_server(path: &Path) {
    if running_as_root() {
        run(
            "hand a folder to the mysql user",
            Command::new("chown").arg("-R").arg("mysql:").arg(path),
        );
    }
}

/// A folder the server's user can reach: 0755 on every level this harness creates.
fn open_dir(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
}

/// Runs one statement as root on the server at `url`.
async fn execute(url: &str, sql: &str) -> Result<(), sqlx::Error> {
    let mut conn = MySqlConnection::connect(url).await?;
    conn.execute(sqlx::AssertSqlSafe(sql.to_owned())).await?;
    conn.close().await
}

/// A global status variable of the server at `url`.
async fn status(url: &str, variable: &str) -> Result<Option<String>, sqlx::Error> {
    let mut conn = MySqlConnection::connect(url).await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SHOW GLOBAL STATUS LIKE '{variable}'"
    )))
    .fetch_optional(&mut conn)
    .await?;
    let value = match row {
        Some(row) => Some(row.try_get::<String, _>(1)?),
        None => None,
    };
    conn.close().await?;
    Ok(value)
}

impl Cluster {
    /// Starts a cluster of `nodes` nodes and waits until every one is in it and `Synced`.
    pub async fn start(nodes: usize) -> Self {
        Self::start_with(nodes, &[]).await
    }

    /// [`Cluster::start`], every node with these extra server options
    /// (`--wsrep_max_ws_rows=200`).
    pub async fn start_with(nodes: usize, options: &[&str]) -> Self {
        assert!(nodes >= 1, "a cluster has at least one node");
        assert!(
            Path::new(PROVIDER).exists(),
            "Galera is not installed ({PROVIDER} is missing): scripts/test installs Debian's \
             galera-4 and rsync, or run `apt-get install galera-4 rsync`"
        );
        let started = Instant::now();
        let dir =
            std::env::temp_dir().join(format!("usage_galera_{}", uuid::Uuid::new_v4().simple()));
        open_dir(&dir);
        let nodes: Vec<Node> = (1..=nodes)
            .map(|number| {
                let node_dir = dir.join(format!("node{number}"));
                open_dir(&node_dir);
                let port = || free_addr().port();
                Node {
                    number,
                    ports: Ports {
                        sql: port(),
                        gcomm: port(),
                        ist: port(),
                        sst: port(),
                    },
                    dir: node_dir,
                    service: None,
                }
            })
            .collect();
        let watchdog = Self::watchdog(&dir);
        let mut cluster = Cluster {
            dir,
            nodes,
            watchdog: Some(watchdog),
            options: options.iter().map(|o| (*o).to_owned()).collect(),
        };
        cluster.install_first();
        for number in 1..=cluster.nodes.len() {
            cluster.launch(number, number == 1, None);
            cluster.wait_synced(number, START_LIMIT).await;
        }
        cluster.wait_size(cluster.nodes.len()).await;
        eprintln!(
            "galera: {} nodes up and synced in {:.1} s (SQL ports {:?}, folder {})",
            cluster.nodes.len(),
            started.elapsed().as_secs_f64(),
            cluster
                .nodes
                .iter()
                .map(|n| n.ports.sql)
                .collect::<Vec<_>>(),
            cluster.dir.display()
        );
        cluster
    }

    /// A process that waits for this one to end, then kills every node (by the process id
    /// file each server writes) and removes the folder.
    fn watchdog(dir: &Path) -> Child {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             for f in '{dir}'/node*/mariadbd.pid; do \
               [ -f \"$f\" ] || continue; p=$(cat \"$f\"); \
               kill -KILL -\"$p\" 2>/dev/null; kill -KILL \"$p\" 2>/dev/null; \
             done; sleep 1; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = dir.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cluster's watchdog (sh)")
    }

    /// Creates node 1's data folder (root over TCP with an empty password).
    fn install_first(&self) {
        let node = &self.nodes[0];
        let mut command = Command::new("mariadb-install-db");
        command.arg("--no-defaults");
        if running_as_root() {
            command.arg("--user=mysql");
        }
        let log = std::fs::File::create(node.dir.join("install.log")).expect("install log");
        let status = command
            .arg(format!("--datadir={}", node.datadir().display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .status()
            .expect("run mariadb-install-db");
        assert!(
            status.success(),
            "mariadb-install-db failed ({status}); last lines of its log:\n{}",
            crate::service::log_tail(&node.dir.join("install.log"), 40)
        );
    }

    /// The server command of node `number`, with every option it always runs with.
    fn server(&self, number: usize) -> Command {
        let members: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.ports.gcomm))
            .collect();
        let node = &self.nodes[number - 1];
        let p = node.ports;
        let mut command = Command::new("/usr/sbin/mariadbd");
        command.arg("--no-defaults");
        if running_as_root() {
            command.arg("--user=mysql");
        }
        command
            .arg(format!("--datadir={}", node.datadir().display()))
            .arg("--wsrep_on=ON")
            .arg(format!("--wsrep_provider={PROVIDER}"))
            .arg("--wsrep_cluster_name=usage-test")
            .arg(format!(
                "--wsrep_cluster_address=gcomm://{}",
                members.join(",")
            ))
            .arg(format!("--wsrep_node_name=node{number}"))
            .arg(format!("--wsrep_node_address=127.0.0.1:{}", p.gcomm))
            .arg(format!(
                "--wsrep_provider_options=gmcast.listen_addr=tcp://127.0.0.1:{};\
                 ist.recv_addr=127.0.0.1:{};gcache.size=64M",
                p.gcomm, p.ist
            ))
            .arg("--wsrep_sst_method=rsync")
            .arg(format!("--wsrep_sst_receive_address=127.0.0.1:{}", p.sst))
            .args([
                "--binlog_format=ROW",
                "--innodb_autoinc_lock_mode=2",
                "--innodb_buffer_pool_size=128M",
                "--innodb_log_file_size=48M",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
                "--max_connections=200",
            ])
            .args(&self.options);
        command
    }

    /// Starts node `number`'s server (not waiting for it); `position`: where its data ends
    /// (`uuid:seqno`), so it asks the cluster for the rest only (IST).
    fn launch(&mut self, number: usize, bootstrap: bool, position: Option<&str>) {
        let mut command = self.server(number);
        let node = &mut self.nodes[number - 1];
        open_dir(&node.datadir());
        hand_to_server(&node.dir);
        command
            .arg(format!(
                "--socket={}",
                node.dir.join("mysqld.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                node.dir.join("mariadbd.pid").display()
            ))
            .arg(format!("--port={}", node.ports.sql))
            .arg("--bind-address=127.0.0.1");
        if bootstrap {
            command.arg("--wsrep-new-cluster");
        }
        if let Some(position) = position {
            command.arg(format!("--wsrep_start_position={position}"));
        }
        // Its own process group: a kill takes its state-transfer helpers (rsync) with it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        // No --log-error: the server's messages go to stderr, which is the node's log.
        let name = node.name();
        node.service = Some(Service::spawn(&name, command, &node.log()));
    }

    /// Where a killed node's data ends, `uuid:seqno`, read by `mariadbd --wsrep-recover` (what
    /// the packaged service does before starting a node that crashed): without it the node's
    /// state file says "unknown" and it would ask for a whole copy (SST) instead of the
    /// missed transactions (IST).
    fn recover_position(&self, number: usize) -> String {
        let node = &self.nodes[number - 1];
        let log = node.dir.join("recover.log");
        // A file the server's user can write.
        std::fs::write(&log, "").expect("the recovery log");
        hand_to_server(&log);
        let mut command = self.server(number);
        command
            .arg("--wsrep-recover")
            .arg("--skip-networking")
            .arg(format!(
                "--socket={}",
                node.dir.join("recover.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                node.dir.join("recover.pid").display()
            ))
            .arg(format!("--log-error={}", log.display()));
        run("recover a killed node's position", &mut command);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let position = text
            .lines()
            .find_map(|line| {
                line.split_once("Recovered position: ")
                    .map(|(_, p)| p.trim())
            })
            .unwrap_or_else(|| {
                panic!(
                    "{}: --wsrep-recover found no position; last lines of its log:\n{}",
                    node.name(),
                    crate::service::log_tail(&log, 40)
                )
            })
            .to_owned();
        // Its notes also go to the node's own log, for whoever reads it after a failure.
        let mut node_log = std::fs::OpenOptions::new()
            .append(true)
            .open(node.log())
            .expect("the node's log");
        std::io::Write::write_all(&mut node_log, text.as_bytes())
            .expect("append to the node's log");
        position
    }

    /// Node `number`'s root URL (no database).
    pub fn url(&self, number: usize) -> String {
        format!("mysql://root@127.0.0.1:{}", self.ports(number).sql)
    }

    /// Node `number`'s ports.
    pub fn ports(&self, number: usize) -> Ports {
        self.nodes[number - 1].ports
    }

    /// `host:port` of node `number`'s SQL port.
    pub fn sql_addr(&self, number: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports(number).sql))
    }

    /// A URL naming several nodes, in this order: `mysql://root@h1:p1,h2:p2/database`.
    pub fn multi_host_url(&self, numbers: &[usize], database: &str) -> String {
        let hosts: Vec<String> = numbers
            .iter()
            .map(|n| format!("127.0.0.1:{}", self.ports(*n).sql))
            .collect();
        format!("mysql://root@{}/{database}", hosts.join(","))
    }

    /// How many nodes the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True for a cluster of no nodes (never: [`Cluster::start`] refuses it).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A global status variable of node `number` (`None` when it does not answer).
    pub async fn status(&self, number: usize, variable: &str) -> Option<String> {
        status(&self.url(number), variable).await.ok().flatten()
    }

    /// Runs one statement as root on node `number`.
    pub async fn execute(&self, number: usize, sql: &str) {
        execute(&self.url(number), sql)
            .await
            .unwrap_or_else(|e| panic!("node {number}: {sql}: {e}"));
    }

    /// Waits until node `number` is `Synced` and ready (panics after `limit`, or at once if its
    /// server exited, with its log's last lines).
    pub async fn wait_synced(&mut self, number: usize, limit: Duration) {
        let url = self.url(number);
        let service = self.nodes[number - 1]
            .service
            .as_mut()
            .expect("the node was started");
        service
            .wait_until("wsrep_local_state_comment = Synced", limit, || {
                let url = url.clone();
                async move {
                    status(&url, "wsrep_local_state_comment")
                        .await
                        .ok()
                        .flatten()
                        == Some("Synced".to_owned())
                        && status(&url, "wsrep_ready").await.ok().flatten() == Some("ON".into())
                }
            })
            .await;
    }

    /// Waits until every running node counts `size` members.
    pub async fn wait_size(&mut self, size: usize) {
        for number in 1..=self.nodes.len() {
            if self.nodes[number - 1].service.is_none() {
                continue;
            }
            let url = self.url(number);
            let service = self.nodes[number - 1].service.as_mut().expect("running");
            service
                .wait_until(&format!("wsrep_cluster_size = {size}"), START_LIMIT, || {
                    let url = url.clone();
                    async move {
                        status(&url, "wsrep_cluster_size").await.ok().flatten()
                            == Some(size.to_string())
                    }
                })
                .await;
        }
    }

    /// SIGKILL to node `number` and its helpers; waits for the exit.
    pub fn kill(&mut self, number: usize) {
        let node = &mut self.nodes[number - 1];
        if let Some(mut service) = node.service.take() {
            let group = format!("-{}", service.pid());
            // The group's other processes (state transfers) go too; the server itself is
            // killed and reaped by the service.
            let killed = Command::new("kill").args(["-KILL", "--", &group]).status();
            if !matches!(killed, Ok(s) if s.success()) {
                eprintln!("could not kill {}'s process group", node.name());
            }
            service.kill();
        }
    }

    /// Starts node `number` again after [`Cluster::kill`]: it recovers its position, rejoins
    /// and catches up by IST (the other nodes' 64 MiB write-set cache holds what it missed).
    /// Waits until it is `Synced` and the cluster whole again.
    pub async fn restart(&mut self, number: usize) {
        assert!(
            self.nodes[number - 1].service.is_none(),
            "node {number} is running"
        );
        let position = self.recover_position(number);
        self.launch(number, false, Some(&position));
        self.wait_synced(number, START_LIMIT).await;
        let running = self.nodes.iter().filter(|n| n.service.is_some()).count();
        self.wait_size(running).await;
    }

    /// Cuts node `number` off the group while its server keeps running and answering: it
    /// leaves the primary component. Returns once the node says so itself
    /// (`wsrep_ready = OFF`) and the others count one node fewer.
    pub async fn isolate(&mut self, number: usize) {
        self.execute(
            number,
            "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'",
        )
        .await;
        let url = self.url(number);
        let service = self.nodes[number - 1]
            .service
            .as_mut()
            .expect("the node runs");
        service
            .wait_until("wsrep_ready = OFF after gmcast.isolate", LEAVE_LIMIT, || {
                let url = url.clone();
                async move { status(&url, "wsrep_ready").await.ok().flatten() == Some("OFF".into()) }
            })
            .await;
    }

    /// Lets an isolated node `number` back into the group; waits until it is `Synced` and the
    /// cluster whole.
    pub async fn rejoin(&mut self, number: usize) {
        self.execute(
            number,
            "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'",
        )
        .await;
        self.wait_synced(number, START_LIMIT).await;
        let running = self.nodes.iter().filter(|n| n.service.is_some()).count();
        self.wait_size(running).await;
    }

    /// True when node `number`'s server process runs.
    pub fn running(&self, number: usize) -> bool {
        self.nodes[number - 1].service.is_some()
    }

    /// Brings the cluster back to whole: restarts killed nodes, lets isolated ones back in,
    /// and sets the write-set limits back to the server's defaults (a test may have lowered
    /// them). For a cluster shared by several tests, before each.
    pub async fn heal(&mut self) {
        for number in 1..=self.nodes.len() {
            if !self.running(number) {
                self.restart(number).await;
            } else if self.status(number, "wsrep_ready").await != Some("ON".into()) {
                self.rejoin(number).await;
            }
        }
        for number in 1..=self.nodes.len() {
            self.execute(
                number,
                "SET GLOBAL wsrep_max_ws_rows = DEFAULT, wsrep_max_ws_size = DEFAULT",
            )
            .await;
        }
        self.wait_size(self.nodes.len()).await;
    }

    /// The last lines of node `number`'s log.
    pub fn log_tail(&self, number: usize) -> String {
        crate::service::log_tail(&self.nodes[number - 1].log(), 40)
    }

    /// State transfers node `number` received so far, by its log: (whole copies, SST;
    /// incremental, IST). Compared before and after a restart, they say how it caught up.
    /// The rsync script runs for both and the server says `SST received` for both; the script
    /// copies data only for an SST, and says so.
    pub fn transfers(&self, number: usize) -> (usize, usize) {
        let log = self.log_text(number);
        (
            log.matches("rsync SST completed on joiner").count(),
            log.matches("IST received").count(),
        )
    }

    /// Node `number`'s whole log.
    pub fn log_text(&self, number: usize) -> String {
        // Lossy: a server's log may hold bytes that are not UTF-8 (binary row data in a note).
        std::fs::read(self.nodes[number - 1].log())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for number in 1..=self.nodes.len() {
            self.kill(number);
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            if let Err(e) = watchdog.kill() {
                eprintln!("could not stop the cluster's watchdog: {e}");
            }
            // Reaping fails only if it was already reaped.
            watchdog.wait().ok();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}

/// One cluster of three nodes for every test of a test binary, started by the first that asks
/// and made whole ([`Cluster::heal`]) for each; tests take turns (the guard is held for the
/// whole test), so one test's faults never land in another's. The watchdog removes it when the
/// test binary ends.
pub async fn shared() -> tokio::sync::MutexGuard<'static, Option<Cluster>> {
    static SHARED: tokio::sync::Mutex<Option<Cluster>> = tokio::sync::Mutex::const_new(None);
    let mut guard = SHARED.lock().await;
    match guard.as_mut() {
        Some(cluster) => cluster.heal().await,
        None => *guard = Some(Cluster::start(3).await),
    }
    guard
}
