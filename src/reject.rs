//! Every refusal the gateway can answer, rendered in one place (SPEC §3, §3.4).
//!
//! Steps return `Err(Reject)`; `proxy::handle` turns it into a response with
//! [`Reject::into_response`]. Keeping the closed set here means the status
//! codes, the helpdesk's error codes and their wording cannot drift apart.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::{self, Body};

/// Content type of every error body the gateway writes.
pub const JSON_UTF8: &str = "application/json; charset=utf-8";

/// A refusal: one variant per SPEC status/code pair.
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
            Reject::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Reject::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Reject::BadGateway => StatusCode::BAD_GATEWAY,
            Reject::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Reject::ServiceUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
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
            Reject::RequestTimeout { .. } => "request_timeout",
            Reject::RateLimited { .. } => "rate_limit_exceeded",
            Reject::BadGateway => "bad_gateway",
            Reject::GatewayTimeout { .. } => "gateway_timeout",
            Reject::ServiceUnavailable { .. } => "service_unavailable",
        }
    }

    /// Whether `charge_invalid = true` charges this refusal (SPEC §3.2: steps 4-8).
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
        match self {
            Reject::BadRequest { message, .. } => message.clone(),
            Reject::UnknownHost => {
                "No helpdesk account is served at this host. Use your account's domain, e.g. https://yourcompany.freshdesk.com/api/v2/.".to_owned()
            }
            Reject::VanityHost { domain } => format!(
                "The API is not available on custom (vanity) domains. Use https://{domain} in the API URL."
            ),
            Reject::SslRequired => "HTTPS is required in the API URL.".to_owned(),
            Reject::RequireFeature { plan } => format!(
                "The {plan} plan does not include API access; API access is available on plans above {plan}. Upgrade your plan to use the API."
            ),
            Reject::MethodNotAllowed { allow } => {
                format!("This method is not allowed on this resource. Allowed methods: {allow}.")
            }
            Reject::InvalidCredentials => "You have to be logged in to perform this action.".to_owned(),
            Reject::InvalidAccept => {
                "Only application/json is served. Send Accept: application/json, or omit the Accept header.".to_owned()
            }
            Reject::InvalidContentType => {
                "Content-Type must be application/json, or multipart/form-data with a boundary for attachments.".to_owned()
            }
            Reject::PayloadTooLarge { limit } => {
                format!("The request body is larger than the {limit} bytes allowed.")
            }
            Reject::RequestTimeout { idle_ms } => format!(
                "The request body stopped arriving: nothing came for {idle_ms} ms. Send the body without pauses that long."
            ),
            Reject::RateLimited { policy, quota, window_s, retry_after_s } => {
                let what = if *policy == "account" {
                    "account".to_owned()
                } else {
                    format!("{policy} endpoint")
                };
                format!(
                    "You have exceeded the {what} limit of {quota} API credits per {window_s} seconds. Retry after {retry_after_s} seconds (see the Retry-After header); X-RateLimit-Remaining shows what is left."
                )
            }
            Reject::BadGateway => "The helpdesk could not be reached. Retry shortly.".to_owned(),
            Reject::GatewayTimeout { timeout_ms } => format!(
                "The helpdesk did not answer within {timeout_ms} ms. Retry shortly."
            ),
            Reject::ServiceUnavailable { retry_after_s } => format!(
                "Rate limits cannot be checked right now. Retry after {retry_after_s} seconds (see the Retry-After header)."
            ),
        }
    }

    /// Renders the refusal: status, JSON body, and the headers the status needs
    /// (`Allow` on 405, `Retry-After` on 429/503). Rate-limit headers are added
    /// later by the single exit in `proxy`, which knows the decision.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let body = match &self {
            Reject::BadRequest { field, message } => serde_json::json!({
                "description": "Validation failed",
                "errors": [{ "field": field, "message": message, "code": "invalid_value" }],
            }),
            other => serde_json::json!({ "code": other.code(), "message": other.message() }),
        };
        // serde_json::Value always serialises; fall back to a constant just in case.
        let bytes = serde_json::to_vec(&body)
            .map(Bytes::from)
            .unwrap_or_else(|_| Bytes::from_static(b"{\"code\":\"internal_error\"}"));
        let mut rsp = Response::new(body::full(bytes));
        *rsp.status_mut() = status;
        let h = rsp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
        match &self {
            Reject::MethodNotAllowed { allow } => {
                h.insert(ALLOW, HeaderValue::from_static(allow));
            }
            Reject::RateLimited { retry_after_s, .. } | Reject::ServiceUnavailable { retry_after_s } => {
                h.insert(RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            _ => {}
        }
        rsp
    }
}
