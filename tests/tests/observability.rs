//! The dashboards and alert rules in `deploy/` against the real thing: promtool, a live
//! collector's `/metrics`, the usage schema, and a real Prometheus server scraping collectors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use usage_pipeline_tests::collector::{TestCollector, settings, start_with_mysql};
use usage_pipeline_tests::db::{TestDb, server_url_as};
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::poll;
use usage_pipeline_tests::process::free_addr;
use usage_pipeline_tests::service::Service;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn require(tool: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = Path::new(dir).join(tool);
        if path.exists() {
            return path;
        }
    }
    panic!(
        "{tool} is missing: scripts/test installs Debian's prometheus package, which provides it"
    );
}

/// Every `usage_collector_…` name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("usage_collector_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn promtool_checks_and_tests_the_alert_rules() {
    let promtool = require("promtool");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let output = Command::new(&promtool)
            .args(args)
            .current_dir(deploy("prometheus"))
            .output()
            .expect("run promtool");
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_in_the_dashboards_and_rules_is_exported() {
    let (_db, collector) = start_with_mysql().await;
    // One event makes the per-service and per-column series appear (the rest start at zero).
    let visit = event(
        "page_visit",
        T0,
        vec![
            kv("url.path", "/"),
            kv("session.id", "m1"),
            kv("user_agent.original", "x".repeat(600)),
        ],
    );
    send_logs(
        &collector.endpoint(),
        logs_request("web-ide", vec![visit]),
        false,
    )
    .await
    .unwrap();
    collector.wait_written(Duration::from_secs(10)).await;
    let exposition = collector.get("/metrics").await.1;
    let mut used = Vec::new();
    for file in ["prometheus/alerts.yml", "grafana/pipeline-health.json"] {
        used.extend(metric_names(
            &std::fs::read_to_string(deploy(file)).unwrap(),
        ));
    }
    assert!(used.len() > 15, "{used:?}");
    for name in used {
        // A counter's family is named without `_total`; a histogram's series add suffixes.
        let family = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        assert!(
            exposition.contains(&format!("# TYPE {family} ")),
            "{name} is used in deploy/ but not exported:\n{exposition}"
        );
    }
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_usage_dashboard_queries_run_on_the_schema() {
    let (db, collector) = start_with_mysql().await;
    let request = logs_request(
        "web-ide",
        vec![
            event("session_start", T0, vec![kv("session.id", "d1")]),
            event(
                "page_visit",
                T0,
                vec![kv("url.path", "/"), kv("session.id", "d1")],
            ),
            event(
                "feature_use",
                T0,
                vec![kv("feature.name", "run"), kv("session.id", "d1")],
            ),
            event(
                "program_execution",
                T0,
                vec![kv("session.id", "d1"), kv("program.success", false)],
            ),
            // Refused by the database (the trigger below): becomes a dead letter.
            event(
                "program_execution",
                T0 + 1,
                vec![kv("program.lines", 1001i64)],
            ),
        ],
    );
    db.execute(
        "CREATE TRIGGER refuse_large_programs BEFORE INSERT ON program_executions FOR EACH ROW \
         IF NEW.program_lines >= 1000 THEN \
         SIGNAL SQLSTATE '22003' SET MYSQL_ERRNO = 1264, \
         MESSAGE_TEXT = 'Out of range value for column program_lines'; END IF",
    )
    .await;
    send_logs(&collector.endpoint(), request, false)
        .await
        .unwrap();
    collector.wait_written(Duration::from_secs(10)).await;
    // Sessions count as rows written, and series the panels read exist before their first
    // event (a text never cut shows 0, not "no data").
    let metrics = collector.get("/metrics").await.1;
    assert!(
        usage_pipeline_tests::exposition::value(
            &metrics,
            "usage_collector_rows_written_total{table=\"ide_sessions\"}"
        ) >= Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        usage_pipeline_tests::exposition::value(
            &metrics,
            "usage_collector_text_truncated_total{table=\"page_visits\",column=\"page_path\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            usage_pipeline_tests::exposition::value(&metrics, name) > Some(0.0),
            "{name}: {metrics}"
        );
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/usage.json")).unwrap())
            .unwrap();
    // Grafana's macros, as Grafana would expand them for "all time, service web-ide".
    let expand = |sql: &str| {
        let mut sql = sql
            .replace("${service:sqlstring}", "'web-ide'")
            .replace("$__timeFrom()", "'1970-01-01 00:00:00'")
            .replace("$__timeTo()", "'9999-12-31 00:00:00'");
        while let Some(at) = sql.find("$__timeFilter(") {
            let end = at + sql[at..].find(')').unwrap();
            let column = sql[at + "$__timeFilter(".len()..end].to_owned();
            sql.replace_range(at..=end, &format!("{column} IS NOT NULL"));
        }
        sql
    };
    // The service list holds every service that sent anything, whatever the table.
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let sql = expand(variable["query"].as_str().unwrap());
            let values = db.texts(&sql).await;
            assert!(
                values
                    .iter()
                    .any(|row| row[0].as_deref() == Some("web-ide")),
                "variable {} lacks web-ide: {values:?}\n{sql}",
                variable["name"]
            );
        }
    }
    let mut ran = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let sql = target["rawSql"].as_str().unwrap();
            // The time range: `$__timeFilter` on a time column, or whole days of a rollup.
            assert!(
                sql.contains("${service:sqlstring}")
                    && (sql.contains("$__timeFilter(")
                        || sql.contains("BETWEEN DATE($__timeFrom()) AND DATE($__timeTo())")),
                "{} ignores the service or the time range: {sql}",
                panel["title"]
            );
            let sql = expand(sql);
            let count = db
                .texts(&format!(
                    "SELECT CAST(COUNT(*) AS CHAR) FROM ({sql}) AS panel"
                ))
                .await;
            assert_ne!(
                count[0][0].as_deref(),
                Some("0"),
                "{} returned nothing: {sql}",
                panel["title"]
            );
            ran += 1;
        }
    }
    assert_eq!(ran, dashboard["panels"].as_array().unwrap().len());
    collector.stop().await;
}

#[test]
fn every_pipeline_panel_follows_the_dashboard_variables() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/pipeline-health.json")).unwrap(),
    )
    .unwrap();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for name in ["job", "namespace", "instance", "service_name"] {
        assert!(variables.contains(&name), "no ${name} variable");
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            // Every selector of the expression, not just one of them, is narrowed.
            let selectors = expr.matches('{').count();
            for matcher in [
                "job=~\"$job\"",
                "namespace=~\"$namespace\"",
                "instance=~\"$instance\"",
            ] {
                assert_eq!(
                    expr.matches(matcher).count(),
                    selectors,
                    "{}: {expr} does not narrow every selector by {matcher}",
                    panel["title"]
                );
            }
        }
    }
}

/// A Prometheus server on loopback that scrapes `targets` every second; killed when dropped.
struct Prometheus {
    server: Service,
    addr: std::net::SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    async fn start(targets: &[std::net::SocketAddr]) -> Self {
        let binary = require("prometheus");
        let dir = std::env::temp_dir().join(format!(
            "usage_prometheus_{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\n\
             scrape_configs:\n  - job_name: usage-collector\n    static_configs:\n      - targets: [{}]\n\
             \x20       labels: {{ service: usage-collector }}\n",
            deploy("prometheus/alerts.yml").display(),
            list.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr = free_addr();
        let mut command = Command::new(binary);
        command
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        let mut server = Service::spawn("Prometheus", command, &dir.join("prometheus.log"));
        // Its readiness endpoint answers once the rules and the storage are loaded.
        server
            .wait_until(
                "/-/ready answers 200",
                Duration::from_secs(30),
                || async move {
                    tokio::net::TcpStream::connect(addr).await.is_ok()
                        && usage_pipeline_tests::fixtures::http_get(addr, "/-/ready")
                            .await
                            .0
                            == 200
                },
            )
            .await;
        Self { server, addr, dir }
    }

    /// Polls an instant query until `accept` takes its JSON result, for at most 30 s.
    async fn query_until(
        &self,
        query: &str,
        accept: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let path = format!("/api/v1/query?query={encoded}");
        let answer = || async {
            if tokio::net::TcpStream::connect(self.addr).await.is_err() {
                return serde_json::Value::Null; // not listening yet
            }
            let (code, body) = usage_pipeline_tests::fixtures::http_get(self.addr, &path).await;
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if code == 200 {
                json["data"]["result"].clone()
            } else {
                json
            }
        };
        poll::until(
            &format!("an acceptable answer to {query}"),
            Duration::from_secs(30),
            answer,
            |result| !result.is_null() && accept(result),
        )
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.server.kill();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}

fn value(result: &serde_json::Value) -> Option<f64> {
    result.as_array()?.first()?["value"][1]
        .as_str()?
        .parse()
        .ok()
}

/// Each series of a query result: its value under the given label's value.
fn by_label(result: &serde_json::Value, label: &str) -> BTreeMap<String, f64> {
    result
        .as_array()
        .into_iter()
        .flatten()
        .map(|series| {
            let key = series["metric"][label]
                .as_str()
                .unwrap_or("(none)")
                .to_owned();
            let value = series["value"][1].as_str().and_then(|v| v.parse().ok());
            (key, value.unwrap_or(f64::NAN))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_expected_series_and_sees_a_database_down() {
    let db = TestDb::mysql().await;
    let healthy = TestCollector::start(settings(db.url())).await;
    // A second collector with a password the server refuses.
    let bad_url = format!(
        "{}/{}",
        server_url_as("nobody_prom", Some("wrong-pass")),
        db.name()
    );
    let broken = TestCollector::start_unready(settings(&bad_url), false).await;
    let prometheus = Prometheus::start(&[healthy.admin, broken.admin]).await;

    send_logs(
        &healthy.endpoint(),
        page_visits("web-ide", "/p", 0..7),
        false,
    )
    .await
    .unwrap();
    healthy.wait_written(Duration::from_secs(10)).await;

    let healthy_instance = healthy.admin.to_string();
    let accepted = prometheus
        .query_until(
            &format!("usage_collector_records_accepted_total{{instance=\"{healthy_instance}\"}}"),
            |r| by_label(r, "signal").get("logs") == Some(&7.0),
        )
        .await;
    // One series per signal, the one nothing was sent on exported at zero from the start.
    assert_eq!(
        by_label(&accepted, "signal"),
        BTreeMap::from([("logs".to_owned(), 7.0), ("traces".to_owned(), 0.0)]),
        "{accepted}"
    );
    prometheus
        .query_until(
            &format!("usage_collector_rows_written_total{{instance=\"{healthy_instance}\",table=\"page_visits\"}}"),
            |r| value(r) == Some(7.0),
        )
        .await;
    // The target label `service` (as a Prometheus Operator ServiceMonitor sets it) and the
    // collector's own `service_name` sit side by side: nothing is renamed `exported_service`.
    let events = prometheus
        .query_until(
            &format!(
                "usage_collector_events_total{{instance=\"{healthy_instance}\",service=\"usage-collector\",service_name=\"web-ide\",event=\"page_visit\"}}"
            ),
            |r| value(r) == Some(7.0),
        )
        .await;
    let labels = events[0]["metric"].as_object().expect("the series' labels");
    assert!(
        !labels.keys().any(|label| label.starts_with("exported_")),
        "a collector label clashed with a target label: {events}"
    );

    // Wrong credentials: not ready with the reason, database_up 0, and the alert's expression holds.
    let (code, body) = poll::until(
        "the broken collector's readiness names its failed verification",
        Duration::from_secs(10),
        || broken.get("/health/ready"),
        |(_, body)| body.contains("Access denied for user '***'@'***'"),
    )
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(!body.contains("wrong-pass"), "{body}");
    // The readiness endpoint is unauthenticated: the account and host stay in the log only.
    assert!(!body.contains("nobody_prom"), "{body}");
    let broken_instance = broken.admin.to_string();
    let down = prometheus
        .query_until("usage_collector_database_up == 0", |r| {
            r.as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    let instances: Vec<&str> = down
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["metric"]["instance"].as_str())
        .collect();
    assert_eq!(instances, [broken_instance.as_str()]);
    drop(prometheus);
    broken.stop().await;
    healthy.stop().await;
}
