//! Waiting for room instead of refusing (`max_wait_ms`, `max_held_calls`),
//! and calls whose cost alone exceeds a budget (refused 400
//! `cost_exceeds_budget`, without `Retry-After`). On both paths, with the
//! memory store and with Redis shared by two gateways. Windows are a few
//! seconds long so that room comes back within a test.

mod support;

use std::time::{Duration, Instant};

use support::redis::RedisServer;
use support::*;

/// `paced`: 3 calls per 2 s, held up to 5 s. `single`: 1 call per second,
/// so each room lets exactly one held call through (their order shows at
/// the upstream). `narrow`: 1 per 2 s and one call held at most. `brief`:
/// 1 per 3 s, held at most 500 ms (never long enough).
const HOLDING: &str = r#"
[plans.paced]
per_minute = 3
window_seconds = 2
max_wait_ms = 5000

[[tenant]]
name = "paced"
domain = "paced.freshdesk.com"
plan = "paced"

[[tenant]]
name = "single"
domain = "single.freshdesk.com"
plan = "paced"
per_minute = 1
window_seconds = 1

[[tenant]]
name = "narrow"
domain = "narrow.freshdesk.com"
plan = "paced"
per_minute = 1
max_held_calls = 1

[[tenant]]
name = "brief"
domain = "brief.freshdesk.com"
plan = "paced"
per_minute = 1
window_seconds = 3
max_wait_ms = 500
"#;

fn redis_limiter(r: &RedisServer) -> String {
    format!("[limiter]\nstore = \"redis\"\nredis_url = \"{}\"\n", r.url())
}

/// A GET of `path` on `host`, on its own task: (status, Retry-After, when the answer came).
fn fire(
    c: &TestClient,
    addr: std::net::SocketAddr,
    host: &'static str,
    path: String,
) -> tokio::task::JoinHandle<(u16, String, Instant)> {
    let c = c.clone();
    tokio::spawn(async move {
        let r = call(&c, addr, "GET", host, &path, &[], b"").await;
        (r.status.as_u16(), r.header("retry-after").to_owned(), Instant::now())
    })
}

/// Asserts that no span of `window` (less a margin for the time a call
/// takes from admission to the upstream) holds more than `quota` of the
/// upstream's arrivals for `host`.
fn at_most_per_window(up: &RecordingUpstream, host: &str, window: Duration, quota: usize) {
    let mut times: Vec<Instant> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.headers.get("host").is_some_and(|h| h == host))
        .map(|s| s.at)
        .collect();
    times.sort();
    let span = window.mul_f64(0.85);
    for (i, t) in times.iter().enumerate() {
        let within = times[i..].iter().take_while(|u| u.duration_since(*t) < span).count();
        assert!(within <= quota, "{within} calls reached the upstream within {span:?}: {times:?}");
    }
}

/// The `n` of `?n=N` of every call the upstream received, in arrival order.
fn arrival_order(up: &RecordingUpstream) -> Vec<String> {
    up.seen.lock().unwrap().iter().map(|s| s.uri.rsplit_once("n=").map_or("?", |(_, n)| n).to_owned()).collect()
}

async fn hold_metric(gw: &TestGateway, outcome: &str) -> f64 {
    let samples = metrics::scrape(gw.admin).await;
    metrics::value(&samples, "deskgate_hold_wait_seconds_count", &[("outcome", outcome)]).unwrap_or(0.0)
}

async fn held_now(gw: &TestGateway, tenant: &str) -> f64 {
    let samples = metrics::scrape(gw.admin).await;
    metrics::value(&samples, "deskgate_held_calls", &[("tenant", tenant)]).unwrap_or(0.0)
}

/// A burst of 9 against 3 per 2 s, all sent at once to the gateways in
/// turn: every call is answered 200 (held, not refused), and no span of a
/// window lets more than the budget through to the upstream.
async fn a_burst_is_smoothed(gws: &[&TestGateway], up: &RecordingUpstream) {
    let c = client();
    let calls: Vec<_> = (0..9)
        .map(|i| fire(&c, gws[i % gws.len()].addr, "paced.freshdesk.com", format!("/api/v2/tickets?n={i}")))
        .collect();
    for t in calls {
        let (status, retry_after, _) = t.await.unwrap();
        assert_eq!((status, retry_after.as_str()), (200, ""), "a held call was refused");
    }
    assert_eq!(up.count(), 9);
    at_most_per_window(up, "paced.freshdesk.com", Duration::from_secs(2), 3);
    // What is charged is what went through: the window now holds the last
    // room's calls, never more than the budget.
    let used = used(gws[0].admin, "paced").await;
    assert!((1..=3).contains(&used), "used {used}");
    let mut held = 0.0;
    for gw in gws {
        held += hold_metric(gw, "admitted").await;
        assert_eq!(held_now(gw, "paced").await, 0.0);
    }
    assert_eq!(held, 6.0, "six calls waited for room");
}

support::on_both_paths! {
    #[tokio::test]
    async fn a_burst_above_the_budget_is_smoothed_instead_of_refused() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", HOLDING).await;
        a_burst_is_smoothed(&[&gw], &up).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_gateways_sharing_redis_smooth_a_burst_without_admitting_more_together() {
        let Some(r) = RedisServer::start("holding_two_gateways_sharing_redis") else { return };
        let up = RecordingUpstream::start().await;
        let rest = format!("{}{HOLDING}", redis_limiter(&r));
        let a = gateway_on(PATH, up.addr, "", &rest).await;
        let b = gateway_on(PATH, up.addr, "", &rest).await;
        a_burst_is_smoothed(&[&a, &b], &up).await;
    }

    /// One call per second: held calls are let through one per room, in
    /// the order they arrived, also those that came while others waited.
    #[tokio::test]
    async fn held_calls_go_in_arrival_order() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", HOLDING).await;
        let c = client();
        let mut calls = Vec::new();
        for i in 0..4 {
            calls.push(fire(&c, gw.addr, "single.freshdesk.com", format!("/api/v2/tickets?n={i}")));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for t in calls {
            assert_eq!(t.await.unwrap().0, 200);
        }
        assert_eq!(arrival_order(&up), ["0", "1", "2", "3"]);
        at_most_per_window(&up, "single.freshdesk.com", Duration::from_secs(1), 1);
    }

    /// A cheaper call that arrives while a dearer one is held waits behind
    /// it, though room for itself would come sooner.
    #[tokio::test]
    async fn a_cheaper_call_does_not_overtake_a_held_dearer_one() {
        no_overtaking(PATH, "").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cheaper_call_does_not_overtake_a_held_dearer_one_with_redis() {
        let Some(r) = RedisServer::start("holding_no_overtaking_redis") else { return };
        no_overtaking(PATH, &redis_limiter(&r)).await;
    }

    /// Beyond `max_held_calls` the answer is today's 429 at once, while the
    /// held call still gets through when room comes.
    #[tokio::test]
    async fn beyond_max_held_calls_the_answer_is_429_at_once() {
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", HOLDING).await;
        let c = client();
        let first = get(&c, gw.addr, "narrow.freshdesk.com", "/api/v2/tickets?n=0").await;
        assert_eq!(first.status, 200);
        let held = fire(&c, gw.addr, "narrow.freshdesk.com", "/api/v2/tickets?n=1".to_owned());
        assert!(eventually(Duration::from_secs(1), || async { held_now(&gw, "narrow").await == 1.0 }).await);
        let over = get(&c, gw.addr, "narrow.freshdesk.com", "/api/v2/tickets?n=2").await;
        let over_at = Instant::now();
        assert_eq!(over.status, 429, "{}", over.text());
        assert_eq!(over.json()["code"], "rate_limit_exceeded");
        let retry: u64 = over.header("retry-after").parse().expect("a Retry-After");
        assert!((1..=3).contains(&retry), "Retry-After {retry}");
        let (status, _, held_at) = held.await.unwrap();
        assert_eq!(status, 200);
        assert!(over_at < held_at, "the call beyond the bound waited for the held one");
        assert_eq!(arrival_order(&up), ["0", "1"]);
        assert_eq!(used(gw.admin, "narrow").await, 1);
        assert_refusal_counted(&gw, Some(&logs), "narrow", "ticket_list", 429, "rate_limit_exceeded", 1).await;
    }

    /// A call that would not fit within `max_wait_ms` is refused at once,
    /// uncharged, as without holding: never held.
    #[tokio::test]
    async fn a_wait_longer_than_max_wait_is_refused_at_once() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", HOLDING).await;
        let c = client();
        assert_eq!(get(&c, gw.addr, "brief.freshdesk.com", "/api/v2/tickets?n=0").await.status, 200);
        let second = get(&c, gw.addr, "brief.freshdesk.com", "/api/v2/tickets?n=1").await;
        assert_eq!(second.status, 429);
        let retry: u64 = second.header("retry-after").parse().expect("a Retry-After");
        assert!((2..=4).contains(&retry), "Retry-After {retry}");
        assert_eq!(second.header("x-ratelimit-used-currentrequest"), "0");
        assert_eq!(arrival_order(&up), ["0"]);
        assert_eq!(used(gw.admin, "brief").await, 1);
        for outcome in ["admitted", "refused", "gone"] {
            assert_eq!(hold_metric(&gw, outcome).await, 0.0, "{outcome}: nothing was held");
        }
    }

    /// A reload applies `max_wait_ms` to the calls that arrive after it.
    #[tokio::test]
    async fn a_reload_turns_holding_on() {
        let up = RecordingUpstream::start().await;
        let off = HOLDING.replacen("window_seconds = 1\n", "window_seconds = 1\nmax_wait_ms = 0\n", 1);
        let gw = gateway_on(PATH, up.addr, "", &off).await;
        let c = client();
        assert_eq!(get(&c, gw.addr, "single.freshdesk.com", "/api/v2/tickets?n=0").await.status, 200);
        assert_eq!(get(&c, gw.addr, "single.freshdesk.com", "/api/v2/tickets?n=1").await.status, 429);
        let file = gw.dir.path().join("deskgate.toml");
        let text = std::fs::read_to_string(&file).unwrap().replacen("max_wait_ms = 0\n", "", 1);
        std::fs::write(&file, text).unwrap();
        gw.gw.reload().await.expect("reload");
        assert_eq!(get(&c, gw.addr, "single.freshdesk.com", "/api/v2/tickets?n=2").await.status, 200);
        assert_eq!(hold_metric(&gw, "admitted").await, 1.0);
        assert_eq!(arrival_order(&up), ["0", "2"]);
    }

    /// A client that leaves while its call is held costs nothing: nothing
    /// reaches the upstream, nothing is charged, and the line moves on.
    #[tokio::test]
    async fn a_client_that_leaves_while_held_costs_nothing() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", HOLDING).await;
        let c = client();
        assert_eq!(get(&c, gw.addr, "narrow.freshdesk.com", "/api/v2/tickets?n=0").await.status, 200);
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let req = format!("{}\r\n", head("GET", "narrow.freshdesk.com", "/api/v2/tickets?n=gone"));
        tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes()).await.unwrap();
        assert!(eventually(Duration::from_secs(1), || async { held_now(&gw, "narrow").await == 1.0 }).await);
        drop(s);
        assert!(
            eventually(Duration::from_secs(1), || async { held_now(&gw, "narrow").await == 0.0 }).await,
            "the call of a client that left is still held"
        );
        assert_eq!(hold_metric(&gw, "gone").await, 1.0);
        // Past the room its call would have taken: not sent, not charged.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(arrival_order(&up), ["0"]);
        assert_eq!(used(gw.admin, "narrow").await, 0);
        // The next call goes straight through.
        assert_eq!(get(&c, gw.addr, "narrow.freshdesk.com", "/api/v2/tickets?n=1").await.status, 200);
        assert_eq!(arrival_order(&up), ["0", "1"]);
    }

    /// Shutdown answers a held call at once (its 429), rather than holding
    /// it into the drain; nothing is forwarded or charged for it.
    #[tokio::test]
    async fn shutdown_answers_held_calls_at_once() {
        let up = RecordingUpstream::start().await;
        let TestGateway { gw, addr, admin, dir: _dir } = gateway_on(PATH, up.addr, "", HOLDING).await;
        let c = client();
        assert_eq!(get(&c, addr, "narrow.freshdesk.com", "/api/v2/tickets?n=0").await.status, 200);
        let held = fire(&c, addr, "narrow.freshdesk.com", "/api/v2/tickets?n=1".to_owned());
        let samples = || async { metrics::scrape(admin).await };
        assert!(
            eventually(Duration::from_secs(1), || async {
                metrics::value(&samples().await, "deskgate_held_calls", &[("tenant", "narrow")]) == Some(1.0)
            })
            .await
        );
        let stopping = tokio::spawn(gw.shutdown());
        // Had it waited for room it would be a 200 in about 2 s.
        let (status, retry_after, _) = held.await.unwrap();
        assert_eq!(status, 429);
        let retry: u64 = retry_after.parse().expect("a Retry-After");
        assert!((1..=3).contains(&retry), "Retry-After {retry}");
        stopping.await.unwrap();
        assert_eq!(arrival_order(&up), ["0"], "a held call was forwarded during shutdown");
    }

    /// A call whose cost alone exceeds a budget it needs is refused 400
    /// `cost_exceeds_budget` before the store, without `Retry-After`, naming
    /// the budget, its size and the cost; nothing forwarded or charged.
    #[tokio::test]
    async fn a_call_that_can_never_fit_is_refused_without_a_retry_after() {
        never_fits(PATH, "").await;
    }

    #[tokio::test]
    async fn a_call_that_can_never_fit_is_refused_before_the_redis_store() {
        let Some(r) = RedisServer::start("holding_never_fits_redis") else { return };
        never_fits(PATH, &redis_limiter(&r)).await;
    }
}

/// 3 single calls fill paced's 3 per 2 s; then one costing 3 (it needs the
/// whole window) is held, and one costing 1 (it would fit when the first
/// single call leaves) arrives behind it: it is let through after the dear
/// one, never before.
async fn no_overtaking(path: Path, limiter: &str) {
    let up = RecordingUpstream::start().await;
    let gw = gateway_on(path, up.addr, "", &format!("{limiter}{HOLDING}")).await;
    let c = client();
    for i in 0..3 {
        let got = get(&c, gw.addr, "paced.freshdesk.com", &format!("/api/v2/tickets?n={i}")).await;
        assert_eq!(got.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dear = fire(&c, gw.addr, "paced.freshdesk.com", "/api/v2/tickets?include=requester&n=3".to_owned());
    assert!(eventually(Duration::from_secs(1), || async { held_now(&gw, "paced").await == 1.0 }).await);
    let cheap = fire(&c, gw.addr, "paced.freshdesk.com", "/api/v2/tickets?n=4".to_owned());
    assert_eq!(dear.await.unwrap().0, 200);
    assert_eq!(cheap.await.unwrap().0, 200);
    assert_eq!(arrival_order(&up), ["0", "1", "2", "3", "4"]);
    assert_eq!(used(gw.admin, "paced").await, 1, "the dear call's 3 have left, the cheap one's 1 is in");
    // n=3 holds all three credits: nothing else can be in its window.
    at_most_per_window(&up, "paced.freshdesk.com", Duration::from_secs(2), 3);
}

async fn never_fits(path: Path, limiter: &str) {
    let logs = Logs::capture();
    let up = RecordingUpstream::start().await;
    let gw = gateway_on(path, up.addr, "", &format!("{limiter}{TENANTS}{HOLDING}")).await;
    let c = client();
    // tiny: ticket_list 3 per minute; two includes on the list cost 5.
    let got = get(&c, gw.addr, "tiny.freshdesk.com", "/api/v2/tickets?include=requester,stats").await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert!(got.headers.get("retry-after").is_none(), "a Retry-After that can never come true");
    let body = got.json();
    assert_eq!(body["errors"][0]["code"], "cost_exceeds_budget");
    assert_eq!(body["errors"][0]["field"], "include");
    assert_eq!(body["budget"], serde_json::json!({ "name": "ticket_list", "size": 3, "window_seconds": 60 }));
    assert_eq!(body["cost"], 5);
    assert_refusal_counted(&gw, Some(&logs), "tiny", "ticket_list", 400, "cost_exceeds_budget", 1).await;
    let ids = logs.assert_refused("tiny", "cost_exceeds_budget", 400, 1);
    let line = logs.access_line(&ids[0]);
    assert_eq!(
        (&line["policy"], &line["retry_after_s"]),
        (&serde_json::json!("ticket_list"), &serde_json::Value::Null)
    );
    // One ticket with six includes costs 7, above the account's 5.
    let got = get(&c, gw.addr, "tiny.freshdesk.com", "/api/v2/tickets/42?include=a,b,c,d,e,f").await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert_eq!(got.json()["budget"]["name"], "account");
    assert_eq!(got.json()["cost"], 7);
    assert!(got.headers.get("retry-after").is_none());
    // Also on a tenant that holds calls: refused at once, never held.
    let got = get(&c, gw.addr, "paced.freshdesk.com", "/api/v2/tickets?include=requester,stats").await;
    assert_eq!(got.status, 400);
    assert_eq!(hold_metric(&gw, "refused").await, 0.0);
    assert_eq!(up.count(), 0, "a call that can never fit reached the upstream");
    assert_eq!(used(gw.admin, "tiny").await, 0);
    assert_eq!(used(gw.admin, "paced").await, 0);
    let samples = metrics::scrape(gw.admin).await;
    let refused =
        metrics::value(&samples, "deskgate_rejected_total", &[("tenant", "tiny"), ("reason", "cost_exceeds_budget")]);
    assert_eq!(refused, Some(2.0));
    // A cost equal to the budget fits: one include on the list costs 3.
    let got = get(&c, gw.addr, "tiny.freshdesk.com", "/api/v2/tickets?include=requester").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-ratelimit-used-currentrequest"), "3");
    assert_eq!(up.count(), 1);
    assert_eq!(used(gw.admin, "tiny").await, 3);
}
