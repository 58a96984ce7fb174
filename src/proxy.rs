//! One request, one straight line (SPEC §3): the ten steps in order, then a
//! single exit that adds headers, counts and logs every outcome once.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response};
use hyper::body::{Body as _, Incoming};
use tokio::time::Instant;

use crate::body::Body;
use crate::config::{Config, Tenant};
use crate::endpoint::{self, Endpoint};
use crate::fields::Fields;
use crate::forward::{self, Forwarding, UpstreamError, X_REQUEST_ID};
use crate::head::{self, RequestFields, RequestHead};
use crate::limiter::{Ask, Decision};
use crate::metrics::{Name, TenantReason, TenantSeries};
use crate::reject::Reject;
use crate::state::{Shared, Snapshot};
use crate::{checks, headers, tenant};

/// What the server knows about the downstream connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The connection itself is TLS.
    pub tls: bool,
}

/// What the single exit needs to know about one call.
pub(crate) struct RequestCtx {
    start: Instant,
    pub(crate) request_id: RequestId,
    /// `false` for portal (non-API) traffic, which is forwarded unpoliced.
    api: bool,
    tenant: Option<Arc<Tenant>>,
    /// The tenant's metric series, with `tenant`.
    series: Option<Arc<TenantSeries>>,
    endpoint: Endpoint,
    decision: Option<Decision>,
    /// Time spent waiting for the upstream's response headers.
    upstream: Option<Duration>,
    pub(crate) reject: Option<&'static str>,
}

impl RequestCtx {
    pub(crate) fn new(request_id: RequestId) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            request_id,
            api: false,
            tenant: None,
            series: None,
            endpoint: Endpoint::Other,
            decision: None,
            upstream: None,
            reject: None,
        }
    }
}

/// Serves one downstream request. Never fails: every refusal becomes a response.
pub async fn handle(shared: Arc<Shared>, conn: ConnInfo, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let snap = shared.snapshot.load_full();
    let mut cx = RequestCtx::new(request_id(req.headers()));
    let (parts, body) = req.into_parts();
    let body_present = checks::has_body(&parts.headers) || !body.is_end_stream();
    let rsp = match decide(&shared, &snap, conn, &mut cx, &parts, body_present).await {
        Ok(plan) => {
            let fwd = plan.forwarding(&snap.config, conn, cx.request_id.clone());
            let start = Instant::now();
            let result = shared.upstream.send(&fwd, Request::from_parts(parts, body)).await;
            upstream_done(&shared, &mut cx, start.elapsed(), result.as_ref().err().copied());
            result.map_err(|e| forward::reject_for(e, shared.upstream.timeout(), fwd.max_body_bytes, fwd.body_idle))
        }
        Err(reject) => Err(reject),
    };
    let mut rsp = match rsp {
        Ok(rsp) => rsp,
        Err(reject) => {
            cx.reject = Some(reject.code());
            reject.into_response()
        }
    };
    let status = rsp.status().as_u16();
    finish(&shared, &cx, status, rsp.headers_mut());
    Ok(rsp)
}

/// Where a call that passed every check goes (step 10).
pub(crate) struct Plan {
    https: bool,
    /// The tenant it was charged to; `None` for portal traffic.
    tenant: Option<Arc<Tenant>>,
    /// The normalised path, when it differs from the one received.
    path: Option<String>,
}

impl Plan {
    pub(crate) fn forwarding(&self, cfg: &Config, conn: ConnInfo, request_id: RequestId) -> Forwarding<'_> {
        Forwarding {
            peer: conn.peer,
            https: self.https,
            peer_trusted: is_trusted(cfg, conn.peer),
            host: self.tenant.as_ref().map(|t| &*t.domain),
            path: self.path.as_deref(),
            request_id,
            max_body_bytes: cfg.server.max_body_bytes,
            body_idle: cfg.server.header_read_timeout,
        }
    }
}

/// Steps 1–9 on the request head. Every `?` is a refusal that consumes
/// nothing (but see `charge_invalid`). Both the hyper service above and the
/// HTTP/1.1 fast path (`fast`) decide here, so they cannot drift apart.
pub(crate) async fn decide(
    shared: &Shared,
    snap: &Snapshot,
    conn: ConnInfo,
    cx: &mut RequestCtx,
    req: &impl RequestHead,
    body_present: bool,
) -> Result<Plan, Reject> {
    let cfg = &*snap.config;
    let https = is_https(cfg, conn, req);
    // `Some` only when normalisation changed the spelling (the common case allocates nothing).
    let normalized = endpoint::normalize_path(req.path()).map(|p| match p {
        Cow::Owned(s) => Some(s),
        Cow::Borrowed(_) => None,
    });
    let is_api = match &normalized {
        Ok(Some(p)) => endpoint::is_api(p),
        Ok(None) => endpoint::is_api(req.path()),
        // A path that cannot be normalised safely is refused only if it could
        // be an API call; the portal gets it untouched.
        Err(_) => req.path().to_ascii_lowercase().contains("/api"),
    };
    if !is_api {
        // The portal is forwarded untouched, except a spelling that mentions
        // the API but normalises outside it (`/api/v2/../../x`): the upstream
        // gets the normalised path, so it cannot read an API call into it.
        let path = match normalized {
            Ok(Some(p)) if req.path().to_ascii_lowercase().contains("api") => Some(p),
            _ => None,
        };
        return Ok(Plan { https, tenant: None, path });
    }
    cx.api = true;

    let host = tenant::requested_host(req)?;
    let entry = snap.hosts.get(&*host);
    // Label a vanity-host refusal with its tenant: the name comes from config.
    if let Some(e) = entry {
        cx.tenant = Some(e.tenant.clone());
        cx.series = Some(e.series.clone());
    }
    let tenant = tenant::resolve(entry)?.clone(); // 1
    drop(host);
    if cfg.server.require_https && !https {
        return Err(Reject::SslRequired); // 2
    }
    if !tenant.api_access {
        return Err(Reject::RequireFeature { plan: tenant.plan.clone() }); // 3
    }
    let normalized = normalized?;
    let path = normalized.as_deref().unwrap_or(req.path());
    let route = endpoint::classify(req.method(), path, req.query()).map(|r| (r.endpoint, r.cost)).map_err(Reject::from); // 4
    if let Ok((endpoint, _)) = route {
        cx.endpoint = endpoint;
    }
    let valid = route.clone().and_then(|_| {
        checks::authorization(req)?; // 5
        checks::accept(req)?; // 6
        checks::content_type_given(req, body_present)?; // 7
        checks::content_length(req, cfg.server.max_body_bytes) // 8
    });
    if let Err(reject) = valid {
        if cfg.limiter.charge_invalid && reject.chargeable_as_invalid() {
            // "Even invalid requests count": charge what fits, refuse as before.
            let cost = route.as_ref().map_or(1, |r| r.1);
            if let Ok(d) = shared.limiter.acquire(&Ask::new(&tenant, cx.endpoint, cost)).await {
                cx.decision = Some(d);
            }
        }
        return Err(reject);
    }
    let (endpoint, cost) = route?;

    let store_start = Instant::now();
    let decision = shared.limiter.acquire(&Ask::new(&tenant, endpoint, cost)).await; // 9
    shared.metrics.store_duration.observe(store_start.elapsed().as_secs_f64());
    // The limiter has no metrics of its own: a store that could not answer
    // shows here as a degraded decision (fail_open) or a 503 (fail_closed).
    if matches!(&decision, Ok(d) if d.degraded) || decision.is_err() {
        shared.metrics.store_errors.inc();
    }
    let decision = decision.map_err(Reject::from)?;
    cx.decision = Some(decision);
    if let Some(refusal) = decision.refusal() {
        if !tenant.shadow {
            return Err(Reject::from(refusal));
        }
        tracing::info!(tenant = %tenant.name, endpoint = endpoint.as_str(), request_id = cx.request_id.as_str(), "shadow: would answer 429");
    }
    Ok(Plan { https, tenant: Some(tenant), path: normalized })
}

/// Records the upstream exchange (step 10) for the single exit and the metrics.
pub(crate) fn upstream_done(shared: &Shared, cx: &mut RequestCtx, waited: Duration, error: Option<UpstreamError>) {
    cx.upstream = Some(waited);
    shared.metrics.upstream_duration.observe(waited.as_secs_f64());
    if let Some(e) = error {
        shared.metrics.count_upstream_error(e);
    }
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
            .first(&forward::X_FORWARDED_PROTO)
            .and_then(head::text)
            .and_then(|v| v.split(',').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// A call's request id: the downstream's `X-Request-Id` when it sent a sane
/// one, else one made here (32 hex digits), kept inline: a call that brings
/// none allocates nothing for its id.
#[derive(Clone, Debug)]
pub enum RequestId {
    Made([u8; 32]),
    Given(HeaderValue),
}

impl RequestId {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Made(id) => id,
            RequestId::Given(v) => v.as_bytes(),
        }
    }

    /// For logs: as `HeaderValue::to_str` reads it ("" when not visible ASCII).
    pub fn as_str(&self) -> &str {
        head::text(self.as_bytes()).unwrap_or("")
    }

    pub fn to_value(&self) -> HeaderValue {
        match self {
            RequestId::Given(v) => v.clone(),
            // Hex digits: always a valid value.
            RequestId::Made(id) => HeaderValue::from_bytes(id).unwrap_or_else(|_| HeaderValue::from_static("0")),
        }
    }
}

/// The downstream's `X-Request-Id` if it sent a sane one, else a fresh one.
pub(crate) fn request_id(fields: &(impl RequestFields + ?Sized)) -> RequestId {
    if let Some(v) = fields.first(&X_REQUEST_ID) {
        if !v.is_empty() && v.len() <= 200 {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                return RequestId::Given(v);
            }
        }
    }
    let id: u128 = rand::random();
    let mut buf = [0u8; 32];
    hex(id, &mut buf);
    RequestId::Made(buf)
}

fn hex(mut n: u128, out: &mut [u8; 32]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// The single exit: rate-limit headers and the request id into `h` (the
/// response's headers), metrics and one log line.
pub(crate) fn finish(shared: &Shared, cx: &RequestCtx, status: u16, h: &mut impl Fields) {
    if let Some(d) = &cx.decision {
        headers::render(d, h);
    }
    h.field(&X_REQUEST_ID, |v| v.extend_from_slice(cx.request_id.as_bytes()));
    if !cx.api {
        return;
    }
    let endpoint = cx.endpoint.as_str();
    let tenant = Name(cx.tenant.as_ref().map_or_else(|| Arc::from("unknown"), |t| t.name.clone()));
    let m = &shared.metrics;
    let series = cx.series.as_deref();
    m.count_answer(series, &tenant, cx.endpoint, status);
    let total = cx.start.elapsed();
    let (duration, overhead) = m.call_histograms(cx.endpoint);
    duration.observe(total.as_secs_f64());
    overhead.observe(total.saturating_sub(cx.upstream.unwrap_or_default()).as_secs_f64());
    if let Some(d) = &cx.decision {
        m.set_remaining(series, &tenant, None, d.account.remaining);
        if let Some(e) = &d.endpoint {
            m.set_remaining(series, &tenant, Some(cx.endpoint), e.remaining);
        }
    }
    match cx.reject {
        Some("rate_limit_exceeded") => {
            m.count_rate_limited(series, &tenant, cx.endpoint);
            tracing::info!(tenant = %tenant.0, endpoint, reason = "rate_limit_exceeded", status, request_id = cx.request_id.as_str(), "refused");
        }
        Some(reason) => {
            m.rejected.get_or_create(&TenantReason { tenant: tenant.clone(), reason }).inc();
            tracing::info!(tenant = %tenant.0, endpoint, reason, status, request_id = cx.request_id.as_str(), "refused");
        }
        None => {
            tracing::debug!(tenant = %tenant.0, endpoint, status, request_id = cx.request_id.as_str(), elapsed_us = total.as_micros() as u64, "served");
        }
    }
}
