//! Fault-injection helpers for the abuse, fault and isolation tests: raw
//! HTTP/1.1 exchanges, upstreams that misbehave on purpose, a TCP proxy that
//! delays or blackholes (a slow or paused store), and resource probes (open
//! file descriptors, RSS, live tokio tasks) to prove nothing leaks.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------- resource probes

/// Tests in one binary share the process: file descriptors and RSS are
/// process-wide. Tests that compare them with a baseline hold this for their
/// whole run, so they do not see each other's sockets.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs resource-measuring tests one at a time (see [`SERIAL`]).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Open file descriptors of this process (the gateway under test runs in it).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Resident set size of this process, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Tasks alive in the current tokio runtime (gateway connections, pooled
/// upstream connections, test tasks).
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// Polls `f` every 50 ms until it holds or `limit` passes; true if it held.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A snapshot of what the process holds, to compare before and after abuse.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    pub fds: usize,
    pub tasks: usize,
    pub rss_kib: u64,
}

impl Baseline {
    pub fn now() -> Baseline {
        Baseline { fds: open_fds(), tasks: alive_tasks(), rss_kib: rss_kib() }
    }

    /// Waits (bounded) until fds and tasks are back to at most `self` + `slack`;
    /// panics with both snapshots otherwise.
    pub async fn assert_returned(&self, what: &str, slack: usize, limit: Duration) {
        let ok = eventually(limit, || open_fds() <= self.fds + slack && alive_tasks() <= self.tasks + slack).await;
        assert!(ok, "{what}: resources did not return to baseline: before {self:?}, after {:?}", Baseline::now());
    }
}

// ---------------------------------------------------------------- raw HTTP/1.1

/// What came back on one raw connection.
#[derive(Debug)]
pub struct RawReply {
    pub text: String,
    /// The peer closed the connection (EOF or reset) before `wait` passed.
    pub closed: bool,
    pub elapsed: Duration,
}

impl RawReply {
    /// Status codes of every response in the reply, in order.
    pub fn statuses(&self) -> Vec<u16> {
        self.text
            .match_indices("HTTP/1.")
            .filter_map(|(i, _)| self.text.get(i + 9..i + 12))
            .filter_map(|s| s.parse().ok())
            .collect()
    }

    /// The first status, or 0 if no response came.
    pub fn status(&self) -> u16 {
        self.statuses().first().copied().unwrap_or(0)
    }
}

/// Writes `bytes` on a fresh connection, half-closes nothing, and reads until
/// the peer closes or `wait` passes.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> RawReply {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let closed = read_until_close(&mut s, &mut out, wait).await;
    RawReply { text: String::from_utf8_lossy(&out).into_owned(), closed, elapsed: start.elapsed() }
}

/// Reads into `out` until EOF/reset (true) or `wait` (false).
pub async fn read_until_close(s: &mut TcpStream, out: &mut Vec<u8>, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A minimal valid API request head for `host` (Basic auth, JSON), without
/// the final blank line, so callers can append headers.
pub fn head(method: &str, host: &str, path: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic YXBpa2V5Olg=\r\nAccept: application/json\r\n"
    )
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
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(o.clone());
                let (r, w) = (r.clone(), w.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    serve_fault(stream, fault, r, w).await;
                });
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

// ---------------------------------------------------------------- a proxy that slows or stops a store

/// A TCP proxy in front of a store. Every chunk from the gateway to the
/// store waits `delay_ms`; with `blackhole` set, bytes in both directions are
/// held back (a store that stopped answering without closing anything).
#[derive(Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub delay_ms: Arc<AtomicU64>,
    pub blackhole: Arc<AtomicBool>,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let delay_ms = Arc::new(AtomicU64::new(0));
        let blackhole = Arc::new(AtomicBool::new(false));
        let (d, b) = (delay_ms.clone(), blackhole.clone());
        tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else { continue };
                let Ok(up) = TcpStream::connect(target).await else { continue };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pipe(dr, uw, d.clone(), b.clone()));
                tokio::spawn(pipe(ur, dw, Arc::new(AtomicU64::new(0)), b.clone()));
            }
        });
        FaultProxy { addr, delay_ms, blackhole }
    }

    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
    blackhole: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let d = delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        while blackhole.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------- latency summaries

/// Sorted latencies with percentiles.
#[derive(Debug)]
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    pub fn new(mut v: Vec<Duration>) -> Latencies {
        v.sort();
        Latencies(v)
    }

    pub fn pct(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i.min(self.0.len() - 1)]
    }

    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }
}

impl std::fmt::Display for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "n={} p50={:?} p99={:?} max={:?}", self.0.len(), self.pct(0.5), self.pct(0.99), self.max())
    }
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
    pub received: Arc<std::sync::Mutex<Vec<Received>>>,
}

impl StrictUpstream {
    pub async fn start() -> StrictUpstream {
        use http_body_util::BodyExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let rec = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let rec = rec.clone();
                tokio::spawn(async move {
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
                                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
                                .expect("response");
                            Ok::<_, std::convert::Infallible>(rsp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
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
