//! Graceful shutdown of the binary (docs/reference.md "Configuration" `shutdown_grace_ms`, "Operations" signals):
//! SIGTERM/SIGINT stop accepting, in-flight calls (a slow upload among them)
//! finish, the process exits 0 within the grace.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::ops::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const UPLOAD: usize = 200_000;

/// Sends a POST whose body trickles in over ~`chunks` × 100 ms; returns the
/// raw response. `started` fires after the head and the first chunk are out.
async fn slow_upload(api: SocketAddr, chunks: usize, started: tokio::sync::oneshot::Sender<()>) -> String {
    let mut s = TcpStream::connect(api).await.expect("connect");
    let head = format!(
        "POST /api/v2/tickets HTTP/1.1\r\nHost: acme.freshdesk.com\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {UPLOAD}\r\n\r\n",
        basic_auth()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let body = vec![b'a'; UPLOAD];
    let mut parts = body.chunks(UPLOAD.div_ceil(chunks));
    s.write_all(parts.next().expect("a chunk")).await.expect("first chunk");
    let _ = started.send(());
    for part in parts {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(part).await.expect("chunk");
    }
    // No `Connection: close`: the gateway closes the connection itself once
    // the answer is out, because it is shutting down.
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "the drained connection was never closed");
    String::from_utf8_lossy(&out).into_owned()
}

async fn refuses_connections(api: SocketAddr) -> bool {
    TcpStream::connect(api).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_lets_a_slow_upload_and_a_slow_answer_finish_then_exits_0() {
    let upstream = start_upstream().await;
    let dir = ConfigDir::new();
    let path = dir.write("deskgate.toml", &config_toml(&format!("http://{upstream}"), "", "", ""));
    let mut gw = run_binary(&path, &[]);
    let api = gw.api;

    let (started, upload_started) = tokio::sync::oneshot::channel();
    let upload = tokio::spawn(slow_upload(api, 15, started));
    let slow_answer = tokio::spawn(async move {
        send(api, get("acme.freshdesk.com", "/api/v2/contacts?delay_ms=1200", Some(&basic_auth()))).await
    });
    upload_started.await.expect("upload started");
    tokio::time::sleep(Duration::from_millis(200)).await;

    gw.signal("TERM");
    let term_at = Instant::now();
    assert!(eventually(Duration::from_secs(2), || refuses_connections(api)).await, "still accepting after SIGTERM");

    let raw = upload.await.expect("upload task");
    assert!(raw.starts_with("HTTP/1.1 200"), "upload answer: {raw}\n{}", gw.log());
    assert!(raw.contains(&format!(r#""bytes":{UPLOAD}"#)), "upstream got a partial body: {raw}");
    let answer = slow_answer.await.expect("slow answer task");
    assert_eq!(answer.status, http::StatusCode::OK, "{}", answer.text());

    gw.assert_exits_cleanly(Duration::from_secs(6));
    assert!(term_at.elapsed() < Duration::from_secs(5), "slower than the grace");
    assert!(gw.log().contains("shutting down"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_slower_than_the_grace_does_not_hold_the_exit() {
    let upstream = start_upstream().await;
    let dir = ConfigDir::new();
    let path = dir.write(
        "deskgate.toml",
        &config_toml(&format!("http://{upstream}"), "", "", "")
            .replace("shutdown_grace_ms = 5000", "shutdown_grace_ms = 300"),
    );
    let mut gw = run_binary(&path, &[]);
    let api = gw.api;
    let stuck = tokio::spawn(async move {
        let s = TcpStream::connect(api).await.expect("connect");
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await.expect("handshake");
        tokio::spawn(conn);
        tx.send_request(get("acme.freshdesk.com", "/api/v2/contacts?delay_ms=5000", Some(&basic_auth()))).await.is_ok()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("TERM");
    let term_at = Instant::now();
    gw.assert_exits_cleanly(Duration::from_secs(4));
    let took = term_at.elapsed();
    assert!(took < Duration::from_millis(2500), "exit took {took:?}");
    assert!(gw.log().contains("shutdown grace over"), "{}", gw.log());
    // The cut call got no answer rather than a wrong one.
    assert!(!stuck.await.expect("task"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_shuts_down_like_sigterm() {
    let dir = ConfigDir::new();
    let path = dir.write("deskgate.toml", &config_toml("http://127.0.0.1:9", "", "", ""));
    let mut gw = run_binary(&path, &[]);
    // Before its handler is installed, SIGINT would end the process the
    // default way (a signal exit, not a clean one): wait until it serves.
    assert!(gw.wait_line(Duration::from_secs(10), |l| l.contains("deskgate listening")).is_some(), "{}", gw.log());
    gw.signal("INT");
    gw.assert_exits_cleanly(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_keep_alive_connections_do_not_hold_the_exit() {
    // On the fast path, and with it off (the connection then waits in hyper's hands).
    for fast in [true, false] {
        silent_and_idle_connections_at_shutdown(fast).await;
    }
}

async fn silent_and_idle_connections_at_shutdown(fast: bool) {
    let upstream = start_upstream().await;
    let dir = ConfigDir::new();
    // The grace (5 s) and the head timeout (10 s) are both far longer than the exit may take.
    let path = dir.write(
        "deskgate.toml",
        &config_toml(
            &format!("http://{upstream}"),
            "",
            &format!("header_read_timeout_ms = 10000\nfast_path = {fast}"),
            "",
        ),
    );
    let mut gw = run_binary(&path, &[]);
    // One connection that never speaks, one that made a call and stays open.
    let _silent = TcpStream::connect(gw.api).await.expect("connect");
    let mut idle = TcpStream::connect(gw.api).await.expect("connect");
    idle.write_all(
        b"GET /api/v2/contacts HTTP/1.1\r\nHost: acme.freshdesk.com\r\nAuthorization: Basic YXBpa2V5Olg=\r\n\r\n",
    )
    .await
    .expect("write");
    let mut answer = [0u8; 12];
    idle.read_exact(&mut answer).await.expect("an answer");
    assert_eq!(&answer, b"HTTP/1.1 200");
    gw.signal("TERM");
    let term_at = Instant::now();
    gw.assert_exits_cleanly(Duration::from_secs(4));
    let took = term_at.elapsed();
    assert!(took < Duration::from_millis(2000), "fast path {fast}: exit took {took:?}");
    assert!(!gw.log().contains("shutdown grace over"), "{}", gw.log());
}
