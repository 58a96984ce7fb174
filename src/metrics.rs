//! Every collector (docs/reference.md "Operations"), in one owned registry: no global state, so each
//! test and each gateway in a process has its own.
//!
//! Label values come only from config (tenant names, endpoint classes,
//! reasons): an unknown host is counted as `unknown`, never as the raw Host
//! header, so cardinality stays bounded by the config.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::endpoint::Endpoint;

mod helpdesk;
pub use helpdesk::{HelpdeskMetrics, TenantLabel};

/// A label value shared with the config (no copy per request).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub tenant: Name,
    pub endpoint: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantEndpoint {
    pub tenant: Name,
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantReason {
    pub tenant: Name,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantPolicy {
    pub tenant: Name,
    pub policy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: &'static str,
}

/// One tenant's series of the metrics every call touches, fetched from their
/// families at first use and then kept (with the config snapshot, one per
/// tenant): `Family::get_or_create` hashes the labels under a lock, three
/// times per call. Handles share their family's value, so the exposition is
/// the same. A reload builds new, empty ones; a handle that outlives its
/// tenant's removal only feeds a series no longer exposed.
#[derive(Debug, Default)]
pub struct TenantSeries {
    /// Whether this replica judged an API call of the tenant since start
    /// (carried over reloads): the tenants whose budgets a scrape reads.
    seen: AtomicBool,
    /// `deskgate_requests_total` with status 200, 201 and 429, per endpoint
    /// class (`other` last): nearly every answer, also under a flood. Other
    /// statuses take the family.
    answered: [[OnceLock<Counter>; 3]; Endpoint::CLASSIFIED + 1],
    /// `deskgate_rate_limited_total`, per endpoint class.
    limited: [OnceLock<Counter>; Endpoint::CLASSIFIED + 1],
    /// `deskgate_near_limit_total`: the account, then each endpoint class.
    near: [OnceLock<Counter>; 1 + Endpoint::CLASSIFIED],
    /// `deskgate_shadow_refusals_total`: the account, then each endpoint class.
    shadow: [OnceLock<Counter>; 1 + Endpoint::CLASSIFIED],
}

impl TenantSeries {
    /// Notes an API call of the tenant: a load, and one store the first time.
    pub fn mark_seen(&self) {
        if !self.seen.load(Ordering::Relaxed) {
            self.seen.store(true, Ordering::Relaxed);
        }
    }

    /// Whether an API call of the tenant was judged here (see `seen`).
    pub fn seen(&self) -> bool {
        self.seen.load(Ordering::Relaxed)
    }
}

/// The `tenant` label of series aggregated over tenants
/// (`[metrics] per_tenant = "limits_only"`): `*` is no tenant name (names
/// are letters, digits, `-`, `_` and `.`), so it cannot collide with one.
pub const ALL_TENANTS: &str = "*";

/// The `tenant` label of API calls to a host no tenant has.
pub use crate::config::UNKNOWN_TENANT;

/// The index of a policy in [`TenantSeries`]' per-policy arrays and its
/// `policy` label: the account (`None`) or an endpoint class's budget.
fn policy_slot(endpoint: Option<Endpoint>) -> (usize, &'static str) {
    match endpoint {
        None => (0, "account"),
        Some(e) => (e.index().map_or(0, |i| i + 1), e.as_str()),
    }
}

fn latency_histogram() -> Histogram {
    // 25 µs .. ~13 s: resolves sub-millisecond gateway overhead.
    Histogram::new(exponential_buckets(0.000_025, 2.0, 20))
}

/// The gateway's collectors.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub rate_limited: Family<TenantEndpoint, Counter>,
    pub rejected: Family<TenantReason, Counter>,
    /// `deskgate_refunds_total{tenant,reason}`: calls whose charge was given
    /// back (`upstream_401`, `upstream_unreachable`).
    pub refunds: Family<TenantReason, Counter>,
    /// Arrival → response headers (`{endpoint}` exactly as docs/reference.md "Operations" lists it).
    /// `deskgate_request_duration_seconds` and `..._overhead_seconds` (the
    /// part the gateway added: total minus the upstream wait) of each endpoint
    /// class, by [`Metrics::call_histograms`]. Fetched from their families once:
    /// `Family::get_or_create` hashes the labels under a lock every time.
    call_histograms: [(Histogram, Histogram); 5],
    pub upstream_duration: Histogram,
    upstream_errors: Family<KindLabel, Counter>,
    pub store_duration: Histogram,
    pub store_errors: Counter,
    /// `deskgate_budget_remaining` and `deskgate_budget_limit`: written by
    /// each scrape from the store's windows (`scrape`), not by calls.
    pub budget_remaining: Family<TenantPolicy, Gauge>,
    pub budget_limit: Family<TenantPolicy, Gauge>,
    /// `deskgate_shadow_refusals_total{tenant,policy}`: calls of shadow
    /// tenants forwarded that would have been answered 429.
    shadow_refusals: Family<TenantPolicy, Counter>,
    /// `deskgate_near_limit_total{tenant,policy}`: calls admitted with under
    /// a tenth of a budget left.
    near_limit: Family<TenantPolicy, Counter>,
    /// `deskgate_store_up`: set at scrape time.
    pub store_up: Gauge,
    /// `deskgate_calls_in_flight`: API and portal calls between their head
    /// and their answer's head, on either path.
    pub calls_in_flight: Gauge,
    /// `deskgate_connections_open`: downstream connections of the API
    /// listener, on either path.
    pub connections_open: Gauge,
    /// The label values every call may need, built once.
    all_tenants: Name,
    unknown_tenant: Name,
    /// One scrape at a time writes the budget gauges and encodes them.
    pub scrape_lock: std::sync::Mutex<()>,
    pub config_reloads: Family<ResultLabel, Counter>,
    /// `deskgate_config_last_reload_successful` and its timestamp.
    last_reload: Gauge,
    last_reload_at: Gauge,
    /// Tasks alive in the runtime, read at scrape time: connections,
    /// pooled upstream connections, background work. A leak shows as growth.
    runtime_tasks: Gauge,
    /// The process series, read at scrape time.
    process: Process,
    /// What the helpdesk's own limit headers did (`reconcile`).
    pub helpdesk: HelpdeskMetrics,
}

/// The process series operators expect beside any exporter's (the names of
/// Prometheus's own client libraries), read from `/proc/self` at scrape
/// time; absent files (not Linux) leave them at 0.
struct Process {
    cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// CPU seconds already added to `cpu_seconds`.
    cpu_seen: std::sync::Mutex<f64>,
    resident_bytes: Gauge,
    open_fds: Gauge,
    started_s: i64,
}

impl Process {
    fn register(registry: &mut Registry) -> Process {
        let p = Process {
            cpu_seconds: Counter::default(),
            cpu_seen: std::sync::Mutex::new(0.0),
            resident_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            started_s: unix_now_s(),
        };
        let start = Gauge::<i64>::default();
        start.set(p.started_s);
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            p.cpu_seconds.clone(),
        );
        registry.register("process_resident_memory_bytes", "Resident memory size in bytes", p.resident_bytes.clone());
        registry.register("process_open_fds", "Number of open file descriptors", p.open_fds.clone());
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            start,
        );
        p
    }

    fn read(&self) {
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces, inside parentheses).
            let fields: Vec<&str> =
                stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
            // utime and stime are fields 14 and 15 of the line: 12 and 13 after `)`.
            let ticks: f64 = fields.get(11..13).map_or(0.0, |t| t.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
            // Linux reports in USER_HZ, 100 on every architecture it runs on.
            let cpu = ticks / 100.0;
            let mut seen = self.cpu_seen.lock().unwrap_or_else(|e| e.into_inner());
            if cpu > *seen {
                self.cpu_seconds.inc_by(cpu - *seen);
                *seen = cpu;
            }
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok());
            if let Some(kib) = kib {
                self.resident_bytes.set(kib.saturating_mul(1024));
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(i64::try_from(fds.count()).unwrap_or(i64::MAX));
        }
    }
}

fn unix_now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let rate_limited = Family::<TenantEndpoint, Counter>::default();
        let rejected = Family::<TenantReason, Counter>::default();
        let refunds = Family::<TenantReason, Counter>::default();
        let request_duration =
            Family::<EndpointLabel, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let request_overhead =
            Family::<EndpointLabel, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let upstream_duration = latency_histogram();
        let upstream_errors = Family::<KindLabel, Counter>::default();
        let store_duration = latency_histogram();
        let store_errors = Counter::default();
        let budget_remaining = Family::<TenantPolicy, Gauge>::default();
        let budget_limit = Family::<TenantPolicy, Gauge>::default();
        let shadow_refusals = Family::<TenantPolicy, Counter>::default();
        let near_limit = Family::<TenantPolicy, Counter>::default();
        let store_up = Gauge::default();
        let calls_in_flight = Gauge::default();
        let connections_open = Gauge::default();
        let config_reloads = Family::<ResultLabel, Counter>::default();
        let build_info = Family::<VersionLabel, Gauge>::default();
        // Series of closed label sets start at 0, so `increase()` sees their first event.
        for result in ["success", "failure"] {
            let _ = config_reloads.get_or_create(&ResultLabel { result });
        }
        for kind in crate::upstream::UpstreamError::ALL {
            let _ = upstream_errors.get_or_create(&KindLabel { kind: kind.kind() });
        }
        build_info.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION") }).set(1);
        let call_histograms = [
            Endpoint::TicketCreate,
            Endpoint::TicketUpdate,
            Endpoint::TicketList,
            Endpoint::ContactList,
            Endpoint::Other,
        ]
        .map(|e| {
            let label = EndpointLabel { endpoint: e.as_str() };
            (request_duration.get_or_create(&label).clone(), request_overhead.get_or_create(&label).clone())
        });

        // prometheus-client appends `_total` to counters itself.
        registry.register("deskgate_requests", "API calls answered, by tenant, endpoint and status", requests.clone());
        registry.register("deskgate_rate_limited", "Calls refused with 429", rate_limited.clone());
        registry.register(
            "deskgate_rejected",
            "API calls answered with an error other than 429 (refusals, upstream failures), by reason",
            rejected.clone(),
        );
        registry.register(
            "deskgate_refunds",
            "API calls whose charge was given back: the helpdesk answered 401 (upstream_401) or was never reached (upstream_unreachable), by tenant and reason",
            refunds.clone(),
        );
        // Two families rather than one with a `kind` label: docs/reference.md "Operations" fixes the
        // labels of `deskgate_request_duration_seconds` to `{endpoint}`, and a
        // `kind` label would make `sum(rate(..._count))` count every call twice.
        registry.register(
            "deskgate_request_duration_seconds",
            "API calls: time from arrival to response headers (total), by endpoint",
            request_duration.clone(),
        );
        registry.register(
            "deskgate_request_overhead_seconds",
            "API calls: the part of deskgate_request_duration_seconds added by the gateway (total minus the upstream wait), by endpoint",
            request_overhead.clone(),
        );
        registry.register(
            "deskgate_upstream_duration_seconds",
            "Time waiting for upstream response headers",
            upstream_duration.clone(),
        );
        registry.register("deskgate_upstream_errors", "Failed upstream exchanges, by kind", upstream_errors.clone());
        registry.register("deskgate_store_duration_seconds", "Rate-limit store call latency", store_duration.clone());
        registry.register(
            "deskgate_store_errors",
            "Rate-limit store calls that failed or timed out",
            store_errors.clone(),
        );
        registry.register(
            "deskgate_budget_remaining",
            "Credits left in the tenant's window of the policy at scrape time (tenants with a call since start)",
            budget_remaining.clone(),
        );
        registry.register(
            "deskgate_budget_limit",
            "Credits the policy allows per window, beside each deskgate_budget_remaining",
            budget_limit.clone(),
        );
        registry.register(
            "deskgate_shadow_refusals",
            "Calls of shadow tenants forwarded that would have been answered 429, by tenant and the refusing policy",
            shadow_refusals.clone(),
        );
        registry.register(
            "deskgate_near_limit",
            "Calls admitted with under 10% of a budget left after them, by tenant and policy",
            near_limit.clone(),
        );
        registry.register(
            "deskgate_store_up",
            "Whether the rate-limit store answers (1) or not (0: disconnected, circuit open or the background probe failing)",
            store_up.clone(),
        );
        registry.register(
            "deskgate_calls_in_flight",
            "Calls received whose answer head is not yet written",
            calls_in_flight.clone(),
        );
        registry.register(
            "deskgate_connections_open",
            "Downstream connections open on the API listener",
            connections_open.clone(),
        );
        registry.register("deskgate_config_reloads", "Config reloads, by result", config_reloads.clone());
        registry.register("deskgate_build_info", "Build information", build_info);
        let runtime_tasks = Gauge::default();
        registry.register("deskgate_runtime_alive_tasks", "Tokio tasks alive at scrape time", runtime_tasks.clone());
        let process = Process::register(&mut registry);
        let helpdesk = HelpdeskMetrics::register(&mut registry);
        let last_reload = Gauge::default();
        let last_reload_at = Gauge::default();
        // The config loaded at start counts as the last successful load.
        last_reload.set(1);
        last_reload_at.set(process.started_s);
        registry.register(
            "deskgate_config_last_reload_successful",
            "Whether the last config reload succeeded (1) or failed and the previous config stays in force (0)",
            last_reload.clone(),
        );
        registry.register(
            "deskgate_config_last_reload_success_timestamp_seconds",
            "When the config in force was loaded (Unix time)",
            last_reload_at.clone(),
        );

        Metrics {
            registry,
            requests,
            rate_limited,
            rejected,
            refunds,
            call_histograms,
            upstream_duration,
            upstream_errors,
            store_duration,
            store_errors,
            budget_remaining,
            budget_limit,
            shadow_refusals,
            near_limit,
            store_up,
            calls_in_flight,
            connections_open,
            all_tenants: Name(Arc::from(ALL_TENANTS)),
            unknown_tenant: Name(Arc::from(UNKNOWN_TENANT)),
            scrape_lock: std::sync::Mutex::new(()),
            config_reloads,
            last_reload,
            last_reload_at,
            runtime_tasks,
            process,
            helpdesk,
        }
    }

    /// Records a reload's outcome: the counter by result, and the gauges an
    /// alert reads (`deskgate_config_last_reload_successful == 0`).
    pub fn count_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.config_reloads.get_or_create(&ResultLabel { result }).inc();
        self.last_reload.set(i64::from(success));
        if success {
            self.last_reload_at.set(unix_now_s());
        }
    }

    /// Counts one answer of `status` to a call of `tenant` to `endpoint`.
    pub fn count_answer(&self, series: Option<&TenantSeries>, tenant: &Name, endpoint: Endpoint, status: u16) {
        let labels = || RequestLabels { tenant: tenant.clone(), endpoint: endpoint.as_str(), status };
        let e = endpoint.index().unwrap_or(Endpoint::CLASSIFIED);
        let kept = match status {
            200 => Some(0),
            201 => Some(1),
            429 => Some(2),
            _ => None,
        };
        match (series, kept) {
            (Some(series), Some(i)) => {
                series.answered[e][i].get_or_init(|| self.requests.get_or_create(&labels()).clone()).inc();
            }
            _ => {
                self.requests.get_or_create(&labels()).inc();
            }
        }
    }

    /// Counts one 429 to a call of `tenant` to `endpoint`.
    pub fn count_rate_limited(&self, series: Option<&TenantSeries>, tenant: &Name, endpoint: Endpoint) {
        let labels = || TenantEndpoint { tenant: tenant.clone(), endpoint: endpoint.as_str() };
        match series {
            Some(series) => series.limited[endpoint.index().unwrap_or(Endpoint::CLASSIFIED)]
                .get_or_init(|| self.rate_limited.get_or_create(&labels()).clone())
                .inc(),
            None => self.rate_limited.get_or_create(&labels()).inc(),
        };
    }

    /// The `tenant` label of the unknown-host bucket.
    pub fn unknown_tenant(&self) -> &Name {
        &self.unknown_tenant
    }

    /// The `tenant` label of series aggregated over tenants.
    pub fn all_tenants(&self) -> &Name {
        &self.all_tenants
    }

    /// Counts a call admitted with under a tenth of `tenant`'s account
    /// budget (`endpoint` `None`) or its budget for `endpoint` left.
    pub fn count_near_limit(&self, series: Option<&TenantSeries>, tenant: &Name, endpoint: Option<Endpoint>) {
        self.per_policy(&self.near_limit, series.map(|s| &s.near), tenant, endpoint);
    }

    /// Counts a shadow tenant's call forwarded that `endpoint`'s budget
    /// (`None`: the account's) would have refused.
    pub fn count_shadow_refusal(&self, series: Option<&TenantSeries>, tenant: &Name, endpoint: Option<Endpoint>) {
        self.per_policy(&self.shadow_refusals, series.map(|s| &s.shadow), tenant, endpoint);
    }

    fn per_policy(
        &self,
        family: &Family<TenantPolicy, Counter>,
        kept: Option<&[OnceLock<Counter>; 1 + Endpoint::CLASSIFIED]>,
        tenant: &Name,
        endpoint: Option<Endpoint>,
    ) {
        let (i, policy) = policy_slot(endpoint);
        let labels = || TenantPolicy { tenant: tenant.clone(), policy };
        match kept {
            Some(kept) => kept[i].get_or_init(|| family.get_or_create(&labels()).clone()).inc(),
            None => family.get_or_create(&labels()).inc(),
        };
    }

    /// Counts one failed upstream exchange (or stalled request body) of kind `e`.
    pub fn count_upstream_error(&self, e: crate::upstream::UpstreamError) {
        self.upstream_errors.get_or_create(&KindLabel { kind: e.kind() }).inc();
    }

    /// The total and gateway-added time histograms of `endpoint`.
    pub fn call_histograms(&self, endpoint: Endpoint) -> &(Histogram, Histogram) {
        &self.call_histograms[endpoint.index().unwrap_or(Endpoint::CLASSIFIED)]
    }

    /// For collectors owned elsewhere (`webhooks::WebhookMetrics::register`),
    /// so one `/metrics` exposition holds them all. Call before sharing.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The classic Prometheus text format (version 0.0.4) of every
    /// collector: [`Metrics::encode`]'s OpenMetrics text, with a counter's
    /// `HELP` and `TYPE` under the name its samples carry (`…_total`, where
    /// OpenMetrics names the family without it) and no `# EOF`. Read as
    /// OpenMetrics by a classic parser, the counters would have no help or
    /// type (`promtool check metrics` says so, and Prometheus files their
    /// metadata under a name no sample has).
    pub fn encode_classic(&self) -> String {
        classic(&self.encode())
    }

    /// The OpenMetrics text exposition of every collector.
    pub fn encode(&self) -> String {
        self.process.read();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.runtime_tasks.set(i64::try_from(rt.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
        }
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}
/// OpenMetrics text → the classic text format (see [`Metrics::encode_classic`]).
fn classic(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    // A family's `# HELP` comes before its `# TYPE`: held until the type says
    // whether the name takes `_total`.
    let mut help: Option<&str> = None;
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some(held) = help.replace(rest) {
                let _ = writeln!(out, "# HELP {held}");
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let total = if kind == "counter" && !name.ends_with("_total") { "_total" } else { "" };
            if let Some(held) = help.take() {
                let (help_name, text) = held.split_once(' ').unwrap_or((held, ""));
                let help_total = if help_name == name { total } else { "" };
                let _ = writeln!(out, "# HELP {help_name}{help_total} {text}");
            }
            let _ = writeln!(out, "# TYPE {name}{total} {kind}");
            continue;
        }
        if let Some(held) = help.take() {
            let _ = writeln!(out, "# HELP {held}");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A gauge raised while this lives (calls or connections in flight): two
/// atomic adds, whatever ends the work, a cancelled future included.
pub struct Held<'a>(&'a Gauge);

impl<'a> Held<'a> {
    pub fn new(gauge: &'a Gauge) -> Held<'a> {
        gauge.inc();
        Held(gauge)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
