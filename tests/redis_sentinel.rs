//! Redis behind Sentinel: a primary, a replica and three sentinels, all
//! real processes. The gateway finds the primary through the sentinels,
//! keeps exact budgets on it, and follows a failover under load without a
//! restart. Asynchronous replication can lose the last charges the old
//! primary took: each failover test measures how many (calls admitted that
//! the new primary does not count) and prints it.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::redis::{RedisSentinels, SENTINEL_MASTER};
use support::*;

const HOT: &str = "hot.freshdesk.com";
const SMALL: &str = "small.freshdesk.com";
const SMALL_BUDGET: usize = 20;

async fn sentinel_gateway(set: &RedisSentinels, up: &RecordingUpstream, extra: &str) -> TestGateway {
    let urls = set.urls().iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    let rest = format!(
        "[limiter]\nstore = \"redis\"\nredis_sentinel = [{urls}]\nredis_sentinel_master = \"{SENTINEL_MASTER}\"\n\
         on_store_error = \"fail_closed\"\n{extra}\n\n\
         [[tenant]]\nname = \"hot\"\ndomain = \"{HOT}\"\nplan = \"enterprise_2000\"\nper_minute = 1000000\n\
         endpoints = {{ ticket_list = 1000000, ticket_create = 800, ticket_update = 800, contact_list = 400 }}\n\n\
         [[tenant]]\nname = \"small\"\ndomain = \"{SMALL}\"\nplan = \"trial\"\nper_minute = {SMALL_BUDGET}\n"
    );
    gateway(up.addr, "", &rest).await
}

/// `n` sequential calls of `small`: (200s, 429s); anything else fails.
async fn small_burst(gw: &TestGateway, n: usize) -> (usize, usize) {
    let c = client();
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..n {
        match get(&c, gw.addr, SMALL, "/api/v2/contacts/1").await.status.as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    (ok, limited)
}

fn upstream_saw(up: &RecordingUpstream, host: &str) -> usize {
    up.seen.lock().unwrap().iter().filter(|s| s.headers["host"] == host).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_finds_the_primary_through_the_sentinels_and_counts_exactly_there() {
    let test = "the_gateway_finds_the_primary_through_the_sentinels_and_counts_exactly_there";
    let Some(set) = RedisSentinels::start(test) else { return };
    let up = RecordingUpstream::start().await;
    let gw = sentinel_gateway(&set, &up, "").await;
    assert_eq!(small_burst(&gw, SMALL_BUDGET + 5).await, (SMALL_BUDGET, 5));
    assert_eq!(upstream_saw(&up, SMALL), SMALL_BUDGET, "the upstream saw exactly the admitted calls");
    assert_eq!(used(gw.admin, "small").await, SMALL_BUDGET as u64);
    // The charges live on the primary (and reach the replica from there).
    assert_eq!(set.primary.cli(&["EXISTS", "deskgate:{small}:rl"]), "1");
    let ready = get(&client(), gw.admin, "x", "/readyz").await;
    assert_eq!(ready.status, 200);
}

/// A primary that requires a password: reached with
/// `redis_sentinel_master_password`, refused (by the store, so 503 when
/// failing closed) without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_requires_a_password_is_reached_with_redis_sentinel_master_password() {
    let test = "a_primary_that_requires_a_password_is_reached_with_redis_sentinel_master_password";
    let Some(set) = RedisSentinels::start_with(test, Some("s3cret-pass")) else { return };
    let up = RecordingUpstream::start().await;
    let gw = sentinel_gateway(&set, &up, "redis_sentinel_master_password = \"s3cret-pass\"").await;
    assert_eq!(small_burst(&gw, SMALL_BUDGET + 5).await, (SMALL_BUDGET, 5));
    assert_eq!(upstream_saw(&up, SMALL), SMALL_BUDGET);
    assert_eq!(used(gw.admin, "small").await, SMALL_BUDGET as u64);
    assert_eq!(set.primary.cli(&["EXISTS", "deskgate:{small}:rl"]), "1");

    let without = sentinel_gateway(&set, &up, "").await;
    let got = get(&client(), without.addr, SMALL, "/api/v2/contacts/1").await;
    assert_eq!(got.status, 503, "no password: the store cannot be used, and fail_closed refuses");
    assert_eq!(upstream_saw(&up, SMALL), SMALL_BUDGET, "nothing more reached the upstream");
}

/// Calls of `hot` from `workers` clients in a loop until stopped: each
/// call's status and when it was answered, in that order.
struct Load(support::faults::CallLoop<(u16, Instant)>);

impl Load {
    fn start(gw: &TestGateway, workers: usize) -> Load {
        Load(support::faults::CallLoop::start(gw.addr, workers, HOT, "/api/v2/tickets", |got, _| {
            (got.status.as_u16(), Instant::now())
        }))
    }

    async fn finish(self) -> Vec<(u16, Instant)> {
        let mut all = self.0.finish().await;
        all.sort_by_key(|c| c.1);
        all
    }
}

/// How the primary goes away.
#[derive(Debug, Clone, Copy)]
enum Failover {
    /// SIGKILL: the sentinels call it down after `down-after-milliseconds`
    /// and promote the replica.
    Killed,
    /// `SENTINEL FAILOVER`: the replica is promoted and the old primary,
    /// still running, is made its replica (its writes then answer READONLY).
    Requested,
}

/// Load on `hot` through a failover: the gateway follows the new primary
/// without a restart, never lets a call through without the store
/// (fail_closed), and then counts exactly again (`small`). Prints the calls
/// the failover lost: admitted by the old primary, missing on the new one.
async fn failover_under_load(test: &str, how: Failover) {
    let Some(mut set) = RedisSentinels::start(test) else { return };
    let up = RecordingUpstream::start().await;
    let gw = sentinel_gateway(&set, &up, "store_timeout_ms = 200").await;
    let (old, new) = (set.primary.port, set.replica.port);
    assert_eq!(set.primary_port(), old);

    let load = Load::start(&gw, 4);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let at = Instant::now();
    match how {
        Failover::Killed => set.primary.kill(),
        Failover::Requested => assert_eq!(set.sentinels[0].cli(&["SENTINEL", "FAILOVER", SENTINEL_MASTER]), "OK"),
    }
    // The sentinels promote the replica…
    let deadline = Instant::now() + Duration::from_secs(30);
    while set.primary_port() != new {
        assert!(Instant::now() < deadline, "{how:?}: the sentinels did not promote the replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = at.elapsed();
    // …and the gateway follows: store-decided answers again, no restart.
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = get(&c, gw.addr, HOT, "/api/v2/tickets").await;
        if got.status == 200 && got.header("x-ratelimit-used-currentrequest") == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "{how:?}: the gateway did not follow the new primary: {}", got.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let followed = at.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let calls = load.finish().await;

    let mut statuses = BTreeMap::new();
    for (s, _) in &calls {
        *statuses.entry(*s).or_insert(0usize) += 1;
    }
    assert!(statuses.keys().all(|s| [200, 503].contains(s)), "{how:?}: {statuses:?}");
    let refused: Vec<Duration> =
        calls.iter().filter(|c| c.0 == 503).map(|c| c.1.saturating_duration_since(at)).collect();
    let admitted = upstream_saw(&up, HOT);
    // Every 200 (the load's and the probes') reached the upstream, nothing else did.
    assert!(admitted >= statuses.get(&200).copied().unwrap_or(0), "{admitted} {statuses:?}");
    let counted = used(gw.admin, "hot").await as i64;
    let lost = admitted as i64 - counted;
    println!(
        "{test}: {how:?}: promoted after {promoted:?}, gateway followed after {followed:?}; load {statuses:?}; \
         503s from {:?} to {:?} after the fault; admitted {admitted}, counted by the new primary {counted}: \
         lost charges {lost}",
        refused.first(),
        refused.last()
    );
    // Replication on loopback lags well under a millisecond, and the
    // gateway leaves the old primary as soon as a sentinel announces the
    // replica it promotes: at most a few calls' charges may be lost (a
    // requested failover lost ~2,900 here while the old primary was used
    // until the sentinels demoted it). Fewer than none: a call refused after
    // its timeout whose script still ran is counted but not admitted.
    assert!(lost <= 20, "{how:?}: the failover lost {lost} charges");
    // The new primary holds the budgets from now on, exactly.
    assert_eq!(small_burst(&gw, SMALL_BUDGET + 5).await, (SMALL_BUDGET, 5));
    assert_eq!(upstream_saw(&up, SMALL), SMALL_BUDGET);
    assert_eq!(set.replica.cli(&["EXISTS", "deskgate:{small}:rl"]), "1", "charged on the promoted replica");
    assert_eq!(set.primary_port(), new);
    let _ = old;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_and_the_gateway_follows_the_promoted_replica_under_load() {
    failover_under_load("killed primary", Failover::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_failover_demotes_the_primary_and_the_gateway_follows_under_load() {
    failover_under_load("requested failover", Failover::Requested).await;
}
