//! The one test kit, shared by every file in `tests/` with `mod support;`.
//!
//! - here: a gateway started in-process from TOML on `127.0.0.1:0`, on the
//!   path a test chooses ([`Path`], [`gateway_on`], [`on_both_paths!`]), the
//!   standard tenants, one [`eventually`], what a tenant was charged;
//! - [`client`]: one client and one [`Reply`];
//! - [`raw`]: one raw HTTP/1 exchange ([`RawReply`]);
//! - [`upstream`]: the in-process upstreams, on one accept loop;
//! - [`metrics`]: one reader of the Prometheus exposition;
//! - [`logs`]: the gateway's log lines captured in-process;
//! - [`redis`]: real `redis-server` processes (one, or a cluster);
//! - [`faults`]: a store proxy that delays or blackholes, resource probes;
//! - [`ops`]: the built binary as a child, config dirs, test PKI;
//! - [`webhooks`]: a receiving server and the webhook listener's JSON.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod client;
pub mod faults;
pub mod logs;
pub mod metrics;
pub mod ops;
pub mod raw;
pub mod redis;
pub mod upstream;
pub mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use deskgate::app::Gateway;
use deskgate::config::Config;

pub use client::*;
pub use logs::Logs;
pub use raw::*;
pub use upstream::*;

/// Which path a gateway under test serves plain-TCP HTTP/1.1 calls on:
/// the hand-written fast path or hyper (`[server] fast_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Fast,
    Hyper,
}

impl Path {
    /// The `[server]` line that selects this path.
    pub fn toml(self) -> &'static str {
        match self {
            Path::Fast => "fast_path = true",
            Path::Hyper => "fast_path = false",
        }
    }
}

/// Runs every test inside on both paths: the items are written twice, into
/// `mod fast` and `mod hyper`, each with `const PATH: Path` set, so a failure
/// reads `fast::NAME` or `hyper::NAME`. Helpers stay outside (reached with
/// `use super::*`) and take the path as a parameter. Inside, `mod hyper`
/// hides the crate of that name: write `::hyper::` for it.
macro_rules! on_both_paths {
    ($($item:item)*) => {
        mod fast {
            #[allow(unused_imports)]
            use super::*;
            const PATH: $crate::support::Path = $crate::support::Path::Fast;
            $($item)*
        }
        mod hyper {
            #[allow(unused_imports)]
            use super::*;
            const PATH: $crate::support::Path = $crate::support::Path::Hyper;
            $($item)*
        }
    };
}
pub(crate) use on_both_paths;

/// Polls `f` every 50 ms until it returns true or `limit` passes; true if it did.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Credits `tenant` has used in its account window (admin `/tenants/NAME`).
pub async fn used(admin: SocketAddr, tenant: &str) -> u64 {
    let got = admin_get(admin, &format!("/tenants/{tenant}")).await;
    let v = got.json();
    v["windows"][0]["used"].as_u64().unwrap_or_else(|| panic!("no account window: {v}"))
}

/// A gateway under test with its config directory.
pub struct TestGateway {
    pub gw: Gateway,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// The standard test tenants: `acme` (pro, vanity host), `tiny` (budget 5,
/// ticket_list 3), `seedling` (sprout: no API access).
pub const TENANTS: &str = r#"
[[tenant]]
name = "acme"
domain = "acme.freshdesk.com"
plan = "pro"
vanity_hosts = ["support.acme.com"]

[[tenant]]
name = "tiny"
domain = "tiny.freshdesk.com"
plan = "growth"
per_minute = 5
endpoints = { ticket_list = 3, ticket_create = 5, ticket_update = 5, contact_list = 5 }

[[tenant]]
name = "seedling"
domain = "seedling.freshdesk.com"
plan = "sprout"
"#;

/// Starts a gateway on `path` in front of `upstream`: `server_extra` is
/// TOML for `[server]`, `rest` more tables (`[limiter]`, tenants…).
pub async fn gateway_on(path: Path, upstream: SocketAddr, server_extra: &str, rest: &str) -> TestGateway {
    gateway(upstream, &format!("{}\n{server_extra}", path.toml()), rest).await
}

/// Starts a gateway in front of `upstream` with `extra` TOML appended to the
/// top-level sections (`[server]`… keys go in `server_extra`); the path is
/// the config's default (the fast path) unless `server_extra` sets `fast_path`.
pub async fn gateway(upstream: SocketAddr, server_extra: &str, rest: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deskgate.toml");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\nurl = \"http://{upstream}\"\ntimeout_ms = 1000\nconnect_timeout_ms = 500\n{rest}\n"
    );
    std::fs::write(&path, toml).unwrap();
    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start(cfg).await.unwrap();
    TestGateway { addr: gw.api_addr, admin: gw.admin_addr, gw, dir }
}

/// Asserts what one refused API call leaves behind on `gw`: its answer
/// counted for the tenant (`deskgate_requests_total{tenant,endpoint,status}`),
/// the refusal counted (`deskgate_rate_limited_total{tenant,endpoint}` for a
/// 429, `deskgate_rejected_total{tenant,reason}` otherwise), each exactly
/// `times`, and (when `logs` captured the gateway) one `refused` line with
/// tenant, reason, status and request id.
pub async fn assert_refusal_counted(
    gw: &TestGateway,
    logs: Option<&Logs>,
    tenant: &str,
    endpoint: &str,
    status: u16,
    reason: &str,
    times: u32,
) {
    let samples = metrics::scrape(gw.admin).await;
    let status_s = status.to_string();
    let answered = metrics::value(
        &samples,
        "deskgate_requests_total",
        &[("tenant", tenant), ("endpoint", endpoint), ("status", &status_s)],
    );
    assert_eq!(answered, Some(f64::from(times)), "deskgate_requests_total{{{tenant},{endpoint},{status}}}");
    let refused = if status == 429 {
        metrics::value(&samples, "deskgate_rate_limited_total", &[("tenant", tenant), ("endpoint", endpoint)])
    } else {
        metrics::value(&samples, "deskgate_rejected_total", &[("tenant", tenant), ("reason", reason)])
    };
    assert_eq!(refused, Some(f64::from(times)), "the refusal counter of {tenant}/{reason}");
    if let Some(logs) = logs {
        logs.assert_refused(tenant, reason, status, times as usize);
    }
}
