//! The Redis store against real `redis-server` processes (docs/reference.md "Budgets", "Store").
//! Each test starts its own server on a free loopback port; without
//! `redis-server` on PATH the tests print a line and pass, unless
//! `DESKGATE_REQUIRE_REDIS=1`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deskgate::config::{LimiterConfig, OnStoreError, StoreKind};
use deskgate::endpoint::Endpoint;
use deskgate::limiter::window::{self, Window};
use deskgate::limiter::{
    Ask, Decision, Limiter, Policy, PolicyState, RedisStore, Store, StoreUnavailable, CIRCUIT_FAILURES,
};
use deskgate::reject::Reject;
use futures_util::future::join_all;
use rand::{Rng, SeedableRng};
use support::redis::{RedisCluster, RedisServer};

const S: u64 = 1_000_000;
/// A realistic store clock (µs since the epoch, 2024).
const T0: u64 = 1_717_000_000 * S;

fn cfg(store: StoreKind, on_store_error: OnStoreError, timeout_ms: u64) -> LimiterConfig {
    LimiterConfig {
        store,
        on_store_error,
        store_timeout: Duration::from_millis(timeout_ms),
        key_prefix: "deskgate".into(),
        charge_invalid: false,
        redis_batch: true,
        refused_credential_ttl: Duration::from_secs(10),
    }
}

fn single(r: &RedisServer) -> StoreKind {
    StoreKind::Redis { url: r.url() }
}

fn account(quota: u32, window_s: u32) -> Policy {
    Policy { name: "account", quota, window_s }
}

fn ep(e: Endpoint, quota: u32, window_s: u32) -> Option<(Endpoint, Policy)> {
    Some((e, Policy { name: e.as_str(), quota, window_s }))
}

fn ask(tenant: &str, cost: u32, account: Policy, endpoint: Option<(Endpoint, Policy)>) -> Ask<'_> {
    Ask { tenant, cost, account, endpoint }
}

async fn store(r: &RedisServer) -> RedisStore {
    let s = RedisStore::connect(&single(r), "deskgate", true).await.expect("connect");
    assert!(s.is_connected());
    s
}

/// `INFO commandstats` as (command, calls, usec_per_call).
fn commandstats(r: &RedisServer) -> Vec<(String, u64, f64)> {
    r.cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |k: &str| {
                rest.split(',').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')).unwrap_or("0").to_owned()
            };
            Some((name.to_owned(), field("calls").parse().ok()?, field("usec_per_call").parse().ok()?))
        })
        .collect()
}

fn evalsha_calls(r: &RedisServer) -> u64 {
    commandstats(r).iter().find(|c| c.0 == "evalsha").map_or(0, |c| c.1)
}

#[tokio::test]
async fn a_call_is_charged_to_both_windows_or_to_neither() {
    let Some(r) = RedisServer::start("a_call_is_charged_to_both_windows_or_to_neither") else {
        return;
    };
    let s = store(&r).await;
    let acc = account(10, 60);
    let list = ep(Endpoint::TicketList, 3, 60);
    for i in 0..3 {
        let d = s.acquire(&ask("acme", 1, acc, list)).await.unwrap();
        assert!(d.allowed, "call {i}");
    }
    // The endpoint is exhausted: refused, and the account is not charged.
    let d = s.acquire(&ask("acme", 1, acc, list)).await.unwrap();
    assert!(!d.allowed);
    assert!(d.endpoint.unwrap().retry_ms.is_some());
    assert_eq!(d.account.retry_ms, None);
    assert_eq!(d.account.remaining, 7);
    assert_eq!(s.acquire(&ask("acme", 0, acc, None)).await.unwrap().account.remaining, 7);
    // Account-only calls use the rest of the account.
    for _ in 0..7 {
        assert!(s.acquire(&ask("acme", 1, acc, None)).await.unwrap().allowed);
    }
    // The account is exhausted: an untouched endpoint is not charged either.
    let create = ep(Endpoint::TicketCreate, 5, 60);
    let d = s.acquire(&ask("acme", 1, acc, create)).await.unwrap();
    assert!(!d.allowed);
    assert!(d.account.retry_ms.is_some());
    assert_eq!(d.endpoint.unwrap().retry_ms, None);
    let read = s.acquire(&ask("acme", 0, acc, create)).await.unwrap();
    assert_eq!(read.endpoint.unwrap().remaining, 5);
    assert_eq!(read.account.remaining, 0);
}

#[tokio::test]
async fn the_cost_is_consumed_from_every_budget_and_a_read_writes_nothing() {
    let Some(r) = RedisServer::start("the_cost_is_consumed_from_every_budget_and_a_read_writes_nothing") else {
        return;
    };
    let s = store(&r).await;
    let acc = account(400, 60);
    let list = ep(Endpoint::TicketList, 100, 60);
    // A read of a tenant never seen creates nothing.
    let d = s.acquire(&ask("fresh", 0, acc, list)).await.unwrap();
    assert!(d.allowed);
    assert_eq!((d.account.remaining, d.endpoint.unwrap().remaining), (400, 100));
    assert_eq!(r.cli(&["EXISTS", &s.key("fresh")]), "0");
    // include=description,requester,stats costs 7, from both budgets.
    let d = s.acquire(&ask("acme", 7, acc, list)).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.charged(), 7);
    assert_eq!((d.account.remaining, d.endpoint.unwrap().remaining), (393, 93));
    let before = r.cli(&["GET", &s.key("acme")]);
    let d = s.acquire(&ask("acme", 0, acc, list)).await.unwrap();
    assert_eq!((d.account.remaining, d.endpoint.unwrap().remaining), (393, 93));
    assert_eq!(r.cli(&["GET", &s.key("acme")]), before, "a read changed the key");
    // The key expires by itself: about one window plus slack.
    let ttl: i64 = r.cli(&["PTTL", &s.key("acme")]).parse().unwrap();
    assert!((60_000..=62_100).contains(&ttl), "pttl {ttl}");
    // A cost above the quota never fits and says so.
    let d = s.acquire(&ask("acme", 101, acc, list)).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.endpoint.unwrap().retry_ms, Some(u64::MAX));
}

/// What the memory store's arithmetic says (window.rs), for comparison.
fn expected(wa: &mut Window, we: &mut Window, a: &Ask<'_>, now: u64) -> Decision {
    let (_, ep) = a.endpoint.unwrap();
    let av = wa.judge(now, a.account.quota, a.cost);
    let ev = we.judge(now, ep.quota, a.cost);
    let allowed = av.fits && ev.fits;
    let (mut sa, mut se) = (0, 0);
    if allowed && a.cost > 0 {
        sa = wa.charge(now, a.cost);
        se = we.charge(now, a.cost);
    }
    Decision {
        allowed,
        cost: a.cost,
        account: PolicyState::new(a.account, &av, allowed, a.cost, wa.reset_us(now)).charged_to(sa),
        endpoint: Some(PolicyState::new(ep, &ev, allowed, a.cost, we.reset_us(now)).charged_to(se)),
        degraded: false,
    }
}

/// How far the store clock moves before the next call in the step-by-step
/// tests: 1 % of the time idle for `idle` to 2 × `idle`, 30 % not at all
/// (calls in the same microsecond), otherwise up to `step`.
fn clock_step(rng: &mut impl Rng, idle: u64, step: u64) -> u64 {
    match rng.gen_range(0..100) {
        0 => idle + rng.gen_range(0..idle),
        1..=30 => 0,
        _ => rng.gen_range(0..step),
    }
}

#[tokio::test]
async fn the_script_agrees_with_the_rust_window_step_by_step() {
    let Some(r) = RedisServer::start("the_script_agrees_with_the_rust_window_step_by_step") else {
        return;
    };
    let s = store(&r).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (window_s, qa, qe) in [(10u32, 20u32, 8u32), (7, 50, 50), (60, 700, 200), (1, 3, 2)] {
        let tenant = format!("t{window_s}");
        let (acc, list) = (account(qa, window_s), ep(Endpoint::TicketList, qe, window_s));
        let (mut wa, mut we) = (Window::new(window_s), Window::new(window_s));
        let mut now = T0 + rng.gen_range(0..S);
        let span = u64::from(window_s) * S;
        for step in 0..1500 {
            now += clock_step(&mut rng, span, span / 20);
            let cost = [0, 1, 1, 1, 2, 3, 7][rng.gen_range(0..7)];
            let a = ask(&tenant, cost, acc, list);
            let want = expected(&mut wa, &mut we, &a, now);
            let got = s
                .acquire_at(&a, now)
                .await
                .unwrap_or_else(|e| panic!("window {window_s}s, step {step}, now {now}, cost {cost}: {e}"));
            assert_eq!(got, want, "window {window_s}s, step {step}, now {now}, cost {cost}");
        }
    }
}

/// A batch (one script call for several calls, on one clock) decides each
/// call exactly as window.rs does one after the other: calls of the same
/// tenant see each other's charges, calls of other tenants do not.
#[tokio::test]
async fn a_batch_decides_each_call_as_if_alone_step_by_step() {
    let Some(r) = RedisServer::start("a_batch_decides_each_call_as_if_alone_step_by_step") else {
        return;
    };
    let s = store(&r).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    // (tenant, window_s, account quota, ticket_list quota)
    let tenants = [("x", 10u32, 20u32, 8u32), ("y", 7, 50, 50), ("z", 1, 3, 2)];
    let mut models: Vec<(Window, Window)> = tenants.iter().map(|t| (Window::new(t.1), Window::new(t.1))).collect();
    let mut now = T0 + rng.gen_range(0..S);
    for step in 0..600 {
        now += clock_step(&mut rng, 12 * S, S / 4); // idle: longer than every window
        let picks: Vec<(usize, u32)> =
            (0..rng.gen_range(1..12)).map(|_| (rng.gen_range(0..3), [0, 1, 1, 2, 3][rng.gen_range(0..5)])).collect();
        let asks: Vec<Ask<'_>> = picks
            .iter()
            .map(|&(t, cost)| {
                let (name, w, qa, qe) = tenants[t];
                ask(name, cost, account(qa, w), ep(Endpoint::TicketList, qe, w))
            })
            .collect();
        let want: Vec<Decision> = picks
            .iter()
            .zip(&asks)
            .map(|(&(t, _), a)| {
                let (wa, we) = &mut models[t];
                expected(wa, we, a, now)
            })
            .collect();
        let got = s.acquire_batch_at(&asks, now).await.unwrap_or_else(|e| panic!("step {step}: {e}"));
        for (i, (g, w)) in got.into_iter().zip(want).enumerate() {
            let g = g.unwrap_or_else(|e| panic!("step {step}, call {i}: {e}"));
            assert_eq!(g, w, "step {step}, call {i} of {}, now {now}", asks.len());
        }
    }
}

/// A burst of one tenant's one endpoint reaches the script as a run of the
/// same call side by side, which it decides on numbers kept from the run's
/// previous call. Runs of every shape, checked call by call against
/// window.rs: account-only and endpoint calls, reads, runs that run out of
/// budget half-way, wide (32-bit) counters, the same call again after a run
/// of another one, runs of several tenants in one batch, a clock that stays
/// put or moves between batches.
#[tokio::test]
async fn runs_of_the_same_call_in_a_batch_are_decided_as_if_alone() {
    let Some(r) = RedisServer::start("runs_of_the_same_call_in_a_batch_are_decided_as_if_alone") else {
        return;
    };
    let s = store(&r).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    // (tenant, window_s, account quota, endpoint quota, cost unit)
    let tenants = [("p", 10u32, 300u32, 150u32, 1u32), ("q", 3, 60, 40, 1), ("w", 10, 6_000_000, 3_000_000, 20_000)];
    let endpoints = [None, Some(Endpoint::TicketList), Some(Endpoint::ContactList)];
    // The model: each tenant's account window and endpoint windows.
    let mut models: Vec<(Window, Vec<Window>)> =
        tenants.iter().map(|t| (Window::new(t.1), (0..3).map(|_| Window::new(t.1)).collect())).collect();
    let mut now = T0 + rng.gen_range(0..S);
    let (mut charged, mut refused) = (0, 0);
    for step in 0..400 {
        now += clock_step(&mut rng, 20 * S, S / 2);
        let mut picks: Vec<(usize, usize, u32)> = Vec::new();
        for _ in 0..rng.gen_range(1..5) {
            let (t, e, cost) = (rng.gen_range(0..3), rng.gen_range(0..3), [0, 1, 1, 1, 2, 3][rng.gen_range(0..6)]);
            let run = rng.gen_range(1..16);
            picks.extend(std::iter::repeat_n((t, e, cost * tenants[t].4), run));
        }
        let asks: Vec<Ask<'_>> = picks
            .iter()
            .map(|&(t, e, cost)| {
                let (name, w, qa, qe, _) = tenants[t];
                ask(name, cost, account(qa, w), endpoints[e].and_then(|e| ep(e, qe, w)))
            })
            .collect();
        let want: Vec<Decision> = picks
            .iter()
            .zip(&asks)
            .map(|(&(t, e, _), a)| {
                let (wa, eps) = &mut models[t];
                let d = expected_any(wa, endpoints[e].map(|_| &mut eps[e]), a, now);
                charged += usize::from(d.allowed && a.cost > 0);
                refused += usize::from(!d.allowed);
                d
            })
            .collect();
        let got = s.acquire_batch_at(&asks, now).await.unwrap_or_else(|e| panic!("step {step}: {e}"));
        for (i, (g, w)) in got.into_iter().zip(want).enumerate() {
            let g = g.unwrap_or_else(|e| panic!("step {step}, call {i}: {e}"));
            assert_eq!(g, w, "step {step}, call {i} of {:?}, now {now}", picks);
        }
    }
    // Both outcomes were exercised many times over.
    println!("{charged} calls charged, {refused} refused");
    assert!(charged > 1000 && refused > 1000, "{charged} charged, {refused} refused");
}

/// `expected` for a call with or without an endpoint policy.
fn expected_any(wa: &mut Window, we: Option<&mut Window>, a: &Ask<'_>, now: u64) -> Decision {
    let Some(we) = we else {
        let av = wa.judge(now, a.account.quota, a.cost);
        let mut sa = 0;
        if av.fits && a.cost > 0 {
            sa = wa.charge(now, a.cost);
        }
        return Decision {
            allowed: av.fits,
            cost: a.cost,
            account: PolicyState::new(a.account, &av, av.fits, a.cost, wa.reset_us(now)).charged_to(sa),
            endpoint: None,
            degraded: false,
        };
    };
    expected(wa, we, a, now)
}

/// Reloads on one tenant, each phase checked call by call against
/// window.rs: counters past 16 bits (a quota above 65,535 widens them), a
/// window length change (both stores start that window afresh), a quota
/// shrinking back. Uses the last endpoint class, the one stored furthest in.
#[tokio::test]
async fn wide_counters_and_reloads_agree_with_the_rust_window() {
    let Some(r) = RedisServer::start("wide_counters_and_reloads_agree_with_the_rust_window") else {
        return;
    };
    let s = store(&r).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // (window_s, account quota, endpoint quota, cost unit)
    let phases =
        [(10u32, 20u32, 8u32, 1u32), (10, 900_000, 300_000, 20_000), (7, 900_000, 300_000, 20_000), (7, 50, 30, 1)];
    let (mut wa, mut we) = (Window::new(10), Window::new(10));
    let mut now = T0;
    for (phase, (window_s, qa, qe, unit)) in phases.into_iter().enumerate() {
        if wa.slot_width_us() != window::slot_us(window_s) {
            (wa, we) = (Window::new(window_s), Window::new(window_s));
        }
        let (acc, contacts) = (account(qa, window_s), ep(Endpoint::ContactList, qe, window_s));
        let span = u64::from(window_s) * S;
        for step in 0..600 {
            now += clock_step(&mut rng, span, span / 20);
            let cost = [0, 1, 1, 1, 2, 3, 7][rng.gen_range(0..7)] * unit;
            let a = ask("wide", cost, acc, contacts);
            let want = expected(&mut wa, &mut we, &a, now);
            let got = s.acquire_at(&a, now).await.unwrap_or_else(|e| panic!("phase {phase}, step {step}: {e}"));
            assert_eq!(got, want, "phase {phase}, step {step}, now {now}, cost {cost}");
        }
    }
    let bytes: u64 = r.cli(&["MEMORY", "USAGE", &s.key("wide")]).parse().unwrap();
    println!("MEMORY USAGE with 32-bit counters on the last endpoint: {bytes} bytes");
    assert!(bytes < 4096, "{bytes} bytes");
}

#[tokio::test]
async fn retry_after_is_never_early_on_the_store_clock() {
    let Some(r) = RedisServer::start("retry_after_is_never_early_on_the_store_clock") else {
        return;
    };
    let s = store(&r).await;
    let acc = account(10, 60);
    let list = ep(Endpoint::TicketList, 6, 60);
    // Spread 6 credits over three slots.
    for (t, cost) in [(10 * S, 3), (20 * S, 2), (25 * S, 1)] {
        assert!(s.acquire_at(&ask("acme", cost, acc, list), T0 + t).await.unwrap().allowed);
    }
    for cost in [1u32, 3, 4, 6] {
        let now = T0 + 30 * S;
        let d = s.acquire_at(&ask("acme", cost, acc, list), now).await.unwrap();
        assert!(!d.allowed);
        let retry_ms = d.endpoint.unwrap().retry_ms.unwrap();
        let retry_us = retry_ms * 1000;
        let early = s.acquire_at(&ask("acme", 0, acc, list), now + retry_us - 1000).await.unwrap();
        assert!(early.endpoint.unwrap().remaining < cost, "cost {cost} would fit 1 ms before Retry-After");
        let on_time = s.acquire_at(&ask("acme", 0, acc, list), now + retry_us).await.unwrap();
        assert!(on_time.endpoint.unwrap().remaining >= cost, "cost {cost} does not fit at Retry-After");
        // Retry-After in whole seconds is never earlier either.
        let refusal = d.refusal().expect("refused");
        assert!(refusal.retry_after_s * 1000 >= retry_ms);
    }
}

#[tokio::test]
async fn a_rolling_window_frees_credits_when_the_oldest_slot_leaves_in_real_time() {
    let Some(r) = RedisServer::start("a_rolling_window_frees_credits_when_the_oldest_slot_leaves_in_real_time") else {
        return;
    };
    let limiter = Limiter::from_config(&cfg(single(&r), OnStoreError::FailClosed, 2000)).await.unwrap();
    let acc = account(3, 1);
    for _ in 0..3 {
        assert!(limiter.acquire(&ask("acme", 1, acc, None)).await.unwrap().allowed);
    }
    let d = limiter.acquire(&ask("acme", 1, acc, None)).await.unwrap();
    assert!(!d.allowed);
    let retry_ms = d.account.retry_ms.unwrap();
    assert!(retry_ms <= 1100, "{retry_ms}");
    tokio::time::sleep(Duration::from_millis(retry_ms)).await;
    let d = limiter.acquire(&ask("acme", 1, acc, None)).await.unwrap();
    assert!(d.allowed, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_limiters_sharing_one_redis_admit_exactly_the_budget() {
    let Some(r) = RedisServer::start("two_limiters_sharing_one_redis_admit_exactly_the_budget") else {
        return;
    };
    let c = cfg(single(&r), OnStoreError::FailClosed, 5000);
    let replicas = [Limiter::from_config(&c).await.unwrap(), Limiter::from_config(&c).await.unwrap()];
    let acc = account(57, 60);
    let mut tasks = Vec::new();
    for i in 0..400 {
        let l = Arc::clone(&replicas[i % 2]);
        tasks.push(tokio::spawn(async move {
            // Every other call is an account-only call, the rest hit ticket_list (40).
            let list = if i % 3 == 0 { None } else { ep(Endpoint::TicketList, 40, 60) };
            let d = l.acquire(&ask("acme", 1, acc, list)).await.expect("store answered");
            assert!(!d.degraded);
            (d.allowed, list.is_some())
        }));
    }
    let mut admitted = (0, 0);
    for t in tasks {
        let (ok, listed) = t.await.unwrap();
        if ok {
            admitted.0 += 1;
            admitted.1 += usize::from(listed);
        }
    }
    assert_eq!(admitted.0, 57, "account admitted");
    assert!(admitted.1 <= 40, "ticket_list admitted {}", admitted.1);
    let read = replicas[1].acquire(&ask("acme", 0, acc, ep(Endpoint::TicketList, 40, 60))).await.unwrap();
    assert_eq!(read.account.remaining, 0);
    assert_eq!(read.endpoint.unwrap().remaining as usize, 40 - admitted.1);
}

#[tokio::test]
async fn no_interval_of_one_window_exceeds_the_budget_and_sustained_demand_uses_99_percent() {
    let Some(r) =
        RedisServer::start("no_interval_of_one_window_exceeds_the_budget_and_sustained_demand_uses_99_percent")
    else {
        return;
    };
    let replicas = [store(&r).await, store(&r).await];
    let (quota, window_s) = (37u32, 10u32);
    let acc = account(quota, window_s);
    let mut log = Vec::new();
    let mut t = 0;
    while t < 50 * S {
        for k in 0..3 {
            if replicas[k % 2].acquire_at(&ask("acme", 1, acc, None), T0 + t).await.unwrap().allowed {
                log.push(t);
            }
        }
        t += 100_000;
    }
    for (i, &start) in log.iter().enumerate() {
        let n = log[i..].iter().take_while(|&&x| x < start + u64::from(window_s) * S).count();
        assert!(n <= quota as usize, "{n} calls in the window starting at {start}");
    }
    let used = log.iter().filter(|&&x| x >= 10 * S).count() as f64;
    assert!(used >= 0.99 * 4.0 * f64::from(quota) - 1.0, "used {used} of {}", 4 * quota);
}

#[tokio::test]
async fn two_stores_agree_because_the_window_clock_is_redis_time() {
    let Some(r) = RedisServer::start("two_stores_agree_because_the_window_clock_is_redis_time") else {
        return;
    };
    let (a, b) = (store(&r).await, store(&r).await);
    let acc = account(5, 60);
    for _ in 0..5 {
        assert!(a.acquire(&ask("acme", 1, acc, None)).await.unwrap().allowed);
    }
    // Neither store reads its own clock: both see the window Redis TIME defines.
    let da = a.acquire(&ask("acme", 1, acc, None)).await.unwrap();
    let db = b.acquire(&ask("acme", 1, acc, None)).await.unwrap();
    assert!(!da.allowed && !db.allowed);
    let (ra, rb) = (da.account.retry_ms.unwrap(), db.account.retry_ms.unwrap());
    assert!(ra.abs_diff(rb) <= 50, "retry {ra} ms vs {rb} ms");
    assert!((59_000..=60_500).contains(&rb), "{rb}");
    // And a store handed a clock an hour off still defers to what Redis holds:
    // the window's newest slot never goes back, so nothing is freed early.
    let redis_now = {
        let t = r.cli(&["TIME"]);
        let mut it = t.lines().map(|l| l.trim().parse::<u64>().unwrap());
        it.next().unwrap() * S + it.next().unwrap()
    };
    let skewed = b.acquire_at(&ask("acme", 1, acc, None), redis_now - 3600 * S).await.unwrap();
    assert!(!skewed.allowed, "a clock behind Redis freed credits: {skewed:?}");
}

#[tokio::test]
async fn killing_redis_fails_open_without_hanging_and_the_circuit_stops_waiting() {
    let Some(mut r) = RedisServer::start("killing_redis_fails_open_without_hanging_and_the_circuit_stops_waiting")
    else {
        return;
    };
    let limiter = Limiter::from_config(&cfg(single(&r), OnStoreError::FailOpen, 50)).await.unwrap();
    let acc = account(5, 60);
    assert!(limiter.acquire(&ask("acme", 1, acc, None)).await.unwrap().allowed);
    assert!(limiter.store_healthy());
    r.kill();
    for i in 0..20 {
        let start = Instant::now();
        let d = limiter.acquire(&ask("acme", 1, acc, None)).await.expect("fail_open answers");
        let took = start.elapsed();
        assert!(d.allowed && d.degraded, "call {i}: {d:?}");
        assert!(took < Duration::from_millis(400), "call {i} took {took:?}");
        if i >= CIRCUIT_FAILURES as usize {
            assert!(took < Duration::from_millis(20), "circuit open, yet call {i} took {took:?}");
        }
    }
    assert!(!limiter.store_healthy());
}

#[tokio::test]
async fn killing_redis_fails_closed_with_service_unavailable() {
    let Some(mut r) = RedisServer::start("killing_redis_fails_closed_with_service_unavailable") else {
        return;
    };
    let limiter = Limiter::from_config(&cfg(single(&r), OnStoreError::FailClosed, 50)).await.unwrap();
    let acc = account(5, 60);
    assert!(limiter.acquire(&ask("acme", 1, acc, None)).await.unwrap().allowed);
    r.kill();
    for _ in 0..10 {
        let start = Instant::now();
        let e = limiter.acquire(&ask("acme", 1, acc, None)).await.expect_err("fail_closed refuses");
        assert!(start.elapsed() < Duration::from_millis(400));
        assert_eq!(e, StoreUnavailable { retry_after_s: 1 });
        assert_eq!(Reject::from(e).code(), "service_unavailable");
    }
}

#[tokio::test]
async fn restarting_redis_resumes_enforcement_without_restarting_the_store() {
    let Some(mut r) = RedisServer::start("restarting_redis_resumes_enforcement_without_restarting_the_store") else {
        return;
    };
    let limiter = Limiter::from_config(&cfg(single(&r), OnStoreError::FailOpen, 100)).await.unwrap();
    let acc = account(5, 60);
    assert!(limiter.acquire(&ask("acme", 1, acc, None)).await.unwrap().allowed);
    r.kill();
    for _ in 0..5 {
        assert!(limiter.acquire(&ask("acme", 1, acc, None)).await.unwrap().degraded);
    }
    r.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = limiter.acquire(&ask("acme", 1, acc, None)).await.unwrap();
        if !d.degraded {
            break;
        }
        assert!(Instant::now() < deadline, "the store did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(limiter.store_healthy());
    // The restarted Redis is empty: one credit was charged just now, four remain.
    for _ in 0..4 {
        assert!(limiter.acquire(&ask("acme", 1, acc, None)).await.unwrap().allowed);
    }
    let d = limiter.acquire(&ask("acme", 1, acc, None)).await.unwrap();
    assert!(!d.allowed && !d.degraded, "{d:?}");
}

#[tokio::test]
async fn the_script_is_loaded_again_after_redis_forgets_it() {
    let Some(r) = RedisServer::start("the_script_is_loaded_again_after_redis_forgets_it") else {
        return;
    };
    let s = store(&r).await;
    let acc = account(5, 60);
    assert!(s.acquire(&ask("acme", 1, acc, None)).await.unwrap().allowed);
    assert_eq!(r.cli(&["SCRIPT", "FLUSH"]), "OK");
    let d = s.acquire(&ask("acme", 1, acc, None)).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.account.remaining, 3);
    // A batch meets NOSCRIPT too: nothing ran, so it is sent once more, whole.
    assert_eq!(r.cli(&["SCRIPT", "FLUSH"]), "OK");
    let s = &s;
    let batch = join_all((0..10).map(|_| async move { s.acquire(&ask("acme", 1, acc, None)).await.unwrap() })).await;
    assert_eq!(batch.iter().filter(|d| d.allowed).count(), 3, "{batch:?}");
}

/// The remaining credit each admitted call was told, sorted (each tenant's
/// admitted calls must be told every value from quota - 1 down to 0 once).
fn told(decisions: &[(&str, Decision)], tenant: &str) -> (Vec<u32>, usize) {
    let mine: Vec<_> = decisions.iter().filter(|(t, _)| *t == tenant).map(|(_, d)| d).collect();
    let mut left: Vec<u32> = mine.iter().filter(|d| d.allowed).map(|d| d.account.remaining).collect();
    left.sort_unstable();
    (left, mine.iter().filter(|d| !d.allowed).count())
}

#[tokio::test]
async fn calls_waiting_together_share_a_script_call_and_each_gets_its_own_answer() {
    let Some(r) = RedisServer::start("calls_waiting_together_share_a_script_call_and_each_gets_its_own_answer") else {
        return;
    };
    let s = store(&r).await;
    s.acquire(&ask("warmup", 1, account(5, 60), None)).await.unwrap();
    assert_eq!(r.cli(&["CONFIG", "RESETSTAT"]), "OK");
    // Three tenants with different budgets, interleaved, 100 calls each, all
    // waiting at once: a mixed-up answer would show as a wrong remaining.
    let quotas = [("a", 50u32), ("b", 30), ("c", 70)];
    let s = &s;
    let decisions = join_all((0..300).map(|i| async move {
        let (t, q) = quotas[i % 3];
        (t, s.acquire(&ask(t, 1, account(q, 60), None)).await.expect("store answered"))
    }))
    .await;
    for (t, q) in quotas {
        let (left, refused) = told(&decisions, t);
        assert_eq!(left, (0..q).collect::<Vec<_>>(), "tenant {t}");
        assert_eq!(refused, 100 - q as usize, "tenant {t}");
    }
    let calls = evalsha_calls(&r);
    println!("300 calls waiting together: {calls} EVALSHA");
    assert!((1..=300 / 4).contains(&calls), "{calls} script calls for 300 calls: not batched");
    // A call alone is still one script call of its own.
    s.acquire(&ask("a", 0, account(50, 60), None)).await.unwrap();
    assert_eq!(evalsha_calls(&r), calls + 1);
}

/// Calls from separate tasks — connections, as in the gateway — on a
/// multi-thread runtime form batches too (a flush spawned by the first call
/// must not run before the others have queued).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_separate_tasks_arriving_together_share_script_calls() {
    let Some(r) = RedisServer::start("calls_of_separate_tasks_arriving_together_share_script_calls") else {
        return;
    };
    let s = Arc::new(store(&r).await);
    s.acquire(&ask("warmup", 1, account(5, 60), None)).await.unwrap();
    assert_eq!(r.cli(&["CONFIG", "RESETSTAT"]), "OK");
    let start = Arc::new(tokio::sync::Barrier::new(120));
    let tasks: Vec<_> = (0..120)
        .map(|_| {
            let (s, start) = (s.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                s.acquire(&ask("burst", 1, account(25, 60), None)).await.expect("store answered")
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.expect("task").allowed);
    }
    assert_eq!(admitted, 25, "exactly the budget");
    let calls = evalsha_calls(&r);
    println!("120 calls of separate tasks: {calls} EVALSHA");
    assert!(calls <= 120 / 4, "{calls} script calls for 120 calls arriving together: not batched");
}

#[tokio::test]
async fn a_key_of_another_type_fails_only_its_own_calls_in_a_batch() {
    let Some(r) = RedisServer::start("a_key_of_another_type_fails_only_its_own_calls_in_a_batch") else {
        return;
    };
    let s = store(&r).await;
    s.acquire(&ask("warmup", 1, account(5, 60), None)).await.unwrap();
    assert_eq!(r.cli(&["RPUSH", &s.key("broken"), "not a window"]), "1");
    assert_eq!(r.cli(&["CONFIG", "RESETSTAT"]), "OK");
    let s = &s;
    let results = join_all((0..40).map(|i| async move {
        let t = if i % 4 == 0 { "broken" } else { "fine" };
        (t, s.acquire(&ask(t, 1, account(100, 60), ep(Endpoint::TicketList, 100, 60))).await)
    }))
    .await;
    assert!(evalsha_calls(&r) < 40, "the calls were not batched: the test proves nothing");
    for (t, res) in &results {
        match (*t, res) {
            ("fine", Ok(d)) => assert!(d.allowed),
            ("broken", Err(e)) => assert!(e.to_string().contains("another type"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
    let fine = s.acquire(&ask("fine", 0, account(100, 60), None)).await.unwrap();
    assert_eq!(fine.account.remaining, 70, "each fine call charged once");
    // Alone, the call gets Redis's own error.
    let alone = s.acquire(&ask("broken", 1, account(100, 60), None)).await.expect_err("a list is no window");
    assert!(alone.to_string().contains("WRONGTYPE"), "{alone}");
}

#[tokio::test]
async fn one_acquire_is_one_evalsha() {
    let Some(r) = RedisServer::start("one_acquire_is_one_evalsha") else {
        return;
    };
    let s = store(&r).await;
    let acc = account(700, 60);
    let list = ep(Endpoint::TicketList, 200, 60);
    s.acquire(&ask("warmup", 1, acc, list)).await.unwrap();
    assert_eq!(r.cli(&["CONFIG", "RESETSTAT"]), "OK");
    let n = 3000;
    for i in 0..n {
        let tenant = format!("t{}", i % 10);
        s.acquire(&ask(&tenant, 1, acc, list)).await.unwrap();
    }
    let stats = commandstats(&r);
    let evalsha = stats.iter().find(|c| c.0 == "evalsha").expect("evalsha counted");
    assert_eq!(evalsha.1, n, "{stats:?}");
    for (name, _, _) in &stats {
        assert!(
            ["evalsha", "time", "getrange", "setrange", "pexpire", "get", "set", "config|resetstat"]
                .contains(&name.as_str()),
            "unexpected command {name} ({stats:?})"
        );
    }
    println!("Redis CPU per acquire (evalsha usec_per_call, script included): {} µs", evalsha.2);
}

/// The naive sliding log (one ZSET member per call) the script is compared with.
const ZSET_LOG: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost, win, ok = tonumber(ARGV[1]), tonumber(ARGV[2]) * 1000000, true
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - win)
  if redis.call('ZCARD', KEYS[i]) + cost > tonumber(ARGV[2 + i]) then ok = false end
end
if ok then
  for i = 1, #KEYS do
    redis.call('ZADD', KEYS[i], now, now .. ':' .. math.random())
    redis.call('PEXPIRE', KEYS[i], win / 1000)
  end
end
return ok and 1 or 0";

/// `evalsha` (calls, total µs) from `INFO commandstats`, over `conn`.
async fn evalsha_usec(conn: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix("cmdstat_evalsha:")).map_or((0, 0), |rest| {
        let field =
            |k: &str| rest.split(',').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse().ok()).unwrap_or(0);
        (field("calls"), field("usec"))
    })
}

/// Compares the Redis time per call of the window script and of the naive
/// ZSET log, in chunks that alternate within one run so that both see the
/// same machine load. Prints; asserts nothing about timing (it depends on
/// the machine). `usec` is wall time inside Redis, so a loaded machine
/// inflates both; the main thread's CPU time (`schedstat`, Linux) is printed
/// too, which includes reading and answering the call.
#[tokio::test]
async fn the_script_and_a_sorted_set_log_report_their_redis_cpu() {
    let Some(r) = RedisServer::start("the_script_and_a_sorted_set_log_report_their_redis_cpu") else {
        return;
    };
    let s = store(&r).await;
    let client = redis::Client::open(r.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let zset = redis::Script::new(ZSET_LOG);
    let cpu_ns = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/schedstat", r.pid()?)).ok()?;
        stat.split_whitespace().next()?.parse::<u64>().ok()
    };
    // Enterprise budgets; 10 tenants per round, 400 calls each: the first
    // 200 admitted (ticket_list allows 200), the rest refused.
    let acc = account(700, 60);
    let list = ep(Endpoint::TicketList, 200, 60);
    let (rounds, n, chunk) = (3, 4000u64, 200u64);
    // Load both scripts first (a NOSCRIPT miss would count as a call).
    s.acquire(&ask("warmup", 1, acc, list)).await.unwrap();
    let _: i64 = zset.key("{w}:a").key("{w}:e").arg(1).arg(60).arg(700).arg(200).invoke_async(&mut conn).await.unwrap();
    // [window script, ZSET log] × (calls, usec, cpu ns)
    let mut total = [(0u64, 0u64, 0u64); 2];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    for round in 0..rounds {
        let mut this = [(0u64, 0u64, 0u64); 2];
        for c in 0..n / chunk {
            // Alternate which goes first, so neither always follows the other.
            for which in [c % 2, 1 - c % 2] {
                let (calls0, usec0) = evalsha_usec(&mut conn).await;
                let cpu0 = cpu_ns();
                for i in c * chunk..(c + 1) * chunk {
                    if which == 0 {
                        let tenant = format!("r{round}t{}", i % 10);
                        s.acquire(&ask(&tenant, 1, acc, list)).await.unwrap();
                    } else {
                        let t = format!("{{z{round}t{}}}", i % 10);
                        let _: i64 = zset
                            .key(format!("{t}:a"))
                            .key(format!("{t}:e"))
                            .arg(1)
                            .arg(60)
                            .arg(700)
                            .arg(200)
                            .invoke_async(&mut conn)
                            .await
                            .unwrap();
                    }
                }
                let cpu1 = cpu_ns();
                let (calls1, usec1) = evalsha_usec(&mut conn).await;
                let w = which as usize;
                this[w].0 += calls1 - calls0;
                this[w].1 += usec1 - usec0;
                this[w].2 += cpu1.zip(cpu0).map_or(0, |(b, a)| b - a);
            }
        }
        let per = |x: (u64, u64, u64)| (x.1 as f64 / x.0 as f64, x.2 as f64 / x.0 as f64 / 1000.0);
        let ((wu, wc), (zu, zc)) = (per(this[0]), per(this[1]));
        println!(
            "round {round}: window script {wu:.2} µs/call, ZSET log {zu:.2} µs/call (usec_per_call); \
             main-thread CPU {wc:.2} vs {zc:.2} µs/call"
        );
        for k in 0..2 {
            total[k] = (total[k].0 + this[k].0, total[k].1 + this[k].1, total[k].2 + this[k].2);
        }
    }
    let per = |x: (u64, u64, u64)| (x.1 as f64 / x.0 as f64, x.2 as f64 / x.0 as f64 / 1000.0);
    let ((wu, wc), (zu, zc)) = (per(total[0]), per(total[1]));
    println!("Redis usec_per_call for evalsha, {} calls each, interleaved:", total[0].0);
    println!("  window script (one key per tenant): {wu:.2} µs/call");
    println!("  naive ZSET sliding log (two keys):  {zu:.2} µs/call");
    if total[0].2 > 0 {
        println!("Redis main-thread CPU per call (schedstat, includes reading and answering the call):");
        println!("  window script {wc:.2} µs/call, ZSET log {zc:.2} µs/call");
    }
    println!("load average at start: {}", load.trim());
}

#[tokio::test]
async fn an_enterprise_tenant_costs_under_two_kilobytes_of_redis_memory() {
    let Some(r) = RedisServer::start("an_enterprise_tenant_costs_under_two_kilobytes_of_redis_memory") else {
        return;
    };
    let s = store(&r).await;
    let acc = account(700, 60);
    let endpoints = [
        (Endpoint::TicketCreate, 280),
        (Endpoint::TicketUpdate, 280),
        (Endpoint::TicketList, 200),
        (Endpoint::ContactList, 200),
    ];
    // Every slot of every window holds something: the densest a tenant gets.
    let slot = window::slot_us(60);
    for k in 0..window::RING as u64 {
        for (e, q) in endpoints {
            let d = s.acquire_at(&ask("acme", 1, acc, ep(e, q, 60)), T0 + k * slot).await.unwrap();
            assert!(d.allowed);
        }
    }
    let d = s.acquire_at(&ask("acme", 0, acc, None), T0 + 120 * slot).await.unwrap();
    assert_eq!(d.account.remaining, 700 - 4 * 121);
    assert_eq!(r.cli(&["DBSIZE"]), "1", "one key per tenant");
    let bytes: u64 = r.cli(&["MEMORY", "USAGE", &s.key("acme")]).parse().unwrap();
    println!("MEMORY USAGE {} = {bytes} bytes (account + 4 endpoint windows, all slots busy)", s.key("acme"));
    assert!(bytes < 2048, "{bytes} bytes");
}

#[tokio::test]
async fn the_deny_cache_refuses_without_asking_redis_until_room_comes_back() {
    let Some(r) = RedisServer::start("the_deny_cache_refuses_without_asking_redis_until_room_comes_back") else {
        return;
    };
    let limiter = Limiter::from_config(&cfg(single(&r), OnStoreError::FailClosed, 2000)).await.unwrap();
    let acc = account(10, 60);
    let list = ep(Endpoint::TicketList, 5, 60);
    for _ in 0..3 {
        assert!(limiter.acquire(&ask("acme", 1, acc, list)).await.unwrap().allowed);
    }
    // 2 left: a call costing 3 is refused by Redis, and remembered.
    let first = limiter.acquire(&ask("acme", 3, acc, list)).await.unwrap();
    assert!(!first.allowed);
    let calls = evalsha_calls(&r);
    for _ in 0..50 {
        let d = limiter.acquire(&ask("acme", 3, acc, list)).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.endpoint.unwrap().remaining, 2);
        assert_eq!(d.account.remaining, 7);
        let (Some(cached), Some(asked)) = (d.refusal(), first.refusal()) else { panic!("not refusals") };
        assert_eq!(cached.policy, asked.policy);
        let (a, b) = (cached.retry_after_s, asked.retry_after_s);
        assert!(a == b || a + 1 == b, "cached Retry-After {a} vs {b}");
    }
    assert_eq!(evalsha_calls(&r), calls, "the cache asked Redis");
    // A cheaper call that fits what is left still goes to Redis, and is admitted.
    let d = limiter.acquire(&ask("acme", 1, acc, list)).await.unwrap();
    assert!(d.allowed);
    assert_eq!(evalsha_calls(&r), calls + 1);
    // A dearer call than the refused one asks Redis for its own Retry-After.
    let d = limiter.acquire(&ask("acme", 5, acc, list)).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(evalsha_calls(&r), calls + 2);
    // Account-only calls are not blocked by the endpoint's refusal.
    assert!(limiter.acquire(&ask("acme", 1, acc, None)).await.unwrap().allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_master_cluster_admits_exactly_the_budget() {
    let Some(c) = RedisCluster::start("a_three_master_cluster_admits_exactly_the_budget") else {
        return;
    };
    let kind = StoreKind::RedisCluster { urls: c.urls() };
    let cf = cfg(kind, OnStoreError::FailClosed, 5000);
    let replicas = [Limiter::from_config(&cf).await.unwrap(), Limiter::from_config(&cf).await.unwrap()];
    let tenants: Vec<String> =
        ["acme", "globex", "initech", "umbrella", "hooli", "we{ir}d"].iter().map(|s| s.to_string()).collect();
    let acc = account(20, 60);
    let mut tasks = Vec::new();
    for i in 0..360 {
        let l = Arc::clone(&replicas[i % 2]);
        let tenant = tenants[i % tenants.len()].clone();
        tasks.push(tokio::spawn(async move {
            let d = l.acquire(&ask(&tenant, 1, acc, ep(Endpoint::TicketCreate, 20, 60))).await.expect("answered");
            assert!(!d.degraded);
            (tenant, d.allowed)
        }));
    }
    let mut admitted = std::collections::HashMap::new();
    for t in tasks {
        let (tenant, ok) = t.await.unwrap();
        *admitted.entry(tenant).or_insert(0) += usize::from(ok);
    }
    for t in &tenants {
        assert_eq!(admitted[t], 20, "{t}: {admitted:?}");
    }
    // The keys spread over the masters, one per tenant.
    let keys: usize = c.nodes.iter().map(|n| n.cli(&["DBSIZE"]).parse::<usize>().unwrap()).sum();
    assert_eq!(keys, tenants.len());
    let holding = c.nodes.iter().filter(|n| n.cli(&["DBSIZE"]) != "0").count();
    assert!(holding >= 2, "all tenants on one master");
}

#[tokio::test]
async fn a_store_started_before_redis_connects_when_redis_comes_up() {
    let Some(mut r) = RedisServer::start("a_store_started_before_redis_connects_when_redis_comes_up") else {
        return;
    };
    r.kill();
    let started = Instant::now();
    let limiter = Limiter::from_config(&cfg(single(&r), OnStoreError::FailClosed, 50)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!limiter.store_healthy());
    let acc = account(5, 60);
    assert!(limiter.acquire(&ask("acme", 1, acc, None)).await.is_err());
    r.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while limiter.acquire(&ask("acme", 1, acc, None)).await.is_err() {
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(limiter.store_healthy());
}

/// Refunds through `refund.lua` give back exactly what window.rs gives back
/// (the slot each charge went to, nothing once it left, never below zero),
/// and the decisions after them agree call by call: random charges, refunds
/// of earlier charges (some already out of the window, some refunded twice),
/// with and without an endpoint, and wide counters.
#[tokio::test]
async fn refunds_agree_with_the_rust_window_step_by_step() {
    let Some(r) = RedisServer::start("refunds_agree_with_the_rust_window_step_by_step") else {
        return;
    };
    let s = store(&r).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let mut refunded = 0;
    for (window_s, qa, qe, unit) in
        [(10u32, 20u32, 8u32, 1u32), (60, 400, 100, 1), (1, 5, 3, 1), (10, 900_000, 300_000, 20_000)]
    {
        let tenant = format!("r{window_s}-{qa}");
        let (acc, list) = (account(qa, window_s), ep(Endpoint::ContactList, qe, window_s));
        let (mut wa, mut we) = (Window::new(window_s), Window::new(window_s));
        let mut now = T0 + rng.gen_range(0..S);
        let span = u64::from(window_s) * S;
        let mut charges: Vec<(Decision, bool)> = Vec::new();
        for step in 0..800 {
            now += clock_step(&mut rng, span, span / 20);
            let with_endpoint = rng.gen_range(0..4) != 0;
            let cost = unit * [1, 1, 2, 3][rng.gen_range(0..4)];
            let a = ask(&tenant, cost, acc, if with_endpoint { list } else { None });
            let want = expected_any(&mut wa, with_endpoint.then_some(&mut we), &a, now);
            let got = s.acquire_at(&a, now).await.unwrap_or_else(|e| panic!("step {step}: {e}"));
            assert_eq!(got, want, "window {window_s}s, step {step}, now {now}");
            if got.charged() > 0 {
                charges.push((got, with_endpoint));
            }
            if !charges.is_empty() && rng.gen_range(0..3) == 0 {
                let (d, with_endpoint) = charges[rng.gen_range(0..charges.len())];
                let a = ask(&tenant, d.cost, acc, if with_endpoint { list } else { None });
                let want_a = wa.refund(now, d.account.slot, d.cost);
                let want_e = d.endpoint.map_or(0, |e| we.refund(now, e.slot, d.cost));
                let back = s.refund_at(&a, &d, now).await.unwrap_or_else(|e| panic!("step {step}: {e}"));
                assert_eq!((back.account, back.endpoint), (want_a, want_e), "window {window_s}s, step {step}");
                refunded += u64::from(back.account);
            }
        }
    }
    assert!(refunded > 100, "only {refunded} credits refunded");
}

/// A refund on a tenant with no key (expired, or never charged here) creates
/// nothing; on a key of another type it fails without touching it.
#[tokio::test]
async fn a_refund_never_creates_a_key() {
    let Some(r) = RedisServer::start("a_refund_never_creates_a_key") else {
        return;
    };
    let s = store(&r).await;
    let (acc, list) = (account(10, 60), ep(Endpoint::TicketList, 5, 60));
    let d = s.acquire_at(&ask("acme", 2, acc, list), T0).await.unwrap();
    r.cli(&["DEL", &s.key("acme")]);
    let back = s.refund_at(&ask("acme", 2, acc, list), &d, T0).await.unwrap();
    assert_eq!((back.account, back.endpoint), (0, 0));
    assert_eq!(r.cli(&["EXISTS", &s.key("acme")]), "0");
}

/// Through the limiter: a refund makes room at once, also when this
/// replica's deny cache had just remembered the tenant as exhausted.
#[tokio::test]
async fn a_refund_makes_room_past_the_deny_cache() {
    let Some(r) = RedisServer::start("a_refund_makes_room_past_the_deny_cache") else {
        return;
    };
    let limiter = Limiter::from_config(&cfg(single(&r), OnStoreError::FailClosed, 2000)).await.unwrap();
    let (acc, list) = (account(10, 60), ep(Endpoint::TicketList, 3, 60));
    let mut charged = Vec::new();
    for _ in 0..3 {
        let d = limiter.acquire(&ask("acme", 1, acc, list)).await.unwrap();
        assert!(d.allowed);
        charged.push(d);
    }
    assert!(!limiter.acquire(&ask("acme", 1, acc, list)).await.unwrap().allowed);
    // Refused again from memory (the deny cache), without Redis.
    let calls = evalsha_calls(&r);
    assert!(!limiter.acquire(&ask("acme", 1, acc, list)).await.unwrap().allowed);
    assert_eq!(evalsha_calls(&r), calls);
    let after = limiter.refund(&ask("acme", 1, acc, list), &charged[2]).await.expect("refunded");
    assert_eq!(after.charged(), 0);
    assert_eq!((after.account.remaining, after.endpoint.unwrap().remaining), (8, 1));
    let d = limiter.acquire(&ask("acme", 1, acc, list)).await.unwrap();
    assert!(d.allowed, "the refund made room: {d:?}");
    assert_eq!((d.account.remaining, d.endpoint.unwrap().remaining), (7, 0));
    assert!(!limiter.acquire(&ask("acme", 1, acc, list)).await.unwrap().allowed);
}

/// On a cluster the refund goes to the tenant's own slot (its hash tag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_refunds_to_the_tenants_own_key() {
    let Some(c) = RedisCluster::start("a_cluster_refunds_to_the_tenants_own_key") else {
        return;
    };
    let kind = StoreKind::RedisCluster { urls: c.urls() };
    let limiter = Limiter::from_config(&cfg(kind, OnStoreError::FailClosed, 5000)).await.unwrap();
    let acc = account(5, 60);
    for tenant in ["acme", "globex", "we{ir}d"] {
        let a = ask(tenant, 2, acc, ep(Endpoint::TicketCreate, 4, 60));
        let first = limiter.acquire(&a).await.unwrap();
        let second = limiter.acquire(&a).await.unwrap();
        assert!(first.allowed && second.allowed);
        assert!(!limiter.acquire(&a).await.unwrap().allowed, "{tenant}: the endpoint budget is spent");
        // The refunded call's answer reads as if it had never been charged.
        let after = limiter.refund(&a, &first).await.expect("refunded");
        assert_eq!((after.account.remaining, after.endpoint.unwrap().remaining), (5, 4), "{tenant}");
        let d = limiter.acquire(&a).await.unwrap();
        assert!(d.allowed, "{tenant}: {d:?}");
        assert_eq!((d.account.remaining, d.endpoint.unwrap().remaining), (1, 0), "{tenant}");
    }
}
