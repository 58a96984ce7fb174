//! What is charged: a call the helpdesk answers 401 or never receives is
//! given back; a call it may have counted (a 504 after the request was
//! sent) stays charged; a credential the helpdesk has just refused is
//! answered 401 by the gateway, uncharged, for `refused_credential_ttl_ms`.
//! Each on both paths, with the memory store and with Redis.

mod support;

use std::time::Duration;

use support::redis::RedisServer;
use support::*;

const ACME: &str = "acme.freshdesk.com";

async fn with_key(c: &TestClient, gw: &TestGateway, key: &str) -> Reply {
    call(c, gw.addr, "GET", ACME, "/api/v2/tickets", &[("authorization", key)], b"").await
}

async fn refunds(gw: &TestGateway, reason: &str) -> f64 {
    let samples = metrics::scrape(gw.admin).await;
    metrics::value(&samples, "deskgate_refunds_total", &[("tenant", "acme"), ("reason", reason)]).unwrap_or(0.0)
}

/// The scenario of a key the helpdesk refuses, on a gateway whose limiter
/// is `limiter` (TOML, empty for the memory store).
async fn a_refused_key(path: Path, limiter: &str) {
    let up = RecordingUpstream::start().await;
    let gw = gateway_on(path, up.addr, "", &format!("{limiter}\n{TENANTS}")).await;
    let c = client();
    // The helpdesk's 401 reaches the client, and the call costs nothing.
    let got = with_key(&c, &gw, BAD_KEY).await;
    assert_eq!(got.status, 401, "{:?}", got.body);
    assert_eq!(got.header("x-ratelimit-used-currentrequest"), "0");
    assert_eq!(got.header("x-ratelimit-remaining"), "400");
    assert!(got.header("ratelimit").starts_with("\"ticket_list\";r=100;"), "{}", got.header("ratelimit"));
    assert_eq!(up.count(), 1);
    assert_eq!(used(gw.admin, "acme").await, 0);
    assert_eq!(refunds(&gw, "upstream_401").await, 1.0);
    // The same key again: refused here, without the helpdesk, uncharged.
    let again = with_key(&c, &gw, BAD_KEY).await;
    assert_eq!(again.status, 401);
    assert_eq!(again.json()["code"], "invalid_credentials");
    assert_eq!(up.count(), 1, "the refused key reached the helpdesk again");
    assert_eq!(used(gw.admin, "acme").await, 0);
    // Another key still goes through, and is charged.
    let good = with_key(&c, &gw, "Basic Z29vZDpY").await;
    assert_eq!(good.status, 200);
    assert_eq!(good.header("x-ratelimit-used-currentrequest"), "1");
    assert_eq!(up.count(), 2);
    assert_eq!(used(gw.admin, "acme").await, 1);
    // The refused key for another tenant is that tenant's business.
    let tiny =
        call(&c, gw.addr, "GET", "tiny.freshdesk.com", "/api/v2/tickets", &[("authorization", BAD_KEY)], b"").await;
    assert_eq!(tiny.status, 401);
    assert_eq!(up.count(), 3);
}

/// A call the upstream never received: 502, and not charged.
async fn an_unreachable_helpdesk(path: Path, limiter: &str) {
    let gw = gateway_on(path, refused_addr().await, "", &format!("{limiter}\n{TENANTS}")).await;
    let c = client();
    for _ in 0..3 {
        let got = get(&c, gw.addr, ACME, "/api/v2/tickets").await;
        assert_eq!(got.status, 502, "{:?}", got.body);
        assert_eq!(got.header("x-ratelimit-used-currentrequest"), "0");
        assert_eq!(got.header("x-ratelimit-remaining"), "400");
    }
    assert_eq!(used(gw.admin, "acme").await, 0);
    assert_eq!(refunds(&gw, "upstream_unreachable").await, 3.0);
}

support::on_both_paths! {
    #[tokio::test]
    async fn a_key_the_helpdesk_refuses_costs_nothing_and_is_refused_here_for_a_while() {
        a_refused_key(PATH, "").await;
    }

    #[tokio::test]
    async fn a_call_the_helpdesk_never_received_is_not_charged() {
        an_unreachable_helpdesk(PATH, "").await;
    }

    #[tokio::test]
    async fn the_redis_store_refunds_a_refused_key() {
        let Some(r) = RedisServer::start("charging_redis_refused_key") else { return };
        a_refused_key(PATH, &format!("[limiter]\nstore = \"redis\"\nredis_url = \"{}\"", r.url())).await;
    }

    #[tokio::test]
    async fn the_redis_store_refunds_a_call_the_helpdesk_never_received() {
        let Some(r) = RedisServer::start("charging_redis_unreachable") else { return };
        an_unreachable_helpdesk(PATH, &format!("[limiter]\nstore = \"redis\"\nredis_url = \"{}\"", r.url())).await;
    }

    #[tokio::test]
    async fn a_refused_key_is_asked_again_once_the_ttl_passes_and_never_with_ttl_zero() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", &format!("[limiter]\nrefused_credential_ttl_ms = 300\n{TENANTS}")).await;
        let c = client();
        assert_eq!(with_key(&c, &gw, BAD_KEY).await.status, 401);
        assert_eq!(with_key(&c, &gw, BAD_KEY).await.status, 401);
        assert_eq!(up.count(), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(with_key(&c, &gw, BAD_KEY).await.status, 401);
        assert_eq!(up.count(), 2, "the key was not asked again after the TTL");
        assert_eq!(used(gw.admin, "acme").await, 0);

        let off = gateway_on(PATH, up.addr, "", &format!("[limiter]\nrefused_credential_ttl_ms = 0\n{TENANTS}")).await;
        for _ in 0..3 {
            assert_eq!(with_key(&c, &off, BAD_KEY).await.status, 401);
        }
        assert_eq!(up.count(), 5, "with the TTL at 0 every call reaches the helpdesk");
        assert_eq!(used(off.admin, "acme").await, 0);
    }

    #[tokio::test]
    async fn a_refused_key_is_not_charged_even_when_invalid_calls_are() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", &format!("[limiter]\ncharge_invalid = true\n{TENANTS}")).await;
        let c = client();
        assert_eq!(with_key(&c, &gw, BAD_KEY).await.status, 401);
        assert_eq!(with_key(&c, &gw, BAD_KEY).await.status, 401);
        assert_eq!(up.count(), 1);
        assert_eq!(used(gw.admin, "acme").await, 0);
    }

    #[tokio::test]
    async fn a_504_after_the_call_was_sent_stays_charged() {
        let up = FaultyUpstream::start(Fault::NoHeaders).await;
        let gw = gateway_on(PATH, up.addr, "", TENANTS).await;
        let got = get(&client(), gw.addr, ACME, "/api/v2/tickets").await;
        assert_eq!(got.status, 504, "{:?}", got.body);
        assert_eq!(got.header("x-ratelimit-used-currentrequest"), "1");
        assert_eq!(used(gw.admin, "acme").await, 1);
        assert_eq!(refunds(&gw, "upstream_unreachable").await, 0.0);
    }
}
