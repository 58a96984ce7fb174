//! Serde mirror of the config file (docs/reference.md "Configuration", "Webhook egress" `[webhooks]`): what the TOML
//! says, before any rule is checked.
//!
//! Every table denies unknown keys, so a typo is an error rather than a
//! silently ignored setting. Values that validation may refuse are
//! `Spanned`, so the error can point at them. Numbers are read as `i64`
//! so that a negative budget or duration gets our own message (naming the
//! key) instead of serde's "invalid value".

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The main config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub tenants_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub limiter: RawLimiter,
    #[serde(default)]
    pub plans: BTreeMap<Spanned<String>, RawPlan>,
    #[serde(default)]
    pub tenant: Vec<RawTenant>,
    pub webhooks: Option<RawWebhooks>,
    #[serde(default)]
    pub access_log: RawAccessLog,
    #[serde(default)]
    pub metrics: RawMetrics,
}

/// One file of `tenants_dir`: exactly one `[tenant]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenantFile {
    pub tenant: RawTenant,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub tls: Option<RawTls>,
    pub require_https: Option<bool>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub header_read_timeout_ms: Option<Spanned<i64>>,
    pub shutdown_grace_ms: Option<Spanned<i64>>,
    pub fast_path: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccessLog {
    pub sample_served: Option<Spanned<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub url: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub connect_timeout_ms: Option<Spanned<i64>>,
    pub timeout_ms: Option<Spanned<i64>>,
    pub pool_idle_timeout_ms: Option<Spanned<i64>>,
    pub pool_max_idle: Option<Spanned<i64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawStore {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawOnStoreError {
    FailOpen,
    FailClosed,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimiter {
    pub store: Option<Spanned<RawStore>>,
    pub redis_url: Option<Spanned<String>>,
    pub redis_cluster: Option<Spanned<Vec<Spanned<String>>>>,
    pub on_store_error: Option<RawOnStoreError>,
    pub store_timeout_ms: Option<Spanned<i64>>,
    pub key_prefix: Option<Spanned<String>>,
    pub charge_invalid: Option<bool>,
    pub redis_batch: Option<bool>,
    pub refused_credential_ttl_ms: Option<Spanned<i64>>,
    /// The Redis password read from this file (a mounted secret), so the
    /// TOML itself holds no secret.
    pub redis_password_file: Option<Spanned<String>>,
    /// The Redis password read from this environment variable.
    pub redis_password_env: Option<Spanned<String>>,
    pub redis_sentinel: Option<Spanned<Vec<Spanned<String>>>>,
    pub redis_sentinel_master: Option<Spanned<String>>,
    pub redis_sentinel_master_username: Option<Spanned<String>>,
    pub redis_sentinel_master_password: Option<Spanned<String>>,
}

/// `[plans.NAME]`; the name is the map key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlan {
    pub api_access: Option<bool>,
    pub per_minute: Option<Spanned<i64>>,
    pub endpoints: Option<BTreeMap<Spanned<String>, Spanned<i64>>>,
    pub window_seconds: Option<Spanned<i64>>,
    pub max_wait_ms: Option<Spanned<i64>>,
    pub max_held_calls: Option<Spanned<i64>>,
    pub trust_upstream_limits: Option<bool>,
}

/// A `[[tenant]]` entry, or the `[tenant]` table of a tenant file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    pub name: Spanned<String>,
    pub domain: Spanned<String>,
    pub plan: Spanned<String>,
    #[serde(default)]
    pub vanity_hosts: Vec<Spanned<String>>,
    pub per_minute: Option<Spanned<i64>>,
    pub endpoints: Option<BTreeMap<Spanned<String>, Spanned<i64>>>,
    pub window_seconds: Option<Spanned<i64>>,
    pub shadow: Option<bool>,
    pub max_wait_ms: Option<Spanned<i64>>,
    pub max_held_calls: Option<Spanned<i64>>,
    pub trust_upstream_limits: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub per_tenant: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhooks {
    pub listen: Option<Spanned<String>>,
    pub max_postpone_s: Option<Spanned<i64>>,
    pub retry_schedule_s: Option<Vec<Spanned<i64>>>,
    pub delivery_timeout_ms: Option<Spanned<i64>>,
    pub alert_url: Option<Spanned<String>>,
    pub lease_ms: Option<Spanned<i64>>,
    pub max_queued_per_tenant: Option<Spanned<i64>>,
}
