//! One call, one straight line (docs/reference.md "Request order"). Every call, whichever transport
//! carries it, is served by `serve_call`: request id → `decide` (steps
//! 1–9) → forwarding → the timed exchange with the upstream → an upstream
//! error becomes a refusal → the answer or the refusal is written, with
//! `finish` adding the gateway's fields and counting, once; then the call's
//! one access-log line (`access_log`).
//!
//! How a call's bytes move is the transport's business, behind `Wire`:
//! the fast path's raw HTTP/1.1 (`fast`) and hyper's server and client
//! (`hyper_wire`). The lifecycle never asks which one it runs on.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::access_log::{self, Refused, Target};
use crate::config::PerTenant;
use crate::config::{Config, Tenant};
use crate::endpoint::{self, Endpoint};
use crate::fields::Fields;
use crate::head::names::{AUTHORIZATION, HOST, X_FORWARDED_PROTO, X_REQUEST_ID};
use crate::head::{self, RequestFields, RequestHead, RequestId};
use crate::hold::Held;
use crate::limiter::{Ask, Decision, PolicyState, StoreUnavailable};
use crate::metrics::{Held as Gauged, Metrics, Name, TenantReason, TenantSeries};
use crate::reconcile::{self, HelpdeskView};
use crate::reject::Reject;
use crate::state::{Shared, Snapshot};
use crate::tenant::{self, HostEntry};
use crate::upstream::reported::Reported;
use crate::upstream::{Forwarding, UpstreamError};
use crate::{checks, headers};

/// What the server knows about the downstream connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The connection itself is TLS.
    pub tls: bool,
}

/// How one call's bytes move, for a transport: read the head, exchange the
/// call with the upstream, write the answer or a refusal downstream.
pub(crate) trait Wire {
    /// The request head, as the transport read it.
    type Head: RequestHead;
    /// An upstream answer whose head has arrived (its body not yet relayed).
    type Answer;
    /// What serving the call gives back to the transport.
    type Output;
    /// Where the gateway's own answer fields are written.
    type Fields: Fields;

    fn head(&self) -> &Self::Head;

    /// Whether the request carries a body (declared, or h2 data frames).
    fn body_present(&self) -> bool;

    /// The call's `Authorization` value, also once the exchange has taken
    /// the head (to remember a credential the upstream refused).
    fn credential(&self) -> Option<&[u8]> {
        self.head().first(&AUTHORIZATION)
    }

    /// The request as the access log shows it, also once the exchange has
    /// taken the head: the method, the path and the host that arrived.
    fn target(&self) -> Target<'_> {
        let h = self.head();
        Target { method: h.method(), path: h.path(), host: h.authority().map(str::as_bytes).or_else(|| h.first(&HOST)) }
    }

    /// Sends the judged call upstream as `fwd` says and waits for the
    /// answer's head, within the upstream timeout.
    async fn exchange(&mut self, fwd: &Forwarding<'_>) -> Result<Self::Answer, UpstreamError>;

    fn status(answer: &Self::Answer) -> u16;

    /// Whether the upstream's answer carries its own `X-Request-Id`.
    fn answer_has_request_id(answer: &Self::Answer) -> bool;

    /// What the helpdesk's answer says about the account's budget.
    fn reported(answer: &Self::Answer) -> Reported;

    /// Writes the upstream's answer downstream, with the fields `ours` sets.
    async fn answer(&mut self, answer: Self::Answer, ours: impl FnOnce(&mut Self::Fields)) -> Self::Output;

    /// Writes a refusal downstream, with the fields `ours` sets.
    async fn refuse(&mut self, reject: Reject, ours: impl FnOnce(&mut Self::Fields)) -> Self::Output;

    /// Resolves once the client is known to have left, for a call held
    /// waiting for room (`hold`). By default never: hyper drops the call's
    /// future itself when its connection closes.
    async fn client_gone(&self) {
        std::future::pending::<()>().await
    }
}

/// Serves one call, whatever carries it. Never fails: every refusal becomes
/// an answer.
pub(crate) async fn serve_call<W: Wire>(shared: &Shared, conn: ConnInfo, wire: &mut W) -> W::Output {
    let snap = shared.snapshot.load_full();
    let _in_flight = Gauged::new(&shared.metrics.calls_in_flight);
    let mut cx = Call::new(RequestId::of(wire.head()));
    cx.aggregate = snap.config.metrics.per_tenant == PerTenant::LimitsOnly;
    let gone = || wire.client_gone();
    let answer = match decide(shared, &snap, conn, &mut cx, wire.head(), wire.body_present(), gone).await {
        Ok(mut plan) => {
            let cfg = &snap.config;
            let start = Instant::now();
            let answer = wire.exchange(&plan.forwarding(cfg, conn, &cx.request_id)).await;
            let waited = start.elapsed();
            cx.upstream = Some(waited);
            shared.metrics.upstream_duration.observe(waited.as_secs_f64());
            // What is charged (README, "What is charged"): a call the helpdesk
            // refused as unauthenticated, or never received, is given back.
            // A timeout or a broken answer stays charged: the helpdesk may
            // have counted it.
            let refund = match &answer {
                Ok(a) if W::status(a) == 401 => Some("upstream_401"),
                Err(UpstreamError::Connect) => Some("upstream_unreachable"),
                _ => None,
            };
            if let Some(reason) = refund {
                give_back(shared, cfg, &mut cx, &plan, wire.credential(), reason).await;
            }
            if let (Ok(a), Some(tenant)) = (&answer, plan.tenant.as_deref()) {
                if W::status(a) == 429 {
                    reconcile::count_upstream_429(&shared.metrics, tenant);
                }
            }
            // `Some` only with `trust_upstream_limits`: otherwise one branch.
            if let (Ok(a), Some(view), Some(tenant)) = (&answer, cx.helpdesk.as_deref(), plan.tenant.as_deref()) {
                let answered =
                    reconcile::Answered { status: W::status(a), reported: W::reported(a), at: start + waited };
                if let Some(how) = reconcile::read_answer(&shared.metrics, tenant, view, &mut cx.decision, answered) {
                    reconcile::charge(&shared.limiter, &shared.metrics, tenant, how).await;
                }
            }
            // Moved, not copied: the access log shows the path that was sent.
            cx.forwarded_path = plan.path.take();
            answer.map_err(|e| {
                cx.upstream_error = Some(e.kind());
                shared.metrics.count_upstream_error(e);
                Reject::for_upstream(
                    e,
                    shared.upstream.timeout(),
                    cfg.server.max_body_bytes,
                    cfg.server.header_read_timeout,
                )
            })
        }
        Err(reject) => Err(reject),
    };
    let mut total = Duration::ZERO;
    let (output, status, refused) = match answer {
        Ok(answer) => {
            let status = W::status(&answer);
            // The upstream's own id reaches the client; ours only where it sent none.
            let own_id = !W::answer_has_request_id(&answer);
            let output = wire.answer(answer, |h| total = finish(shared, &cx, status, own_id, h)).await;
            (output, status, None)
        }
        Err(reject) => {
            cx.reject = Some(reject.code());
            let refused = Refused { upstream_error: cx.upstream_error, ..Refused::of(&reject) };
            let status = reject.status().as_u16();
            let output = wire.refuse(reject, |h| total = finish(shared, &cx, status, true, h)).await;
            (output, status, Some(refused))
        }
    };
    // After the answer, where the head can be read again (the wire holds it
    // while it writes). A served call that is not logged costs this branch.
    if access_log::wanted(refused.is_some(), snap.config.access_log.sample_served) {
        log_call(&cx, conn, wire.target(), status, total, refused);
    }
    output
}

/// The call's access-log line (`access_log`).
fn log_call(cx: &Call, conn: ConnInfo, target: Target<'_>, status: u16, total: Duration, refused: Option<Refused>) {
    let decision = cx.decision.as_ref();
    access_log::write(&access_log::Line {
        request_id: cx.request_id.as_str(),
        api: cx.api,
        // An API call whose host led to no tenant is `unknown`, as it is counted.
        tenant: cx.api.then(|| cx.tenant.as_ref().map_or("unknown", |t| &*t.name)),
        endpoint: cx.api.then(|| cx.endpoint.as_str()),
        target,
        forwarded_path: cx.forwarded_path.as_deref(),
        client: conn.peer,
        status,
        cost: decision.map(Decision::charged),
        remaining: decision.map(|d| d.account.remaining),
        upstream_status: refused.is_none().then_some(status).filter(|_| cx.upstream.is_some()),
        upstream: cx.upstream,
        total,
        refused,
    });
}

/// Gives back what an API call was charged (`reason`: why, for the metric),
/// so its answer shows the refunded budget; after an upstream 401, also
/// remembers the credential as refused (answered 401 here for
/// `refused_credential_ttl_ms`). Rare: costs one store call, only here.
async fn give_back(
    shared: &Shared,
    cfg: &Config,
    cx: &mut Call,
    plan: &Plan,
    credential: Option<&[u8]>,
    reason: &'static str,
) {
    // Portal traffic is neither charged nor policed.
    let Some(tenant) = plan.tenant.as_ref() else { return };
    if reason == "upstream_401" {
        if let Some(credential) = credential {
            shared.limiter.remember_refused_credential(&tenant.name, credential, cfg.limiter.refused_credential_ttl);
        }
    }
    let Some(charged) = cx.decision else { return };
    if let Some(after) = shared.limiter.refund(&Ask::new(tenant, cx.endpoint, charged.cost), &charged).await {
        cx.decision = Some(after);
        let tenant = if cx.aggregate { shared.metrics.all_tenants().clone() } else { Name(tenant.name.clone()) };
        shared.metrics.refunds.get_or_create(&TenantReason { tenant, reason }).inc();
    }
}

/// Whether `req`'s credential is one the helpdesk refused for `tenant` a
/// moment ago. While none is remembered this is one atomic load.
fn credential_refused(shared: &Shared, tenant: &Tenant, req: &impl RequestFields) -> bool {
    shared.limiter.remembers_refused_credentials()
        && req.first(&AUTHORIZATION).is_some_and(|v| shared.limiter.credential_refused(&tenant.name, v, Instant::now()))
}

/// What the single exit needs to know about one call.
struct Call {
    start: Instant,
    request_id: RequestId,
    /// `false` for portal (non-API) traffic, which is forwarded unpoliced.
    api: bool,
    tenant: Option<Arc<Tenant>>,
    /// The tenant's metric series, with `tenant`.
    series: Option<Arc<TenantSeries>>,
    /// The helpdesk's numbers for the tenant, when it trusts them.
    helpdesk: Option<Arc<HelpdeskView>>,
    endpoint: Endpoint,
    decision: Option<Decision>,
    /// Time spent waiting for the upstream's response headers.
    upstream: Option<Duration>,
    reject: Option<&'static str>,
    /// Why the exchange with the upstream failed, if it did.
    upstream_error: Option<&'static str>,
    /// The normalised path sent upstream, when it differs from the one received.
    forwarded_path: Option<String>,
    /// A shadow tenant's call: its answer shows no remaining budget or wait.
    shadow: bool,
    /// Forwarded although its budget refused it (a shadow tenant's).
    shadow_refused: bool,
    /// Passed every check and its budget: forwarded as an API call.
    admitted: bool,
    /// `[metrics] per_tenant = "limits_only"`: requests, rejections and
    /// refunds are counted under `tenant="*"`.
    aggregate: bool,
}

impl Call {
    /// Marks the call as an API call, counted and logged under the tenant
    /// its host leads to (a vanity host's tenant too: the name comes from
    /// config), or `unknown`.
    fn api_call(&mut self, host: Option<&HostEntry>) {
        self.api = true;
        if let Some(e) = host {
            e.series.mark_seen();
            self.tenant = Some(e.tenant.clone());
            self.series = Some(e.series.clone());
            if e.tenant.trust_upstream_limits {
                self.helpdesk = Some(e.helpdesk.clone());
            }
        }
    }

    fn new(request_id: RequestId) -> Call {
        Call {
            start: Instant::now(),
            request_id,
            api: false,
            tenant: None,
            series: None,
            helpdesk: None,
            endpoint: Endpoint::Other,
            decision: None,
            upstream: None,
            reject: None,
            upstream_error: None,
            forwarded_path: None,
            shadow: false,
            shadow_refused: false,
            admitted: false,
            aggregate: false,
        }
    }
}

/// Where a call that passed every check goes (step 10).
struct Plan {
    https: bool,
    /// The tenant it was charged to; `None` for portal traffic.
    tenant: Option<Arc<Tenant>>,
    /// A portal page asked for with an authority (absolute form, h2's
    /// `:authority`): the host it was judged by, which the upstream is told
    /// (RFC 9112 §3.2.2), not a `Host` field that disagrees or is missing.
    authority: Option<String>,
    /// The normalised path, when it differs from the one received.
    path: Option<String>,
}

impl Plan {
    fn forwarding<'a>(&'a self, cfg: &Config, conn: ConnInfo, request_id: &'a RequestId) -> Forwarding<'a> {
        Forwarding {
            peer: conn.peer,
            https: self.https,
            peer_trusted: is_trusted(cfg, conn.peer),
            host: self.tenant.as_ref().map(|t| &*t.domain).or(self.authority.as_deref()),
            path: self.path.as_deref(),
            request_id,
            max_body_bytes: cfg.server.max_body_bytes,
            body_idle: cfg.server.header_read_timeout,
        }
    }
}

/// Steps 1–9 on the request head. Every `?` is a refusal that consumes
/// nothing (but see `charge_invalid`). `gone` is the wire's
/// [`Wire::client_gone`], asked for only if the call is held.
async fn decide<G: Future<Output = ()>>(
    shared: &Shared,
    snap: &Snapshot,
    conn: ConnInfo,
    cx: &mut Call,
    req: &impl RequestHead,
    body_present: bool,
    gone: impl FnOnce() -> G,
) -> Result<Plan, Reject> {
    let cfg = &*snap.config;
    // Refused whatever the path: what no upstream should be left to make
    // sense of, API call or portal page. Counted under the tenant its host
    // names, if it names one, before the path is even read.
    let early = checks::request_form(req).and_then(|()| checks::framing_and_connection(req));
    // RFC 9112 §3.2: no `Host`, two, or a malformed one is 400 on any path.
    let host = match (early, tenant::requested_host(req)) {
        (Ok(()), Ok(host)) => host,
        (Err(reject), host) => {
            if let Some(entry) = host.ok().and_then(|h| snap.hosts.get(&*h)) {
                cx.api_call(Some(entry));
            }
            return Err(reject);
        }
        // No tenant to count it for.
        (Ok(()), Err(reject)) => return Err(reject),
    };
    let https = is_https(cfg, conn, req);
    // Any spelling that cannot be normalised safely is 400, whatever it
    // spells: a server behind us might read an API call into it. `Some`
    // only when normalisation changed the spelling (the common case
    // allocates nothing).
    let normalized = match endpoint::normalize_path(req.path()) {
        Ok(Cow::Owned(s)) => Some(s),
        Ok(Cow::Borrowed(_)) => None,
        Err(e) => {
            // Refused as the API call it may be.
            cx.api_call(snap.hosts.get(&*host));
            return Err(e.into());
        }
    };
    let path = normalized.as_deref().unwrap_or(req.path());
    if !endpoint::is_api(path) {
        if endpoint::names_api(path) {
            // `/api;x/v2/tickets`: servers that strip `;` parameters route an
            // API call. Refused as one.
            cx.api_call(snap.hosts.get(&*host));
            return Err(Reject::BadRequest {
                field: "path",
                message: "Path parameters (`;`) are not accepted in API paths.".to_owned(),
            });
        }
        // The portal is forwarded untouched, except a spelling that mentions
        // the API but normalises outside it (`/api/v2/../../x`): the upstream
        // gets the normalised path, so it cannot read an API call into it.
        let path = normalized.filter(|_| req.path().to_ascii_lowercase().contains("api"));
        let authority = req.authority().map(str::to_owned);
        return Ok(Plan { https, tenant: None, authority, path });
    }
    let entry = snap.hosts.get(&*host);
    cx.api_call(entry);
    let tenant = tenant::resolve(entry)?.clone(); // 1
    cx.shadow = tenant.shadow;
    if cfg.server.require_https && !https {
        return Err(Reject::SslRequired); // 2
    }
    if !tenant.api_access {
        return Err(Reject::RequireFeature { plan: tenant.plan.clone() }); // 3
    }
    if endpoint::has_params(path) {
        return Err(Reject::BadRequest {
            field: "path",
            message: "Path parameters (`;`) are not accepted in API paths.".to_owned(),
        });
    }
    let route = endpoint::classify(req.method(), path, req.query()).map(|r| (r.endpoint, r.cost)).map_err(Reject::from); // 4
    if let Ok((endpoint, _)) = route {
        cx.endpoint = endpoint;
    }
    // A credential the helpdesk has just refused is answered 401 here,
    // uncharged (even with `charge_invalid`): the helpdesk would refuse it.
    let mut refused_credential = false;
    let valid = route.clone().and_then(|_| {
        checks::authorization(req)?; // 5
        if !cfg.limiter.refused_credential_ttl.is_zero() && credential_refused(shared, &tenant, req) {
            refused_credential = true;
            return Err(Reject::InvalidCredentials);
        }
        checks::accept(req)?; // 6
        checks::bodiless(req.method(), body_present)?; // 7
        checks::content_type_given(req, body_present)?; // 7
        checks::content_length(req, cfg.server.max_body_bytes) // 8
    });
    if let Err(reject) = valid {
        if cfg.limiter.charge_invalid && reject.chargeable_as_invalid() && !refused_credential {
            // "Even invalid requests count": charge what fits, refuse as before.
            let cost = route.as_ref().map_or(1, |r| r.1);
            if let Ok(d) = shared.limiter.acquire(&Ask::new(&tenant, cx.endpoint, cost)).await {
                cx.decision = Some(d);
            }
        }
        return Err(reject);
    }
    let (endpoint, cost) = route?;

    let ask = Ask::new(&tenant, endpoint, cost);
    // A cost no budget of this size can ever hold: refused before the
    // store, uncharged, without a `Retry-After` (a shadowed tenant's call is
    // judged by the store as before, which refuses it, and forwarded).
    if let Some(p) = ask.never_fits().filter(|_| !tenant.shadow) {
        return Err(Reject::CostExceedsBudget { policy: p.name, quota: p.quota, window_s: p.window_s, cost });
    }
    let decision = if tenant.max_wait.is_zero() {
        judge(shared, &ask).await // 9
    } else {
        match shared.hold.admit(&tenant, &ask, gone(), || judge(shared, &ask)).await {
            Held::Decided(d) => d,
            Held::Gone => return Err(Reject::ClientClosed),
        }
    };
    let decision = decision.map_err(Reject::from)?;
    cx.decision = Some(decision);
    if let Some(refusal) = decision.refusal() {
        if !tenant.shadow {
            return Err(Reject::from(refusal));
        }
        cx.shadow_refused = true;
        tracing::info!(tenant = %tenant.name, endpoint = endpoint.as_str(), request_id = cx.request_id.as_str(), "shadow: would answer 429");
    }
    cx.admitted = true;
    Ok(Plan { https, tenant: Some(tenant), authority: None, path: normalized })
}

/// Step 9: one store call for `ask`, timed and counted.
async fn judge(shared: &Shared, ask: &Ask<'_>) -> Result<Decision, StoreUnavailable> {
    let store_start = Instant::now();
    let decision = shared.limiter.acquire(ask).await;
    shared.metrics.store_duration.observe(store_start.elapsed().as_secs_f64());
    // The limiter has no metrics of its own: a store that could not answer
    // shows here as a degraded decision (fail_open) or a 503 (fail_closed).
    if matches!(&decision, Ok(d) if d.degraded) || decision.is_err() {
        shared.metrics.store_errors.inc();
    }
    decision
}

fn is_trusted(cfg: &Config, peer: SocketAddr) -> bool {
    let ip = peer.ip().to_canonical();
    cfg.server.trusted_proxies.iter().any(|net| net.contains(&ip))
}

/// Step 2's notion of HTTPS: TLS on this connection, or a trusted proxy's
/// `X-Forwarded-Proto: https`.
fn is_https(cfg: &Config, conn: ConnInfo, fields: &impl RequestFields) -> bool {
    if conn.tls {
        return true;
    }
    is_trusted(cfg, conn.peer)
        && fields
            .first(&X_FORWARDED_PROTO)
            .and_then(head::text)
            .and_then(|v| v.split(',').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The single exit: rate-limit headers and (with `own_id`) the request id
/// into `h` (the answer's fields) and metrics. Returns the call's time so
/// far, which its access-log line shows.
fn finish(shared: &Shared, cx: &Call, status: u16, own_id: bool, h: &mut impl Fields) -> Duration {
    if let Some(d) = &cx.decision {
        if cx.shadow {
            headers::render_unenforced(d, h);
        } else {
            headers::render(d, h);
        }
    }
    if own_id {
        h.field(&X_REQUEST_ID, |v| v.extend_from_slice(cx.request_id.as_bytes()));
    }
    let total = cx.start.elapsed();
    if !cx.api {
        return total;
    }
    let m = &shared.metrics;
    let tenant = cx.tenant.as_ref().map_or_else(|| m.unknown_tenant().clone(), |t| Name(t.name.clone()));
    // Requests and rejections: per tenant or summed (`[metrics] per_tenant`).
    let counted = if cx.aggregate { m.all_tenants() } else { &tenant };
    let series = cx.series.as_deref();
    m.count_answer(series, counted, cx.endpoint, status);
    let (duration, overhead) = m.call_histograms(cx.endpoint);
    duration.observe(total.as_secs_f64());
    overhead.observe(total.saturating_sub(cx.upstream.unwrap_or_default()).as_secs_f64());
    if let Some(d) = &cx.decision {
        count_budget_events(m, cx, &tenant, d);
    }
    match cx.reject {
        Some("rate_limit_exceeded") => m.count_rate_limited(series, &tenant, cx.endpoint),
        Some(reason) => {
            m.rejected.get_or_create(&TenantReason { tenant: counted.clone(), reason }).inc();
        }
        None => {}
    }
    total
}

/// The per-policy events of a judged call: admitted with under a tenth of a
/// budget left (`deskgate_near_limit_total`), or a shadow tenant's call its
/// budget would have refused (`deskgate_shadow_refusals_total`).
fn count_budget_events(m: &Metrics, cx: &Call, tenant: &Name, d: &Decision) {
    let series = cx.series.as_deref();
    if cx.shadow_refused {
        let on_endpoint = d.blocking().is_some_and(|p| d.endpoint.is_some_and(|e| e.policy == p.policy));
        m.count_shadow_refusal(series, tenant, on_endpoint.then_some(cx.endpoint));
        return;
    }
    // Admitted and charged calls only: a refusal, a refund or a degraded
    // pass took nothing (a `charge_invalid` refusal was charged, not admitted).
    if !cx.admitted || d.charged() == 0 {
        return;
    }
    let near = |p: &PolicyState| u64::from(p.remaining) * 10 < u64::from(p.policy.quota);
    if near(&d.account) {
        m.count_near_limit(series, tenant, None);
    }
    if d.endpoint.as_ref().is_some_and(near) {
        m.count_near_limit(series, tenant, Some(cx.endpoint));
    }
}
