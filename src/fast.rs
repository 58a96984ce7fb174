//! The HTTP/1.1 fast path: a connection loop and a `Wire` that moves the
//! common call's bytes by hand — a plain-TCP request without a body or with
//! a small one of declared length, forwarded to a plain-HTTP upstream.
//!
//! Most API traffic is `GET /api/v2/...` with no body, and most of the rest
//! is a ticket created or updated with a small JSON body. For them, hyper's
//! server and client codecs, the pooled client's per-connection task and
//! channel, and the boxed bodies in between cost more CPU than the policing
//! itself (see BENCHMARKS.md). Here the connection's own task reads the head
//! ([`head`]), hands the call to the one lifecycle (`proxy::serve_call`),
//! which judges it exactly as it judges a call hyper carries, and moves its
//! bytes when asked: the request written to a pooled upstream socket
//! (`upstream::raw`), the answer copied back with the gateway's fields
//! spliced into its head; usually one read and one write on each socket.
//!
//! A small body (`Content-Length` up to [`MAX_BODY`]) is read whole before
//! the call is judged — bounded, and it lets a refused call's body be
//! skipped without closing the connection — and is written upstream after
//! the head only if the call is admitted.

pub mod head;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::fields::RawFields;
use crate::h1::{self, Date};
use crate::proxy::{self, ConnInfo, Wire};
use crate::reject::Reject;
use crate::state::Shared;
use crate::upstream::raw::{Exchange, Pool};
use crate::upstream::reported::Reported;
use crate::upstream::{forwarding, Forwarding, UpstreamError};
use head::{FastHead, FieldsAt, Head};

// ---------------------------------------------------------------------------
// Which path a connection and a request take. This is the one place that
// decides it: a connection starts here by `FastPath::for_connection`, and a
// request stays here unless `head::parse` hands it over by the rules below.
// ---------------------------------------------------------------------------

/// A request head larger than this goes to hyper (which answers 431 past its own limit).
pub const MAX_HEAD: usize = 16 * 1024;
/// The largest request body the fast path carries. It is held in memory
/// while the call is judged, so it stays small: a ticket's JSON fits, an
/// attachment upload streams through hyper and is never buffered whole.
pub const MAX_BODY: usize = 16 * 1024;

/// What the fast path needs: the shared state, whose upstream has a raw pool.
pub struct FastPath {
    shared: Arc<Shared>,
}

impl FastPath {
    /// The fast path for a listener: when `[server] fast_path` is on and the
    /// upstream is plain HTTP (the raw pool speaks no TLS). Otherwise hyper
    /// serves every connection.
    pub fn new(shared: Arc<Shared>, enabled: bool) -> Option<Arc<FastPath>> {
        (enabled && shared.upstream.raw.is_some()).then(|| Arc::new(FastPath { shared }))
    }

    /// Which path a new connection starts on: a plain-TCP connection starts
    /// here; a TLS one (h2 by ALPN, or HTTP/1.1 inside TLS) is hyper's from
    /// its first byte.
    pub fn for_connection(fast: Option<&Arc<FastPath>>, tls: bool) -> Option<&Arc<FastPath>> {
        fast.filter(|_| !tls)
    }
}

/// Request fields that make a request hyper's: streamed bodies, upgrades,
/// interim answers and connection options. Besides these, `head::parse`
/// hands over a head that does not parse or is larger than [`MAX_HEAD`],
/// HTTP/1.0, h2c, a target that is not plain origin-form ([`origin_form`]),
/// a `Content-Length` that is not one plain number up to [`MAX_BODY`]
/// ([`body_length`]), and a field value hyper's `HeaderValue` would refuse.
pub fn hands_over(name: &[u8]) -> bool {
    const HYPERS: [&[u8]; 8] = [
        b"transfer-encoding",
        b"connection",
        b"upgrade",
        b"expect",
        b"te",
        b"keep-alive",
        b"proxy-connection",
        b"http2-settings",
    ];
    HYPERS.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// An origin-form target (`/path?query`) the fast path reads in place: the
/// bytes `http::Uri` takes as they are, except a fragment (`#`, which `Uri`
/// cuts off) and bytes above ASCII (which `Uri` takes if they are UTF-8);
/// those, an absolute-form target and anything `Uri` refuses are hyper's.
/// Returns where the `?` is, or the length if there is none.
pub fn origin_form(target: &[u8]) -> Option<usize> {
    // The byte classes of http's path and query scanners (`http::uri::path`).
    let in_path =
        |b: u8| matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7A | 0x7C | 0x7E | b'"' | b'{' | b'}');
    let in_query = |b: u8| matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E);
    // (`Uri` also refuses a target over 64 KiB; none the fast path takes is.)
    if target.first() != Some(&b'/') || target.len() > MAX_HEAD {
        return None;
    }
    let query_at = target.iter().position(|&b| b == b'?').unwrap_or(target.len());
    let (path, query) = target.split_at(query_at);
    (path.iter().all(|&b| in_path(b)) && query.iter().skip(1).all(|&b| in_query(b))).then_some(query_at)
}

/// A `Content-Length` value the fast path carries: ASCII digits only, at
/// most [`MAX_BODY`].
pub fn body_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 6 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = value.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    (n <= MAX_BODY).then_some(n)
}

// ---------------------------------------------------------------------------
// The connection loop.
// ---------------------------------------------------------------------------

/// How a connection left the fast path.
pub enum Outcome {
    /// Closed (by either side, a timeout or shutdown).
    Closed,
    /// Not a fast-path request: hyper serves the rest of the connection,
    /// starting with these bytes.
    HandOver(Vec<u8>, TcpStream),
}

/// What a connection keeps from call to call, so that a call allocates and
/// registers nothing of its own for them.
struct Reused<'t> {
    /// The head (and small body) being written, upstream or downstream.
    out: Vec<u8>,
    /// The gateway's own response fields.
    ours: RawFields,
    /// A refusal's body.
    body: Vec<u8>,
    /// `Date` of a refusal, or of an upstream answer that has none.
    date: Date,
    /// The upstream's response-head deadline (see `serve`).
    upstream_timer: Pin<&'t mut Sleep>,
}

/// Serves requests on `stream` for as long as they are fast-path requests.
pub async fn serve(
    fp: &FastPath,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
    header_read_timeout: Duration,
) -> Outcome {
    let shared = &*fp.shared;
    let Some(pool) = &shared.upstream.raw else { return Outcome::HandOver(Vec::new(), stream) };
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut fields: FieldsAt = Vec::with_capacity(16);
    // X-Forwarded-For's value, the same for every call on this connection.
    let ip = peer.ip().to_string();
    let conn = ConnInfo { peer, tls: false };
    // One timer per connection for the head reads and one for the upstream,
    // each pushed later per call: pushing a registered tokio timer later is
    // one atomic update, where a `timeout` per call would register and
    // cancel a wheel entry each time (BENCHMARKS.md). Neither timer's
    // deadline ever moves earlier, so neither re-enters the wheel per call.
    let read_timer = tokio::time::sleep(header_read_timeout);
    let upstream_timer = tokio::time::sleep(pool.timeout());
    tokio::pin!(read_timer, upstream_timer);
    let mut reused = Reused {
        out: Vec::with_capacity(1024),
        ours: RawFields::default(),
        body: Vec::new(),
        date: Date::default(),
        upstream_timer,
    };
    loop {
        let head =
            read_head(&mut stream, &mut buf, &mut fields, header_read_timeout, &mut shutdown, read_timer.as_mut())
                .await;
        let (parsed, stalled) = match head {
            Head::Ready(parsed) => (parsed, false),
            // The head came but its body stopped arriving: the call is
            // judged and answered 408 like one whose body stalls on hyper.
            Head::Waiting(parsed) => (parsed, true),
            Head::HandOver => return Outcome::HandOver(buf, stream),
            Head::Partial | Head::Closed => return Outcome::Closed,
        };
        let body = if stalled { &[][..] } else { &buf[parsed.len..parsed.len + parsed.body] };
        let mut wire = FastWire {
            stream: &mut stream,
            reused: &mut reused,
            head: FastHead::new(parsed.method, parsed.target, &buf[..parsed.len], &fields),
            body,
            pool,
            ip: &ip,
            stalled,
        };
        let keep = proxy::serve_call(shared, conn, &mut wire).await;
        // A stalled body never all arrived: the connection closes (and the
        // buffer holds less than the body it declared).
        if !keep || stalled {
            return Outcome::Closed;
        }
        // The body goes with its call, forwarded or refused: the next request starts after it.
        buf.drain(..parsed.len + parsed.body);
        if *shutdown.borrow() {
            return Outcome::Closed;
        }
    }
}

/// Reads until `buf` starts with a complete request head that the fast path
/// takes, and its body if it declares one. The clock starts when the wait
/// does, as hyper's `header_read_timeout`, and covers the small body too.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    fields: &mut FieldsAt,
    timeout: Duration,
    shutdown: &mut watch::Receiver<bool>,
    mut timer: Pin<&mut Sleep>,
) -> Head {
    timer.as_mut().reset(Instant::now() + timeout);
    loop {
        if !buf.is_empty() {
            match head::parse(buf, fields) {
                // The body is still on its way.
                Head::Waiting(_) | Head::Partial => {}
                taken_or_not => return taken_or_not,
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let idle = buf.is_empty();
        // Biased, and the read before the timer: bytes that are there are
        // taken even at the deadline, as `tokio::time::timeout` would.
        let read = tokio::select! {
            biased;
            // An idle keep-alive connection closes at shutdown; a half-read head is finished.
            _ = shutdown.wait_for(|s| *s), if idle => return Head::Closed,
            r = stream.read_buf(buf) => r,
            () = timer.as_mut() => {
                // Out of time with the head read: it is the body that stalled.
                return match head::parse(buf, fields) {
                    waiting @ Head::Waiting(_) => waiting,
                    _ => Head::Closed,
                };
            }
        };
        match read {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------
// One call's bytes.
// ---------------------------------------------------------------------------

/// One call on the fast path: its head and small body in the read buffer,
/// the downstream socket, and the connection's reused buffers.
struct FastWire<'c, 'b, 't> {
    stream: &'c mut TcpStream,
    reused: &'c mut Reused<'t>,
    head: FastHead<'b>,
    body: &'b [u8],
    pool: &'c Pool,
    /// The peer's address as text (for `X-Forwarded-For`).
    ip: &'c str,
    /// The declared body stopped arriving: the call is judged, then answered
    /// as an upload that stalled (nothing reaches the upstream).
    stalled: bool,
}

impl<'c, 'b> Wire for FastWire<'c, 'b, '_> {
    type Head = FastHead<'b>;
    type Answer = Exchange<'c>;
    type Output = bool;
    type Fields = RawFields;

    fn head(&self) -> &FastHead<'b> {
        &self.head
    }

    fn body_present(&self) -> bool {
        !self.body.is_empty() || self.stalled
    }

    /// The connection's task is inside the call, so nothing else reads the
    /// socket while a call is held: a peek that sees end-of-stream (or an
    /// error) means the client left. Bytes instead (the next pipelined
    /// request, or the rest of a stalled body) leave the question open: the
    /// call then waits out its hold, as any other. Like hyper (without
    /// half-close support), a client that shuts its sending side counts as
    /// gone.
    async fn client_gone(&self) {
        let mut byte = [0u8; 1];
        if let Ok(1..) = self.stream.peek(&mut byte).await {
            std::future::pending::<()>().await;
        }
    }

    async fn exchange(&mut self, fwd: &Forwarding<'_>) -> Result<Exchange<'c>, UpstreamError> {
        if self.stalled {
            return Err(UpstreamError::DownstreamStalled);
        }
        let req = &self.head;
        let Reused { out, upstream_timer, .. } = &mut *self.reused;
        let path = fwd.path.unwrap_or(req.path);
        forwarding::write_request_head(out, &req.method, path, req.query, req, fwd, self.ip);
        out.extend_from_slice(self.body);
        // Let the other connections with a request ready get this far first:
        // the upstream is then woken once for a burst of requests instead of once
        // per request, which on a shared core cuts context switches per call by a
        // third (BENCHMARKS.md). It costs one trip through the run queue, which
        // counts as the gateway's time, not the upstream's.
        tokio::task::yield_now().await;
        self.pool.exchange(out, req.method == Method::HEAD, upstream_timer.as_mut()).await
    }

    fn status(answer: &Exchange<'c>) -> u16 {
        answer.status()
    }

    fn answer_has_request_id(answer: &Exchange<'c>) -> bool {
        answer.has_request_id()
    }

    fn reported(answer: &Exchange<'c>) -> Reported {
        answer.reported()
    }

    async fn answer(&mut self, mut answer: Exchange<'c>, ours: impl FnOnce(&mut RawFields)) -> bool {
        let Reused { out, ours: fields, date, .. } = &mut *self.reused;
        fields.clear();
        ours(fields);
        out.clear();
        answer.write_response_head(out, fields, date);
        answer.relay_body(self.stream, out).await
    }

    /// Renders the refusal straight into the connection's buffers: under a
    /// flood most calls end here.
    async fn refuse(&mut self, reject: Reject, ours: impl FnOnce(&mut RawFields)) -> bool {
        let Reused { out, ours: fields, body, date, .. } = &mut *self.reused;
        let status = reject.status();
        fields.clear();
        reject.fields(fields);
        ours(fields);
        body.clear();
        reject.write_body(body);
        out.clear();
        h1::write_status_line(out, status);
        out.extend_from_slice(fields.text());
        let mut n = itoa::Buffer::new();
        h1::write_field(out, b"content-length", n.format(body.len()).as_bytes());
        h1::write_field(out, b"date", date.now());
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of that request never came: the connection is out of step.
            h1::write_field(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        if self.head.method != Method::HEAD {
            out.extend_from_slice(body);
        }
        self.stream.write_all(out).await.is_ok()
    }
}
