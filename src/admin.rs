//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/tenants`,
//! `/tenants/{name}`, `/config`. Never on the API listener.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::endpoint::Endpoint;
use crate::limiter::Ask;
use crate::state::Shared;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut rsp = Response::new(body::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    rsp
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    respond(status, "application/json; charset=utf-8", serde_json::to_vec_pretty(v).unwrap_or_default())
}

/// Serves one admin request. `draining` turns `/readyz` to 503 during shutdown,
/// so a load balancer stops sending while in-flight calls finish.
pub async fn handle(
    shared: Arc<Shared>,
    draining: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"code": "method_not_allowed", "message": "Only GET is served here."}),
        ));
    }
    let path = req.uri().path();
    let rsp = match path {
        "/healthz" => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        "/readyz" => {
            if draining.load(Ordering::Relaxed) {
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", "shutting down\n")
            } else if shared.limiter.ready() {
                respond(StatusCode::OK, "text/plain; charset=utf-8", "ready\n")
            } else {
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", "rate-limit store unreachable\n")
            }
        }
        "/metrics" => {
            // The classic text format whenever the scraper takes it, and
            // OpenMetrics only for one that takes nothing else. Prometheus
            // asks for OpenMetrics first and the classic format at a lower
            // q; fed OpenMetrics, it files a counter's type and help under
            // its family name (`deskgate_requests`), so the name queried
            // (`deskgate_requests_total`) shows none in Grafana.
            let open = openmetrics_only(req.headers());
            let text = crate::scrape::metrics_text(&shared, open).await;
            let content_type = if open {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            respond(StatusCode::OK, content_type, text)
        }
        "/config" => config_in_force(&shared),
        "/tenants" => tenants_index(&shared),
        _ => match path.strip_prefix("/tenants/") {
            Some(name) => tenant(&shared, name).await,
            None => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"code": "not_found", "message": "Try /metrics, /healthz, /readyz, /tenants, /tenants/{name} or /config."}),
            ),
        },
    };
    Ok(rsp)
}

/// `/config`: the values in force (a setting that waits for a restart shows
/// its running value and is named under `pending_restart`), with the files'
/// digest, load time and version, so replicas can be compared. Secrets redacted.
fn config_in_force(shared: &Shared) -> Response<Body> {
    let snap = shared.snapshot.load();
    let mut v = snap.config.redacted_json();
    if let Some(o) = v.as_object_mut() {
        o.insert("pending_restart".to_owned(), serde_json::json!(snap.pending_restart));
    }
    json(StatusCode::OK, &v)
}

/// `/tenants`: every tenant's name, plan, hosts and shadow flag, in config order.
fn tenants_index(shared: &Shared) -> Response<Body> {
    let snap = shared.snapshot.load();
    let list: Vec<serde_json::Value> = snap
        .config
        .tenants
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": &*t.name,
                "plan": t.plan,
                "domain": t.domain,
                "vanity_hosts": t.vanity_hosts,
                "shadow": t.shadow,
            })
        })
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "count": list.len(), "tenants": list }))
}

/// Whether an `Accept` asks for OpenMetrics and accepts neither
/// `text/plain` nor a wildcard (q=0 refuses a range).
fn openmetrics_only(headers: &http::HeaderMap) -> bool {
    let (mut open, mut text) = (false, false);
    for v in headers.get_all(http::header::ACCEPT) {
        let Ok(v) = v.to_str() else { continue };
        for range in v.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let refused = parts
                .any(|p| p.trim().strip_prefix("q=").is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)));
            if refused {
                continue;
            }
            match media.as_str() {
                "application/openmetrics-text" => open = true,
                "text/plain" | "text/*" | "*/*" => text = true,
                _ => {}
            }
        }
    }
    open && !text
}

/// What the helpdesk last reported for `t` (its own `X-RateLimit-*`), since
/// the config in force was loaded: `null` fields until it reported any.
fn helpdesk_json(snap: &crate::state::Snapshot, t: &crate::config::Tenant) -> serde_json::Value {
    let report = snap.hosts.get(&t.domain).and_then(|e| e.helpdesk.report());
    serde_json::json!({
        "trusted": t.trust_upstream_limits,
        "remaining": report.and_then(|r| r.remaining),
        "total": report.and_then(|r| r.total),
        "reported_at_unix_ms": report.map(|r| r.at_unix_ms),
    })
}

/// `/tenants/{name}`: plan, budgets, used and left per window, read with a
/// cost-0 ask so nothing is consumed.
async fn tenant(shared: &Shared, name: &str) -> Response<Body> {
    let snap = shared.snapshot.load_full();
    let Some(t) = snap.config.tenant(name) else {
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"code": "unknown_tenant", "message": format!("No tenant named {name:?} is configured.")}),
        );
    };
    let mut windows = Vec::new();
    if !t.api_access {
        // No API access: no budget to read.
        return json(
            StatusCode::OK,
            &serde_json::json!({
                "tenant": &*t.name,
                "domain": t.domain,
                "plan": t.plan,
                "api_access": false,
                "shadow": t.shadow,
                "windows": windows,
            }),
        );
    }
    let account = shared.limiter.acquire(&Ask::new(t, Endpoint::Other, 0)).await;
    let mut push = |p: &crate::limiter::PolicyState| {
        windows.push(serde_json::json!({
            "policy": p.policy.name,
            "budget": p.policy.quota,
            "window_seconds": p.policy.window_s,
            "used": p.policy.quota.saturating_sub(p.remaining),
            "left": p.remaining,
            "seconds_until_room": p.reset_ms.div_ceil(1000),
        }));
    };
    let mut store_ok = true;
    match account {
        Ok(d) => push(&d.account),
        Err(_) => store_ok = false,
    }
    for e in Endpoint::ALL_CLASSIFIED {
        if let Some(i) = e.index() {
            if t.endpoints[i].is_some() {
                match shared.limiter.acquire(&Ask::new(t, e, 0)).await {
                    Ok(d) => {
                        if let Some(p) = &d.endpoint {
                            push(p);
                        }
                    }
                    Err(_) => store_ok = false,
                }
            }
        }
    }
    let helpdesk = helpdesk_json(&snap, t);
    json(
        StatusCode::OK,
        &serde_json::json!({
            "tenant": &*t.name,
            "domain": t.domain,
            "plan": t.plan,
            "api_access": t.api_access,
            "shadow": t.shadow,
            "max_wait_ms": t.max_wait.as_millis() as u64,
            "held_calls": shared.hold.held(&t.name),
            "store_reachable": store_ok,
            "windows": windows,
            "helpdesk": helpdesk,
        }),
    )
}
