//! Logs: JSON when not on a TTY, one access-log line per call (`served` or
//! `refused`, target `deskgate::access`) with what happened to it, and never
//! an API key or `Authorization` value — even at `RUST_LOG=debug`, which
//! turns deskgate's own debug lines on but leaves its dependencies at warn.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::ops::*;

const BEARER: &str = "bEaReR-tOkEn-9f8e7d6c5b4a";

fn call(path: &str, auth: Option<&str>, extra: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(path).header("host", "acme.freshdesk.com");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_with_one_line_per_refusal_and_never_show_credentials() {
    let upstream = start_upstream().await;
    let dir = ConfigDir::new();
    // Through hyper, whose client logs every connect and pool checkout at
    // debug: `RUST_LOG=debug` must not bring those in.
    let path = dir.write("deskgate.toml", &config_toml(&format!("http://{upstream}"), "", "fast_path = false", ""));
    let gw = run_binary(&path, &[("RUST_LOG", "debug")]);
    let basic = basic_auth();
    let bearer = format!("Bearer {BEARER}");

    // Served (debug), then refused for each reason we can provoke, each with credentials.
    let ok = send(gw.api, call("/api/v2/tickets", Some(&basic), &[])).await;
    assert_eq!(ok.status, StatusCode::OK);
    let ok = send(gw.api, call("/api/v2/contacts", Some(&bearer), &[])).await;
    assert_eq!(ok.status, StatusCode::OK);
    let not_acceptable = send(
        gw.api,
        call("/api/v2/tickets", Some(&bearer), &[("accept", "application/xml"), ("x-request-id", "req-406-abc")]),
    )
    .await;
    assert_eq!(not_acceptable.status, StatusCode::NOT_ACCEPTABLE);
    let unauthorized = send(gw.api, call("/api/v2/tickets", None, &[])).await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    for _ in 0..2 {
        let _ = send(gw.api, call("/api/v2/tickets", Some(&basic), &[])).await;
    }
    let limited = send(gw.api, call("/api/v2/tickets", Some(&basic), &[])).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);

    // Let the last lines reach the pipe.
    let rid = limited.header("x-request-id").to_owned();
    assert!(
        tokio::task::block_in_place(|| gw.wait_line(Duration::from_secs(5), |l| l.contains(&rid))).is_some(),
        "no line for the 429:\n{}",
        gw.log()
    );

    let log = gw.log();
    for secret in [SECRET_API_KEY, &basic["Basic ".len()..], BEARER] {
        assert!(!log.contains(secret), "a credential reached the log: {secret}\n{log}");
    }
    assert!(!log.to_ascii_lowercase().contains("authorization: "), "{log}");

    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let refusals: Vec<&serde_json::Value> = lines.iter().filter(|v| v["message"] == "refused").collect();
    assert_eq!(refusals.len(), 3, "one line per refusal: {refusals:#?}");
    for v in &refusals {
        assert_eq!(v["level"], "INFO", "{v}");
        assert_eq!(v["tenant"], "acme", "{v}");
        assert_eq!(v["endpoint"], "ticket_list", "{v}");
        assert!(v["request_id"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    }
    let reasons: Vec<&str> = refusals.iter().filter_map(|v| v["reason"].as_str()).collect();
    assert_eq!(reasons, ["invalid_accept_header", "invalid_credentials", "rate_limit_exceeded"]);
    // The request id is the one the client sent, or the one the gateway echoed.
    assert_eq!(refusals[0]["request_id"], "req-406-abc");
    assert_eq!(refusals[2]["request_id"], rid.as_str());

    let served = lines.iter().filter(|v| v["message"] == "served" && v["level"] == "INFO").count();
    assert_eq!(served, 4, "one access line per served call");
    // `RUST_LOG=debug` is deskgate's debug: h2, hyper and the pools stay at warn.
    let foreign: Vec<_> = lines
        .iter()
        .filter(|v| !v["target"].as_str().is_some_and(|t| t.starts_with("deskgate")))
        .filter(|v| v["level"] != "WARN" && v["level"] != "ERROR")
        .collect();
    assert!(foreign.is_empty(), "dependencies logged below warn: {foreign:#?}");
}

// ---------------------------------------------------------------- the access log, in-process on both paths

use support::{
    call as call_on, client, exchange, gateway_on, on_both_paths, refused_addr, used, Logs, RecordingUpstream, TENANTS,
};

/// The kit client's default `Authorization` (`apikey:X`), which must never be logged.
const KIT_BASIC: &str = "YXBpa2V5Olg=";
/// An API key sent in the query, as some clients do: forwarded, never logged.
const QUERY_KEY: &str = "QuErYkEy-5e6f7a8b9c";

/// Asserts no credential this file sends reached the log.
fn assert_no_credentials(logs: &Logs) {
    let text = serde_json::to_string(&logs.lines()).unwrap_or_default();
    for secret in [KIT_BASIC, QUERY_KEY, SECRET_API_KEY, "api_key", "apikey:"] {
        assert!(!text.contains(secret), "{secret} reached the log: {text}");
    }
}

/// The fields every access line has, whatever its outcome.
fn assert_common(l: &serde_json::Value, status: u16) {
    assert_eq!(l["level"], "INFO", "{l}");
    assert_eq!(l["status"], status, "{l}");
    assert!(l["timestamp"].as_str().is_some_and(|t| !t.is_empty()), "{l}");
    assert!(l["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")), "{l}");
    assert!(l["total_ms"].as_f64().is_some_and(|t| t >= 0.0), "{l}");
}

on_both_paths! {
    #[tokio::test]
    async fn served_and_rate_limited_calls_each_get_one_line_with_what_happened() {
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let c = client();
        let path = format!("/api/v2/tickets?api_key={QUERY_KEY}&page=2");
        // `tiny`: ticket_list 3 a minute. Three served, the fourth refused.
        for i in 0..3 {
            let id = format!("served-{i}");
            let got = call_on(&c, gw.addr, "GET", "tiny.freshdesk.com", &path, &[("x-request-id", &id)], b"").await;
            assert_eq!(got.status, 200, "{}", got.text());
        }
        let limited =
            call_on(&c, gw.addr, "GET", "tiny.freshdesk.com", &path, &[("x-request-id", "limited-1")], b"").await;
        assert_eq!(limited.status, 429);
        // A portal page: forwarded unpoliced, logged all the same.
        let portal = call_on(&c, gw.addr, "GET", "support.acme.com", "/support/home", &[("x-request-id", "portal-1")], b"").await;
        assert_eq!(portal.status, 200);

        // What was judged is what was sent: three API calls and the page, the
        // query as the client sent it; three credits charged.
        let seen = up.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(seen[..3].iter().all(|s| s.uri == path), "{seen:?}");
        assert_eq!(seen[3].uri, "/support/home");
        assert_eq!(used(gw.admin, "tiny").await, 3);

        let first = logs.access_line("served-0");
        assert_eq!(first["message"], "served");
        assert_common(&first, 200);
        assert_eq!(first["api"], true);
        assert_eq!(first["tenant"], "tiny");
        assert_eq!(first["endpoint"], "ticket_list");
        assert_eq!(first["method"], "GET");
        assert_eq!(first["path"], "/api/v2/tickets", "the query is never logged: {first}");
        assert_eq!(first["host"], "tiny.freshdesk.com");
        assert_eq!(first["cost"], 1);
        assert_eq!(first["remaining"], 4, "{first}");
        assert_eq!(first["upstream_status"], 200);
        let upstream_ms = first["upstream_ms"].as_f64().unwrap_or(-1.0);
        assert!(upstream_ms >= 0.0 && upstream_ms <= first["total_ms"].as_f64().unwrap_or(0.0), "{first}");
        assert!(first.get("reason").is_none() && first.get("upstream_error").is_none(), "{first}");
        assert_eq!(logs.access_line("served-2")["remaining"], 2);

        let refused = logs.access_line("limited-1");
        assert_eq!(refused["message"], "refused");
        assert_common(&refused, 429);
        assert_eq!((&refused["tenant"], &refused["endpoint"]), (&"tiny".into(), &"ticket_list".into()));
        assert_eq!(refused["reason"], "rate_limit_exceeded");
        assert_eq!(refused["policy"], "ticket_list");
        let retry = refused["retry_after_s"].as_u64().unwrap_or(0);
        assert_eq!(retry.to_string(), limited.header("retry-after"), "{refused}");
        assert_eq!(refused["cost"], 0, "a 429 is never charged: {refused}");
        assert!(refused.get("upstream_status").is_none() && refused.get("upstream_ms").is_none(), "{refused}");

        let page = logs.access_line("portal-1");
        assert_eq!(page["message"], "served");
        assert_common(&page, 200);
        assert_eq!(page["api"], false);
        assert!(page.get("tenant").is_none() && page.get("endpoint").is_none() && page.get("cost").is_none(), "{page}");
        assert_eq!((&page["path"], &page["host"]), (&"/support/home".into(), &"support.acme.com".into()));

        assert_eq!(logs.access("served").len(), 4, "one line per call");
        assert_eq!(logs.access("refused").len(), 1, "one line per call");
        assert_no_credentials(&logs);
    }

    #[tokio::test]
    async fn the_line_shows_the_normalised_path_that_was_sent() {
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let got = call_on(&client(), gw.addr, "GET", "acme.freshdesk.com", "/%61pi/%76%32/tickets", &[("x-request-id", "norm-1")], b"").await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(up.last().uri, "/api/v2/tickets");
        assert_eq!(used(gw.admin, "acme").await, 1);
        let l = logs.access_line("norm-1");
        assert_eq!((&l["path"], &l["endpoint"]), (&"/api/v2/tickets".into(), &"ticket_list".into()), "{l}");
    }

    #[tokio::test]
    async fn a_502_says_the_upstream_could_not_be_reached_and_is_not_charged() {
        let logs = Logs::capture();
        let gw = gateway_on(PATH, refused_addr().await, "", TENANTS).await;
        let c = client();
        let api = call_on(&c, gw.addr, "GET", "acme.freshdesk.com", "/api/v2/tickets", &[("x-request-id", "api-502")], b"").await;
        assert_eq!(api.status, 502, "{}", api.text());
        let portal = call_on(&c, gw.addr, "GET", "acme.freshdesk.com", "/support/home", &[("x-request-id", "portal-502")], b"").await;
        assert_eq!(portal.status, 502, "{}", portal.text());
        // The helpdesk never received either: nothing stays charged.
        assert_eq!(used(gw.admin, "acme").await, 0);

        let l = logs.access_line("api-502");
        assert_eq!(l["message"], "refused");
        assert_common(&l, 502);
        assert_eq!((&l["tenant"], &l["endpoint"]), (&"acme".into(), &"ticket_list".into()));
        assert_eq!(l["reason"], "bad_gateway");
        assert_eq!(l["upstream_error"], "connect", "a 502 says why: {l}");
        assert_eq!(l["cost"], 0, "given back: {l}");
        assert_eq!(l["remaining"], 400, "{l}");
        assert!(l.get("upstream_status").is_none(), "{l}");
        assert!(l["upstream_ms"].as_f64().is_some(), "the time spent trying: {l}");

        let p = logs.access_line("portal-502");
        assert_eq!(p["message"], "refused");
        assert_common(&p, 502);
        assert_eq!(p["api"], false);
        assert_eq!((&p["reason"], &p["upstream_error"]), (&"bad_gateway".into(), &"connect".into()));
        assert_eq!((&p["path"], &p["host"]), (&"/support/home".into(), &"acme.freshdesk.com".into()));
        assert!(p.get("tenant").is_none(), "{p}");
        assert_no_credentials(&logs);
    }

    #[tokio::test]
    async fn an_unknown_host_line_names_the_host_that_arrived_made_safe() {
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let got = call_on(&client(), gw.addr, "GET", "Nobody.Example.com", "/api/v2/tickets", &[("x-request-id", "unknown-1")], b"").await;
        assert_eq!(got.status, 404);
        let l = logs.access_line("unknown-1");
        assert_common(&l, 404);
        assert_eq!((&l["reason"], &l["tenant"]), (&"unknown_host".into(), &"unknown".into()));
        assert_eq!(l["host"], "Nobody.Example.com", "the host as it arrived: {l}");

        // Credentials in an absolute-form target's user-info are dropped; a
        // host that is not visible ASCII is masked, and a long one cut.
        let wait = Duration::from_secs(5);
        let userinfo = format!(
            "GET http://{QUERY_KEY}:X@nobody.example.com/api/v2/tickets HTTP/1.1\r\nHost: nobody.example.com\r\nAuthorization: Basic {KIT_BASIC}\r\nX-Request-Id: userinfo-1\r\nConnection: close\r\n\r\n"
        );
        let reply = exchange(gw.addr, userinfo.as_bytes(), wait).await;
        assert!(reply.status() >= 400, "{}", reply.text);
        let l = logs.access_line("userinfo-1");
        assert_eq!(l["host"], "nobody.example.com", "{l}");
        let mut masked = b"GET /api/v2/tickets HTTP/1.1\r\nHost: bad\x80\xffhost.example\r\nX-Request-Id: masked-1\r\nConnection: close\r\n\r\n".to_vec();
        let reply = exchange(gw.addr, &masked, wait).await;
        assert_eq!(reply.status(), 400, "{}", reply.text);
        assert_eq!(logs.access_line("masked-1")["host"], "bad??host.example");
        let long = "a".repeat(300);
        masked = format!("GET /api/v2/tickets HTTP/1.1\r\nHost: {long}.example\r\nX-Request-Id: long-1\r\nConnection: close\r\n\r\n").into_bytes();
        let reply = exchange(gw.addr, &masked, wait).await;
        assert!(reply.status() >= 400, "{}", reply.text);
        let shown = logs.access_line("long-1")["host"].as_str().unwrap_or_default().to_owned();
        assert!(shown.len() < 300 && shown.ends_with('…'), "{shown}");

        assert_eq!(up.count(), 0, "no refused call reached the upstream");
        assert_eq!(used(gw.admin, "acme").await, 0);
        assert_no_credentials(&logs);
    }

    #[tokio::test]
    async fn served_calls_can_go_unlogged_while_refusals_are_always_logged() {
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let off = format!("[access_log]\nsample_served = 0.0\n{TENANTS}");
        let gw = gateway_on(PATH, up.addr, "", &off).await;
        let c = client();
        for i in 0..3 {
            let got = call_on(&c, gw.addr, "GET", "tiny.freshdesk.com", "/api/v2/tickets", &[("x-request-id", &format!("quiet-{i}"))], b"").await;
            assert_eq!(got.status, 200);
        }
        let limited = call_on(&c, gw.addr, "GET", "tiny.freshdesk.com", "/api/v2/tickets", &[("x-request-id", "loud-429")], b"").await;
        assert_eq!(limited.status, 429);
        let unknown = call_on(&c, gw.addr, "GET", "nobody.example.com", "/api/v2/tickets", &[("x-request-id", "loud-404")], b"").await;
        assert_eq!(unknown.status, 404);
        assert_eq!(up.count(), 3, "the served calls were forwarded");
        assert_eq!(used(gw.admin, "tiny").await, 3, "and charged");
        assert!(logs.access("served").is_empty(), "{:?}", logs.access("served"));
        assert_eq!(logs.access_line("loud-429")["reason"], "rate_limit_exceeded");
        assert_eq!(logs.access_line("loud-404")["reason"], "unknown_host");

        // A reload applies the setting to the next call.
        let file = gw.dir.path().join("deskgate.toml");
        let text = std::fs::read_to_string(&file).unwrap_or_default().replace("sample_served = 0.0", "sample_served = 1.0");
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
        gw.gw.reload().await.unwrap_or_else(|e| panic!("{e}"));
        let got = call_on(&c, gw.addr, "GET", "acme.freshdesk.com", "/api/v2/tickets", &[("x-request-id", "after-reload")], b"").await;
        assert_eq!(got.status, 200);
        assert_eq!(logs.access_line("after-reload")["message"], "served");
        assert_eq!(up.count(), 4);
    }
}
