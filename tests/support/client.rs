//! One client and one reply type: [`call`]/[`get`] through a pooled hyper
//! client (HTTP/1.1, as an API client sends), [`send`] for one request on a
//! fresh connection, [`h2_get`] for h2 prior knowledge; each answers a
//! [`Reply`] read whole.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A response with its body read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub version: Version,
    pub body: Bytes,
}

impl Reply {
    /// The body as text (lossy: for assertions and messages).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
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
) -> Reply {
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
    Reply { status: parts.status, headers: parts.headers, version: parts.version, body }
}

/// A plain GET for the common case.
pub async fn get(c: &TestClient, addr: SocketAddr, host: &str, path: &str) -> Reply {
    call(c, addr, "GET", host, path, &[], b"").await
}

/// A client whose request body is any boxed body (for streaming uploads).
pub fn client_streaming() -> Client<HttpConnector, http_body_util::combinators::BoxBody<Bytes, std::io::Error>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// One GET over h2 prior knowledge, with `:authority` = `authority`.
pub async fn h2_get(addr: SocketAddr, authority: &str, path: &str) -> Reply {
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
    Reply { status: parts.status, headers: parts.headers, version: parts.version, body }
}

/// Sends one HTTP/1.1 request on a fresh connection to `addr`.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let rsp = tokio::time::timeout(Duration::from_secs(10), tx.send_request(req))
        .await
        .expect("response in time")
        .expect("response");
    read(rsp).await
}

/// Reads a response whole.
pub async fn read(rsp: Response<Incoming>) -> Reply {
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply { status: parts.status, headers: parts.headers, version: parts.version, body }
}

/// `GET path` on the admin listener.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Reply {
    let req = Request::get(path).header("host", addr.to_string()).body(Full::new(Bytes::new())).expect("request");
    send(addr, req).await
}
