//! The helpdesk's own count wins: with `trust_upstream_limits`, a lower
//! `X-RateLimit-Remaining` is charged to the tenant's account window and a
//! helpdesk 429 closes the account until its `Retry-After`, on every
//! replica sharing the store. Driven from outside against a helpdesk
//! stand-in that keeps its own rolling count and is also called directly,
//! as the account's other integrations call it. Both paths; memory and Redis.

mod support;

use std::time::Duration;

use support::redis::{RedisCluster, RedisServer};
use support::*;

const ACME: &str = "acme.freshdesk.com";

/// A tenant whose own budget (20 a minute) is above the helpdesk's.
fn tenant(extra: &str) -> String {
    format!(
        "[plans.small]\nper_minute = 20\n\n[[tenant]]\nname = \"acme\"\ndomain = \"{ACME}\"\nplan = \"small\"\n{extra}\n"
    )
}

fn redis_limiter(r: &RedisServer) -> String {
    // A generous store timeout: a loaded test machine must not turn a
    // decision into a degraded guess.
    format!("[limiter]\nstore = \"redis\"\nredis_url = \"{}\"\nstore_timeout_ms = 2000\n", r.url())
}

async fn metric(gw: &TestGateway, name: &str) -> Option<f64> {
    let samples = metrics::scrape(gw.admin).await;
    metrics::value(&samples, name, &[("tenant", "acme")])
}

/// The helpdesk has 10 a minute and 4 are spent elsewhere: the gateway
/// forwards exactly the 6 it has left, each answer shows the helpdesk's
/// count, and then refuses by itself with an honest `Retry-After`.
async fn a_lower_count_is_charged(path: Path, limiter: &str) {
    let logs = Logs::capture();
    let desk = HelpdeskStandIn::start(10, Duration::from_secs(60)).await;
    assert_eq!(desk.call_directly(4).await, [200; 4]);
    let gw = gateway_on(path, desk.addr, "", &format!("{limiter}\n{}", tenant(""))).await;
    let c = client();
    let mut answers = Vec::new();
    for _ in 0..12 {
        answers.push(get(&c, gw.addr, ACME, "/api/v2/tickets").await);
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429, 429, 429, 429, 429]);
    // No call went into a helpdesk 429; each reached it for this tenant.
    assert_eq!(desk.forwarded(), (6, 0));
    assert!(desk.forwarded_hosts().iter().all(|h| h == ACME), "{:?}", desk.forwarded_hosts());
    // The client is told the helpdesk's count, as plain integers.
    let remaining: Vec<&str> = answers[..6].iter().map(|a| a.header("x-ratelimit-remaining")).collect();
    assert_eq!(remaining, ["5", "4", "3", "2", "1", "0"]);
    assert!(answers[0].text().contains("helpdesk"));
    for refused in &answers[6..] {
        assert_eq!(refused.json()["code"], "rate_limit_exceeded", "{}", refused.text());
        assert_eq!(refused.header("x-ratelimit-remaining"), "0");
        let retry: u64 = refused.header("retry-after").parse().expect("an integer Retry-After");
        assert!((55..=61).contains(&retry), "Retry-After {retry}");
    }
    // Charged: its own 6 calls and the 14 the helpdesk counted elsewhere.
    assert_eq!(used(gw.admin, "acme").await, 20);
    let charged = (
        metric(&gw, "deskgate_upstream_reconciliations_total").await,
        metric(&gw, "deskgate_upstream_credits_charged_total").await,
    );
    assert_eq!(charged, (Some(1.0), Some(14.0)), "{:?}", logs.lines());
    assert_eq!(metric(&gw, "deskgate_upstream_rate_limited_total").await, None);
    // The plan disagrees with the config: shown, and logged once.
    assert_eq!(metric(&gw, "deskgate_upstream_budget_mismatch").await, Some(10.0));
    let warned = logs.events(
        "the helpdesk reports another account budget than the config (X-RateLimit-Total): a changed plan or an add-on?",
    );
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["helpdesk"], 10);
    assert_eq!(warned[0]["configured"], 20);
    let view = admin_get(gw.admin, "/tenants/acme").await.json();
    assert_eq!(view["helpdesk"]["trusted"], true);
    assert_eq!(view["helpdesk"]["remaining"], 0);
    assert_eq!(view["helpdesk"]["total"], 10);
    let at = view["helpdesk"]["reported_at_unix_ms"].as_u64().expect("a time");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(at <= now + 5 && now - at < 60_000, "{at} vs {now}");
    assert_refusal_counted(&gw, Some(&logs), "acme", "ticket_list", 429, "rate_limit_exceeded", 6).await;
}

/// The helpdesk is spent by other integrations: its 429 reaches the client
/// as it is, and the account is closed here until its `Retry-After`, then
/// open again.
async fn a_helpdesk_429_closes_the_account(path: Path, limiter: &str) {
    let desk = HelpdeskStandIn::start(3, Duration::from_secs(3)).await;
    assert_eq!(desk.call_directly(3).await, [200; 3]);
    let gw = gateway_on(path, desk.addr, "", &format!("{limiter}\n{}", tenant(""))).await;
    let c = client();
    let first = get(&c, gw.addr, ACME, "/api/v2/tickets").await;
    assert_eq!(first.status, 429);
    assert!(first.text().contains("\"from\":\"helpdesk\""), "not the helpdesk's own answer: {}", first.text());
    let desk_retry: u64 = first.header("retry-after").parse().expect("the helpdesk's Retry-After");
    assert!((1..=3).contains(&desk_retry), "{desk_retry}");
    assert_eq!(first.header("x-ratelimit-remaining"), "0");
    assert_eq!(desk.forwarded(), (0, 1));
    // Closed here: refused without reaching the helpdesk, never early.
    for _ in 0..3 {
        let again = get(&c, gw.addr, ACME, "/api/v2/tickets").await;
        assert_eq!(again.status, 429);
        assert_eq!(again.json()["code"], "rate_limit_exceeded", "{}", again.text());
        let retry: u64 = again.header("retry-after").parse().unwrap();
        assert!(retry >= 1 && retry <= desk_retry + 1, "Retry-After {retry}, the helpdesk said {desk_retry}");
        assert_eq!(again.header("x-ratelimit-remaining"), "0");
    }
    assert_eq!(desk.forwarded(), (0, 1));
    assert_eq!(metric(&gw, "deskgate_upstream_rate_limited_total").await, Some(1.0));
    assert_eq!(metric(&gw, "deskgate_upstream_reconciliations_total").await, Some(1.0));
    // Once the helpdesk's wait is over, calls go through again.
    tokio::time::sleep(Duration::from_millis(desk_retry * 1000 + 600)).await;
    let later = get(&c, gw.addr, ACME, "/api/v2/tickets").await;
    assert_eq!(later.status, 200, "{}", later.text());
    assert_eq!(desk.forwarded(), (1, 1));
}

support::on_both_paths! {
    #[tokio::test]
    async fn a_lower_helpdesk_count_is_charged_and_no_call_is_forwarded_into_a_429() {
        a_lower_count_is_charged(PATH, "").await;
    }

    #[tokio::test]
    async fn a_lower_helpdesk_count_is_charged_through_redis() {
        let Some(r) = RedisServer::start("upstream_budgets_lower_count") else { return };
        a_lower_count_is_charged(PATH, &redis_limiter(&r)).await;
    }

    #[tokio::test]
    async fn a_helpdesk_429_passes_through_and_closes_the_account_until_its_retry_after() {
        a_helpdesk_429_closes_the_account(PATH, "").await;
    }

    #[tokio::test]
    async fn a_helpdesk_429_closes_the_account_through_redis() {
        let Some(r) = RedisServer::start("upstream_budgets_429") else { return };
        a_helpdesk_429_closes_the_account(PATH, &redis_limiter(&r)).await;
    }

    /// Off (here by the plan): the gateway's own count and headers, as
    /// before; the helpdesk's 429s pass through and close nothing.
    #[tokio::test]
    async fn with_trust_off_only_the_gateways_own_count_applies() {
        let desk = HelpdeskStandIn::start(10, Duration::from_secs(60)).await;
        desk.call_directly(4).await;
        let config = tenant("").replace("per_minute = 20\n", "per_minute = 20\ntrust_upstream_limits = false\n");
        let gw = gateway_on(PATH, desk.addr, "", &config).await;
        let c = client();
        let mut statuses = Vec::new();
        for i in 0..8 {
            let got = get(&c, gw.addr, ACME, "/api/v2/tickets").await;
            assert_eq!(got.header("x-ratelimit-remaining"), (19 - i).to_string());
            statuses.push(got.status.as_u16());
        }
        assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
        assert_eq!(desk.forwarded(), (6, 2));
        assert_eq!(used(gw.admin, "acme").await, 8);
        assert_eq!(metric(&gw, "deskgate_upstream_reconciliations_total").await, None);
        assert_eq!(metric(&gw, "deskgate_upstream_budget_mismatch").await, None);
        // The helpdesk's 429s are counted all the same.
        assert_eq!(metric(&gw, "deskgate_upstream_rate_limited_total").await, Some(2.0));
        assert_eq!(admin_get(gw.admin, "/tenants/acme").await.json()["helpdesk"]["trusted"], false);
        // The tenant's own setting wins over its plan's.
        let config = config.replace("plan = \"small\"\n", "plan = \"small\"\ntrust_upstream_limits = true\n");
        let on = gateway_on(PATH, desk.addr, "", &config).await;
        let got = get(&c, on.addr, ACME, "/api/v2/tickets").await;
        assert_eq!(got.status, 429);
        assert_eq!(get(&c, on.addr, ACME, "/api/v2/tickets").await.json()["code"], "rate_limit_exceeded");
        assert_eq!(desk.forwarded(), (6, 3));
    }

    /// Two replicas sharing Redis: what one learns from the helpdesk, the
    /// other refuses by itself, and together they never forward a call the
    /// helpdesk would refuse, nor more than their own budget.
    #[tokio::test]
    async fn replicas_sharing_redis_refuse_what_one_of_them_learned() {
        let Some(r) = RedisServer::start("upstream_budgets_replicas") else { return };
        let desk = HelpdeskStandIn::start(10, Duration::from_secs(60)).await;
        desk.call_directly(4).await;
        let config = format!("{}\n{}", redis_limiter(&r), tenant(""));
        let (a, b) = (gateway_on(PATH, desk.addr, "", &config).await, gateway_on(PATH, desk.addr, "", &config).await);
        let c = client();
        let first = get(&c, a.addr, ACME, "/api/v2/tickets").await;
        assert_eq!(first.header("x-ratelimit-remaining"), "5");
        let mut from_b = Vec::new();
        for _ in 0..8 {
            from_b.push(get(&c, b.addr, ACME, "/api/v2/tickets").await.status.as_u16());
        }
        assert_eq!(from_b, [200, 200, 200, 200, 200, 429, 429, 429]);
        assert_eq!(get(&c, a.addr, ACME, "/api/v2/tickets").await.status, 429);
        assert_eq!(desk.forwarded(), (6, 0));
        assert_eq!(used(a.admin, "acme").await, 20);
        assert_eq!(used(b.admin, "acme").await, 20);

        // A helpdesk 429 seen by one replica closes the account for the other.
        let desk = HelpdeskStandIn::start(2, Duration::from_secs(30)).await;
        desk.call_directly(2).await;
        let config = format!("{}\nkey_prefix = \"second\"\n{}", redis_limiter(&r), tenant(""));
        let (a, b) = (gateway_on(PATH, desk.addr, "", &config).await, gateway_on(PATH, desk.addr, "", &config).await);
        let seen = get(&c, a.addr, ACME, "/api/v2/tickets").await;
        assert_eq!((seen.status.as_u16(), seen.text().contains("helpdesk")), (429, true));
        let here = get(&c, b.addr, ACME, "/api/v2/tickets").await;
        assert_eq!(here.json()["code"], "rate_limit_exceeded");
        let retry: u64 = here.header("retry-after").parse().unwrap();
        let desk_retry: u64 = seen.header("retry-after").parse().unwrap();
        assert!(retry >= 1 && retry <= desk_retry + 1, "{retry} vs {desk_retry}");
        assert_eq!(desk.forwarded(), (0, 1));
        assert_eq!(metric(&b, "deskgate_upstream_rate_limited_total").await, None);
    }

    /// The same on a Redis Cluster: the charge goes to the tenant's own key
    /// (its hash tag), which the other replica's decisions read.
    #[tokio::test]
    async fn replicas_on_a_redis_cluster_refuse_what_one_of_them_learned() {
        let Some(cluster) = RedisCluster::start("upstream_budgets_cluster") else { return };
        let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
        let limiter = format!(
            "[limiter]\nstore = \"redis\"\nredis_cluster = [{}]\nstore_timeout_ms = 2000\n",
            urls.join(", ")
        );
        let desk = HelpdeskStandIn::start(10, Duration::from_secs(60)).await;
        desk.call_directly(7).await;
        let config = format!("{limiter}\n{}", tenant(""));
        let (a, b) = (gateway_on(PATH, desk.addr, "", &config).await, gateway_on(PATH, desk.addr, "", &config).await);
        let c = client();
        assert_eq!(get(&c, a.addr, ACME, "/api/v2/tickets").await.header("x-ratelimit-remaining"), "2");
        let mut from_b = Vec::new();
        for _ in 0..4 {
            from_b.push(get(&c, b.addr, ACME, "/api/v2/tickets").await.status.as_u16());
        }
        assert_eq!(from_b, [200, 200, 429, 429]);
        assert_eq!(desk.forwarded(), (3, 0));
        assert_eq!(used(b.admin, "acme").await, 20);
        // One key for the tenant, wherever its slot lives.
        let keys: usize = cluster.nodes.iter().map(|n| n.cli(&["DBSIZE"]).parse::<usize>().unwrap()).sum();
        assert_eq!(keys, 1);
    }
}
