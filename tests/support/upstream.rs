//! The in-process upstreams, all on one accept loop ([`accept_loop`]):
//! [`RecordingUpstream`] (hyper, records every request and answers 200
//! JSON), [`StrictUpstream`] (tells complete bodies from cut ones) and
//! [`FaultyUpstream`] (raw TCP that misbehaves on purpose).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Accepts connections on `listener` until the task is aborted, and serves
/// each with `serve` on a task of its own. Every in-process server of the
/// tests (upstreams, webhook receivers) runs on this one loop.
pub fn accept_loop<F, Fut>(listener: TcpListener, serve: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            // A failed accept (out of descriptors under a flood) is retried.
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(serve(stream));
        }
    })
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: usize,
    /// [`body_hash`] of the body as it arrived.
    pub body_hash: u64,
    /// When its head arrived (for tests of when calls were let through).
    pub at: std::time::Instant,
}

/// FNV-1a over `bytes`, continuing from `h` (start with [`BODY_HASH_START`]):
/// lets the upstream check a body byte for byte without keeping it.
pub fn body_hash(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}
pub const BODY_HASH_START: u64 = 0xcbf2_9ce4_8422_2325;

/// An upstream that answers 200 JSON, records every request and counts
/// connections. `?request_id=ID` answers with its own `X-Request-Id: ID`.
/// The API key `bad` ([`BAD_KEY`]) is answered 401, as the helpdesk
/// answers a key it does not know. Paths starting `/slow` wait 2 s before answering headers;
/// `/status/NNN` answers NNN with a `Location` and `Link`; responses carry
/// hop-by-hop headers so tests can see they are stripped.
#[derive(Clone)]
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
}

impl RecordingUpstream {
    pub async fn start() -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c) = (seen.clone(), connections.clone());
        accept_loop(listener, move |stream| {
            c.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            async move {
                let svc = service_fn(move |req| answer(s.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            }
        });
        RecordingUpstream { addr, seen, connections }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("upstream saw nothing")
    }
}

/// `Authorization` for the API key `bad` (`bad:X`), which
/// [`RecordingUpstream`] answers 401.
pub const BAD_KEY: &str = "Basic YmFkOlg=";

async fn answer(seen: Arc<Mutex<Vec<Seen>>>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    // Count the body as it streams, without keeping it.
    let mut body_len = 0;
    let mut hash = BODY_HASH_START;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_len += d.len();
                    hash = body_hash(hash, d);
                }
            }
            Err(_) => break,
        }
    }
    let path = parts.uri.path().to_owned();
    seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body_len,
        body_hash: hash,
        at,
    });
    if parts.headers.get("authorization").is_some_and(|v| v == BAD_KEY) {
        let mut rsp = Response::new(Full::new(Bytes::from_static(
            br#"{"code":"invalid_credentials","message":"You have to be logged in to perform this action."}"#,
        )));
        *rsp.status_mut() = StatusCode::UNAUTHORIZED;
        rsp.headers_mut().insert("content-type", "application/json".parse().unwrap());
        return Ok(rsp);
    }
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut rsp = Response::new(Full::new(Bytes::from(format!("{{\"path\":\"{path}\",\"received\":{body_len}}}"))));
    if let Some(code) = path.strip_prefix("/api/v2/status/") {
        *rsp.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(200)).unwrap_or(StatusCode::OK);
        rsp.headers_mut().insert("location", "/api/v2/tickets/99".parse().unwrap());
        rsp.headers_mut().insert("link", "<https://x/api/v2/tickets?page=2>; rel=\"next\"".parse().unwrap());
    }
    // `?request_id=ID`: the upstream answers with an `X-Request-Id` of its own.
    if let Some(id) = parts.uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("request_id="))) {
        rsp.headers_mut().insert("x-request-id", id.parse().unwrap());
    }
    rsp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    rsp.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
    rsp.headers_mut().insert("x-upstream-hop", "1".parse().unwrap());
    rsp.headers_mut().insert("connection", "x-upstream-hop".parse().unwrap());
    Ok(rsp)
}

// ---------------------------------------------------------------- misbehaving upstreams

/// How a [`FaultyUpstream`] treats each request.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Reads the request, then resets the connection (RST) without a byte.
    ResetBeforeHeaders,
    /// Sends headers announcing 100 000 bytes, 1 000 of them, then resets.
    ResetMidBody,
    /// Reads the request, then says nothing, holding the connection open.
    NoHeaders,
    /// Sends headers announcing 100 000 bytes, 1 000 of them, then nothing.
    StallBody,
    /// Sends these bytes as the "response", then closes.
    Garbage(&'static [u8]),
    /// Sends headers and an endless chunked body, as fast as it is read.
    Endless,
    /// Reads the request head, then neither reads another byte nor answers.
    StopReading,
}

/// A raw TCP upstream that misbehaves per [`Fault`]. Counts connections
/// accepted and still open, so tests can see the gateway let go of them.
pub struct FaultyUpstream {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    /// Requests whose head was fully read.
    pub requests: Arc<AtomicUsize>,
    /// Bytes of endless body written (for [`Fault::Endless`]).
    pub written: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FaultyUpstream {
    pub async fn start(fault: Fault) -> FaultyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let (a, o, r, w) = (accepted.clone(), open.clone(), requests.clone(), written.clone());
        let task = accept_loop(listener, move |stream| {
            a.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let guard = OpenGuard(o.clone());
            let (r, w) = (r.clone(), w.clone());
            async move {
                let _guard = guard;
                serve_fault(stream, fault, r, w).await;
            }
        });
        FaultyUpstream { addr, accepted, open, requests, written, task }
    }
}

/// Reads one request head (up to the blank line); false if the peer went away.
async fn read_head(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

fn reset(s: TcpStream) {
    // SO_LINGER 0 turns the close into an RST.
    let _ = s.set_zero_linger();
    drop(s);
}

async fn serve_fault(mut s: TcpStream, fault: Fault, requests: Arc<AtomicUsize>, written: Arc<AtomicU64>) {
    if !read_head(&mut s).await {
        return;
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let mut partial = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n".to_vec();
    partial.extend(std::iter::repeat_n(b'x', 1000));
    match fault {
        Fault::ResetBeforeHeaders => reset(s),
        Fault::ResetMidBody => {
            let _ = s.write_all(&partial).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            reset(s);
        }
        Fault::NoHeaders => hold(s).await,
        Fault::StopReading => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(s);
        }
        Fault::StallBody => {
            let _ = s.write_all(&partial).await;
            hold(s).await;
        }
        Fault::Garbage(bytes) => {
            let _ = s.write_all(bytes).await;
            let _ = s.shutdown().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Fault::Endless => {
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            let chunk = format!("{:x}\r\n{}\r\n", 16384, "y".repeat(16384));
            while s.write_all(chunk.as_bytes()).await.is_ok() {
                written.fetch_add(16384, Ordering::SeqCst);
            }
        }
    }
}

/// Keeps the connection open until the peer closes it (or 60 s).
async fn hold(mut s: TcpStream) {
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// An address nothing listens on (bound, then released).
pub async fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

// ---------------------------------------------------------------- an upstream that tells complete requests from cut ones

/// One request as a [`StrictUpstream`] received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    /// The body arrived whole (its framing ended cleanly); false if the
    /// connection was cut or the framing broke mid-body.
    pub complete: bool,
}

/// An HTTP/1.1 upstream that records each request with its whole body and
/// whether that body was complete, and answers 200 only to complete ones.
#[derive(Clone)]
pub struct StrictUpstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl StrictUpstream {
    pub async fn start() -> StrictUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        accept_loop(listener, move |stream| {
            let rec = rec.clone();
            async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let rec = rec.clone();
                    async move {
                        let (parts, mut body) = req.into_parts();
                        let mut bytes = Vec::new();
                        let mut complete = true;
                        while let Some(frame) = body.frame().await {
                            match frame {
                                Ok(f) => {
                                    if let Some(d) = f.data_ref() {
                                        bytes.extend_from_slice(d);
                                    }
                                }
                                Err(_) => {
                                    complete = false;
                                    break;
                                }
                            }
                        }
                        rec.lock().unwrap().push(Received {
                            method: parts.method.to_string(),
                            uri: parts.uri.to_string(),
                            headers: parts.headers,
                            body: bytes,
                            complete,
                        });
                        let rsp = http::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(b"{}")))
                            .expect("response");
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            }
        });
        StrictUpstream { addr, received }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Requests that arrived whole.
    pub fn complete(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.complete).collect()
    }
}

// ---------------------------------------------------------------- an upstream that answers hand-written bytes

/// An upstream that reads each request head and answers with the bytes
/// `script` returns for its path; `Close` after the answer closes the socket.
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub heads: Arc<Mutex<Vec<String>>>,
}

pub enum Answer {
    KeepOpen(Vec<u8>),
    Close(Vec<u8>),
    /// Never answers (and keeps the socket open).
    Hang,
    /// Writes the first bytes, then after the pause the second ones (bytes
    /// no request asked for, arriving once the answer looks complete), and
    /// keeps the socket open.
    Late(Vec<u8>, Duration, Vec<u8>),
}

impl ScriptedUpstream {
    pub async fn start(script: fn(&str) -> Answer) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (connections.clone(), heads.clone());
        accept_loop(listener, move |mut s| {
            c.fetch_add(1, Ordering::SeqCst);
            let h = h.clone();
            async move {
                {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = super::raw::read_head(&mut s, &mut buf).await else { return };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        // Skip a body of declared length (these tests never chunk one).
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                            })
                            .map_or(0, |v| v.parse::<usize>().unwrap());
                        while buf.len() < length {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..length);
                        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                        h.lock().unwrap().push(head);
                        match script(&path) {
                            Answer::KeepOpen(bytes) => {
                                if s.write_all(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            Answer::Close(bytes) => {
                                let _ = s.write_all(&bytes).await;
                                return;
                            }
                            Answer::Hang => {
                                tokio::time::sleep(Duration::from_secs(60)).await;
                                return;
                            }
                            Answer::Late(first, pause, late) => {
                                if s.write_all(&first).await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(pause).await;
                                if s.write_all(&late).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        });
        ScriptedUpstream { addr, connections, heads }
    }
}

/// A stand-in for the helpdesk's own per-account budget: it keeps its own
/// rolling count (`budget` calls per `window`, every call costs 1, whoever
/// makes it), answers with `X-RateLimit-Total`, `X-RateLimit-Remaining` and
/// `X-RateLimit-Used-CurrentRequest` as the helpdesk does, and once spent a
/// 429 with `Retry-After` (whole seconds, until its oldest call leaves).
/// It is also called directly ([`HelpdeskStandIn::call_directly`]), as the
/// account's other integrations do. A call that came through a gateway
/// carries `X-Forwarded-For`: those it answered 429 are counted apart.
#[derive(Clone)]
pub struct HelpdeskStandIn {
    pub addr: SocketAddr,
    state: Arc<Mutex<StandIn>>,
}

struct StandIn {
    budget: u32,
    window: Duration,
    /// When each counted call came.
    log: std::collections::VecDeque<std::time::Instant>,
    /// Calls through a gateway: answered 200, answered 429, and the `Host` each carried.
    forwarded_ok: u32,
    forwarded_429: u32,
    hosts: Vec<String>,
}

impl HelpdeskStandIn {
    pub async fn start(budget: u32, window: Duration) -> HelpdeskStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(StandIn {
            budget,
            window,
            log: Default::default(),
            forwarded_ok: 0,
            forwarded_429: 0,
            hosts: Vec::new(),
        }));
        let s = state.clone();
        accept_loop(listener, move |stream| {
            let s = s.clone();
            async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move { Ok::<_, Infallible>(s.lock().unwrap().answer(&req)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            }
        });
        HelpdeskStandIn { addr, state }
    }

    /// `n` calls made straight to the helpdesk, not through any gateway
    /// (over HTTP, like any other integration); their statuses.
    pub async fn call_directly(&self, n: u32) -> Vec<u16> {
        let c = super::client();
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(super::get(&c, self.addr, "direct.example", "/api/v2/tickets").await.status.as_u16());
        }
        out
    }

    /// Calls through a gateway that it answered (200, 429).
    pub fn forwarded(&self) -> (u32, u32) {
        let s = self.state.lock().unwrap();
        (s.forwarded_ok, s.forwarded_429)
    }

    /// The `Host` of every call that came through a gateway.
    pub fn forwarded_hosts(&self) -> Vec<String> {
        self.state.lock().unwrap().hosts.clone()
    }
}

impl StandIn {
    fn answer(&mut self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let now = std::time::Instant::now();
        while self.log.front().is_some_and(|&t| now.duration_since(t) >= self.window) {
            self.log.pop_front();
        }
        let through_gateway = req.headers().contains_key("x-forwarded-for");
        if through_gateway {
            self.hosts.push(req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or("").to_owned());
        }
        let used = self.log.len() as u32;
        let mut rsp = if used >= self.budget {
            if through_gateway {
                self.forwarded_429 += 1;
            }
            let oldest = *self.log.front().expect("a spent budget has calls");
            let wait = (oldest + self.window).saturating_duration_since(now);
            let retry = wait.as_millis().div_ceil(1000).max(1) as u64;
            let mut rsp = Response::new(Full::new(Bytes::from_static(
                br#"{"message":"You have exceeded the limit of requests per minute","from":"helpdesk"}"#,
            )));
            *rsp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            rsp.headers_mut().insert("retry-after", retry.into());
            rsp.headers_mut().insert("x-ratelimit-remaining", 0.into());
            rsp.headers_mut().insert("x-ratelimit-used-currentrequest", 0.into());
            rsp
        } else {
            if through_gateway {
                self.forwarded_ok += 1;
            }
            self.log.push_back(now);
            let mut rsp = Response::new(Full::new(Bytes::from_static(br#"[{"id":1,"from":"helpdesk"}]"#)));
            rsp.headers_mut().insert("x-ratelimit-remaining", (self.budget - used - 1).into());
            rsp.headers_mut().insert("x-ratelimit-used-currentrequest", 1.into());
            rsp
        };
        rsp.headers_mut().insert("x-ratelimit-total", self.budget.into());
        rsp.headers_mut().insert("content-type", "application/json".parse().unwrap());
        rsp
    }
}
