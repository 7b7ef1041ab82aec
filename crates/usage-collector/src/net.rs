//! Accepting connections on every listener (OTLP/gRPC, OTLP/HTTP and admin) so that clients
//! cannot hold more than their share: each accepted connection must send its first byte within
//! the handshake timeout, or it is closed; and a listener keeps at most `max_connections` open
//! at once (TLS handshakes in progress included): past it, new connections wait in the kernel's
//! listen backlog until one closes. [`tls`] adds TLS on top, for any listener.

pub mod tls;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::PollSemaphore;

/// A connection that must start talking before a deadline.
#[derive(Debug)]
pub struct Guarded {
    stream: TcpStream,
    /// Until the first byte arrives; `None` after.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Its place among the listener's open connections, given back when it closes.
    _slot: Option<OwnedSemaphorePermit>,
}

impl Guarded {
    /// `stream`, closed unless its first byte arrives within `handshake`.
    pub fn new(stream: TcpStream, handshake: Duration) -> Self {
        Self {
            stream,
            deadline: Some(Box::pin(tokio::time::sleep(handshake))),
            _slot: None,
        }
    }

    /// The underlying stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => match &mut this.deadline {
                Some(deadline) => {
                    ready!(deadline.as_mut().poll(cx));
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing within the handshake timeout",
                    )))
                }
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// The connections a listener accepts, each [`Guarded`], with `TCP_NODELAY` (small gRPC
/// answers must not wait for Nagle), at most `max_connections` open at once.
#[derive(Debug)]
pub struct Incoming {
    listener: TcpListener,
    handshake: Duration,
    /// One permit per connection that may be open.
    slots: PollSemaphore,
    /// A permit taken for the next connection, held while no connection is waiting.
    slot: Option<OwnedSemaphorePermit>,
    /// After a failed accept (out of file descriptors, say), no new accept until this passes,
    /// so the server does not spin.
    pause: Option<Pin<Box<Sleep>>>,
}

/// How long accepting pauses after an error.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

impl Incoming {
    /// Connections of `listener`, each closed unless it talks within `handshake`, at most
    /// `max_connections` (at least one) open at once.
    pub fn new(listener: TcpListener, handshake: Duration, max_connections: usize) -> Self {
        Self {
            listener,
            handshake,
            slots: PollSemaphore::new(Arc::new(Semaphore::new(max_connections.max(1)))),
            slot: None,
            pause: None,
        }
    }

    /// The next connection, once fewer than `max_connections` are open. An accept error (out
    /// of file descriptors, say) is logged as `listener`'s and followed by a short pause, so a
    /// loop that calls this again does not spin.
    pub async fn accept(&self, listener: &'static str) -> io::Result<Guarded> {
        let slot = self
            .slots
            .clone_inner()
            .acquire_owned()
            .await
            .map_err(|_| io::Error::other("the listener's connection slots are closed"))?;
        let accepted = self.listener.accept().await.and_then(|(stream, _)| {
            stream.set_nodelay(true)?;
            Ok(stream)
        });
        match accepted {
            Ok(stream) => {
                let mut guarded = Guarded::new(stream, self.handshake);
                guarded._slot = Some(slot);
                Ok(guarded)
            }
            Err(e) => {
                tracing::warn!(listener, error = %e, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                Err(e)
            }
        }
    }
}

impl futures_core::Stream for Incoming {
    type Item = io::Result<Guarded>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(pause) = &mut self.pause {
            ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        if self.slot.is_none() {
            match ready!(self.slots.poll_acquire(cx)) {
                Some(slot) => self.slot = Some(slot),
                None => return Poll::Ready(None),
            }
        }
        let (stream, _) = match ready!(self.listener.poll_accept(cx)) {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "OTLP listener: cannot accept a connection");
                self.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_PAUSE)));
                return Poll::Ready(Some(Err(e)));
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            return Poll::Ready(Some(Err(e)));
        }
        let mut guarded = Guarded::new(stream, self.handshake);
        guarded._slot = self.slot.take();
        Poll::Ready(Some(Ok(guarded)))
    }
}
