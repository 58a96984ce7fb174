//! The HTTP/1.1 fast path (`src/fast.rs`) against an upstream that answers
//! with hand-written bytes: every way an HTTP/1.1 answer can be framed, a
//! keep-alive socket the upstream closes while it sits in the pool, small
//! request bodies, and a connection that moves from the fast path to hyper
//! halfway through. These tests are about the fast path itself and its
//! hand-over to hyper, so unlike the behaviour suites they run once, on the
//! default config (fast path on); where they compare with hyper they send
//! the call hyper takes (a `Connection` field) or start a gateway with
//! `fast_path = false`.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ACME: &str = "acme.freshdesk.com";
const AUTH: &str = "Authorization: Basic YXBpa2V5Olg=\r\n";

fn answers(path: &str) -> Answer {
    let body = br#"{"ok":true}"#;
    match path {
        "/api/v2/tickets?shape=chunked" => Answer::KeepOpen(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\nx-ratelimit-total: 999\r\n\r\n4\r\n[{\"a\r\n6;ext=1\r\n\":1},{\r\n6\r\n\"b\":2}\r\n1\r\n]\r\n0\r\nx-trailer: t\r\n\r\n".to_vec(),
        ),
        "/api/v2/tickets?shape=until-close" => {
            Answer::Close(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n[1,2,3]".to_vec())
        }
        "/api/v2/tickets?shape=closes-after" => Answer::Close(
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes().into_iter().chain(body.iter().copied()).collect(),
        ),
        "/api/v2/tickets?shape=hop" => Answer::KeepOpen(
            format!("HTTP/1.1 201 Created\r\nconnection: x-secret\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\nupgrade: h2c\r\nx-kept: yes\r\ncontent-length: {}\r\n\r\n", body.len())
                .into_bytes()
                .into_iter()
                .chain(body.iter().copied())
                .collect(),
        ),
        // Two `Connection` fields, each naming a field of its own.
        "/api/v2/tickets?shape=hop2" => Answer::KeepOpen(
            format!("HTTP/1.1 200 OK\r\nx-one: 1\r\nConnection: X-One\r\nx-kept: yes\r\nconnection: keep-alive , x-two\r\nX-Two: 2\r\ncontent-length: {}\r\n\r\n", body.len())
                .into_bytes()
                .into_iter()
                .chain(body.iter().copied())
                .collect(),
        ),
        "/api/v2/tickets?shape=continue" => Answer::KeepOpen(
            format!("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes().into_iter().chain(body.iter().copied()).collect(),
        ),
        "/api/v2/tickets?shape=bad-chunks" => {
            Answer::Close(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nabc".to_vec())
        }
        "/api/v2/tickets?shape=cased" => Answer::KeepOpen(
            format!("HTTP/1.1 200 OK\r\nX-Upstream-Case: Kept\r\ncontent-length: {}\r\n\r\n", body.len())
                .into_bytes()
                .into_iter()
                .chain(body.iter().copied())
                .collect(),
        ),
        "/api/v2/tickets?shape=garbage" => Answer::Close(b"SMTP ready\r\n\r\n".to_vec()),
        "/api/v2/tickets?shape=hang" => Answer::Hang,
        _ => Answer::KeepOpen(
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len())
                .into_bytes()
                .into_iter()
                .chain(body.iter().copied())
                .collect(),
        ),
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {ACME}\r\n{AUTH}\r\n")
}

#[tokio::test]
async fn a_chunked_answer_passes_through_whole_and_its_connection_is_reused() {
    let up = ScriptedUpstream::start(answers).await;
    let gw = gateway(up.addr, "", TENANTS).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..3 {
        let (head, body) = exchange_on(&mut s, &get("/api/v2/tickets?shape=chunked")).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert!(!head.contains("content-length"), "both framings passed on: {head}");
        // The gateway's budget headers replace the upstream's own.
        assert!(head.contains("x-ratelimit-total: 400"), "{head}");
        assert!(!head.contains("x-ratelimit-total: 999"), "{head}");
        assert!(head.contains("x-request-id: "), "{head}");
        assert!(head.contains("date: "), "{head}");
        let text = String::from_utf8_lossy(&body);
        // The chunks pass as framed; trailer fields are not relayed.
        assert!(text.starts_with("4\r\n[{\"a\r\n") && text.ends_with("]\r\n0\r\n\r\n"), "{text:?}");
        assert!(!text.contains("x-trailer"), "{text:?}");
    }
    // One downstream connection, one upstream connection for all three.
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_answer_delimited_by_close_is_copied_whole_and_the_connection_closes() {
    let up = ScriptedUpstream::start(answers).await;
    let gw = gateway(up.addr, "", TENANTS).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let (head, body) = exchange_on(&mut s, &get("/api/v2/tickets?shape=until-close")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, b"[1,2,3]");
}

#[tokio::test]
async fn hop_by_hop_fields_of_the_answer_are_dropped_and_interim_answers_skipped() {
    let up = ScriptedUpstream::start(answers).await;
    let gw = gateway(up.addr, "", TENANTS).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let (head, body) = exchange_on(&mut s, &get("/api/v2/tickets?shape=hop")).await;
    assert!(head.starts_with("http/1.1 201 created"), "{head}");
    for gone in ["connection:", "x-secret:", "keep-alive:", "upgrade:"] {
        assert!(!head.contains(gone), "{gone} in {head}");
    }
    assert!(head.contains("x-kept: yes"), "{head}");
    assert_eq!(body, br#"{"ok":true}"#);
    let (head, body) = exchange_on(&mut s, &get("/api/v2/tickets?shape=hop2")).await;
    for gone in ["connection:", "x-one:", "x-two:"] {
        assert!(!head.contains(gone), "{gone} in {head}");
    }
    assert!(head.contains("x-kept: yes"), "{head}");
    assert_eq!(body, br#"{"ok":true}"#);
    let (head, body) = exchange_on(&mut s, &get("/api/v2/tickets?shape=continue")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, br#"{"ok":true}"#);
}

#[tokio::test]
async fn a_head_request_gets_no_body_and_the_connection_stays_usable() {
    let up = ScriptedUpstream::start(answers).await;
    let gw = gateway(up.addr, "", TENANTS).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let (head, body) =
        exchange_on(&mut s, &format!("HEAD /api/v2/tickets HTTP/1.1\r\nHost: {ACME}\r\n{AUTH}\r\n")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.is_empty(), "{body:?}");
    let (head, body) = exchange_on(&mut s, &get("/api/v2/tickets")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, br#"{"ok":true}"#);
}

#[tokio::test]
async fn a_pooled_socket_the_upstream_closed_is_not_used_and_no_call_is_lost() {
    let up = ScriptedUpstream::start(answers).await;
    let gw = gateway(up.addr, "", TENANTS).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..5 {
        // The upstream answers with a length and then closes without saying so.
        let (head, body) = exchange_on(&mut s, &get("/api/v2/tickets?shape=closes-after")).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, br#"{"ok":true}"#);
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_broken_upstream_gets_502_and_broken_chunks_end_the_downstream_stream() {
    let up = ScriptedUpstream::start(answers).await;
    let gw = gateway(up.addr, "", TENANTS).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let (head, body) = exchange_on(&mut s, &get("/api/v2/tickets?shape=garbage")).await;
    assert!(head.starts_with("http/1.1 502"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("bad_gateway"), "{:?}", String::from_utf8_lossy(&body));
    // The head was already sent when the chunks broke: the stream is cut.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(get("/api/v2/tickets?shape=bad-chunks").as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "{text}");
}

/// The fast path keeps one head-read timer and one upstream timer per
/// connection and pushes them later per call: each call must get its whole
/// allowance again, however long the connection has lived.
#[tokio::test]
async fn every_call_on_a_kept_alive_connection_gets_its_own_full_deadlines() {
    let up = ScriptedUpstream::start(answers).await;
    // The upstream's timeout_ms is 1000 in these gateways.
    let gw = gateway(up.addr, "header_read_timeout_ms = 1000", TENANTS).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // Idle for 0.6 s before each call: 1.8 s in all, longer than one allowance.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (head, body) = exchange_on(&mut s, &get("/api/v2/tickets")).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, br#"{"ok":true}"#);
    }
    // An upstream that never answers: 504 after the full second, not at once.
    let asked = std::time::Instant::now();
    let (head, _) = exchange_on(&mut s, &get("/api/v2/tickets?shape=hang")).await;
    let waited = asked.elapsed();
    assert!(head.starts_with("http/1.1 504"), "{head}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(4), "504 after {waited:?}");
    // Then a silent client is let go after the full head-read allowance.
    let idle = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.unwrap().unwrap();
    let waited = idle.elapsed();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(waited >= Duration::from_millis(900), "closed after {waited:?}");
}

fn post(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut req =
        format!("POST {path} HTTP/1.1\r\nHost: {ACME}\r\n{AUTH}{content_type}content-length: {}\r\n\r\n", body.len())
            .into_bytes();
    req.extend_from_slice(body);
    req
}

const JSON: &str = "content-type: application/json\r\n";

#[tokio::test]
async fn pipelined_calls_with_small_and_large_bodies_all_arrive_whole_in_order() {
    let up = RecordingUpstream::start().await;
    let gw = gateway(up.addr, "", TENANTS).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let small = br#"{"subject":"Printer on fire","priority":1}"#.to_vec();
    // Above the fast path's limit: this one and everything after it on the
    // connection is hyper's, streamed.
    let large: Vec<u8> = (0..deskgate::fast::MAX_BODY + 1000).map(|i| b'a' + (i % 26) as u8).collect();
    let mut reqs = get("/api/v2/tickets").into_bytes();
    reqs.extend(post("/api/v2/tickets", JSON, &small));
    reqs.extend(post("/api/v2/contacts", JSON, &large));
    reqs.extend(get("/api/v2/contacts").into_bytes());
    s.write_all(&reqs).await.unwrap();
    for _ in 0..4 {
        let (head, _) = read_answer(&mut s, false).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
    }
    let seen = up.seen.lock().unwrap().clone();
    let calls: Vec<(String, String, usize, u64)> =
        seen.iter().map(|r| (r.method.to_string(), r.uri.clone(), r.body_len, r.body_hash)).collect();
    let hash = |b: &[u8]| body_hash(BODY_HASH_START, b);
    assert_eq!(
        calls,
        vec![
            ("GET".to_owned(), "/api/v2/tickets".to_owned(), 0, hash(b"")),
            ("POST".to_owned(), "/api/v2/tickets".to_owned(), small.len(), hash(&small)),
            ("POST".to_owned(), "/api/v2/contacts".to_owned(), large.len(), hash(&large)),
            ("GET".to_owned(), "/api/v2/contacts".to_owned(), 0, hash(b"")),
        ]
    );
}

#[tokio::test]
async fn a_small_body_may_arrive_in_pieces_and_a_refused_calls_body_is_skipped_not_run() {
    let up = RecordingUpstream::start().await;
    let gw = gateway(up.addr, "", TENANTS).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();

    // The head, then the body in two writes a little later.
    let body = br#"{"subject":"slow","description":"typed by hand"}"#;
    let req = post("/api/v2/tickets", JSON, body);
    let (head, rest) = req.split_at(req.len() - body.len());
    s.write_all(head).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&rest[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&rest[10..]).await.unwrap();
    let (head, _) = read_answer(&mut s, false).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!((up.last().body_len, up.last().body_hash), (body.len(), body_hash(BODY_HASH_START, body)));

    // Refused (415: no Content-Type) with a body that is itself a request:
    // the body is skipped, never forwarded and never read as a request.
    let smuggled = get("/api/v2/contacts?smuggled=1");
    s.write_all(&post("/api/v2/tickets", "", smuggled.as_bytes())).await.unwrap();
    let (head, answer) = read_answer(&mut s, false).await;
    assert!(head.starts_with("http/1.1 415"), "{head}");
    assert!(String::from_utf8_lossy(&answer).contains("invalid_content_type"));
    // The connection is still in step: the next call is answered as itself.
    let (head, answer) = exchange_on(&mut s, &get("/api/v2/tickets?after=1")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(String::from_utf8_lossy(&answer).contains(r#""path":"/api/v2/tickets""#));
    let uris: Vec<String> = up.seen.lock().unwrap().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(uris, ["/api/v2/tickets", "/api/v2/tickets?after=1"]);
}

#[tokio::test]
async fn the_upstream_sees_the_same_request_head_from_both_paths() {
    let up = ScriptedUpstream::start(answers).await;
    let gw = gateway(up.addr, "", TENANTS).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // Fast path: no body.
    exchange_on(&mut s, &get("//API/v2/./tickets/?page=2")).await;
    // hyper (a Connection field is hyper's to honour): the same call.
    let req =
        format!("GET //API/v2/./tickets/?page=2 HTTP/1.1\r\nHost: {ACME}\r\n{AUTH}connection: keep-alive\r\n\r\n");
    exchange_on(&mut s, &req).await;
    // Fast path with a small body; then hyper with a body above its limit.
    let small = post("/api/v2/tickets", JSON, b"{}");
    s.write_all(&small).await.unwrap();
    read_answer(&mut s, false).await;
    let large = post("/api/v2/tickets", JSON, &vec![b' '; deskgate::fast::MAX_BODY + 1]);
    s.write_all(&large).await.unwrap();
    read_answer(&mut s, false).await;
    let heads = up.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 4);
    let fields = |h: &str| {
        let mut lines: Vec<String> = h
            .lines()
            .map(str::to_lowercase)
            .filter(|l| !l.is_empty() && !l.starts_with("x-request-id:") && !l.starts_with("content-length:"))
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(fields(&heads[0]), fields(&heads[1]));
    assert!(heads[0].starts_with("GET /api/v2/tickets?page=2 HTTP/1.1\r\n"), "{}", heads[0]);
    assert_eq!(fields(&heads[2]), fields(&heads[3]));
    assert!(heads[2].to_lowercase().contains("content-length: 2\r\n"), "{}", heads[2]);
}

/// The gateway's own answer fields are rendered for the fast path as text and
/// for hyper into a header map: the client must not be able to tell which.
#[tokio::test]
async fn the_client_sees_the_same_answer_fields_from_both_paths() {
    let up = ScriptedUpstream::start(answers).await;
    let gw = gateway(up.addr, "", TENANTS).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let (fast, _) = exchange_on(&mut s, &get("/api/v2/tickets")).await;
    let req = format!("GET /api/v2/tickets HTTP/1.1\r\nHost: {ACME}\r\n{AUTH}connection: keep-alive\r\n\r\n");
    let (slow, _) = exchange_on(&mut s, &req).await;
    let fields = |h: &str| -> Vec<(String, String)> {
        let mut f: Vec<(String, String)> =
            h.lines().skip(1).filter_map(|l| l.split_once(": ")).map(|(n, v)| (n.to_owned(), v.to_owned())).collect();
        f.sort();
        f
    };
    let (fast, slow) = (fields(&fast), fields(&slow));
    let names = |f: &[(String, String)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&fast), names(&slow));
    for (a, b) in fast.iter().zip(&slow) {
        match a.0.as_str() {
            // Per call by nature.
            "x-request-id" | "date" => {}
            // One call later, one credit less.
            "x-ratelimit-remaining" => assert_eq!(a.1.parse::<u32>().unwrap(), b.1.parse::<u32>().unwrap() + 1),
            "ratelimit" => {
                let r =
                    |v: &str| v.split(";r=").nth(1).and_then(|r| r.split(';').next()).unwrap().parse::<u32>().unwrap();
                assert_eq!(r(&a.1), r(&b.1) + 1, "{a:?} {b:?}");
                assert_eq!(a.1.replace(&format!("r={}", r(&a.1)), ""), b.1.replace(&format!("r={}", r(&b.1)), ""));
            }
            _ => assert_eq!(a, b),
        }
    }
    assert!(fast.iter().any(|(n, v)| n == "ratelimit-policy" && v.contains("\"account\";q=400;w=60")), "{fast:?}");
}

/// A refusal is rendered for the fast path straight into its buffers and for
/// hyper as a response: status, fields and body must read the same.
#[tokio::test]
async fn the_client_sees_the_same_refusals_from_both_paths() {
    let up = ScriptedUpstream::start(answers).await;
    let gw = gateway(up.addr, "", TENANTS).await;
    // `connection: keep-alive` hands the connection to hyper for good: the
    // fast path's calls go on a connection of their own.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut hyper_s = TcpStream::connect(gw.addr).await.unwrap();
    let both = |extra: &str, host: &str, auth: &str, method: &str| {
        let head = |more: &str| format!("{method} /api/v2/tickets HTTP/1.1\r\nHost: {host}\r\n{auth}{extra}{more}\r\n");
        (head(""), head("connection: keep-alive\r\n"))
    };
    // A refusal's answer with what differs from call to call masked: the
    // request id, the date, and (a 429) the seconds to wait, which can
    // differ by one between two calls a moment apart.
    let masked = |head: &str, body: &[u8]| -> (Vec<String>, String) {
        let retry = head.lines().find_map(|l| l.strip_prefix("retry-after: ")).map(str::to_owned);
        let mask = |t: &str| match &retry {
            Some(r) => t.replace(&format!("after {r} seconds"), "after N seconds").replace(&format!(";t={r}"), ";t=N"),
            None => t.to_owned(),
        };
        let mut fields: Vec<String> = head
            .lines()
            .filter(|l| !l.starts_with("x-request-id:") && !l.starts_with("date:") && !l.starts_with("retry-after:"))
            .map(mask)
            .collect();
        fields.sort();
        fields.push(format!("retry-after present: {}", retry.is_some()));
        (fields, mask(&String::from_utf8_lossy(body)))
    };
    let tiny = "tiny.freshdesk.com";
    for _ in 0..3 {
        let (head, _) = exchange_on(&mut s, &both("", tiny, AUTH, "GET").0).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
    }
    let cases = [
        ("accept: text/html\r\n", ACME, AUTH, "GET", "406"),
        ("", ACME, "", "GET", "401"),
        ("", ACME, AUTH, "PATCH", "405"),
        ("", "nobody.freshdesk.com", AUTH, "GET", "404"),
        ("", tiny, AUTH, "GET", "429"),
    ];
    for (extra, host, auth, method, status) in cases {
        let (fast, slow) = both(extra, host, auth, method);
        let (fast_head, fast_body) = exchange_on(&mut s, &fast).await;
        let (slow_head, slow_body) = exchange_on(&mut hyper_s, &slow).await;
        assert!(fast_head.starts_with(&format!("http/1.1 {status}")), "{fast_head}");
        assert!(fast_head.contains("\r\ndate: "), "{fast_head}");
        assert_eq!(fast_head.matches("\r\nretry-after: ").count(), usize::from(status == "429"), "{fast_head}");
        assert_eq!(masked(&fast_head, &fast_body), masked(&slow_head, &slow_body), "{status}");
    }
    // Nothing refused reached the upstream.
    assert_eq!(up.heads.lock().unwrap().len(), 3);
}

/// `[server] fast_path = false` serves a plain call — one the fast path would
/// take — through hyper. The one difference a client can see: the fast path
/// copies the upstream's field names as sent, hyper writes them lower case.
#[tokio::test]
async fn fast_path_false_in_config_serves_plain_calls_through_hyper() {
    let up = ScriptedUpstream::start(answers).await;
    for (fast_path, field) in [(true, "\r\nX-Upstream-Case: Kept\r\n"), (false, "\r\nx-upstream-case: Kept\r\n")] {
        let gw = gateway(up.addr, &format!("fast_path = {fast_path}"), TENANTS).await;
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(get("/api/v2/tickets?shape=cased").as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(5), read_head(&mut s, &mut buf)).await.unwrap().unwrap();
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains(field), "fast_path = {fast_path}: {head}");
    }
    assert_eq!(up.heads.lock().unwrap().len(), 2);
}
