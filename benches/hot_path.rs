//! The per-call work that is not I/O: normalise + classify + checks (steps
//! 4-8) + rate-limit header rendering. Prints allocations per call first,
//! then lets criterion time it.

use std::alloc::System;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use deskgate::limiter::{Decision, Policy, PolicyState};
use deskgate::{checks, endpoint, headers};
use http::{HeaderMap, HeaderValue, Method};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("acme.freshdesk.com"));
    h.insert("authorization", HeaderValue::from_static("Basic YXBpa2V5Olg="));
    h.insert("accept", HeaderValue::from_static("application/json"));
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("user-agent", HeaderValue::from_static("curl/8.0"));
    h
}

fn decision() -> Decision {
    let p = |name, quota| PolicyState {
        policy: Policy { name, quota, window_s: 60 },
        remaining: quota / 2,
        reset_ms: 12_000,
        retry_ms: None,
        slot: 0,
    };
    Decision {
        allowed: true,
        cost: 1,
        account: p("account", 400),
        endpoint: Some(p("ticket_list", 100)),
        degraded: false,
    }
}

/// Steps 4-8 for one call; returns the cost so nothing is optimised away.
fn steps(path: &str, query: Option<&str>, h: &HeaderMap) -> u32 {
    let norm = endpoint::normalize_path(path).expect("valid");
    let route = endpoint::classify(&Method::GET, &norm, query).expect("classified");
    checks::authorization(h).expect("auth");
    checks::accept(h).expect("accept");
    checks::content_type_given(h, false).expect("ct");
    checks::content_length(h, 20 << 20).expect("cl");
    route.cost
}

fn allocations_per_call() {
    let h = request_headers();
    let d = decision();
    let cases: [(&str, &str, Option<&str>); 3] = [
        ("canonical path", "/api/v2/tickets", None),
        ("path with include", "/api/v2/tickets", Some("include=requester,stats")),
        ("path to normalise", "//API/v2/./tickets/", None),
    ];
    for (name, path, query) in cases {
        let region = Region::new(GLOBAL);
        for _ in 0..1000 {
            black_box(steps(path, query, &h));
        }
        let s = region.change();
        println!("allocations per call, steps 4-8, {name}: {:.2}", s.allocations as f64 / 1000.0);
    }
    let region = Region::new(GLOBAL);
    for _ in 0..1000 {
        let mut out = HeaderMap::with_capacity(8);
        headers::render(&d, &mut out);
        black_box(out);
    }
    let s = region.change();
    println!("allocations per call, header rendering (incl. the map): {:.2}", s.allocations as f64 / 1000.0);
}

fn bench(c: &mut Criterion) {
    allocations_per_call();
    let h = request_headers();
    let d = decision();
    c.bench_function("steps 4-8, canonical path", |b| b.iter(|| steps(black_box("/api/v2/tickets/42"), None, &h)));
    c.bench_function("steps 4-8, include query", |b| {
        b.iter(|| steps(black_box("/api/v2/tickets"), Some("include=description,requester,stats"), &h))
    });
    c.bench_function("steps 4-8, path to normalise", |b| {
        b.iter(|| steps(black_box("//API/v2/./x/../tickets/"), None, &h))
    });
    c.bench_function("render rate-limit headers", |b| {
        b.iter(|| {
            let mut out = HeaderMap::with_capacity(8);
            headers::render(black_box(&d), &mut out);
            out
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
