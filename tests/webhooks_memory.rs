//! docs/reference.md "Webhook egress" with the in-memory queue: webhooks posted to the `[webhooks]`
//! listener, delivered to a real receiving server, sharing the tenant's
//! budget with API calls. Time-dependent rules run on short windows
//! (`window_seconds = 2`, `retry_schedule_s = [1, 1]`, `max_postpone_s = 3`).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use support::webhooks::{
    json_call, max_in_any_interval, metrics, parse_time, post_webhook, sample, wait_final, wait_status, webhook_status,
    Receiver,
};
use support::{client, gateway, get, used, RecordingUpstream, TestGateway};

/// The tables after `[upstream]`, with `keys` in `[webhooks]` (at least
/// `delivery_timeout_ms`). `acme`: 5 per 2 s; `roomy`: 100 per 2 s;
/// `slowpoke`: 5 per 60 s; `seedling`: no API access.
fn rest_with(alert: Option<&Receiver>, keys: &str) -> String {
    let alert_url = alert.map(|a| format!("alert_url = \"{}\"\n", a.url("/alerts"))).unwrap_or_default();
    format!(
        r#"
[limiter]
store = "memory"

[webhooks]
listen = "127.0.0.1:0"
max_postpone_s = 3
retry_schedule_s = [1, 1]
{keys}{alert_url}
[plans.tight]
per_minute = 5
window_seconds = 2

[plans.roomy]
per_minute = 100
window_seconds = 2

[plans.steady]
per_minute = 5
window_seconds = 60

[[tenant]]
name = "acme"
domain = "acme.freshdesk.com"
plan = "tight"

[[tenant]]
name = "roomy"
domain = "roomy.freshdesk.com"
plan = "roomy"

[[tenant]]
name = "slowpoke"
domain = "slowpoke.freshdesk.com"
plan = "steady"

[[tenant]]
name = "seedling"
domain = "seedling.freshdesk.com"
plan = "sprout"
"#
    )
}

async fn start(alert: Option<&Receiver>) -> (RecordingUpstream, TestGateway, SocketAddr) {
    start_with(alert, "delivery_timeout_ms = 1000\n").await
}

async fn start_with(alert: Option<&Receiver>, keys: &str) -> (RecordingUpstream, TestGateway, SocketAddr) {
    let up = RecordingUpstream::start().await;
    let tg = gateway(up.addr, "", &rest_with(alert, keys)).await;
    let wh = tg.gw.webhooks_addr.expect("webhooks listener");
    (up, tg, wh)
}

#[tokio::test]
async fn a_webhook_is_delivered_with_its_method_headers_body_and_id() {
    let rx = Receiver::start().await;
    let (_up, tg, wh) = start(None).await;
    let got = post_webhook(
        wh,
        json!({
            "tenant": "acme",
            "url": rx.url("/hook?x=1"),
            "method": "PUT",
            "headers": {"X-Custom": "yes", "Content-Type": "application/json"},
            "body": "{\"ticket\":1}",
            "id": "t-1",
        }),
    )
    .await;
    assert_eq!(got.status, 202, "{:?}", got.body);
    assert_eq!(got.json(), json!({"id": "t-1", "status": "sent"}));
    assert!(rx.wait_for(1, Duration::from_secs(5)).await);
    let h = &rx.hits()[0];
    assert_eq!(h.method, "PUT");
    assert_eq!(h.path, "/hook");
    assert_eq!(h.id, "t-1");
    assert_eq!(h.headers["x-custom"], "yes");
    assert_eq!(h.headers["content-type"], "application/json");
    assert_eq!(h.body, "{\"ticket\":1}");
    let v = wait_status(wh, "t-1", "delivered", Duration::from_secs(5)).await;
    assert_eq!(v["status"], "delivered", "{v}");
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["tenant"], "acme");
    let m = metrics(tg.admin).await;
    assert_eq!(sample(&m, r#"deskgate_webhooks_total{tenant="acme",outcome="delivered"}"#), Some(1.0), "{m}");
    assert_eq!(sample(&m, "deskgate_webhook_delay_seconds_count"), Some(1.0));
    tg.gw.shutdown().await;
}

#[tokio::test]
async fn the_listener_refuses_malformed_webhooks_unknown_tenants_and_tenants_without_api_access() {
    let (_up, tg, wh) = start(None).await;
    let got = post_webhook(wh, json!({"tenant": "acme", "url": "ftp://example.com/x"})).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.header("content-type"), "application/json; charset=utf-8");
    let v = got.json();
    assert_eq!(v["description"], "Validation failed");
    assert_eq!(v["errors"][0]["field"], "url");
    assert_eq!(v["errors"][0]["code"], "invalid_value");

    let got = post_webhook(wh, json!({"url": "http://example.com/x"})).await;
    assert_eq!((got.status.as_u16(), got.json()["errors"][0]["field"].clone()), (400, json!("tenant")));
    let got = post_webhook(wh, json!({"tenant": "nobody", "url": "http://example.com/x"})).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.json()["code"], "unknown_tenant");
    let got = post_webhook(wh, json!({"tenant": "seedling", "url": "http://example.com/x"})).await;
    assert_eq!(got.status, 403);
    assert_eq!(got.json()["code"], "require_feature");

    let c = client();
    let got = json_call(&c, wh, "GET", "/webhooks", None).await;
    assert_eq!((got.status.as_u16(), got.header("allow")), (405, "POST"));
    let got = json_call(&c, wh, "GET", "/webhooks/never-seen", None).await;
    assert_eq!(got.status, 404);
    let got = json_call(&c, wh, "POST", "/webhooks", None).await;
    assert_eq!(got.status, 400, "an empty body is not a webhook");
    tg.gw.shutdown().await;
}

#[tokio::test]
async fn the_same_id_posted_again_is_neither_delivered_nor_charged_twice() {
    let rx = Receiver::start().await;
    let (_up, tg, wh) = start(None).await;
    let hook = json!({"tenant": "slowpoke", "url": rx.url("/h"), "id": "dup-1"});
    let first = post_webhook(wh, hook.clone()).await;
    assert_eq!((first.status.as_u16(), first.json()["status"].clone()), (202, json!("sent")));
    for _ in 0..2 {
        let again = post_webhook(wh, hook.clone()).await;
        assert_eq!(again.status, 200, "{:?}", again.body);
        assert_eq!(again.json()["duplicate"], true);
        assert_eq!(again.json()["id"], "dup-1");
    }
    assert!(rx.wait_for(1, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.count(), 1);
    // 5 per 60 s: one webhook + this call = 2 spent.
    let c = client();
    let api = get(&c, tg.addr, "slowpoke.freshdesk.com", "/api/v2/tickets/1").await;
    assert_eq!(api.status, 200);
    assert_eq!(api.header("x-ratelimit-remaining"), "3");
    tg.gw.shutdown().await;
}

#[tokio::test]
async fn a_postponed_webhook_goes_out_no_earlier_than_the_budget_has_room() {
    let rx = Receiver::start().await;
    let (_up, tg, wh) = start(None).await;
    let c = client();
    let t0 = Instant::now();
    for _ in 0..5 {
        let api = get(&c, tg.addr, "acme.freshdesk.com", "/api/v2/tickets/1").await;
        assert_eq!(api.status, 200);
    }
    let got = post_webhook(wh, json!({"tenant": "acme", "url": rx.url("/late"), "id": "late-1"})).await;
    assert_eq!(got.status, 202);
    let v = got.json();
    assert_eq!(v["status"], "postponed", "{v}");
    let due = parse_time(v["due_at"].as_str().unwrap());
    let st = wait_status(wh, "late-1", "postponed", Duration::from_secs(1)).await;
    assert_eq!(st["status"], "postponed");
    assert_eq!(st["attempts"], 0, "being postponed costs nothing");
    assert!(rx.wait_for(1, Duration::from_secs(6)).await, "delivered once there is room");
    let hit = &rx.hits()[0];
    assert!(hit.wall >= due, "sent before its due_at");
    assert!(
        hit.at.duration_since(t0) >= Duration::from_secs(2),
        "sent {:?} after the budget was spent in a 2 s window",
        hit.at.duration_since(t0)
    );
    let st = wait_status(wh, "late-1", "delivered", Duration::from_secs(2)).await;
    assert_eq!(st["attempts"], 1);
    let m = metrics(tg.admin).await;
    assert_eq!(sample(&m, r#"deskgate_webhooks_total{tenant="acme",outcome="postponed"}"#), Some(1.0), "{m}");
    tg.gw.shutdown().await;
}

#[tokio::test]
async fn webhooks_and_api_calls_never_exceed_the_shared_budget_in_any_window() {
    let rx = Receiver::start().await;
    let (_up, tg, wh) = start(None).await;
    // Webhooks first, so both kinds get a share.
    let mut ids = Vec::new();
    for i in 0..12 {
        let id = format!("mix-{i}");
        let got = post_webhook(wh, json!({"tenant": "acme", "url": rx.url("/mix"), "id": id})).await;
        assert_eq!(got.status, 202);
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let api_times = {
        let addr = tg.addr;
        tokio::spawn(async move {
            let c = client();
            let end = Instant::now() + Duration::from_secs(4);
            let mut admitted = Vec::new();
            while Instant::now() < end {
                let got = get(&c, addr, "acme.freshdesk.com", "/api/v2/tickets/1").await;
                if got.status == 200 {
                    admitted.push(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            admitted
        })
    };
    let api = api_times.await.unwrap();
    // Every webhook ends delivered or dropped (postponed past 3 s).
    let mut finals = Vec::new();
    for id in &ids {
        let v = wait_final(wh, id, Duration::from_secs(8)).await;
        let s = v["status"].as_str().unwrap_or("").to_owned();
        if s != "delivered" {
            assert_eq!(s, "dropped", "{v}");
            assert_eq!(v["reason"], "postponed_too_long");
        }
        finals.push(s);
    }
    let hooks: Vec<Instant> = rx.hits().iter().map(|h| h.at).collect();
    assert!(rx.by_id().values().all(|n| *n == 1), "a webhook went out twice");
    assert!(!hooks.is_empty() && !api.is_empty(), "both kinds spent the budget");
    let mut all = api.clone();
    all.extend(&hooks);
    // Both are observed a little after their admission; a 2 s window less
    // 200 ms of observation slack must never hold more than the budget.
    let worst = max_in_any_interval(&all, Duration::from_millis(1800));
    println!(
        "{} api calls, {} deliveries, {} dropped; at most {worst} in any 1.8 s",
        api.len(),
        hooks.len(),
        finals.iter().filter(|s| *s == "dropped").count()
    );
    assert!(
        worst <= 5,
        "{worst} calls + deliveries within 1.8 s (budget 5 per 2 s): {} api, {} webhooks",
        api.len(),
        hooks.len()
    );
    assert!(all.len() >= 8, "the budget was used: {}", all.len());
    tg.gw.shutdown().await;
}

#[tokio::test]
async fn a_failing_receiver_is_retried_on_the_schedule_then_dropped_with_an_alert() {
    let rx = Receiver::start().await;
    rx.status.store(500, std::sync::atomic::Ordering::SeqCst);
    let alerts = Receiver::start().await;
    let (_up, tg, wh) = start(Some(&alerts)).await;
    let got = post_webhook(wh, json!({"tenant": "roomy", "url": rx.url("/fails"), "id": "f-1"})).await;
    assert_eq!(got.json()["status"], "sent");
    // A receiver nobody listens on: connect errors count as failures too.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let got = post_webhook(wh, json!({"tenant": "roomy", "url": format!("http://{closed}/x"), "id": "f-2"})).await;
    assert_eq!(got.json()["status"], "sent");

    assert!(alerts.wait_for(2, Duration::from_secs(8)).await, "two alerts");
    let hits = rx.hits();
    assert_eq!(hits.len(), 3, "first attempt + one per gap of [1, 1]");
    for pair in hits.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
        assert!(gap < Duration::from_millis(1800), "retried late: {gap:?}");
    }
    let v = wait_status(wh, "f-1", "dropped", Duration::from_secs(2)).await;
    assert_eq!(v["reason"], "delivery_failed", "{v}");
    assert_eq!(v["attempts"], 3);
    assert!(v["last_error"].as_str().unwrap().contains("500"), "{v}");
    let v = wait_status(wh, "f-2", "dropped", Duration::from_secs(2)).await;
    assert_eq!(v["attempts"], 3);
    assert!(v["last_error"].as_str().unwrap().contains("connect"), "{v}");

    let alert: serde_json::Value =
        serde_json::from_str(&alerts.hits().iter().find(|h| h.body.contains("f-1")).unwrap().body).unwrap();
    assert_eq!(alert["reason"], "delivery_failed");
    assert_eq!(alert["tenant"], "roomy");
    assert_eq!(alert["webhook_id"], "f-1");
    assert!(alert["message"].as_str().unwrap().contains("Please recheck the webhook settings in your account"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.count(), 3, "no attempt after the schedule ends");
    let m = metrics(tg.admin).await;
    assert_eq!(
        sample(&m, r#"deskgate_webhook_alerts_total{tenant="roomy",reason="delivery_failed"}"#),
        Some(2.0),
        "{m}"
    );
    assert_eq!(sample(&m, r#"deskgate_webhooks_total{tenant="roomy",outcome="failed"}"#), Some(2.0));
    tg.gw.shutdown().await;
}

#[tokio::test]
async fn a_webhook_postponed_past_max_postpone_is_dropped_with_an_alert() {
    let rx = Receiver::start().await;
    let alerts = Receiver::start().await;
    let (_up, tg, wh) = start(Some(&alerts)).await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(get(&c, tg.addr, "slowpoke.freshdesk.com", "/api/v2/tickets/1").await.status, 200);
    }
    let t0 = Instant::now();
    let got = post_webhook(wh, json!({"tenant": "slowpoke", "url": rx.url("/never"), "id": "p-1"})).await;
    let v = got.json();
    assert_eq!(v["status"], "postponed");
    // The budget has room only in ~60 s: the next look is at the 3 s limit.
    let due = parse_time(v["due_at"].as_str().unwrap());
    let accepted = parse_time(webhook_status_accepted(wh, "p-1").await.as_str());
    let wait = due.duration_since(accepted).unwrap();
    assert!(wait <= Duration::from_millis(3100), "{wait:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let m = metrics(tg.admin).await;
    assert_eq!(sample(&m, "deskgate_webhook_queue_depth"), Some(1.0), "{m}");

    assert!(alerts.wait_for(1, Duration::from_secs(5)).await, "an alert");
    let dropped_after = t0.elapsed();
    assert!(dropped_after >= Duration::from_secs(3), "{dropped_after:?}");
    let v = wait_status(wh, "p-1", "dropped", Duration::from_secs(1)).await;
    assert_eq!(v["reason"], "postponed_too_long", "{v}");
    assert_eq!(v["attempts"], 0);
    assert_eq!(rx.count(), 0, "never sent");
    let alert: serde_json::Value = serde_json::from_str(&alerts.hits()[0].body).unwrap();
    assert_eq!(alert["reason"], "postponed_too_long");
    assert_eq!(alert["webhook_id"], "p-1");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let m = metrics(tg.admin).await;
    assert_eq!(
        sample(&m, r#"deskgate_webhook_alerts_total{tenant="slowpoke",reason="postponed_too_long"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, r#"deskgate_webhooks_total{tenant="slowpoke",outcome="dropped"}"#), Some(1.0));
    assert_eq!(sample(&m, "deskgate_webhook_queue_depth"), Some(0.0), "{m}");
    tg.gw.shutdown().await;
}

async fn webhook_status_accepted(wh: SocketAddr, id: &str) -> String {
    let v = support::webhooks::webhook_status(wh, id).await;
    v["accepted_at"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_receiver_slower_than_the_lease_gets_each_webhook_once_because_the_lease_is_renewed() {
    let rx = Receiver::start().await;
    // Each delivery is held five leases long: without renewal the dispatcher
    // would claim it again and send it a second time meanwhile.
    rx.hold_ms.store(1500, Ordering::SeqCst);
    let (_up, tg, wh) = start_with(None, "delivery_timeout_ms = 5000\nlease_ms = 300\n").await;
    let mut ids = Vec::new();
    // acme: 5 per 2 s. Five go out from the listener at once; the sixth is
    // postponed and later sent by the dispatcher, through its own claim.
    for i in 0..6 {
        let id = format!("slow-{i}");
        let body = format!("{{\"n\":{i}}}");
        let got = post_webhook(wh, json!({"tenant": "acme", "url": rx.url("/slow"), "id": id, "body": body})).await;
        assert_eq!(got.status, 202, "{:?}", got.body);
        assert_eq!(got.json()["status"], if i < 5 { "sent" } else { "postponed" });
        ids.push(id);
    }
    assert_eq!(used(tg.admin, "acme").await, 5, "the postponed one is not charged yet");
    for id in &ids {
        let v = wait_final(wh, id, Duration::from_secs(10)).await;
        assert_eq!(v["status"], "delivered", "{id}: {v}");
        assert_eq!(v["attempts"], 1, "{id}: charged once: {v}");
        assert_eq!(v["failures"], 0, "{id}: {v}");
    }
    let by_id = rx.by_id();
    assert_eq!(by_id.len(), 6, "{by_id:?}");
    assert!(by_id.values().all(|n| *n == 1), "sent twice: {by_id:?}");
    assert_eq!(rx.overlaps.load(Ordering::SeqCst), 0);
    for (i, id) in ids.iter().enumerate() {
        let hit = rx.hits().into_iter().find(|h| &h.id == id).unwrap();
        assert_eq!(hit.body, format!("{{\"n\":{i}}}"), "{id}: body intact");
    }
    let m = metrics(tg.admin).await;
    assert_eq!(sample(&m, r#"deskgate_webhooks_total{tenant="acme",outcome="delivered"}"#), Some(6.0), "{m}");
    tg.gw.shutdown().await;
}

#[tokio::test]
async fn a_tenant_at_its_queue_bound_is_refused_with_webhook_queue_full_and_nothing_is_stored_or_charged() {
    let rx = Receiver::start().await;
    let (_up, tg, wh) = start_with(None, "delivery_timeout_ms = 1000\nmax_queued_per_tenant = 3\n").await;
    // slowpoke: 5 per 60 s. Five go out and are done: they no longer count.
    for i in 0..5 {
        let got =
            post_webhook(wh, json!({"tenant": "slowpoke", "url": rx.url("/b"), "id": format!("b-sent-{i}")})).await;
        assert_eq!(got.json()["status"], "sent");
    }
    for i in 0..5 {
        let v = wait_final(wh, &format!("b-sent-{i}"), Duration::from_secs(5)).await;
        assert_eq!(v["status"], "delivered", "{v}");
    }
    // Three wait for the budget: the bound.
    for i in 0..3 {
        let got =
            post_webhook(wh, json!({"tenant": "slowpoke", "url": rx.url("/b"), "id": format!("b-wait-{i}")})).await;
        assert_eq!((got.status.as_u16(), got.json()["status"].clone()), (202, json!("postponed")), "{:?}", got.body);
    }
    let got = post_webhook(wh, json!({"tenant": "slowpoke", "url": rx.url("/b"), "id": "b-over"})).await;
    assert_eq!(got.status, 429, "{:?}", got.body);
    assert_eq!(got.header("content-type"), "application/json; charset=utf-8");
    assert_eq!(got.header("retry-after"), "60");
    let v = got.json();
    assert_eq!(v["code"], "webhook_queue_full", "{v}");
    assert_eq!(v["queued"], 3);
    assert_eq!(v["max_queued_per_tenant"], 3);
    let unknown = json_call(&client(), wh, "GET", "/webhooks/b-over", None).await;
    assert_eq!(unknown.status, 404, "the refused webhook was not stored");
    // A known id is no new webhook: answered as a duplicate, not refused.
    let dup = post_webhook(wh, json!({"tenant": "slowpoke", "url": rx.url("/b"), "id": "b-wait-0"})).await;
    assert_eq!((dup.status.as_u16(), dup.json()["duplicate"].clone()), (200, json!(true)));
    // The bound is per tenant.
    let other = post_webhook(wh, json!({"tenant": "roomy", "url": rx.url("/b"), "id": "b-roomy"})).await;
    assert_eq!(other.json()["status"], "sent", "{:?}", other.body);
    assert!(rx.wait_until(Duration::from_secs(5), |h| h.iter().any(|h| h.id == "b-roomy")).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!rx.hits().iter().any(|h| h.id == "b-over"));
    assert_eq!(rx.count(), 6, "five slowpoke deliveries and roomy's");
    assert_eq!(used(tg.admin, "slowpoke").await, 5, "the refused and the waiting cost nothing");
    let m = metrics(tg.admin).await;
    assert_eq!(sample(&m, r#"deskgate_webhooks_total{tenant="slowpoke",outcome="queue_full"}"#), Some(1.0), "{m}");
    assert_eq!(sample(&m, r#"deskgate_webhooks_total{tenant="roomy",outcome="queue_full"}"#), None);
    tg.gw.shutdown().await;
}

#[tokio::test]
async fn an_alert_post_that_fails_is_retried_on_the_schedule_and_counted() {
    let rx = Receiver::start().await;
    rx.status.store(500, Ordering::SeqCst);
    let alerts = Receiver::start().await;
    alerts.status.store(503, Ordering::SeqCst);
    let (_up, tg, wh) = start(Some(&alerts)).await;
    let got = post_webhook(wh, json!({"tenant": "roomy", "url": rx.url("/fail"), "id": "ar-1", "body": "x"})).await;
    assert_eq!(got.json()["status"], "sent");
    // Three attempts (0, +1 s, +2 s), then the alert; its first POST fails.
    assert!(alerts.wait_for(1, Duration::from_secs(8)).await, "the alert is posted");
    let first_at = alerts.hits()[0].at;
    alerts.status.store(200, Ordering::SeqCst);
    assert!(alerts.wait_for(2, Duration::from_secs(4)).await, "the alert is posted again");
    let hits = alerts.hits();
    let gap = hits[1].at.duration_since(first_at);
    assert!(gap >= Duration::from_millis(1000), "retried after the schedule's first gap, not {gap:?}");
    assert_eq!(hits[0].body, hits[1].body, "the same alert");
    let alert: serde_json::Value = serde_json::from_str(&hits[1].body).unwrap();
    assert_eq!((alert["webhook_id"].as_str(), alert["reason"].as_str()), (Some("ar-1"), Some("delivery_failed")));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(alerts.count(), 2, "not posted again once accepted");
    assert_eq!(rx.by_id().get("ar-1"), Some(&3));
    assert!(rx.hits().iter().all(|h| h.body == "x"));
    let v = webhook_status(wh, "ar-1").await;
    assert_eq!(
        (v["status"].as_str(), v["attempts"].as_u64()),
        (Some("dropped"), Some(3)),
        "each attempt charged once: {v}"
    );
    let m = metrics(tg.admin).await;
    assert_eq!(sample(&m, r#"deskgate_webhook_alert_posts_total{outcome="failed"}"#), Some(1.0), "{m}");
    assert_eq!(sample(&m, r#"deskgate_webhook_alert_posts_total{outcome="delivered"}"#), Some(1.0), "{m}");
    assert_eq!(sample(&m, r#"deskgate_webhook_alert_posts_total{outcome="abandoned"}"#), None, "{m}");
    tg.gw.shutdown().await;
}

#[tokio::test]
async fn an_alert_post_that_keeps_failing_is_abandoned_after_the_schedule() {
    let rx = Receiver::start().await;
    rx.status.store(500, Ordering::SeqCst);
    let alerts = Receiver::start().await;
    alerts.status.store(500, Ordering::SeqCst);
    let (_up, tg, wh) = start(Some(&alerts)).await;
    post_webhook(wh, json!({"tenant": "roomy", "url": rx.url("/fail"), "id": "ab-1"})).await;
    // Alert tries at 0, +1 s, +2 s after the drop, like a delivery.
    assert!(alerts.wait_for(3, Duration::from_secs(10)).await, "tried three times");
    let m = eventually_metric(tg.admin, r#"deskgate_webhook_alert_posts_total{outcome="abandoned"}"#, 1.0).await;
    assert_eq!(sample(&m, r#"deskgate_webhook_alert_posts_total{outcome="failed"}"#), Some(3.0), "{m}");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(alerts.count(), 3, "given up after the schedule");
    tg.gw.shutdown().await;
}

/// The metrics text once `name` reads `want` (or after 3 s).
async fn eventually_metric(admin: SocketAddr, name: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let m = metrics(admin).await;
        if sample(&m, name) == Some(want) || Instant::now() >= deadline {
            assert_eq!(sample(&m, name), Some(want), "{m}");
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
