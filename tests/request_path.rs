//! docs/reference.md "Request order" end to end: the real gateway over real sockets in front of a
//! recording upstream. Every refusal must answer with the documented status
//! and JSON body and must never reach the upstream.

mod support;

use std::time::Duration;

use support::*;

const ACME: &str = "acme.freshdesk.com";

async fn setup(path: Path) -> (RecordingUpstream, TestGateway, TestClient) {
    let up = RecordingUpstream::start().await;
    let gw = gateway_on(path, up.addr, "", TENANTS).await;
    (up, gw, client())
}

fn assert_refused(got: &Reply, status: u16, code: &str) {
    assert_eq!(got.status.as_u16(), status, "{:?}", got.body);
    assert_eq!(got.header("content-type"), "application/json; charset=utf-8");
    let body = got.json();
    assert_eq!(body["code"], code, "{body}");
    assert!(!body["message"].as_str().unwrap_or("").is_empty(), "{body}");
}

// Every test runs on the fast path and on hyper: `fast::NAME`, `hyper::NAME`.
support::on_both_paths! {
    #[tokio::test]
    async fn a_valid_call_is_forwarded_with_rate_limit_headers() {
        let (up, gw, c) = setup(PATH).await;
        let got = get(&c, gw.addr, ACME, "/api/v2/tickets").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-ratelimit-total"), "400");
        assert_eq!(got.header("x-ratelimit-remaining"), "399");
        assert_eq!(got.header("x-ratelimit-used-currentrequest"), "1");
        assert_eq!(got.header("ratelimit-policy"), "\"account\";q=400;w=60, \"ticket_list\";q=100;w=60");
        assert!(got.header("ratelimit").starts_with("\"ticket_list\";r=99;t="), "{}", got.header("ratelimit"));
        assert_eq!(up.count(), 1);
        assert_eq!(up.last().uri, "/api/v2/tickets");
    }

    #[tokio::test]
    async fn an_unknown_host_is_404_and_never_forwarded() {
        let logs = Logs::capture();
        let (up, gw, c) = setup(PATH).await;
        assert_refused(&get(&c, gw.addr, "nobody.example.com", "/api/v2/tickets").await, 404, "unknown_host");
        assert_eq!(up.count(), 0);
        assert_refusal_counted(&gw, Some(&logs), "unknown", "other", 404, "unknown_host", 1).await;
    }

    #[tokio::test]
    async fn a_vanity_host_is_refused_before_budget_and_names_the_domain() {
        let logs = Logs::capture();
        let (up, gw, c) = setup(PATH).await;
        let got = get(&c, gw.addr, "Support.Acme.com.:8080", "/api/v2/tickets").await;
        assert_refused(&got, 403, "vanity_host_not_supported");
        assert!(got.json()["message"].as_str().unwrap().contains("https://acme.freshdesk.com"));
        assert!(got.headers.get("x-ratelimit-remaining").is_none());
        assert_eq!(up.count(), 0);
        assert_refusal_counted(&gw, Some(&logs), "acme", "other", 403, "vanity_host_not_supported", 1).await;
        let ids = logs.assert_refused("acme", "vanity_host_not_supported", 403, 1);
        assert_eq!(ids[0], got.header("x-request-id"), "the log line names the call's request id");
        assert_eq!(used(gw.admin, "acme").await, 0);
        // The portal on a vanity host is fine.
        assert_eq!(get(&c, gw.addr, "support.acme.com", "/support/home").await.status, 200);
        assert_eq!(up.count(), 1);
    }

    #[tokio::test]
    async fn host_case_port_and_trailing_dot_are_ignored() {
        let (_up, gw, c) = setup(PATH).await;
        assert_eq!(get(&c, gw.addr, "ACME.freshdesk.com.:443", "/api/v2/tickets").await.status, 200);
    }

    #[tokio::test]
    async fn a_plan_without_api_access_is_require_feature() {
        let logs = Logs::capture();
        let (up, gw, c) = setup(PATH).await;
        let got = get(&c, gw.addr, "seedling.freshdesk.com", "/api/v2/tickets").await;
        assert_refused(&got, 403, "require_feature");
        assert!(got.json()["message"].as_str().unwrap().contains("sprout"));
        assert_eq!(up.count(), 0);
        assert_refusal_counted(&gw, Some(&logs), "seedling", "other", 403, "require_feature", 1).await;
    }

    #[tokio::test]
    async fn plain_http_is_ssl_required_when_https_is_required() {
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "require_https = true\ntrusted_proxies = []", TENANTS).await;
        let c = client();
        let got = get(&c, gw.addr, ACME, "/api/v2/tickets").await;
        assert_refused(&got, 403, "ssl_required");
        assert_eq!(got.json()["message"], "HTTPS is required in the API URL.");
        // An untrusted peer cannot claim HTTPS.
        let got = call(&c, gw.addr, "GET", ACME, "/api/v2/tickets", &[("x-forwarded-proto", "https")], b"").await;
        assert_eq!(got.status, 403);
        assert_eq!(up.count(), 0);
        assert_refusal_counted(&gw, Some(&logs), "acme", "other", 403, "ssl_required", 2).await;
        assert_eq!(used(gw.admin, "acme").await, 0);
    }

    #[tokio::test]
    async fn a_trusted_proxy_may_vouch_for_https() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "require_https = true\ntrusted_proxies = [\"127.0.0.1/32\"]", TENANTS).await;
        let got = call(&client(), gw.addr, "GET", ACME, "/api/v2/tickets", &[("x-forwarded-proto", "https")], b"").await;
        assert_eq!(got.status, 200);
        assert_eq!(up.last().headers["x-forwarded-proto"], "https");
    }

    #[tokio::test]
    async fn a_wrong_method_on_a_known_resource_is_405_with_allow() {
        let logs = Logs::capture();
        let (up, gw, c) = setup(PATH).await;
        let got = call(&c, gw.addr, "DELETE", ACME, "/api/v2/tickets", &[], b"").await;
        assert_refused(&got, 405, "method_not_allowed");
        assert_eq!(got.header("allow"), "GET, POST");
        let got = call(&c, gw.addr, "POST", ACME, "/api/v2/contacts/7", &[], b"").await;
        assert_eq!(got.header("allow"), "GET, PUT, DELETE");
        // A non-numeric sub-resource is `other`, not a 405.
        let got = call(
            &c,
            gw.addr,
            "POST",
            ACME,
            "/api/v2/tickets/outbound_email",
            &[("content-type", "application/json")],
            b"{}",
        )
        .await;
        assert_eq!(got.status, 200);
        assert_eq!(up.count(), 1);
        assert_eq!(logs.refused("acme", "method_not_allowed").len(), 2, "{:?}", logs.lines());
        assert_eq!(
            metrics::value(
                &metrics::scrape(gw.admin).await,
                "deskgate_rejected_total",
                &[("tenant", "acme"), ("reason", "method_not_allowed")]
            ),
            Some(2.0)
        );
        // Only the admitted POST was charged.
        assert_eq!(used(gw.admin, "acme").await, 1);
    }

    #[tokio::test]
    async fn a_call_without_credentials_is_401_in_the_helpdesk_wording() {
        let logs = Logs::capture();
        let (up, gw, c) = setup(PATH).await;
        let got = call(&c, gw.addr, "GET", ACME, "/api/v2/tickets", &[("authorization", "Digest x")], b"").await;
        assert_refused(&got, 401, "invalid_credentials");
        assert_eq!(got.json()["message"], "You have to be logged in to perform this action.");
        assert_eq!(up.count(), 0);
        assert_refusal_counted(&gw, Some(&logs), "acme", "ticket_list", 401, "invalid_credentials", 1).await;
        assert_eq!(used(gw.admin, "acme").await, 0);
    }

    #[tokio::test]
    async fn an_accept_that_excludes_json_is_406() {
        let logs = Logs::capture();
        let (up, gw, c) = setup(PATH).await;
        assert_refused(
            &call(&c, gw.addr, "GET", ACME, "/api/v2/tickets", &[("accept", "application/xml")], b"").await,
            406,
            "invalid_accept_header",
        );
        assert_eq!(up.count(), 0);
        assert_refusal_counted(&gw, Some(&logs), "acme", "ticket_list", 406, "invalid_accept_header", 1).await;
        assert_eq!(used(gw.admin, "acme").await, 0);
        for ok in ["application/json", "application/*", "*/*", "text/html, application/json;q=0.5"] {
            assert_eq!(call(&c, gw.addr, "GET", ACME, "/api/v2/tickets", &[("accept", ok)], b"").await.status, 200, "{ok}");
        }
        assert_eq!(up.count(), 4);
    }

    #[tokio::test]
    async fn a_body_without_a_json_content_type_is_415_but_bodiless_json_gets_are_fine() {
        let logs = Logs::capture();
        let (up, gw, c) = setup(PATH).await;
        let got = call(&c, gw.addr, "POST", ACME, "/api/v2/tickets", &[("content-type", "text/plain")], b"hello").await;
        assert_refused(&got, 415, "invalid_content_type");
        let got =
            call(&c, gw.addr, "POST", ACME, "/api/v2/tickets", &[("content-type", "multipart/form-data")], b"x").await;
        assert_eq!(got.status, 415, "multipart without a boundary");
        assert_eq!(up.count(), 0);
        assert_refusal_counted(&gw, Some(&logs), "acme", "ticket_create", 415, "invalid_content_type", 2).await;
        assert_eq!(used(gw.admin, "acme").await, 0);
        let got = call(&c, gw.addr, "GET", ACME, "/api/v2/tickets", &[("content-type", "application/json")], b"").await;
        assert_eq!(got.status, 200);
        let got = call(
            &c,
            gw.addr,
            "POST",
            ACME,
            "/api/v2/tickets",
            &[("content-type", "multipart/form-data; boundary=xyz")],
            b"--xyz--",
        )
        .await;
        assert_eq!(got.status, 200);
    }

    #[tokio::test]
    async fn a_declared_body_over_the_limit_is_413_without_reading_it() {
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "max_body_bytes = 1000", TENANTS).await;
        let head = format!(
            "POST /api/v2/tickets HTTP/1.1\r\nHost: {ACME}\r\nAuthorization: Basic eDp4\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\n\r\n"
        );
        // Only the head is sent: the answer must not wait for 5 MB.
        let out = raw(gw.gw.api_addr, head.as_bytes(), Duration::from_secs(2)).await;
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        assert!(out.contains("payload_too_large"), "{out}");
        assert_eq!(up.count(), 0);
        assert_refusal_counted(&gw, Some(&logs), "acme", "ticket_create", 413, "payload_too_large", 1).await;
        assert_eq!(used(gw.admin, "acme").await, 0);
    }

    #[tokio::test]
    async fn a_chunked_body_that_outgrows_the_limit_is_refused() {
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "max_body_bytes = 1000", TENANTS).await;
        let mut req = format!(
            "POST /api/v2/tickets HTTP/1.1\r\nHost: {ACME}\r\nAuthorization: Basic eDp4\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        for _ in 0..4 {
            req.extend_from_slice(b"3e8\r\n");
            req.extend_from_slice(&[b'a'; 1000]);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        let out = raw(gw.addr, &req, Duration::from_secs(3)).await;
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        assert!(up.seen.lock().unwrap().iter().all(|s| s.body_len <= 1000), "the upstream never gets more than the limit");
        assert_refusal_counted(&gw, Some(&logs), "acme", "ticket_create", 413, "payload_too_large", 1).await;
        // A chunked body's size shows only while it streams, after the call
        // was admitted (step 9) and its charge taken: that charge stays.
        assert_eq!(used(gw.admin, "acme").await, 1);
    }

    #[tokio::test]
    async fn an_unsafe_path_is_400_in_the_validation_shape() {
        let logs = Logs::capture();
        let (up, gw, c) = setup(PATH).await;
        for path in ["/api/v2/tickets%2F1", "/api/v2/../../../etc/passwd", "/api/v2/tickets/%00"] {
            let got = get(&c, gw.addr, ACME, path).await;
            assert_eq!(got.status, 400, "{path}");
            let body = got.json();
            assert_eq!(body["description"], "Validation failed", "{path}");
            assert_eq!(body["errors"][0]["code"], "invalid_value", "{path}");
        }
        assert_eq!(up.count(), 0);
        assert_refusal_counted(&gw, Some(&logs), "acme", "other", 400, "invalid_value", 3).await;
        assert_eq!(used(gw.admin, "acme").await, 0);
        // Normalised out of the API: forwarded as the portal path it really is.
        assert_eq!(get(&c, gw.addr, ACME, "/api/v2/../../etc/passwd").await.status, 200);
        assert_eq!(up.last().uri, "/etc/passwd");
    }

    #[tokio::test]
    async fn refusals_are_checked_in_spec_order() {
        let (up, gw, c) = setup(PATH).await;
        // Vanity host beats everything after it (no auth, bad accept, bad method).
        let got = call(
            &c,
            gw.addr,
            "DELETE",
            "support.acme.com",
            "/api/v2/tickets",
            &[("authorization", "x"), ("accept", "text/xml")],
            b"",
        )
        .await;
        assert_eq!(got.json()["code"], "vanity_host_not_supported");
        // 405 beats 401.
        let got = call(&c, gw.addr, "DELETE", ACME, "/api/v2/tickets", &[("authorization", "x")], b"").await;
        assert_eq!(got.json()["code"], "method_not_allowed");
        // 401 beats 406.
        let got =
            call(&c, gw.addr, "GET", ACME, "/api/v2/tickets", &[("authorization", "x"), ("accept", "text/xml")], b"").await;
        assert_eq!(got.json()["code"], "invalid_credentials");
        // 406 beats 415.
        let got = call(
            &c,
            gw.addr,
            "POST",
            ACME,
            "/api/v2/tickets",
            &[("accept", "text/xml"), ("content-type", "text/plain")],
            b"x",
        )
        .await;
        assert_eq!(got.json()["code"], "invalid_accept_header");
        assert_eq!(up.count(), 0);
    }

    #[tokio::test]
    async fn refused_calls_consume_no_budget() {
        let (_up, gw, c) = setup(PATH).await;
        for _ in 0..3 {
            call(&c, gw.addr, "GET", "tiny.freshdesk.com", "/api/v2/tickets", &[("authorization", "x")], b"").await;
            call(&c, gw.addr, "DELETE", "tiny.freshdesk.com", "/api/v2/tickets", &[], b"").await;
        }
        let got = get(&c, gw.addr, "tiny.freshdesk.com", "/api/v2/tickets").await;
        assert_eq!(got.header("x-ratelimit-remaining"), "4");
    }

    #[tokio::test]
    async fn charge_invalid_charges_refusals_from_step_4_on() {
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", &format!("[limiter]\ncharge_invalid = true\n{TENANTS}")).await;
        let c = client();
        let got = call(&c, gw.addr, "GET", "tiny.freshdesk.com", "/api/v2/tickets", &[("authorization", "x")], b"").await;
        assert_eq!(got.status, 401);
        assert_eq!(got.header("x-ratelimit-remaining"), "4", "the 401 was charged");
        // Steps 1-3 are never charged.
        get(&c, gw.addr, "seedling.freshdesk.com", "/api/v2/tickets").await;
        let got = get(&c, gw.addr, "tiny.freshdesk.com", "/api/v2/contacts").await;
        assert_eq!(got.header("x-ratelimit-remaining"), "3");
        assert_eq!(up.count(), 1);
        // Charged or not, each refusal is counted and logged once.
        assert_refusal_counted(&gw, Some(&logs), "tiny", "ticket_list", 401, "invalid_credentials", 1).await;
        assert_refusal_counted(&gw, Some(&logs), "seedling", "other", 403, "require_feature", 1).await;
        assert_eq!(used(gw.admin, "tiny").await, 2, "the 401 and the contact list");
    }

    #[tokio::test]
    async fn a_429_is_never_charged_and_says_which_budget_ran_out() {
        let logs = Logs::capture();
        let (up, gw, c) = setup(PATH).await;
        let tiny = "tiny.freshdesk.com";
        for _ in 0..3 {
            assert_eq!(get(&c, gw.addr, tiny, "/api/v2/tickets").await.status, 200);
        }
        for _ in 0..5 {
            let got = get(&c, gw.addr, tiny, "/api/v2/tickets").await;
            assert_refused(&got, 429, "rate_limit_exceeded");
            assert!(got.json()["message"].as_str().unwrap().contains("ticket_list"));
            let retry: u64 = got.header("retry-after").parse().unwrap();
            assert!((1..=61).contains(&retry), "{retry}");
            assert_eq!(got.header("x-ratelimit-used-currentrequest"), "0");
            assert_eq!(got.header("x-ratelimit-remaining"), "2");
            assert!(got.header("ratelimit").starts_with("\"ticket_list\";r=0;t="));
        }
        assert_refusal_counted(&gw, Some(&logs), "tiny", "ticket_list", 429, "rate_limit_exceeded", 5).await;
        assert_eq!(used(gw.admin, "tiny").await, 3);
        // The 429s cost nothing: two account credits are still there for other endpoints.
        assert_eq!(get(&c, gw.addr, tiny, "/api/v2/contacts").await.status, 200);
        assert_eq!(get(&c, gw.addr, tiny, "/api/v2/contacts").await.status, 200);
        let got = get(&c, gw.addr, tiny, "/api/v2/contacts").await;
        assert_eq!(got.status, 429);
        assert!(got.json()["message"].as_str().unwrap().contains("account"));
        assert_eq!(up.count(), 5);
    }

    #[tokio::test]
    async fn include_credits_are_charged_from_every_budget() {
        let (_up, gw, c) = setup(PATH).await;
        let got = get(&c, gw.addr, ACME, "/api/v2/tickets?include=description,requester,stats").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-ratelimit-used-currentrequest"), "7");
        assert_eq!(got.header("x-ratelimit-remaining"), "393");
        assert!(got.header("ratelimit").starts_with("\"ticket_list\";r=93;"));
        let got = get(&c, gw.addr, ACME, "/api/v2/tickets/5?include=requester,stats").await;
        assert_eq!(got.header("x-ratelimit-used-currentrequest"), "3");
    }

    #[tokio::test]
    async fn a_cheaper_call_that_fits_is_admitted_when_a_dearer_one_is_not() {
        let (_up, gw, c) = setup(PATH).await;
        let tiny = "tiny.freshdesk.com";
        // ticket_list budget 3: an include costing 3 fits once, then a 1-credit call does not.
        assert_eq!(get(&c, gw.addr, tiny, "/api/v2/tickets?include=stats").await.status, 200);
        assert_eq!(get(&c, gw.addr, tiny, "/api/v2/tickets").await.status, 429);
        // Account has 2 left: a 3-credit single-ticket view does not fit, a 1-credit one does.
        assert_eq!(get(&c, gw.addr, tiny, "/api/v2/tickets/1?include=a,b").await.status, 429);
        assert_eq!(get(&c, gw.addr, tiny, "/api/v2/tickets/1").await.status, 200);
    }

    #[tokio::test]
    async fn no_spelling_of_a_path_escapes_its_endpoint_budget() {
        let (up, gw, c) = setup(PATH).await;
        let tiny = "tiny.freshdesk.com";
        let spellings = [
            "/api/v2/tickets",
            "//api/v2/tickets",
            "/API/V2/tickets/",
            "/api/v2/./tickets",
            "/api/v2/x/../tickets",
            "/api/v2/%74ickets",
            "/api/%76%32/tickets//",
        ];
        let mut admitted = 0;
        for p in spellings {
            let got = get(&c, gw.addr, tiny, p).await;
            assert!(got.status == 200 || got.status == 429, "{p}: {}", got.status);
            assert!(got.header("ratelimit-policy").contains("ticket_list"), "{p} was not classified as ticket_list");
            if got.status == 200 {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3);
        // The upstream sees the canonical path, so it agrees with our classification.
        assert!(up.seen.lock().unwrap().iter().all(|s| s.uri == "/api/v2/tickets"));
    }

    #[tokio::test]
    async fn concurrent_calls_admit_exactly_the_budget() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", "[[tenant]]\nname = \"burst\"\ndomain = \"burst.freshdesk.com\"\nplan = \"trial\"\n")
            .await;
        let c = client();
        let addr = gw.addr;
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                get(&c, addr, "burst.freshdesk.com", "/api/v2/contacts").await.status.as_u16()
            }));
        }
        let mut ok = 0;
        let mut limited = 0;
        for t in tasks {
            match t.await.unwrap() {
                200 => ok += 1,
                429 => limited += 1,
                s => panic!("unexpected {s}"),
            }
        }
        assert_eq!((ok, limited), (50, 150));
        assert_eq!(up.count(), 50);
    }

    #[tokio::test]
    async fn retry_after_is_never_early_on_a_rolling_window() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH,
            up.addr,
            "",
            "[[tenant]]\nname = \"short\"\ndomain = \"short.freshdesk.com\"\nplan = \"trial\"\nper_minute = 2\nwindow_seconds = 4\n",
        )
        .await;
        let c = client();
        let host = "short.freshdesk.com";
        assert_eq!(get(&c, gw.addr, host, "/api/v2/contacts").await.status, 200);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(get(&c, gw.addr, host, "/api/v2/contacts").await.status, 200);
        let got = get(&c, gw.addr, host, "/api/v2/contacts").await;
        assert_eq!(got.status, 429);
        let retry: u64 = got.header("retry-after").parse().unwrap();
        assert!((2..=3).contains(&retry), "{retry}");
        // Rolling, not fixed: the first call leaves first, the second is still held.
        tokio::time::sleep(Duration::from_secs(retry)).await;
        let got = get(&c, gw.addr, host, "/api/v2/contacts").await;
        assert_eq!(got.status, 200, "a retry after Retry-After must succeed");
        assert_eq!(got.header("x-ratelimit-remaining"), "0", "the second call is still in the window");
    }

    #[tokio::test]
    async fn shadow_mode_forwards_over_budget_calls_with_no_wait_in_the_headers() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH,
            up.addr,
            "",
            "[[tenant]]\nname = \"dry\"\ndomain = \"dry.freshdesk.com\"\nplan = \"trial\"\nper_minute = 1\nshadow = true\n",
        )
        .await;
        let c = client();
        assert_eq!(get(&c, gw.addr, "dry.freshdesk.com", "/api/v2/contacts").await.status, 200);
        let got = get(&c, gw.addr, "dry.freshdesk.com", "/api/v2/contacts").await;
        assert_eq!(got.status, 200);
        // The budget that would be enforced, and that this call took nothing,
        // but nothing a client would back off on.
        assert_eq!(got.header("x-ratelimit-total"), "1");
        assert_eq!(got.header("x-ratelimit-used-currentrequest"), "0");
        assert!(got.headers.get("retry-after").is_none());
        assert!(got.headers.get("ratelimit").is_none());
        assert!(got.headers.get("x-ratelimit-remaining").is_none());
        assert_eq!(up.count(), 2);
    }
}
