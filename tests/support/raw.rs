//! One raw HTTP/1 exchange: bytes in, the raw reply out, with its statuses
//! parsed. For what a well-behaved client cannot send (smuggling shapes,
//! slow or cut requests, bare LF, pipelining).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Sends raw bytes on a fresh TCP connection and returns what came back
/// until the peer closed or `wait` passed.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    exchange(addr, bytes, wait).await.text
}

// ---------------------------------------------------------------- one answer at a time on a kept-alive connection

/// Reads into `buf` until it holds a whole head; the head's length, or
/// `None` if the peer closed first.
pub async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `req` on `s` and reads one answer: head, then a body framed by
/// content-length, chunked or close.
pub async fn exchange_on(s: &mut TcpStream, req: &str) -> (String, Vec<u8>) {
    s.write_all(req.as_bytes()).await.unwrap();
    read_answer(s, req.starts_with("HEAD")).await
}

pub async fn read_more(s: &mut TcpStream, body: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.unwrap().unwrap();
    body.extend_from_slice(&chunk[..n]);
    n
}

pub async fn read_answer(s: &mut TcpStream, head_only: bool) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), read_head(s, &mut buf)).await.unwrap().expect("an answer");
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let mut body = buf[end..].to_vec();
    let length =
        head.lines().find_map(|l| l.strip_prefix("content-length: ")).map(|v| v.trim().parse::<usize>().unwrap());
    if head_only || head.starts_with("http/1.1 204") {
        return (head, body);
    }
    if head.contains("transfer-encoding: chunked") {
        while !body.ends_with(b"\r\n\r\n") || !body.windows(3).any(|w| w == b"0\r\n") {
            if read_more(s, &mut body).await == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        while body.len() < n {
            if read_more(s, &mut body).await == 0 {
                break;
            }
        }
    } else {
        while read_more(s, &mut body).await > 0 {}
    }
    (head, body)
}
