//! What was judged is what is sent (docs/reference.md "Proxying"), over raw sockets
//! on both paths: for every spelling that could make the upstream see a
//! different request, or a different tenant, than the one the gateway
//! charged, each test shows what the client got, what reached the upstream
//! (nothing, or the fields, path and body that matter) and what was charged.
//! RELIABILITY.md ("What was judged is what is sent") lists every shape.

mod support;

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::*;

/// The issue's `A`: a tenant's host and a credential of the right shape.
const A: &str = "Host: acme.freshdesk.com\r\nAuthorization: Basic eDp4\r\n";
/// What a smuggler hides in a body.
const SMUGGLED: &str = "GET /api/v2/smuggled HTTP/1.1\r\nHost: acme.freshdesk.com\r\nAuthorization: Basic eDp4\r\n\r\n";
const UNTRUSTED: &str = "trusted_proxies = []";
const TRUSTED: &str = "trusted_proxies = [\"127.0.0.1/32\"]";

/// One answer as the client read it.
struct Got {
    status: u16,
    /// The head, lower-cased.
    head: String,
    /// The body as sent (still chunked if it was).
    body: Vec<u8>,
}

impl Got {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{:?}", self.head, self.body))
    }
    /// `code` of a refusal, or of the first error of a validation failure.
    fn code(&self) -> String {
        let v = self.json();
        v["code"].as_str().or_else(|| v["errors"][0]["code"].as_str()).unwrap_or_default().to_owned()
    }
    /// The field a 400 names.
    fn field(&self) -> String {
        self.json()["errors"][0]["field"].as_str().unwrap_or_default().to_owned()
    }
    /// Every value of the answer field `name` (lower-case).
    fn fields(&self, name: &str) -> Vec<String> {
        let prefix = format!("{name}:");
        self.head.lines().filter_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().to_owned()).collect()
    }
    fn text(&self) -> String {
        format!("{}{}", self.head, String::from_utf8_lossy(&self.body))
    }
}

/// Writes `bytes` on `s` and reads one answer (head only for a `HEAD`).
async fn send_on(s: &mut TcpStream, bytes: &[u8]) -> Got {
    s.write_all(bytes).await.expect("write");
    let (head, body) = read_answer(s, bytes.starts_with(b"HEAD")).await;
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Got { status, head, body }
}

/// `bytes` on a fresh connection; its one answer. No `Connection` field is
/// added: on the fast path it would hand the request to hyper.
async fn one(addr: std::net::SocketAddr, bytes: &[u8]) -> Got {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    send_on(&mut s, bytes).await
}

/// A request: `METHOD target`, `A`, the `extra` lines (each ending CRLF),
/// the blank line, `body`.
fn req(method: &str, target: &str, extra: &str, body: &str) -> Vec<u8> {
    format!("{method} {target} HTTP/1.1\r\n{A}{extra}\r\n{body}").into_bytes()
}

/// A JSON body with its framing fields.
fn json_body(body: &str) -> String {
    format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len())
}

/// Every value of the request field `name` as the upstream received it.
fn values(r: &Received, name: &str) -> Vec<String> {
    r.headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect()
}

/// What `policy` of `tenant` has left in its window (admin `/tenants/NAME`).
async fn left(admin: std::net::SocketAddr, tenant: &str, policy: &str) -> u64 {
    let v = admin_get(admin, &format!("/tenants/{tenant}")).await.json();
    let windows = v["windows"].as_array().cloned().unwrap_or_default();
    windows
        .iter()
        .find(|w| w["policy"] == policy)
        .and_then(|w| w["left"].as_u64())
        .unwrap_or_else(|| panic!("no {policy} window: {v}"))
}

async fn setup(path: Path, server_extra: &str) -> (StrictUpstream, TestGateway) {
    let up = StrictUpstream::start().await;
    let gw = gateway_on(path, up.addr, server_extra, TENANTS).await;
    (up, gw)
}

/// Asserts a refusal that reached the upstream with nothing and charged
/// nobody: `status`, `code` (and for a 400 the `field`).
async fn assert_refused_alone(
    up: &StrictUpstream,
    gw: &TestGateway,
    shape: &str,
    bytes: &[u8],
    status: u16,
    code: &str,
    field: Option<&str>,
) {
    let (before, acme) = (up.received().len(), used(gw.admin, "acme").await);
    let got = one(gw.addr, bytes).await;
    assert_eq!(got.status, status, "{shape}: {}", got.text());
    assert_eq!(got.code(), code, "{shape}: {}", got.text());
    if let Some(field) = field {
        assert_eq!(got.field(), field, "{shape}: {}", got.text());
    }
    assert_eq!(up.received().len(), before, "{shape}: reached the upstream: {:?}", up.received().last());
    assert_eq!(used(gw.admin, "acme").await, acme, "{shape}: charged");
}

/// Asserts what refusals made before the path is judged (request form,
/// framing, `Connection`) leave behind: each counted for the tenant its
/// `Host` names (`acme` here), as `(status, reason, times)` in `counted`,
/// and nothing for anyone else — a missing or doubled `Host` names no
/// tenant, so it is counted for nobody.
async fn assert_counted_for_acme_only(gw: &TestGateway, logs: &Logs, shape: &str, counted: &[(u16, &str, u32)]) {
    for &(status, reason, times) in counted {
        assert_refusal_counted(gw, Some(logs), "acme", "other", status, reason, times).await;
    }
    let samples = metrics::scrape(gw.admin).await;
    for name in ["deskgate_requests_total", "deskgate_rejected_total"] {
        let others: Vec<_> =
            samples.iter().filter(|s| s.name == name && s.labels["tenant"] != "acme").map(|s| &s.labels).collect();
        assert!(others.is_empty(), "{shape}: {name} counted {others:?}");
    }
    // One access line per refusal: under acme where its Host named acme;
    // one with no tenant where no Host named anyone.
    let total: u32 = counted.iter().map(|c| c.2).sum();
    let refused = logs.access("refused");
    let acme = refused.iter().filter(|l| l["tenant"] == "acme").count();
    assert_eq!(acme, total as usize, "{shape}: one refused line each: {refused:?}");
    let others: Vec<_> = refused.iter().filter(|l| l.get("tenant").is_some_and(|t| t != "acme")).collect();
    assert!(others.is_empty(), "{shape}: logged under another tenant: {others:?}");
}

/// Decodes a chunked body (sizes, data, the last chunk; no trailers).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap_or("0").trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// Fields that claim something about the call's origin, with a value each.
const ORIGIN_CLAIMS: [(&str, &str); 7] = [
    ("Forwarded", "for=1.2.3.4;host=globex.freshdesk.com;proto=https"),
    ("X-Forwarded-Ssl", "on"),
    ("X-Forwarded-Scheme", "https"),
    ("X-Forwarded-Port", "443"),
    ("X-Real-IP", "1.2.3.4"),
    ("True-Client-IP", "1.2.3.4"),
    ("Front-End-Https", "on"),
];

fn origin_claims() -> String {
    let mut lines: String = ORIGIN_CLAIMS.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
    lines
        .push_str("X-Forwarded-For: 9.9.9.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: globex.freshdesk.com\r\n");
    lines
}

// ---------------------------------------------------------------- scripted upstream answers (item 9)

const JSON_7: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"id\":7}";

fn answers(path: &str) -> Answer {
    match path {
        // Content-Length beside Transfer-Encoding: the chunked framing wins.
        "/api/v2/tickets/1" => Answer::Close(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                .to_vec(),
        ),
        "/api/v2/tickets/2" => Answer::Close(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello".to_vec()),
        "/api/v2/tickets/3" => Answer::Close(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello".to_vec()),
        "/api/v2/tickets/4" => {
            Answer::Close(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec())
        }
        "/api/v2/tickets/5" => Answer::Close(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n".to_vec()),
        // An answer to HEAD, then (once it looks complete) a whole answer
        // nobody asked for, on a connection the gateway may pool.
        "/api/v2/tickets/6" => Answer::Late(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n".to_vec(),
            Duration::from_millis(100),
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n\"POISON\"".to_vec(),
        ),
        "/api/v2/tickets/7" => Answer::KeepOpen(JSON_7.to_vec()),
        // Trailer fields, one that would reframe the answer: none is relayed.
        "/api/v2/tickets/8" => Answer::KeepOpen(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Content-Length\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 99\r\nX-Sum: 1\r\n\r\n"
                .to_vec(),
        ),
        // Reads the call, then closes without a byte: the call ran, its answer is lost.
        "/api/v2/tickets/42" => Answer::Close(Vec::new()),
        _ => Answer::KeepOpen(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".to_vec()),
    }
}

/// An answer to HEAD followed by late bytes: the next call, another
/// tenant's, gets its own clean answer, not those bytes — whether it comes
/// at once (the late bytes arrive after it was sent) or after them (they
/// wait on the idle socket).
async fn late_bytes_after_head_reach_nobody(path: Path) {
    let up = ScriptedUpstream::start(answers).await;
    let gw = gateway_on(path, up.addr, UNTRUSTED, TENANTS).await;
    for (round, pause) in [Duration::ZERO, Duration::from_millis(400)].into_iter().enumerate() {
        let got = one(gw.addr, &req("HEAD", "/api/v2/tickets/6", "", "")).await;
        assert_eq!(got.status, 200, "{}", got.text());
        // The late bytes come 100 ms after the answer.
        tokio::time::sleep(pause).await;
        let tiny = b"GET /api/v2/tickets/7 HTTP/1.1\r\nHost: tiny.freshdesk.com\r\nAuthorization: Basic eDp4\r\n\r\n";
        let got = one(gw.addr, tiny).await;
        assert_eq!(got.status, 200, "{pause:?}: {}", got.text());
        assert_eq!(got.body, b"{\"id\":7}", "{pause:?}: tiny got another call's bytes: {}", got.text());
        let heads = up.heads.lock().unwrap().clone();
        let sevens = heads.iter().filter(|h| h.starts_with("GET /api/v2/tickets/7 ")).count();
        assert_eq!(sevens, round + 1, "{pause:?}: tiny's call reached the upstream {sevens} times: {heads:?}");
        assert_eq!(used(gw.admin, "tiny").await, round as u64 + 1);
        // Let the late bytes of this round land before the next.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// Every test runs on the fast path and on hyper: `fast::NAME`, `hyper::NAME`.
support::on_both_paths! {
    /// Item 1: from a peer not in `trusted_proxies`, every claim about the
    /// call's origin is dropped and the forwarding fields are the gateway's.
    #[tokio::test]
    async fn an_untrusted_peer_s_origin_claims_never_reach_the_upstream() {
        let (up, gw) = setup(PATH, UNTRUSTED).await;
        let got = one(gw.addr, &req("GET", "/api/v2/tickets", &origin_claims(), "")).await;
        assert_eq!(got.status, 200, "{}", got.text());
        let r = up.received().pop().expect("forwarded");
        for (name, _) in ORIGIN_CLAIMS {
            assert!(values(&r, name).is_empty(), "{name} reached the upstream: {:?}", r.headers);
        }
        assert_eq!(values(&r, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(values(&r, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&r, "x-forwarded-host"), ["acme.freshdesk.com"]);
        assert_eq!(values(&r, "host"), ["acme.freshdesk.com"]);
        assert_eq!(used(gw.admin, "acme").await, 1);
    }

    /// Item 1, trusted: a trusted proxy's client address fields pass and its
    /// chain is extended; `Forwarded` and the other `X-Forwarded-*` do not.
    #[tokio::test]
    async fn a_trusted_peer_s_address_fields_pass_and_the_rest_is_still_dropped() {
        let (up, gw) = setup(PATH, TRUSTED).await;
        let got = one(gw.addr, &req("GET", "/api/v2/tickets", &origin_claims(), "")).await;
        assert_eq!(got.status, 200, "{}", got.text());
        let r = up.received().pop().expect("forwarded");
        assert_eq!(values(&r, "x-real-ip"), ["1.2.3.4"]);
        assert_eq!(values(&r, "true-client-ip"), ["1.2.3.4"]);
        for name in ["forwarded", "x-forwarded-ssl", "x-forwarded-scheme", "x-forwarded-port", "front-end-https"] {
            assert!(values(&r, name).is_empty(), "{name} reached the upstream: {:?}", r.headers);
        }
        assert_eq!(values(&r, "x-forwarded-for"), ["9.9.9.9, 127.0.0.1"]);
        // A trusted proxy may vouch for HTTPS (step 2's notion of it).
        assert_eq!(values(&r, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&r, "x-forwarded-host"), ["acme.freshdesk.com"]);
        assert_eq!(values(&r, "host"), ["acme.freshdesk.com"]);
        assert_eq!(used(gw.admin, "acme").await, 1);
    }

    /// Item 2: a trusted proxy's `X-Forwarded-Host` picks neither the budget
    /// nor what the upstream is told.
    #[tokio::test]
    async fn a_trusted_proxy_s_forwarded_host_is_replaced_by_the_charged_tenant_s_domain() {
        let (up, gw) = setup(PATH, TRUSTED).await;
        for (n, xfh) in ["globex.freshdesk.com", "tiny.freshdesk.com", "tiny.freshdesk.com, globex.freshdesk.com"]
            .into_iter()
            .enumerate()
        {
            let got = one(gw.addr, &req("GET", "/api/v2/tickets", &format!("X-Forwarded-Host: {xfh}\r\n"), "")).await;
            assert_eq!(got.status, 200, "{xfh}: {}", got.text());
            let r = up.received().pop().expect("forwarded");
            assert_eq!(values(&r, "x-forwarded-host"), ["acme.freshdesk.com"], "{xfh}");
            assert_eq!(values(&r, "host"), ["acme.freshdesk.com"], "{xfh}");
            assert_eq!(used(gw.admin, "acme").await, n as u64 + 1, "{xfh}: charged acme");
        }
        assert_eq!(used(gw.admin, "tiny").await, 0);
    }

    /// Item 3: a field name with `_` is dropped (as nginx does); the body is
    /// framed by the real `Content-Length` alone, and what it hides stays body.
    #[tokio::test]
    async fn underscore_field_names_never_reach_the_upstream_and_frame_nothing() {
        let (up, gw) = setup(PATH, UNTRUSTED).await;
        let body = format!("0\r\n\r\n{SMUGGLED}");
        for (n, alias) in [
            "Transfer_Encoding: chunked\r\n",
            "Content_Length: 0\r\n",
            "X_Forwarded_Host: globex.freshdesk.com\r\n",
            "transfer_encoding: chunked\r\nX_Forwarded_For: 1.2.3.4\r\n",
        ]
        .into_iter()
        .enumerate()
        {
            let before = up.received().len();
            let got = one(gw.addr, &req("POST", "/api/v2/tickets", &format!("{}{alias}", json_body(&body)), &body)).await;
            assert_eq!(got.status, 200, "{alias}: {}", got.text());
            // Time for a hidden request to run, had it been read as one.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let got: Vec<Received> = up.received().into_iter().skip(before).collect();
            assert_eq!(got.len(), 1, "{alias}: {got:?}");
            let r = &got[0];
            assert_eq!((r.method.as_str(), r.uri.as_str()), ("POST", "/api/v2/tickets"), "{alias}");
            assert!(r.complete, "{alias}");
            assert_eq!(r.body, body.as_bytes(), "{alias}: the body is the Content-Length's bytes");
            assert_eq!(values(r, "content-length"), [body.len().to_string()], "{alias}");
            assert!(r.headers.keys().all(|k| !k.as_str().contains('_')), "{alias}: {:?}", r.headers);
            assert_eq!(values(r, "x-forwarded-host"), ["acme.freshdesk.com"], "{alias}");
            assert_eq!(values(r, "x-forwarded-for"), ["127.0.0.1"], "{alias}");
            assert_eq!(used(gw.admin, "acme").await, n as u64 + 1, "{alias}: one charge");
        }
        assert!(up.received().iter().all(|r| !r.uri.contains("smuggled")), "{:?}", up.received());
    }

    /// Item 4: a path that cannot be normalised safely is 400 whatever it
    /// spells, API or portal; nothing forwarded, nothing charged.
    #[tokio::test]
    async fn unnormalisable_paths_are_400_whatever_they_spell() {
        let logs = Logs::capture();
        let (up, gw) = setup(PATH, UNTRUSTED).await;
        let put = json_body("{}");
        // API spellings: refused as the API call they are, under the tenant
        // the host names, before the endpoint is known.
        for (method, target, extra, body) in [
            ("GET", "/%61pi/v2/tickets%2F", "", ""),
            ("GET", "/%61pi%2Fv2%2Ftickets", "", ""),
            ("GET", "/%41PI/v2/tickets/%2F", "", ""),
            ("GET", "/\\api/v2/tickets", "", ""),
            ("PUT", "/%61pi/v2/tickets/42%2F", put.as_str(), "{}"),
            ("GET", "/api/v2/tickets;x", "", ""),
            ("GET", "/api/v2/tickets%3Bx", "", ""),
        ] {
            let shape = format!("{method} {target}");
            assert_refused_alone(&up, &gw, &shape, &req(method, target, extra, body), 400, "invalid_value", Some("path"))
                .await;
        }
        assert_refusal_counted(&gw, Some(&logs), "acme", "other", 400, "invalid_value", 7).await;
        // Portal spellings that cannot be normalised are counted alike,
        // under the tenant the host names.
        for target in ["/support/solutions%2Farticles", "/support/%5Capi/v2/tickets"] {
            let shape = format!("GET {target}");
            assert_refused_alone(&up, &gw, &shape, &req("GET", target, "", ""), 400, "invalid_value", Some("path")).await;
        }
        assert_refusal_counted(&gw, Some(&logs), "acme", "other", 400, "invalid_value", 9).await;
        // `;` parameters in the first segment (`/api;x/...`) normalise
        // outside the API, and are refused as the API call a server that
        // strips them would route: counted under the host's tenant too.
        for target in ["/api;x/v2/tickets", "/api%3Bx/v2/tickets"] {
            let shape = format!("GET {target}");
            assert_refused_alone(&up, &gw, &shape, &req("GET", target, "", ""), 400, "invalid_value", Some("path")).await;
        }
        assert_refusal_counted(&gw, Some(&logs), "acme", "other", 400, "invalid_value", 11).await;
    }

    /// Item 5: method-override fields are dropped from an API call, which is
    /// charged as the method it was sent with.
    #[tokio::test]
    async fn method_override_fields_never_reach_the_upstream() {
        let (up, gw) = setup(PATH, UNTRUSTED).await;
        for (n, field) in ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"].into_iter().enumerate() {
            let contact_list = left(gw.admin, "acme", "contact_list").await;
            let extra = format!("{}{field}: GET\r\n", json_body("{}"));
            let got = one(gw.addr, &req("POST", "/api/v2/contacts", &extra, "{}")).await;
            assert_eq!(got.status, 200, "{field}: {}", got.text());
            assert_eq!(got.fields("x-ratelimit-used-currentrequest"), ["1"], "{field}");
            let r = up.received().pop().expect("forwarded");
            assert_eq!((r.method.as_str(), r.body.as_slice()), ("POST", &b"{}"[..]), "{field}");
            assert!(values(&r, field).is_empty(), "{field} reached the upstream: {:?}", r.headers);
            assert_eq!(used(gw.admin, "acme").await, n as u64 + 1, "{field}: charged as other");
            assert_eq!(left(gw.admin, "acme", "contact_list").await, contact_list, "{field}: charged as a contact list");
        }
    }

    /// Item 5: a `.json` format suffix is priced as the resource it names and
    /// forwarded as sent.
    #[tokio::test]
    async fn a_json_format_suffix_is_priced_as_the_resource_it_names() {
        let (up, gw) = setup(PATH, UNTRUSTED).await;
        let list = left(gw.admin, "acme", "ticket_list").await;
        let got = one(gw.addr, &req("GET", "/api/v2/tickets.json?include=a,b,c", "", "")).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.fields("x-ratelimit-used-currentrequest"), ["7"]);
        assert_eq!(left(gw.admin, "acme", "ticket_list").await, list - 7);
        assert_eq!(up.received().pop().expect("forwarded").uri, "/api/v2/tickets.json?include=a,b,c");
        let got = one(gw.addr, &req("GET", "/api/v2/tickets/42.json", "", "")).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.fields("x-ratelimit-used-currentrequest"), ["1"]);
        assert_eq!(left(gw.admin, "acme", "ticket_list").await, list - 7, "the ticket view is not the list");
        assert_eq!(used(gw.admin, "acme").await, 8);
        assert_eq!(up.received().pop().expect("forwarded").uri, "/api/v2/tickets/42.json");
    }

    /// Item 6: `Connection` may not name a field the gateway checks or sets.
    #[tokio::test]
    async fn connection_options_naming_policed_fields_are_400() {
        let logs = Logs::capture();
        let (up, gw) = setup(PATH, UNTRUSTED).await;
        for option in ["Authorization", "Content-Type", "Host", "X-Forwarded-For", "accept", "X-Request-Id"] {
            let bytes = req("GET", "/api/v2/tickets", &format!("Connection: keep-alive, {option}\r\n"), "");
            let shape = format!("Connection: keep-alive, {option}");
            assert_refused_alone(&up, &gw, &shape, &bytes, 400, "invalid_value", Some("Connection")).await;
        }
        assert_counted_for_acme_only(&gw, &logs, "Connection", &[(400, "invalid_value", 6)]).await;
    }

    /// Item 7: a GET or HEAD API call with a body is 400, and the body is
    /// never read as a request of its own.
    #[tokio::test]
    async fn a_body_on_get_or_head_is_400_and_never_read_as_a_request() {
        let logs = Logs::capture();
        let (up, gw) = setup(PATH, UNTRUSTED).await;
        let include = "{\"include\":\"a,b,c\"}";
        assert_eq!(include.len(), 19);
        for method in ["GET", "HEAD"] {
            for body in [include, SMUGGLED] {
                let shape = format!("{method} with {body:?}");
                let mut s = TcpStream::connect(gw.addr).await.unwrap();
                let got = send_on(&mut s, &req(method, "/api/v2/tickets", &json_body(body), body)).await;
                assert_eq!(got.status, 400, "{shape}: {}", got.text());
                if method == "GET" {
                    assert_eq!((got.code().as_str(), got.field().as_str()), ("invalid_value", "body"), "{shape}");
                }
                // The body was skipped, not read as the next request: the
                // connection stays in step and serves a plain GET next.
                let follow = req("GET", "/api/v2/tickets/1", "", "");
                s.write_all(&follow).await.expect("the connection stays open");
                let mut out = Vec::new();
                read_until_close_or_answer(&mut s, &mut out).await;
                let next = String::from_utf8_lossy(&out);
                assert!(next.starts_with("HTTP/1.1 200"), "{shape}: the next answer: {next}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                let seen: Vec<String> = up.received().iter().map(|r| r.uri.clone()).collect();
                assert_eq!(seen, ["/api/v2/tickets/1"], "{shape}: only the follow-up reached the upstream");
                up.received.lock().unwrap().clear();
            }
        }
        assert_eq!(left(gw.admin, "acme", "ticket_list").await, 100, "no ticket list was charged");
        assert_eq!(used(gw.admin, "acme").await, 4, "only the four follow-ups were charged");
        // Refused as the ticket list each call is, after the path was judged.
        assert_refusal_counted(&gw, Some(&logs), "acme", "ticket_list", 400, "invalid_value", 4).await;
    }

    /// Item 8: a call the upstream read and dropped without answering is 502,
    /// executed once and never sent again.
    #[tokio::test]
    async fn a_call_the_upstream_dropped_unanswered_is_502_and_never_sent_twice() {
        let up = ScriptedUpstream::start(answers).await;
        let gw = gateway_on(PATH, up.addr, UNTRUSTED, TENANTS).await;
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let got = send_on(&mut s, &req("GET", "/api/v2/tickets/1000", "", "")).await;
        assert_eq!(got.status, 200, "{}", got.text());
        // Let the upstream connection go back to the pool.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
        let got = send_on(&mut s, &req("PUT", "/api/v2/tickets/42", &json_body("{}"), "{}")).await;
        assert_eq!(got.status, 502, "{}", got.text());
        assert_eq!(got.code(), "bad_gateway");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let heads = up.heads.lock().unwrap().clone();
        let puts = heads.iter().filter(|h| h.starts_with("PUT /api/v2/tickets/42 ")).count();
        assert_eq!(puts, 1, "the PUT ran {puts} times: {heads:?}");
        assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1, "the PUT went on the pooled socket, once");
        assert_eq!(metrics::counter(gw.admin, "deskgate_upstream_resends_total", &[]).await, 0.0);
        assert_eq!(used(gw.admin, "acme").await, 2, "one charge each");
    }

    /// Item 9: the upstream's framing is read by one rule and relayed so the
    /// client reads exactly what the upstream meant.
    #[tokio::test]
    async fn upstream_framing_is_validated_and_normalised() {
        let up = ScriptedUpstream::start(answers).await;
        let gw = gateway_on(PATH, up.addr, UNTRUSTED, TENANTS).await;
        let got = one(gw.addr, &req("GET", "/api/v2/tickets/1", "", "")).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert!(got.fields("content-length").is_empty(), "{}", got.text());
        assert_eq!(got.fields("transfer-encoding"), ["chunked"], "{}", got.text());
        assert_eq!(dechunk(&got.body), b"hello world", "{}", got.text());

        let got = one(gw.addr, &req("GET", "/api/v2/tickets/2", "", "")).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.fields("content-length"), ["5"], "{}", got.text());
        assert_eq!(got.body, b"hello");

        for (shape, path) in [("Content-Length: +5", "/api/v2/tickets/3"), ("an unrequested 101", "/api/v2/tickets/4")] {
            let got = one(gw.addr, &req("GET", path, "", "")).await;
            assert_eq!((got.status, got.code().as_str()), (502, "bad_gateway"), "{shape}: {}", got.text());
            assert!(!got.text().contains("hello") && !got.text().contains("websocket"), "{shape}: {}", got.text());
        }

        let got = one(gw.addr, &req("GET", "/api/v2/tickets/5", "", "")).await;
        assert_eq!(got.status, 204, "{}", got.text());
        assert!(got.fields("content-length").is_empty(), "{}", got.text());

        // Trailer fields are not relayed: the body ends with the last chunk
        // and an empty trailer section.
        let got = one(gw.addr, &req("GET", "/api/v2/tickets/8", "", "")).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert!(got.body.ends_with(b"0\r\n\r\n"), "{}", got.text());
        // The body, not the whole text: a request id's hex may hold "99".
        let body = String::from_utf8_lossy(&got.body).into_owned();
        assert!(!body.contains("99") && got.fields("x-sum").is_empty(), "{}", got.text());
        assert_eq!(dechunk(&got.body), b"hello", "{}", got.text());
    }

    /// Item 10: request framing and targets the gateway answers itself.
    #[tokio::test]
    async fn odd_framing_and_targets_are_refused_at_the_gateway() {
        let logs = Logs::capture();
        let (up, gw) = setup(PATH, UNTRUSTED).await;
        let chunked = "5\r\nhello\r\n0\r\n\r\n";
        let post = |te: &str| req("POST", "/api/v2/tickets", &format!("Content-Type: application/json\r\n{te}"), chunked);
        let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
            ("TE gzip, chunked", post("Transfer-Encoding: gzip, chunked\r\n"), 501, "unsupported_transfer_coding"),
            ("TE identity, chunked", post("Transfer-Encoding: identity, chunked\r\n"), 501, "unsupported_transfer_coding"),
            ("TE chunked, chunked", post("Transfer-Encoding: chunked, chunked\r\n"), 400, "invalid_value"),
            (
                "two TE chunked fields",
                post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
                400,
                "invalid_value",
            ),
            ("a portal call without Host", b"GET /support/home HTTP/1.1\r\n\r\n".to_vec(), 400, "invalid_value"),
            (
                "a portal call with two Host",
                b"GET /support/home HTTP/1.1\r\nHost: acme.freshdesk.com\r\nHost: tiny.freshdesk.com\r\n\r\n".to_vec(),
                400,
                "invalid_value",
            ),
            (
                "CONNECT",
                b"CONNECT acme.freshdesk.com:443 HTTP/1.1\r\nHost: acme.freshdesk.com:443\r\n\r\n".to_vec(),
                405,
                "method_not_allowed",
            ),
            ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: acme.freshdesk.com\r\n\r\n".to_vec(), 400, "invalid_value"),
        ];
        for (shape, bytes, status, code) in cases {
            assert_refused_alone(&up, &gw, shape, &bytes, status, code, None).await;
        }
        let counted = [(501, "unsupported_transfer_coding", 2), (400, "invalid_value", 3), (405, "method_not_allowed", 1)];
        assert_counted_for_acme_only(&gw, &logs, "framing and targets", &counted).await;
        let protocol = metrics::counter(gw.admin, "deskgate_upstream_errors_total", &[("kind", "protocol")]).await;
        assert_eq!(protocol, 0.0, "a refusal is no upstream error");
    }
}

/// Reads until one answer's head and its `Content-Length` body are in, or the
/// peer closes, or a second passes.
async fn read_until_close_or_answer(s: &mut TcpStream, out: &mut Vec<u8>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_lowercase();
            let length =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok());
            if out.len() >= end + 4 + length.unwrap_or(0) {
                return;
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(s, &mut chunk)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
}

/// Item 9: an answer to HEAD followed by late bytes poisons no other
/// tenant's call. Written out per path (not in `on_both_paths!`) because
/// only the hyper case is ignored.
mod late_bytes {
    use super::*;

    /// The raw pool never reuses a socket after an answer without a body.
    #[tokio::test]
    async fn fast() {
        late_bytes_after_head_reach_nobody(Path::Fast).await;
    }

    #[tokio::test]
    async fn hyper() {
        late_bytes_after_head_reach_nobody(Path::Hyper).await;
    }
}

/// Item 4 over h2 prior knowledge (hyper serves h2 on either path).
#[tokio::test]
async fn an_unnormalisable_path_over_h2_is_400() {
    let up = StrictUpstream::start().await;
    let gw = gateway_on(Path::Hyper, up.addr, UNTRUSTED, TENANTS).await;
    for path in ["/%61pi/v2/tickets%2F", "/support/a%2Fb"] {
        let got = h2_get(gw.addr, "acme.freshdesk.com", path).await;
        assert_eq!(got.status, 400, "{path}: {}", got.text());
        assert_eq!(got.json()["errors"][0]["field"], "path", "{path}");
    }
    assert!(up.received().is_empty(), "{:?}", up.received());
    assert_eq!(used(gw.admin, "acme").await, 0);
}
