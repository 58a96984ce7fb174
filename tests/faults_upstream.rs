//! A betraying upstream: refused connections, resets before and
//! after the headers, headers that never come, a body that stalls, malformed
//! responses. Each gives the documented status (502/504) or a cleanly closed
//! stream, in bounded time, and leaves no task, socket or upstream
//! connection behind. (`support::gateway` sets `timeout_ms = 1000`,
//! `connect_timeout_ms = 500`.)

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::faults::*;
use support::*;

const HOST: &str = "acme.freshdesk.com";
const TIMEOUT: Duration = Duration::from_millis(1000);
/// Generous: the documented timeout plus two seconds.
const BOUND: Duration = Duration::from_millis(3000);

fn request() -> Vec<u8> {
    format!("{}Connection: close\r\n\r\n", head("GET", HOST, "/api/v2/tickets")).into_bytes()
}

/// Sends one call and returns the raw reply, asserting it came in bounded time.
async fn one_call(gw: &TestGateway, what: &str) -> RawReply {
    let reply = exchange(gw.addr, &request(), BOUND + Duration::from_secs(2)).await;
    assert!(reply.closed, "{what}: the connection was still open after {:?}: {}", reply.elapsed, reply.text);
    reply
}

/// One call first (lazy one-time resources: resolver, pools), then the baseline.
async fn warm_baseline(gw: &TestGateway) -> Baseline {
    let _ = exchange(gw.addr, &request(), BOUND + Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    Baseline::now()
}

fn assert_json_error(reply: &RawReply, status: u16, code: &str, what: &str) {
    assert_eq!(reply.status(), status, "{what}: {}", reply.text);
    assert!(reply.text.contains(&format!("\"code\":\"{code}\"")), "{what}: {}", reply.text);
    assert!(reply.text.contains("x-ratelimit-remaining"), "{what}: budget headers missing: {}", reply.text);
}

// Every test runs on the fast path and on hyper: `fast::NAME`, `hyper::NAME`.
support::on_both_paths! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_connection_is_502_at_once() {
        let _serial = serial().await;
        let gw = gateway_on(PATH, refused_addr().await, "", TENANTS).await;
        let base = warm_baseline(&gw).await;
        let reply = one_call(&gw, "refused").await;
        assert_json_error(&reply, 502, "bad_gateway", "refused");
        assert!(reply.elapsed < Duration::from_millis(500) + Duration::from_secs(2), "{:?}", reply.elapsed);
        // Both calls (the warm-up and this one) were admitted and counted as
        // 502s; the helpdesk never received them, so neither stays charged.
        assert_refusal_counted(&gw, None, "acme", "ticket_list", 502, "bad_gateway", 2).await;
        assert_eq!(used(gw.admin, "acme").await, 0);
        base.assert_returned("refused", 2, Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reset_before_the_headers_is_502() {
        let _serial = serial().await;
        let up = FaultyUpstream::start(Fault::ResetBeforeHeaders).await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let base = warm_baseline(&gw).await;
        for _ in 0..5 {
            let reply = one_call(&gw, "reset before headers").await;
            assert_json_error(&reply, 502, "bad_gateway", "reset before headers");
        }
        assert_eq!(up.requests.load(Ordering::SeqCst), 6, "each call reached the upstream once");
        assert_refusal_counted(&gw, None, "acme", "ticket_list", 502, "bad_gateway", 6).await;
        assert_eq!(used(gw.admin, "acme").await, 6);
        assert!(eventually(Duration::from_secs(2), || std::future::ready(up.open.load(Ordering::SeqCst) == 0)).await);
        base.assert_returned("reset before headers", 2, Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn headers_that_never_come_are_504_after_timeout_ms() {
        let _serial = serial().await;
        let up = FaultyUpstream::start(Fault::NoHeaders).await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let base = warm_baseline(&gw).await;
        // Twenty at once: each bounded on its own.
        let mut calls = Vec::new();
        for _ in 0..20 {
            let addr = gw.addr;
            calls.push(tokio::spawn(async move { exchange(addr, &request(), BOUND + Duration::from_secs(2)).await }));
        }
        for call in calls {
            let reply = call.await.unwrap();
            assert_json_error(&reply, 504, "gateway_timeout", "no headers");
            assert!(reply.elapsed >= TIMEOUT - Duration::from_millis(50), "504 too early: {:?}", reply.elapsed);
            assert!(reply.elapsed < BOUND, "504 after {:?}", reply.elapsed);
        }
        assert_refusal_counted(&gw, None, "acme", "ticket_list", 504, "gateway_timeout", 21).await;
        assert_eq!(used(gw.admin, "acme").await, 21);
        // The gateway hangs up on the silent upstream rather than pooling it.
        assert!(
            eventually(Duration::from_secs(3), || std::future::ready(up.open.load(Ordering::SeqCst) == 0)).await,
            "upstream connections still open: {}",
            up.open.load(Ordering::SeqCst)
        );
        base.assert_returned("no headers", 2, Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upstream_that_stops_reading_an_upload_is_504_after_timeout_ms() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _serial = serial().await;
        let up = FaultyUpstream::start(Fault::StopReading).await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        // Far more than the loopback socket buffers hold: the gateway's writes
        // to the upstream stall while the client keeps sending.
        let len = 16 << 20;
        let s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let start = std::time::Instant::now();
        let h = format!(
            "{}Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
            head("POST", HOST, "/api/v2/tickets")
        );
        wr.write_all(h.as_bytes()).await.unwrap();
        let writer = tokio::spawn(async move {
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..len / chunk.len() {
                if wr.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(BOUND + Duration::from_secs(2), rd.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
                other => panic!("no answer after {:?}: {other:?}", start.elapsed()),
            }
        }
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 504"), "{text}");
        assert!(start.elapsed() < BOUND, "504 after {:?}", start.elapsed());
        writer.abort();
    }

    /// A response cut after its headers cannot become a 502 any more: the
    /// downstream must see the stream end uncleanly (connection closed before the
    /// announced length), never a truncated body passed off as whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reset_mid_body_closes_the_downstream_stream_short() {
        let _serial = serial().await;
        let up = FaultyUpstream::start(Fault::ResetMidBody).await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let base = warm_baseline(&gw).await;
        let reply = one_call(&gw, "reset mid-body").await;
        assert_eq!(reply.status(), 200, "{}", &reply.text[..reply.text.len().min(300)]);
        assert!(reply.closed, "the downstream stream was left open");
        assert!(reply.elapsed < BOUND, "{:?}", reply.elapsed);
        let body = reply.text.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
        assert!(body < 100_000, "a cut body must not look complete ({body} bytes)");
        base.assert_returned("reset mid-body", 2, Duration::from_secs(5)).await;
    }

    /// A body that stops flowing is cut after `timeout_ms` without a byte: the
    /// downstream connection closes short, and the upstream connection is dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_body_is_cut_after_timeout_ms_of_silence() {
        let _serial = serial().await;
        let up = FaultyUpstream::start(Fault::StallBody).await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let base = warm_baseline(&gw).await;
        let reply = one_call(&gw, "stalled body").await;
        assert_eq!(reply.status(), 200, "{}", &reply.text[..reply.text.len().min(300)]);
        assert!(reply.closed, "a stalled body kept the downstream open for {:?}", reply.elapsed);
        assert!(reply.elapsed < BOUND, "cut after {:?}", reply.elapsed);
        assert!(eventually(Duration::from_secs(2), || std::future::ready(up.open.load(Ordering::SeqCst) == 0)).await);
        base.assert_returned("stalled body", 2, Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_responses_are_502_or_a_short_stream() {
        let _serial = serial().await;
        for (what, bytes) in [
            ("not HTTP", &b"HELLO WORLD\r\n\r\n"[..]),
            ("no bytes at all", &b""[..]),
            ("bad status code", &b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n"[..]),
            // (`999` is not here: any three-digit code is valid and passes through.)
            ("two-digit status", &b"HTTP/1.1 99 Nope\r\nContent-Length: 0\r\n\r\n"[..]),
            ("conflicting lengths", &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..]),
            ("bad header name", &b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 0\r\n\r\n"[..]),
            ("NUL in a header", &b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n"[..]),
            ("bad chunk size", &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"[..]),
            ("short body then close", &b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello"[..]),
            ("a headline only", &b"HTTP/1.1 200 OK\r\n"[..]),
        ] {
            let up = FaultyUpstream::start(Fault::Garbage(bytes)).await;
            let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
            let base = warm_baseline(&gw).await;
            let reply = one_call(&gw, what).await;
            match reply.status() {
                502 => assert_json_error(&reply, 502, "bad_gateway", what),
                // The head was valid and went out: the stream must end short.
                200 => assert!(reply.closed, "{what}: stream left open"),
                // The body broke before its first byte: hyper had not written the
                // head yet, so the connection closes with no response at all
                // (what a client sees of an upstream reset; it never reads a
                // truncated body as whole).
                0 => assert!(reply.closed, "{what}: no answer and still open"),
                s => panic!("{what}: status {s}: {}", reply.text),
            }
            assert!(reply.elapsed < BOUND, "{what}: {:?}", reply.elapsed);
            base.assert_returned(what, 2, Duration::from_secs(5)).await;
        }
    }
}
