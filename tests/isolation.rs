//! Tenant isolation: one tenant calling at 20× its budget changes
//! neither another tenant's admitted count nor, beyond noise, its latency —
//! with the in-memory store and with Redis.
//!
//! "Noise" is measured, not guessed: the quiet tenant's latency during the
//! over-budget flood is compared with its latency during a flood of the same
//! volume by a tenant with room for all of it (every call admitted and
//! forwarded). The gateway, the clients and the upstream share two cores in
//! one process, so any flood slows everyone a little; an over-budget one must
//! not slow the others more than an admitted one does.

mod support;

use std::time::{Duration, Instant};

use support::faults::*;
use support::redis::RedisServer;
use support::*;

const NOISY: &str = "noisy.freshdesk.com";
const BUSY: &str = "busy.freshdesk.com";
const QUIET: &str = "quiet.freshdesk.com";
const NOISY_BUDGET: usize = 50;
const QUIET_CALLS: usize = 120;

fn tenants(limiter: &str) -> String {
    format!(
        "{limiter}\n[[tenant]]\nname = \"noisy\"\ndomain = \"{NOISY}\"\nplan = \"trial\"\nper_minute = {NOISY_BUDGET}\n\n\
         [[tenant]]\nname = \"busy\"\ndomain = \"{BUSY}\"\nplan = \"enterprise_2000\"\nper_minute = 100000\n\
         endpoints = {{ ticket_list = 100000 }}\n\n\
         [[tenant]]\nname = \"quiet\"\ndomain = \"{QUIET}\"\nplan = \"enterprise_2000\"\nper_minute = 1000\n\
         endpoints = {{ ticket_list = 400, contact_list = 400 }}\n"
    )
}

/// The quiet tenant's steady workload: 4 clients, paced, mixed endpoints.
/// Returns (admitted, latencies).
async fn quiet_workload(addr: std::net::SocketAddr) -> (usize, Latencies) {
    let mut tasks = Vec::new();
    for w in 0..4 {
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut out = Vec::new();
            for i in 0..QUIET_CALLS / 4 {
                let path =
                    ["/api/v2/tickets", "/api/v2/contacts", "/api/v2/tickets/7", "/api/v2/companies"][(w + i) % 4];
                let start = Instant::now();
                let got = get(&c, addr, QUIET, path).await;
                out.push((got.status.as_u16(), start.elapsed()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            out
        }));
    }
    let mut admitted = 0;
    let mut lat = Vec::new();
    for t in tasks {
        for (status, l) in t.await.unwrap() {
            admitted += usize::from(status == 200);
            lat.push(l);
        }
    }
    (admitted, Latencies::new(lat))
}

/// 20× the noisy tenant's budget (1 000 calls) from 8 clients, each pacing
/// itself 2 ms apart, on `host`.
async fn flood(addr: std::net::SocketAddr, host: &'static str) -> (usize, usize) {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut limited) = (0, 0);
            for _ in 0..(NOISY_BUDGET * 20) / 8 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                match get(&c, addr, host, "/api/v2/tickets").await.status.as_u16() {
                    200 => ok += 1,
                    429 => limited += 1,
                    s => panic!("noisy got {s}"),
                }
            }
            (ok, limited)
        }));
    }
    let mut total = (0, 0);
    for t in tasks {
        let (ok, limited) = t.await.unwrap();
        total.0 += ok;
        total.1 += limited;
    }
    total
}

async fn isolation(store: &str, gw: TestGateway) {
    // Warm up connections and code paths.
    let _ = quiet_workload(gw.addr).await;
    let (alone, base) = quiet_workload(gw.addr).await;
    assert_eq!(alone, QUIET_CALLS, "{store}: quiet alone");

    let (busy, quiet) = tokio::join!(flood(gw.addr, BUSY), quiet_workload(gw.addr));
    let (admitted, admitted_flood) = quiet;
    assert_eq!(busy.0, NOISY_BUDGET * 20, "{store}: busy has room for its whole flood");
    assert_eq!(admitted, QUIET_CALLS, "{store}: quiet beside an admitted flood");
    let (flooding, quiet) = tokio::join!(flood(gw.addr, NOISY), quiet_workload(gw.addr));
    let (admitted, during) = quiet;
    println!("{store}: quiet alone: {base}");
    println!("{store}: quiet beside 1000 admitted calls of another tenant: {admitted_flood}");
    println!("{store}: quiet beside 1000 calls of a tenant 20x over budget: {during}");
    println!("{store}: noisy flood: {} admitted, {} refused with 429", flooding.0, flooding.1);
    assert_eq!(flooding.0, NOISY_BUDGET, "{store}: the noisy tenant gets exactly its budget");
    assert_eq!(admitted, QUIET_CALLS, "{store}: every quiet call within budget is admitted");
    // The quiet tenant's budget shows exactly its own calls (4 workloads).
    let c = client();
    let v = get(&c, gw.admin, "localhost", "/tenants/quiet").await.json();
    assert_eq!(v["windows"][0]["used"].as_u64(), Some(4 * QUIET_CALLS as u64), "{store}: {v}");
    // Latency: an over-budget flood costs the others no more than an admitted
    // one of the same size (generous factor: two shared cores, never a perf target).
    let (b, d) = (admitted_flood.pct(0.5), during.pct(0.5));
    assert!(
        d < b * 3 + Duration::from_millis(20),
        "{store}: quiet p50 {b:?} beside an admitted flood, {d:?} beside the over-budget one"
    );
    let (b, d) = (admitted_flood.pct(0.99), during.pct(0.99));
    assert!(
        d < b * 3 + Duration::from_millis(100),
        "{store}: quiet p99 {b:?} beside an admitted flood, {d:?} beside the over-budget one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_twenty_times_its_budget_does_not_touch_another_memory_store() {
    let up = RecordingUpstream::start().await;
    let gw = gateway(up.addr, "", &tenants("")).await;
    isolation("memory", gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_twenty_times_its_budget_does_not_touch_another_redis_store() {
    let Some(redis) = RedisServer::start("isolation/redis") else { return };
    let up = RecordingUpstream::start().await;
    let limiter = format!("[limiter]\nstore = \"redis\"\nredis_url = \"{}\"\nstore_timeout_ms = 1000\n", redis.url());
    let gw = gateway(up.addr, "", &tenants(&limiter)).await;
    isolation("redis", gw).await;
}
