//! The files shipped under deploy/ speak of series the binary exports: every
//! metric the Grafana dashboard and the Prometheus alerting rules query is in
//! a live scrape of the real gateway. (`scripts/check-deploy` validates the
//! same files' syntax with promtool, the Kubernetes schemas and the compose
//! schema.)

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use support::metrics::metrics_text;
use support::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `deskgate_*` and `process_*` metric name in a PromQL text.
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = promql.as_bytes();
    for prefix in ["deskgate_", "process_"] {
        let mut from = 0;
        while let Some(at) = promql[from..].find(prefix).map(|i| i + from) {
            let starts_word = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
            let end =
                promql[at..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(promql.len(), |i| i + at);
            if starts_word {
                out.insert(promql[at..end].to_owned());
            }
            from = end;
        }
    }
    out
}

/// The sample names a scrape can hold: each family's name from its `# TYPE`
/// line (present even before a first sample), plus a histogram's series.
fn exported(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        out.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{name}{suffix}"));
            }
        }
    }
    out
}

/// The PromQL of every panel target, template variable and annotation.
fn dashboard_queries(dash: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut panels: Vec<&serde_json::Value> = dash["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = panels.pop() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap_or_else(|| panic!("a target without expr: {t}")).to_owned());
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["definition"].as_str() {
            out.push(q.to_owned());
        }
    }
    for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = a["expr"].as_str() {
            out.push(q.to_owned());
        }
    }
    out
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_query_only_series_the_gateway_exports() {
    let up = RecordingUpstream::start().await;
    let gw = gateway(up.addr, "", TENANTS).await;
    let c = client();
    // One served call and one refusal, so labelled families have samples too.
    let auth = [("authorization", "Basic Z29vZDpY")];
    let ok = call(&c, gw.addr, "GET", "acme.freshdesk.com", "/api/v2/tickets", &auth, b"").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let unknown = call(&c, gw.addr, "GET", "nobody.example.com", "/api/v2/tickets", &auth, b"").await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert_eq!(up.count(), 1, "only the served call reached the upstream");
    assert_eq!(up.last().uri, "/api/v2/tickets");
    assert_eq!(used(gw.admin, "acme").await, 1);
    let have = exported(&metrics_text(gw.admin).await);
    assert!(have.contains("deskgate_requests_total"), "{have:?}");

    let dash: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana/deskgate.json")).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "deskgate");
    let mut ids = BTreeSet::new();
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 10, "{queries:?}");
    for p in dash["panels"].as_array().expect("panels") {
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate panel id: {p}");
    }
    let alerts = repo_file("deploy/prometheus/alerts.yml");
    let alert_exprs: Vec<&str> = alerts.lines().filter_map(|l| l.trim().strip_prefix("expr:")).collect::<Vec<_>>();
    assert!(alert_exprs.len() >= 5, "{alert_exprs:?}");

    let mut missing = Vec::new();
    let mut queried = BTreeSet::new();
    for (from, text) in
        queries.iter().map(|q| ("dashboard", q.as_str())).chain(std::iter::once(("alerts.yml", alerts.as_str())))
    {
        for name in metric_names(text) {
            if !have.contains(&name) {
                missing.push(format!("{from}: {name}"));
            }
            queried.insert(name);
        }
    }
    assert!(missing.is_empty(), "queried but not exported: {missing:?}\nexported: {have:?}");
    // What the deploy files promise to cover.
    for name in [
        "deskgate_requests_total",
        "deskgate_rate_limited_total",
        "deskgate_budget_remaining",
        "deskgate_budget_limit",
        "deskgate_store_up",
        "deskgate_request_overhead_seconds_bucket",
        "deskgate_upstream_errors_total",
        "deskgate_store_errors_total",
        "deskgate_config_reloads_total",
        "deskgate_config_last_reload_successful",
    ] {
        assert!(queried.contains(name), "the deploy files do not query {name}");
    }
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = metric_names(
        r#"1 - min by (tenant) (deskgate_budget_remaining{policy="account"}) / rate(process_cpu_seconds_total[5m]) + my_deskgate_x"#,
    );
    let want: BTreeSet<String> =
        ["deskgate_budget_remaining", "process_cpu_seconds_total"].iter().map(|s| s.to_string()).collect();
    assert_eq!(names, want);
}
