//! The HTTP/1.1 fast path for the common call: a plain-TCP request without a
//! body or with a small one of declared length, forwarded to a plain-HTTP
//! upstream.
//!
//! Most API traffic is `GET /api/v2/...` with no body, and most of the rest
//! is a ticket created or updated with a small JSON body. For them, hyper's server
//! and client codecs, the pooled client's per-connection task and channel,
//! and the boxed bodies in between cost more CPU than the policing itself
//! (see BENCHMARKS.md). Here the connection's own task reads the head,
//! decides with the very same `proxy::decide` the hyper service uses, writes
//! the request to a pooled upstream socket, and copies the answer back with
//! the gateway's headers spliced into its head: usually one read and one
//! write on each socket. The request's fields are read where they lie in the
//! read buffer ([`FastHead`], through `head::RequestHead`, as hyper's `Parts`
//! are): no `HeaderMap` is built per call.
//!
//! A small body (`Content-Length` up to [`MAX_BODY`]) is read whole before
//! the call is decided — bounded, and it lets a refused call's body be
//! skipped without closing the connection — and is written upstream after the
//! head only if the call is admitted.
//!
//! Anything else — a larger body, `Transfer-Encoding`, `Upgrade`,
//! `Expect`, `Connection` options, HTTP/1.0, h2c, an absolute-form target, a
//! head that does not parse or is very large — is handed to hyper together
//! with the bytes already read, and hyper serves the connection from then on.
//! So every unusual or hostile shape meets the same code as before.

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::fields::RawFields;
use crate::forward;
use crate::head::{self, RequestFields, RequestHead};
use crate::proxy::{self, ConnInfo, RequestCtx};
use crate::reject::Reject;
use crate::state::Shared;

mod chunked;
mod upstream;

pub use upstream::Pool;

/// A request head larger than this goes to hyper (which answers 431 past its own limit).
const MAX_HEAD: usize = 16 * 1024;
/// More fields than this: hyper's turn.
const MAX_HEADERS: usize = 64;
/// The largest request body the fast path carries. It is held in memory
/// while the call is decided, so it stays small: a ticket's JSON fits, an
/// attachment upload streams through hyper and is never buffered whole.
pub const MAX_BODY: usize = 16 * 1024;

/// What the fast path needs: the shared state and the upstream pool.
pub struct FastPath {
    pub shared: Arc<Shared>,
    pub pool: Arc<Pool>,
}

/// How a connection left the fast path.
pub enum Outcome {
    /// Closed (by either side, a timeout or shutdown).
    Closed,
    /// Not a fast-path request: hyper serves the rest of the connection,
    /// starting with these bytes.
    HandOver(Vec<u8>, TcpStream),
}

enum Head {
    /// Head length, body length (both in the buffer), the method and target
    /// parsed (the fields are in the connection's [`FieldsAt`]).
    Complete(usize, usize, Method, Target),
    /// The head came but its body stopped arriving: answered 408.
    Stalled(Method, Target),
    Closed,
    NotMine,
}

/// Where each field of the head being served lies in the read buffer: name
/// and value as byte ranges. Kept per connection, so a call allocates
/// nothing for its fields.
type FieldsAt = Vec<[u32; 4]>;

/// Where an origin-form request target lies in the read buffer: the path is
/// `[0]..[1]`; with `[1] < [2]` a `?` is at `[1]` and the query is
/// `[1] + 1..[2]`. Checked by `parse_request` to be what `http::Uri` takes
/// from it, ASCII only, so reading it takes no copy (an `http::Uri` is one).
#[derive(Clone, Copy)]
struct Target([u32; 3]);

/// A request head the fast path took: method and target parsed, target and
/// fields read where they lie in the read buffer.
struct FastHead<'b> {
    method: Method,
    path: &'b str,
    query: Option<&'b str>,
    buf: &'b [u8],
    fields: &'b [[u32; 4]],
}

impl<'b> FastHead<'b> {
    fn new(method: Method, target: Target, buf: &'b [u8], fields: &'b [[u32; 4]]) -> FastHead<'b> {
        let [p0, q0, q1] = target.0.map(|i| i as usize);
        // `parse_request` let only ASCII through: never the fallbacks.
        let text = |r: std::ops::Range<usize>| buf.get(r).and_then(|b| std::str::from_utf8(b).ok());
        let path = text(p0..q0).unwrap_or("/");
        let query = if q0 < q1 { Some(text(q0 + 1..q1).unwrap_or_default()) } else { None };
        FastHead { method, path, query, buf, fields }
    }

    fn slice(&self, from: u32, to: u32) -> &[u8] {
        // The ranges were taken from this buffer: always in bounds.
        self.buf.get(from as usize..to as usize).unwrap_or_default()
    }
}

impl RequestFields for FastHead<'_> {
    fn values<'a>(&'a self, name: &'static HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let name = name.as_str().as_bytes();
        self.fields
            .iter()
            .filter(move |f| self.slice(f[0], f[1]).eq_ignore_ascii_case(name))
            .map(move |f| self.slice(f[2], f[3]))
    }

    fn all(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(move |f| (self.slice(f[0], f[1]), self.slice(f[2], f[3])))
    }
}

impl RequestHead for FastHead<'_> {
    fn method(&self) -> &Method {
        &self.method
    }

    fn path(&self) -> &str {
        self.path
    }

    fn query(&self) -> Option<&str> {
        self.query
    }

    fn authority(&self) -> Option<&str> {
        // The fast path takes origin-form targets only (`/…`).
        None
    }
}

/// Serves requests on `stream` for as long as they are fast-path requests.
pub async fn serve(
    fp: &FastPath,
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    mut shutdown: watch::Receiver<bool>,
    header_read_timeout: Duration,
) -> Outcome {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut fields: FieldsAt = Vec::with_capacity(16);
    // X-Forwarded-For's value, the same for every call on this connection.
    let ip = peer.ip().to_string();
    // One timer per connection for the head reads and one for the upstream,
    // each pushed later per call: pushing a registered tokio timer later is
    // one atomic update, where a `timeout` per call would register and
    // cancel a wheel entry each time (BENCHMARKS.md). Neither timer's
    // deadline ever moves earlier, so neither re-enters the wheel per call.
    let read_timer = tokio::time::sleep(header_read_timeout);
    let upstream_timer = tokio::time::sleep(fp.pool.timeout());
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
        let (len, body, method, target) = match head {
            Head::Complete(len, body, method, target) => (len, body, method, target),
            Head::Stalled(method, target) => {
                // Counted where the hyper path counts its stalled uploads.
                fp.shared.metrics.count_upstream_error(forward::UpstreamError::DownstreamStalled);
                let req = FastHead::new(method, target, &buf, &fields);
                let mut cx = RequestCtx::new(proxy::request_id(&req));
                let idle_ms = header_read_timeout.as_millis() as u64;
                let head_only = req.method == Method::HEAD;
                let timeout = Reject::RequestTimeout { idle_ms };
                refuse(&fp.shared, &mut stream, &mut reused, &mut cx, timeout, head_only).await;
                return Outcome::Closed;
            }
            Head::Closed => return Outcome::Closed,
            Head::NotMine => return Outcome::HandOver(buf, stream),
        };
        let conn = ConnInfo { peer, tls: false };
        let req = FastHead::new(method, target, &buf[..len], &fields);
        let body = &buf[len..len + body];
        let keep = handle(fp, &mut stream, &mut reused, conn, &ip, req, body).await;
        // The body goes with its call, forwarded or refused: the next request starts after it.
        let used = len + body.len();
        buf.drain(..used);
        if !keep || *shutdown.borrow() {
            return Outcome::Closed;
        }
    }
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
            match parse_request(buf, fields) {
                Parse::Complete(len, body, method, target) if buf.len() >= len + body => {
                    return Head::Complete(len, body, method, target)
                }
                // The body is still on its way.
                Parse::Complete(..) => {}
                Parse::NotMine => return Head::NotMine,
                Parse::Partial if buf.len() >= MAX_HEAD => return Head::NotMine,
                Parse::Partial => {}
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
                return match parse_request(buf, fields) {
                    Parse::Complete(_, _, method, target) => Head::Stalled(method, target),
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

enum Parse {
    /// Head length, declared body length, method and target (the fields'
    /// places are in the [`FieldsAt`] given).
    Complete(usize, usize, Method, Target),
    Partial,
    NotMine,
}

/// Header fields that make a request hyper's: streamed bodies, upgrades,
/// interim answers and connection options. (`Content-Length` is looked at on
/// its own: see [`body_length`].)
fn not_mine(name: &[u8]) -> bool {
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

/// Parses the head at the start of `buf`, and records where its fields lie
/// in `at` (for the fields a head that is taken has: see [`FastHead`]).
fn parse_request(buf: &[u8], at: &mut FieldsAt) -> Parse {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::NotMine,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parse::NotMine;
    };
    let Some(query_at) = origin_form(path.as_bytes()) else { return Parse::NotMine };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parse::NotMine };
    // Offsets into the read buffer, which holds at most a head of about
    // MAX_HEAD, a small body and what was read with them: u32 is plenty.
    let start = buf.as_ptr() as usize;
    let place = |s: &[u8]| {
        let from = (s.as_ptr() as usize).wrapping_sub(start);
        [from as u32, (from + s.len()) as u32]
    };
    let [t0, t1] = place(path.as_bytes());
    let target = Target([t0, t0 + query_at as u32, t1]);
    at.clear();
    let mut body = None;
    for f in req.headers.iter() {
        let name = f.name.as_bytes();
        // What hyper's `HeaderName`/`HeaderValue` would refuse goes to hyper,
        // which answers it (httparse has checked the name's characters).
        if name.is_empty() || !head::valid_value(f.value) {
            return Parse::NotMine;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            // One plain length the fast path can hold; a second field, a list
            // or anything odd is hyper's to judge.
            match (body, body_length(f.value)) {
                (None, Some(n)) => body = Some(n),
                _ => return Parse::NotMine,
            }
        } else if not_mine(name) {
            return Parse::NotMine;
        }
        let ([n0, n1], [v0, v1]) = (place(name), place(f.value));
        at.push([n0, n1, v0, v1]);
    }
    Parse::Complete(len, body.unwrap_or(0), method, target)
}

/// An origin-form target (`/path?query`) the fast path reads in place: the
/// bytes `http::Uri` takes as they are, except a fragment (`#`, which `Uri`
/// cuts off) and bytes above ASCII (which `Uri` takes if they are UTF-8);
/// those, an absolute-form target and anything `Uri` refuses are hyper's.
/// Returns where the `?` is, or the length if there is none.
fn origin_form(target: &[u8]) -> Option<usize> {
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
fn body_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 6 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = value.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    (n <= MAX_BODY).then_some(n)
}

/// One request: decide, forward or refuse, answer. `false` when the
/// downstream connection must close.
async fn handle(
    fp: &FastPath,
    stream: &mut TcpStream,
    reused: &mut Reused<'_>,
    conn: ConnInfo,
    ip: &str,
    req: FastHead<'_>,
    body: &[u8],
) -> bool {
    let shared = &*fp.shared;
    let snap = shared.snapshot.load_full();
    let mut cx = RequestCtx::new(proxy::request_id(&req));
    let head_only = req.method == Method::HEAD;
    let plan = match proxy::decide(shared, &snap, conn, &mut cx, &req, !body.is_empty()).await {
        Ok(plan) => plan,
        Err(reject) => return refuse(shared, stream, reused, &mut cx, reject, head_only).await,
    };
    let Reused { out, ours, date, upstream_timer, .. } = reused;
    let fwd = plan.forwarding(&snap.config, conn, cx.request_id.clone());
    let path = fwd.path.unwrap_or(req.path);
    upstream::write_request_head(out, &req.method, path, req.query, &req, &fwd, ip);
    out.extend_from_slice(body);

    let idempotent = matches!(
        req.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    // Let the other connections with a request ready get this far first:
    // the upstream is then woken once for a burst of requests instead of once
    // per request, which on a shared core cuts context switches per call by a
    // third (BENCHMARKS.md). It costs one trip through the run queue, which
    // counts as the gateway's time, not the upstream's.
    tokio::task::yield_now().await;
    let start = Instant::now();
    let exchange = fp.pool.exchange(out, idempotent, head_only, upstream_timer.as_mut()).await;
    proxy::upstream_done(shared, &mut cx, start.elapsed(), exchange.as_ref().err().copied());
    let mut exchange = match exchange {
        Ok(x) => x,
        Err(e) => {
            let reject = forward::reject_for(
                e,
                fp.pool.timeout(),
                snap.config.server.max_body_bytes,
                snap.config.server.header_read_timeout,
            );
            return refuse(shared, stream, reused, &mut cx, reject, head_only).await;
        }
    };
    ours.clear();
    proxy::finish(shared, &cx, exchange.status(), ours);
    out.clear();
    exchange.write_response_head(out, ours, date);
    exchange.relay_body(stream, out).await
}

/// Answers a refusal (or an upstream failure) with the fields and body the
/// hyper path answers it with, rendered straight into the connection's
/// buffers: under a flood most calls end here.
async fn refuse(
    shared: &Shared,
    stream: &mut TcpStream,
    reused: &mut Reused<'_>,
    cx: &mut RequestCtx,
    reject: Reject,
    head_only: bool,
) -> bool {
    let Reused { out, ours, body, date, .. } = reused;
    cx.reject = Some(reject.code());
    let status = reject.status();
    ours.clear();
    reject.fields(ours);
    proxy::finish(shared, cx, status.as_u16(), ours);
    body.clear();
    reject.write_body(body);
    out.clear();
    write_status_line(out, status);
    out.extend_from_slice(ours.text());
    let mut n = itoa::Buffer::new();
    write_field(out, b"content-length", n.format(body.len()).as_bytes());
    write_field(out, b"date", date.now());
    if status == StatusCode::REQUEST_TIMEOUT {
        // The rest of that request never came: the connection is out of step.
        write_field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
    stream.write_all(out).await.is_ok()
}

/// The `Date` field's value, formatted once per second rather than per
/// answer.
#[derive(Default)]
struct Date {
    second: u64,
    text: String,
}

impl Date {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text.clear();
            // Writing into a String cannot fail.
            let _ = write!(self.text, "{}", httpdate::HttpDate::from(now));
        }
        self.text.as_bytes()
    }
}

fn write_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderMap, HeaderValue};
    use http::Uri;
    use rand::{Rng, SeedableRng};

    /// `parse_request` with a fresh list of field places.
    fn parse(buf: &[u8]) -> (Parse, FieldsAt) {
        let mut at = Vec::new();
        (parse_request(buf, &mut at), at)
    }

    const HEAD: &[u8] = b"GET /api/v2/tickets?page=2 HTTP/1.1\r\nHost: acme.freshdesk.com\r\nAuthorization: Basic eDp4\r\nAccept: application/json\r\n\r\n";

    #[test]
    fn a_plain_head_is_taken_and_anything_with_a_body_or_options_is_not() {
        match parse(HEAD) {
            (Parse::Complete(len, 0, method, target), at) => {
                assert_eq!(len, HEAD.len());
                let req = FastHead::new(method, target, HEAD, &at);
                assert_eq!((req.path(), req.query()), ("/api/v2/tickets", Some("page=2")));
                assert_eq!(req.all().count(), 3);
                assert_eq!(req.first(&head::names::HOST), Some(&b"acme.freshdesk.com"[..]));
                assert_eq!(req.first(&head::names::AUTHORIZATION), Some(&b"Basic eDp4"[..]));
            }
            _ => panic!("a plain GET is the fast path's"),
        }
        assert!(matches!(parse(&HEAD[..HEAD.len() - 1]).0, Parse::Partial));
        // A small body of plain declared length is taken, its length reported.
        let post = b"POST /api/v2/tickets HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}";
        assert!(matches!(parse(post).0, Parse::Complete(len, 2, ..) if len == post.len() - 2));
        let big = format!("PUT /api/v2/tickets/1 HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        for hyper_s in [
            big.as_bytes(),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\n{}",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\n{}",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n{}",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        ] {
            assert!(matches!(parse(hyper_s).0, Parse::NotMine), "{:?}", String::from_utf8_lossy(hyper_s));
        }
    }

    #[test]
    fn mangled_heads_never_panic_and_a_taken_head_is_within_the_input() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..20_000 {
            let mut bytes = HEAD.to_vec();
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(0..bytes.len());
                match rng.gen_range(0..3) {
                    0 => bytes[i] = rng.gen(),
                    1 => {
                        bytes.remove(i);
                    }
                    _ => bytes.insert(i, *b"\r\n: \t/?%\0".get(rng.gen_range(0..9)).unwrap_or(&b'x')),
                }
            }
            if let (Parse::Complete(len, body, method, target), at) = parse(&bytes) {
                assert!(len <= bytes.len());
                assert!(body <= MAX_BODY);
                let req = FastHead::new(method, target, &bytes[..len], &at);
                assert!(req.path().starts_with('/'));
                assert!(req.all().all(|(n, _)| !not_mine(n)));
                assert!(req.values(&head::names::CONTENT_LENGTH).count() <= 1);
                // Every field read in place is the field httparse finds there.
                let mut found = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut direct = httparse::Request::new(&mut found);
                assert!(direct.parse(&bytes).is_ok());
                let direct: Vec<(&[u8], &[u8])> = direct.headers.iter().map(|f| (f.name.as_bytes(), f.value)).collect();
                assert_eq!(req.all().collect::<Vec<_>>(), direct);
            }
        }
    }

    /// Lookups by name, in any case, with repeated fields: the fast path's
    /// head answers exactly as hyper's map does, so both judge a call alike.
    #[test]
    fn fields_read_in_place_answer_lookups_as_a_header_map_does() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let names: [&'static HeaderName; 8] = [
            &head::names::HOST,
            &head::names::ACCEPT,
            &head::names::AUTHORIZATION,
            &head::names::CONTENT_TYPE,
            &head::names::CONTENT_LENGTH,
            &forward::X_REQUEST_ID,
            &forward::X_FORWARDED_FOR,
            &forward::X_FORWARDED_PROTO,
        ];
        for _ in 0..2_000 {
            let mut text = "GET /api/v2/tickets HTTP/1.1\r\n".to_owned();
            // The map hyper would build of the same fields.
            let mut map = HeaderMap::new();
            for _ in 0..rng.gen_range(0..8) {
                let name = names[rng.gen_range(0..names.len())].as_str();
                // Any case, as clients send them.
                let name: String =
                    name.chars().map(|c| if rng.gen_bool(0.5) { c.to_ascii_uppercase() } else { c }).collect();
                let value = if name.eq_ignore_ascii_case("content-length") {
                    "0".to_owned()
                } else {
                    // (No spaces at the ends: those are not part of a value.)
                    format!("v{} {}y", rng.gen_range(0..3), "x".repeat(rng.gen_range(0..3)))
                };
                text.push_str(&format!("{name}: {value}\r\n"));
                map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(&value).unwrap());
            }
            text.push_str("\r\n");
            let (parsed, at) = parse(text.as_bytes());
            let Parse::Complete(len, _, method, target) = parsed else {
                // Two Content-Length fields: hyper's to judge.
                assert!(text.to_ascii_lowercase().matches("content-length").count() > 1, "{text}");
                continue;
            };
            let req = FastHead::new(method, target, &text.as_bytes()[..len], &at);
            for name in names {
                let from_map: Vec<&[u8]> = map.get_all(name).iter().map(HeaderValue::as_bytes).collect();
                assert_eq!(req.values(name).collect::<Vec<_>>(), from_map, "{text}");
                assert_eq!(req.has(name), map.contains_key(name));
            }
            // The request id the client sent is the one kept.
            if let Some(sent) = map.get(&forward::X_REQUEST_ID) {
                assert_eq!(proxy::request_id(&req).as_bytes(), sent.as_bytes());
            }
        }
    }

    #[test]
    fn a_target_read_in_place_is_what_http_uri_makes_of_it() {
        // Bytes from every class http's scanners know, and some they refuse.
        const ALPHABET: &[u8] = b"/?#azAZ09-._~%!$&'()*+,;=:@\"{}|^`[]<> \t\x7f\x00\x80\xc3\xa9";
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (mut taken, mut hypers) = (0, 0);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..24);
            let mut target = vec![b'/'];
            target.extend((0..len).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())]));
            let uri = Uri::try_from(target.as_slice());
            match origin_form(&target) {
                Some(query_at) => {
                    taken += 1;
                    let t = Target([0, query_at as u32, target.len() as u32]);
                    let req = FastHead::new(Method::GET, t, &target, &[]);
                    let uri = uri.unwrap_or_else(|e| panic!("{:?}: taken here, refused by Uri: {e}", target));
                    assert_eq!((req.path(), req.query()), (uri.path(), uri.query()), "{:?}", target);
                }
                None => {
                    hypers += 1;
                    // Left to hyper: refused by Uri too, or a fragment or a
                    // byte above ASCII, which Uri reads differently.
                    assert!(
                        uri.is_err() || target.iter().any(|&b| b == b'#' || b >= 0x80),
                        "{:?}: Uri takes it as it is, the fast path does not",
                        target
                    );
                }
            }
        }
        assert!(taken > 1_000 && hypers > 1_000, "taken {taken}, left to hyper {hypers}");
        // Absolute-form and asterisk-form targets are hyper's.
        for other in [&b"http://a/x"[..], b"*", b""] {
            assert_eq!(origin_form(other), None);
        }
    }
}
