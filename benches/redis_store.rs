//! The Redis store's round trip, against a real `redis-server` the bench
//! starts on a free loopback port: one call at a time (every call a script
//! call of its own, the light-load case), 16 calls at once (decided in one
//! batch, as under load; the time is per call), and one call at a time with
//! batches off. Each call is admitted and charged (account and endpoint
//! windows), one tenant or 10,000 in turn.
//!
//! Without `redis-server` on PATH it prints a line and measures nothing,
//! unless `DESKGATE_REQUIRE_REDIS=1` (CI), which makes that an error.

#[path = "../tests/support/redis.rs"]
mod redis_server;
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use deskgate::config::StoreKind;
use deskgate::limiter::{Ask, RedisStore, Store};
use futures_util::future::join_all;
use redis_server::RedisServer;
use support::{ask, names};

async fn store(server: &RedisServer, batches: bool) -> RedisStore {
    let store = RedisStore::connect(&StoreKind::Redis { url: server.url() }, "bench", batches).await;
    store.expect("a store for the bench's redis-server")
}

fn bench(c: &mut Criterion) {
    let Some(server) = RedisServer::start("redis_store bench") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let (batched, unbatched) = rt.block_on(async { (store(&server, true).await, store(&server, false).await) });
    let mut group = c.benchmark_group("redis store acquire");
    for tenants in [1usize, 10_000] {
        let names = names(tenants);
        // Every tenant's key exists before timing.
        rt.block_on(async {
            for n in &names {
                batched.acquire(&ask(n)).await.expect("redis answers");
            }
        });
        let mut next = 0usize;
        let mut tenant = || {
            next = (next + 1) % names.len();
            names[next].as_str()
        };
        for (case, store, wave) in
            [("one at a time", &batched, 1), ("16 at once", &batched, 16), ("batches off", &unbatched, 1)]
        {
            group.bench_with_input(BenchmarkId::new(case, format!("{tenants} tenants")), &(), |b, _| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    rt.block_on(async {
                        for _ in 0..iters {
                            let asks: Vec<Ask<'_>> = (0..wave).map(|_| ask(tenant())).collect();
                            for d in join_all(asks.iter().map(|a| store.acquire(a))).await {
                                black_box(d.expect("redis answers"));
                            }
                        }
                    });
                    // Per call: `wave` calls per iteration.
                    start.elapsed().div_f64(wave as f64).max(Duration::from_nanos(1))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
