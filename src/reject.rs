//! Every refusal the gateway can answer, rendered in one place (docs/reference.md "Request order", "Status and error codes").
//!
//! Steps return `Err(Reject)`; the lifecycle (`proxy::serve_call`) has the
//! wire answer it, rendered by [`Reject::into_response`] (hyper) or
//! [`Reject::fields`] and [`Reject::write_body`] (the fast path). Keeping the closed set here means the status
//! codes, the helpdesk's error codes and their wording cannot drift apart.
//! Modules below this one in the imports answer with data instead (the
//! limiter's `Refusal` and `StoreUnavailable`, `endpoint::RouteError`); the
//! `From` impls here turn that data into the refusal, so `limiter` and
//! `endpoint` do not depend on `reject` and no import circle runs through it.

use std::fmt::{self, Write as _};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Serializer as _;

use crate::body::{self, Body};
use crate::endpoint::RouteError;
use crate::fields::Fields;
use crate::head::names::{ALLOW, CONTENT_TYPE, RETRY_AFTER};
use crate::limiter::{Refusal, StoreUnavailable};
use crate::upstream::UpstreamError;

/// Content type of every error body the gateway writes.
pub const JSON_UTF8: &str = "application/json; charset=utf-8";

/// A refusal: one variant per status/code pair (docs/reference.md "Status and error codes").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// 400: the path cannot be normalised safely, or a header is malformed.
    BadRequest { field: &'static str, message: String },
    /// 404: the Host names no tenant.
    UnknownHost,
    /// 403: a vanity host (CNAME) of a tenant was used for an API call.
    VanityHost { domain: String },
    /// 403: plain HTTP while `require_https` is set.
    SslRequired,
    /// 403: the tenant's plan has no API access.
    RequireFeature { plan: String },
    /// 405: known resource, method not allowed on it.
    MethodNotAllowed { allow: &'static str },
    /// 401: no Authorization header.
    InvalidCredentials,
    /// 406: Accept does not admit JSON.
    InvalidAccept,
    /// 415: a body with an unsupported Content-Type.
    InvalidContentType,
    /// 501: a transfer coding other than `chunked`.
    UnsupportedTransferCoding,
    /// 413: body larger than `max_body_bytes`.
    PayloadTooLarge { limit: u64 },
    /// 408: the request body stopped arriving for `idle_ms`.
    RequestTimeout { idle_ms: u64 },
    /// 429: a budget cannot fit the call's cost.
    RateLimited {
        /// The policy that ran out (`account` or an endpoint name).
        policy: &'static str,
        /// Budget of that policy per window.
        quota: u32,
        /// Window of that policy in seconds.
        window_s: u32,
        /// Whole seconds until the call would be admitted.
        retry_after_s: u64,
    },
    /// 502: the upstream could not be reached or broke the exchange.
    BadGateway,
    /// 504: the upstream sent no response headers within `timeout_ms`.
    GatewayTimeout { timeout_ms: u64 },
    /// 503: the store cannot answer and `on_store_error = "fail_closed"`.
    ServiceUnavailable { retry_after_s: u64 },
    /// 400: the call's cost alone exceeds a budget it needs, so no wait can
    /// admit it. A 400, not a 429: clients retry a 429 (after its
    /// `Retry-After`) and this one can never succeed; the helpdesk itself
    /// answers a query it will not serve with 400 "Validation failed".
    CostExceedsBudget {
        /// The budget (`account` or an endpoint name).
        policy: &'static str,
        /// Its size per window.
        quota: u32,
        window_s: u32,
        /// What the call costs.
        cost: u32,
    },
    /// 499 (nginx's "client closed request"): the client left while its
    /// call was held waiting for room. Nobody reads it; it is counted.
    ClientClosed,
}

impl Reject {
    /// HTTP status of this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Reject::UnknownHost => StatusCode::NOT_FOUND,
            Reject::VanityHost { .. } | Reject::SslRequired | Reject::RequireFeature { .. } => StatusCode::FORBIDDEN,
            Reject::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Reject::InvalidCredentials => StatusCode::UNAUTHORIZED,
            Reject::InvalidAccept => StatusCode::NOT_ACCEPTABLE,
            Reject::InvalidContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reject::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Reject::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Reject::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Reject::BadGateway => StatusCode::BAD_GATEWAY,
            Reject::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Reject::ServiceUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Reject::CostExceedsBudget { .. } => StatusCode::BAD_REQUEST,
            Reject::ClientClosed => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        }
    }

    /// The helpdesk-style error code (also the `reason` label in metrics).
    pub fn code(&self) -> &'static str {
        match self {
            Reject::BadRequest { .. } => "invalid_value",
            Reject::UnknownHost => "unknown_host",
            Reject::VanityHost { .. } => "vanity_host_not_supported",
            Reject::SslRequired => "ssl_required",
            Reject::RequireFeature { .. } => "require_feature",
            Reject::MethodNotAllowed { .. } => "method_not_allowed",
            Reject::InvalidCredentials => "invalid_credentials",
            Reject::InvalidAccept => "invalid_accept_header",
            Reject::InvalidContentType => "invalid_content_type",
            Reject::PayloadTooLarge { .. } => "payload_too_large",
            Reject::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Reject::RequestTimeout { .. } => "request_timeout",
            Reject::RateLimited { .. } => "rate_limit_exceeded",
            Reject::BadGateway => "bad_gateway",
            Reject::GatewayTimeout { .. } => "gateway_timeout",
            Reject::ServiceUnavailable { .. } => "service_unavailable",
            Reject::CostExceedsBudget { .. } => "cost_exceeds_budget",
            Reject::ClientClosed => "client_closed_request",
        }
    }

    /// Whether `charge_invalid = true` charges this refusal (docs/reference.md "Budgets": steps 4-8).
    pub fn chargeable_as_invalid(&self) -> bool {
        matches!(
            self,
            Reject::MethodNotAllowed { .. }
                | Reject::InvalidCredentials
                | Reject::InvalidAccept
                | Reject::InvalidContentType
                | Reject::PayloadTooLarge { .. }
                | Reject::BadRequest { .. }
        )
    }

    /// What the caller should do, in words (the `message` of the body).
    pub fn message(&self) -> String {
        Message(self).to_string()
    }

    /// The JSON body, appended to `out`: `{"code":…,"message":…}`, or the
    /// helpdesk's validation shape for a 400. Written straight into the
    /// buffer (keys in the order serde_json's map writes them), because a
    /// flood of 429s renders this once per call and a `serde_json::Value`
    /// costs a map and three strings each time.
    pub fn write_body(&self, out: &mut Vec<u8>) {
        match self {
            Reject::BadRequest { field, message } => {
                out.extend_from_slice(
                    br#"{"description":"Validation failed","errors":[{"code":"invalid_value","field":"#,
                );
                push_json_str(out, field);
                out.extend_from_slice(br#","message":"#);
                push_json_str(out, message);
                out.extend_from_slice(b"}]}");
            }
            Reject::CostExceedsBudget { policy, quota, window_s, cost } => {
                // The helpdesk's validation shape, on `include` (the only
                // part of a call that raises its cost above 1), and the
                // numbers for a program to read (keys in the order serde_json
                // writes them). Names and numbers: nothing to escape.
                let _ = write!(
                    Unescaped(out),
                    r#"{{"budget":{{"name":"{policy}","size":{quota},"window_seconds":{window_s}}},"cost":{cost},"description":"Validation failed","errors":[{{"code":"cost_exceeds_budget","field":"include","message":"{}"}}]}}"#,
                    Message(self)
                );
            }
            other => {
                // Codes are plain identifiers: nothing to escape.
                out.extend_from_slice(br#"{"code":""#);
                out.extend_from_slice(other.code().as_bytes());
                out.extend_from_slice(br#"","message":"#);
                if let Reject::RateLimited { .. } = other {
                    // A 429's message is fixed text, numbers and a policy
                    // name (`account` or an endpoint class): nothing needs
                    // escaping, and a flood renders one per call.
                    let _ = write!(Unescaped(out), "\"{}\"", Message(other));
                } else {
                    push_json_str(out, &Message(other));
                }
                out.push(b'}');
            }
        }
    }

    /// The fields the refusal itself needs: `Content-Type`, `Allow` on a 405,
    /// `Retry-After` on a 429 or 503 (unless already set: a 429's comes with
    /// its decision's rate-limit fields, and is the same value).
    pub fn fields(&self, h: &mut impl Fields) {
        h.field(&CONTENT_TYPE, |v| v.extend_from_slice(JSON_UTF8.as_bytes()));
        match self {
            Reject::MethodNotAllowed { allow } => h.field(&ALLOW, |v| v.extend_from_slice(allow.as_bytes())),
            Reject::RateLimited { retry_after_s, .. } | Reject::ServiceUnavailable { retry_after_s }
                if !h.contains(&RETRY_AFTER) =>
            {
                h.field(&RETRY_AFTER, |v| v.extend_from_slice(itoa::Buffer::new().format(*retry_after_s).as_bytes()))
            }
            _ => {}
        }
    }

    /// Renders the refusal: status, JSON body, and the headers the status needs
    /// (`Allow` on 405, `Retry-After` on 429/503). Rate-limit headers are added
    /// later by the single exit in `proxy`, which knows the decision.
    pub fn into_response(self) -> Response<Body> {
        let mut bytes = Vec::with_capacity(256);
        self.write_body(&mut bytes);
        let mut rsp = Response::new(body::full(Bytes::from(bytes)));
        *rsp.status_mut() = self.status();
        self.fields(rsp.headers_mut());
        rsp
    }
}

/// The refusal for an upstream exchange that failed (step 10).
impl Reject {
    pub fn for_upstream(e: UpstreamError, timeout: Duration, max_body_bytes: u64, body_idle: Duration) -> Reject {
        match e {
            UpstreamError::DownstreamStalled => Reject::RequestTimeout { idle_ms: body_idle.as_millis() as u64 },
            UpstreamError::Timeout => Reject::GatewayTimeout { timeout_ms: timeout.as_millis() as u64 },
            UpstreamError::BodyTooLarge => Reject::PayloadTooLarge { limit: max_body_bytes },
            UpstreamError::DownstreamBody => Reject::BadRequest {
                field: "body",
                message: "The request body could not be read: its chunked framing is invalid or it was cut short."
                    .to_owned(),
            },
            UpstreamError::Connect | UpstreamError::Protocol => Reject::BadGateway,
        }
    }
}

/// Step 4's refusals: a path that cannot be normalised, a method not allowed.
impl From<RouteError> for Reject {
    fn from(e: RouteError) -> Reject {
        match e {
            RouteError::BadPath(message) => Reject::BadRequest { field: "path", message: message.to_owned() },
            RouteError::MethodNotAllowed { allow } => Reject::MethodNotAllowed { allow },
        }
    }
}

/// The 429 for a call the limiter refused: the same policy and seconds its
/// `Retry-After` (`headers::render`) shows.
impl From<Refusal> for Reject {
    fn from(r: Refusal) -> Reject {
        let p = r.policy;
        Reject::RateLimited { policy: p.name, quota: p.quota, window_s: p.window_s, retry_after_s: r.retry_after_s }
    }
}

/// The 503 for a store that cannot answer under `fail_closed`.
impl From<StoreUnavailable> for Reject {
    fn from(e: StoreUnavailable) -> Reject {
        Reject::ServiceUnavailable { retry_after_s: e.retry_after_s }
    }
}

/// [`Reject::message`] as text written where it goes (the JSON body's
/// string, escaped on the way), without a `String` of its own.
struct Message<'a>(&'a Reject);

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Reject::BadRequest { message, .. } => f.write_str(message),
            Reject::UnknownHost => f.write_str(
                "No helpdesk account is served at this host. Use your account's domain, e.g. https://yourcompany.freshdesk.com/api/v2/.",
            ),
            Reject::VanityHost { domain } => write!(
                f,
                "The API is not available on custom (vanity) domains. Use https://{domain} in the API URL."
            ),
            Reject::SslRequired => f.write_str("HTTPS is required in the API URL."),
            Reject::RequireFeature { plan } => write!(
                f,
                "The {plan} plan does not include API access; API access is available on plans above {plan}. Upgrade your plan to use the API."
            ),
            Reject::MethodNotAllowed { allow } => {
                write!(f, "This method is not allowed on this resource. Allowed methods: {allow}.")
            }
            Reject::InvalidCredentials => f.write_str("You have to be logged in to perform this action."),
            Reject::InvalidAccept => f.write_str(
                "Only application/json is served. Send Accept: application/json, or omit the Accept header.",
            ),
            Reject::InvalidContentType => f.write_str(
                "Content-Type must be application/json, or multipart/form-data with a boundary for attachments.",
            ),
            Reject::UnsupportedTransferCoding => f.write_str(
                "Only the chunked transfer coding is accepted. Send the body with Content-Length or Transfer-Encoding: chunked.",
            ),
            Reject::PayloadTooLarge { limit } => {
                write!(f, "The request body is larger than the {limit} bytes allowed.")
            }
            Reject::RequestTimeout { idle_ms } => write!(
                f,
                "The request body stopped arriving: nothing came for {idle_ms} ms. Send the body without pauses that long."
            ),
            Reject::RateLimited { policy, quota, window_s, retry_after_s } => {
                let (window, retry) = (Seconds(u64::from(*window_s)), Seconds(*retry_after_s));
                // Each budget is read in its own header: X-RateLimit-Remaining
                // counts the account, so it would mislead about an endpoint.
                if *policy == "account" {
                    write!(
                        f,
                        "You have exceeded the account limit of {quota} API credits per {window}. Retry after {retry} (see the Retry-After header); X-RateLimit-Remaining shows what is left of the account budget."
                    )
                } else {
                    write!(
                        f,
                        "You have exceeded the {policy} endpoint limit of {quota} API credits per {window}. Retry after {retry} (see the Retry-After header); the RateLimit header shows what is left of this endpoint's budget (X-RateLimit-Remaining counts the whole account)."
                    )
                }
            }
            Reject::BadGateway => f.write_str("The helpdesk could not be reached. Retry shortly."),
            Reject::GatewayTimeout { timeout_ms } => {
                write!(f, "The helpdesk did not answer within {timeout_ms} ms. Retry shortly.")
            }
            Reject::ServiceUnavailable { retry_after_s } => write!(
                f,
                "Rate limits cannot be checked right now. Retry after {} (see the Retry-After header).",
                Seconds(*retry_after_s)
            ),
            Reject::CostExceedsBudget { policy, quota, window_s, cost } => {
                let endpoint = if *policy == "account" { "" } else { " endpoint" };
                write!(
                    f,
                    "This call costs {cost} API credits, more than the {policy}{endpoint} limit of {quota} API credits per {window_s} seconds: it can never be admitted. Ask for fewer include items."
                )
            }
            Reject::ClientClosed => f.write_str("The client closed the connection while the call waited for room."),
        }
    }
}

/// A number of seconds in words: "1 second", "3 seconds".
struct Seconds(u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.0 == 1 { "second" } else { "seconds" };
        write!(f, "{} {unit}", self.0)
    }
}

/// Appends text as it is (see [`Reject::write_body`] for when that is JSON).
struct Unescaped<'a>(&'a mut Vec<u8>);

impl fmt::Write for Unescaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// `value` as a JSON string (quoted and escaped) appended to `out`.
fn push_json_str(out: &mut Vec<u8>, value: &(impl fmt::Display + ?Sized)) {
    // serde_json escapes as it goes; writing into a Vec cannot fail.
    let _ = serde_json::Serializer::new(out).collect_str(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn every_refusal() -> Vec<Reject> {
        vec![
            Reject::BadRequest { field: "path", message: "a \"quoted\" \\ path\u{1}\n".to_owned() },
            Reject::UnknownHost,
            Reject::VanityHost { domain: "acme\".freshdesk.com".to_owned() },
            Reject::SslRequired,
            Reject::RequireFeature { plan: "sprout".to_owned() },
            Reject::MethodNotAllowed { allow: "GET, POST" },
            Reject::InvalidCredentials,
            Reject::InvalidAccept,
            Reject::InvalidContentType,
            Reject::PayloadTooLarge { limit: 1_048_576 },
            Reject::UnsupportedTransferCoding,
            Reject::RequestTimeout { idle_ms: 30_000 },
            Reject::RateLimited { policy: "account", quota: 700, window_s: 60, retry_after_s: 7 },
            Reject::RateLimited { policy: "ticket_create", quota: 280, window_s: 60, retry_after_s: 60 },
            Reject::BadGateway,
            Reject::GatewayTimeout { timeout_ms: 30_000 },
            Reject::ServiceUnavailable { retry_after_s: 1 },
            Reject::CostExceedsBudget { policy: "ticket_list", quota: 100, window_s: 60, cost: 301 },
            Reject::ClientClosed,
        ]
    }

    /// The body as the helpdesk shapes it, built the slow, obvious way.
    fn expected_body(r: &Reject) -> serde_json::Value {
        match r {
            Reject::BadRequest { field, message } => serde_json::json!({
                "description": "Validation failed",
                "errors": [{ "field": field, "message": message, "code": "invalid_value" }],
            }),
            Reject::CostExceedsBudget { policy, quota, window_s, cost } => serde_json::json!({
                "description": "Validation failed",
                "errors": [{ "field": "include", "message": r.message(), "code": "cost_exceeds_budget" }],
                "budget": { "name": policy, "size": quota, "window_seconds": window_s },
                "cost": cost,
            }),
            other => serde_json::json!({ "code": other.code(), "message": other.message() }),
        }
    }

    #[test]
    fn every_body_is_the_json_the_helpdesk_sends_byte_for_byte() {
        for r in every_refusal() {
            let mut out = Vec::new();
            r.write_body(&mut out);
            let expected = serde_json::to_vec(&expected_body(&r)).unwrap();
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&expected), "{r:?}");
        }
        let limited = Reject::RateLimited { policy: "ticket_list", quota: 400, window_s: 60, retry_after_s: 3 };
        assert_eq!(
            limited.message(),
            "You have exceeded the ticket_list endpoint limit of 400 API credits per 60 seconds. Retry after 3 \
             seconds (see the Retry-After header); the RateLimit header shows what is left of this endpoint's \
             budget (X-RateLimit-Remaining counts the whole account)."
        );
        let account = Reject::RateLimited { policy: "account", quota: 400, window_s: 60, retry_after_s: 1 };
        assert_eq!(
            account.message(),
            "You have exceeded the account limit of 400 API credits per 60 seconds. Retry after 1 second \
             (see the Retry-After header); X-RateLimit-Remaining shows what is left of the account budget."
        );
        let down = Reject::ServiceUnavailable { retry_after_s: 1 };
        assert!(down.message().contains("Retry after 1 second (see"), "{}", down.message());
    }

    /// A 429's `Retry-After` is written by the refusal (`fields`) or by the
    /// rate-limit headers (`headers::render`), whichever comes first, and its
    /// body names a wait too: all three must say the same whole seconds, and
    /// the body must name the policy that keeps the call out longest.
    #[test]
    fn a_429s_body_and_retry_after_agree_whoever_writes_the_header() {
        use crate::limiter::{Decision, Policy, PolicyState};
        let state = |name, quota, retry_ms| PolicyState {
            policy: Policy { name, quota, window_s: 60 },
            remaining: 1,
            reset_ms: 4_000,
            retry_ms,
            slot: 0,
        };
        // (account's wait, the endpoint's wait) → the seconds and policy told.
        for (account, endpoint, seconds, policy) in [
            (Some(1), None, "1", "account limit of 50"),
            (Some(1_000), None, "1", "account limit of 50"),
            (Some(1_001), None, "2", "account limit of 50"),
            (Some(9_001), Some(2_000), "10", "account limit of 50"),
            (Some(2_000), Some(59_999), "60", "ticket_list endpoint limit of 20"),
            // The cost exceeds the quota: the window's length.
            (None, Some(u64::MAX), "60", "ticket_list endpoint limit of 20"),
        ] {
            let d = Decision {
                allowed: false,
                cost: 3,
                account: state("account", 50, account),
                endpoint: Some(state("ticket_list", 20, endpoint)),
                degraded: false,
            };
            let reject = Reject::from(d.refusal().expect("refused"));
            let mut refusal_first = reject.clone().into_response();
            crate::headers::render(&d, refusal_first.headers_mut());
            let mut headers_first = HeaderMap::new();
            crate::headers::render(&d, &mut headers_first);
            reject.fields(&mut headers_first);
            for h in [refusal_first.headers(), &headers_first] {
                assert_eq!(h.get_all(&RETRY_AFTER).iter().collect::<Vec<_>>(), [seconds], "{d:?}");
            }
            let mut body = Vec::new();
            reject.write_body(&mut body);
            let body = String::from_utf8(body).unwrap();
            let unit = if seconds == "1" { "second" } else { "seconds" };
            assert!(body.contains(&format!("Retry after {seconds} {unit} ")), "{body}");
            assert!(body.contains(policy), "{body}");
        }
    }

    #[test]
    fn a_refusal_sets_its_own_fields_once() {
        for r in every_refusal() {
            let rsp = r.clone().into_response();
            let h = rsp.headers();
            assert_eq!(h.get(&CONTENT_TYPE).unwrap(), JSON_UTF8);
            assert_eq!(h.contains_key(&ALLOW), matches!(r, Reject::MethodNotAllowed { .. }));
            let retry = match r {
                Reject::RateLimited { retry_after_s, .. } | Reject::ServiceUnavailable { retry_after_s } => {
                    Some(retry_after_s.to_string())
                }
                _ => None,
            };
            assert_eq!(h.get(http::header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned()), retry);
        }
        // A Retry-After already set (by the decision's fields) is not set twice.
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("9"));
        Reject::ServiceUnavailable { retry_after_s: 1 }.fields(&mut h);
        assert_eq!(h.get_all(http::header::RETRY_AFTER).iter().collect::<Vec<_>>(), ["9"]);
    }
}
