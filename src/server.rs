//! Accept loops: TCP (optionally rustls) → hyper-util's auto builder
//! (HTTP/1.1, h2 by ALPN or prior knowledge) → a service; every connection is
//! watched so shutdown can drain it, and a hyper connection with no call in
//! flight for `header_read_timeout` is closed, as the fast path closes one
//! whose next request head does not come in time.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::body::{Body, BoxError};
use crate::fast::FastPath;
use crate::metrics::Held;
use prometheus_client::metrics::gauge::Gauge;

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
    /// Raised while a connection is open, on whichever path serves it
    /// (`deskgate_connections_open` for the API listener).
    pub connections: Option<Gauge>,
}

/// What `serve` leaves behind: the connections still open, to drain.
pub struct Drain {
    live: Arc<Live>,
}

impl Drain {
    /// Waits until every connection has finished its request in flight and
    /// closed: each saw the shutdown signal itself. (The caller bounds the
    /// wait.)
    pub async fn shutdown(self) {
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

/// Serves `listener` until `shutdown` turns true, then returns what the
/// caller needs to wait for the connections still open to drain.
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
        let first_byte_timeout = opts.header_read_timeout;
        let fast = opts.fast.clone();
        let conn_shutdown = shutdown.clone();
        let hyper_shutdown = shutdown.clone();
        let guard = LiveGuard::new(&live);
        let open = opts.connections.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let _open = open.as_ref().map(Held::new);
            // A plain connection starts on the fast path, which bounds the
            // wait for every request head itself.
            let (prefix, stream) = match FastPath::for_connection(fast.as_ref(), tls.is_some()) {
                Some(fast) => match crate::fast::serve(fast, stream, peer, conn_shutdown, first_byte_timeout).await {
                    crate::fast::Outcome::Closed => return,
                    crate::fast::Outcome::HandOver(prefix, stream) => (prefix, stream),
                },
                None => {
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
                    let io = TokioIo::new(Prefixed { prefix, at: 0, inner: stream });
                    serve_hyper(&builder, io, peer, false, handler, hyper_shutdown, first_byte_timeout).await;
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
                    let io = TokioIo::new(stream);
                    serve_hyper(&builder, io, peer, true, handler, hyper_shutdown, first_byte_timeout).await;
                }
            }
        });
    }
    Drain { live }
}

/// Serves one connection through hyper until it ends. It is asked to finish
/// its calls in flight and close (h2: GOAWAY) at shutdown, and when it has
/// had no call in flight for `idle`: hyper bounds an HTTP/1.1 head's wait,
/// but nothing of hyper's bounds an h2 connection that opens no stream, or
/// trickles PINGs or header fragments that never make one.
async fn serve_hyper<I, F, Fut>(
    builder: &auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    peer: SocketAddr,
    tls: bool,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
    idle: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(SocketAddr, bool, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send + 'static,
{
    let calls = Arc::new(Calls::new());
    let counted = calls.clone();
    let svc = service_fn(move |req| {
        let call = CallGuard::new(&counted);
        let answer = handler(peer, tls, req);
        async move {
            let rsp = answer.await?;
            Ok::<_, std::convert::Infallible>(rsp.map(|inner| Counted { inner, _call: call }))
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let mut closing = false;
    let ended = loop {
        tokio::select! {
            ended = conn.as_mut() => break ended,
            _ = shutdown.wait_for(|s| *s), if !closing => {}
            _ = calls.idle_for(idle) => {
                // Asked to close, and still no call in flight a whole
                // `idle` later: h2's graceful close waits for the client to
                // answer a PING, which a client that went silent never does.
                if closing {
                    break Ok(());
                }
            }
        }
        conn.as_mut().graceful_shutdown();
        calls.restart_idle();
        closing = true;
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Calls in flight on one hyper connection, and since when it has had none.
struct Calls {
    in_flight: AtomicUsize,
    start: Instant,
    /// Milliseconds after `start` when the last call in flight ended.
    idle_since_ms: AtomicU64,
}

impl Calls {
    fn new() -> Calls {
        Calls { in_flight: AtomicUsize::new(0), start: Instant::now(), idle_since_ms: AtomicU64::new(0) }
    }

    /// Starts the idle clock again now (a call in flight restarts it anyway
    /// when it ends).
    fn restart_idle(&self) {
        self.idle_since_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// Returns once the connection has had no call in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            if self.in_flight.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(idle).await;
                continue;
            }
            // Read after `in_flight`: the call that ended stored its time first.
            let since = self.start + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
            if Instant::now() >= since + idle {
                return;
            }
            tokio::time::sleep_until(since + idle).await;
        }
    }
}

/// A call's place in `Calls::in_flight`, from the moment hyper hands the
/// request over until its answer's body has been sent or dropped.
struct CallGuard(Arc<Calls>);

impl CallGuard {
    fn new(calls: &Arc<Calls>) -> CallGuard {
        calls.in_flight.fetch_add(1, Ordering::AcqRel);
        CallGuard(calls.clone())
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        // The time first: `idle_for` reads it after seeing no call in flight.
        self.0.restart_idle();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that keeps its call counted while hyper sends it.
struct Counted {
    inner: Body,
    _call: CallGuard,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
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
