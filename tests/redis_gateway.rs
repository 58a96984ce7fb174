//! Several gateways sharing one Redis, over HTTP (docs/reference.md "Budgets", "Store"): one exact
//! budget per tenant whatever the number of replicas, and the configured
//! fail mode when Redis goes away, with automatic recovery.

mod support;

use std::time::{Duration, Instant};

use support::redis::{RedisCluster, RedisServer};
use support::*;

fn limiter_toml(store: &str, on_error: &str, timeout_ms: u64) -> String {
    format!(
        "[limiter]\n{store}\non_store_error = \"{on_error}\"\nstore_timeout_ms = {timeout_ms}\n\n\
         [[tenant]]\nname = \"shared\"\ndomain = \"shared.freshdesk.com\"\nplan = \"trial\"\nper_minute = 60\n\
         endpoints = {{ ticket_list = 25 }}\n"
    )
}

/// Fires `n` concurrent GETs spread round-robin over the gateways; returns (200s, 429s).
async fn burst(gws: &[&TestGateway], n: usize, path: &'static str) -> (usize, usize) {
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (c, addr) = (c.clone(), gws[i % gws.len()].addr);
        tasks.push(tokio::spawn(async move { get(&c, addr, "shared.freshdesk.com", path).await.status.as_u16() }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    (ok, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_sharing_one_redis_admit_exactly_the_budget() {
    let Some(redis) = RedisServer::start("three_gateways_sharing_one_redis_admit_exactly_the_budget") else { return };
    let up = RecordingUpstream::start().await;
    let toml = limiter_toml(&format!("store = \"redis\"\nredis_url = \"{}\"", redis.url()), "fail_closed", 2000);
    let a = gateway(up.addr, "", &toml).await;
    let b = gateway(up.addr, "", &toml).await;
    let c = gateway(up.addr, "", &toml).await;
    // ticket_list budget 25 binds first.
    assert_eq!(burst(&[&a, &b, &c], 120, "/api/v2/tickets").await, (25, 95));
    // The account (60) still has 35 for other endpoints, shared the same way.
    assert_eq!(burst(&[&a, &b, &c], 120, "/api/v2/contacts").await, (35, 85));
    assert_eq!(up.count(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_on_a_three_master_cluster_admit_exactly_the_budget() {
    let Some(cluster) = RedisCluster::start("gateways_on_a_three_master_cluster_admit_exactly_the_budget") else {
        return;
    };
    let urls = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    let up = RecordingUpstream::start().await;
    let toml = limiter_toml(&format!("store = \"redis\"\nredis_cluster = [{urls}]"), "fail_closed", 2000);
    let a = gateway(up.addr, "", &toml).await;
    let b = gateway(up.addr, "", &toml).await;
    assert_eq!(burst(&[&a, &b], 100, "/api/v2/tickets").await, (25, 75));
    assert_eq!(up.count(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_open_then_enforcement_resumes_after_restart() {
    let Some(mut redis) = RedisServer::start("redis_down_fails_open_then_enforcement_resumes_after_restart") else {
        return;
    };
    let up = RecordingUpstream::start().await;
    let toml = limiter_toml(&format!("store = \"redis\"\nredis_url = \"{}\"", redis.url()), "fail_open", 100);
    let gw = gateway(up.addr, "", &toml).await;
    let c = client();
    assert_eq!(get(&c, gw.addr, "shared.freshdesk.com", "/api/v2/tickets").await.status, 200);

    redis.kill();
    for _ in 0..10 {
        let started = Instant::now();
        let got = get(&c, gw.addr, "shared.freshdesk.com", "/api/v2/tickets").await;
        assert_eq!(got.status, 200, "fail_open forwards");
        assert!(started.elapsed() < Duration::from_secs(1), "a dead store costs at most the timeout");
    }
    redis.restart();
    // Enforcement comes back by itself: the budget binds again (restarted empty).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_429 = false;
    while Instant::now() < deadline && !saw_429 {
        saw_429 = get(&c, gw.addr, "shared.freshdesk.com", "/api/v2/tickets").await.status == 429;
    }
    assert!(saw_429, "the budget is enforced again after Redis restarts");
    let ready = get(&c, gw.admin, "x", "/readyz").await;
    assert_eq!(ready.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_with_503_and_retry_after() {
    let Some(mut redis) = RedisServer::start("redis_down_fails_closed_with_503_and_retry_after") else { return };
    let up = RecordingUpstream::start().await;
    let toml = limiter_toml(&format!("store = \"redis\"\nredis_url = \"{}\"", redis.url()), "fail_closed", 100);
    let gw = gateway(up.addr, "", &toml).await;
    let c = client();
    assert_eq!(get(&c, gw.addr, "shared.freshdesk.com", "/api/v2/tickets").await.status, 200);
    redis.kill();
    let got = get(&c, gw.addr, "shared.freshdesk.com", "/api/v2/tickets").await;
    assert_eq!(got.status, 503);
    assert_eq!(got.json()["code"], "service_unavailable");
    assert!(got.header("retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(up.count(), 1, "nothing reached the upstream while the store was down");
    // Readiness follows the store when failing closed.
    for _ in 0..5 {
        get(&c, gw.addr, "shared.freshdesk.com", "/api/v2/tickets").await;
    }
    assert_eq!(get(&c, gw.admin, "x", "/readyz").await.status, 503);
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    while Instant::now() < deadline && status != 200 {
        status = get(&c, gw.addr, "shared.freshdesk.com", "/api/v2/tickets").await.status.as_u16();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "recovers without a restart");
}
