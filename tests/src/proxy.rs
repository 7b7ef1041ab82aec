//! A TCP proxy between the collector and MariaDB that a test can cut, stall and restore, so
//! database outages are simulated without stopping the shared server: a cut closes every
//! connection and refuses new ones (a server that is down); a stall keeps every connection
//! open and moves no bytes, and accepts new ones that never get an answer (a hung server, or a
//! network that drops packets without closing anything).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::db::{TestDb, server_addr};

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stalled: watch::Sender<bool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

/// Copies `from` to `to`, holding the bytes (reading nothing more) while stalled.
async fn forward(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Wait out a stall before reading, and again before passing on what was read.
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cut = Arc::new(AtomicBool::new(false));
        let (stalled, stall_view) = watch::channel(false);
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = tokio::spawn({
            let (cut, links) = (cut.clone(), links.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        drop(client); // refused: the connection closes at once
                        continue;
                    }
                    let stall = stall_view.clone();
                    let link = tokio::spawn(async move {
                        // Ends when either side closes or the link is aborted by a cut.
                        if let Ok(server) = TcpStream::connect(upstream).await {
                            let (client_read, client_write) = client.into_split();
                            let (server_read, server_write) = server.into_split();
                            tokio::join!(
                                forward(client_read, server_write, stall.clone()),
                                forward(server_read, client_write, stall),
                            );
                        }
                    });
                    links.lock().expect("links").push(link.abort_handle());
                }
            }
        })
        .abort_handle();
        Self {
            addr,
            cut,
            stalled,
            links,
            accept,
        }
    }

    /// A proxy in front of the test server, and `db`'s URL through it.
    pub async fn in_front_of(db: &TestDb) -> (Self, String) {
        let proxy = Self::start(server_addr()).await;
        let url = db.url_via(proxy.addr);
        (proxy, url)
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }

    /// Keeps every connection open and moves no bytes, either way, until restored.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.stalled.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
