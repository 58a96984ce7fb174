//! Accept loops: TCP (optionally rustls) → hyper-util's auto builder
//! (HTTP/1.1, h2 by ALPN or prior knowledge) → a service; every connection is
//! watched so shutdown can drain it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::body::Body;
use crate::fast::FastPath;

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of one listener.
#[derive(Clone)]
pub struct ListenerOptions {
    pub header_read_timeout: Duration,
    /// Swapped on reload, so a renewed certificate applies to new connections.
    pub tls: Option<Arc<ArcSwapOption<rustls::ServerConfig>>>,
    /// Plain-TCP connections start on the HTTP/1.1 fast path (`fast`).
    pub fast: Option<Arc<FastPath>>,
}

/// What `serve` leaves behind: the connections still open, to drain.
pub struct Drain {
    graceful: GracefulShutdown,
    live: Arc<Live>,
}

impl Drain {
    /// Asks every connection to finish its request in flight and close, and
    /// waits until all have. (The caller bounds the wait.)
    pub async fn shutdown(self) {
        self.graceful.shutdown().await;
        // Connections on the fast path saw the shutdown signal themselves.
        loop {
            let zero = self.live.zero.notified();
            if self.live.count.load(Ordering::Acquire) == 0 {
                return;
            }
            zero.await;
        }
    }
}

/// Connection tasks alive, fast path included.
#[derive(Default)]
struct Live {
    count: AtomicUsize,
    zero: Notify,
}

struct LiveGuard(Arc<Live>);

impl LiveGuard {
    fn new(live: &Arc<Live>) -> LiveGuard {
        live.count.fetch_add(1, Ordering::AcqRel);
        LiveGuard(live.clone())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

/// Serves `listener` until `shutdown` turns true, then returns the graceful
/// handle of the connections still open so the caller can drain them.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    opts: ListenerOptions,
    mut shutdown: watch::Receiver<bool>,
    handler: F,
) -> Drain
where
    F: Fn(SocketAddr, bool, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let live = Arc::new(Live::default());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(opts.header_read_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let tls = opts.tls.as_ref().and_then(|t| t.load_full());
        let watcher = graceful.watcher();
        let first_byte_timeout = opts.header_read_timeout;
        let fast = opts.fast.clone();
        let conn_shutdown = shutdown.clone();
        let guard = LiveGuard::new(&live);
        tokio::spawn(async move {
            let _guard = guard;
            // A plain connection starts on the fast path, which bounds the
            // wait for every request head itself.
            let (prefix, stream) = match (&tls, fast) {
                (None, Some(fast)) => {
                    match crate::fast::serve(&fast, stream, peer, conn_shutdown, first_byte_timeout).await {
                        crate::fast::Outcome::Closed => return,
                        crate::fast::Outcome::HandOver(prefix, stream) => (prefix, stream),
                    }
                }
                _ => {
                    // hyper's header_read_timeout starts with a request's first
                    // byte: a client that connects and sends nothing would hold
                    // its connection and this task forever. Wait for that byte
                    // (or the TLS ClientHello) within the same bound.
                    // A connection still silent at shutdown is simply closed.
                    let mut probe = [0u8; 1];
                    let mut conn_shutdown = conn_shutdown;
                    tokio::select! {
                        biased;
                        _ = conn_shutdown.wait_for(|s| *s) => return,
                        peeked = tokio::time::timeout(first_byte_timeout, stream.peek(&mut probe)) => match peeked {
                            Ok(Ok(n)) if n > 0 => {}
                            _ => return,
                        },
                    }
                    (Vec::new(), stream)
                }
            };
            match tls {
                None => {
                    let svc = service_fn(move |req| handler(peer, false, req));
                    let io = TokioIo::new(Prefixed { prefix, at: 0, inner: stream });
                    let conn = builder.serve_connection_with_upgrades(io, svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                Some(cfg) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let svc = service_fn(move |req| handler(peer, true, req));
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
            }
        });
    }
    Drain { graceful, live }
}

/// A stream that first replays bytes already read from it: how a connection
/// the fast path has started reading reaches hyper intact.
struct Prefixed {
    prefix: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
