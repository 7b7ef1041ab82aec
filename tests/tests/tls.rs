//! TLS on the listeners, with certificates made by the test: OTLP/gRPC over TLS writes rows and
//! plaintext to the TLS port is refused; client certificates required with a client CA; the
//! certificate rotated without a restart (a Kubernetes-style `..data` symlink swap), a broken
//! replacement keeping the pair before and counted; usage-tracker over TLS with a token; the
//! admin listener over HTTPS; and a start-up with an unusable file failing, naming it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing_subscriber::layer::SubscriberExt;
use usage_pipeline_tests::collector::{TestCollector, settings};
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::exposition::value;
use usage_pipeline_tests::fixtures::*;
use usage_pipeline_tests::poll;

/// A certificate authority made for one test.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    /// Its certificate, PEM.
    pem: String,
}

/// `der` as a PEM section.
fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A certificate and its key, both PEM.
#[derive(Clone)]
struct Pair {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let pem = pem("CERTIFICATE", cert.der());
        Self { params, key, pem }
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Pair {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("certificate");
        Pair {
            cert: pem("CERTIFICATE", cert.der()),
            key: pem("PRIVATE KEY", &key.serialize_der()),
        }
    }

    /// A server certificate for the loopback address the test collectors listen on.
    fn server(&self) -> Pair {
        self.issue(
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate.
    fn client(&self, name: &str) -> Pair {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// Files laid out as Kubernetes mounts a Secret: `tls.crt` and `tls.key` are links into
/// `..data`, itself a link to the current version's folder, swapped in one rename.
struct SecretDir {
    root: PathBuf,
    versions: std::cell::Cell<u32>,
}

impl SecretDir {
    fn new(pair: &Pair) -> Self {
        let root =
            std::env::temp_dir().join(format!("usage_test_tls_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).unwrap();
        let dir = Self {
            root,
            versions: std::cell::Cell::new(0),
        };
        dir.publish(pair);
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(Path::new("..data").join(name), dir.root.join(name))
                .unwrap();
        }
        dir
    }

    /// Publishes a new version: both files appear at once.
    fn publish(&self, pair: &Pair) {
        self.publish_with_ca(pair, "");
    }

    fn publish_with_ca(&self, pair: &Pair, ca: &str) {
        let version = self.versions.get() + 1;
        self.versions.set(version);
        let folder = format!("..v{version}");
        let path = self.root.join(&folder);
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("tls.crt"), &pair.cert).unwrap();
        std::fs::write(path.join("tls.key"), &pair.key).unwrap();
        std::fs::write(path.join("ca.crt"), ca).unwrap();
        let link = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&folder, &link).unwrap();
        std::fs::rename(&link, self.root.join("..data")).unwrap();
    }

    fn cert(&self) -> PathBuf {
        self.root.join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.root.join("tls.key")
    }

    fn ca(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!("could not remove {}: {e}", self.root.display());
        }
    }
}

/// A client that trusts `ca` (and presents `identity`, if any).
fn trusting(ca: &Ca, identity: Option<&Pair>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem));
    match identity {
        Some(pair) => config.identity(Identity::from_pem(&pair.cert, &pair.key)),
        None => config,
    }
}

/// An error and its causes in one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Sends one page visit at `path` as `web-ide` to `endpoint`, over TLS when `tls` is set,
/// with `token` when set; the whole call gets 5 seconds.
async fn send(
    endpoint: &str,
    tls: Option<ClientTlsConfig>,
    token: Option<&str>,
    path: &str,
) -> Result<(), String> {
    let mut channel = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| chain(&e))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        channel = channel.tls_config(tls).map_err(|e| chain(&e))?;
    }
    let call = async {
        let channel = channel.connect().await.map_err(|e| chain(&e))?;
        let mut request = tonic::Request::new(logs_request(
            "web-ide",
            vec![event(
                "page_visit",
                T0,
                vec![
                    kv("event.id", uuid::Uuid::now_v7().to_string()),
                    kv("url.path", path),
                ],
            )],
        ));
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        LogsServiceClient::new(channel)
            .export(request)
            .await
            .map(drop)
            .map_err(|status| format!("{status:?}"))
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".to_owned()))
}

/// The rows' paths, in order.
async fn paths(db: &TestDb) -> Vec<String> {
    db.texts("SELECT page_path FROM page_visits ORDER BY page_path")
        .await
        .into_iter()
        .map(|row| row[0].clone().unwrap_or_default())
        .collect()
}

/// A collector whose OTLP listener takes TLS from `secret` (with `secret`'s CA file as the
/// client CA when `client_ca`).
async fn tls_collector(db: &TestDb, secret: &SecretDir, client_ca: bool) -> TestCollector {
    let mut config = settings(db.url());
    config.tls.cert_file = Some(secret.cert());
    config.tls.key_file = Some(secret.key());
    config.tls.client_ca_file = client_ca.then(|| secret.ca());
    TestCollector::start(config).await
}

async fn metric(collector: &TestCollector, series: &str) -> f64 {
    let text = collector.get("/metrics").await.1;
    value(&text, series).unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_over_tls_writes_rows_and_plaintext_is_refused() {
    let db = TestDb::mysql().await;
    let ca = Ca::new("usage test CA");
    let secret = SecretDir::new(&ca.server());
    let collector = tls_collector(&db, &secret, false).await;

    // A client that sent one byte of a TLS record and stopped must not hold up the others.
    let mut stalled = tokio::net::TcpStream::connect(collector.grpc)
        .await
        .unwrap();
    stalled.write_all(&[0x16]).await.unwrap();

    send(
        &collector.tls_endpoint(),
        Some(trusting(&ca, None)),
        None,
        "/over-tls",
    )
    .await
    .expect("an export over TLS, trusting the test CA");
    let plaintext = send(&collector.endpoint(), None, None, "/plaintext").await;
    assert!(
        plaintext.is_err(),
        "plaintext to the TLS port: {plaintext:?}"
    );
    let untrusted = send(
        &collector.tls_endpoint(),
        Some(trusting(&Ca::new("another CA"), None)),
        None,
        "/untrusted",
    )
    .await;
    assert!(
        untrusted.is_err(),
        "a client not trusting the certificate: {untrusted:?}"
    );

    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(paths(&db).await, ["/over-tls"], "only the TLS export wrote");
    let failed = metric(
        &collector,
        "usage_collector_tls_handshake_failures_total{listener=\"otlp\",reason=\"failed\"}",
    )
    .await;
    assert!(failed >= 1.0, "the plaintext handshake counted: {failed}");
    drop(stalled);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handshake_that_does_not_finish_is_closed_at_the_handshake_timeout() {
    let db = TestDb::mysql().await;
    let ca = Ca::new("usage test CA");
    let secret = SecretDir::new(&ca.server());
    let mut config = settings(db.url());
    config.tls.cert_file = Some(secret.cert());
    config.tls.key_file = Some(secret.key());
    config.connections.handshake_timeout = Duration::from_secs(1);
    let collector = TestCollector::start(config).await;
    // The first byte of a TLS record, then nothing: past the first-byte guard, so only the
    // handshake's own deadline can close it.
    let mut stalled = tokio::net::TcpStream::connect(collector.grpc)
        .await
        .unwrap();
    stalled.write_all(&[0x16]).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the stalled handshake is closed");
    assert!(rest.is_empty(), "{rest:?}");
    // A client that sends nothing at all is closed by the first-byte guard; a timeout too.
    let mut silent = tokio::net::TcpStream::connect(collector.grpc)
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the silent connection is closed");
    assert!(rest.is_empty(), "{rest:?}");
    let failure = |reason: &'static str| {
        let collector = &collector;
        async move {
            metric(
                collector,
                &format!(
                    "usage_collector_tls_handshake_failures_total{{listener=\"otlp\",reason=\"{reason}\"}}"
                ),
            )
            .await
        }
    };
    assert_eq!(failure("timeout").await, 2.0);
    assert_eq!(failure("failed").await, 0.0);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_ca_requires_client_certificates_signed_by_it() {
    let db = TestDb::mysql().await;
    let server_ca = Ca::new("usage test server CA");
    let client_ca = Ca::new("usage test client CA");
    let secret = SecretDir::new(&server_ca.server());
    secret.publish_with_ca(&server_ca.server(), &client_ca.pem);
    let collector = tls_collector(&db, &secret, true).await;
    let endpoint = collector.tls_endpoint();

    let anonymous = send(
        &endpoint,
        Some(trusting(&server_ca, None)),
        None,
        "/anonymous",
    )
    .await;
    assert!(anonymous.is_err(), "no client certificate: {anonymous:?}");
    let stranger = Ca::new("a stranger's CA").client("web-ide");
    let foreign = send(
        &endpoint,
        Some(trusting(&server_ca, Some(&stranger))),
        None,
        "/foreign",
    )
    .await;
    assert!(foreign.is_err(), "a certificate of another CA: {foreign:?}");
    send(
        &endpoint,
        Some(trusting(&server_ca, Some(&client_ca.client("web-ide")))),
        None,
        "/with-a-client-certificate",
    )
    .await
    .expect("a client certificate signed by the client CA");

    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(paths(&db).await, ["/with-a-client-certificate"]);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_certificate_is_read_again_without_a_restart_and_a_broken_one_keeps_the_last() {
    let db = TestDb::mysql().await;
    let (old_ca, new_ca) = (Ca::new("usage test CA 1"), Ca::new("usage test CA 2"));
    let secret = SecretDir::new(&old_ca.server());
    let collector = tls_collector(&db, &secret, false).await;
    let endpoint = collector.tls_endpoint();
    send(&endpoint, Some(trusting(&old_ca, None)), None, "/1-old-ca")
        .await
        .expect("the first certificate");

    // A rotated Secret: both files change at once.
    secret.publish(&new_ca.server());
    let _rotated = poll::until(
        "a client trusting only the new CA accepted",
        Duration::from_secs(15),
        || send(&endpoint, Some(trusting(&new_ca, None)), None, "/2-new-ca"),
        |sent| sent.is_ok(),
    )
    .await;
    let old = send(&endpoint, Some(trusting(&old_ca, None)), None, "/x-old-ca").await;
    assert!(old.is_err(), "the old certificate is gone: {old:?}");
    let reloads = "usage_collector_tls_reloads_total{listener=\"otlp\"}";
    assert!(metric(&collector, reloads).await >= 1.0);
    let failures = "usage_collector_tls_reload_failures_total{listener=\"otlp\"}";
    assert_eq!(metric(&collector, failures).await, 0.0);

    // A broken replacement: a certificate with a key that is not its own.
    let (third_ca, stray) = (Ca::new("usage test CA 3"), Ca::new("stray").server());
    let mut broken = third_ca.server();
    broken.key = stray.key;
    secret.publish(&broken);
    let _counted = poll::until(
        "the broken pair counted",
        Duration::from_secs(15),
        || metric(&collector, failures),
        |n| *n >= 1.0,
    )
    .await;
    send(
        &endpoint,
        Some(trusting(&new_ca, None)),
        None,
        "/3-still-new-ca",
    )
    .await
    .expect("the pair before stays in force");
    let third = send(
        &endpoint,
        Some(trusting(&third_ca, None)),
        None,
        "/x-broken",
    )
    .await;
    assert!(third.is_err(), "the broken pair is not used: {third:?}");

    collector.wait_written(Duration::from_secs(10)).await;
    let written = paths(&db).await;
    assert_eq!(written.first().map(String::as_str), Some("/1-old-ca"));
    assert!(written.contains(&"/2-new-ca".to_owned()), "{written:?}");
    assert!(
        written.contains(&"/3-still-new-ca".to_owned()),
        "{written:?}"
    );
    assert!(!written.iter().any(|p| p.starts_with("/x-")), "{written:?}");
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_tracker_sends_over_tls_with_a_token() {
    const TOKEN: &str = "tok-web-ide-over-tls-0123";
    let db = TestDb::mysql().await;
    let ca = Ca::new("usage test CA");
    let secret = SecretDir::new(&ca.server());
    let ca_file = secret.root.join("trusted-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let tokens = secret.root.join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} web-ide\n")).unwrap();
    let mut config = settings(db.url());
    config.tls.cert_file = Some(secret.cert());
    config.tls.key_file = Some(secret.key());
    config.auth.tokens_file = Some(tokens);
    let collector = TestCollector::start(config).await;

    // Configured as an app would be, through the standard variables.
    let endpoint = collector.tls_endpoint();
    let variables = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ca_file.display().to_string(),
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("authorization=Bearer%20{TOKEN}"),
        ),
        ("OTEL_SERVICE_NAME", "web-ide".to_owned()),
    ];
    let config = usage_tracker::Config::from_lookup(|name| {
        variables
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .expect("settings");
    let tracker = usage_tracker::TrackerBuilder::from_config(config)
        .verify(Duration::from_secs(5))
        .start()
        .expect("the tracker verifies the collector over TLS");
    let subscriber = tracing_subscriber::registry().with(tracker.layer());
    tracing::subscriber::with_default(subscriber, || {
        usage_tracker::page_visit(usage_tracker::PageVisit::new("/tracked-over-tls"));
        let run = usage_tracker::ProgramRun::start(Some("s-tls"));
        run.lines(3);
        drop(run);
    });
    assert!(tracker.flush(Duration::from_secs(10)));
    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(paths(&db).await, ["/tracked-over-tls"]);
    assert_eq!(
        db.texts("SELECT service, session_id FROM program_executions")
            .await,
        [[Some("web-ide".to_owned()), Some("s-tls".to_owned())]]
    );
    assert_eq!(tracker.stats().failed, 0);
    drop(tracker);

    // A CA file that holds no certificate is refused at start, naming the file.
    let bad = secret.root.join("not-a-ca.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let error = usage_tracker::TrackerBuilder::new()
        .endpoint(&endpoint)
        .tls_ca_file(&bad)
        .start()
        .expect_err("a bad CA file is an error");
    assert!(
        error.to_string().contains(&bad.display().to_string()),
        "{error}"
    );
    // An endpoint without a scheme is refused rather than guessed (the exporter would pick TLS
    // with no trusted roots and ignore the CA file).
    let bare = endpoint
        .strip_prefix("https://")
        .expect("an https endpoint")
        .to_owned();
    let error = usage_tracker::TrackerBuilder::new()
        .endpoint(&bare)
        .tls_ca_file(&ca_file)
        .start()
        .expect_err("an endpoint without a scheme is an error");
    assert!(
        error.to_string().contains("has no scheme") && error.to_string().contains(&bare),
        "{error}"
    );
    collector.stop().await;
}

/// GET over HTTPS, trusting `ca`: (status, body).
async fn https_get(addr: SocketAddr, path: &str, ca: &Ca) -> Result<(u16, String), String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (alpn, response) = https_exchange(addr, request.as_bytes(), ca).await?;
    assert_eq!(
        alpn.as_deref(),
        Some(&b"http/1.1"[..]),
        "the admin listener speaks HTTP/1.1"
    );
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {response}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_serves_https_with_its_option() {
    let db = TestDb::mysql().await;
    let ca = Ca::new("usage test admin CA");
    let secret = SecretDir::new(&ca.server());
    let mut config = settings(db.url());
    config.tls.admin_cert_file = Some(secret.cert());
    config.tls.admin_key_file = Some(secret.key());
    let collector = TestCollector::start_unready(config, true).await;
    let (status, body) = poll::until(
        "/health/ready over HTTPS",
        Duration::from_secs(15),
        || https_get(collector.admin, "/health/ready", &ca),
        |answer| matches!(answer, Ok((200, _))),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (_, metrics) = https_get(collector.admin, "/metrics", &ca).await.unwrap();
    assert!(
        metrics.contains("usage_collector_tls_reload_failures_total{listener=\"admin\"} 0"),
        "{metrics}"
    );
    // Plain HTTP to the HTTPS port gets no answer.
    let mut plain = tokio::net::TcpStream::connect(collector.admin)
        .await
        .unwrap();
    plain
        .write_all(b"GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _closed = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer))
        .await
        .expect("the connection is closed");
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    // The OTLP listener stays plain: the admin option is its own.
    send(&collector.endpoint(), None, None, "/plain-otlp")
        .await
        .expect("plain OTLP");
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_certificate_or_key_stops_the_start_naming_the_file() {
    let db = TestDb::mysql().await;
    let ca = Ca::new("usage test CA");
    let secret = SecretDir::new(&ca.server());
    let missing = secret.root.join("missing.crt");
    let garbage = secret.root.join("garbage.key");
    std::fs::write(&garbage, "not a key\n").unwrap();
    let cases: [(PathBuf, PathBuf, &Path, &str); 3] = [
        (missing.clone(), secret.key(), &missing, "cannot read"),
        (secret.cert(), garbage.clone(), &garbage, "no private key"),
        (secret.key(), secret.key(), &secret.key(), "no certificate"),
    ];
    for (cert, key, named, problem) in cases {
        let mut config = settings(db.url());
        config.tls.cert_file = Some(cert);
        config.tls.key_file = Some(key);
        let error = usage_collector::Application::build(config, true)
            .await
            .err()
            .expect("the collector refuses to start");
        let text = error.to_string();
        assert!(text.contains(&named.display().to_string()), "{text}");
        assert!(text.contains(problem), "{text}");
    }
    let mut half = settings(db.url());
    half.tls.cert_file = Some(secret.cert());
    let error = usage_collector::Application::build(half, true)
        .await
        .err()
        .expect("a certificate without its key");
    assert!(error.to_string().contains("--tls-key-file"), "{error}");

    // The command itself: a bad key file is a non-zero exit with the file in its message.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_usage-collector-e2e"));
    command
        .args(["serve", "--database-url", db.url()])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--spool-dir")
        .arg(secret.root.join("spool"))
        .arg("--tls-cert-file")
        .arg(secret.cert())
        .arg("--tls-key-file")
        .arg(&garbage)
        .env("NO_COLOR", "1");
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .expect("the command exits")
    .expect("the command task")
    .expect("the command runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&garbage.display().to_string()),
        "the file is named: {stderr}"
    );
}

/// The real command, its TLS from flags: an export over TLS writes rows, plaintext does not.
#[tokio::test(flavor = "multi_thread")]
async fn the_command_serves_otlp_over_tls_from_its_flags() {
    use usage_pipeline_tests::process::{ProcessConfig, temp_dir};
    let db = TestDb::mysql().await;
    let ca = Ca::new("usage test CA");
    let secret = SecretDir::new(&ca.server());
    let dir = temp_dir("usage_test_tls_process");
    let mut process = ProcessConfig::new(env!("CARGO_BIN_EXE_usage-collector-e2e"), db.url(), &dir);
    process.extra = vec![
        "--tls-cert-file".to_owned(),
        secret.cert().display().to_string(),
        "--tls-key-file".to_owned(),
        secret.key().display().to_string(),
    ];
    let collector = process.start_ready().await;
    let endpoint = format!("https://{}", process.grpc);
    send(
        &endpoint,
        Some(trusting(&ca, None)),
        None,
        "/from-the-command",
    )
    .await
    .expect("an export over TLS");
    let plaintext = send(&process.endpoint(), None, None, "/plaintext").await;
    assert!(plaintext.is_err(), "{plaintext:?}");
    collector.wait_drained(Duration::from_secs(10)).await;
    assert_eq!(paths(&db).await, ["/from-the-command"]);
    let (status, _) = collector.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("could not remove {}: {e}", dir.display());
    }
}

/// One raw HTTP/1.1 request over TLS, trusting `ca` and offering `h2` and `http/1.1` as a
/// browser does: (the protocol the server chose, the whole answer).
async fn https_exchange(
    addr: SocketAddr,
    request: &[u8],
    ca: &Ca,
) -> Result<(Option<Vec<u8>>, String), String> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap();
    roots.add(der).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    let mut response = String::new();
    // A server may close without close_notify; what was read is the answer.
    if let Err(e) = stream.read_to_string(&mut response).await
        && response.is_empty()
    {
        return Err(e.to_string());
    }
    Ok((alpn, response))
}

/// OTLP/HTTP takes the OTLP listener's certificate: HTTPS (HTTP/1.1 in ALPN, whatever the
/// client offers) writes rows, plaintext to it is refused and counted.
#[tokio::test(flavor = "multi_thread")]
async fn otlp_http_takes_the_otlp_listeners_tls() {
    let db = TestDb::mysql().await;
    let ca = Ca::new("usage test CA");
    let secret = SecretDir::new(&ca.server());
    let collector = tls_collector(&db, &secret, false).await;
    let http = collector.http_addr();
    let post = |path: &str| {
        let body = format!(
            r#"{{"resourceLogs":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"web-ide"}}}}]}},"scopeLogs":[{{"logRecords":[{{"timeUnixNano":"1772600767123456000","eventName":"page_visit","attributes":[{{"key":"url.path","value":{{"stringValue":"{path}"}}}}]}}]}}]}}]}}"#
        );
        format!(
            "POST /v1/logs HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let (alpn, answer) = https_exchange(http, post("/https").as_bytes(), &ca)
        .await
        .expect("OTLP/HTTP over TLS");
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let mut plaintext = tokio::net::TcpStream::connect(http).await.unwrap();
    plaintext
        .write_all(post("/plaintext").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    // The handshake fails: an alert or a reset, never an HTTP answer.
    let _closed = plaintext.read_to_end(&mut answer).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
        "plaintext answered: {answer:?}"
    );

    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(paths(&db).await, ["/https"]);
    let failed = metric(
        &collector,
        "usage_collector_tls_handshake_failures_total{listener=\"otlp_http\",reason=\"failed\"}",
    )
    .await;
    assert!(failed >= 1.0, "the plaintext handshake counted: {failed}");
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_tracker_presents_its_client_certificate_when_the_collector_asks() {
    let db = TestDb::mysql().await;
    let server_ca = Ca::new("usage test server CA");
    let client_ca = Ca::new("usage test client CA");
    let secret = SecretDir::new(&server_ca.server());
    secret.publish_with_ca(&server_ca.server(), &client_ca.pem);
    let collector = tls_collector(&db, &secret, true).await;
    let files = |name: &str, contents: &str| {
        let path = secret.root.join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    };
    let trusted = files("server-ca.pem", &server_ca.pem);
    let identity = client_ca.client("web-ide");
    let client_cert = files("client.crt", &identity.cert);
    let client_key = files("client.key", &identity.key);
    let endpoint = collector.tls_endpoint();
    let tracker_config = |with_identity: bool| {
        let mut variables = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", trusted.clone()),
            ("OTEL_SERVICE_NAME", "web-ide".to_owned()),
        ];
        if with_identity {
            variables.push(("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", client_cert.clone()));
            variables.push(("OTEL_EXPORTER_OTLP_CLIENT_KEY", client_key.clone()));
        }
        usage_tracker::Config::from_lookup(|name| {
            variables
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        })
        .expect("settings")
    };

    // Without its certificate, the collector does not let it in: verification fails.
    let refused = usage_tracker::TrackerBuilder::from_config(tracker_config(false))
        .verify(Duration::from_secs(5))
        .start();
    assert!(refused.is_err(), "no client certificate: accepted");

    let tracker = usage_tracker::TrackerBuilder::from_config(tracker_config(true))
        .verify(Duration::from_secs(5))
        .start()
        .expect("the tracker connects with its client certificate");
    let subscriber = tracing_subscriber::registry().with(tracker.layer());
    tracing::subscriber::with_default(subscriber, || {
        usage_tracker::page_visit(usage_tracker::PageVisit::new("/tracked-with-a-certificate"));
    });
    assert!(tracker.flush(Duration::from_secs(10)));
    collector.wait_written(Duration::from_secs(10)).await;
    assert_eq!(paths(&db).await, ["/tracked-with-a-certificate"]);
    assert_eq!(tracker.stats().failed, 0);
    drop(tracker);
    collector.stop().await;
}
