//! The scripts that start servers for the tests, run as a fresh machine runs them: as root, with
//! the server stopped, and with something in the server's way.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sqlx::{Connection, MySqlConnection};
use usage_pipeline_tests::process::{free_addr, temp_dir};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name)
}

/// Runs `scripts/mariadb-up` for a server of its own on `port` with data folder `datadir`.
fn mariadb_up(port: u16, datadir: &Path) -> Output {
    Command::new(script("mariadb-up"))
        .env("MARIADB_PORT", port.to_string())
        .env("MARIADB_DATADIR", datadir)
        .output()
        .expect("run scripts/mariadb-up")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn connect(port: u16) -> Result<MySqlConnection, sqlx::Error> {
    MySqlConnection::connect(&format!("mysql://root@127.0.0.1:{port}")).await
}

/// The user a process runs as, from `/proc`.
fn process_user(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .expect("a Uid line")
}

fn uid_of(user: &str) -> u32 {
    let out = Command::new("id")
        .args(["-u", user])
        .output()
        .expect("run id");
    assert!(out.status.success(), "no user {user}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Stops the server on `port` and waits until its process has exited.
async fn shut_down(port: u16, datadir: &Path) {
    let pidfile = PathBuf::from(format!("{}.run/mysqld.pid", datadir.display()));
    let pid = std::fs::read_to_string(&pidfile).unwrap_or_default();
    let status = Command::new("mariadb-admin")
        .args([
            "--protocol=tcp",
            "-h127.0.0.1",
            &format!("-P{port}"),
            "-uroot",
        ])
        .arg("shutdown")
        .status()
        .expect("run mariadb-admin");
    assert!(status.success(), "mariadb-admin shutdown on port {port}");
    let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
    usage_pipeline_tests::poll::until(
        "the server process gone",
        std::time::Duration::from_secs(30),
        || async { !pid.trim().is_empty() && proc_dir.exists() },
        |running| !running,
    )
    .await;
}

#[tokio::test]
async fn mariadb_up_starts_a_stopped_server_as_mysql_and_names_why_it_cannot() {
    let dir = temp_dir("usage_mariadb_up");
    let datadir = dir.join("data");
    let port = free_addr().port();
    let _cleanup = Cleanup(dir.clone());

    // Nothing there yet: the data folder is created and the server started.
    let first = mariadb_up(port, &datadir);
    assert!(first.status.success(), "{}", text(&first));
    let mut conn = connect(port).await.expect("root over TCP, empty password");
    let (one,): (i64,) = sqlx::query_as("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    conn.close().await.unwrap();
    let pid: u32 = std::fs::read_to_string(format!("{}.run/mysqld.pid", datadir.display()))
        .expect("the process id file")
        .trim()
        .parse()
        .unwrap();
    if uid_of("root") == process_user(std::process::id()) {
        assert_eq!(
            process_user(pid),
            uid_of("mysql"),
            "a server started from a root shell runs as mysql"
        );
    }

    // Already up: nothing to do.
    let again = mariadb_up(port, &datadir);
    assert!(again.status.success(), "{}", text(&again));
    assert!(again.stdout.is_empty(), "{}", text(&again));

    // Stopped, with its data folder kept (the fresh machine's case): it comes up again.
    shut_down(port, &datadir).await;
    assert!(connect(port).await.is_err(), "the server is stopped");
    let restarted = mariadb_up(port, &datadir);
    assert!(restarted.status.success(), "{}", text(&restarted));
    assert!(text(&restarted).contains("is up"), "{}", text(&restarted));
    connect(port)
        .await
        .expect("up again")
        .close()
        .await
        .unwrap();
    shut_down(port, &datadir).await;

    // Its port taken by something else: the script fails and quotes the server's own reason.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let refused = mariadb_up(taken, &datadir);
    assert!(!refused.status.success(), "{}", text(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("exited before it answered") && stderr.contains("Address already in use"),
        "the failure names the cause from the server's log:\n{}",
        text(&refused)
    );
    drop(squatter);
}

/// Stops a server the test left running (it failed half way) and removes the test's folder.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let pidfile = self.0.join("data.run/mysqld.pid");
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            // The server removes the file when it stops; one still there is a server to stop.
            match Command::new("kill").arg(pid.trim()).status() {
                Ok(status) if status.success() => {
                    std::thread::sleep(std::time::Duration::from_secs(2))
                }
                Ok(_) => {}
                Err(e) => eprintln!("could not stop the test's server: {e}"),
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("could not remove {}: {e}", self.0.display());
        }
    }
}
