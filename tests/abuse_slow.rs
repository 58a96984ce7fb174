//! Slow and vanishing downstreams: a slow-loris client is cut off
//! by `header_read_timeout_ms` without holding anything that others need, an
//! upload that stalls is answered 408 while one that keeps moving is never
//! timed out, and a client that disconnects mid-upload or mid-download leaks
//! nothing — connections, file descriptors, tasks and memory return to their
//! baseline.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::faults::*;
use support::*;

const HOST: &str = "acme.freshdesk.com";
const HEADER_TIMEOUT_MS: u64 = 500;

async fn slow_gateway(path: Path, upstream: std::net::SocketAddr) -> TestGateway {
    gateway_on(path, upstream, &format!("header_read_timeout_ms = {HEADER_TIMEOUT_MS}"), TENANTS).await
}

/// Writes `head` one byte every 100 ms until the gateway closes (or 10 s);
/// returns how long the connection lived and what came back.
async fn trickle(addr: std::net::SocketAddr, head: &[u8]) -> (Duration, String) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(10) {
        let byte = head[i % head.len()];
        i += 1;
        if s.write_all(&[byte]).await.is_err() {
            break;
        }
        // A closed connection shows as EOF within the pause.
        if read_until_close(&mut s, &mut out, Duration::from_millis(100)).await {
            break;
        }
    }
    (start.elapsed(), String::from_utf8_lossy(&out).into_owned())
}

// Every test runs on the fast path and on hyper: `fast::NAME`, `hyper::NAME`.
support::on_both_paths! {
    #[tokio::test]
    async fn a_slow_loris_trickling_its_headers_is_cut_off_by_the_header_timeout() {
        let _serial = serial().await;
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = slow_gateway(PATH, up.addr).await;
        // A head that never ends: "X-Pad: aaaa…" forever.
        let mut head = head("GET", HOST, "/api/v2/tickets").into_bytes();
        head.extend_from_slice(b"X-Pad: ");
        head.extend(std::iter::repeat_n(b'a', 4096));
        let (lived, text) = trickle(gw.addr, &head).await;
        let bound = Duration::from_millis(HEADER_TIMEOUT_MS) + Duration::from_secs(2);
        assert!(lived < bound, "a trickling client lived {lived:?} (bound {bound:?})");
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
        assert_eq!(up.count(), 0);
        // A head that never ends names no call: nothing is counted or logged
        // per tenant, nothing charged.
        let samples = metrics::scrape(gw.admin).await;
        for name in ["deskgate_requests_total", "deskgate_rejected_total"] {
            let series: Vec<_> = samples.iter().filter(|s| s.name == name).map(|s| &s.labels).collect();
            assert!(series.is_empty(), "{name} counted {series:?}");
        }
        assert!(logs.events("refused").is_empty(), "{:?}", logs.events("refused"));
        assert_eq!(used(gw.admin, "acme").await, 0);
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_by_the_header_timeout() {
        let _serial = serial().await;
        let up = RecordingUpstream::start().await;
        let gw = slow_gateway(PATH, up.addr).await;
        for (what, first) in [("says nothing", &b""[..]), ("sends half a request line", &b"GET /api/v2/tic"[..])] {
            let mut s = TcpStream::connect(gw.addr).await.unwrap();
            s.write_all(first).await.unwrap();
            let start = Instant::now();
            let mut out = Vec::new();
            let closed = read_until_close(&mut s, &mut out, Duration::from_secs(5)).await;
            assert!(closed, "a connection that {what} was still open after 5 s");
            assert!(start.elapsed() < Duration::from_millis(HEADER_TIMEOUT_MS) + Duration::from_secs(2), "{what}");
        }
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_by_the_header_timeout() {
        let _serial = serial().await;
        let up = RecordingUpstream::start().await;
        let gw = slow_gateway(PATH, up.addr).await;
        // On the fast path, and on hyper's: a `Connection` field is hyper's to
        // judge, so the fast path hands that connection over for good.
        for (path, extra) in [("fast path", ""), ("hyper", "Connection: keep-alive\r\n")] {
            let mut s = TcpStream::connect(gw.addr).await.unwrap();
            let req = format!("{}{extra}\r\n", head("GET", HOST, "/api/v2/tickets"));
            s.write_all(req.as_bytes()).await.unwrap();
            let start = Instant::now();
            let mut out = Vec::new();
            let closed = read_until_close(&mut s, &mut out, Duration::from_secs(5)).await;
            let text = String::from_utf8_lossy(&out);
            assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
            assert!(closed, "{path}: an idle keep-alive connection was still open after 5 s");
            assert!(start.elapsed() < Duration::from_millis(HEADER_TIMEOUT_MS) + Duration::from_secs(2), "{path}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_hundred_slow_lorises_hold_no_worker_and_leave_nothing_behind() {
        let _serial = serial().await;
        let up = RecordingUpstream::start().await;
        let gw = slow_gateway(PATH, up.addr).await;
        let c = client();
        // Warm up: one pooled upstream connection, the client's pool, the runtime.
        assert_eq!(get(&c, gw.addr, HOST, "/api/v2/tickets").await.status, 200);
        let base = Baseline::now();

        let mut lorises = Vec::new();
        for _ in 0..200 {
            let mut s = TcpStream::connect(gw.addr).await.unwrap();
            s.write_all(b"GET /api/v2/tickets HTTP/1.1\r\nHost: acme.fresh").await.unwrap();
            lorises.push(s);
        }
        // While they hang, a well-behaved client is served at once.
        let start = Instant::now();
        for _ in 0..20 {
            assert_eq!(get(&c, gw.addr, HOST, "/api/v2/contacts").await.status, 200);
        }
        let served = start.elapsed();
        assert!(served < Duration::from_secs(2), "20 calls took {served:?} behind 200 slow lorises");

        // The gateway lets go of every one of them by the header timeout.
        let start = Instant::now();
        let mut closed = 0;
        for mut s in lorises {
            let mut out = Vec::new();
            if read_until_close(&mut s, &mut out, Duration::from_secs(3)).await {
                closed += 1;
            }
        }
        assert_eq!(closed, 200, "slow lorises still open after {:?}", start.elapsed());
        base.assert_returned("after 200 slow lorises", 4, Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_that_vanish_mid_upload_leak_nothing() {
        let _serial = serial().await;
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let c = client();
        assert_eq!(get(&c, gw.addr, HOST, "/api/v2/tickets").await.status, 200);
        let base = Baseline::now();
        let chunk = vec![b'{'; 64 * 1024];
        for _ in 0..20 {
            let mut s = TcpStream::connect(gw.addr).await.unwrap();
            let h = format!(
                "{}Content-Type: application/json\r\nContent-Length: 8388608\r\n\r\n",
                head("POST", HOST, "/api/v2/tickets")
            );
            s.write_all(h.as_bytes()).await.unwrap();
            for _ in 0..16 {
                s.write_all(&chunk).await.unwrap(); // 1 MiB of the promised 8
            }
            // Give the upload time to reach the upstream, then vanish.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = s.set_zero_linger();
            drop(s);
        }
        base.assert_returned("after 20 abandoned uploads", 2, Duration::from_secs(5)).await;
        let grown = rss_kib().saturating_sub(base.rss_kib);
        assert!(grown < 32 * 1024, "RSS grew by {grown} KiB over 20 abandoned 1 MiB uploads");
        // The gateway still serves.
        assert_eq!(get(&c, gw.addr, HOST, "/api/v2/tickets").await.status, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_that_vanish_mid_download_release_the_upstream() {
        let _serial = serial().await;
        let up = FaultyUpstream::start(Fault::Endless).await;
        let mut base = None;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        // One abandoned download first: lazy one-time resources, then the baseline.
        for i in 0..11 {
            if i == 1 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                base = Some(Baseline::now());
            }
            let mut s = TcpStream::connect(gw.addr).await.unwrap();
            s.write_all(format!("{}\r\n", head("GET", HOST, "/api/v2/tickets")).as_bytes()).await.unwrap();
            // Read 1 MiB of the endless answer, then vanish.
            let mut got = 0usize;
            let mut buf = vec![0u8; 65536];
            while got < 1 << 20 {
                use tokio::io::AsyncReadExt;
                match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => got += n,
                    other => panic!("download {i} stopped early: {other:?}"),
                }
            }
            drop(s);
            let ok = eventually(Duration::from_secs(5), || std::future::ready(up.open.load(Ordering::SeqCst) == 0)).await;
            assert!(ok, "download {i}: the gateway kept the upstream connection after the client left");
        }
        // The upstream stopped being read: it wrote a bounded amount per download.
        let written = up.written.load(Ordering::SeqCst);
        let before = written;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(up.written.load(Ordering::SeqCst), before, "the upstream is still being read");
        let base = base.expect("baseline");
        base.assert_returned("after 10 abandoned downloads", 2, Duration::from_secs(5)).await;
        println!("10 abandoned downloads: upstream wrote {} MiB in total", written >> 20);
    }

    /// Sends a POST head declaring `total` body bytes and the first `first`
    /// of them, then nothing; returns what came back before the gateway closed.
    async fn stalled_upload(addr: std::net::SocketAddr, total: usize, first: usize) -> (Duration, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let h = format!(
            "{}Content-Type: application/json\r\nContent-Length: {total}\r\n\r\n",
            head("POST", HOST, "/api/v2/tickets")
        );
        s.write_all(h.as_bytes()).await.unwrap();
        s.write_all(&vec![b' '; first]).await.unwrap();
        let start = Instant::now();
        let mut out = Vec::new();
        let closed = read_until_close(&mut s, &mut out, Duration::from_secs(5)).await;
        assert!(closed, "the gateway kept a stalled upload open for 5 s");
        (start.elapsed(), String::from_utf8_lossy(&out).into_owned())
    }

    #[tokio::test]
    async fn an_upload_that_stalls_is_answered_408_and_never_completes_upstream() {
        let _serial = serial().await;
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = slow_gateway(PATH, up.addr).await;
        // A small body (read whole before the call is decided) and a large one
        // (streamed to the upstream as it comes).
        for (total, first) in [(1_000, 500), (200_000, 50_000)] {
            let (lived, answer) = stalled_upload(gw.addr, total, first).await;
            assert!(answer.starts_with("HTTP/1.1 408"), "{total}-byte upload: {answer}");
            assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
            let idle = Duration::from_millis(HEADER_TIMEOUT_MS);
            assert!(lived >= idle / 2 && lived < idle * 4, "{total}-byte upload: cut after {lived:?}");
        }
        // Neither upload completed upstream. The fast path reads a small body
        // whole before the call is decided, so that one never left the
        // gateway; hyper streams every body, so the upstream saw it cut short.
        let seen: Vec<usize> = up.seen.lock().unwrap().iter().map(|r| r.body_len).collect();
        assert!(seen.iter().all(|&n| n < 200_000 && n != 1_000), "the upstream got {seen:?}");
        if PATH == Path::Fast {
            assert!(seen.iter().all(|&n| n != 500), "the small body left the fast path: {seen:?}");
        }
        let metrics = get(&client(), gw.admin, "127.0.0.1", "/metrics").await.body;
        let metrics = String::from_utf8_lossy(&metrics);
        assert!(metrics.contains(r#"deskgate_upstream_errors_total{kind="downstream_stalled"} 2"#), "{metrics}");
        assert_refusal_counted(&gw, Some(&logs), "acme", "ticket_create", 408, "request_timeout", 2).await;
        // Each call was admitted, and charged, before its body stalled.
        assert_eq!(used(gw.admin, "acme").await, 2);
    }

    /// A small upload that stalls is a refusal like any other, on both
    /// paths: answered 408, counted for its tenant, logged.
    #[tokio::test]
    async fn a_small_upload_that_stalls_is_answered_408_counted_and_logged() {
        let _serial = serial().await;
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = slow_gateway(PATH, up.addr).await;
        let (_, answer) = stalled_upload(gw.addr, 10, 3).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
        // The upload never completed upstream (the fast path never sends it).
        let seen: Vec<usize> = up.seen.lock().unwrap().iter().map(|r| r.body_len).collect();
        assert!(seen.iter().all(|&n| n < 10), "the upstream got {seen:?}");
        if PATH == Path::Fast {
            assert!(seen.is_empty(), "the fast path sent a body it had not read whole: {seen:?}");
        }
        assert_refusal_counted(&gw, Some(&logs), "acme", "ticket_create", 408, "request_timeout", 1).await;
        // Admitted, and charged, before its body stalled.
        assert_eq!(used(gw.admin, "acme").await, 1);
    }

    #[tokio::test]
    async fn a_long_upload_that_keeps_moving_is_not_timed_out() {
        let _serial = serial().await;
        let up = RecordingUpstream::start().await;
        // The upstream's timeout is 1 s (support::gateway); the upload takes ~2 s
        // with pauses well under the 500 ms idle limit.
        let gw = slow_gateway(PATH, up.addr).await;
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let (chunks, size) = (20, 5_000);
        let h = format!(
            "{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            head("POST", HOST, "/api/v2/tickets"),
            chunks * size
        );
        s.write_all(h.as_bytes()).await.unwrap();
        for _ in 0..chunks {
            s.write_all(&vec![b' '; size]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut out = Vec::new();
        read_until_close(&mut s, &mut out, Duration::from_secs(2)).await;
        let answer = String::from_utf8_lossy(&out);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(up.last().body_len, chunks * size);
    }

    // ---------------------------------------------------------------- h2

    /// The client preface and an empty SETTINGS frame: an h2 connection by prior
    /// knowledge, with no stream opened.
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    /// A PING frame (8 bytes of opaque data on stream 0): h2 traffic that opens
    /// no stream, which the gateway answers with a PING ACK.
    const H2_PING: &[u8] = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingpong";

    #[tokio::test]
    async fn an_h2_connection_that_opens_no_stream_is_closed_by_the_header_timeout() {
        let _serial = serial().await;
        let up = RecordingUpstream::start().await;
        let gw = slow_gateway(PATH, up.addr).await;
        let bound = Duration::from_millis(HEADER_TIMEOUT_MS) + Duration::from_secs(2);

        // Silent after the preface.
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(H2_PREFACE).await.unwrap();
        let start = Instant::now();
        let mut out = Vec::new();
        let closed = read_until_close(&mut s, &mut out, Duration::from_secs(5)).await;
        assert!(closed, "a silent h2 connection was still open after 5 s");
        assert!(start.elapsed() < bound, "a silent h2 connection lived {:?}", start.elapsed());

        // Busy, but never asking for anything: a PING every 100 ms keeps bytes
        // moving both ways without a stream, as a slow loris on h2 would.
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(H2_PREFACE).await.unwrap();
        let start = Instant::now();
        let mut out = Vec::new();
        let mut closed = false;
        while !closed && start.elapsed() < Duration::from_secs(5) {
            if s.write_all(H2_PING).await.is_err() {
                break;
            }
            closed = read_until_close(&mut s, &mut out, Duration::from_millis(100)).await;
        }
        assert!(start.elapsed() < bound, "an h2 connection sending only PINGs lived {:?}", start.elapsed());
        assert_eq!(up.count(), 0);
    }

    /// An h2 connection by prior knowledge, its driver running in a task whose
    /// handle says when the connection has ended.
    async fn h2_connect(
        addr: std::net::SocketAddr,
    ) -> (::hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>, tokio::task::JoinHandle<()>) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = ::hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        (send, driver)
    }

    async fn h2_call(send: &mut ::hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>) -> u16 {
        use http_body_util::BodyExt;
        let req = http::Request::get(format!("http://{HOST}/api/v2/tickets"))
            .header("authorization", "Basic eDp4")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let rsp = send.send_request(req).await.unwrap();
        let status = rsp.status().as_u16();
        let _ = rsp.into_body().collect().await;
        status
    }

    #[tokio::test]
    async fn an_idle_h2_connection_is_closed_by_the_header_timeout_after_its_last_call() {
        let _serial = serial().await;
        let up = RecordingUpstream::start().await;
        let gw = slow_gateway(PATH, up.addr).await;
        let (mut send, driver) = h2_connect(gw.addr).await;
        // Calls closer together than the timeout keep the connection.
        for _ in 0..3 {
            assert_eq!(h2_call(&mut send).await, 200);
            tokio::time::sleep(Duration::from_millis(HEADER_TIMEOUT_MS / 2)).await;
        }
        assert!(!driver.is_finished(), "an h2 connection in use was closed");
        let start = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
        assert!(ended.is_ok(), "an idle h2 connection was still open after 5 s");
        assert!(start.elapsed() < Duration::from_millis(HEADER_TIMEOUT_MS) + Duration::from_secs(2));
        assert_eq!(up.count(), 3);
    }

    #[tokio::test]
    async fn an_h2_call_slower_than_the_header_timeout_is_answered() {
        let _serial = serial().await;
        let up = RecordingUpstream::start().await;
        let slow = FaultProxy::start(up.addr).await;
        // Longer than the header timeout, within the upstream timeout (1 s).
        slow.set_delay(Duration::from_millis(HEADER_TIMEOUT_MS * 8 / 5));
        let gw = slow_gateway(PATH, slow.addr).await;
        let (mut send, driver) = h2_connect(gw.addr).await;
        // The connection has a call in flight the whole time: not idle.
        assert_eq!(h2_call(&mut send).await, 200);
        assert!(!driver.is_finished(), "the connection was closed under a call in flight");
        assert_eq!(up.count(), 1);
    }
}
