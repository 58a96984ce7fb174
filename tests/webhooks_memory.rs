//! docs/reference.md "Webhook egress" with the in-memory queue: webhooks posted to the `[webhooks]`
//! listener, delivered to a real receiving server, sharing the tenant's
//! budget with API calls. Time-dependent rules run on short windows
//! (`window_seconds = 2`, `retry_schedule_s = [1, 1]`, `max_postpone_s = 3`).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use support::webhooks::{
    json_call, max_in_any_interval, metrics, parse_time, post_webhook, sample, wait_final, wait_status, Receiver,
};
use support::{client, gateway, get, RecordingUpstream, TestGateway};

/// `acme`: 5 per 2 s; `roomy`: 100 per 2 s; `slowpoke`: 5 per 60 s;
/// `seedling`: no API access.
fn rest(alert: Option<&Receiver>) -> String {
    let alert_url = alert.map(|a| format!("alert_url = \"{}\"\n", a.url("/alerts"))).unwrap_or_default();
    format!(
        r#"
[limiter]
store = "memory"

[webhooks]
listen = "127.0.0.1:0"
max_postpone_s = 3
retry_schedule_s = [1, 1]
delivery_timeout_ms = 1000
{alert_url}
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
    let up = RecordingUpstream::start().await;
    let tg = gateway(up.addr, "", &rest(alert)).await;
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
