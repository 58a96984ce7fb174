//! Fault-injection helpers for the abuse, fault and isolation tests: a TCP
//! proxy that delays or blackholes (a slow or paused store), resource probes
//! (open file descriptors, RSS, live tokio tasks) to prove nothing leaks,
//! and latency summaries.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::client::{client, get, Reply};
use super::eventually;
use super::upstream::accept_loop;

// ---------------------------------------------------------------- load

/// `workers` clients calling `GET path` on `host` in a loop until
/// [`CallLoop::finish`]; `record` makes each answer (with when its call was
/// sent) into what the test keeps.
pub struct CallLoop<T> {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<T>>>,
}

impl<T: Send + 'static> CallLoop<T> {
    pub fn start(
        addr: SocketAddr,
        workers: usize,
        host: &'static str,
        path: &'static str,
        record: fn(&Reply, std::time::Instant) -> T,
    ) -> CallLoop<T> {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, c) = (stop.clone(), client());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = std::time::Instant::now();
                        out.push(record(&get(&c, addr, host, path).await, sent));
                    }
                    out
                })
            })
            .collect();
        CallLoop { stop, tasks }
    }

    /// Stops the clients; every call's record, worker by worker.
    pub async fn finish(self) -> Vec<T> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("load worker panicked"));
        }
        all
    }
}

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
        let ok = eventually(limit, || {
            std::future::ready(open_fds() <= self.fds + slack && alive_tasks() <= self.tasks + slack)
        })
        .await;
        assert!(ok, "{what}: resources did not return to baseline: before {self:?}, after {:?}", Baseline::now());
    }
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
        accept_loop(listener, move |down| {
            let (d, b) = (d.clone(), b.clone());
            async move {
                let Ok(up) = TcpStream::connect(target).await else { return };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pipe(dr, uw, d, b.clone()));
                tokio::spawn(pipe(ur, dw, Arc::new(AtomicU64::new(0)), b));
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
