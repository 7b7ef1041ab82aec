//! The `usage-collector` command itself: `migrate` and `check` exit codes and messages.

use std::process::Command;

use usage_pipeline_tests::db::{TestAccount, TestDb, server_host_port, server_url_as};

fn collector(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_usage-collector-e2e"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .expect("run usage-collector");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn check_passes_after_migrate_and_names_a_missing_table() {
    let db = TestDb::mysql().await;
    let (ok, out) = collector(&["check", "--database-url", db.url()]);
    assert!(!ok, "check must fail on an empty database:\n{out}");
    assert!(out.contains("table `page_visits` is missing"), "{out}");

    let (ok, out) = collector(&["migrate", "--database-url", db.url()]);
    assert!(ok, "{out}");
    let (ok, out) = collector(&["check", "--database-url", db.url()]);
    assert!(ok, "{out}");
    for step in [
        "connect: ok",
        "test query: ok",
        "server facts: ok",
        "schema check: ok",
        "write permission check: ok",
    ] {
        assert!(out.contains(step), "{step} not logged:\n{out}");
    }
    // The write check leaves nothing behind.
    assert_eq!(
        db.count("page_visits").await + db.count("ide_sessions").await,
        0
    );

    // TLS modes reach the driver: this server has TLS off, so `required` must fail, `disabled` pass.
    let (ok, out) = collector(&[
        "check",
        "--database-url",
        db.url(),
        "--database-tls",
        "required",
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("(tls required)") && out.contains("TLS"),
        "{out}"
    );
    let (ok, out) = collector(&[
        "check",
        "--database-url",
        db.url(),
        "--database-tls",
        "disabled",
    ]);
    assert!(ok && out.contains("(tls disabled)"), "{out}");

    db.execute("DROP TABLE page_visits").await;
    db.execute("ALTER TABLE program_executions DROP COLUMN error_message")
        .await;
    let (ok, out) = collector(&["check", "--database-url", db.url()]);
    assert!(!ok, "{out}");
    assert!(out.contains("schema check failed"), "{out}");
    assert!(out.contains("table `page_visits` is missing"), "{out}");
    assert!(
        out.contains("column `program_executions`.`error_message` is missing"),
        "{out}"
    );
}

/// `check` as `user` against the test server's `test` database, with `password` in the URL
/// when given, and `extra` arguments: (success, output).
fn check_as(user: &str, password: Option<&str>, extra: &[&str]) -> (bool, String) {
    let url = server_url_as(user, password) + "/test";
    let mut args = vec![
        "check",
        "--database-url",
        &url,
        "--database-connect-timeout-secs",
        "3",
    ];
    args.extend(extra);
    collector(&args)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_reported_with_host_port_and_user_but_never_the_password() {
    let password = "Tr1cky-S3cret-p4ss";
    let account = TestAccount::create("the-right-one").await;
    let user = account.name.as_str();
    let (host, port) = server_host_port();
    let (ok, out) = check_as(user, Some(password), &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("connect failed"), "{out}");
    assert!(out.contains(&format!("{user}@{host}:{port}")), "{out}");
    assert!(out.contains("Access denied"), "{out}");
    // The server's own words say whether it was given a password.
    assert!(out.contains("(using password: YES)"), "{out}");
    assert!(!out.contains(password), "the password leaked:\n{out}");

    // The same through a password file, with the URL carrying none: were the file ignored,
    // the server would say `using password: NO`.
    let dir = std::env::temp_dir().join(format!("usage_pw_{user}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let with_file = ["--database-password-file", file.to_str().unwrap()];
    let (ok, out) = check_as(user, None, &with_file);
    assert!(
        !ok && out.contains("Access denied") && out.contains(user),
        "{out}"
    );
    assert!(out.contains("(using password: YES)"), "{out}");
    assert!(!out.contains(password), "the password leaked:\n{out}");

    // The right password from the file (its newline no part of it) logs in: what is refused
    // then is the database this account has no grant on, not the login.
    std::fs::write(&file, "the-right-one\n").unwrap();
    let (ok, out) = check_as(user, None, &with_file);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "Access denied for user '{user}'@'%' to database 'test'"
        )),
        "{out}"
    );
    assert!(
        !out.contains("the-right-one"),
        "the password leaked:\n{out}"
    );

    // Neither in the URL nor in a file: the server is told no password.
    let (ok, out) = check_as(user, None, &[]);
    assert!(!ok && out.contains("Access denied"), "{out}");
    assert!(out.contains("(using password: NO)"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_migrations_not_applied_and_one_left_half_applied() {
    let db = TestDb::mysql().await;
    let pool = sqlx::MySqlPool::connect(db.url()).await.unwrap();
    let migrator = usage_collector::sink::mysql::migrations::migrator();
    migrator.run_to(5, &pool).await.expect("schema version 5");
    // Every column the collector writes is there; the last version is not.
    let (ok, out) = collector(&["check", "--database-url", db.url()]);
    assert!(
        !ok,
        "check must fail on a schema behind this collector:\n{out}"
    );
    assert!(
        out.contains("migrations not applied: 6 (session keys compared byte for byte)")
            && out.contains("usage-collector migrate"),
        "{out}"
    );
    migrator.run(&pool).await.expect("the last version");
    let (ok, out) = collector(&["check", "--database-url", db.url()]);
    assert!(ok, "{out}");
    // A version recorded as failed halfway (DDL commits on its own on MySQL).
    sqlx::query("UPDATE _sqlx_migrations SET success = FALSE WHERE version = 6")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (ok, out) = collector(&["check", "--database-url", db.url()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("migration 6 (session keys compared byte for byte) was left half-applied"),
        "{out}"
    );
}

/// The environment of a running process, as `KEY=value` entries.
fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .expect("the process's environment")
        .split(|b| *b == 0)
        .map(|entry| String::from_utf8_lossy(entry).into_owned())
        .collect()
}

/// The collector runs with freed memory returned to the system at once: started without
/// `MIMALLOC_PURGE_DELAY`, the process (the same PID, the same arguments) has it at 0; an
/// operator's own value is kept.
#[tokio::test(flavor = "multi_thread")]
async fn the_collector_runs_with_the_allocator_returning_memory_at_once() {
    use usage_pipeline_tests::process::{ProcessConfig, temp_dir};
    for (given, expected) in [
        (None, "MIMALLOC_PURGE_DELAY=0"),
        (Some("25"), "MIMALLOC_PURGE_DELAY=25"),
    ] {
        let dir = temp_dir("allocator");
        let mut config = ProcessConfig::new(
            env!("CARGO_BIN_EXE_usage-collector-e2e"),
            "blackhole://",
            &dir,
        );
        if let Some(value) = given {
            config
                .env
                .push(("MIMALLOC_PURGE_DELAY".to_owned(), value.to_owned()));
        }
        let collector = config.start_ready().await;
        let pid = collector.pid();
        let env = environ(pid);
        assert_eq!(
            env.iter()
                .filter(|e| e.starts_with("MIMALLOC_PURGE_DELAY="))
                .collect::<Vec<_>>(),
            [expected],
            "{env:?}"
        );
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).expect("cmdline");
        assert!(
            cmdline.contains("serve\0--migrate\0--database-url\0blackhole://\0"),
            "{cmdline:?}"
        );
        collector.kill();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
