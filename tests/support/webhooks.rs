//! Webhook test support: a real receiving HTTP server that records every
//! delivery, JSON helpers for the webhook listener, a budget check over
//! timestamps.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

pub use crate::support::metrics::sample;
pub use crate::support::redis::RedisServer;
use crate::support::upstream::accept_loop;
use crate::support::{client, Reply, TestClient};

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub at: Instant,
    pub wall: SystemTime,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
    /// `X-Deskgate-Webhook-Id`.
    pub id: String,
}

/// A receiving server: answers `status` (200 by default) after `hold_ms`,
/// records every request, and notes whether two deliveries of one id were
/// ever in progress at once.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub hits: Arc<Mutex<Vec<Hit>>>,
    pub status: Arc<AtomicU16>,
    pub hold_ms: Arc<AtomicU64>,
    in_progress: Arc<Mutex<HashMap<String, usize>>>,
    pub overlaps: Arc<AtomicUsize>,
}

struct InProgress {
    map: Arc<Mutex<HashMap<String, usize>>>,
    id: String,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        if let Some(n) = self.map.lock().unwrap().get_mut(&self.id) {
            *n -= 1;
        }
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            hold_ms: Arc::new(AtomicU64::new(0)),
            in_progress: Arc::default(),
            overlaps: Arc::default(),
        };
        let rr = r.clone();
        accept_loop(listener, move |stream| {
            let rr = rr.clone();
            async move {
                let svc = service_fn(move |req| rr.clone().answer(req));
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            }
        });
        r
    }

    async fn answer(self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let id = parts.headers.get("x-deskgate-webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let _guard = {
            let mut m = self.in_progress.lock().unwrap();
            let n = m.entry(id.clone()).or_insert(0);
            *n += 1;
            if *n > 1 && !id.is_empty() {
                self.overlaps.fetch_add(1, Ordering::SeqCst);
            }
            InProgress { map: self.in_progress.clone(), id: id.clone() }
        };
        self.hits.lock().unwrap().push(Hit {
            at: Instant::now(),
            wall: SystemTime::now(),
            method: parts.method,
            path: parts.uri.path().to_owned(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            id,
        });
        let hold = self.hold_ms.load(Ordering::SeqCst);
        if hold > 0 {
            tokio::time::sleep(Duration::from_millis(hold)).await;
        }
        let mut rsp = Response::new(Full::new(Bytes::from_static(b"ok")));
        *rsp.status_mut() = StatusCode::from_u16(self.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
        Ok(rsp)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Hits per webhook id.
    pub fn by_id(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for h in self.hits.lock().unwrap().iter() {
            *m.entry(h.id.clone()).or_insert(0) += 1;
        }
        m
    }

    /// Waits until `pred` holds for the hits, or `within` passes.
    pub async fn wait_until(&self, within: Duration, pred: impl Fn(&[Hit]) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if pred(&self.hits.lock().unwrap()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_for(&self, n: usize, within: Duration) -> bool {
        self.wait_until(within, |h| h.len() >= n).await
    }
}

/// Sends `method path` with a JSON body (or none) to `addr`.
pub async fn json_call(
    c: &TestClient,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Reply {
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap();
    crate::support::client::read(c.request(req).await.unwrap()).await
}

/// `POST /webhooks`.
pub async fn post_webhook(addr: SocketAddr, v: serde_json::Value) -> Reply {
    json_call(&client(), addr, "POST", "/webhooks", Some(&v)).await
}

/// `GET /webhooks/{id}` as JSON.
pub async fn webhook_status(addr: SocketAddr, id: &str) -> serde_json::Value {
    let got = json_call(&client(), addr, "GET", &format!("/webhooks/{id}"), None).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    got.json()
}

/// Waits until `GET /webhooks/{id}` says `status`, or `within` passes.
pub async fn wait_status(addr: SocketAddr, id: &str, status: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let v = webhook_status(addr, id).await;
        if v["status"] == status || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `GET /webhooks/{id}` says delivered or dropped, or `within` passes.
pub async fn wait_final(addr: SocketAddr, id: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let v = webhook_status(addr, id).await;
        if v["status"] == "delivered" || v["status"] == "dropped" || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Prometheus text of an admin listener.
pub async fn metrics(admin: SocketAddr) -> String {
    crate::support::metrics::metrics_text(admin).await
}

/// The largest number of `times` in any interval of length `span` (closed
/// at the start, open at the end).
pub fn max_in_any_interval(times: &[Instant], span: Duration) -> usize {
    let mut t: Vec<Instant> = times.to_vec();
    t.sort();
    let mut best = 0;
    let mut j = 0;
    for i in 0..t.len() {
        while j < t.len() && t[j] < t[i] + span {
            j += 1;
        }
        best = best.max(j - i);
    }
    best
}

/// Parses an RFC 3339 time as the gateway writes it.
pub fn parse_time(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("bad time {s:?}: {e}"))
}
