//! The series an operator alerts on, read from the real gateway's `/metrics`:
//! budget gauges true at scrape time (also for a tenant gone idle), shadow
//! refusals counted while the client sees no wait, near-limit calls, calls
//! and connections in flight, `[metrics] per_tenant`, refusals made before
//! the path is read counted for the host's tenant, and readiness that
//! follows a dead Redis without traffic. Each exposition is parsed, and
//! checked by promtool where it is installed.

mod support;

use std::time::Duration;

use support::metrics::{promtool_check, scrape, value};
use support::redis::RedisServer;
use support::*;

/// `short`: 4 credits per 2-second window, 2 of them for ticket_list.
/// `dry`: a shadow tenant with 2 credits a minute.
const SERIES_TENANTS: &str = r#"
[[tenant]]
name = "short"
domain = "short.freshdesk.com"
plan = "trial"
per_minute = 4
window_seconds = 2
endpoints = { ticket_list = 2 }

[[tenant]]
name = "dry"
domain = "dry.freshdesk.com"
plan = "trial"
per_minute = 2
shadow = true

[[tenant]]
name = "ten"
domain = "ten.freshdesk.com"
plan = "trial"
per_minute = 10
"#;

async fn gauge(admin: std::net::SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    value(&scrape(admin).await, name, labels)
}

support::on_both_paths! {
    #[tokio::test]
    async fn budget_gauges_are_true_at_scrape_time_also_for_a_tenant_gone_idle() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", SERIES_TENANTS).await;
        let c = client();
        // Never called: nothing to say about it yet.
        assert_eq!(gauge(gw.admin, "deskgate_budget_remaining", &[("tenant", "short"), ("policy", "account")]).await, None);
        for _ in 0..2 {
            assert_eq!(get(&c, gw.addr, "short.freshdesk.com", "/api/v2/tickets").await.status, 200);
        }
        assert_eq!(get(&c, gw.addr, "short.freshdesk.com", "/api/v2/tickets").await.status, 429);
        assert_eq!(up.count(), 2, "the refused call never reached the upstream");
        assert_eq!(used(gw.admin, "short").await, 2);
        let m = scrape(gw.admin).await;
        let short = |policy| [("tenant", "short"), ("policy", policy)];
        assert_eq!(value(&m, "deskgate_budget_remaining", &short("account")), Some(2.0));
        assert_eq!(value(&m, "deskgate_budget_limit", &short("account")), Some(4.0));
        assert_eq!(value(&m, "deskgate_budget_remaining", &short("ticket_list")), Some(0.0));
        assert_eq!(value(&m, "deskgate_budget_limit", &short("ticket_list")), Some(2.0));
        // Idle past the window: the gauges say what the store says now,
        // with no call in between.
        tokio::time::sleep(Duration::from_millis(2_300)).await;
        let m = scrape(gw.admin).await;
        assert_eq!(value(&m, "deskgate_budget_remaining", &short("account")), Some(4.0));
        assert_eq!(value(&m, "deskgate_budget_remaining", &short("ticket_list")), Some(2.0));
        assert_eq!(value(&m, "deskgate_budget_limit", &short("ticket_list")), Some(2.0));
        // Scraping consumed nothing.
        assert_eq!(used(gw.admin, "short").await, 0);
        assert_eq!(up.count(), 2);
    }

    #[tokio::test]
    async fn a_shadowed_call_is_counted_and_shows_the_client_no_wait() {
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", SERIES_TENANTS).await;
        let c = client();
        for _ in 0..2 {
            assert_eq!(get(&c, gw.addr, "dry.freshdesk.com", "/api/v2/contacts").await.status, 200);
        }
        let got = get(&c, gw.addr, "dry.freshdesk.com", "/api/v2/contacts").await;
        assert_eq!(got.status, 200, "shadow mode never answers 429");
        assert_eq!(up.count(), 3, "the over-budget call was forwarded");
        let last = up.last();
        assert_eq!(last.headers["host"], "dry.freshdesk.com");
        assert_eq!(last.uri, "/api/v2/contacts");
        // Nothing a client backs off on.
        for name in ["retry-after", "ratelimit", "x-ratelimit-remaining"] {
            assert!(got.headers.get(name).is_none(), "{name}: {:?}", got.headers);
        }
        assert_eq!(got.header("x-ratelimit-total"), "2");
        assert_eq!(got.header("x-ratelimit-used-currentrequest"), "0", "the over-budget call is not charged");
        assert_eq!(got.header("ratelimit-policy"), "\"account\";q=2;w=60");
        assert_eq!(used(gw.admin, "dry").await, 2);
        let m = scrape(gw.admin).await;
        let dry = [("tenant", "dry"), ("policy", "account")];
        assert_eq!(value(&m, "deskgate_shadow_refusals_total", &dry), Some(1.0));
        assert_eq!(value(&m, "deskgate_rate_limited_total", &[("tenant", "dry"), ("endpoint", "contact_list")]), None);
        assert_eq!(
            value(&m, "deskgate_requests_total", &[("tenant", "dry"), ("endpoint", "contact_list"), ("status", "200")]),
            Some(3.0)
        );
        assert_eq!(logs.events("shadow: would answer 429").len(), 1);
    }

    #[tokio::test]
    async fn calls_admitted_with_under_a_tenth_left_are_counted_near_the_limit() {
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", SERIES_TENANTS).await;
        let c = client();
        let ten = [("tenant", "ten"), ("policy", "account")];
        // 10 credits: the 9th call leaves 1 (a tenth: not under it), the
        // 10th leaves 0.
        for i in 1..=10 {
            assert_eq!(get(&c, gw.addr, "ten.freshdesk.com", "/api/v2/contacts").await.status, 200);
            let near = gauge(gw.admin, "deskgate_near_limit_total", &ten).await.unwrap_or(0.0);
            assert_eq!(near, if i == 10 { 1.0 } else { 0.0 }, "after call {i}");
        }
        // A refusal is not an admission.
        assert_eq!(get(&c, gw.addr, "ten.freshdesk.com", "/api/v2/contacts").await.status, 429);
        assert_eq!(gauge(gw.admin, "deskgate_near_limit_total", &ten).await, Some(1.0));
        assert_eq!(up.count(), 10);
        assert_eq!(used(gw.admin, "ten").await, 10);
    }

    #[tokio::test]
    async fn calls_and_connections_in_flight_are_gauged_on_either_path() {
        let upstream = support::ops::start_upstream().await;
        let gw = gateway_on(PATH, upstream, "", SERIES_TENANTS).await;
        let m = scrape(gw.admin).await;
        assert_eq!(value(&m, "deskgate_calls_in_flight", &[]), Some(0.0));
        assert_eq!(value(&m, "deskgate_connections_open", &[]), Some(0.0));
        assert_eq!(value(&m, "deskgate_store_up", &[]), Some(1.0));
        let req = format!("{}Connection: close\r\n\r\n", head("GET", "ten.freshdesk.com", "/api/v2/contacts?delay_ms=800"));
        let addr = gw.addr;
        let call = tokio::spawn(async move { exchange(addr, req.as_bytes(), Duration::from_secs(5)).await });
        let held = eventually(Duration::from_millis(700), || async {
            gauge(gw.admin, "deskgate_calls_in_flight", &[]).await == Some(1.0)
                && gauge(gw.admin, "deskgate_connections_open", &[]).await == Some(1.0)
        })
        .await;
        assert!(held, "one call on one connection in flight");
        let reply = call.await.expect("call");
        assert_eq!(reply.status(), 200, "{}", reply.text);
        assert!(reply.text.contains("/api/v2/contacts"), "the upstream saw the call: {}", reply.text);
        assert_eq!(used(gw.admin, "ten").await, 1);
        let drained = eventually(Duration::from_secs(2), || async {
            gauge(gw.admin, "deskgate_calls_in_flight", &[]).await == Some(0.0)
                && gauge(gw.admin, "deskgate_connections_open", &[]).await == Some(0.0)
        })
        .await;
        assert!(drained, "{:?}", scrape(gw.admin).await.iter().filter(|s| s.name.contains("flight") || s.name.contains("open")).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_refusal_before_the_path_is_read_is_counted_for_the_hosts_tenant() {
        let logs = Logs::capture();
        let up = RecordingUpstream::start().await;
        let gw = gateway_on(PATH, up.addr, "", SERIES_TENANTS).await;
        // `Connection` naming a policed field: refused before the path is read.
        let req = format!("{}Connection: keep-alive, Authorization\r\n\r\n", head("GET", "ten.freshdesk.com", "/api/v2/contacts"));
        let reply = exchange(gw.addr, req.as_bytes(), Duration::from_millis(500)).await;
        assert_eq!(reply.status(), 400, "{}", reply.text);
        assert_eq!(up.count(), 0);
        assert_eq!(used(gw.admin, "ten").await, 0);
        assert_refusal_counted(&gw, Some(&logs), "ten", "other", 400, "invalid_value", 1).await;
        // A host no tenant has: counted for nobody, as before.
        let req = format!("{}Connection: keep-alive, Authorization\r\n\r\n", head("GET", "nobody.example", "/api/v2/contacts"));
        assert_eq!(exchange(gw.addr, req.as_bytes(), Duration::from_millis(500)).await.status(), 400);
        let m = scrape(gw.admin).await;
        assert_eq!(value(&m, "deskgate_rejected_total", &[("tenant", "unknown"), ("reason", "invalid_value")]), None);
    }

    #[tokio::test]
    async fn limits_only_sums_requests_over_tenants_and_keeps_limits_per_tenant() {
        let up = RecordingUpstream::start().await;
        let rest = format!("[metrics]\nper_tenant = \"limits_only\"\n{SERIES_TENANTS}");
        let gw = gateway_on(PATH, up.addr, "", &rest).await;
        let c = client();
        for host in ["ten.freshdesk.com", "short.freshdesk.com", "short.freshdesk.com"] {
            assert_eq!(get(&c, gw.addr, host, "/api/v2/tickets").await.status, 200);
        }
        assert_eq!(get(&c, gw.addr, "short.freshdesk.com", "/api/v2/tickets").await.status, 429);
        assert_eq!(get(&c, gw.addr, "nobody.example", "/api/v2/tickets").await.status, 404);
        assert_eq!(up.count(), 3);
        assert_eq!(used(gw.admin, "short").await, 2);
        let m = scrape(gw.admin).await;
        let all_ok = [("tenant", "*"), ("endpoint", "ticket_list"), ("status", "200")];
        assert_eq!(value(&m, "deskgate_requests_total", &all_ok), Some(3.0));
        assert_eq!(value(&m, "deskgate_requests_total", &[("tenant", "*"), ("endpoint", "ticket_list"), ("status", "429")]), Some(1.0));
        assert_eq!(value(&m, "deskgate_requests_total", &[("tenant", "*"), ("endpoint", "other"), ("status", "404")]), Some(1.0));
        assert_eq!(value(&m, "deskgate_rejected_total", &[("tenant", "*"), ("reason", "unknown_host")]), Some(1.0));
        // Where the tenant matters, it stays.
        assert_eq!(value(&m, "deskgate_rate_limited_total", &[("tenant", "short"), ("endpoint", "ticket_list")]), Some(1.0));
        assert_eq!(value(&m, "deskgate_budget_remaining", &[("tenant", "short"), ("policy", "ticket_list")]), Some(0.0));
        assert!(
            !m.iter().any(|s| s.name == "deskgate_requests_total" && s.labels["tenant"] != "*"),
            "no per-tenant request series"
        );
    }
}

#[tokio::test]
async fn the_new_series_pass_promtool_and_carry_help_and_type() {
    let up = RecordingUpstream::start().await;
    let gw = gateway(up.addr, "", SERIES_TENANTS).await;
    let c = client();
    for _ in 0..3 {
        get(&c, gw.addr, "dry.freshdesk.com", "/api/v2/contacts").await;
    }
    // The 4th of short's 4 credits leaves none: near the limit.
    for _ in 0..4 {
        get(&c, gw.addr, "short.freshdesk.com", "/api/v2/contacts").await;
    }
    assert_eq!(up.count(), 7, "every call forwarded");
    let text = metrics::metrics_text(gw.admin).await;
    for name in [
        "deskgate_budget_remaining",
        "deskgate_budget_limit",
        "deskgate_shadow_refusals_total",
        "deskgate_near_limit_total",
        "deskgate_store_up",
        "deskgate_calls_in_flight",
        "deskgate_connections_open",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
        assert!(text.lines().any(|l| l.starts_with(name) && !l.starts_with('#')), "{name} has a sample: {text}");
    }
    let m = support::metrics::parse_metrics(&text);
    assert_eq!(value(&m, "deskgate_near_limit_total", &[("tenant", "short"), ("policy", "account")]), Some(1.0));
    assert_eq!(value(&m, "deskgate_shadow_refusals_total", &[("tenant", "dry"), ("policy", "account")]), Some(1.0));
    if let Some((ok, said)) = promtool_check(&text) {
        assert!(ok, "promtool check metrics failed:\n{said}\n--- the exposition:\n{text}");
        assert!(said.trim().is_empty(), "promtool had remarks:\n{said}");
    }
}

/// With `fail_closed`, `/readyz` follows Redis without any call: the store is
/// probed in the background.
#[tokio::test]
async fn readyz_turns_503_within_a_second_of_redis_dying_without_traffic() {
    let Some(mut redis) = RedisServer::start("readyz_turns_503_within_a_second_of_redis_dying_without_traffic") else {
        return;
    };
    let up = RecordingUpstream::start().await;
    let limiter =
        format!("[limiter]\nstore = \"redis\"\nredis_url = \"{}\"\non_store_error = \"fail_closed\"\n", redis.url());
    let gw = gateway(up.addr, "", &format!("{limiter}{SERIES_TENANTS}")).await;
    let c = client();
    assert_eq!(admin_get(gw.admin, "/readyz").await.status, 200);
    assert_eq!(get(&c, gw.addr, "ten.freshdesk.com", "/api/v2/contacts").await.status, 200);
    assert_eq!(up.count(), 1);
    assert_eq!(used(gw.admin, "ten").await, 1);
    assert_eq!(gauge(gw.admin, "deskgate_store_up", &[]).await, Some(1.0));
    assert_eq!(
        gauge(gw.admin, "deskgate_budget_remaining", &[("tenant", "ten"), ("policy", "account")]).await,
        Some(9.0)
    );

    redis.kill();
    let killed = std::time::Instant::now();
    let down =
        eventually(Duration::from_millis(1_500), || async { admin_get(gw.admin, "/readyz").await.status == 503 }).await;
    assert!(down, "/readyz still 200 {:?} after Redis died", killed.elapsed());
    let m = scrape(gw.admin).await;
    assert_eq!(value(&m, "deskgate_store_up", &[]), Some(0.0));
    // Not known while the store is down: absent, never a stale number.
    assert_eq!(value(&m, "deskgate_budget_remaining", &[("tenant", "ten"), ("policy", "account")]), None);
    assert_eq!(value(&m, "deskgate_budget_limit", &[("tenant", "ten"), ("policy", "account")]), Some(10.0));
    assert_eq!(up.count(), 1, "no call was made meanwhile");

    // Back again: ready without traffic too.
    redis.restart();
    let up_again =
        eventually(Duration::from_secs(5), || async { admin_get(gw.admin, "/readyz").await.status == 200 }).await;
    assert!(up_again, "/readyz did not turn 200 after Redis came back");
    assert_eq!(gauge(gw.admin, "deskgate_store_up", &[]).await, Some(1.0));
}

/// A reload keeps the tenants whose budgets a scrape reads, and forgets a
/// tenant the new config removed.
#[tokio::test]
async fn a_reload_keeps_the_budget_series_of_tenants_served_and_drops_removed_ones() {
    let up = RecordingUpstream::start().await;
    let gw = gateway(up.addr, "", SERIES_TENANTS).await;
    let c = client();
    assert_eq!(get(&c, gw.addr, "dry.freshdesk.com", "/api/v2/contacts").await.status, 200);
    assert_eq!(get(&c, gw.addr, "ten.freshdesk.com", "/api/v2/contacts").await.status, 200);
    assert_eq!(up.count(), 2);
    let path = gw.dir.path().join("deskgate.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let ten = "[[tenant]]\nname = \"ten\"\ndomain = \"ten.freshdesk.com\"\nplan = \"trial\"\nper_minute = 10\n";
    assert!(text.contains(ten), "{text}");
    std::fs::write(&path, text.replace(ten, "")).expect("write config");
    gw.gw.reload().await.expect("reload");
    let m = scrape(gw.admin).await;
    assert_eq!(value(&m, "deskgate_budget_remaining", &[("tenant", "dry"), ("policy", "account")]), Some(1.0));
    assert_eq!(value(&m, "deskgate_budget_limit", &[("tenant", "dry"), ("policy", "account")]), Some(2.0));
    // Never served here: nothing to say about it.
    assert_eq!(value(&m, "deskgate_budget_limit", &[("tenant", "short"), ("policy", "account")]), None);
    assert!(
        !m.iter().any(|s| s.name.starts_with("deskgate_budget_") && s.labels.get("tenant").is_some_and(|t| t == "ten")),
        "a removed tenant keeps no budget series"
    );
    assert_eq!(used(gw.admin, "dry").await, 1);
}
