//! A betraying store under concurrent load: Redis killed, paused
//! (SIGSTOP, `CLIENT PAUSE`), restarted empty, slow, or cut off by the
//! network. The configured fail mode holds for every call, no call waits on
//! the store much longer than `store_timeout_ms`, nothing panics, and exact
//! enforcement comes back by itself once Redis answers again.
//!
//! `DEBUG SLEEP` is not used: Redis 7 ships with `enable-debug-command no`
//! (and it cannot be switched on at run time); SIGSTOP is the same pause
//! seen from the network, and `CLIENT PAUSE` is Redis's own.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::faults::*;
use support::redis::RedisServer;
use support::*;

const STORE_TIMEOUT_MS: u64 = 50;
/// Per-call latency bound while the store misbehaves: the store timeout plus
/// generous slack for a loaded two-core test machine (never a perf target).
const CALL_BOUND: Duration = Duration::from_millis(STORE_TIMEOUT_MS + 750);
const BIG: &str = "big.freshdesk.com";
const SMALL: &str = "small.freshdesk.com";
const SMALL_BUDGET: usize = 20;

async fn redis_gateway(redis_url: &str, on_error: &str) -> TestGateway {
    let rest = format!(
        "[limiter]\nstore = \"redis\"\nredis_url = \"{redis_url}\"\non_store_error = \"{on_error}\"\nstore_timeout_ms = {STORE_TIMEOUT_MS}\n\n\
         [[tenant]]\nname = \"big\"\ndomain = \"{BIG}\"\nplan = \"enterprise_2000\"\nper_minute = 1000000\n\
         endpoints = {{ ticket_list = 1000000, ticket_create = 800, ticket_update = 800, contact_list = 400 }}\n\n\
         [[tenant]]\nname = \"small\"\ndomain = \"{SMALL}\"\nplan = \"trial\"\nper_minute = {SMALL_BUDGET}\n"
    );
    // The upstream answers every call 502 at once: an admitted call is a
    // 502 that stays charged. (A closed port would not do: a call the
    // upstream never received is given back.)
    let up = ScriptedUpstream::start(|_| {
        Answer::KeepOpen(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n".to_vec())
    })
    .await;
    gateway(up.addr, "", &rest).await
}

/// What one phase of load saw.
#[derive(Debug)]
struct Phase {
    statuses: BTreeMap<u16, usize>,
    /// Calls let through without the store (`X-RateLimit-Used-CurrentRequest: 0` on a 200).
    degraded: usize,
    latencies: Latencies,
}

impl Phase {
    fn only(&self, allowed: &[u16]) -> bool {
        self.statuses.keys().all(|s| allowed.contains(s))
    }
}

/// `workers` clients calling `GET /api/v2/tickets` on tenant `big` in a loop
/// until `stop`; each call's status, degradation and latency are recorded.
struct Load(CallLoop<(u16, bool, Duration)>);

impl Load {
    fn start(gw: &TestGateway, workers: usize) -> Load {
        // The upstream answers 502 at once: an admitted call is a 502,
        // which is all this load needs to tell admitted from refused.
        Load(CallLoop::start(gw.addr, workers, BIG, "/api/v2/tickets", |got, sent| {
            let degraded = got.header("x-ratelimit-used-currentrequest") == "0";
            (got.status.as_u16(), degraded, sent.elapsed())
        }))
    }

    async fn finish(self) -> Phase {
        let mut statuses = BTreeMap::new();
        let mut degraded = 0;
        let mut lat = Vec::new();
        for (s, d, l) in self.0.finish().await {
            *statuses.entry(s).or_insert(0) += 1;
            degraded += usize::from(d && s != 503);
            lat.push(l);
        }
        Phase { statuses, degraded, latencies: Latencies::new(lat) }
    }
}

/// Runs load for `d` and returns what it saw.
async fn load_for(gw: &TestGateway, d: Duration) -> Phase {
    let load = Load::start(gw, 8);
    tokio::time::sleep(d).await;
    load.finish().await
}

/// Admitted (by the upstream-bound 502) vs 429 for `n` sequential calls of `small`.
async fn small_burst(gw: &TestGateway, n: usize) -> (usize, usize, usize) {
    let c = client();
    let (mut admitted, mut limited, mut degraded) = (0, 0, 0);
    for _ in 0..n {
        let got = get(&c, gw.addr, SMALL, "/api/v2/contacts/1").await;
        match got.status.as_u16() {
            429 => limited += 1,
            502 if got.header("x-ratelimit-used-currentrequest") == "0" => degraded += 1,
            502 => admitted += 1,
            s => panic!("unexpected {s}"),
        }
    }
    (admitted, limited, degraded)
}

/// Waits until a call is decided by the store again (not degraded, not 503).
async fn wait_for_enforcement(gw: &TestGateway, limit: Duration) -> Duration {
    let c = client();
    let start = Instant::now();
    loop {
        let got = get(&c, gw.addr, BIG, "/api/v2/tickets").await;
        if got.status == 502 && got.header("x-ratelimit-used-currentrequest") == "1" {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "enforcement did not resume within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn redis_pid(r: &RedisServer) -> String {
    let info = r.cli(&["INFO", "server"]);
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .map(|p| p.trim().to_owned())
        .expect("process_id in INFO server")
}

fn signal(pid: &str, sig: &str) {
    let ok = Command::new("kill").args([sig, pid]).status().is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

fn report(test: &str, fault: &str, p: &Phase) {
    println!("{test}: {fault}: statuses {:?}, degraded {}, latency {}", p.statuses, p.degraded, p.latencies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_fails_open_in_bounded_time_and_resumes_when_restarted_empty() {
    let test = "killed/fail_open";
    let Some(mut redis) = RedisServer::start(test) else { return };
    let gw = redis_gateway(&redis.url(), "fail_open").await;
    let healthy = load_for(&gw, Duration::from_millis(500)).await;
    report(test, "healthy", &healthy);
    assert!(healthy.only(&[502]) && healthy.degraded == 0, "{healthy:?}");
    // Charge `small` fully before the crash: the restart forgets it.
    assert_eq!(small_burst(&gw, SMALL_BUDGET).await, (SMALL_BUDGET, 0, 0));

    let load = Load::start(&gw, 8);
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let down = load.finish().await;
    report(test, "killed", &down);
    assert!(down.only(&[502]), "fail_open must let every call through: {down:?}");
    assert!(down.degraded > 0, "{down:?}");
    assert!(down.latencies.max() < CALL_BOUND, "a call waited {:?} on a dead store", down.latencies.max());

    redis.restart();
    let took = wait_for_enforcement(&gw, Duration::from_secs(10)).await;
    println!("{test}: enforcement resumed {took:?} after the restart");
    // Restarted empty: `small` has its whole budget again, exactly.
    assert_eq!(small_burst(&gw, SMALL_BUDGET + 5).await, (SMALL_BUDGET, 5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_fails_closed_with_503_and_resumes() {
    let test = "killed/fail_closed";
    let Some(mut redis) = RedisServer::start(test) else { return };
    let gw = redis_gateway(&redis.url(), "fail_closed").await;
    let load = Load::start(&gw, 8);
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let phase = load.finish().await;
    report(test, "killed", &phase);
    assert!(phase.only(&[502, 503]), "{phase:?}");
    assert_eq!(phase.degraded, 0, "fail_closed let calls through without the store: {phase:?}");
    assert!(phase.statuses.get(&503).copied().unwrap_or(0) > 0, "{phase:?}");
    assert!(phase.latencies.max() < CALL_BOUND, "a call waited {:?}", phase.latencies.max());
    // While it is down, every call is a 503 with Retry-After.
    let got = get(&client(), gw.addr, BIG, "/api/v2/tickets").await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("retry-after"), "1");
    println!("{test}: down for {:?}", killed_at.elapsed());

    redis.restart();
    let took = wait_for_enforcement(&gw, Duration::from_secs(10)).await;
    println!("{test}: enforcement resumed {took:?} after the restart");
    assert_eq!(small_burst(&gw, SMALL_BUDGET + 5).await, (SMALL_BUDGET, 5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_by_sigstop_under_load_costs_at_most_the_store_timeout_and_resumes() {
    let test = "sigstop/fail_open";
    let Some(redis) = RedisServer::start(test) else { return };
    let gw = redis_gateway(&redis.url(), "fail_open").await;
    let pid = redis_pid(&redis);
    let load = Load::start(&gw, 8);
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&pid, "-STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let paused = load.finish().await;
    signal(&pid, "-CONT");
    report(test, "SIGSTOP", &paused);
    assert!(paused.only(&[502]), "{paused:?}");
    assert!(paused.degraded > 0, "{paused:?}");
    assert!(paused.latencies.max() < CALL_BOUND, "a call waited {:?} on a paused store", paused.latencies.max());
    let took = wait_for_enforcement(&gw, Duration::from_secs(10)).await;
    println!("{test}: enforcement resumed {took:?} after SIGCONT");
    assert_eq!(small_burst(&gw, SMALL_BUDGET + 5).await, (SMALL_BUDGET, 5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_client_pause_under_load_fails_closed_in_bounded_time_and_resumes() {
    let test = "client-pause/fail_closed";
    let Some(redis) = RedisServer::start(test) else { return };
    let gw = redis_gateway(&redis.url(), "fail_closed").await;
    let load = Load::start(&gw, 8);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "1500", "ALL"]), "OK");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let paused = load.finish().await;
    report(test, "CLIENT PAUSE 1500", &paused);
    assert!(paused.only(&[502, 503]), "{paused:?}");
    assert_eq!(paused.degraded, 0, "{paused:?}");
    assert!(paused.statuses.get(&503).copied().unwrap_or(0) > 0, "{paused:?}");
    assert!(paused.latencies.max() < CALL_BOUND, "a call waited {:?}", paused.latencies.max());
    let took = wait_for_enforcement(&gw, Duration::from_secs(10)).await;
    println!("{test}: enforcement resumed {took:?} after the pause");
    assert_eq!(small_burst(&gw, SMALL_BUDGET + 5).await, (SMALL_BUDGET, 5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_costs_at_most_the_store_timeout_and_a_merely_sluggish_one_still_enforces() {
    let test = "slow/fail_open";
    let Some(redis) = RedisServer::start(test) else { return };
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let gw = redis_gateway(&format!("redis://{}", proxy.addr), "fail_open").await;
    wait_for_enforcement(&gw, Duration::from_secs(5)).await;

    // Slower than store_timeout_ms: every call gives up on the store in time.
    proxy.set_delay(Duration::from_millis(200));
    let slow = load_for(&gw, Duration::from_millis(1500)).await;
    report(test, "200 ms per store call", &slow);
    assert!(slow.only(&[502]), "{slow:?}");
    assert!(slow.degraded > 0, "{slow:?}");
    assert!(slow.latencies.max() < CALL_BOUND, "a call waited {:?} on a slow store", slow.latencies.max());

    // Sluggish but within the timeout: decisions are the store's, exact.
    proxy.set_delay(Duration::from_millis(5));
    let took = wait_for_enforcement(&gw, Duration::from_secs(10)).await;
    println!("{test}: enforcement resumed {took:?} after the store sped up");
    let (admitted, limited, degraded) = small_burst(&gw, SMALL_BUDGET + 5).await;
    assert_eq!(degraded, 0);
    assert_eq!((admitted, limited), (SMALL_BUDGET, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_cut_off_by_the_network_fails_closed_in_bounded_time_and_resumes() {
    let test = "blackhole/fail_closed";
    let Some(redis) = RedisServer::start(test) else { return };
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let gw = redis_gateway(&format!("redis://{}", proxy.addr), "fail_closed").await;
    wait_for_enforcement(&gw, Duration::from_secs(5)).await;
    proxy.set_blackhole(true);
    let cut = load_for(&gw, Duration::from_millis(1500)).await;
    report(test, "blackholed", &cut);
    assert!(cut.only(&[502, 503]), "{cut:?}");
    assert_eq!(cut.degraded, 0, "{cut:?}");
    assert!(cut.latencies.max() < CALL_BOUND, "a call waited {:?}", cut.latencies.max());
    proxy.set_blackhole(false);
    let took = wait_for_enforcement(&gw, Duration::from_secs(10)).await;
    println!("{test}: enforcement resumed {took:?} after the network came back");
    let (admitted, limited, degraded) = small_burst(&gw, SMALL_BUDGET + 5).await;
    assert_eq!(degraded, 0);
    assert_eq!((admitted, limited), (SMALL_BUDGET, 5));
}

// ---------------------------------------------------------------- the store wait itself, per fault

/// The figures behind RELIABILITY.md's store-wait table: how long each call
/// waits on the store (`Limiter::acquire`, which is all of a call's store
/// wait: deny cache, circuit, batch queue, connection, script) while Redis
/// is healthy, paused (SIGSTOP, `CLIENT PAUSE`), killed and restarted
/// empty, cut off (blackhole), or down when the gateway starts and then
/// started. 32 tasks call in a loop, a millisecond apart, at the shipped
/// `store_timeout_ms = 50`.
///
/// A measurement, not a check: run it on an optimised build, on a quiet
/// machine, and read the table it prints:
/// `cargo test --release --test faults_store store_wait -- --ignored --nocapture`.
/// It asserts only a sanity bound (timeout + 500 ms) and that every call
/// was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run on a release build (see the doc comment)"]
async fn store_wait_per_fault() {
    use deskgate::config::{LimiterConfig, OnStoreError, StoreKind};
    use deskgate::limiter::{Ask, Limiter, Policy};

    const TIMEOUT: Duration = Duration::from_millis(50);
    const TASKS: usize = 32;
    let Some(mut redis) = RedisServer::start("store_wait_per_fault") else { return };
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let limiter = |url: String| async move {
        let cfg = LimiterConfig {
            store: StoreKind::Redis { url },
            on_store_error: OnStoreError::FailClosed,
            store_timeout: TIMEOUT,
            key_prefix: "deskgate".into(),
            charge_invalid: false,
            redis_batch: true,
            refused_credential_ttl: Duration::from_secs(10),
        };
        Limiter::from_config(&cfg).await.expect("limiter")
    };
    let direct = limiter(redis.url()).await;
    let proxied = limiter(format!("redis://{}", proxy.addr)).await;

    /// Calls from `TASKS` tasks on `l` until `stop`: each call's store wait.
    fn load(l: &Arc<Limiter>, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<Duration>>> {
        (0..TASKS)
            .map(|i| {
                let (l, stop) = (l.clone(), stop.clone());
                tokio::spawn(async move {
                    let tenant = format!("t{}", i % 8);
                    let ask = Ask {
                        tenant: &tenant,
                        cost: 1,
                        account: Policy { name: "account", quota: 1_000_000, window_s: 60 },
                        endpoint: None,
                    };
                    let mut waits = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        let _ = l.acquire(&ask).await;
                        waits.push(start.elapsed());
                        // A client's next call, a millisecond later: about
                        // 30,000 calls a second in all, and no task spinning
                        // on calls the open circuit answers at once.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    waits
                })
            })
            .collect()
    }
    async fn gather(tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>) -> Latencies {
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("load task"));
        }
        Latencies::new(all)
    }

    println!("| fault (1.5 s, then 1 s after) | calls | p50 | p99 | p99.9 | max | over {TIMEOUT:?} + 1 ms |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let pid = redis_pid(&redis);
    let report = |fault: &str, w: &Latencies| {
        let over = w.0.iter().filter(|d| **d > TIMEOUT + Duration::from_millis(1)).count();
        println!(
            "| {fault} | {} | {:.1} ms | {:.1} ms | {:.1} ms | **{:.1} ms** | {over} |",
            w.0.len(),
            w.pct(0.5).as_secs_f64() * 1e3,
            w.pct(0.99).as_secs_f64() * 1e3,
            w.pct(0.999).as_secs_f64() * 1e3,
            w.max().as_secs_f64() * 1e3
        );
        assert!(!w.0.is_empty(), "{fault}: no call answered");
        assert!(w.max() < TIMEOUT + Duration::from_millis(500), "{fault}: a call waited {:?}", w.max());
    };
    let phase = |l: Arc<Limiter>, fault: Box<dyn FnOnce() + Send>, heal: Box<dyn FnOnce() + Send>| async move {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = load(&l, &stop);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The fault runs a process (kill, redis-cli): off the workers,
        // whose stall would be counted as store waits.
        tokio::task::block_in_place(fault);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::block_in_place(heal);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stop.store(true, Ordering::Relaxed);
        gather(tasks).await
    };

    let w = phase(direct.clone(), Box::new(|| {}), Box::new(|| {})).await;
    report("none (healthy)", &w);
    let (p1, p2) = (pid.clone(), pid.clone());
    let w = phase(direct.clone(), Box::new(move || signal(&p1, "-STOP")), Box::new(move || signal(&p2, "-CONT"))).await;
    report("SIGSTOP, then SIGCONT", &w);
    let port = redis.port;
    let pause = move || {
        let out = Command::new("redis-cli").args(["-p", &port.to_string(), "CLIENT", "PAUSE", "1500", "ALL"]).output();
        assert!(out.is_ok_and(|o| o.status.success()), "CLIENT PAUSE");
    };
    let w = phase(direct.clone(), Box::new(pause), Box::new(|| {})).await;
    report("`CLIENT PAUSE 1500 ALL`", &w);
    let (p1, p2) = (proxy.clone(), proxy.clone());
    let w = phase(proxied.clone(), Box::new(move || p1.set_blackhole(true)), Box::new(move || p2.set_blackhole(false)))
        .await;
    report("network blackholed, then back", &w);

    // Killed, then restarted empty (on the same port) while calls go on.
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&direct, &stop);
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::block_in_place(|| redis.kill());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| redis.restart());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    report("SIGKILL, then restarted empty", &gather(tasks).await);

    // Down when the gateway starts (its first connection keeps failing),
    // then started: the first connect is retried in the background.
    redis.kill();
    let late = limiter(redis.url()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&late, &stop);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| redis.restart());
    // The first connection is retried with a back-off of up to a second.
    let connected = eventually(Duration::from_secs(5), || std::future::ready(late.store_healthy())).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let w = gather(tasks).await;
    assert!(connected, "the store did not connect once Redis was up");
    report("down at start, then started", &w);
}
