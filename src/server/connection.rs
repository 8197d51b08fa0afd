//! A connection's socket as hyper sees it: closed when it has been idle too long, and closed
//! with a linger when hyper is done with it.
//!
//! Idle: nothing read and nothing written for the idle timeout (an h2 connection that sent
//! only its preface, a client that stopped reading its answer). A request the server is still
//! working on is not idle on HTTP/1.1 (hyper does not read meanwhile); on h2 it must not take
//! longer than the idle timeout, which is why the default (60 s) is above the upstream's.
//!
//! Linger: when hyper drops the connection, consentry shuts down its side and reads and
//! discards what the client still sends, for up to [`LINGER_TIME`], before the socket
//! closes. A client that was still writing (a request head larger than the limit, a body
//! too large to drain) then reads the answer it was given instead of a reset: closing a socket
//! with unread data makes the kernel send RST, which throws away the answer in flight.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::limits::Slot;

/// The longest a closed connection is read from and discarded before its socket closes.
pub const LINGER_TIME: Duration = Duration::from_secs(10);
/// Within the linger, the longest wait for the client's next bytes.
const LINGER_IDLE: Duration = Duration::from_secs(2);

pub struct Watched<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    inner: Option<S>,
    idle: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
    /// The connection's place in the table; released once the socket is closed.
    slot: Option<Slot>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Watched<S> {
    pub fn new(inner: S, idle: Duration, slot: Slot) -> Self {
        let now = Instant::now();
        Watched {
            inner: Some(inner),
            idle,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            slot: Some(slot),
        }
    }

    fn active(&mut self) {
        self.last_activity = Instant::now();
    }

    /// After the inner socket answered `Pending`: fails once the connection has been idle for
    /// the idle timeout, and otherwise arranges to be woken when it will have been.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let deadline = self.last_activity + self.idle;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection was idle for too long",
            )),
            Poll::Pending => Ok(()),
        }
    }

    fn inner(&mut self) -> &mut S {
        self.inner.as_mut().expect("the socket is there until drop")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(this.inner()).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.active();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match this.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            },
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(this.inner()).poll_write(cx, buf) {
            Poll::Ready(result) => {
                if matches!(result, Ok(written) if written > 0) {
                    this.active();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match this.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            },
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(this.inner()).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                if matches!(result, Ok(written) if written > 0) {
                    this.active();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match this.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(S::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner()).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Watched<S> {
    fn drop(&mut self) {
        let (Some(inner), Some(slot)) = (self.inner.take(), self.slot.take()) else {
            return;
        };
        // An evicted connection closes at once: its file descriptor is wanted.
        if slot.evicted() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            slot.closing();
            runtime.spawn(linger(inner, slot));
        }
    }
}

/// Shuts down consentry's side, then reads and discards until the client closes its side,
/// stops sending for [`LINGER_IDLE`], [`LINGER_TIME`] has passed, or the slot is wanted.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut socket: S, slot: Slot) {
    let evicted = slot.eviction();
    let discard = async {
        if tokio::time::timeout(LINGER_IDLE, socket.shutdown())
            .await
            .is_err()
        {
            return;
        }
        let mut buffer = vec![0u8; 16 * 1024];
        while let Ok(Ok(read)) = tokio::time::timeout(LINGER_IDLE, socket.read(&mut buffer)).await {
            if read == 0 {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(LINGER_TIME, discard) => {}
        () = evicted => {}
    }
    drop(socket);
    drop(slot);
}
