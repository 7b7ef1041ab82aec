//! The `usage-collector` command itself: `migrate` and `check` exit codes and messages.

use std::process::Command;

use usage_pipeline_tests::db::{TestDb, server_url};

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

#[test]
fn a_wrong_password_is_reported_with_host_port_and_user_but_never_the_password() {
    let password = "Tr1cky-S3cret-p4ss";
    let user = format!("nobody_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let url = server_url().replace("://root@", &format!("://{user}:{password}@")) + "/test";
    let (ok, out) = collector(&[
        "check",
        "--database-url",
        &url,
        "--database-connect-timeout-secs",
        "3",
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("connect failed"), "{out}");
    assert!(out.contains(&format!("{user}@127.0.0.1:3306")), "{out}");
    assert!(out.contains("Access denied"), "{out}");
    assert!(!out.contains(password), "the password leaked:\n{out}");

    // The same through a password file, with the URL carrying none.
    let dir = std::env::temp_dir().join(format!("usage_pw_{user}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let bare = server_url().replace("://root@", &format!("://{user}@")) + "/test";
    let (ok, out) = collector(&[
        "check",
        "--database-url",
        &bare,
        "--database-password-file",
        file.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        !ok && out.contains("Access denied") && out.contains(&user),
        "{out}"
    );
    assert!(!out.contains(password), "the password leaked:\n{out}");
}
