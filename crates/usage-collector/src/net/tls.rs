//! TLS on a listener, from PEM files that are read again when they change.
//!
//! Any listener uses it the same way: [`Tls::load`] reads the certificate chain, its key and
//! (optionally) the CA that client certificates must chain to, and fails naming the file that
//! cannot be used; [`Tls::watch`] reads the files again every [`RELOAD_EVERY`] and swaps the
//! configuration when their contents changed (a Kubernetes Secret volume swaps its `..data`
//! symlink, so the contents are compared, not a file's own modification time). A changed set
//! that cannot be used is logged with the file and the reason, counted in
//! `usage_collector_tls_reload_failures_total{listener}`, and the pair before stays in force;
//! each handshake uses the configuration in force when it starts.
//!
//! Handshakes never run on the accept loop: a loop that spawns a task per connection calls
//! [`Security::secure`] in that task; a server that takes a stream of connections (tonic's
//! `serve_with_incoming`) takes [`Connections`], which runs up to [`MAX_HANDSHAKES`] handshakes
//! at once in their own tasks and yields only completed ones. Each handshake must finish within
//! the listener's handshake timeout; a failed or late one is closed, counted in
//! `usage_collector_tls_handshake_failures_total{listener,reason}` and logged at debug level
//! (port scanners and plaintext clients would otherwise fill the log). Plaintext sent to a TLS
//! listener fails the handshake: the client gets a TLS alert and a closed connection.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinSet;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

use super::{Guarded, Incoming};
use crate::health::Metrics;
use crate::health::metrics::{ListenerLabels, ListenerReasonLabels};

/// The ALPN name of HTTP/2 (gRPC).
pub const ALPN_H2: &[u8] = b"h2";
/// The ALPN name of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// How often the files are read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Most TLS handshakes in progress on one listener; past it, accepting waits.
pub const MAX_HANDSHAKES: usize = 1024;
/// Why a handshake failed, as a metric's reason label.
pub const HANDSHAKE_REASONS: [&str; 2] = ["timeout", "failed"];

/// The files a listener's TLS is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM), the listener's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate that chains to a CA in this file (PEM).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files from a listener's three settings, whose flags start with `flag` (`tls`,
    /// `admin-tls`): `None` when neither certificate nor key is set (plain TCP); an error when
    /// only one of them is, or a client CA without them.
    pub fn from_settings(
        flag: &str,
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert: cert.to_owned(),
                key: key.to_owned(),
                client_ca: client_ca.map(Path::to_owned),
            })),
            (None, None) if client_ca.is_none() => Ok(None),
            (None, None) => Err(TlsError::Settings(format!(
                "--{flag}-client-ca-file needs --{flag}-cert-file and --{flag}-key-file"
            ))),
            (Some(_), None) => Err(TlsError::Settings(format!(
                "--{flag}-cert-file needs --{flag}-key-file"
            ))),
            (None, Some(_)) => Err(TlsError::Settings(format!(
                "--{flag}-key-file needs --{flag}-cert-file"
            ))),
        }
    }
}

/// A listener's TLS files cannot be used. The message names the file; it never quotes a key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The settings are incomplete.
    #[error("TLS settings: {0}")]
    Settings(String),
    /// A file cannot be read.
    #[error("cannot read the TLS {what} file {path}: {source}")]
    Read {
        /// Which file (`certificate`, `key`, `client CA`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file holds no usable PEM of its kind.
    #[error("TLS {what} file {path}: {problem}")]
    Invalid {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The certificate and key do not make a usable pair (or the CA a usable verifier).
    #[error("TLS certificate {cert} with key {key}: {source}")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
}

/// The bytes of the files, as last read (`None`: unreadable).
type Contents = [Option<Vec<u8>>; 3];

/// A listener's TLS configuration, read again when its files change.
pub struct Tls {
    files: TlsFiles,
    /// The listener's name in logs and metrics (`otlp`, `admin`).
    listener: &'static str,
    alpn: Vec<Vec<u8>>,
    handshake_timeout: Duration,
    current: RwLock<Arc<ServerConfig>>,
    /// What the files held when last read, whether or not it could be used.
    seen: Mutex<Contents>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads `files` for the listener named `listener`, offering the `alpn` protocols (most
    /// preferred first); each handshake must finish within `handshake_timeout`.
    pub fn load(
        files: TlsFiles,
        listener: &'static str,
        alpn: &[&[u8]],
        handshake_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let contents = read_all(&files);
        let config = build(&files, &alpn, &contents)?;
        metrics
            .tls_reload_failures
            .get_or_create(&ListenerLabels { listener });
        metrics
            .tls_reloads
            .get_or_create(&ListenerLabels { listener });
        for reason in HANDSHAKE_REASONS {
            metrics
                .tls_handshake_failures
                .get_or_create(&ListenerReasonLabels { listener, reason });
        }
        tracing::info!(
            listener,
            cert = %files.cert.display(),
            key = %files.key.display(),
            client_ca = files.client_ca.as_ref().map(|p| p.display().to_string()),
            "TLS on"
        );
        Ok(Arc::new(Self {
            files,
            listener,
            alpn,
            handshake_timeout,
            current: RwLock::new(Arc::new(config)),
            seen: Mutex::new(contents.map(|c| c.ok())),
            metrics,
        }))
    }

    /// The files this configuration is read from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files and, if their contents changed since they were last read, builds the
    /// configuration again: `None` when nothing changed, else whether the new files are now in
    /// force (on an error, the configuration before stays in force).
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let contents = read_all(&self.files);
        let now: Contents = contents.each_ref().map(|c| c.as_ref().ok().cloned());
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return None;
            }
            // Tried once per change: a bad set is reported once, not at every poll.
            *seen = now;
        }
        Some(build(&self.files, &self.alpn, &contents).map(|config| {
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        }))
    }

    /// Reads the files again every [`RELOAD_EVERY`] until the task is aborted, logging and
    /// counting each change.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let this = self.clone();
            let reloaded = match tokio::task::spawn_blocking(move || this.reload_if_changed()).await
            {
                Ok(reloaded) => reloaded,
                Err(e) => {
                    tracing::error!(listener = self.listener, error = %e, "TLS reload check ended abnormally");
                    continue;
                }
            };
            let labels = ListenerLabels {
                listener: self.listener,
            };
            match reloaded {
                None => {}
                Some(Ok(())) => {
                    self.metrics.tls_reloads.get_or_create(&labels).inc();
                    tracing::info!(
                        listener = self.listener,
                        cert = %self.files.cert.display(),
                        key = %self.files.key.display(),
                        "TLS files changed: new handshakes use them"
                    );
                }
                Some(Err(error)) => {
                    self.metrics
                        .tls_reload_failures
                        .get_or_create(&labels)
                        .inc();
                    tracing::error!(
                        listener = self.listener,
                        error = %error,
                        "TLS files changed but cannot be used; the certificate before stays in force"
                    );
                }
            }
        }
    }

    /// The TLS handshake on `stream`, within the handshake timeout; a failure is counted and
    /// logged at debug level.
    pub async fn accept(&self, stream: Guarded) -> io::Result<TlsStream<Guarded>> {
        let peer = stream.stream().peer_addr().ok();
        let config = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream);
        let (reason, error) = match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(error)) => ("failed", error),
            Err(_) => (
                "timeout",
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the TLS handshake did not finish within the handshake timeout",
                ),
            ),
        };
        self.metrics
            .tls_handshake_failures
            .get_or_create(&ListenerReasonLabels {
                listener: self.listener,
                reason,
            })
            .inc();
        tracing::debug!(listener = self.listener, peer = ?peer, error = %error, "TLS handshake failed; connection closed");
        Err(error)
    }
}

fn read_all(files: &TlsFiles) -> [io::Result<Vec<u8>>; 3] {
    [
        std::fs::read(&files.cert),
        std::fs::read(&files.key),
        match &files.client_ca {
            Some(path) => std::fs::read(path),
            None => Ok(Vec::new()),
        },
    ]
}

/// The server configuration from the files' contents.
fn build(
    files: &TlsFiles,
    alpn: &[Vec<u8>],
    contents: &[io::Result<Vec<u8>>; 3],
) -> Result<ServerConfig, TlsError> {
    let bytes = |index: usize, what: &'static str, path: &Path| match &contents[index] {
        Ok(bytes) => Ok(bytes.as_slice()),
        Err(e) => Err(TlsError::Read {
            what,
            path: path.to_owned(),
            source: io::Error::new(e.kind(), e.to_string()),
        }),
    };
    let invalid = |what: &'static str, path: &Path, problem: String| TlsError::Invalid {
        what,
        path: path.to_owned(),
        problem,
    };
    let chain = certificates(bytes(0, "certificate", &files.cert)?)
        .map_err(|problem| invalid("certificate", &files.cert, problem))?;
    let key = PrivateKeyDer::from_pem_slice(bytes(1, "key", &files.key)?).map_err(|e| {
        let problem = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key in it (a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` section)".to_owned()
            }
            other => format!("not valid PEM: {other}"),
        };
        invalid("key", &files.key, problem)
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config_error = |source| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let what = "client CA";
            let mut roots = RootCertStore::empty();
            for cert in certificates(bytes(2, what, path)?).map_err(|p| invalid(what, path, p))? {
                roots.add(cert).map_err(|e| {
                    invalid(what, path, format!("not a usable CA certificate: {e}"))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(what, path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(config_error)?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

/// Every certificate in PEM `bytes`; at least one.
fn certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in it (a PEM `CERTIFICATE` section)".to_owned());
    }
    Ok(chain)
}

/// How a listener's connections are secured.
#[derive(Debug, Clone, Default)]
pub enum Security {
    /// Plain TCP.
    #[default]
    Plain,
    /// TLS, with its configuration.
    Tls(Arc<Tls>),
}

impl Security {
    /// `stream` as a connection: at once for plain TCP, after the handshake for TLS.
    pub async fn secure(&self, stream: Guarded) -> io::Result<Conn> {
        match self {
            Security::Plain => Ok(Conn::Plain(stream)),
            Security::Tls(tls) => Ok(Conn::Tls(Box::new(tls.accept(stream).await?))),
        }
    }

    /// The TLS configuration, if any.
    pub fn tls(&self) -> Option<&Arc<Tls>> {
        match self {
            Security::Plain => None,
            Security::Tls(tls) => Some(tls),
        }
    }
}

/// An accepted connection, plain or after its TLS handshake.
#[derive(Debug)]
pub enum Conn {
    /// Plain TCP.
    Plain(Guarded),
    /// TLS.
    Tls(Box<TlsStream<Guarded>>),
}

impl Conn {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &Guarded {
        match self {
            Conn::Plain(stream) => stream,
            Conn::Tls(stream) => stream.get_ref().0,
        }
    }

    /// The client's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().stream().peer_addr()
    }

    /// The protocol agreed by ALPN (TLS only).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(stream) => stream.get_ref().1.alpn_protocol(),
        }
    }

    /// The client's certificate chain, when it presented one (TLS only).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(stream) => stream.get_ref().1.peer_certificates(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(stream) => stream.is_write_vectored(),
            Conn::Tls(stream) => stream.is_write_vectored(),
        }
    }
}

/// The client's address is the TCP connection's, over TLS too (`Request::remote_addr` works
/// the same on both).
impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp().connect_info()
    }
}

/// A listener's connections as a stream, each secured as its [`Security`] says: TLS
/// handshakes run concurrently in their own tasks (at most [`MAX_HANDSHAKES`] at once), and
/// only completed ones are yielded, so a slow client never holds up the others.
#[derive(Debug)]
pub struct Connections {
    incoming: Incoming,
    security: Security,
    handshakes: JoinSet<io::Result<Conn>>,
}

impl Connections {
    /// The connections of `incoming`, secured as `security` says.
    pub fn new(incoming: Incoming, security: Security) -> Self {
        Self {
            incoming,
            security,
            handshakes: JoinSet::new(),
        }
    }
}

impl futures_core::Stream for Connections {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Security::Tls(tls) = &this.security else {
            let accepted = ready!(Pin::new(&mut this.incoming).poll_next(cx));
            return Poll::Ready(accepted.map(|r| r.map(Conn::Plain)));
        };
        // Start the handshake of every connection waiting to be accepted.
        while this.handshakes.len() < MAX_HANDSHAKES {
            match Pin::new(&mut this.incoming).poll_next(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    let tls = tls.clone();
                    this.handshakes.spawn(async move {
                        tls.accept(stream)
                            .await
                            .map(|stream| Conn::Tls(Box::new(stream)))
                    });
                }
                // An accept error (out of file descriptors): the server logs it and goes on.
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => break,
                Poll::Pending => break,
            }
        }
        loop {
            match ready!(this.handshakes.poll_join_next(cx)) {
                // No handshake in progress: the listener's waker is registered above.
                None => return Poll::Pending,
                Some(Ok(Ok(conn))) => return Poll::Ready(Some(Ok(conn))),
                // Counted and logged by the handshake; the connection is closed.
                Some(Ok(Err(_))) => continue,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "a TLS handshake task ended abnormally");
                    continue;
                }
            }
        }
    }
}
