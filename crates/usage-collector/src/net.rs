//! Accepting connections on both listeners (OTLP and admin) so that a client that connects and
//! says nothing cannot hold one: each accepted connection must send its first byte within the
//! handshake timeout, or it is closed. [`tls`] adds TLS on top, for any listener.

pub mod tls;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// A connection that must start talking before a deadline.
#[derive(Debug)]
pub struct Guarded {
    stream: TcpStream,
    /// Until the first byte arrives; `None` after.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Guarded {
    /// `stream`, closed unless its first byte arrives within `handshake`.
    pub fn new(stream: TcpStream, handshake: Duration) -> Self {
        Self {
            stream,
            deadline: Some(Box::pin(tokio::time::sleep(handshake))),
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
/// answers must not wait for Nagle).
#[derive(Debug)]
pub struct Incoming {
    listener: TcpListener,
    handshake: Duration,
    /// After a failed accept (out of file descriptors, say), no new accept until this passes,
    /// so the server does not spin.
    pause: Option<Pin<Box<Sleep>>>,
}

/// How long accepting pauses after an error.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

impl Incoming {
    /// Connections of `listener`, each closed unless it talks within `handshake`.
    pub fn new(listener: TcpListener, handshake: Duration) -> Self {
        Self {
            listener,
            handshake,
            pause: None,
        }
    }

    /// The next connection.
    pub async fn accept(&self) -> io::Result<Guarded> {
        let (stream, _) = self.listener.accept().await?;
        stream.set_nodelay(true)?;
        Ok(Guarded::new(stream, self.handshake))
    }
}

impl futures_core::Stream for Incoming {
    type Item = io::Result<Guarded>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(pause) = &mut self.pause {
            ready!(pause.as_mut().poll(cx));
            self.pause = None;
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
        Poll::Ready(Some(Ok(Guarded::new(stream, self.handshake))))
    }
}
