//! Logs (docs/reference.md "Operations"): JSON when not on a TTY, one info line per refusal with
//! tenant, endpoint, reason and request id, one debug line per call, and
//! never an API key or `Authorization` value — even at `RUST_LOG=debug`.

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
    let path = dir.write("deskgate.toml", &config_toml(&format!("http://{upstream}"), "", "", ""));
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

    let served = lines.iter().filter(|v| v["message"] == "served" && v["level"] == "DEBUG").count();
    assert_eq!(served, 4, "one debug line per served call");
}
