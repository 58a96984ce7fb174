//! The memory store under contention: 1 and 2 threads; 1, 100 and 10,000
//! tenants (each thread walks the tenants round-robin).

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use deskgate::limiter::MemoryStore;
use support::{ask, names};

fn run(store: &MemoryStore, names: &[String], iters: u64, offset: usize) {
    for i in 0..iters as usize {
        black_box(store.acquire_now(&ask(&names[(i + offset) % names.len()])));
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory store acquire");
    for tenants in [1usize, 100, 10_000] {
        let names = Arc::new(names(tenants));
        for threads in [1usize, 2] {
            let store = Arc::new(MemoryStore::new());
            run(&store, &names, tenants as u64, 0); // every tenant exists before timing
            group.bench_with_input(
                BenchmarkId::new(format!("{threads} threads"), format!("{tenants} tenants")),
                &(),
                |b, _| {
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        std::thread::scope(|s| {
                            for t in 0..threads {
                                let (store, names) = (store.clone(), names.clone());
                                s.spawn(move || run(&store, &names, iters, t * 7919));
                            }
                        });
                        // Per call across all threads: the store's throughput cost.
                        start.elapsed().div_f64(threads as f64).max(Duration::from_nanos(1))
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
