//! Raw TOML → validated [`Config`] (docs/reference.md "Configuration" rules, "Webhook egress" `[webhooks]`): defaults,
//! plan merging, tenant overrides, and every refusal located as
//! `PATH:LINE:COL` in the file that holds the offending value.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::diagnose::{self, FileKind};
use super::plans::{DEFAULT_MAX_HELD_CALLS, DEFAULT_WINDOW_SECONDS};
use super::raw::RawAccessLog;
use super::raw::RawMetrics;
use super::raw::{
    RawConfig, RawLimiter, RawOnStoreError, RawPlan, RawServer, RawStore, RawTenant, RawTenantFile, RawUpstream,
    RawWebhooks,
};
use super::secret::{self, PasswordSource};
use super::summary::redact_url;
use super::AccessLogConfig;
use super::{
    builtin_plans, AdminConfig, Config, ConfigError, EndpointBudgets, LimiterConfig, OnStoreError, Plan, ServerConfig,
    StoreKind, Tenant, TlsFiles, UpstreamConfig, WebhooksConfig,
};
use super::{MetricsConfig, PerTenant};
use crate::endpoint::Endpoint;
use crate::host::{normalize_host, HostError};

/// Loopback unless the config says otherwise: exposing the API to other
/// machines is a deliberate `listen = "0.0.0.0:8080"`.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const DEFAULT_WEBHOOKS_LISTEN: &str = "127.0.0.1:8082";
const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:8081";
const DEFAULT_TRUSTED_PROXY: &str = "127.0.0.1/32";
const DEFAULT_MAX_BODY_BYTES: u64 = 20_971_520;
const DEFAULT_KEY_PREFIX: &str = "deskgate";
/// Below the common upstream keep-alive timeouts (nginx's is 75 s): the
/// gateway closes an idle socket before the upstream can close it under a request.
const DEFAULT_POOL_IDLE_TIMEOUT_MS: u64 = 50_000;
const DEFAULT_POOL_MAX_IDLE: u64 = 1024;

/// One file's text, so that byte spans become `PATH:LINE:COL`.
struct Source {
    path: PathBuf,
    text: String,
    /// Byte offsets where lines start, computed on first use.
    line_starts: std::cell::OnceCell<Vec<usize>>,
}

impl Source {
    fn read(path: &Path) -> Result<Source, ConfigError> {
        match fs::read_to_string(path) {
            Ok(text) => Ok(Source { path: path.to_path_buf(), text, line_starts: std::cell::OnceCell::new() }),
            Err(e) => Err(ConfigError {
                path: path.to_path_buf(),
                line: 0,
                col: 0,
                msg: format!("cannot read config file: {e}"),
            }),
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, kind: FileKind) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            // The schema refused the file: say every mistake, in words.
            let found = diagnose::problems::<T>(&self.text, kind);
            if let Some(all) = ConfigError::many(found.into_iter().map(|p| self.err(p.span, p.msg)).collect()) {
                return all;
            }
            let msg = e.message().trim_end();
            if msg.contains("duplicate key `tenant`") && kind == FileKind::Main {
                // `[tenant]` written after `[[tenant]]` entries (or twice).
                return self.err(
                    e.span(),
                    format!(
                        "{}; every tenant of the main file is its own [[tenant]] (double brackets)",
                        msg.replace('\n', "; ")
                    ),
                );
            }
            if !msg.is_empty() {
                return self.err(e.span(), msg);
            }
            // Some syntax errors (a control character in a comment) come
            // without a message; `PATH:LINE:COL:` alone would tell nothing.
            let at = e.span().and_then(|r| self.text.get(r.start..)).and_then(|t| t.chars().next());
            let msg = match at {
                Some(c) if c.is_control() => {
                    format!("invalid TOML: control character U+{:04X} is not allowed here", u32::from(c))
                }
                _ => "invalid TOML syntax here".to_owned(),
            };
            self.err(e.span(), msg)
        })
    }

    fn err(&self, span: Option<Range<usize>>, msg: impl Into<String>) -> ConfigError {
        let (line, col) = match span {
            Some(span) => self.line_col(span.start),
            None => (0, 0),
        };
        ConfigError { path: self.path.clone(), line, col, msg: msg.into() }
    }

    /// Line and column of a byte offset. Every tenant's position is recorded
    /// (for "first claimed at" messages), so this must not rescan the text:
    /// 10,000 tenants would make loading quadratic.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let starts = self
            .line_starts
            .get_or_init(|| std::iter::once(0).chain(self.text.match_indices('\n').map(|(i, _)| i + 1)).collect());
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = starts.partition_point(|&s| s <= offset);
        let start = starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }

    fn at<T>(&self, value: &Spanned<T>, msg: impl Into<String>) -> ConfigError {
        self.err(Some(value.span()), msg)
    }

    /// `PATH:LINE:COL` of a value, for messages that point at a second place.
    fn location<T>(&self, value: &Spanned<T>) -> String {
        let (line, col) = self.line_col(value.span().start);
        format!("{}:{line}:{col}", self.path.display())
    }
}

/// SHA-256 over the files of a config, each as its file name and text: the
/// same files in another directory give the same digest.
struct Digest(ring::digest::Context);

impl Digest {
    fn new() -> Digest {
        Digest(ring::digest::Context::new(&ring::digest::SHA256))
    }

    fn add(&mut self, src: &Source) {
        let name = src.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Lengths first, so no two different file sets hash the same bytes.
        for part in [name.as_bytes(), src.text.as_bytes()] {
            self.0.update(&(part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
    }

    fn finish(self) -> String {
        self.0.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// 1-based line and column (in characters) of a byte offset (the reference
/// `Source::line_col` is tested against).
#[cfg(test)]
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

pub(super) fn load(path: &Path) -> Result<Config, ConfigError> {
    let main = Source::read(path)?;
    let mut digest = Digest::new();
    digest.add(&main);
    let raw: RawConfig = main.parse(FileKind::Main)?;
    let base_dir = path.parent().unwrap_or_else(|| Path::new(""));
    // The sections do not depend on each other: each one's errors are
    // collected, so one run of `check` reports all of them.
    let mut errors = Vec::new();

    let server = keep(&mut errors, server(&main, raw.server, base_dir));
    let admin_listen =
        keep(&mut errors, listen(&main, raw.admin.listen.as_ref(), "admin.listen", DEFAULT_ADMIN_LISTEN));
    let upstream = keep(&mut errors, upstream(&main, raw.upstream, base_dir));
    let redis_password = keep(&mut errors, redis_password(&main, &raw.limiter, base_dir));
    let sentinel_span = raw.limiter.redis_sentinel.as_ref().map(Spanned::span);
    let limiter = keep(&mut errors, limiter(&main, raw.limiter)).and_then(|mut limiter| {
        if let Some(Some((password, _, span))) = &redis_password {
            limiter.store = keep(&mut errors, store_with_password(&main, &limiter.store, password, span))?;
        }
        Some(limiter)
    });
    let webhooks = match &raw.webhooks {
        Some(w) => keep(&mut errors, webhooks(&main, w)).map(Some),
        None => Some(None),
    };
    // The webhook queue lives in the store, and not (yet) behind Sentinel:
    // `check` says so here rather than `run` refusing to start.
    if let (Some(Some(_)), Some(span)) = (&webhooks, &sentinel_span) {
        errors.push(main.err(
            Some(span.clone()),
            "limiter.redis_sentinel: the webhook queue ([webhooks]) cannot run on Redis Sentinel yet: use redis_url \
             or redis_cluster, or remove [webhooks]",
        ));
    }
    let access_log = keep(&mut errors, access_log(&main, &raw.access_log));
    let metrics = keep(&mut errors, metrics(&main, &raw.metrics));
    if let (Some((server, server_listen_span)), Some(admin_listen), Some(webhooks)) = (&server, admin_listen, &webhooks)
    {
        let mut listeners = vec![
            ("server.listen", server.listen, server_listen_span.clone()),
            ("admin.listen", admin_listen, raw.admin.listen.as_ref().map(Spanned::span)),
        ];
        if let (Some(w), Some(raw_w)) = (webhooks, &raw.webhooks) {
            listeners.push(("webhooks.listen", w.listen, raw_w.listen.as_ref().map(Spanned::span)));
        }
        keep(&mut errors, check_listeners_distinct(&main, &listeners));
    }

    // Tenants are checked against the plans: with a broken plan table they
    // are checked against the built-in plans, which still finds their own mistakes.
    let plans = keep(&mut errors, plans(&main, raw.plans));
    let plans_ok = plans.is_some();
    let plans = plans.unwrap_or_else(builtin_plans);
    let mut tenants = TenantSet::new(&plans);
    for t in raw.tenant {
        keep(&mut errors, tenants.add(&main, t));
    }

    let mut files = vec![path.to_path_buf()];
    let tenants_dir = match raw.tenants_dir {
        None => None,
        Some(dir) => {
            let resolved = resolve(base_dir, dir.get_ref());
            for file in keep(&mut errors, tenant_files(&main, &dir, &resolved)).unwrap_or_default() {
                let Some(src) = keep(&mut errors, Source::read(&file)) else { continue };
                digest.add(&src);
                if let Some(t) = keep(&mut errors, parse_tenant_file(&src)) {
                    keep(&mut errors, tenants.add(&src, t));
                }
                files.push(file);
            }
            Some(resolved)
        }
    };

    // In file order: the main file first, each file top to bottom.
    errors.sort_by(|a, b| (a.path != path, &a.path, a.line, a.col).cmp(&(b.path != path, &b.path, b.line, b.col)));
    // (Each missing value below left its error in `errors`.)
    let (
        Some((server, _)),
        Some(admin_listen),
        Some(upstream),
        Some(limiter),
        Some(webhooks),
        Some(redis_password),
        Some(access_log),
        Some(metrics),
        true,
    ) = (server, admin_listen, upstream, limiter, webhooks, redis_password, access_log, metrics, plans_ok)
    else {
        return Err(ConfigError::many(errors).unwrap_or_else(|| main.err(None, "invalid config")));
    };
    if let Some(e) = ConfigError::many(errors) {
        return Err(e);
    }
    let tenants = tenants.list;
    Ok(Config {
        path: path.to_path_buf(),
        files,
        tenants_dir,
        server,
        admin: AdminConfig { listen: admin_listen },
        upstream,
        limiter,
        plans: plans.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
        tenants,
        webhooks,
        access_log,
        metrics,
        redis_password_from: redis_password.map(|(_, from, _)| from),
        digest: digest.finish(),
        loaded_at: std::time::SystemTime::now(),
    })
}

/// The value of `r`, or `None` with its error added to `errors`.
fn keep<T>(errors: &mut Vec<ConfigError>, r: Result<T, ConfigError>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

fn metrics(src: &Source, raw: &RawMetrics) -> Result<MetricsConfig, ConfigError> {
    let per_tenant = match raw.per_tenant.as_ref() {
        None => PerTenant::All,
        Some(v) => match v.get_ref().as_str() {
            "all" => PerTenant::All,
            "limits_only" => PerTenant::LimitsOnly,
            other => {
                return Err(
                    src.at(v, format!("metrics.per_tenant: expected \"all\" or \"limits_only\", got \"{other}\""))
                )
            }
        },
    };
    Ok(MetricsConfig { per_tenant })
}

/// Relative paths in the config are relative to the main file's directory,
/// so a config works whatever the working directory of the process.
fn resolve(base_dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// Every `*.toml` of `tenants_dir`, sorted by file name. Hidden files (editor
/// lock files such as `.#acme.toml`) are skipped.
fn tenant_files(main: &Source, dir: &Spanned<String>, resolved: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = fs::read_dir(resolved).map_err(|e| {
        main.at(dir, format!("tenants_dir \"{}\": cannot read directory {}: {e}", dir.get_ref(), resolved.display()))
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| main.at(dir, format!("tenants_dir \"{}\": {e}", dir.get_ref())))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || path.extension().and_then(|e| e.to_str()) != Some("toml") || !path.is_file() {
            continue;
        }
        files.push(path);
    }
    files.sort();
    Ok(files)
}

/// A tenant file: exactly one `[tenant]` table. The two likely mistakes (keys
/// at the top level, `[[tenant]]` copied from the main file) get a message
/// that says so, rather than serde's.
fn parse_tenant_file(src: &Source) -> Result<RawTenant, ConfigError> {
    if let Ok(table) = src.text.parse::<toml::Table>() {
        match table.get("tenant") {
            None => {
                return Err(src
                    .err(None, "no [tenant] table: a tenant file holds one [tenant] table (name, domain, plan, ...)"))
            }
            Some(toml::Value::Array(_)) => {
                let at = src.text.find("[[").map(|i| i..i);
                return Err(src.err(at, "a tenant file holds exactly one tenant: use [tenant], not [[tenant]]"));
            }
            Some(_) => {}
        }
    }
    src.parse::<RawTenantFile>(FileKind::Tenant).map(|f| f.tenant)
}

// ---------------------------------------------------------------- listeners, upstream, store

fn listen(src: &Source, value: Option<&Spanned<String>>, key: &str, default: &str) -> Result<SocketAddr, ConfigError> {
    match value {
        None => default.parse().map_err(|_| src.err(None, format!("{key}: bad default {default}"))),
        Some(v) => v.get_ref().trim().parse().map_err(|_| {
            src.at(
                v,
                format!("{key}: invalid listen address \"{}\" (expected IP:PORT, e.g. 0.0.0.0:8080)", v.get_ref()),
            )
        }),
    }
}

fn check_listeners_distinct(
    src: &Source,
    listeners: &[(&str, SocketAddr, Option<Range<usize>>)],
) -> Result<(), ConfigError> {
    for (i, (a_key, a, a_span)) in listeners.iter().enumerate() {
        for (b_key, b, b_span) in &listeners[i + 1..] {
            // Port 0 asks the OS for a free port: never a clash.
            if a == b && a.port() != 0 {
                let span = b_span.clone().or_else(|| a_span.clone());
                return Err(
                    src.err(span, format!("{b_key} = \"{b}\" is the same address as {a_key}; they must differ"))
                );
            }
        }
    }
    Ok(())
}

fn server(src: &Source, raw: RawServer, base_dir: &Path) -> Result<(ServerConfig, Option<Range<usize>>), ConfigError> {
    let listen_addr = listen(src, raw.listen.as_ref(), "server.listen", DEFAULT_LISTEN)?;
    let tls = match raw.tls {
        None => None,
        Some(tls) => {
            let files = TlsFiles {
                cert: existing_file(src, &tls.cert, "server.tls.cert", base_dir)?,
                key: existing_file(src, &tls.key, "server.tls.key", base_dir)?,
            };
            // Built here as `run` builds it, so `check` refuses what `run` would.
            crate::tls::server_config(&files.cert, &files.key)
                .map_err(|msg| src.at(&tls.cert, format!("server.tls: {msg}")))?;
            Some(files)
        }
    };
    let trusted_proxies = match raw.trusted_proxies {
        None => vec![DEFAULT_TRUSTED_PROXY.parse().map_err(|_| src.err(None, "bad default trusted proxy"))?],
        Some(list) => list.iter().map(|v| cidr(src, v)).collect::<Result<_, _>>()?,
    };
    let max_body_bytes = match &raw.max_body_bytes {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(v) if *v.get_ref() > 0 => *v.get_ref() as u64,
        Some(v) => {
            return Err(
                src.at(v, format!("server.max_body_bytes: must be a positive number of bytes, got {}", v.get_ref()))
            )
        }
    };
    let server = ServerConfig {
        listen: listen_addr,
        tls,
        require_https: raw.require_https.unwrap_or(false),
        trusted_proxies,
        max_body_bytes,
        header_read_timeout: millis(
            src,
            raw.header_read_timeout_ms.as_ref(),
            "server.header_read_timeout_ms",
            10_000,
            false,
        )?,
        shutdown_grace: millis(src, raw.shutdown_grace_ms.as_ref(), "server.shutdown_grace_ms", 30_000, true)?,
        fast_path: raw.fast_path.unwrap_or(true),
    };
    Ok((server, raw.listen.as_ref().map(Spanned::span)))
}

fn existing_file(src: &Source, v: &Spanned<String>, key: &str, base_dir: &Path) -> Result<PathBuf, ConfigError> {
    if v.get_ref().is_empty() {
        return Err(src.at(v, format!("{key}: must not be empty")));
    }
    let p = resolve(base_dir, v.get_ref());
    if !p.is_file() {
        return Err(src.at(v, format!("{key}: no such file \"{}\" (resolved to {})", v.get_ref(), p.display())));
    }
    Ok(p)
}

/// A CIDR, or a plain IP meaning just that address.
fn cidr(src: &Source, v: &Spanned<String>) -> Result<IpNet, ConfigError> {
    let s = v.get_ref().trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(src.at(
        v,
        format!("server.trusted_proxies: invalid CIDR \"{}\" (expected e.g. 10.0.0.0/8 or 10.0.0.1)", v.get_ref()),
    ))
}

/// A duration in milliseconds; negative is always an error, zero only where it means something.
fn millis(
    src: &Source,
    v: Option<&Spanned<i64>>,
    key: &str,
    default: u64,
    zero_ok: bool,
) -> Result<Duration, ConfigError> {
    count(src, v, key, "milliseconds", default, zero_ok).map(Duration::from_millis)
}

fn seconds(
    src: &Source,
    v: Option<&Spanned<i64>>,
    key: &str,
    default: u64,
    zero_ok: bool,
) -> Result<Duration, ConfigError> {
    count(src, v, key, "seconds", default, zero_ok).map(Duration::from_secs)
}

fn access_log(src: &Source, raw: &RawAccessLog) -> Result<AccessLogConfig, ConfigError> {
    let sample_served = match &raw.sample_served {
        None => 1.0,
        Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            return Err(src.at(
                v,
                format!(
                    "access_log.sample_served: must be a share from 0.0 (none) to 1.0 (every call), got {}",
                    v.get_ref()
                ),
            ))
        }
    };
    Ok(AccessLogConfig { sample_served })
}

fn count(
    src: &Source,
    v: Option<&Spanned<i64>>,
    key: &str,
    unit: &str,
    default: u64,
    zero_ok: bool,
) -> Result<u64, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    let n = *v.get_ref();
    if n < 0 || (n == 0 && !zero_ok) {
        let what = if zero_ok { "a non-negative" } else { "a positive" };
        return Err(src.at(v, format!("{key}: must be {what} number of {unit}, got {n}")));
    }
    Ok(n as u64)
}

fn http_url(src: &Source, v: &Spanned<String>, key: &str) -> Result<http::Uri, ConfigError> {
    let bad =
        || src.at(v, format!("{key}: \"{}\" is not an http:// or https:// URL with a host", redact_url(v.get_ref())));
    let uri: http::Uri = v.get_ref().trim().parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http") | Some("https"));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    if scheme_ok && host_ok {
        Ok(uri)
    } else {
        Err(bad())
    }
}

fn upstream(src: &Source, raw: RawUpstream, base_dir: &Path) -> Result<UpstreamConfig, ConfigError> {
    let url = match &raw.url {
        Some(v) => http_url(src, v, "upstream.url")?,
        None => http::Uri::from_static(DEFAULT_UPSTREAM),
    };
    let ca_file = match &raw.ca_file {
        Some(v) => {
            let p = existing_file(src, v, "upstream.ca_file", base_dir)?;
            crate::tls::check_ca_file(&p).map_err(|msg| src.at(v, format!("upstream.ca_file: {msg}")))?;
            Some(p)
        }
        None => None,
    };
    Ok(UpstreamConfig {
        url,
        ca_file,
        connect_timeout: millis(src, raw.connect_timeout_ms.as_ref(), "upstream.connect_timeout_ms", 2_000, false)?,
        timeout: millis(src, raw.timeout_ms.as_ref(), "upstream.timeout_ms", 30_000, false)?,
        pool_idle_timeout: millis(
            src,
            raw.pool_idle_timeout_ms.as_ref(),
            "upstream.pool_idle_timeout_ms",
            DEFAULT_POOL_IDLE_TIMEOUT_MS,
            false,
        )?,
        // Zero is allowed: it means no connection is kept for reuse.
        pool_max_idle: count(
            src,
            raw.pool_max_idle.as_ref(),
            "upstream.pool_max_idle",
            "connections",
            DEFAULT_POOL_MAX_IDLE,
            true,
        )? as usize,
    })
}

fn redis_url(src: &Source, v: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let s = v.get_ref().trim();
    let rest = s.strip_prefix("redis://").or_else(|| s.strip_prefix("rediss://"));
    match rest {
        Some(rest) if !rest.is_empty() => {}
        _ => {
            return Err(src.at(
                v,
                format!("{key}: \"{}\" is not a redis:// or rediss:// URL with a host", super::redact_url(v.get_ref())),
            ))
        }
    }
    // The Redis client's own parser, the one the store uses at start: a URL
    // it refuses (a port that is not a number, a bad database) is refused here.
    if let Err(e) = redis::IntoConnectionInfo::into_connection_info(s) {
        // The client's own words ("Redis URL did not parse- InvalidClientConfig")
        // name no part of the URL; the expected shape does.
        let why = match e.detail() {
            Some(d) => format!(": {d}"),
            None => String::new(),
        };
        return Err(src.at(
            v,
            format!(
                "{key}: \"{}\" is not a valid Redis URL (expected redis://[USER:PASSWORD@]HOST[:PORT][/DB], \
                 the port a number and the database a number){why}",
                super::redact_url(s)
            ),
        ));
    }
    Ok(s.to_owned())
}

/// `redis_sentinel` and its companions: `None` when no sentinel is named
/// (then none of the companions may be set either). Exactly one of
/// `redis_url`, `redis_cluster` and `redis_sentinel` names the store.
fn sentinel_store(src: &Source, raw: &RawLimiter, kind: RawStore) -> Result<Option<StoreKind>, ConfigError> {
    let Some(list) = &raw.redis_sentinel else {
        let companion = [
            (raw.redis_sentinel_master.as_ref(), "limiter.redis_sentinel_master"),
            (raw.redis_sentinel_master_username.as_ref(), "limiter.redis_sentinel_master_username"),
            (raw.redis_sentinel_master_password.as_ref(), "limiter.redis_sentinel_master_password"),
        ];
        if let Some((v, key)) = companion.into_iter().find_map(|(v, k)| v.map(|v| (v, k))) {
            return Err(src.at(v, format!("{key} is set but redis_sentinel is not: name the sentinels or remove it")));
        }
        return Ok(None);
    };
    if kind == RawStore::Memory {
        return Err(
            src.at(list, "limiter.redis_sentinel is set but store = \"memory\": set store = \"redis\" or remove it")
        );
    }
    if raw.redis_url.is_some() || raw.redis_cluster.is_some() {
        return Err(src.at(list, "limiter: set exactly one of redis_url, redis_cluster or redis_sentinel"));
    }
    if list.get_ref().is_empty() {
        return Err(src.at(list, "limiter.redis_sentinel: must list at least one sentinel URL"));
    }
    let sentinels =
        list.get_ref().iter().map(|u| redis_url(src, u, "limiter.redis_sentinel")).collect::<Result<_, _>>()?;
    let master = match &raw.redis_sentinel_master {
        None => {
            return Err(src.at(
                list,
                "limiter.redis_sentinel needs redis_sentinel_master, the name the sentinels know the primary by",
            ))
        }
        Some(m) if m.get_ref().trim().is_empty() => {
            return Err(src.at(m, "limiter.redis_sentinel_master: must not be empty"))
        }
        Some(m) => m.get_ref().trim().to_owned(),
    };
    let nonempty = |v: Option<&Spanned<String>>, key: &str| match v {
        Some(v) if v.get_ref().is_empty() => {
            Err(src.at(v, format!("{key}: must not be empty (leave it out when the primary needs none)")))
        }
        v => Ok(v.map(|v| v.get_ref().clone())),
    };
    Ok(Some(StoreKind::RedisSentinel {
        sentinels,
        master,
        username: nonempty(raw.redis_sentinel_master_username.as_ref(), "limiter.redis_sentinel_master_username")?,
        password: nonempty(raw.redis_sentinel_master_password.as_ref(), "limiter.redis_sentinel_master_password")?,
    }))
}

fn limiter(src: &Source, raw: RawLimiter) -> Result<LimiterConfig, ConfigError> {
    let kind = raw.store.as_ref().map_or(RawStore::Memory, |s| *s.get_ref());
    let sentinel = sentinel_store(src, &raw, kind)?;
    let store = match (kind, &raw.redis_url, &raw.redis_cluster) {
        (RawStore::Memory, Some(v), _) => {
            return Err(src.at(v, "limiter.redis_url is set but store = \"memory\": set store = \"redis\" or remove it"))
        }
        (RawStore::Memory, None, Some(v)) => {
            return Err(
                src.at(v, "limiter.redis_cluster is set but store = \"memory\": set store = \"redis\" or remove it")
            )
        }
        (RawStore::Memory, None, None) => StoreKind::Memory,
        (RawStore::Redis, Some(_), Some(c)) => {
            return Err(src.at(c, "limiter: set either redis_url (standalone) or redis_cluster, not both"))
        }
        (RawStore::Redis, Some(u), None) => StoreKind::Redis { url: redis_url(src, u, "limiter.redis_url")? },
        (RawStore::Redis, None, Some(c)) => {
            if c.get_ref().is_empty() {
                return Err(src.at(c, "limiter.redis_cluster: must list at least one node URL"));
            }
            let urls =
                c.get_ref().iter().map(|u| redis_url(src, u, "limiter.redis_cluster")).collect::<Result<_, _>>()?;
            StoreKind::RedisCluster { urls }
        }
        (RawStore::Redis, None, None) => match sentinel {
            Some(s) => s,
            None => {
                let span = raw.store.as_ref().map(Spanned::span);
                return Err(src.err(
                    span,
                    "limiter: store = \"redis\" needs redis_url or redis_cluster (or redis_sentinel with redis_sentinel_master)",
                ));
            }
        },
    };
    let key_prefix = match &raw.key_prefix {
        None => DEFAULT_KEY_PREFIX.to_owned(),
        Some(v) if v.get_ref().is_empty() => return Err(src.at(v, "limiter.key_prefix: must not be empty")),
        Some(v) => v.get_ref().clone(),
    };
    Ok(LimiterConfig {
        store,
        on_store_error: match raw.on_store_error {
            None | Some(RawOnStoreError::FailOpen) => OnStoreError::FailOpen,
            Some(RawOnStoreError::FailClosed) => OnStoreError::FailClosed,
        },
        store_timeout: millis(src, raw.store_timeout_ms.as_ref(), "limiter.store_timeout_ms", 50, false)?,
        key_prefix,
        charge_invalid: raw.charge_invalid.unwrap_or(false),
        redis_batch: raw.redis_batch.unwrap_or(true),
        refused_credential_ttl: refused_credential_ttl(src, raw.refused_credential_ttl_ms.as_ref())?,
    })
}

/// The Redis password named by `redis_password_file` or `redis_password_env`
/// (at most one of them): the password, where it came from, and the key's span.
fn redis_password(
    src: &Source,
    raw: &RawLimiter,
    base_dir: &Path,
) -> Result<Option<(String, PasswordSource, Range<usize>)>, ConfigError> {
    match (&raw.redis_password_file, &raw.redis_password_env) {
        (None, None) => Ok(None),
        (Some(_), Some(env)) => {
            Err(src.at(env, "limiter: set either redis_password_file or redis_password_env, not both"))
        }
        (Some(file), None) => {
            let path = resolve(base_dir, file.get_ref());
            let pw = secret::from_file(&path).map_err(|e| src.at(file, format!("limiter.redis_password_file: {e}")))?;
            Ok(Some((pw, PasswordSource::File(path), file.span())))
        }
        (None, Some(env)) => {
            let pw =
                secret::from_env(env.get_ref()).map_err(|e| src.at(env, format!("limiter.redis_password_env: {e}")))?;
            Ok(Some((pw, PasswordSource::Env(env.get_ref().clone()), env.span())))
        }
    }
}

/// The store with the password in every Redis URL.
fn store_with_password(
    src: &Source,
    store: &StoreKind,
    password: &str,
    span: &Range<usize>,
) -> Result<StoreKind, ConfigError> {
    let put = |url: &str| {
        secret::with_password(url, password).map_err(|e| {
            src.err(
                Some(span.clone()),
                format!("limiter: cannot use the Redis password with \"{}\": {e}", redact_url(url)),
            )
        })
    };
    match store {
        StoreKind::Memory => Err(src.err(
            Some(span.clone()),
            "limiter: a Redis password is set but store = \"memory\": set store = \"redis\" or remove it",
        )),
        StoreKind::Redis { url } => Ok(StoreKind::Redis { url: put(url)? }),
        StoreKind::RedisCluster { urls } => {
            Ok(StoreKind::RedisCluster { urls: urls.iter().map(|u| put(u)).collect::<Result<_, _>>()? })
        }
        // Through Sentinel the password is the primary's (the sentinels'
        // own stays in their URLs).
        StoreKind::RedisSentinel { sentinels, master, username, password: None } => Ok(StoreKind::RedisSentinel {
            sentinels: sentinels.clone(),
            master: master.clone(),
            username: username.clone(),
            password: Some(password.to_owned()),
        }),
        StoreKind::RedisSentinel { .. } => Err(src.err(
            Some(span.clone()),
            "limiter: the primary's password is set twice (redis_sentinel_master_password and a password file or \
             variable): keep one",
        )),
    }
}

/// Longest `refused_credential_ttl_ms`: a credential refused by mistake (a
/// key the helpdesk refused while it was being rotated) is shut out no
/// longer than this.
const MAX_REFUSED_CREDENTIAL_TTL_MS: i64 = 600_000;

fn refused_credential_ttl(src: &Source, v: Option<&Spanned<i64>>) -> Result<Duration, ConfigError> {
    if let Some(v) = v.filter(|v| *v.get_ref() > MAX_REFUSED_CREDENTIAL_TTL_MS) {
        return Err(src.at(
            v,
            format!(
                "limiter.refused_credential_ttl_ms: must be at most {MAX_REFUSED_CREDENTIAL_TTL_MS} milliseconds, got {}",
                v.get_ref()
            ),
        ));
    }
    millis(src, v, "limiter.refused_credential_ttl_ms", 10_000, true)
}

fn webhooks(src: &Source, raw: &RawWebhooks) -> Result<WebhooksConfig, ConfigError> {
    let retry_schedule = match &raw.retry_schedule_s {
        None => [300, 1800, 3600].map(Duration::from_secs).to_vec(),
        Some(list) => list
            .iter()
            .map(|v| seconds(src, Some(v), "webhooks.retry_schedule_s", 0, false))
            .collect::<Result<_, _>>()?,
    };
    let alert_url = match &raw.alert_url {
        Some(v) => Some(http_url(src, v, "webhooks.alert_url")?.to_string()),
        None => None,
    };
    Ok(WebhooksConfig {
        listen: listen(src, raw.listen.as_ref(), "webhooks.listen", DEFAULT_WEBHOOKS_LISTEN)?,
        max_postpone: seconds(src, raw.max_postpone_s.as_ref(), "webhooks.max_postpone_s", 86_400, true)?,
        retry_schedule,
        delivery_timeout: millis(src, raw.delivery_timeout_ms.as_ref(), "webhooks.delivery_timeout_ms", 10_000, false)?,
        alert_url,
        lease: webhook_lease(src, raw.lease_ms.as_ref())?,
        max_queued_per_tenant: count(
            src,
            raw.max_queued_per_tenant.as_ref(),
            "webhooks.max_queued_per_tenant",
            "webhooks",
            DEFAULT_MAX_QUEUED_PER_TENANT,
            false,
        )?,
    })
}

/// Default `webhooks.max_queued_per_tenant`: far above what a tenant's
/// budget drains in a day of normal traffic, low enough that one runaway
/// automation rule cannot fill the store.
const DEFAULT_MAX_QUEUED_PER_TENANT: u64 = 10_000;
/// Shortest `webhooks.lease_ms`: renewed every third of it, so shorter
/// leases would be renewed faster than a store round trip can be trusted.
const MIN_WEBHOOK_LEASE_MS: i64 = 300;

fn webhook_lease(src: &Source, v: Option<&Spanned<i64>>) -> Result<Duration, ConfigError> {
    if let Some(v) = v {
        if *v.get_ref() < MIN_WEBHOOK_LEASE_MS {
            return Err(src.at(
                v,
                format!("webhooks.lease_ms: must be at least {MIN_WEBHOOK_LEASE_MS} milliseconds, got {}", v.get_ref()),
            ));
        }
    }
    millis(src, v, "webhooks.lease_ms", 10_000, false)
}

// ---------------------------------------------------------------- plans and tenants

/// A budget value: a whole number that fits `u32`.
fn budget(src: &Source, v: &Spanned<i64>, what: &str) -> Result<u32, ConfigError> {
    u32::try_from(*v.get_ref()).map_err(|_| {
        src.at(v, format!("{what}: must be a whole number between 0 and {}, got {}", u32::MAX, v.get_ref()))
    })
}

fn window(src: &Source, v: &Spanned<i64>, owner: &str) -> Result<u32, ConfigError> {
    let w = budget(src, v, &format!("{owner}: window_seconds"))?;
    if w == 0 {
        return Err(src.at(v, format!("{owner}: window_seconds must be at least 1")));
    }
    Ok(w)
}

/// Longest `max_wait_ms`: a held call keeps its client's connection open,
/// and a client or a load balancer in front gives up after a few minutes
/// anyway; a longer wait would only hold a dead call.
const MAX_WAIT_MS: i64 = 300_000;

/// Most `max_held_calls`: each held call is a connection and a task.
const MAX_HELD_CALLS: i64 = 100_000;

fn max_wait(src: &Source, v: Option<&Spanned<i64>>, owner: &str, default: Duration) -> Result<Duration, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    if *v.get_ref() > MAX_WAIT_MS {
        return Err(
            src.at(v, format!("{owner}: max_wait_ms must be at most {MAX_WAIT_MS} milliseconds, got {}", v.get_ref()))
        );
    }
    millis(src, Some(v), &format!("{owner}: max_wait_ms"), 0, true)
}

fn max_held_calls(src: &Source, v: Option<&Spanned<i64>>, owner: &str, default: u32) -> Result<u32, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    if *v.get_ref() > MAX_HELD_CALLS {
        return Err(src.at(v, format!("{owner}: max_held_calls must be at most {MAX_HELD_CALLS}, got {}", v.get_ref())));
    }
    // Zero would hold nothing: `max_wait_ms = 0` says that.
    count(src, Some(v), &format!("{owner}: max_held_calls"), "calls", 0, false).map(|n| n as u32)
}

/// Parses an `endpoints` table: (index, budget, where it was written).
fn endpoint_budgets(
    src: &Source,
    map: &BTreeMap<Spanned<String>, Spanned<i64>>,
    owner: &str,
    api_access: bool,
) -> Result<Vec<(usize, u32, Range<usize>)>, ConfigError> {
    let mut out = Vec::with_capacity(map.len());
    for (key, value) in map {
        let index = Endpoint::from_key(key.get_ref()).and_then(Endpoint::index).ok_or_else(|| {
            let valid: Vec<&str> = Endpoint::ALL_CLASSIFIED.iter().map(|e| e.as_str()).collect();
            src.at(
                key,
                format!("{owner}: unknown endpoint \"{}\" in endpoints (valid: {})", key.get_ref(), valid.join(", ")),
            )
        })?;
        let b = budget(src, value, &format!("{owner}: endpoints.{}", key.get_ref()))?;
        if b == 0 && api_access {
            return Err(src.at(
                value,
                format!(
                    "{owner}: endpoint budget {} = 0 on a plan with API access (remove it for no endpoint budget)",
                    key.get_ref()
                ),
            ));
        }
        out.push((index, b, value.span()));
    }
    Ok(out)
}

fn endpoint_name(index: usize) -> &'static str {
    Endpoint::ALL_CLASSIFIED.get(index).map_or("?", |e| e.as_str())
}

fn plans(src: &Source, raw: BTreeMap<Spanned<String>, RawPlan>) -> Result<BTreeMap<String, Plan>, ConfigError> {
    let mut plans = builtin_plans();
    for (name, p) in raw {
        if name.get_ref().trim().is_empty() {
            return Err(src.at(&name, "plan name must not be empty"));
        }
        let owner = format!("plan \"{}\"", name.get_ref());
        let api_access = p.api_access.unwrap_or(true);
        let per_minute = match &p.per_minute {
            Some(v) => {
                let b = budget(src, v, &format!("{owner}: per_minute"))?;
                if b == 0 && api_access {
                    return Err(src.at(v, format!("{owner}: per_minute = 0 on a plan with API access (set api_access = false to refuse API calls)")));
                }
                b
            }
            None if api_access => {
                return Err(src.at(&name, format!("{owner}: per_minute is required for a plan with API access")))
            }
            None => 0,
        };
        let window_seconds = match &p.window_seconds {
            Some(v) => window(src, v, &owner)?,
            None => DEFAULT_WINDOW_SECONDS,
        };
        let mut endpoints: EndpointBudgets = [None; Endpoint::CLASSIFIED];
        if let Some(map) = &p.endpoints {
            for (i, b, span) in endpoint_budgets(src, map, &owner, api_access)? {
                if api_access && b > per_minute {
                    return Err(src.err(
                        Some(span),
                        format!(
                            "{owner}: endpoint budget {} = {b} is above the plan's per_minute = {per_minute}",
                            endpoint_name(i)
                        ),
                    ));
                }
                endpoints[i] = Some(b);
            }
        }
        let max_wait = max_wait(src, p.max_wait_ms.as_ref(), &owner, Duration::ZERO)?;
        let max_held_calls = max_held_calls(src, p.max_held_calls.as_ref(), &owner, DEFAULT_MAX_HELD_CALLS)?;
        let trust_upstream_limits = p.trust_upstream_limits.unwrap_or(super::DEFAULT_TRUST_UPSTREAM_LIMITS);
        let plan = Plan {
            name: name.get_ref().clone(),
            api_access,
            per_minute,
            endpoints,
            window_seconds,
            max_wait,
            max_held_calls,
            trust_upstream_limits,
        };
        plans.insert(name.into_inner(), plan);
    }
    Ok(plans)
}

/// Beyond what [`normalize_host`] refuses, a configured host must be a
/// plain DNS name or an IPv6 literal: it is the key a request must match.
fn is_valid_host(h: &str) -> bool {
    if h.starts_with('[') {
        return h.len() > 2 && h.ends_with(']') && h[1..h.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && !h.starts_with('.')
        && !h.contains("..")
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// Tenant names end up in metric labels and store keys (inside a Redis hash
/// tag), so they are kept to a safe alphabet.
fn is_valid_tenant_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Tenants as they are added from every file, with the indexes that catch
/// duplicate names and hosts across files.
struct TenantSet<'p> {
    plans: &'p BTreeMap<String, Plan>,
    list: Vec<Arc<Tenant>>,
    /// name → where it was defined.
    names: HashMap<String, String>,
    /// normalised host → (tenant name, where it was claimed).
    hosts: HashMap<String, (String, String)>,
}

impl<'p> TenantSet<'p> {
    fn new(plans: &'p BTreeMap<String, Plan>) -> Self {
        TenantSet { plans, list: Vec::new(), names: HashMap::new(), hosts: HashMap::new() }
    }

    fn add(&mut self, src: &Source, raw: RawTenant) -> Result<(), ConfigError> {
        let name = raw.name.get_ref().as_str();
        if name.trim().is_empty() {
            return Err(src.at(&raw.name, "tenant name must not be empty"));
        }
        if !is_valid_tenant_name(name) {
            return Err(
                src.at(&raw.name, format!("tenant name \"{name}\": use only ASCII letters, digits, '-', '_' and '.'"))
            );
        }
        if name == super::UNKNOWN_TENANT {
            return Err(src.at(
                &raw.name,
                format!("tenant name \"{name}\" is reserved: metrics count calls to unknown hosts under it"),
            ));
        }
        if let Some(first) = self.names.get(name) {
            return Err(src.at(&raw.name, format!("duplicate tenant name \"{name}\" (first defined at {first})")));
        }
        let owner = format!("tenant \"{name}\"");

        let plan = self.plans.get(raw.plan.get_ref()).ok_or_else(|| {
            let known: Vec<&str> = self.plans.keys().map(String::as_str).collect();
            src.at(
                &raw.plan,
                format!("{owner}: unknown plan \"{}\" (known plans: {})", raw.plan.get_ref(), known.join(", ")),
            )
        })?;

        // Hosts: the canonical domain first, then vanity hosts.
        let mut claims: Vec<(String, &Spanned<String>)> = Vec::new();
        for (v, what) in
            std::iter::once((&raw.domain, "domain")).chain(raw.vanity_hosts.iter().map(|v| (v, "vanity host")))
        {
            // Stored in the form requests are normalised to (`tenant`
            // normalises them with the same function), or no request finds it.
            let host = match normalize_host(v.get_ref().trim()) {
                Ok(h) if is_valid_host(&h) => h.into_owned(),
                Err(HostError::Empty) => return Err(src.at(v, format!("{owner}: {what} must not be empty"))),
                _ => {
                    return Err(src.at(
                        v,
                        format!(
                            "{owner}: invalid {what} \"{}\" (expected a host name like acme.freshdesk.com)",
                            v.get_ref()
                        ),
                    ))
                }
            };
            claims.push((host, v));
        }
        for (i, (host, v)) in claims.iter().enumerate() {
            let dup_in_self = claims[..i].iter().any(|(h, _)| h == host);
            if dup_in_self {
                return Err(src.at(*v, format!("{owner}: host \"{host}\" is listed twice")));
            }
            if let Some((other, at)) = self.hosts.get(host) {
                return Err(
                    src.at(*v, format!("{owner}: host \"{host}\" is already claimed by tenant \"{other}\" (at {at})"))
                );
            }
        }

        // Budgets: the plan's, with the tenant's overrides.
        let api_access = plan.api_access;
        let per_minute = match &raw.per_minute {
            Some(v) => {
                let b = budget(src, v, &format!("{owner}: per_minute"))?;
                if b == 0 && api_access {
                    return Err(
                        src.at(v, format!("{owner}: per_minute = 0 on plan \"{}\" which has API access", plan.name))
                    );
                }
                b
            }
            None => plan.per_minute,
        };
        let window_seconds = match &raw.window_seconds {
            Some(v) => window(src, v, &owner)?,
            None => plan.window_seconds,
        };
        let mut endpoints = plan.endpoints;
        let mut written: [Option<Range<usize>>; Endpoint::CLASSIFIED] = Default::default();
        if let Some(map) = &raw.endpoints {
            for (i, b, span) in endpoint_budgets(src, map, &owner, api_access)? {
                endpoints[i] = Some(b);
                written[i] = Some(span);
            }
        }
        if api_access {
            for (i, b) in endpoints.iter().enumerate() {
                let Some(b) = *b else { continue };
                if b <= per_minute {
                    continue;
                }
                let ep = endpoint_name(i);
                let msg = match &written[i] {
                    Some(_) => format!("{owner}: endpoint budget {ep} = {b} is above the account budget per_minute = {per_minute}"),
                    None => format!(
                        "{owner}: per_minute = {per_minute} is below plan \"{}\"'s endpoint budget {ep} = {b} (lower it in the tenant's endpoints too)",
                        plan.name
                    ),
                };
                let span = written[i].clone().or_else(|| raw.per_minute.as_ref().map(Spanned::span));
                return Err(src.err(span.or_else(|| Some(raw.name.span())), msg));
            }
        }

        let location = src.location(&raw.name);
        for (host, _) in &claims {
            self.hosts.insert(host.clone(), (name.to_owned(), location.clone()));
        }
        self.names.insert(name.to_owned(), location);
        let mut hosts = claims.into_iter().map(|(h, _)| h);
        let domain = hosts.next().unwrap_or_default();
        self.list.push(Arc::new(Tenant {
            name: Arc::from(name),
            domain,
            vanity_hosts: hosts.collect(),
            plan: plan.name.clone(),
            api_access,
            per_minute,
            endpoints,
            window_seconds,
            shadow: raw.shadow.unwrap_or(false),
            max_wait: max_wait(src, raw.max_wait_ms.as_ref(), &owner, plan.max_wait)?,
            max_held_calls: max_held_calls(src, raw.max_held_calls.as_ref(), &owner, plan.max_held_calls)?,
            trust_upstream_limits: raw.trust_upstream_limits.unwrap_or(plan.trust_upstream_limits),
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p
    }

    fn load_str(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "t.toml", text);
        match load(&p) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// The error's Display, with the temp dir stripped: `t.toml:L:C: msg`.
    fn error(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "t.toml", text);
        let e = load(&p).expect_err("config should be refused");
        e.to_string().replace(&format!("{}/", dir.path().display()), "")
    }

    const TENANT: &str = "[[tenant]]\nname = \"acme\"\ndomain = \"acme.freshdesk.com\"\nplan = \"pro\"\n";

    fn with_tenant(prefix: &str) -> String {
        format!("{prefix}\n{TENANT}")
    }

    #[test]
    fn the_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/deskgate.toml");
        let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = c.tenants.iter().map(|t| &*t.name).collect();
        assert_eq!(names, ["acme", "globex"]);
        assert_eq!(c.files.len(), 2);
        assert_eq!(c.tenants[0].vanity_hosts, ["support.acme.com"]);
        assert_eq!(c.tenants[1].plan, "growth");
        assert_eq!(c.plans["legacy_hourly"].window_seconds, 3600);
        assert_eq!(c.limiter.store, StoreKind::Memory);
        assert!(c.webhooks.is_none());
        assert!(c.summary().contains("globex: globex.freshdesk.com plan growth: 200/60s"));
    }

    #[test]
    fn an_empty_config_gets_the_spec_defaults_and_no_tenants() {
        let c = load_str("");
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.upstream.url, "http://127.0.0.1:8081/");
        assert_eq!(c.upstream.connect_timeout, Duration::from_millis(2000));
        assert_eq!(c.upstream.timeout, Duration::from_millis(30_000));
        assert_eq!(c.limiter.store, StoreKind::Memory);
        assert_eq!(c.limiter.on_store_error, OnStoreError::FailOpen);
        assert_eq!(c.limiter.store_timeout, Duration::from_millis(50));
        assert_eq!(c.limiter.key_prefix, "deskgate");
        assert!(!c.limiter.charge_invalid);
        assert_eq!(c.limiter.refused_credential_ttl, Duration::from_secs(10));
        assert_eq!(c.server.max_body_bytes, 20_971_520);
        assert_eq!(c.server.header_read_timeout, Duration::from_millis(10_000));
        assert_eq!(c.server.shutdown_grace, Duration::from_millis(30_000));
        assert_eq!(c.server.trusted_proxies, ["127.0.0.1/32".parse::<IpNet>().unwrap()]);
        assert!(!c.server.require_https);
        assert!(c.webhooks.is_none());
        assert!(c.tenants.is_empty());
        assert_eq!(c.plans.len(), 8);
        assert!(c.summary().contains("tenants: none"));
    }

    #[test]
    fn switches_and_pool_settings_default_to_on_and_the_documented_values() {
        let c = load_str("");
        assert!(c.server.fast_path);
        assert!(c.limiter.redis_batch);
        assert_eq!(c.upstream.pool_idle_timeout, Duration::from_millis(50_000));
        assert_eq!(c.upstream.pool_max_idle, 1024);
        let c = load_str(
            "[server]\nfast_path = false\n[limiter]\nredis_batch = false\n\
             [upstream]\npool_idle_timeout_ms = 5000\npool_max_idle = 0\n",
        );
        assert!(!c.server.fast_path);
        assert!(!c.limiter.redis_batch);
        assert_eq!(c.upstream.pool_idle_timeout, Duration::from_millis(5000));
        assert_eq!(c.upstream.pool_max_idle, 0);
        let json = c.redacted_json();
        assert_eq!(json["server"]["fast_path"], false);
        assert_eq!(json["limiter"]["redis_batch"], false);
        assert_eq!(json["upstream"]["pool_idle_timeout_ms"], 5000);
        assert_eq!(json["upstream"]["pool_max_idle"], 0);
        let summary = c.summary();
        assert!(summary.contains("fast_path false"), "{summary}");
        assert!(summary.contains("pool idle 5000ms, max idle 0"), "{summary}");
    }

    #[test]
    fn a_switch_or_pool_setting_of_the_wrong_type_is_an_error_with_its_position() {
        let e = error("[server]\nfast_path = \"no\"\n");
        assert_eq!(e, "t.toml:2:13: `server.fast_path` must be true or false, found the string \"no\"");
        let e = error("[limiter]\nredis_batch = 0\n");
        assert_eq!(e, "t.toml:2:15: `limiter.redis_batch` must be true or false, found the integer 0");
        let e = error("[upstream]\npool_idle_timeout_ms = 0\n");
        assert_eq!(e, "t.toml:2:24: upstream.pool_idle_timeout_ms: must be a positive number of milliseconds, got 0");
        let e = error("[upstream]\npool_max_idle = -1\n");
        assert_eq!(e, "t.toml:2:17: upstream.pool_max_idle: must be a non-negative number of connections, got -1");
        let e = error("[upstream]\npool_max_idle = \"many\"\n");
        assert_eq!(e, "t.toml:2:17: `upstream.pool_max_idle` must be an integer, found the string \"many\"");
    }

    #[test]
    fn unknown_key_is_an_error_with_its_position() {
        let e = error("[server]\nlisten = \"127.0.0.1:8080\"\nlisen = \"x\"\n");
        assert!(e.starts_with("t.toml:3:1: unknown key `lisen` in `server` (known keys: listen, tls,"), "{e}");
        let e = error(&format!("{TENANT}shadw = true\n"));
        assert!(e.starts_with("t.toml:5:1: unknown key `shadw` in `tenant[0]`"), "{e}");
    }

    #[test]
    fn unknown_plan_is_an_error_with_its_position() {
        let text = "[server]\nlisten = \"127.0.0.1:8080\"\n\n[limiter]\nstore = \"memory\"\n\n\
                    [plans.custom]\nper_minute = 10\n\n[[tenant]]\nname = \"acme\"\nplan = \"platinum\"\n\
                    domain = \"acme.freshdesk.com\"\n";
        assert_eq!(
            error(text),
            "t.toml:12:8: tenant \"acme\": unknown plan \"platinum\" (known plans: custom, enterprise, \
             enterprise_1000, enterprise_2000, free, growth, pro, sprout, trial)"
        );
    }

    #[test]
    fn two_tenants_claiming_one_host_is_an_error_naming_both() {
        let text = format!(
            "{TENANT}vanity_hosts = [\"support.acme.com\"]\n\n[[tenant]]\nname = \"globex\"\n\
             domain = \"globex.freshdesk.com\"\nplan = \"growth\"\nvanity_hosts = [\"Support.ACME.com.:443\"]\n"
        );
        let e = error(&text);
        assert!(
            e.starts_with(
                "t.toml:11:17: tenant \"globex\": host \"support.acme.com\" is already claimed by tenant \"acme\" (at "
            ),
            "{e}"
        );
        let text = format!("{TENANT}\n[[tenant]]\nname = \"b\"\ndomain = \"ACME.freshdesk.com\"\nplan = \"pro\"\n");
        assert!(error(&text).starts_with(
            "t.toml:8:10: tenant \"b\": host \"acme.freshdesk.com\" is already claimed by tenant \"acme\""
        ));
    }

    #[test]
    fn duplicate_tenant_names_are_an_error() {
        let text = format!("{TENANT}\n[[tenant]]\nname = \"acme\"\ndomain = \"other.example.com\"\nplan = \"pro\"\n");
        let e = error(&text);
        assert!(e.starts_with("t.toml:7:8: duplicate tenant name \"acme\" (first defined at "), "{e}");
        assert!(e.ends_with("t.toml:2:8)"), "{e}");
    }

    #[test]
    fn a_tenant_named_like_the_unknown_host_bucket_is_an_error() {
        let e = error("[[tenant]]\nname = \"unknown\"\ndomain = \"u.example.com\"\nplan = \"pro\"\n");
        assert_eq!(e, "t.toml:2:8: tenant name \"unknown\" is reserved: metrics count calls to unknown hosts under it");
    }

    #[test]
    fn webhooks_on_sentinel_are_refused_at_the_sentinel_key() {
        let e = error(
            "[limiter]\nstore = \"redis\"\nredis_sentinel = [\"redis://127.0.0.1:26379\"]\nredis_sentinel_master = \"m\"\n[webhooks]\n",
        );
        assert!(e.starts_with("t.toml:3:18: limiter.redis_sentinel: the webhook queue"), "{e}");
    }

    #[test]
    fn metrics_per_tenant_defaults_to_all_and_names_what_it_accepts() {
        assert_eq!(load_str(TENANT).metrics.per_tenant, PerTenant::All);
        let c = load_str(&with_tenant("[metrics]\nper_tenant = \"limits_only\"\n"));
        assert_eq!(c.metrics.per_tenant, PerTenant::LimitsOnly);
        assert_eq!(c.redacted_json()["metrics"]["per_tenant"], "limits_only");
        let e = error("[metrics]\nper_tenant = \"some\"\n");
        assert_eq!(e, "t.toml:2:14: metrics.per_tenant: expected \"all\" or \"limits_only\", got \"some\"");
    }

    #[test]
    fn plan_endpoint_budget_above_its_total_is_an_error() {
        let e = error("[plans.growth]\nper_minute = 200\nendpoints = { ticket_list = 300 }\n");
        assert_eq!(
            e,
            "t.toml:3:29: plan \"growth\": endpoint budget ticket_list = 300 is above the plan's per_minute = 200"
        );
    }

    #[test]
    fn tenant_endpoint_override_above_its_total_is_an_error() {
        let e = error(&format!("{TENANT}per_minute = 100\nendpoints = {{ ticket_create = 101 }}\n"));
        assert!(e.starts_with("t.toml:6:31: tenant \"acme\": endpoint budget ticket_create = 101 is above"), "{e}");
    }

    #[test]
    fn tenant_per_minute_below_its_plans_endpoint_budget_is_an_error() {
        // pro has ticket_create 160: a per_minute of 100 leaves it above the total.
        let e = error(&format!("{TENANT}per_minute = 100\n"));
        assert!(e.starts_with("t.toml:5:14: tenant \"acme\": per_minute = 100 is below plan \"pro\""), "{e}");
        assert!(e.contains("ticket_create = 160"), "{e}");
    }

    #[test]
    fn zero_budget_with_api_access_is_an_error() {
        assert_eq!(
            error("[plans.trial]\nper_minute = 0\n"),
            "t.toml:2:14: plan \"trial\": per_minute = 0 on a plan with API access (set api_access = false to refuse API calls)"
        );
        let e = error("[plans.x]\nper_minute = 10\nendpoints = { ticket_list = 0 }\n");
        assert!(e.starts_with("t.toml:3:29: plan \"x\": endpoint budget ticket_list = 0"), "{e}");
        let e = error(&format!("{TENANT}per_minute = 0\n"));
        assert!(e.starts_with("t.toml:5:14: tenant \"acme\": per_minute = 0"), "{e}");
        let e = error("[plans.custom]\napi_access = true\n");
        assert!(e.starts_with("t.toml:1:8: plan \"custom\": per_minute is required"), "{e}");
    }

    #[test]
    fn zero_budget_without_api_access_is_fine() {
        let c = load_str("[plans.closed]\napi_access = false\nper_minute = 0\n");
        assert!(!c.plans["closed"].api_access);
    }

    #[test]
    fn unknown_endpoint_key_is_an_error() {
        let e = error(&format!("{TENANT}endpoints = {{ ticket_delete = 5 }}\n"));
        assert_eq!(
            e,
            "t.toml:5:15: tenant \"acme\": unknown endpoint \"ticket_delete\" in endpoints \
             (valid: ticket_create, ticket_update, ticket_list, contact_list)"
        );
    }

    #[test]
    fn window_seconds_of_zero_is_an_error() {
        let e = error("[plans.x]\nper_minute = 5\nwindow_seconds = 0\n");
        assert_eq!(e, "t.toml:3:18: plan \"x\": window_seconds must be at least 1");
        let e = error(&format!("{TENANT}window_seconds = 0\n"));
        assert!(e.starts_with("t.toml:5:18: tenant \"acme\": window_seconds"), "{e}");
    }

    #[test]
    fn invalid_listen_address_is_an_error() {
        let e = error("[admin]\nlisten = \"localhost:9090\"\n");
        assert!(e.starts_with("t.toml:2:10: admin.listen: invalid listen address \"localhost:9090\""), "{e}");
        let e = error("[server]\nlisten = \"127.0.0.1:9090\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n");
        assert!(e.starts_with("t.toml:4:10: admin.listen"), "{e}");
    }

    #[test]
    fn upstream_url_must_be_http_with_a_host() {
        for bad in ["ftp://backend", "backend:8081", "http:///path"] {
            let e = error(&format!("[upstream]\nurl = \"{bad}\"\n"));
            assert!(e.starts_with(&format!("t.toml:2:7: upstream.url: \"{bad}\" is not an http://")), "{e}");
        }
        let c = load_str("[upstream]\nurl = \"https://backend.internal:8443\"\n");
        assert_eq!(c.upstream.url.host(), Some("backend.internal"));
    }

    #[test]
    fn redis_store_needs_exactly_one_of_url_or_cluster() {
        let e = error("[limiter]\nstore = \"redis\"\n");
        assert!(e.starts_with("t.toml:2:9: limiter: store = \"redis\" needs redis_url or redis_cluster"), "{e}");
        let e = error("[limiter]\nstore = \"redis\"\nredis_url = \"redis://a\"\nredis_cluster = [\"redis://b\"]\n");
        assert!(e.starts_with("t.toml:4:17: limiter: set either redis_url"), "{e}");
        let c = load_str("[limiter]\nstore = \"redis\"\nredis_cluster = [\"redis://a:7000\", \"rediss://b:7000\"]\n");
        assert_eq!(
            c.limiter.store,
            StoreKind::RedisCluster { urls: vec!["redis://a:7000".into(), "rediss://b:7000".into()] }
        );
    }

    #[test]
    fn redis_url_must_use_a_redis_scheme() {
        let e = error("[limiter]\nstore = \"redis\"\nredis_url = \"http://:pw@127.0.0.1:6379\"\n");
        assert_eq!(e, "t.toml:3:13: limiter.redis_url: \"http://:***@127.0.0.1:6379\" is not a redis:// or rediss:// URL with a host");
        let e = error("[limiter]\nstore = \"redis\"\nredis_cluster = [\"redis://a\", \"tcp://b\"]\n");
        assert!(e.starts_with("t.toml:3:31: limiter.redis_cluster"), "{e}");
    }

    #[test]
    fn redis_sentinel_needs_its_master_and_excludes_the_other_stores() {
        let c = load_str(
            "[limiter]\nstore = \"redis\"\nredis_sentinel = [\"redis://s1:26379\", \"rediss://s2:26379\"]\n\
             redis_sentinel_master = \"main\"\nredis_sentinel_master_password = \"pw\"\n",
        );
        assert_eq!(
            c.limiter.store,
            StoreKind::RedisSentinel {
                sentinels: vec!["redis://s1:26379".into(), "rediss://s2:26379".into()],
                master: "main".into(),
                username: None,
                password: Some("pw".into()),
            }
        );
        let sentinel = "redis_sentinel = [\"redis://s1:26379\"]\n";
        let e = error(&format!("[limiter]\nstore = \"redis\"\n{sentinel}"));
        assert_eq!(
            e,
            "t.toml:3:18: limiter.redis_sentinel needs redis_sentinel_master, the name the sentinels know the primary by"
        );
        let e = error(&format!(
            "[limiter]\nstore = \"redis\"\nredis_url = \"redis://a\"\n{sentinel}redis_sentinel_master = \"m\"\n"
        ));
        assert_eq!(e, "t.toml:4:18: limiter: set exactly one of redis_url, redis_cluster or redis_sentinel");
        let e = error(&format!("[limiter]\n{sentinel}redis_sentinel_master = \"m\"\n"));
        assert!(e.starts_with("t.toml:2:18: limiter.redis_sentinel is set but store = \"memory\""), "{e}");
        let e = error("[limiter]\nstore = \"redis\"\nredis_url = \"redis://a\"\nredis_sentinel_master = \"m\"\n");
        assert!(e.starts_with("t.toml:4:25: limiter.redis_sentinel_master is set but redis_sentinel is not"), "{e}");
        let e = error("[limiter]\nstore = \"redis\"\nredis_sentinel = []\nredis_sentinel_master = \"m\"\n");
        assert!(e.starts_with("t.toml:3:18: limiter.redis_sentinel: must list at least one sentinel URL"), "{e}");
        let e = error("[limiter]\nstore = \"redis\"\nredis_sentinel = [\"s1:26379\"]\nredis_sentinel_master = \"m\"\n");
        assert!(e.starts_with("t.toml:3:19: limiter.redis_sentinel: \"s1:26379\" is not a redis://"), "{e}");
        let e = error(&format!("[limiter]\nstore = \"redis\"\n{sentinel}redis_sentinel_master = \" \"\n"));
        assert!(e.starts_with("t.toml:4:25: limiter.redis_sentinel_master: must not be empty"), "{e}");
    }

    #[test]
    fn invalid_cidr_is_an_error_and_a_plain_ip_is_accepted() {
        let e = error("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.300/32\"]\n");
        assert!(e.starts_with("t.toml:2:34: server.trusted_proxies: invalid CIDR \"10.0.0.300/32\""), "{e}");
        let c = load_str("[server]\ntrusted_proxies = [\"10.1.2.3\", \"::1\", \"192.168.1.7/16\"]\n");
        let nets: Vec<String> = c.server.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.1.2.3/32", "::1/128", "192.168.0.0/16"]);
    }

    #[test]
    fn negative_or_invalid_durations_are_errors() {
        let e = error("[upstream]\ntimeout_ms = -5\n");
        assert_eq!(e, "t.toml:2:14: upstream.timeout_ms: must be a positive number of milliseconds, got -5");
        let e = error("[limiter]\nrefused_credential_ttl_ms = -1\n");
        assert!(e.starts_with("t.toml:2:29: limiter.refused_credential_ttl_ms: must be a non-negative"), "{e}");
        let e = error("[limiter]\nrefused_credential_ttl_ms = 600001\n");
        assert!(e.starts_with("t.toml:2:29: limiter.refused_credential_ttl_ms: must be at most 600000"), "{e}");
        let e = error("[limiter]\nstore_timeout_ms = 0\n");
        assert!(e.starts_with("t.toml:2:20: limiter.store_timeout_ms"), "{e}");
        let e = error("[server]\nshutdown_grace_ms = \"30s\"\n");
        assert_eq!(
            e,
            "t.toml:2:21: `server.shutdown_grace_ms` must be an integer (milliseconds), found the string \"30s\""
        );
        assert_eq!(load_str("[server]\nshutdown_grace_ms = 0\n").server.shutdown_grace, Duration::ZERO);
    }

    #[test]
    fn empty_tenant_name_or_domain_is_an_error() {
        let e = error("[[tenant]]\nname = \"\"\ndomain = \"a.example.com\"\nplan = \"pro\"\n");
        assert_eq!(e, "t.toml:2:8: tenant name must not be empty");
        let e = error("[[tenant]]\nname = \"a\"\ndomain = \" \"\nplan = \"pro\"\n");
        assert_eq!(e, "t.toml:3:10: tenant \"a\": domain must not be empty");
        let e = error("[[tenant]]\nname = \"a\"\ndomain = \"https://a.example.com/\"\nplan = \"pro\"\n");
        assert!(e.starts_with("t.toml:3:10: tenant \"a\": invalid domain"), "{e}");
    }

    #[test]
    fn access_log_sampling_defaults_to_every_call_and_must_be_a_share() {
        assert_eq!(load_str("").access_log.sample_served, 1.0);
        assert_eq!(load_str("[access_log]\nsample_served = 0.25\n").access_log.sample_served, 0.25);
        assert_eq!(load_str("[access_log]\nsample_served = 0\n").access_log.sample_served, 0.0);
        let e = error("[access_log]\nsample_served = 1.5\n");
        assert_eq!(
            e,
            "t.toml:2:17: access_log.sample_served: must be a share from 0.0 (none) to 1.0 (every call), got 1.5"
        );
        let e = error("[access_log]\nsample_served = -0.1\n");
        assert!(e.starts_with("t.toml:2:17: access_log.sample_served"), "{e}");
        let e = error("[access_log]\nsample = 0.5\n");
        assert!(e.contains("sample"), "{e}");
    }

    #[test]
    fn webhooks_get_defaults_and_refuse_zero_retries_and_non_http_alert_urls() {
        let w = load_str("[webhooks]\n").webhooks.unwrap();
        assert_eq!(w.listen, "127.0.0.1:8082".parse().unwrap());
        assert_eq!(w.max_postpone, Duration::from_secs(86_400));
        assert_eq!(w.retry_schedule, [300, 1800, 3600].map(Duration::from_secs));
        assert_eq!(w.delivery_timeout, Duration::from_millis(10_000));
        assert_eq!(w.alert_url, None);
        assert_eq!(w.lease, Duration::from_millis(10_000));
        assert_eq!(w.max_queued_per_tenant, 10_000);
        let e = error("[webhooks]\nlease_ms = 100\n");
        assert_eq!(e, "t.toml:2:12: webhooks.lease_ms: must be at least 300 milliseconds, got 100");
        let e = error("[webhooks]\nmax_queued_per_tenant = 0\n");
        assert_eq!(e, "t.toml:2:25: webhooks.max_queued_per_tenant: must be a positive number of webhooks, got 0");
        let e = error("[webhooks]\nretry_schedule_s = [300, 0]\n");
        assert_eq!(e, "t.toml:2:26: webhooks.retry_schedule_s: must be a positive number of seconds, got 0");
        let e = error("[webhooks]\nalert_url = \"mailto:ops@example.com\"\n");
        assert!(e.starts_with("t.toml:2:13: webhooks.alert_url"), "{e}");
    }

    #[test]
    fn tenant_overrides_merge_key_by_key_with_the_plan() {
        let c = load_str(&format!(
            "{TENANT}per_minute = 450\nendpoints = {{ ticket_list = 150 }}\nwindow_seconds = 30\nshadow = true\n"
        ));
        let t = &c.tenants[0];
        assert_eq!(t.per_minute, 450);
        assert_eq!(t.endpoints, [Some(160), Some(160), Some(150), Some(100)]);
        assert_eq!(t.window_seconds, 30);
        assert!(t.shadow && t.api_access);
        let plain = load_str(TENANT);
        assert!(!plain.tenants[0].shadow);
        assert_eq!(plain.tenants[0].per_minute, 400);
    }

    #[test]
    fn holding_is_off_by_default_and_set_per_plan_or_tenant() {
        let plain = load_str(TENANT);
        assert_eq!((plain.tenants[0].max_wait, plain.tenants[0].max_held_calls), (Duration::ZERO, 100));
        let c = load_str(&format!(
            "[plans.paced]\nper_minute = 10\nmax_wait_ms = 2500\nmax_held_calls = 7\n\n{TENANT}\n\
             [[tenant]]\nname = \"b\"\ndomain = \"b.freshdesk.com\"\nplan = \"paced\"\n\n\
             [[tenant]]\nname = \"c\"\ndomain = \"c.freshdesk.com\"\nplan = \"paced\"\nmax_wait_ms = 0\nmax_held_calls = 1\n"
        ));
        let got: Vec<_> = c.tenants.iter().map(|t| (t.max_wait.as_millis(), t.max_held_calls)).collect();
        assert_eq!(got, [(0, 100), (2500, 7), (0, 1)]);
    }

    #[test]
    fn holding_limits_are_checked() {
        assert_eq!(
            error("[plans.x]\nper_minute = 5\nmax_wait_ms = -1\n"),
            "t.toml:3:15: plan \"x\": max_wait_ms: must be a non-negative number of milliseconds, got -1"
        );
        assert_eq!(
            error("[plans.x]\nper_minute = 5\nmax_wait_ms = 300001\n"),
            "t.toml:3:15: plan \"x\": max_wait_ms must be at most 300000 milliseconds, got 300001"
        );
        let e = error(&format!("{TENANT}max_held_calls = 0\n"));
        assert_eq!(e, "t.toml:5:18: tenant \"acme\": max_held_calls: must be a positive number of calls, got 0");
        let e = error(&format!("{TENANT}max_held_calls = 100001\n"));
        assert!(e.starts_with("t.toml:5:18: tenant \"acme\": max_held_calls must be at most 100000"), "{e}");
    }

    #[test]
    fn a_config_plan_replaces_the_builtin_as_a_whole() {
        let c = load_str(&with_tenant("[plans.pro]\nper_minute = 500\n"));
        let pro = &c.plans["pro"];
        assert_eq!((pro.per_minute, pro.endpoints, pro.api_access), (500, [None; 4], true));
        assert_eq!(c.tenants[0].endpoints, [None; 4]);
        assert_eq!(c.tenants[0].per_minute, 500);
        let c = load_str("[plans.sprout]\nper_minute = 10\nendpoints = { contact_list = 10 }\n");
        assert!(c.plans["sprout"].api_access);
        assert_eq!(c.plans["sprout"].endpoints[3], Some(10));
    }

    #[test]
    fn tenants_dir_files_are_read_in_name_order_relative_to_the_main_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "etc/gw.toml", &format!("tenants_dir = \"tenants\"\n{TENANT}"));
        let t = |n: &str| format!("[tenant]\nname = \"{n}\"\ndomain = \"{n}.freshdesk.com\"\nplan = \"trial\"\n");
        write(dir.path(), "etc/tenants/b.toml", &t("bravo"));
        write(dir.path(), "etc/tenants/a.toml", &t("alpha"));
        write(dir.path(), "etc/tenants/notes.txt", "not toml");
        write(dir.path(), "etc/tenants/.#a.toml", "garbage");
        let c = load(&main).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = c.tenants.iter().map(|t| &*t.name).collect();
        assert_eq!(names, ["acme", "alpha", "bravo"]);
        assert_eq!(c.files.len(), 3);
        assert_eq!(c.tenants_dir, Some(dir.path().join("etc/tenants")));
    }

    #[test]
    fn tenant_file_errors_point_at_the_tenant_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "gw.toml", &format!("tenants_dir = \"t.d\"\n{TENANT}"));
        write(
            dir.path(),
            "t.d/x.toml",
            "# x\n[tenant]\nname = \"x\"\ndomain = \"acme.freshdesk.com\"\nplan = \"pro\"\n",
        );
        let e = load(&main).unwrap_err();
        assert_eq!(e.path, dir.path().join("t.d/x.toml"));
        assert_eq!((e.line, e.col), (4, 10));
        assert!(e.msg.contains("already claimed by tenant \"acme\""), "{}", e.msg);

        write(
            dir.path(),
            "t.d/x.toml",
            "[tenant]\nname = \"x\"\ndomain = \"x.example.com\"\nplan = \"pro\"\nburst = 3\n",
        );
        let e = load(&main).unwrap_err();
        assert_eq!((e.path.file_name().unwrap().to_str(), e.line, e.col), (Some("x.toml"), 5, 1));
    }

    #[test]
    fn a_missing_tenants_dir_is_an_error_at_its_key() {
        let e = error("tenants_dir = \"nowhere\"\n");
        assert!(e.starts_with("t.toml:1:15: tenants_dir \"nowhere\": cannot read directory"), "{e}");
    }

    #[test]
    fn hosts_are_stored_lower_case_without_port_or_trailing_dot() {
        let c = load_str(
            "[[tenant]]\nname = \"acme\"\ndomain = \"ACME.Freshdesk.com.:443\"\nplan = \"pro\"\n\
             vanity_hosts = [\"Support.Acme.COM.\", \"help.acme.com:8080\"]\n",
        );
        assert_eq!(c.tenants[0].domain, "acme.freshdesk.com");
        assert_eq!(c.tenants[0].vanity_hosts, ["support.acme.com", "help.acme.com"]);
    }

    /// Whatever spelling the file uses, the host is stored as a request for
    /// any spelling of it is normalised (`tenant::normalize_host`), so the
    /// request finds its tenant.
    #[test]
    fn a_configured_host_is_stored_as_requests_for_it_are_normalised() {
        let spellings = [
            ("acme.freshdesk.com", "ACME.freshdesk.com:443"),
            ("ACME.Freshdesk.com.", "acme.freshdesk.com"),
            ("acme.freshdesk.com:8443", "Acme.Freshdesk.Com.:80"),
            (" acme.freshdesk.com ", "acme.freshdesk.com."),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]:443"),
        ];
        for (configured, requested) in spellings {
            let c = load_str(&format!("[[tenant]]\nname = \"acme\"\ndomain = \"{configured}\"\nplan = \"pro\"\n"));
            let stored = &c.tenants[0].domain;
            let asked = crate::tenant::normalize_host(requested).unwrap();
            assert_eq!(stored, &*asked, "configured {configured:?}, requested {requested:?}");
            assert_eq!(crate::tenant::normalize_host(stored).unwrap(), **stored, "{stored:?} is not a fixed point");
        }
        // A spelling requests are refused for is refused in the file too:
        // it would be stored as a host no request can reach.
        for configured in ["acme.freshdesk.com..", "acme.freshdesk.com:x", "user@acme.freshdesk.com", "a:b:80"] {
            let e = error(&format!("[[tenant]]\nname = \"acme\"\ndomain = \"{configured}\"\nplan = \"pro\"\n"));
            assert!(e.contains("invalid domain"), "{configured:?}: {e}");
        }
    }

    #[test]
    fn a_missing_required_tenant_key_is_an_error_at_its_table() {
        let e = error("[server]\n\n[[tenant]]\nname = \"acme\"\nplan = \"pro\"\n");
        assert_eq!(e, "t.toml:3:1: `tenant[0]` is missing the required key `domain`");
    }

    #[test]
    fn a_tenant_file_without_one_tenant_table_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "gw.toml", "tenants_dir = \"t.d\"\n");
        write(dir.path(), "t.d/x.toml", "# acme\nname = \"x\"\n");
        let e = load(&main).unwrap_err();
        assert!(e.msg.starts_with("no [tenant] table"), "{e}");
        write(dir.path(), "t.d/x.toml", "# acme\n[[tenant]]\nname = \"x\"\n");
        let e = load(&main).unwrap_err();
        assert_eq!((e.line, e.col), (2, 1));
        assert!(e.msg.contains("use [tenant], not [[tenant]]"), "{e}");
    }

    #[test]
    fn an_unreadable_file_is_an_error_without_a_position() {
        let e = load(Path::new("/nonexistent/deskgate.toml")).unwrap_err();
        assert_eq!((e.line, e.col), (0, 0));
        assert!(e.to_string().starts_with("/nonexistent/deskgate.toml: cannot read config file"), "{e}");
    }

    #[test]
    fn line_and_column_count_characters_from_one() {
        let text = "a\nbé = 1\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 2), (2, 1));
        assert_eq!(line_col(text, text.find('=').unwrap()), (2, 4));
    }

    #[test]
    fn the_indexed_line_lookup_agrees_with_a_plain_scan_everywhere() {
        let text = "x = 1\n\n[server]\nlisten = \"é:1\"\r\n  # ü\nlast".to_owned();
        let src = Source { path: PathBuf::from("t.toml"), text: text.clone(), line_starts: Default::default() };
        for offset in 0..=text.len() + 2 {
            assert_eq!(src.line_col(offset), line_col(&text, offset), "offset {offset}");
        }
    }

    #[test]
    fn a_single_bracket_tenant_after_double_bracket_ones_gets_the_hint() {
        let e = error(&format!("{TENANT}\n[tenant]\nname = \"b\"\n"));
        assert!(e.starts_with("t.toml:6:1: "), "{e}");
        assert!(e.ends_with("every tenant of the main file is its own [[tenant]] (double brackets)"), "{e}");
        let e = error("[tenant]\nname = \"b\"\ndomain = \"b.example.com\"\nplan = \"pro\"\n");
        assert!(
            e.starts_with("t.toml:1:1: `tenant`: the main file lists tenants as an array of tables: write [[tenant]]"),
            "{e}"
        );
    }

    #[test]
    fn independent_mistakes_in_different_sections_are_all_reported() {
        let e = error(
            "[server]\nmax_body_bytes = 0\n[upstream]\ntimeout_ms = -5\n[limiter]\nkey_prefix = \"\"\n\
             [[tenant]]\nname = \"a\"\ndomain = \"a.example.com\"\nplan = \"platinum\"\n\
             [[tenant]]\nname = \"b\"\ndomain = \"b.example.com\"\nplan = \"pro\"\nper_minute = 0\n",
        );
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 5, "{e}");
        for (line, at) in lines.iter().zip(["2:18", "4:14", "6:14", "10:8", "15:14"]) {
            assert!(
                line.starts_with(&format!("t.toml:{at}: ")) || line.contains(&format!("t.toml:{at}: ")),
                "{at}: {e}"
            );
        }
    }

    #[test]
    fn type_mistakes_in_one_table_are_each_named() {
        let e = error("[server]\nmax_body_bytes = \"20MB\"\nfast_path = \"yes\"\n");
        assert_eq!(
            e,
            "t.toml:2:18: `server.max_body_bytes` must be an integer (bytes), found the string \"20MB\"\n\
             t.toml:3:13: `server.fast_path` must be true or false, found the string \"yes\""
        );
    }

    #[test]
    fn the_redis_password_comes_from_a_file_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "secrets/pw", "s3cret\n");
        let main = write(
            dir.path(),
            "gw.toml",
            "[limiter]\nstore = \"redis\"\nredis_cluster = [\"redis://a:7000\", \"redis://b:7000\"]\n\
             redis_password_file = \"secrets/pw\"\n",
        );
        let c = load(&main).unwrap_or_else(|e| panic!("{e}"));
        let urls = vec!["redis://:s3cret@a:7000".to_owned(), "redis://:s3cret@b:7000".to_owned()];
        assert_eq!(c.limiter.store, StoreKind::RedisCluster { urls });
        assert_eq!(c.redis_password_from, Some(PasswordSource::File(dir.path().join("secrets/pw"))));
        assert!(!c.summary().contains("s3cret") && !c.redacted_json().to_string().contains("s3cret"));
        assert!(c.summary().contains("password from file"), "{}", c.summary());
    }

    #[test]
    fn redis_password_mistakes_are_errors_at_their_key() {
        let e = error("[limiter]\nstore = \"redis\"\nredis_url = \"redis://h\"\nredis_password_file = \"nope\"\n");
        assert!(e.starts_with("t.toml:4:23: limiter.redis_password_file: cannot read"), "{e}");
        let e = error(
            "[limiter]\nstore = \"redis\"\nredis_url = \"redis://h\"\nredis_password_env = \"DESKGATE_TEST_UNSET_VAR\"\n",
        );
        assert_eq!(
            e,
            "t.toml:4:22: limiter.redis_password_env: environment variable DESKGATE_TEST_UNSET_VAR is not set"
        );
        let e = error("[limiter]\nredis_password_env = \"X\"\nredis_password_file = \"y\"\n");
        assert!(e.starts_with("t.toml:2:22: limiter: set either redis_password_file or redis_password_env"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "pw", "x\n");
        let main = write(dir.path(), "gw.toml", "[limiter]\nredis_password_file = \"pw\"\n");
        let e = load(&main).unwrap_err();
        assert!(e.msg.contains("store = \"memory\""), "{e}");
    }

    #[test]
    fn a_redis_url_is_parsed_as_the_redis_client_parses_it() {
        let e = error("[limiter]\nstore = \"redis\"\nredis_url = \"redis://:pw@127.0.0.1:notaport/0\"\n");
        assert!(
            e.starts_with(
                "t.toml:3:13: limiter.redis_url: \"redis://:***@127.0.0.1:notaport/0\" is not a valid Redis URL"
            ),
            "{e}"
        );
        assert!(!e.contains(":pw@"), "{e}");
        let e = error("[limiter]\nstore = \"redis\"\nredis_cluster = [\"redis://a:7000\", \"redis://b:x\"]\n");
        assert!(e.starts_with("t.toml:3:36: limiter.redis_cluster: \"redis://b:x\" is not a valid Redis URL"), "{e}");
        load_str("[limiter]\nstore = \"redis\"\nredis_url = \"rediss://user:pw@[::1]:6380/3\"\n");
    }

    #[test]
    fn tls_and_ca_files_that_do_not_load_are_errors_at_their_key() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "junk.pem", "not a certificate\n");
        let main = write(dir.path(), "gw.toml", "[upstream]\nurl = \"https://h\"\nca_file = \"junk.pem\"\n");
        let e = load(&main).unwrap_err();
        assert_eq!((e.line, e.col), (3, 11), "{e}");
        assert!(e.msg.starts_with("upstream.ca_file: ") && e.msg.contains("no PEM certificate"), "{e}");
        let main = write(dir.path(), "gw.toml", "[server]\ntls = { cert = \"junk.pem\", key = \"junk.pem\" }\n");
        let e = load(&main).unwrap_err();
        assert_eq!((e.line, e.col), (2, 16), "{e}");
        assert!(e.msg.starts_with("server.tls: "), "{e}");
    }

    #[test]
    fn redacted_json_hides_redis_passwords() {
        let c = load_str("[limiter]\nstore = \"redis\"\nredis_url = \"redis://:s3cret@127.0.0.1:6379/0\"\n");
        let json = c.redacted_json().to_string();
        assert!(json.contains("redis://:***@127.0.0.1:6379/0"), "{json}");
        assert!(!json.contains("s3cret"));
        assert!(!c.summary().contains("s3cret"));
    }
}
