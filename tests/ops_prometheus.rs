//! A real Prometheus server (Debian's `prometheus`, the package that ships
//! `promtool`) scraping the real gateway: it negotiates its own format
//! (OpenMetrics first), and what it files is what an operator's Grafana
//! reads — each series' type and help under the name queried
//! (`/api/v1/metadata`), and the samples the calls produced (`/api/v1/query`).
//! Skipped when `prometheus` is not installed, unless
//! `DESKGATE_REQUIRE_REDIS=1` (CI), which requires every real part.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

const TENANTS: &str = r#"
[[tenant]]
name = "scraped"
domain = "scraped.freshdesk.com"
plan = "trial"
per_minute = 3
"#;

/// A Prometheus server on a free loopback port, scraping `target` every
/// second; killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Option<Prometheus> {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: deskgate\n    static_configs: [{{targets: [\"{target}\"]}}]\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", ops::free_port()).parse().expect("addr");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(child) => Some(Prometheus { child, addr, _dir: dir }),
            Err(_) if std::env::var("DESKGATE_REQUIRE_REDIS").is_ok_and(|v| v == "1") => {
                panic!("prometheus is not on PATH (Debian package `prometheus`) and DESKGATE_REQUIRE_REDIS=1")
            }
            Err(_) => None,
        }
    }

    /// `GET /api/v1/...` as JSON; `None` until the server answers.
    async fn api(&self, path_and_query: &str) -> Option<Value> {
        let req = ops::get("127.0.0.1", &format!("/api/v1/{path_and_query}"), None);
        let reply = tokio::time::timeout(Duration::from_secs(2), send_quiet(self.addr, req)).await.ok()??;
        serde_json::from_slice(&reply.body).ok()
    }

    /// Polls `f` on the API for up to 30 s (the server starts, then scrapes
    /// every second).
    async fn until<T>(&self, path_and_query: &str, f: impl Fn(&Value) -> Option<T>) -> Option<T> {
        for _ in 0..120 {
            if let Some(v) = self.api(path_and_query).await.as_ref().and_then(&f) {
                return Some(v);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        None
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `send`, but `None` when nothing listens yet (the server is starting).
async fn send_quiet(addr: SocketAddr, req: http::Request<http_body_util::Full<bytes::Bytes>>) -> Option<Reply> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(send(addr, req).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_files_each_series_type_and_help_and_the_calls_counted() {
    let up = RecordingUpstream::start().await;
    let gw = gateway(up.addr, "", TENANTS).await;
    let c = client();
    // 3 admitted, the 4th refused 429: both reach the metrics.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&c, gw.addr, "scraped.freshdesk.com", "/api/v2/contacts").await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(up.count(), 3, "the refused call never reached the upstream");
    assert_eq!(used(gw.admin, "scraped").await, 3);

    let Some(prom) = Prometheus::start(gw.admin) else { return };
    // The target is up: Prometheus parsed the exposition it negotiated.
    let health = prom
        .until("targets", |v| {
            let t = &v["data"]["activeTargets"][0];
            (t["health"] == "up").then(|| t["lastError"].as_str().unwrap_or_default().to_owned())
        })
        .await;
    assert_eq!(health.as_deref(), Some(""), "the scrape target never came up");

    // Each series' type and help, filed under the name a query uses.
    for (name, kind) in [
        ("deskgate_requests_total", "counter"),
        ("deskgate_rate_limited_total", "counter"),
        ("deskgate_budget_remaining", "gauge"),
        ("deskgate_budget_limit", "gauge"),
        ("deskgate_request_duration_seconds", "histogram"),
        ("deskgate_config_last_reload_successful", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
    ] {
        let meta = prom
            .until(&format!("metadata?metric={name}"), |v| v["data"][name].get(0).cloned())
            .await
            .unwrap_or_else(|| panic!("{name}: Prometheus filed no metadata under this name"));
        assert_eq!(meta["type"], kind, "{name}: {meta}");
        assert!(meta["help"].as_str().is_some_and(|h| !h.is_empty()), "{name}: no help: {meta}");
    }

    // The samples are the calls made: 3 answered 200, 1 answered 429.
    let count = |status: &'static str| {
        move |v: &Value| {
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|_| v["data"]["result"][0]["metric"]["status"] == status)
        }
    };
    let q = |status: &str| {
        format!("query?query=sum%20by%20(status)%20(deskgate_requests_total%7Btenant%3D%22scraped%22%2Cstatus%3D%22{status}%22%7D)")
    };
    assert_eq!(prom.until(&q("200"), count("200")).await, Some(3.0));
    assert_eq!(prom.until(&q("429"), count("429")).await, Some(1.0));
    let limit = prom
        .until("query?query=deskgate_budget_limit%7Btenant%3D%22scraped%22%2Cpolicy%3D%22account%22%7D", |v| {
            v["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse::<f64>().ok())
        })
        .await;
    assert_eq!(limit, Some(3.0), "the account budget's size, beside its remaining");
}
