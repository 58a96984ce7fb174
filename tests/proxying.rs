//! docs/reference.md "Proxying": streaming, hop-by-hop headers, X-Forwarded-*, X-Request-Id,
//! pass-through of upstream answers, pooling, 502/504, h2c downstream.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use support::*;

const ACME: &str = "acme.freshdesk.com";

// Every test runs on the fast path and on hyper: `fast::NAME`, `hyper::NAME`.
support::on_both_paths! {
    #[tokio::test]
    async fn hop_by_hop_headers_are_removed_both_ways_and_forwarded_headers_set() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "trusted_proxies = []", TENANTS).await;
        let c = client();
        let got = call(
            &c,
            gw.addr,
            "GET",
            ACME,
            "/api/v2/tickets",
            &[
                ("connection", "x-private-hop"),
                ("x-private-hop", "secret"),
                ("te", "trailers"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-custom", "kept"),
            ],
            b"",
        )
        .await;
        assert_eq!(got.status, 200);
        let seen = up.last();
        assert!(seen.headers.get("x-private-hop").is_none());
        assert!(seen.headers.get("te").is_none());
        assert_eq!(seen.headers["x-custom"], "kept");
        // An untrusted client's X-Forwarded-For is replaced, not extended.
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen.headers["x-forwarded-proto"], "http");
        assert_eq!(seen.headers["x-forwarded-host"], ACME);
        assert_eq!(seen.headers["host"], ACME);
        // Upstream's hop-by-hop headers never reach the client.
        assert!(got.headers.get("keep-alive").is_none());
        assert!(got.headers.get("x-upstream-hop").is_none());
    }

    #[tokio::test]
    async fn a_request_id_is_kept_if_sent_generated_if_not_and_echoed() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let c = client();
        let got = call(&c, gw.addr, "GET", ACME, "/api/v2/tickets", &[("x-request-id", "abc-123")], b"").await;
        assert_eq!(got.header("x-request-id"), "abc-123");
        assert_eq!(up.last().headers["x-request-id"], "abc-123");
        let got = get(&c, gw.addr, ACME, "/api/v2/tickets").await;
        let id = got.header("x-request-id").to_owned();
        assert_eq!(id.len(), 32);
        assert_eq!(up.last().headers["x-request-id"], id.as_str());
        // Refusals carry one too.
        let got = get(&c, gw.addr, "nobody.example", "/api/v2/tickets").await;
        assert_eq!(got.header("x-request-id").len(), 32);
    }

    #[tokio::test]
    async fn upstream_status_location_and_link_pass_through_unchanged() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let got = get(&client(), gw.addr, ACME, "/api/v2/status/201").await;
        assert_eq!(got.status, 201);
        assert_eq!(got.header("location"), "/api/v2/tickets/99");
        assert_eq!(got.header("link"), "<https://x/api/v2/tickets?page=2>; rel=\"next\"");
        assert_eq!(got.header("x-ratelimit-total"), "400", "upstream answers carry the budget headers too");
    }

    #[tokio::test]
    async fn upstream_connections_are_pooled_and_kept_alive() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let c = client();
        for _ in 0..20 {
            assert_eq!(get(&c, gw.addr, ACME, "/api/v2/contacts").await.status, 200);
        }
        assert_eq!(up.count(), 20);
        assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_large_upload_streams_through() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let c = support::client_streaming();
        // 20 MB in 64 KiB chunks, chunked: never one buffer of the whole.
        let chunks = (0..320).map(|_| Ok::<_, std::io::Error>(::hyper::body::Frame::data(Bytes::from(vec![b'x'; 65_536]))));
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let req = http::Request::post(format!("http://{}/api/v2/tickets", gw.addr))
            .header("host", ACME)
            .header("authorization", "Basic eDp4")
            .header("content-type", "multipart/form-data; boundary=b")
            .body(body.boxed())
            .unwrap();
        let rsp = c.request(req).await.unwrap();
        assert_eq!(rsp.status(), 200);
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("\"received\":20971520"), "{body:?}");
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_502() {
        let logs = Logs::capture();
        // Bind then drop: a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let gw = gateway_on(PATH, port, "", TENANTS).await;
        let got = get(&client(), gw.addr, ACME, "/api/v2/tickets").await;
        assert_eq!(got.status, 502);
        assert_eq!(got.json()["code"], "bad_gateway");
        assert_eq!(got.header("x-ratelimit-total"), "400");
        // The call was admitted before the upstream failed it, and given
        // back: the helpdesk never received it.
        assert_refusal_counted(&gw, Some(&logs), "acme", "ticket_list", 502, "bad_gateway", 1).await;
        assert_eq!(got.header("x-ratelimit-used-currentrequest"), "0");
        assert_eq!(used(gw.admin, "acme").await, 0);
    }

    #[tokio::test]
    async fn an_upstream_without_headers_in_time_is_504() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await; // timeout_ms = 1000, /slow waits 2 s
        let started = std::time::Instant::now();
        let got = get(&client(), gw.addr, ACME, "/slow/api").await;
        // Portal path: no budget, but the same timeout applies.
        assert_eq!(got.status, 504);
        let got = get(&client(), gw.addr, ACME, "/api/v2/slow").await;
        assert_eq!(got.status, 200, "an API path that answers in time");
        let got = get(&client(), gw.addr, ACME, "/slow/again").await;
        assert_eq!(got.status, 504);
        assert_eq!(got.json()["code"], "gateway_timeout");
        assert!(started.elapsed() < Duration::from_secs(4), "each 504 comes after timeout_ms, not after the upstream");
    }

    #[tokio::test]
    async fn h2c_downstream_is_served() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let c: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http();
        let req = http::Request::get(format!("http://{ACME}/api/v2/tickets"))
            .header("authorization", "Bearer t")
            .body(Full::new(Bytes::new()))
            .unwrap();
        // Connect to the gateway while naming the tenant in :authority.
        let mut parts = req.into_parts();
        parts.0.uri = format!("http://{}/api/v2/tickets", gw.addr).parse().unwrap();
        parts.0.headers.insert("host", ACME.parse().unwrap());
        let rsp = c.request(http::Request::from_parts(parts.0, parts.1)).await.unwrap();
        assert_eq!(rsp.version(), http::Version::HTTP_2);
        // Over h2 the URI authority is the gateway's address, which names no tenant.
        assert_eq!(rsp.status(), 404);

        let got = support::h2_get(gw.addr, ACME, "/api/v2/tickets").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-ratelimit-total"), "400");
        assert_eq!(up.last().headers["host"], ACME);
    }

    #[tokio::test]
    async fn portal_paths_are_forwarded_untouched() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let c = client();
        let got =
            call(&c, gw.addr, "GET", "unknown.example", "/support/solutions/%7Efoo//bar", &[("authorization", "")], b"")
                .await;
        assert_eq!(got.status, 200);
        assert!(got.headers.get("x-ratelimit-total").is_none());
        assert_eq!(up.last().uri, "/support/solutions/%7Efoo//bar");
        assert_eq!(up.last().headers["host"], "unknown.example");
    }

    /// docs/reference.md "Proxying": the upstream's headers pass through, its `X-Request-Id`
    /// too; the gateway's id (the client's, or a generated one) is kept only
    /// where the upstream sends none. Exactly one such field either way.
    #[tokio::test]
    async fn the_upstreams_own_request_id_reaches_the_client_and_the_gateways_otherwise() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let c = client();
        let ids = |got: &Reply| -> Vec<String> {
            got.headers.get_all("x-request-id").iter().map(|v| v.to_str().unwrap_or("").to_owned()).collect()
        };
        // The upstream's own id wins over the one the gateway generated and forwarded.
        let got = get(&c, gw.addr, ACME, "/api/v2/tickets?request_id=up-123").await;
        assert_eq!(got.status, 200);
        assert_eq!(ids(&got), ["up-123"]);
        let forwarded = up.last().headers["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(forwarded.len(), 32, "{forwarded}");
        // No id from the upstream: the client's own comes back, as forwarded.
        let got = call(&c, gw.addr, "GET", ACME, "/api/v2/tickets", &[("x-request-id", "client-7")], b"").await;
        assert_eq!(ids(&got), ["client-7"]);
        assert_eq!(up.last().headers["x-request-id"], "client-7");
        // Neither sends one: the gateway's generated id, the one the upstream saw.
        let got = get(&c, gw.addr, ACME, "/api/v2/tickets").await;
        let id = ids(&got);
        assert_eq!(id.len(), 1, "{id:?}");
        assert!(id[0].len() == 32 && id[0].bytes().all(|b| b.is_ascii_hexdigit()), "{id:?}");
        assert_eq!(up.last().headers["x-request-id"], id[0].as_str());
        assert_eq!(up.count(), 3);
        assert_eq!(used(gw.admin, "acme").await, 3);
    }
}
