//! Host header tricks over raw sockets: absolute-form targets
//! against `Host`, userinfo, ports, two `Host` headers, `X-Forwarded-Host`
//! and h2's `:authority` can neither move a call onto another tenant's budget
//! nor get an API call through a vanity host.

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(3);

fn request(target: &str, host_lines: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\n{host_lines}Authorization: Basic eDp4\r\nConnection: close\r\n\r\n").into_bytes()
}

/// What the refusal counters and log hold so far: every
/// `deskgate_rejected_total`, every non-2xx `deskgate_requests_total`, every
/// `refused` line naming a tenant, each summed over tenants and reasons.
async fn refusals_so_far(gw: &TestGateway, logs: &Logs) -> (f64, f64, usize) {
    let samples = metrics::scrape(gw.admin).await;
    let rejected = samples.iter().filter(|s| s.name == "deskgate_rejected_total").map(|s| s.value).sum();
    let answered = samples
        .iter()
        .filter(|s| s.name == "deskgate_requests_total" && !s.labels["status"].starts_with('2'))
        .map(|s| s.value)
        .sum();
    // Per-tenant refusal lines: a refusal before any tenant is known (a
    // malformed `Host`) has its access line too, without a tenant.
    (rejected, answered, logs.events("refused").iter().filter(|l| l.get("tenant").is_some()).count())
}

/// Who a refusal with `status` is counted for, and why: a vanity host for
/// its tenant, an unknown host for `unknown`. A malformed `Host` (400) is
/// refused before any tenant is known, so it is counted for nobody.
fn counted_as(status: u16) -> Option<(&'static str, &'static str)> {
    match status {
        403 => Some(("acme", "vanity_host_not_supported")),
        404 => Some(("unknown", "unknown_host")),
        _ => None,
    }
}

/// One case: the raw request, the status it must get, and the tenant that
/// must be charged (`None`: nobody).
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    status: u16,
    charged: Option<&'static str>,
}

// Every test runs on the fast path and on hyper: `fast::NAME`, `hyper::NAME`.
support::on_both_paths! {
    #[tokio::test]
    async fn host_tricks_cannot_move_a_call_to_another_budget_or_past_the_vanity_rule() {
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let p = "/api/v2/tickets/1";
        let cases = vec![
            Case {
                name: "absolute-form acme, Host tiny",
                bytes: request(&format!("http://acme.freshdesk.com{p}"), "Host: tiny.freshdesk.com\r\n"),
                status: 200,
                charged: Some("acme"),
            },
            Case {
                name: "absolute-form tiny, Host acme",
                bytes: request(&format!("http://tiny.freshdesk.com{p}"), "Host: acme.freshdesk.com\r\n"),
                status: 200,
                charged: Some("tiny"),
            },
            Case {
                name: "absolute-form https with a port",
                bytes: request(&format!("https://ACME.freshdesk.com.:8443{p}"), "Host: tiny.freshdesk.com\r\n"),
                status: 200,
                charged: Some("acme"),
            },
            Case {
                name: "absolute-form vanity host, canonical Host",
                bytes: request(&format!("http://support.acme.com{p}"), "Host: acme.freshdesk.com\r\n"),
                status: 403,
                charged: None,
            },
            Case {
                name: "absolute-form with userinfo naming another tenant",
                bytes: request(&format!("http://acme.freshdesk.com@tiny.freshdesk.com{p}"), "Host: tiny.freshdesk.com\r\n"),
                status: 400,
                charged: None,
            },
            Case {
                name: "Host with userinfo",
                bytes: request(p, "Host: tiny.freshdesk.com@acme.freshdesk.com\r\n"),
                status: 400,
                charged: None,
            },
            Case {
                name: "Host with userinfo and port",
                bytes: request(p, "Host: x:y@acme.freshdesk.com:80\r\n"),
                status: 400,
                charged: None,
            },
            Case {
                name: "Host with a port",
                bytes: request(p, "Host: tiny.freshdesk.com:8080\r\n"),
                status: 200,
                charged: Some("tiny"),
            },
            Case {
                name: "Host with an empty port and upper case",
                bytes: request(p, "Host: TINY.Freshdesk.com.:\r\n"),
                status: 200,
                charged: Some("tiny"),
            },
            Case {
                name: "Host with two ports",
                bytes: request(p, "Host: tiny.freshdesk.com:80:80\r\n"),
                status: 400,
                charged: None,
            },
            Case {
                name: "Host with a non-numeric port",
                bytes: request(p, "Host: acme.freshdesk.com:tiny.freshdesk.com\r\n"),
                status: 400,
                charged: None,
            },
            Case {
                name: "two Host headers, acme then tiny",
                bytes: request(p, "Host: acme.freshdesk.com\r\nHost: tiny.freshdesk.com\r\n"),
                status: 400,
                charged: None,
            },
            Case {
                name: "two identical Host headers",
                bytes: request(p, "Host: acme.freshdesk.com\r\nHost: acme.freshdesk.com\r\n"),
                status: 400,
                charged: None,
            },
            Case {
                name: "a comma-joined Host",
                bytes: request(p, "Host: acme.freshdesk.com, tiny.freshdesk.com\r\n"),
                status: 404,
                charged: None,
            },
            Case {
                name: "Host with a path",
                bytes: request(p, "Host: tiny.freshdesk.com/x\r\n"),
                status: 404,
                charged: None,
            },
            Case { name: "an empty Host", bytes: request(p, "Host: \r\n"), status: 400, charged: None },
            Case { name: "no Host at all", bytes: request(p, ""), status: 400, charged: None },
            Case {
                name: "vanity Host, decorated",
                bytes: request(p, "Host: SUPPORT.Acme.com.:443\r\n"),
                status: 403,
                charged: None,
            },
            Case {
                name: "X-Forwarded-Host from a trusted peer does not pick the tenant",
                bytes: request(p, "Host: acme.freshdesk.com\r\nX-Forwarded-Host: tiny.freshdesk.com\r\n"),
                status: 200,
                charged: Some("acme"),
            },
        ];
        for case in cases {
            let (acme0, tiny0, seen0) = (used(gw.admin, "acme").await, used(gw.admin, "tiny").await, up.count());
            let before = refusals_so_far(&gw, &logs).await;
            let reply = exchange(gw.addr, &case.bytes, WAIT).await;
            assert_eq!(reply.status(), case.status, "{}: {}", case.name, reply.text);
            let after = refusals_so_far(&gw, &logs).await;
            let want = match (case.status, counted_as(case.status)) {
                (200, _) | (_, None) => (before.0, before.1, before.2),
                (_, Some(_)) => (before.0 + 1.0, before.1 + 1.0, before.2 + 1),
            };
            assert_eq!(after, want, "{}: (rejected, refused answers, refused lines) counted", case.name);
            if let Some((tenant, reason)) = counted_as(case.status) {
                let line = logs.events("refused").pop().unwrap_or_default();
                assert_eq!((&line["tenant"], &line["reason"]), (&tenant.into(), &reason.into()), "{}: {line}", case.name);
                assert_eq!(line["status"], case.status, "{}: {line}", case.name);
            }
            let (acme1, tiny1) = (used(gw.admin, "acme").await, used(gw.admin, "tiny").await);
            let (want_acme, want_tiny) = match case.charged {
                Some("acme") => (1, 0),
                Some("tiny") => (0, 1),
                _ => (0, 0),
            };
            assert_eq!((acme1 - acme0, tiny1 - tiny0), (want_acme, want_tiny), "{}: budgets charged", case.name);
            match case.charged {
                Some(t) => {
                    assert_eq!(up.count(), seen0 + 1, "{}", case.name);
                    let host = up.last().headers["host"].to_str().unwrap().to_owned();
                    assert_eq!(
                        host,
                        format!("{t}.freshdesk.com"),
                        "{}: the upstream must see the charged tenant",
                        case.name
                    );
                }
                None => assert_eq!(up.count(), seen0, "{}: a refused call reached the upstream", case.name),
            }
        }
        assert_refusal_counted(&gw, Some(&logs), "acme", "other", 403, "vanity_host_not_supported", 2).await;
        assert_refusal_counted(&gw, Some(&logs), "unknown", "other", 404, "unknown_host", 2).await;
    }

    #[tokio::test]
    async fn http10_without_host_is_refused() {
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let reply = exchange(gw.addr, b"GET /api/v2/tickets HTTP/1.0\r\nAuthorization: Basic eDp4\r\n\r\n", WAIT).await;
        assert_eq!(reply.status(), 400, "{}", reply.text);
        assert_eq!(up.count(), 0);
        // Refused before any tenant is known: counted for nobody.
        assert_eq!(refusals_so_far(&gw, &logs).await, (0.0, 0.0, 0));
    }

    #[tokio::test]
    async fn h2_authority_decides_the_tenant_over_a_host_header() {
        use http_body_util::BodyExt;
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let (mut send, conn) = ::hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        for (authority, host, status, charged) in [
            ("acme.freshdesk.com", "tiny.freshdesk.com", 200, Some("acme")),
            ("support.acme.com", "acme.freshdesk.com", 403, None),
            ("tiny.freshdesk.com@acme.freshdesk.com", "acme.freshdesk.com", 400, None),
        ] {
            let (acme0, tiny0) = (used(gw.admin, "acme").await, used(gw.admin, "tiny").await);
            let req = http::Request::get(format!("http://{authority}/api/v2/tickets/1"))
                .header("host", host)
                .header("authorization", "Bearer t")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let rsp = send.send_request(req).await.unwrap();
            let got = rsp.status().as_u16();
            let _ = rsp.into_body().collect().await;
            assert_eq!(got, status, "{authority} / {host}");
            let (acme1, tiny1) = (used(gw.admin, "acme").await, used(gw.admin, "tiny").await);
            let want = match charged {
                Some("acme") => (1, 0),
                _ => (0, 0),
            };
            assert_eq!((acme1 - acme0, tiny1 - tiny0), want, "{authority} / {host}");
        }
        // The vanity authority is counted for its tenant; the one with
        // userinfo is refused before any tenant is known.
        assert_refusal_counted(&gw, Some(&logs), "acme", "other", 403, "vanity_host_not_supported", 1).await;
        assert_eq!(refusals_so_far(&gw, &logs).await, (1.0, 1.0, 1));
    }
}
