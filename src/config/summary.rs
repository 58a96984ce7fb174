//! Human and JSON views of the config in force: the summary printed by
//! `deskgate check` (docs/reference.md "Command line") and the redacted JSON served at `/config` (docs/reference.md "Operations").

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{Config, EndpointBudgets, LimiterConfig, OnStoreError, PasswordSource, Plan, StoreKind, Tenant};
use crate::endpoint::Endpoint;

/// Replaces the password of a URL's userinfo with `***`
/// (`redis://:secret@host` → `redis://:***@host`). Anything else is unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let auth_start = scheme_end + 3;
    let rest = &url[auth_start..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!("{}{}:***{}", &url[..auth_start], &userinfo[..colon], &url[auth_start + at..])
}

fn budgets_text(per_minute: u32, window: u32, endpoints: &EndpointBudgets) -> String {
    let mut s = format!("{per_minute}/{window}s");
    let eps: Vec<String> = Endpoint::ALL_CLASSIFIED
        .iter()
        .filter_map(|e| e.index().and_then(|i| endpoints[i]).map(|b| format!("{} {b}", e.as_str())))
        .collect();
    if !eps.is_empty() {
        let _ = write!(s, " ({})", eps.join(", "));
    }
    s
}

fn endpoints_json(endpoints: &EndpointBudgets) -> Value {
    let map: serde_json::Map<String, Value> = Endpoint::ALL_CLASSIFIED
        .iter()
        .filter_map(|e| e.index().and_then(|i| endpoints[i]).map(|b| (e.as_str().to_owned(), json!(b))))
        .collect();
    Value::Object(map)
}

fn store_text(store: &StoreKind, password: Option<&PasswordSource>) -> String {
    let mut s = match store {
        StoreKind::Memory => "memory (in-process: one replica only)".to_owned(),
        StoreKind::Redis { url } => format!("redis {}", redact_url(url)),
        StoreKind::RedisCluster { urls } => {
            let urls: Vec<String> = urls.iter().map(|u| redact_url(u)).collect();
            format!("redis cluster {}", urls.join(", "))
        }
        StoreKind::RedisSentinel { sentinels, master, username, password } => {
            let urls: Vec<String> = sentinels.iter().map(|u| redact_url(u)).collect();
            let auth = match (username, password) {
                (_, None) => "",
                (None, Some(_)) => ", primary password set",
                (Some(_), Some(_)) => ", primary username and password set",
            };
            format!("redis sentinel: primary \"{master}\" as named by {}{auth}", urls.join(", "))
        }
    };
    if let Some(from) = password {
        let _ = write!(s, " (password from {from})");
    }
    s
}

/// Who can reach a listener, so exposing one is never a surprise.
fn exposure(addr: std::net::SocketAddr) -> &'static str {
    let ip = addr.ip();
    if ip.is_unspecified() {
        "listening on all interfaces: reachable from other machines"
    } else if ip.is_loopback() {
        "loopback only: not reachable from other machines"
    } else {
        "one interface"
    }
}

/// `redis_batch` only acts on a standalone Redis; say so rather than show a
/// switch that does nothing.
fn batch_text(l: &LimiterConfig) -> String {
    match (&l.store, l.redis_batch) {
        (StoreKind::Redis { .. }, b) => format!("redis_batch {b}"),
        (StoreKind::RedisCluster { .. }, true) => {
            "redis_batch true (ignored: a cluster decides one call per EVALSHA)".to_owned()
        }
        (StoreKind::RedisCluster { .. }, false) => "redis_batch false".to_owned(),
        (StoreKind::Memory, b) => format!("redis_batch {b} (no Redis)"),
        (StoreKind::RedisSentinel { .. }, b) => format!("redis_batch {b}"),
    }
}

fn plan_json(p: &Plan) -> Value {
    json!({
        "api_access": p.api_access,
        "per_minute": p.per_minute,
        "window_seconds": p.window_seconds,
        "endpoints": endpoints_json(&p.endpoints),
        "max_wait_ms": p.max_wait.as_millis() as u64,
        "max_held_calls": p.max_held_calls,
    })
}

fn tenant_json(t: &Tenant) -> Value {
    json!({
        "name": &*t.name,
        "domain": t.domain,
        "vanity_hosts": t.vanity_hosts,
        "plan": t.plan,
        "api_access": t.api_access,
        "per_minute": t.per_minute,
        "window_seconds": t.window_seconds,
        "endpoints": endpoints_json(&t.endpoints),
        "shadow": t.shadow,
        "max_wait_ms": t.max_wait.as_millis() as u64,
        "max_held_calls": t.max_held_calls,
        "trust_upstream_limits": t.trust_upstream_limits,
    })
}

impl Config {
    /// What `deskgate check` prints: store, listeners, every tenant with its
    /// effective budgets, every plan.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ =
            writeln!(s, "config: {} ({} file(s) read, sha256 {})", self.path.display(), self.files.len(), self.digest);
        if let Some(dir) = &self.tenants_dir {
            let _ = writeln!(s, "tenants_dir: {}", dir.display());
        }
        let l = &self.limiter;
        let on_err = match l.on_store_error {
            OnStoreError::FailOpen => "fail_open",
            OnStoreError::FailClosed => "fail_closed",
        };
        let _ = writeln!(
            s,
            "store: {}; on_store_error {on_err}, store_timeout {}ms, key_prefix \"{}\", charge_invalid {}, refused_credential_ttl {}ms, {}",
            store_text(&l.store, self.redis_password_from.as_ref()),
            l.store_timeout.as_millis(),
            l.key_prefix,
            l.charge_invalid,
            l.refused_credential_ttl.as_millis(),
            batch_text(l)
        );
        let api_scheme = if self.server.tls.is_some() { "https" } else { "http" };
        let _ = writeln!(
            s,
            "api listener: {} ({api_scheme}, require_https {}, fast_path {}; {})",
            self.server.listen,
            self.server.require_https,
            self.server.fast_path,
            exposure(self.server.listen)
        );
        let _ = writeln!(s, "admin listener: {} ({})", self.admin.listen, exposure(self.admin.listen));
        match &self.webhooks {
            Some(w) => {
                let _ = writeln!(s, "webhooks listener: {}", w.listen);
            }
            None => {
                let _ = writeln!(s, "webhooks: off");
            }
        }
        let u = &self.upstream;
        let _ = writeln!(
            s,
            "upstream: {} (pool idle {}ms, max idle {})",
            redact_url(&u.url.to_string()),
            u.pool_idle_timeout.as_millis(),
            u.pool_max_idle
        );

        if self.tenants.is_empty() {
            let _ = writeln!(s, "tenants: none (every API call will be answered 404 unknown_host)");
        } else {
            let _ = writeln!(s, "tenants ({}):", self.tenants.len());
        }
        for t in &self.tenants {
            let budget = if t.api_access {
                budgets_text(t.per_minute, t.window_seconds, &t.endpoints)
            } else {
                "no API access".to_owned()
            };
            let _ = write!(s, "  {}: {} plan {}: {budget}", t.name, t.domain, t.plan);
            if !t.vanity_hosts.is_empty() {
                let _ = write!(s, " vanity [{}]", t.vanity_hosts.join(", "));
            }
            if t.shadow {
                let _ = write!(s, " shadow (never answers 429)");
            }
            if !t.max_wait.is_zero() {
                let _ = write!(s, " holds calls up to {} ms ({} at most)", t.max_wait.as_millis(), t.max_held_calls);
            }
            if !t.trust_upstream_limits {
                let _ = write!(s, " ignores the helpdesk's X-RateLimit-*");
            }
            s.push('\n');
        }
        let _ = writeln!(s, "plans ({}):", self.plans.len());
        for p in self.plans.values() {
            let budget = if p.api_access {
                budgets_text(p.per_minute, p.window_seconds, &p.endpoints)
            } else {
                "no API access".to_owned()
            };
            let _ = writeln!(s, "  {}: {budget}", p.name);
        }
        s
    }

    /// The config in force as JSON, for the admin `/config` endpoint:
    /// passwords in URLs are replaced by `***`.
    pub fn redacted_json(&self) -> Value {
        let store = match &self.limiter.store {
            StoreKind::Memory => json!({"store": "memory"}),
            StoreKind::Redis { url } => json!({"store": "redis", "redis_url": redact_url(url)}),
            StoreKind::RedisCluster { urls } => {
                let urls: Vec<String> = urls.iter().map(|u| redact_url(u)).collect();
                json!({"store": "redis", "redis_cluster": urls})
            }
            StoreKind::RedisSentinel { sentinels, master, username, password } => {
                let urls: Vec<String> = sentinels.iter().map(|u| redact_url(u)).collect();
                json!({"store": "redis", "redis_sentinel": urls, "redis_sentinel_master": master,
                    "redis_sentinel_master_username": username,
                    "redis_sentinel_master_password": password.as_ref().map(|_| "***")})
            }
        };
        let mut limiter = json!({
            "on_store_error": match self.limiter.on_store_error {
                OnStoreError::FailOpen => "fail_open",
                OnStoreError::FailClosed => "fail_closed",
            },
            "store_timeout_ms": self.limiter.store_timeout.as_millis() as u64,
            "key_prefix": self.limiter.key_prefix,
            "charge_invalid": self.limiter.charge_invalid,
            "redis_batch": self.limiter.redis_batch,
            "refused_credential_ttl_ms": self.limiter.refused_credential_ttl.as_millis() as u64,
            "redis_password_from": self.redis_password_from.as_ref().map(|f| f.to_string()),
        });
        if let (Some(l), Value::Object(st)) = (limiter.as_object_mut(), store) {
            l.extend(st);
        }
        let srv = &self.server;
        let webhooks = self.webhooks.as_ref().map(|w| {
            json!({
                "listen": w.listen.to_string(),
                "max_postpone_s": w.max_postpone.as_secs(),
                "retry_schedule_s": w.retry_schedule.iter().map(|d| d.as_secs()).collect::<Vec<_>>(),
                "delivery_timeout_ms": w.delivery_timeout.as_millis() as u64,
                "alert_url": w.alert_url.as_deref().map(redact_url),
                "lease_ms": w.lease.as_millis() as u64,
                "max_queued_per_tenant": w.max_queued_per_tenant,
            })
        });
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "sha256": self.digest,
            "loaded_at": humantime::format_rfc3339_seconds(self.loaded_at).to_string(),
            "files": self.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "path": self.path.display().to_string(),
            "tenants_dir": self.tenants_dir.as_ref().map(|d| d.display().to_string()),
            "server": {
                "listen": srv.listen.to_string(),
                "tls": srv.tls.as_ref().map(|t| json!({
                    "cert": t.cert.display().to_string(),
                    "key": t.key.display().to_string(),
                })),
                "require_https": srv.require_https,
                "trusted_proxies": srv.trusted_proxies.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "max_body_bytes": srv.max_body_bytes,
                "header_read_timeout_ms": srv.header_read_timeout.as_millis() as u64,
                "shutdown_grace_ms": srv.shutdown_grace.as_millis() as u64,
                "fast_path": srv.fast_path,
            },
            "admin": { "listen": self.admin.listen.to_string() },
            "upstream": {
                "url": redact_url(&self.upstream.url.to_string()),
                "ca_file": self.upstream.ca_file.as_ref().map(|p| p.display().to_string()),
                "connect_timeout_ms": self.upstream.connect_timeout.as_millis() as u64,
                "timeout_ms": self.upstream.timeout.as_millis() as u64,
                "pool_idle_timeout_ms": self.upstream.pool_idle_timeout.as_millis() as u64,
                "pool_max_idle": self.upstream.pool_max_idle,
            },
            "limiter": limiter,
            "plans": self.plans.iter().map(|(k, p)| (k.clone(), plan_json(p))).collect::<serde_json::Map<_, _>>(),
            "tenants": self.tenants.iter().map(|t| tenant_json(t)).collect::<Vec<_>>(),
            "webhooks": webhooks,
            "metrics": { "per_tenant": self.metrics.per_tenant.as_str() },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redis_password_is_redacted() {
        assert_eq!(redact_url("redis://:secret@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("rediss://user:pw@h/0"), "rediss://user:***@h/0");
    }

    #[test]
    fn urls_without_password_are_unchanged() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("redis://user@h"), "redis://user@h");
        assert_eq!(redact_url("http://h/path?a=b@c:d"), "http://h/path?a=b@c:d");
    }
}
