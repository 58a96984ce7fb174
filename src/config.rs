//! The validated configuration (docs/reference.md "Configuration"): what every other module reads.
//!
//! Loading goes raw TOML (`config/raw.rs`, serde mirror with
//! `deny_unknown_fields` and spans) → validation (`config/validate.rs`) →
//! these types, whose invariants the rest of the gateway relies on: every
//! tenant names a known plan, hosts are unique and lower-case, budgets of
//! plans with API access are non-zero and endpoint budgets fit the total.
//! Errors carry `PATH:LINE:COL`.

mod diagnose;
mod plans;
mod raw;
mod secret;
mod summary;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::endpoint::Endpoint;

pub use plans::{builtin_plans, DEFAULT_TRUST_UPSTREAM_LIMITS};
pub use secret::PasswordSource;
pub use summary::redact_url;

/// A config that could not be loaded, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file at fault.
    pub path: PathBuf,
    /// 1-based line (0 when the error has no position, e.g. an unreadable file).
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong, naming the offending key or name.
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No position (an unreadable file): a made-up `:1:1` would send the
        // reader looking inside a file that may not exist.
        if self.line == 0 {
            return write!(f, "{}: {}", self.path.display(), self.msg);
        }
        write!(f, "{}:{}:{}: {}", self.path.display(), self.line, self.col.max(1), self.msg)
    }
}

impl ConfigError {
    /// Several independent errors as one: the first is the error's own
    /// position, the others follow on their own `PATH:LINE:COL: message`
    /// lines, so every one is reported in one run of `deskgate check`.
    pub fn many(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        if errors.is_empty() {
            return None;
        }
        let mut first = errors.remove(0);
        for e in errors {
            first.msg.push('\n');
            first.msg.push_str(&e.to_string());
        }
        Some(first)
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The main config file this was loaded from.
    pub path: PathBuf,
    /// Every file read (main file + tenant files), for the reload watcher.
    pub files: Vec<PathBuf>,
    /// `tenants_dir`, resolved relative to the main file's directory.
    pub tenants_dir: Option<PathBuf>,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub limiter: LimiterConfig,
    /// Effective plans: built-ins, replaced or extended by the config.
    pub plans: BTreeMap<String, Arc<Plan>>,
    /// Tenants in file order (main file first, then `tenants_dir` sorted by file name).
    pub tenants: Vec<Arc<Tenant>>,
    pub webhooks: Option<WebhooksConfig>,
    pub access_log: AccessLogConfig,
    /// Where the Redis password came from, when not from the URL itself.
    pub redis_password_from: Option<PasswordSource>,
    /// SHA-256 (hex) over the files read, in order: replicas that took the
    /// same files show the same digest. Secret files are not part of it.
    pub digest: String,
    /// When these files were read.
    pub loaded_at: std::time::SystemTime,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub require_https: bool,
    pub trusted_proxies: Vec<IpNet>,
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Whether plain-TCP HTTP/1.1 connections start on the hand-written fast
    /// path (`src/fast.rs`); `false` sends every call through hyper, which
    /// answers the same way (the A/B switch of the load bench and the tests).
    pub fast_path: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

/// `[access_log]`: which calls get an access-log line (`access_log`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccessLogConfig {
    /// The share of served calls logged, 0.0 to 1.0. Refusals and upstream
    /// errors are always logged.
    pub sample_served: f64,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `http://` or `https://` with an authority; path is ignored except `/`.
    pub url: http::Uri,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// How long an idle upstream connection is kept for reuse: below the
    /// common upstream keep-alive timeouts (nginx closes after 75 s), so the
    /// gateway drops a socket before the upstream can close it under a request.
    pub pool_idle_timeout: Duration,
    /// How many idle upstream connections are kept for reuse.
    pub pool_max_idle: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis {
        url: String,
    },
    RedisCluster {
        urls: Vec<String>,
    },
    /// A primary with replicas under Redis Sentinel: the sentinels' URLs,
    /// the name they know the primary by, and the primary's own
    /// credentials (`requirepass`/ACL), which may differ from the
    /// sentinels'. `rediss://` sentinels mean TLS to the primary too.
    RedisSentinel {
        sentinels: Vec<String>,
        master: String,
        username: Option<String>,
        password: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    FailOpen,
    FailClosed,
}

#[derive(Debug, Clone)]
pub struct LimiterConfig {
    pub store: StoreKind,
    pub on_store_error: OnStoreError,
    pub store_timeout: Duration,
    pub key_prefix: String,
    pub charge_invalid: bool,
    /// Whether calls decided in the same turn of the event loop share one
    /// `EVALSHA` (standalone Redis only: a cluster spreads tenants over slots).
    pub redis_batch: bool,
    /// How long a credential the helpdesk answered 401 is answered 401 by
    /// the gateway itself (zero: never).
    pub refused_credential_ttl: Duration,
}

/// `[metrics]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    pub per_tenant: PerTenant,
}

/// `[metrics] per_tenant`: which series carry a `tenant` label per tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PerTenant {
    /// Every series with a `tenant` label has one per tenant.
    #[default]
    All,
    /// Only the budget, rate-limited, shadow and near-limit series do;
    /// requests, rejections and refunds are summed under `tenant="*"`.
    LimitsOnly,
}

impl PerTenant {
    pub fn as_str(self) -> &'static str {
        match self {
            PerTenant::All => "all",
            PerTenant::LimitsOnly => "limits_only",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhooksConfig {
    pub listen: SocketAddr,
    pub max_postpone: Duration,
    pub retry_schedule: Vec<Duration>,
    pub delivery_timeout: Duration,
    pub alert_url: Option<String>,
    /// How long a claim holds a webhook without renewal; the holder renews
    /// it every third of this while an attempt runs.
    pub lease: Duration,
    /// Webhooks one tenant may have waiting or in flight; the ingest beyond
    /// is refused with `webhook_queue_full`.
    pub max_queued_per_tenant: u64,
}

/// The `tenant` label metrics give API calls to a host no tenant has:
/// refused as a tenant name, so that bucket never merges with a tenant.
pub const UNKNOWN_TENANT: &str = "unknown";

/// Per-endpoint budgets, indexed by [`Endpoint::index`] (`None`: no endpoint budget).
pub type EndpointBudgets = [Option<u32>; Endpoint::CLASSIFIED];

/// A plan: the helpdesk's published limits, or the config's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub api_access: bool,
    /// Account budget per window (0 only when `api_access` is false).
    pub per_minute: u32,
    pub endpoints: EndpointBudgets,
    pub window_seconds: u32,
    /// How long a call that does not fit may wait for room (zero: never held).
    pub max_wait: Duration,
    /// Calls of one tenant held at once in one replica.
    pub max_held_calls: u32,
    /// Learn from the helpdesk's own `X-RateLimit-*` and 429 answers
    /// (`reconcile`). Default [`plans::DEFAULT_TRUST_UPSTREAM_LIMITS`].
    pub trust_upstream_limits: bool,
}

/// A tenant with its effective budget (plan merged with the tenant's overrides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: Arc<str>,
    /// Canonical host, lower-case, no port, no trailing dot.
    pub domain: String,
    pub vanity_hosts: Vec<String>,
    pub plan: String,
    pub api_access: bool,
    /// Effective account budget per window.
    pub per_minute: u32,
    /// Effective endpoint budgets.
    pub endpoints: EndpointBudgets,
    pub window_seconds: u32,
    pub shadow: bool,
    /// How long a call that does not fit may wait for room (zero: answered
    /// 429 at once). See `hold`.
    pub max_wait: Duration,
    /// Calls of this tenant held at once in one replica; beyond, 429 at once.
    pub max_held_calls: u32,
    /// The plan's `trust_upstream_limits`, or the tenant's own.
    pub trust_upstream_limits: bool,
}

impl Config {
    /// Loads and validates the config at `path` (and its `tenants_dir`).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        validate::load(path)
    }

    /// A tenant by name.
    pub fn tenant(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.tenants.iter().find(|t| &*t.name == name)
    }
}
