//! The raw pool, the fast path's client: a stack of idle keep-alive
//! sockets, one request written per exchange, and the answer's head
//! re-written with the gateway's fields while its body is copied through
//! unchanged.

use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use http::StatusCode;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::chunked::Chunked;
use super::reported::Reported;
use super::{forwarding, UpstreamError};
use crate::fields::RawFields;
use crate::h1::{self, Date};

/// An upstream head larger than this is refused (502), as hyper's client would.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
pub const MAX_RESPONSE_HEADERS: usize = 100;

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Where the last response head's fields are in `buf`, from its one parse.
    fields: Vec<FieldAt>,
    idle_since: Instant,
}

/// A response field's name and value as ranges of the connection's buffer.
struct FieldAt {
    name: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
}

/// Idle connections to one plain-HTTP upstream, most recently used on top.
pub struct Pool {
    authority: String,
    connect_timeout: Duration,
    timeout: Duration,
    idle: Mutex<Vec<Conn>>,
    /// `[upstream] pool_idle_timeout_ms` and `pool_max_idle`.
    idle_timeout: Duration,
    max_idle: usize,
    /// Requests sent again on a fresh connection (`deskgate_upstream_resends_total`).
    resends: Counter,
}

impl Pool {
    pub fn new(
        authority: String,
        connect_timeout: Duration,
        timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Pool {
        let idle = Mutex::new(Vec::new());
        Pool { authority, connect_timeout, timeout, idle, idle_timeout, max_idle, resends: Counter::default() }
    }

    /// Counts requests sent again (see [`Pool::exchange`]), for the metrics.
    pub fn resends(&self) -> &Counter {
        &self.resends
    }

    /// The response-head timeout (and the longest pause inside a body).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn checkout(&self) -> Option<Conn> {
        loop {
            let conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if conn.idle_since.elapsed() >= self.idle_timeout {
                // Everything below is older still.
                self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
                return None;
            }
            // Anything readable on an idle socket is a close (or garbage): drop it.
            let mut probe = [0u8; 1];
            match conn.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(conn),
                _ => continue,
            }
        }
    }

    fn checkin(&self, mut conn: Conn) {
        conn.idle_since = Instant::now();
        conn.buf.clear();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    async fn connect(&self) -> Result<Conn, UpstreamError> {
        let connect = async {
            for addr in tokio::net::lookup_host(&self.authority).await.map_err(|_| UpstreamError::Connect)? {
                if let Ok(s) = TcpStream::connect(addr).await {
                    return Ok(s);
                }
            }
            Err(UpstreamError::Connect)
        };
        let stream =
            tokio::time::timeout(self.connect_timeout, connect).await.map_err(|_| UpstreamError::Connect)??;
        let _ = stream.set_nodelay(true);
        Ok(Conn { stream, buf: Vec::with_capacity(4096), fields: Vec::with_capacity(16), idle_since: Instant::now() })
    }

    /// Writes the request (head and any small body) and reads the response
    /// head, within the upstream timeout.
    ///
    /// A request is sent again, once, on a new connection only when the
    /// upstream provably never received it: writing it to a pooled socket
    /// failed (a socket found closed or readable at checkout is never
    /// used). A socket that takes the request and then closes without an
    /// answer may have run it: that is a 502, never a second execution
    /// charged once.
    pub async fn exchange(
        &self,
        request: &[u8],
        head_only: bool,
        mut timer: Pin<&mut Sleep>,
    ) -> Result<Exchange<'_>, UpstreamError> {
        // The caller's timer, reused call after call (see `fast::serve`).
        timer.as_mut().reset(Instant::now() + self.timeout);
        let attempt = async {
            for first in [true, false] {
                let (mut conn, reused) = match self.checkout() {
                    Some(c) => (c, true),
                    None => (self.connect().await?, false),
                };
                if conn.stream.write_all(request).await.is_err() {
                    if first && reused {
                        self.resends.inc();
                        continue;
                    }
                    return Err(UpstreamError::Protocol);
                }
                return match read_response_head(&mut conn, head_only).await {
                    Ok(head) => Ok((conn, head)),
                    Err(Broken) => Err(UpstreamError::Protocol),
                };
            }
            Err(UpstreamError::Protocol)
        };
        let (conn, head) = tokio::select! {
            biased;
            r = attempt => r?,
            () = timer => return Err(UpstreamError::Timeout),
        };
        Ok(Exchange { pool: self, conn: Some(conn), head })
    }
}

/// The upstream's answer cannot be relayed: 502.
struct Broken;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the upstream closes; the downstream connection closes after it.
    Close,
}

struct ResponseHead {
    status: StatusCode,
    /// Length of the head in `conn.buf` (body bytes may follow).
    len: usize,
    framing: Framing,
    /// The upstream keeps the connection open after this answer.
    reusable: bool,
    /// The answer's `Content-Length`, when it goes downstream (one number).
    relayed_length: Option<u64>,
    /// The answer carries its own `X-Request-Id`.
    request_id: bool,
    /// The helpdesk's own account numbers.
    reported: Reported,
}

async fn read_response_head(conn: &mut Conn, head_only: bool) -> Result<ResponseHead, Broken> {
    conn.buf.clear();
    loop {
        if !conn.buf.is_empty() {
            match parse_response(&conn.buf, head_only, &mut conn.fields)? {
                Some(head) if head.status.is_informational() => {
                    // 100 Continue and friends: not for us (we never send `Expect`).
                    conn.buf.drain(..head.len);
                    continue;
                }
                Some(head) => return Ok(head),
                None if conn.buf.len() >= MAX_RESPONSE_HEAD => return Err(Broken),
                None => {}
            }
        }
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(4096);
        }
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) | Err(_) => return Err(Broken),
            Ok(_) => {}
        }
    }
}

/// Parses a response head at the start of `buf`; when it is complete, `at`
/// says where its fields are, so the head is parsed only once.
fn parse_response(buf: &[u8], head_only: bool, at: &mut Vec<FieldAt>) -> Result<Option<ResponseHead>, Broken> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut rsp = httparse::Response::new(&mut fields);
    let len = match rsp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Broken),
    };
    let status = rsp.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(Broken)?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Broken);
    }
    let mut reusable = rsp.version == Some(1);
    // httparse's slices point into `buf`: their offsets are their ranges.
    let offset = |part: &[u8]| part.as_ptr() as usize - buf.as_ptr() as usize;
    at.clear();
    at.extend(rsp.headers.iter().map(|f| {
        let (name, value) = (offset(f.name.as_bytes()), offset(f.value));
        FieldAt { name: name..name + f.name.len(), value: value..value + f.value.len() }
    }));
    let read =
        forwarding::read_answer(status.as_u16(), head_only, rsp.headers.iter().map(|f| (f.name.as_bytes(), f.value)))
            .map_err(|_| Broken)?;
    reusable &= !read.close;
    let (body, relayed_length, request_id, reported) = (read.body, read.relayed_length, read.request_id, read.reported);
    let framing = match body {
        // Late bytes after an answer without a body (a buggy upstream's
        // body to a HEAD, a 204 or a 304) would reach the next call on this
        // socket, maybe another tenant's: such a socket is not reused.
        forwarding::AnswerBody::None => {
            reusable &= status.is_informational();
            Framing::Length(0)
        }
        forwarding::AnswerBody::Length(n) => Framing::Length(n),
        forwarding::AnswerBody::Chunked => Framing::Chunked,
        forwarding::AnswerBody::UntilClose => Framing::Close,
    };
    if matches!(framing, Framing::Close) {
        reusable = false;
    }
    Ok(Some(ResponseHead { status, len, framing, reusable, relayed_length, request_id, reported }))
}

/// One answered exchange: the head is parsed, the body not yet copied.
pub struct Exchange<'p> {
    pool: &'p Pool,
    /// `None` once the socket is closed or back in the pool.
    conn: Option<Conn>,
    head: ResponseHead,
}

impl Exchange<'_> {
    pub fn status(&self) -> u16 {
        self.head.status.as_u16()
    }

    /// Whether the answer carries its own `X-Request-Id`.
    pub fn has_request_id(&self) -> bool {
        self.head.request_id
    }

    /// What the helpdesk said about the account's budget.
    pub fn reported(&self) -> Reported {
        self.head.reported
    }

    /// The downstream head: the upstream's status and fields, minus
    /// hop-by-hop ones and the ones the gateway sets (`ours`, which follow).
    pub fn write_response_head(&self, out: &mut Vec<u8>, ours: &RawFields, date: &mut Date) {
        let Some(conn) = &self.conn else { return };
        let buf = &conn.buf;
        h1::write_status_line(out, self.head.status);
        let fields = conn.fields.iter().map(|f| (&buf[f.name.clone()], &buf[f.value.clone()]));
        // Fields named by `Connection` are hop-by-hop too. Looked up per
        // field rather than collected: most upstreams send `Connection:
        // keep-alive`, and a list would cost an allocation per answer. The
        // `Connection` fields are found once, not once per field.
        let mut connection = fields.clone().filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"));
        let options = connection.next().map(|(_, value)| value);
        let more_options = connection.next().is_some();
        // `keep-alive` and `close` name no field but hop-by-hop ones: an
        // upstream that sends only those (nearly all) makes the per-field
        // lookup below needless.
        let names_fields = more_options
            || options.is_some_and(|v| {
                v.split(|&b| b == b',').map(<[u8]>::trim_ascii).any(|o| {
                    !(o.is_empty() || o.eq_ignore_ascii_case(b"keep-alive") || o.eq_ignore_ascii_case(b"close"))
                })
            });
        let named = |name: &[u8]| {
            let listed = |value: &[u8]| forwarding::lists(value, name);
            match options {
                None => false,
                Some(value) if !more_options => listed(value),
                // Several `Connection` fields: rare, so read them all again.
                Some(_) => fields
                    .clone()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
                    .any(|(_, value)| listed(value)),
            }
        };
        // The first letters of our own fields' names: most of the upstream's
        // fields are told apart by that alone, without comparing names.
        let mut initials = [false; 256];
        for name in ours.names() {
            initials[usize::from(name.as_bytes()[0])] = true;
        }
        let mut dated = false;
        let mut relayed_length = self.head.relayed_length;
        for (name, value) in fields.clone() {
            let ours_too =
                name.first().is_some_and(|&c| initials[usize::from(c.to_ascii_lowercase())] && ours.has(name));
            // The upstream's chunked framing is relayed as it is, so its
            // `Transfer-Encoding` goes with it; every other hop-by-hop field stays.
            let relayed_framing =
                name.eq_ignore_ascii_case(b"transfer-encoding") && matches!(self.head.framing, Framing::Chunked);
            if ours_too || (forwarding::is_hop_by_hop(name) && !relayed_framing) || (names_fields && named(name)) {
                continue;
            }
            // With Transfer-Encoding the length is not the framing (RFC 9112
            // §6.3); passing both on would invite the downstream to disagree.
            if name.eq_ignore_ascii_case(b"content-length") {
                // One number, once, when it is relayed at all (`forwarding::relays_length`).
                if let Some(n) = relayed_length.take() {
                    h1::write_field(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
                }
                continue;
            }
            dated |= name.eq_ignore_ascii_case(b"date");
            h1::write_field(out, name, value);
        }
        out.extend_from_slice(ours.text());
        if !dated {
            h1::write_field(out, b"date", date.now());
        }
        if matches!(self.head.framing, Framing::Close) {
            h1::write_field(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Writes `out` (the head) and the body to the downstream, then returns
    /// the upstream socket to the pool if the answer ended cleanly. `false`
    /// when the downstream connection must close.
    pub async fn relay_body(&mut self, down: &mut TcpStream, out: &mut Vec<u8>) -> bool {
        let Some(mut conn) = self.conn.take() else { return false };
        let framing = self.head.framing;
        let mut chunked = Chunked::default();
        // What is left of the body, for a length-delimited one.
        let mut left = match framing {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        let mut start = self.head.len;
        loop {
            // The body bytes already read, up to the end of this answer.
            let avail = &conn.buf[start..];
            let mut copy = usize::MAX;
            let (take, done) = match framing {
                Framing::Length(_) => {
                    let take = avail.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    left -= take as u64;
                    (take, left == 0)
                }
                Framing::Chunked => {
                    let in_trailer = chunked.in_trailer();
                    match chunked.feed(avail) {
                        Ok(n) => {
                            // Trailer fields are not relayed (hyper's server
                            // sends none either): a `Content-Length` or a
                            // `Transfer-Encoding` there could reframe the
                            // answer for a downstream that honours it. The
                            // body ends with the last chunk and an empty
                            // trailer section.
                            copy = if in_trailer { 0 } else { chunked.trailer_at().unwrap_or(n) };
                            (n, chunked.done())
                        }
                        Err(_) => {
                            // Broken framing: what was sent cannot be completed.
                            let _ = down.write_all(out).await;
                            return false;
                        }
                    }
                }
                Framing::Close => (avail.len(), false),
            };
            out.extend_from_slice(&avail[..copy.min(take)]);
            if done && matches!(framing, Framing::Chunked) {
                out.extend_from_slice(b"\r\n");
            }
            let extra = avail.len() > take;
            if done {
                if down.write_all(out).await.is_err() {
                    return false;
                }
                // Bytes past the end of the answer: the socket is out of step.
                if self.head.reusable && !extra {
                    self.pool.checkin(conn);
                }
                return true;
            }
            if !out.is_empty() && down.write_all(out).await.is_err() {
                return false;
            }
            out.clear();
            conn.buf.clear();
            start = 0;
            if conn.buf.capacity() < 8192 {
                conn.buf.reserve(8192);
            }
            // The upstream may pause, but not for longer than its timeout.
            match tokio::time::timeout(self.pool.timeout, conn.stream.read_buf(&mut conn.buf)).await {
                Ok(Ok(0)) if matches!(framing, Framing::Close) => return false,
                Ok(Ok(n)) if n > 0 => {}
                // Cut short (EOF, error, stall): end the downstream stream short too.
                _ => return false,
            }
        }
    }
}
