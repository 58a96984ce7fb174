//! Test support: an in-process upstream that records what reached it, a
//! gateway started from TOML on `127.0.0.1:0`, and a plain HTTP client.
#![allow(dead_code)]

pub mod redis;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use deskgate::app::Gateway;
use deskgate::config::Config;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: usize,
    /// [`body_hash`] of the body as it arrived.
    pub body_hash: u64,
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
/// connections. Paths starting `/slow` wait 2 s before answering headers;
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
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(s.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
                });
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

async fn answer(seen: Arc<Mutex<Vec<Seen>>>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
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
    });
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut rsp = Response::new(Full::new(Bytes::from(format!("{{\"path\":\"{path}\",\"received\":{body_len}}}"))));
    if let Some(code) = path.strip_prefix("/api/v2/status/") {
        *rsp.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(200)).unwrap_or(StatusCode::OK);
        rsp.headers_mut().insert("location", "/api/v2/tickets/99".parse().unwrap());
        rsp.headers_mut().insert("link", "<https://x/api/v2/tickets?page=2>; rel=\"next\"".parse().unwrap());
    }
    rsp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    rsp.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
    rsp.headers_mut().insert("x-upstream-hop", "1".parse().unwrap());
    rsp.headers_mut().insert("connection", "x-upstream-hop".parse().unwrap());
    Ok(rsp)
}

/// A gateway under test with its config directory.
pub struct TestGateway {
    pub gw: Gateway,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// The standard test tenants: `acme` (pro, vanity host), `tiny` (budget 5,
/// ticket_list 3), `seedling` (sprout: no API access).
pub const TENANTS: &str = r#"
[[tenant]]
name = "acme"
domain = "acme.freshdesk.com"
plan = "pro"
vanity_hosts = ["support.acme.com"]

[[tenant]]
name = "tiny"
domain = "tiny.freshdesk.com"
plan = "growth"
per_minute = 5
endpoints = { ticket_list = 3, ticket_create = 5, ticket_update = 5, contact_list = 5 }

[[tenant]]
name = "seedling"
domain = "seedling.freshdesk.com"
plan = "sprout"
"#;

/// Starts a gateway in front of `upstream` with `extra` TOML appended to the
/// top-level sections (`[server]`… keys go in `server_extra`).
pub async fn gateway(upstream: SocketAddr, server_extra: &str, rest: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deskgate.toml");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\nurl = \"http://{upstream}\"\ntimeout_ms = 1000\nconnect_timeout_ms = 500\n{rest}\n"
    );
    std::fs::write(&path, toml).unwrap();
    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start(cfg).await.unwrap();
    TestGateway { addr: gw.api_addr, admin: gw.admin_addr, gw, dir }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A response with its body read whole.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Sends one request to `addr` with `Host: host`, Basic auth and the extra headers.
pub async fn call(
    c: &TestClient,
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> Got {
    let mut b = Request::builder().method(method).uri(format!("http://{addr}{path}")).header("host", host);
    let mut has_auth = false;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("authorization") {
            has_auth = true;
        }
        b = b.header(*k, *v);
    }
    if !has_auth {
        b = b.header("authorization", "Basic YXBpa2V5Olg=");
    }
    let rsp = c.request(b.body(Full::new(Bytes::from_static(body))).unwrap()).await.unwrap();
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got { status: parts.status, headers: parts.headers, body }
}

/// A plain GET for the common case.
pub async fn get(c: &TestClient, addr: SocketAddr, host: &str, path: &str) -> Got {
    call(c, addr, "GET", host, path, &[], b"").await
}

/// Sends raw bytes on a fresh TCP connection and returns what came back
/// until the peer closed or `wait` passed.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A client whose request body is any boxed body (for streaming uploads).
pub fn client_streaming() -> Client<HttpConnector, http_body_util::combinators::BoxBody<Bytes, std::io::Error>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// One GET over h2 prior knowledge, with `:authority` = `authority`.
pub async fn h2_get(addr: SocketAddr, authority: &str, path: &str) -> Got {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{authority}{path}"))
        .header("authorization", "Bearer t")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let rsp = send.send_request(req).await.unwrap();
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got { status: parts.status, headers: parts.headers, body }
}
