//! The helpdesk's count charged through Redis (`reconcile.lua`) against the
//! Rust window's arithmetic (`window::settle`), on real `redis-server`
//! processes. Without `redis-server` the tests print a line and pass,
//! unless `DESKGATE_REQUIRE_REDIS=1`.

mod support;

use std::time::Duration;

use deskgate::config::{LimiterConfig, OnStoreError, StoreKind};
use deskgate::limiter::window::{self, Window};
use deskgate::limiter::{Ask, Decision, Limiter, Policy, PolicyState, RedisStore, Settle};
use rand::{Rng, SeedableRng};
use support::redis::{RedisCluster, RedisServer};

const S: u64 = 1_000_000;
const T0: u64 = 1_717_000_000 * S;

fn account(quota: u32, window_s: u32) -> Policy {
    Policy { name: "account", quota, window_s }
}

/// What window.rs decides for an account-only call.
fn expected(w: &mut Window, a: &Ask<'_>, now: u64) -> Decision {
    let v = w.judge(now, a.account.quota, a.cost);
    let mut slot = 0;
    if v.fits && a.cost > 0 {
        slot = w.charge(now, a.cost);
    }
    Decision {
        allowed: v.fits,
        cost: a.cost,
        account: PolicyState::new(a.account, &v, v.fits, a.cost, w.reset_us(now)).charged_to(slot),
        endpoint: None,
        degraded: false,
    }
}

fn settle(w: &mut Window, quota: u32, how: Settle, now: u64) -> u32 {
    match how {
        Settle::Left(left) => w.settle_left(now, quota, left),
        Settle::ClosedFor { ms } => w.close_until(now, quota, now + ms * 1000),
    }
}

/// Calls, helpdesk counts and helpdesk 429s in a random order, each
/// answered by the script exactly as by window.rs, also past 16-bit
/// counters and across a change of window length.
#[tokio::test]
async fn the_reconcile_script_agrees_with_the_rust_window_step_by_step() {
    let Some(r) = RedisServer::start("the_reconcile_script_agrees_with_the_rust_window_step_by_step") else {
        return;
    };
    let s = RedisStore::connect(&StoreKind::Redis { url: r.url() }, "deskgate", false).await.expect("connect");
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    // (window_s, quota, cost unit)
    let phases = [(10u32, 20u32, 1u32), (60, 400, 1), (10, 900_000, 20_000), (7, 50, 1)];
    let mut w = Window::new(10);
    let mut now = T0;
    for (phase, (window_s, quota, unit)) in phases.into_iter().enumerate() {
        if w.slot_width_us() != window::slot_us(window_s) {
            w = Window::new(window_s);
        }
        let acc = account(quota, window_s);
        let span = u64::from(window_s) * S;
        for step in 0..500 {
            now += match rng.gen_range(0..100) {
                0 => span + rng.gen_range(0..span),
                1..=30 => 0,
                _ => rng.gen_range(0..span / 20),
            };
            let a =
                Ask { tenant: "rec", cost: [0, 1, 1, 2, 3][rng.gen_range(0..5)] * unit, account: acc, endpoint: None };
            match rng.gen_range(0..10) {
                0..=6 => {
                    let want = expected(&mut w, &a, now);
                    let got = s.acquire_at(&a, now).await.unwrap_or_else(|e| panic!("phase {phase} step {step}: {e}"));
                    assert_eq!(got, want, "phase {phase}, step {step}, now {now}");
                }
                k => {
                    let how = if k < 9 {
                        Settle::Left(rng.gen_range(0..=quota))
                    } else {
                        Settle::ClosedFor { ms: rng.gen_range(0..2 * span / 1000) }
                    };
                    let want = settle(&mut w, quota, how, now);
                    let got =
                        s.settle_at(&a, how, now).await.unwrap_or_else(|e| panic!("phase {phase} step {step}: {e}"));
                    assert_eq!(got, want, "phase {phase}, step {step}, now {now}, {how:?}");
                }
            }
        }
    }
    // The key still expires by itself.
    let ttl: i64 = r.cli(&["PTTL", &s.key("rec")]).parse().unwrap();
    assert!(ttl > 0 && ttl <= 8_000 + 2_000, "PTTL {ttl}");
}

/// A reconciliation on a cluster goes to the tenant's own slot (its key
/// shares the tenant's hash tag), and both replicas then refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helpdesk_429_closes_the_account_for_every_replica_on_a_cluster() {
    let Some(c) = RedisCluster::start("a_helpdesk_429_closes_the_account_for_every_replica_on_a_cluster") else {
        return;
    };
    let cf = LimiterConfig {
        store: StoreKind::RedisCluster { urls: c.urls() },
        on_store_error: OnStoreError::FailClosed,
        store_timeout: Duration::from_millis(5000),
        key_prefix: "deskgate".into(),
        charge_invalid: false,
        redis_batch: true,
        refused_credential_ttl: Duration::ZERO,
    };
    let (a, b) = (Limiter::from_config(&cf).await.unwrap(), Limiter::from_config(&cf).await.unwrap());
    let acc = account(50, 60);
    for tenant in ["acme", "we{ir}d", "globex"] {
        let call = Ask { tenant, cost: 1, account: acc, endpoint: None };
        assert!(a.acquire(&call).await.unwrap().allowed);
        // The helpdesk says 10 left: 39 more are charged, 10 calls fit.
        assert_eq!(a.settle(&call, Settle::Left(10)).await, Some(39));
        for _ in 0..10 {
            assert!(b.acquire(&call).await.unwrap().allowed, "{tenant}");
        }
        let refused = b.acquire(&call).await.unwrap();
        assert!(!refused.allowed, "{tenant}");
    }
    // A 429 for 20 s on another tenant closes it on both replicas, Retry-After honest.
    let call = Ask { tenant: "initech", cost: 1, account: acc, endpoint: None };
    assert!(a.acquire(&call).await.unwrap().allowed);
    assert_eq!(a.settle(&call, Settle::ClosedFor { ms: 20_000 }).await, Some(49));
    let d = b.acquire(&call).await.unwrap();
    let refusal = d.refusal().expect("closed");
    assert!((20..=21).contains(&refusal.retry_after_s), "{refusal:?}");
    let keys: usize = c.nodes.iter().map(|n| n.cli(&["DBSIZE"]).parse::<usize>().unwrap()).sum();
    assert_eq!(keys, 4, "one key per tenant");
}
