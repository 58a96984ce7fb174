//! Request smuggling shapes against the running gateway, over raw sockets
//!: every ambiguous framing is refused before anything reaches the
//! upstream, or — where RFC 9112 lets a server resolve it — resolved one way
//! only and forwarded re-framed, so the upstream can never read a second
//! request into what the gateway took for one.

mod support;

use std::time::Duration;

use support::faults::*;
use support::*;

const HOST: &str = "acme.freshdesk.com";
const WAIT: Duration = Duration::from_secs(3);

async fn setup(path: Path) -> (StrictUpstream, TestGateway) {
    let up = StrictUpstream::start().await;
    let gw = gateway_on(path, up.addr, "max_body_bytes = 1048576", TENANTS).await;
    (up, gw)
}

/// A POST to the ticket list with `extra` header lines (each ending CRLF),
/// then the blank line and `body`.
fn post(extra: &str, body: &str) -> Vec<u8> {
    format!("{}Content-Type: application/json\r\n{extra}\r\n{body}", head("POST", HOST, "/api/v2/tickets")).into_bytes()
}

/// What a smuggler hides after the first message.
const SMUGGLED: &str = "GET /api/v2/smuggled HTTP/1.1\r\nHost: acme.freshdesk.com\r\nAuthorization: Basic eDp4\r\n\r\n";

fn assert_nothing_smuggled(up: &StrictUpstream, shape: &str) {
    for r in up.received() {
        assert!(!r.uri.contains("smuggled"), "{shape}: the upstream read a smuggled request: {r:?}");
    }
}

// Every test runs on the fast path and on hyper: `fast::NAME`, `hyper::NAME`.
support::on_both_paths! {
    #[tokio::test]
    async fn conflicting_or_invalid_framing_headers_are_400_and_never_forwarded() {
        let _serial = serial().await;
        let (up, gw) = setup(PATH).await;
        let shapes: Vec<(&str, Vec<u8>)> = vec![
            ("two different Content-Length", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!")),
            ("Content-Length list 5, 6", post("Content-Length: 5, 6\r\n", "hello!")),
            ("Content-Length list 5, 5", post("Content-Length: 5, 5\r\n", "hello")),
            ("Content-Length +5", post("Content-Length: +5\r\n", "hello")),
            ("Content-Length -1", post("Content-Length: -1\r\n", "hello")),
            ("Content-Length 0x5", post("Content-Length: 0x5\r\n", "hello")),
            ("Content-Length 5 5", post("Content-Length: 5 5\r\n", "hello")),
            ("Content-Length overflow", post("Content-Length: 184467440737095516160\r\n", "hello")),
            ("Transfer-Encoding chunked, identity", post("Transfer-Encoding: chunked, identity\r\n", "5\r\nhello\r\n0\r\n\r\n")),
            ("Transfer-Encoding identity", post("Transfer-Encoding: identity\r\n", "hello")),
            ("Transfer-Encoding xchunked", post("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n")),
            ("Transfer-Encoding chunked then identity", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", "5\r\nhello\r\n0\r\n\r\n")),
            ("space before the colon", post("Transfer-Encoding : chunked\r\n", "5\r\nhello\r\n0\r\n\r\n")),
            ("obs-fold of Transfer-Encoding", post("Transfer-Encoding:\r\n chunked\r\n", "5\r\nhello\r\n0\r\n\r\n")),
            ("obs-fold of another header", post("Content-Length: 5\r\nX-Note: a\r\n b\r\n", "hello")),
            ("bare CR in a header line", post("Content-Length: 5\r\nX-Note: a\rb\r\n", "hello")),
            ("NUL in a header value", post("Content-Length: 5\r\nX-Note: a\0b\r\n", "hello")),
            ("space in a header name", post("Content-Length: 5\r\nX Note: a\r\n", "hello")),
            (
                "Transfer-Encoding on HTTP/1.0",
                format!(
                    "POST /api/v2/tickets HTTP/1.0\r\nHost: {HOST}\r\nAuthorization: Basic eDp4\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                )
                .into_bytes(),
            ),
        ];
        for (shape, bytes) in shapes {
            let mut bytes = bytes;
            bytes.extend_from_slice(SMUGGLED.as_bytes());
            let before = up.received().len();
            let reply = exchange(gw.addr, &bytes, WAIT).await;
            assert_eq!(reply.status(), 400, "{shape}: {}", reply.text);
            assert_eq!(reply.statuses().len(), 1, "{shape}: one answer only: {}", reply.text);
            assert!(reply.closed, "{shape}: the connection must be closed after a framing error");
            assert_eq!(up.received().len(), before, "{shape}: something reached the upstream");
        }
        assert_nothing_smuggled(&up, "all shapes");
        assert_eq!(used(gw.admin, "acme").await, 0, "a framing error charges nothing");
    }

    /// RFC 9112 §6.3: with both `Transfer-Encoding` and `Content-Length`, a
    /// server may process the request by Transfer-Encoding alone but MUST close
    /// the connection afterwards, and a proxy MUST drop the Content-Length before
    /// forwarding. hyper does exactly that (the Content-Length never reaches the
    /// service), so the gateway cannot tell it was there; what it guarantees is
    /// that the upstream gets one chunked-framed request with no Content-Length,
    /// and that the bytes the Content-Length would have covered are never read
    /// as a second request.
    #[tokio::test]
    async fn content_length_with_transfer_encoding_is_framed_by_te_alone_and_closes() {
        let _serial = serial().await;
        let (up, gw) = setup(PATH).await;
        let body = format!("5\r\nhello\r\n0\r\n\r\n{SMUGGLED}");
        for (shape, extra) in [
            ("CL.TE", format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", body.len())),
            ("TE.CL", format!("Transfer-Encoding: chunked\r\nContent-Length: {}\r\n", body.len())),
            ("CL short, TE", "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n".to_owned()),
            ("CL 0, TE", "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n".to_owned()),
        ] {
            let before = up.received().len();
            let reply = exchange(gw.addr, &post(&extra, &body), WAIT).await;
            let statuses = reply.statuses();
            assert_eq!(statuses.len(), 1, "{shape}: exactly one answer: {}", reply.text);
            assert!(reply.closed, "{shape}: the connection must close after a CL+TE request");
            let got: Vec<Received> = up.received().into_iter().skip(before).collect();
            assert!(got.len() <= 1, "{shape}: {got:?}");
            if let Some(r) = got.first() {
                assert_eq!(statuses[0], 200, "{shape}");
                assert!(r.complete, "{shape}");
                assert_eq!(r.body, b"hello", "{shape}: the body is what the chunked framing says");
                assert!(r.headers.get("content-length").is_none(), "{shape}: Content-Length forwarded: {r:?}");
            } else {
                assert_eq!(statuses[0], 400, "{shape}");
            }
        }
        assert_nothing_smuggled(&up, "CL+TE");
    }

    #[tokio::test]
    async fn equal_duplicate_content_lengths_are_forwarded_as_one() {
        let _serial = serial().await;
        let (up, gw) = setup(PATH).await;
        let reply = exchange(gw.addr, &post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), WAIT).await;
        assert_eq!(reply.status(), 200, "{}", reply.text);
        let r = up.received().pop().expect("forwarded");
        assert_eq!(r.headers.get_all("content-length").iter().count(), 1, "{r:?}");
        assert_eq!(r.headers["content-length"], "5");
        assert_eq!(r.body, b"hello");
    }

    #[tokio::test]
    async fn invalid_chunk_framing_never_reaches_the_upstream_as_a_complete_request() {
        let _serial = serial().await;
        let (up, gw) = setup(PATH).await;
        for (shape, body) in [
            ("non-hex size", "zz\r\nhello\r\n0\r\n\r\n"),
            ("negative size", "-5\r\nhello\r\n0\r\n\r\n"),
            ("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"),
            ("size overflow", "fffffffffffffffff1\r\nhello\r\n0\r\n\r\n"),
            ("data longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
            ("no CRLF after the data", "5\r\nhelloXX0\r\n\r\n"),
            ("bare LF after the size", "5\nhello\r\n0\r\n\r\n"),
            ("space inside the size", "5 5\r\nhello\r\n0\r\n\r\n"),
        ] {
            let before = up.complete().len();
            let reply =
                exchange(gw.addr, &post("Transfer-Encoding: chunked\r\n", &format!("{body}{SMUGGLED}")), WAIT).await;
            assert!(reply.closed, "{shape}: the connection must be closed");
            let status = reply.status();
            // The head is forwarded before the body is read (bodies stream), so
            // the upstream may see a request start; it must never see it end.
            let complete: Vec<Received> = up.complete().into_iter().skip(before).collect();
            if status == 200 {
                // "bare LF after the size" is tolerated by some parsers: then the
                // body must be exactly the five bytes and nothing else.
                assert_eq!(complete.len(), 1, "{shape}");
                assert_eq!(complete[0].body, b"hello", "{shape}");
            } else {
                assert_eq!(status, 400, "{shape}: a broken request body is the client's fault: {}", reply.text);
                assert!(complete.is_empty(), "{shape}: a complete request reached the upstream: {complete:?}");
            }
        }
        assert_nothing_smuggled(&up, "chunk sizes");
    }

    #[tokio::test]
    async fn bare_lf_line_endings_are_read_one_way_and_forwarded_with_crlf() {
        let _serial = serial().await;
        let (up, gw) = setup(PATH).await;
        // Bare LF as the line terminator (RFC 9112 §2.2 lets a recipient accept it).
        let bytes = format!(
            "POST /api/v2/tickets HTTP/1.1\nHost: {HOST}\nAuthorization: Basic eDp4\nContent-Type: application/json\nContent-Length: 5\n\nhello{SMUGGLED}"
        );
        let reply = exchange(gw.addr, bytes.as_bytes(), WAIT).await;
        let statuses = reply.statuses();
        assert!(matches!(statuses.first(), Some(200 | 400)), "{}", reply.text);
        let got = up.received();
        // Whatever the gateway made of it, the upstream got exactly that: the
        // ticket POST with its 5 bytes, and the smuggled GET only as the separate
        // pipelined request the gateway itself saw (with its own answer).
        let posts: Vec<&Received> = got.iter().filter(|r| r.method == "POST").collect();
        assert!(posts.len() <= 1, "{got:?}");
        if let Some(p) = posts.first() {
            assert_eq!(p.body, b"hello");
            assert!(p.complete);
        }
        let gets = got.iter().filter(|r| r.uri.contains("smuggled")).count();
        assert!(gets <= statuses.len().saturating_sub(1), "the upstream saw a request the gateway did not answer: {got:?}");
    }

    #[tokio::test]
    async fn a_header_block_over_the_limit_is_431_and_the_connection_closed() {
        let _serial = serial().await;
        let (up, gw) = setup(PATH).await;
        let rss_before = rss_kib();
        for (shape, extra) in [
            ("one 1 MiB header", format!("X-Big: {}\r\n", "a".repeat(1 << 20))),
            ("500 headers", (0..500).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()),
        ] {
            for _ in 0..5 {
                let bytes = format!("{}{extra}\r\n", head("GET", HOST, "/api/v2/tickets"));
                let reply = exchange(gw.addr, bytes.as_bytes(), WAIT).await;
                assert_eq!(reply.status(), 431, "{shape}: {}", &reply.text[..reply.text.len().min(200)]);
                assert!(reply.closed, "{shape}");
            }
        }
        assert!(up.received().is_empty());
        assert_eq!(used(gw.admin, "acme").await, 0, "a 431 charges nothing");
        // 10 refusals of up to 1 MiB each: the gateway buffers at most hyper's
        // ~400 KiB read buffer per connection, and gives it back.
        let grown = rss_kib().saturating_sub(rss_before);
        assert!(grown < 32 * 1024, "RSS grew by {grown} KiB over 10 oversized header blocks");
    }

    #[tokio::test]
    async fn a_declared_body_over_the_limit_is_413_before_a_byte_of_it_is_sent() {
        let _serial = serial().await;
        let logs = Logs::capture();
        let (up, gw) = setup(PATH).await;
        // Only the head is sent: the answer must not wait for the 10 GB.
        let bytes = post("Content-Length: 10000000000\r\n", "");
        let reply = exchange(gw.addr, &bytes, WAIT).await;
        assert_eq!(reply.status(), 413, "{}", reply.text);
        assert!(reply.elapsed < Duration::from_secs(2), "413 took {:?}", reply.elapsed);
        assert!(up.received().is_empty());
        assert_refusal_counted(&gw, Some(&logs), "acme", "ticket_create", 413, "payload_too_large", 1).await;
        assert_eq!(used(gw.admin, "acme").await, 0);
    }

    #[tokio::test]
    async fn a_chunked_body_that_outgrows_the_limit_is_cut_off_and_never_completes_upstream() {
        let _serial = serial().await;
        use tokio::io::AsyncWriteExt;
        let (up, gw) = setup(PATH).await;
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&post("Transfer-Encoding: chunked\r\n", "")).await.unwrap();
        // Offer 8 MiB against a 1 MiB limit; the gateway stops reading after 1 MiB.
        let chunk = format!("{:x}\r\n{}\r\n", 65536, "z".repeat(65536));
        let mut sent = 0usize;
        let write = async {
            for _ in 0..128 {
                if s.write_all(chunk.as_bytes()).await.is_err() {
                    break;
                }
                sent += 65536;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
        let mut out = Vec::new();
        let closed = read_until_close(&mut s, &mut out, WAIT).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(closed, "the connection must be closed after a cut-off body");
        assert!(up.complete().is_empty(), "{:?}", up.complete().len());
        assert!(up.received().iter().all(|r| r.body.len() <= 1 << 20), "more than the limit was forwarded");
        println!("offered {sent} bytes before the gateway stopped reading");
    }
}
