//! The internal webhook listener (docs/reference.md "Webhook egress"): `POST /webhooks` accepts one
//! webhook, `GET /webhooks/{id}` tells where it stands.
//!
//! Only the helpdesk backend should reach this listener; it is not policed
//! like the API listener (no Host, Authorization or budget checks on the
//! POST itself — the budget is spent by each delivery attempt).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::dispatch::{self, Step};
use super::queue::{token, Claimed, Created, Record};
use super::{Core, Spec, State, Status};
use crate::body::{self, Body};
use crate::reject::{Reject, JSON_UTF8};

/// Largest `POST /webhooks` body accepted (the whole webhook is stored).
pub const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;
/// Longest webhook URL accepted.
const MAX_URL_LEN: usize = 4096;
/// Longest idempotency key accepted.
const MAX_ID_LEN: usize = 128;
/// Methods the helpdesk's webhook action offers.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
/// Headers the gateway owns on a delivery (framing, hop-by-hop, the id).
const RESERVED_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "x-deskgate-webhook-id",
];

/// Serves one request on the webhook listener. Never fails.
pub(crate) async fn handle(core: Arc<Core>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let rsp = if path == "/webhooks" {
        if req.method() == Method::POST {
            accept(&core, req).await
        } else {
            method_not_allowed("POST")
        }
    } else if let Some(id) = path.strip_prefix("/webhooks/") {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            status(&core, id).await
        } else {
            method_not_allowed("GET")
        }
    } else {
        respond(
            StatusCode::NOT_FOUND,
            &json!({"code": "not_found", "message": "This listener serves POST /webhooks and GET /webhooks/{id}."}),
        )
    };
    Ok(rsp)
}

fn respond(status: StatusCode, v: &Value) -> Response<Body> {
    let bytes =
        serde_json::to_vec(v).map(Bytes::from).unwrap_or_else(|_| Bytes::from_static(b"{\"code\":\"internal_error\"}"));
    let mut rsp = Response::new(body::full(bytes));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    rsp
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    // The Reject carries the `Allow` header.
    Reject::MethodNotAllowed { allow }.into_response()
}

fn invalid(field: &'static str, message: impl Into<String>) -> Reject {
    Reject::BadRequest { field, message: message.into() }
}

fn queue_down(e: &super::queue::QueueError) -> Response<Body> {
    tracing::warn!(error = %e, "webhook queue unavailable");
    Reject::ServiceUnavailable { retry_after_s: 1 }.into_response()
}

/// How long a refused sender is told to wait: the queue drains as the
/// tenant's budget allows, so a full one stays full for a while.
const QUEUE_FULL_RETRY_AFTER_S: u64 = 60;

/// 429 `webhook_queue_full`: the tenant has its bound of webhooks waiting.
fn queue_full(tenant: &str, queued: u64, max: u64) -> Response<Body> {
    let mut rsp = respond(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({
            "code": "webhook_queue_full",
            "message": format!(
                "Tenant \"{tenant}\" already has {queued} webhooks waiting (at most {max}); nothing was queued. Try again later."
            ),
            "queued": queued,
            "max_queued_per_tenant": max,
        }),
    );
    rsp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(QUEUE_FULL_RETRY_AFTER_S));
    rsp
}

/// `POST /webhooks`.
async fn accept(core: &Arc<Core>, req: Request<Incoming>) -> Response<Body> {
    let bytes = match Limited::new(req.into_body(), MAX_WEBHOOK_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Reject::PayloadTooLarge { limit: MAX_WEBHOOK_BYTES as u64 }.into_response()
        }
        Err(_) => return invalid("request", "The request body could not be read.").into_response(),
    };
    let (id, spec) = match parse(&bytes) {
        Ok(v) => v,
        Err(reject) => return reject.into_response(),
    };
    {
        let snap = core.shared.snapshot.load();
        match snap.config.tenant(&spec.tenant) {
            None => {
                return respond(
                    StatusCode::NOT_FOUND,
                    &json!({
                        "code": "unknown_tenant",
                        "message": format!("No tenant named \"{}\" is configured in deskgate.", spec.tenant),
                    }),
                )
            }
            Some(t) if !t.api_access => return Reject::RequireFeature { plan: t.plan.clone() }.into_response(),
            Some(_) => {}
        }
    }
    let spec = Arc::new(spec);
    let tok = token();
    let held_from = Instant::now();
    let max_queued = core.cfg.max_queued_per_tenant;
    let now_ms = match core.queue.create(&id, &spec, &tok, core.lease_ms(), max_queued).await {
        Ok(Created::New { now_ms }) => now_ms,
        Ok(Created::Full { queued }) => {
            core.metrics.count(&spec.tenant, "queue_full");
            tracing::warn!(%id, tenant = %spec.tenant, queued, max_queued, "webhook refused: the tenant's queue is full");
            return queue_full(&spec.tenant, queued, max_queued);
        }
        Ok(Created::Existing(record)) => {
            // Same id again: nothing is charged, queued or delivered twice.
            let mut v = describe(&id, &record);
            v["duplicate"] = Value::Bool(true);
            return respond(StatusCode::OK, &v);
        }
        Err(e) => return queue_down(&e),
    };
    let job = Claimed {
        id: id.clone(),
        token: tok,
        record: Record { spec, state: State::accepted(), accepted_ms: now_ms },
        claimed_ms: now_ms,
        claimed_at: Instant::now(),
        held_from,
    };
    // The whole attempt runs in its own task under one lease keeper (the
    // claim's lease is already running); the answer waits only for the
    // decision, and for a postponement or drop also for its write.
    let (tx, decided) = tokio::sync::oneshot::channel();
    let task_core = core.clone();
    tokio::spawn(async move {
        let core = task_core;
        // Counted against the replica's delivery slots when one is free;
        // never waits for one.
        let permit = core.slots.clone().try_acquire_owned().ok();
        dispatch::under_lease(&core, &job, async {
            let step = dispatch::decide(&core, &job).await;
            if step == Step::Send {
                let _ = tx.send(step.clone());
                dispatch::settle(&core, job.clone(), step).await;
            } else {
                dispatch::settle(&core, job.clone(), step.clone()).await;
                let _ = tx.send(step);
            }
        })
        .await;
        drop(permit);
        core.wake.notify_one();
    });
    match decided.await {
        Ok(Step::Send) => respond(StatusCode::ACCEPTED, &json!({"id": id, "status": "sent"})),
        Ok(Step::Postpone { due_ms, .. }) => {
            respond(StatusCode::ACCEPTED, &json!({"id": id, "status": "postponed", "due_at": super::rfc3339(due_ms)}))
        }
        Ok(Step::Drop { reason }) => {
            respond(StatusCode::ACCEPTED, &json!({"id": id, "status": "dropped", "reason": reason}))
        }
        // The lease was lost before a decision: stored, and attempted by
        // whichever replica claims it next.
        Err(_) => respond(StatusCode::ACCEPTED, &json!({"id": id, "status": "sending"})),
    }
}

/// `GET /webhooks/{id}`.
async fn status(core: &Core, id: &str) -> Response<Body> {
    let not_found = || {
        respond(
            StatusCode::NOT_FOUND,
            &json!({"code": "not_found", "message": format!("No webhook with id \"{id}\" is known (finished webhooks are kept for 24 hours).")}),
        )
    };
    if valid_id(id).is_err() {
        return not_found();
    }
    match core.queue.get(id).await {
        Ok(Some(record)) => respond(StatusCode::OK, &describe(id, &record)),
        Ok(None) => not_found(),
        Err(e) => queue_down(&e),
    }
}

/// The JSON view of a stored webhook.
fn describe(id: &str, r: &Record) -> Value {
    let s = &r.state;
    let mut v = json!({
        "id": id,
        "tenant": r.spec.tenant,
        "status": s.status.as_str(),
        "attempts": s.attempts,
        "failures": s.failures,
        "accepted_at": super::rfc3339(r.accepted_ms),
    });
    if matches!(s.status, Status::Postponed | Status::Retrying) {
        if let Some(due) = s.due_ms {
            v["due_at"] = json!(super::rfc3339(due));
        }
    }
    if let Some(at) = s.finished_ms {
        v["finished_at"] = json!(super::rfc3339(at));
    }
    if let Some(reason) = &s.reason {
        v["reason"] = json!(reason);
    }
    if let Some(e) = &s.last_error {
        v["last_error"] = json!(e);
    }
    v
}

/// Validates a `POST /webhooks` body into its id (given or generated) and spec.
fn parse(bytes: &[u8]) -> Result<(String, Spec), Reject> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| invalid("request", format!("The body must be a JSON object: {e}.")))?;
    let Value::Object(mut obj) = value else {
        return Err(invalid("request", "The body must be a JSON object."));
    };
    if let Some(k) = obj.keys().find(|k| !["tenant", "url", "method", "headers", "body", "id"].contains(&k.as_str())) {
        return Err(invalid(
            "request",
            format!("Unexpected field \"{k}\". Fields: tenant, url, method, headers, body, id."),
        ));
    }
    let tenant = match obj.remove("tenant") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return Err(invalid("tenant", "tenant is required: the name of a configured tenant.")),
    };
    let url = match obj.remove("url") {
        Some(Value::String(s)) => s,
        _ => return Err(invalid("url", "url is required: an http:// or https:// URL.")),
    };
    check_url(&url).map_err(|m| invalid("url", m))?;
    let method = match obj.remove("method") {
        None | Some(Value::Null) => "POST".to_owned(),
        Some(Value::String(m)) if METHODS.contains(&m.to_ascii_uppercase().as_str()) => m.to_ascii_uppercase(),
        Some(_) => return Err(invalid("method", "method must be one of GET, POST, PUT, PATCH, DELETE.")),
    };
    let mut headers = match obj.remove("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(h)) => check_headers(h).map_err(|m| invalid("headers", m))?,
        Some(_) => return Err(invalid("headers", "headers must be an object of header names to string values.")),
    };
    let body = match obj.remove("body") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        // A JSON body given as JSON: sent serialised, as application/json
        // unless the headers say otherwise.
        Some(other) => {
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
                headers.push(("content-type".to_owned(), "application/json".to_owned()));
            }
            other.to_string()
        }
    };
    let id = match obj.remove("id") {
        None | Some(Value::Null) => format!("wh_{:024x}", rand::random::<u128>() >> 32),
        Some(Value::String(s)) => {
            valid_id(&s).map_err(|m| invalid("id", m))?;
            s
        }
        Some(_) => return Err(invalid("id", "id must be a string.")),
    };
    Ok((id, Spec { tenant, url, method, headers, body }))
}

fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("url is longer than {MAX_URL_LEN} characters."));
    }
    let uri: http::Uri = url.parse().map_err(|_| "url is not a valid URL.".to_owned())?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("url must start with http:// or https://.".to_owned()),
    }
    let Some(authority) = uri.authority() else {
        return Err("url must name a host.".to_owned());
    };
    if authority.as_str().contains('@') {
        return Err("url must not carry credentials; send them in an Authorization header instead.".to_owned());
    }
    if authority.host().is_empty() {
        return Err("url must name a host.".to_owned());
    }
    Ok(())
}

fn check_headers(h: Map<String, Value>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::with_capacity(h.len());
    for (k, v) in h {
        let Value::String(v) = v else {
            return Err(format!("header \"{k}\" must have a string value."));
        };
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("\"{k}\" is not a valid header name."))?;
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(format!("header \"{k}\" is set by the gateway and cannot be given."));
        }
        HeaderValue::from_str(&v).map_err(|_| format!("header \"{k}\" has an invalid value."))?;
        out.push((name.as_str().to_owned(), v));
    }
    Ok(out)
}

fn valid_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("id must be 1 to {MAX_ID_LEN} characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(rsp: Response<Body>) -> (StatusCode, String) {
        let status = rsp.status();
        let body = futures_util::FutureExt::now_or_never(rsp.into_body().collect())
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        (status, v["errors"][0]["field"].as_str().unwrap_or("").to_owned())
    }

    #[test]
    fn malformed_webhooks_name_the_offending_field() {
        let cases: &[(&str, &str)] = &[
            ("[]", "request"),
            ("{", "request"),
            (r#"{"url":"http://x/"}"#, "tenant"),
            (r#"{"tenant":"a"}"#, "url"),
            (r#"{"tenant":"a","url":"ftp://x/"}"#, "url"),
            (r#"{"tenant":"a","url":"/relative"}"#, "url"),
            (r#"{"tenant":"a","url":"http://u:p@x/"}"#, "url"),
            (r#"{"tenant":"a","url":"http://x/","method":"TRACE"}"#, "method"),
            (r#"{"tenant":"a","url":"http://x/","headers":{"Host":"y"}}"#, "headers"),
            (r#"{"tenant":"a","url":"http://x/","headers":{"a b":"y"}}"#, "headers"),
            (r#"{"tenant":"a","url":"http://x/","headers":["x"]}"#, "headers"),
            (r#"{"tenant":"a","url":"http://x/","id":"has space"}"#, "id"),
            (r#"{"tenant":"a","url":"http://x/","id":7}"#, "id"),
            (r#"{"tenant":"a","url":"http://x/","extra":1}"#, "request"),
        ];
        for (body, field) in cases {
            let rsp = parse(body.as_bytes()).expect_err(body).into_response();
            assert_eq!(field_of(rsp), (StatusCode::BAD_REQUEST, (*field).to_owned()), "{body}");
        }
    }

    #[test]
    fn a_json_body_is_serialised_as_application_json_and_ids_are_generated() {
        let (id, spec) = parse(br#"{"tenant":"a","url":"https://x/h","method":"put","body":{"k":1}}"#).unwrap();
        assert!(id.starts_with("wh_") && valid_id(&id).is_ok(), "{id}");
        assert_eq!(spec.method, "PUT");
        assert_eq!(spec.body, r#"{"k":1}"#);
        assert_eq!(spec.headers, vec![("content-type".to_owned(), "application/json".to_owned())]);
    }
}
