//! Metrics and the admin listener (docs/reference.md "Operations"): exact counts for known traffic,
//! label values only from config, probes, `/tenants/{name}` reading without
//! consuming, `/config` redacted, nothing of it on the API listener.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use deskgate::app::Gateway;
use deskgate::config::Config;
use deskgate::limiter::Limiter;
use http::StatusCode;
use support::ops::*;

async fn gateway(dir: &ConfigDir) -> Gateway {
    let upstream = start_upstream().await;
    let path = dir.write("deskgate.toml", &config_toml(&format!("http://{upstream}"), "", "", ""));
    Gateway::start(Config::load(&path).expect("config")).await.expect("start")
}

async fn tickets(gw: &Gateway, host: &str, auth: Option<&str>) -> Reply {
    send(gw.api_addr, get(host, "/api/v2/tickets", auth)).await
}

fn series(samples: &[Sample], name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    samples.iter().filter(|s| s.name == name).map(|s| (s.labels.clone().into_iter().collect(), s.value)).collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    v.sort();
    v
}

#[tokio::test]
async fn metrics_count_exactly_the_known_traffic_with_labels_from_config_only() {
    let dir = ConfigDir::new();
    let gw = gateway(&dir).await;
    let auth = basic_auth();

    for _ in 0..3 {
        assert_eq!(tickets(&gw, "acme.freshdesk.com", Some(&auth)).await.status, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(tickets(&gw, "acme.freshdesk.com", Some(&auth)).await.status, StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(tickets(&gw, "acme.freshdesk.com", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(tickets(&gw, "Evil-Unknown.Example.COM", Some(&auth)).await.status, StatusCode::NOT_FOUND);
    // Portal traffic is forwarded, not policed: no request series for it.
    assert_eq!(send(gw.api_addr, get("acme.freshdesk.com", "/support/home", None)).await.status, StatusCode::OK);

    let text = admin_get(gw.admin_addr, "/metrics").await;
    assert_eq!(text.status, StatusCode::OK);
    assert!(text.header("content-type").starts_with("text/plain"), "{:?}", text.headers);
    let text = text.text();
    assert!(!text.to_ascii_lowercase().contains("evil-unknown"), "raw Host leaked into labels");
    let m = parse_metrics(&text);

    let mut requests = series(&m, "deskgate_requests_total");
    requests.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![
        (labels(&[("tenant", "acme"), ("endpoint", "ticket_list"), ("status", "200")]), 3.0),
        (labels(&[("tenant", "acme"), ("endpoint", "ticket_list"), ("status", "429")]), 2.0),
        (labels(&[("tenant", "acme"), ("endpoint", "ticket_list"), ("status", "401")]), 1.0),
        (labels(&[("tenant", "unknown"), ("endpoint", "other"), ("status", "404")]), 1.0),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(requests, want);

    assert_eq!(
        series(&m, "deskgate_rate_limited_total"),
        vec![(labels(&[("tenant", "acme"), ("endpoint", "ticket_list")]), 2.0)]
    );
    let mut rejected = series(&m, "deskgate_rejected_total");
    rejected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        rejected,
        vec![
            (labels(&[("tenant", "acme"), ("reason", "invalid_credentials")]), 1.0),
            (labels(&[("tenant", "unknown"), ("reason", "unknown_host")]), 1.0),
        ]
    );
    assert_eq!(value(&m, "deskgate_budget_remaining", &[("tenant", "acme"), ("policy", "account")]), Some(197.0));
    assert_eq!(value(&m, "deskgate_budget_remaining", &[("tenant", "acme"), ("policy", "ticket_list")]), Some(0.0));

    // Histograms: one observation per policed call, per endpoint.
    for name in ["deskgate_request_duration_seconds", "deskgate_request_overhead_seconds"] {
        assert_eq!(value(&m, &format!("{name}_count"), &[("endpoint", "ticket_list")]), Some(6.0));
        assert_eq!(value(&m, &format!("{name}_count"), &[("endpoint", "other")]), Some(1.0));
        let label_names: BTreeSet<String> =
            m.iter().filter(|s| s.name == format!("{name}_bucket")).flat_map(|s| s.labels.keys().cloned()).collect();
        assert_eq!(label_names, BTreeSet::from(["endpoint".to_owned(), "le".to_owned()]));
    }
    // Buckets fine enough to see sub-millisecond overhead.
    let sub_ms: BTreeSet<String> = m
        .iter()
        .filter(|s| s.name == "deskgate_request_overhead_seconds_bucket")
        .filter_map(|s| s.labels.get("le").cloned())
        .filter(|le| le.parse::<f64>().is_ok_and(|v| v < 0.001))
        .collect();
    assert!(sub_ms.len() >= 5, "sub-millisecond buckets: {sub_ms:?}");
    assert!(text.contains("# TYPE deskgate_request_duration_seconds histogram"));

    // 3 admitted API calls + 1 portal call went upstream; 5 calls asked the store.
    assert_eq!(value(&m, "deskgate_upstream_duration_seconds_count", &[]), Some(4.0));
    assert_eq!(value(&m, "deskgate_store_duration_seconds_count", &[]), Some(5.0));
    assert_eq!(value(&m, "deskgate_store_errors_total", &[]), Some(0.0));
    for kind in ["connect", "timeout", "body_too_large", "protocol"] {
        assert_eq!(value(&m, "deskgate_upstream_errors_total", &[("kind", kind)]), Some(0.0));
    }
    assert_eq!(value(&m, "deskgate_config_reloads_total", &[("result", "success")]), Some(0.0));
    assert_eq!(value(&m, "deskgate_config_reloads_total", &[("result", "failure")]), Some(0.0));
    assert_eq!(value(&m, "deskgate_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    gw.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_upstream_counts_one_connect_error() {
    // A port that was just free: nothing listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let dir = ConfigDir::new();
    let path = dir.write("deskgate.toml", &config_toml(&format!("http://{closed}"), "", "", ""));
    let gw = Gateway::start(Config::load(&path).expect("config")).await.expect("start");
    let reply = tickets(&gw, "acme.freshdesk.com", Some(&basic_auth())).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let m = parse_metrics(&admin_get(gw.admin_addr, "/metrics").await.text());
    assert_eq!(value(&m, "deskgate_upstream_errors_total", &[("kind", "connect")]), Some(1.0));
    assert_eq!(
        value(&m, "deskgate_requests_total", &[("tenant", "acme"), ("endpoint", "ticket_list"), ("status", "502")]),
        Some(1.0)
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn healthz_and_readyz_answer_on_the_admin_listener() {
    let dir = ConfigDir::new();
    let gw = gateway(&dir).await;
    let h = admin_get(gw.admin_addr, "/healthz").await;
    assert_eq!((h.status, h.text().as_str()), (StatusCode::OK, "ok\n"));
    let r = admin_get(gw.admin_addr, "/readyz").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ready\n"));
    let nf = admin_get(gw.admin_addr, "/nope").await;
    assert_eq!(nf.status, StatusCode::NOT_FOUND);
    gw.shutdown().await;
}

fn window<'a>(v: &'a serde_json::Value, policy: &str) -> &'a serde_json::Value {
    v["windows"]
        .as_array()
        .expect("windows")
        .iter()
        .find(|w| w["policy"] == policy)
        .unwrap_or_else(|| panic!("no {policy} window in {v}"))
}

async fn tenant_json(gw: &Gateway, name: &str) -> serde_json::Value {
    let r = admin_get(gw.admin_addr, &format!("/tenants/{name}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    serde_json::from_str(&r.text()).expect("JSON")
}

#[tokio::test]
async fn tenant_view_shows_plan_budgets_used_and_left_without_consuming() {
    let dir = ConfigDir::new();
    let gw = gateway(&dir).await;
    let auth = basic_auth();

    for _ in 0..2 {
        let v = tenant_json(&gw, "acme").await;
        assert_eq!(v["plan"], "growth");
        assert_eq!(v["domain"], "acme.freshdesk.com");
        let acc = window(&v, "account");
        assert_eq!(
            (acc["budget"].as_u64(), acc["used"].as_u64(), acc["left"].as_u64()),
            (Some(200), Some(0), Some(200))
        );
        assert_eq!(acc["window_seconds"], 60);
        let tl = window(&v, "ticket_list");
        assert_eq!((tl["budget"].as_u64(), tl["used"].as_u64(), tl["left"].as_u64()), (Some(3), Some(0), Some(3)));
        // growth's own endpoint budgets are listed too.
        assert_eq!(window(&v, "ticket_create")["budget"], 80);
    }
    for _ in 0..2 {
        assert_eq!(tickets(&gw, "acme.freshdesk.com", Some(&auth)).await.status, StatusCode::OK);
    }
    for _ in 0..2 {
        let v = tenant_json(&gw, "acme").await;
        assert_eq!(window(&v, "account")["used"], 2);
        assert_eq!(window(&v, "account")["left"], 198);
        assert_eq!(window(&v, "ticket_list")["left"], 1);
    }
    // Reading consumed nothing: the last ticket_list credit is still there.
    let third = tickets(&gw, "acme.freshdesk.com", Some(&auth)).await;
    assert_eq!(third.status, StatusCode::OK);
    assert_eq!(third.header("x-ratelimit-remaining"), "197");

    let missing = admin_get(gw.admin_addr, "/tenants/nobody").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.text().contains("nobody"));
    gw.shutdown().await;
}

#[tokio::test]
async fn config_view_is_the_config_in_force_with_secrets_redacted() {
    let upstream = start_upstream().await;
    let dir = ConfigDir::new();
    let path = dir.write(
        "deskgate.toml",
        &config_toml(&format!("http://{upstream}"), "", "", "").replace(
            "[admin]",
            "[limiter]\nstore = \"redis\"\nredis_url = \"redis://:hunter2-SECRET@127.0.0.1:6379/0\"\n\n[admin]",
        ),
    );
    let config = Config::load(&path).expect("config");
    // The store is not under test here: a memory limiter stands in for Redis.
    let limiter = Limiter::memory(&config.limiter);
    let gw = Gateway::start_with_limiter(config, limiter).await.expect("start");
    let r = admin_get(gw.admin_addr, "/config").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").starts_with("application/json"));
    assert!(!r.text().contains("hunter2-SECRET"), "{}", r.text());
    let v: serde_json::Value = serde_json::from_str(&r.text()).expect("JSON");
    let url = v["limiter"]["redis_url"].as_str().expect("redis_url");
    assert!(url.starts_with("redis://") && url.contains("127.0.0.1:6379"), "{url}");
    assert!(r.text().contains("acme.freshdesk.com"), "{}", r.text());
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_paths_are_never_served_on_the_api_listener() {
    let dir = ConfigDir::new();
    let gw = gateway(&dir).await;
    for path in ["/metrics", "/healthz", "/readyz", "/tenants/acme", "/config"] {
        let r = send(gw.api_addr, get("acme.freshdesk.com", path, None)).await;
        // Portal traffic: forwarded to the upstream untouched, answered by it.
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert!(r.text().contains(&format!(r#""path":"{path}""#)), "{path}: {}", r.text());
        assert!(!r.text().contains("deskgate_"), "{path}: {}", r.text());
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_refuses_methods_other_than_get() {
    let dir = ConfigDir::new();
    let gw = gateway(&dir).await;
    let req = http::Request::post("/metrics")
        .header("host", "admin")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    assert_eq!(send(gw.admin_addr, req).await.status, StatusCode::METHOD_NOT_ALLOWED);
    gw.shutdown().await;
}

#[tokio::test]
async fn readyz_turns_503_while_in_flight_calls_drain() {
    let dir = ConfigDir::new();
    let gw = gateway(&dir).await;
    let (api, admin) = (gw.api_addr, gw.admin_addr);
    let slow = tokio::spawn(async move {
        send(api, get("acme.freshdesk.com", "/api/v2/contacts?delay_ms=1500", Some(&basic_auth()))).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::spawn(gw.shutdown());
    assert!(
        eventually(Duration::from_secs(2), || async {
            let r = admin_get(admin, "/readyz").await;
            r.status == StatusCode::SERVICE_UNAVAILABLE && r.text() == "shutting down\n"
        })
        .await,
        "readyz never reported the drain"
    );
    let reply = slow.await.expect("slow call");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    tokio::time::timeout(Duration::from_secs(5), stopping).await.expect("shutdown in time").expect("shutdown");
}

#[tokio::test]
async fn metrics_pass_promtool_in_the_classic_format_and_openmetrics_is_served_when_asked_for_alone() {
    let dir = ConfigDir::new();
    let gw = gateway(&dir).await;
    let auth = basic_auth();
    // Traffic that fills every family with series: served, refused, unknown host.
    assert_eq!(tickets(&gw, "acme.freshdesk.com", Some(&auth)).await.status, StatusCode::OK);
    assert_eq!(tickets(&gw, "acme.freshdesk.com", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(tickets(&gw, "nobody.example", Some(&auth)).await.status, StatusCode::NOT_FOUND);

    let classic = admin_get(gw.admin_addr, "/metrics").await;
    assert_eq!(classic.header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    let text = classic.text();
    assert!(!text.contains("# EOF"), "{text}");
    // A counter's metadata carries its samples' name.
    assert!(text.contains("# TYPE deskgate_requests_total counter\n"), "{text}");
    assert!(text.contains("# HELP deskgate_requests_total "), "{text}");
    assert!(!text.contains("# TYPE deskgate_requests counter"), "{text}");
    // The process series and the reload gauge, true at scrape time.
    let m = parse_metrics(&text);
    for name in ["process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"] {
        assert!(value(&m, name, &[]).is_some_and(|v| v > 0.0), "{name}: {text}");
    }
    assert!(value(&m, "process_cpu_seconds_total", &[]).is_some_and(|v| v >= 0.0), "{text}");
    assert_eq!(value(&m, "deskgate_config_last_reload_successful", &[]), Some(1.0));
    if let Some((ok, said)) = promtool_check(&text) {
        assert!(ok, "promtool check metrics failed:\n{said}\n--- the exposition:\n{text}");
        assert!(said.trim().is_empty(), "promtool had remarks:\n{said}");
    }

    let scrape_as = |accept: &'static str| {
        http::Request::get("/metrics")
            .header("host", gw.admin_addr.to_string())
            .header("accept", accept)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request")
    };
    // Prometheus's own Accept takes the classic format too: it gets it, so
    // it files each counter's type and help under the name it is queried by.
    let prometheus = scrape_as("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1");
    let prometheus = send(gw.admin_addr, prometheus).await;
    assert_eq!(prometheus.header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    assert!(prometheus.text().contains("# TYPE deskgate_requests_total counter\n"));
    // A scraper that takes only OpenMetrics gets OpenMetrics.
    let open = send(gw.admin_addr, scrape_as("application/openmetrics-text;version=1.0.0")).await;
    assert_eq!(open.header("content-type"), "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let open = open.text();
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(open.contains("# TYPE deskgate_requests counter\n"), "{open}");
    // The same samples either way.
    let samples = |t: &str| -> BTreeSet<String> {
        // (Read at scrape time, so free to move between two scrapes.)
        let moving = |l: &str| l.starts_with("deskgate_runtime_alive_tasks") || l.starts_with("process_");
        t.lines().filter(|l| !l.starts_with('#') && !moving(l)).map(str::to_owned).collect()
    };
    assert_eq!(samples(&text), samples(&open));
    gw.shutdown().await;
}
