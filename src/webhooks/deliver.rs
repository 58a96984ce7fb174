//! Outbound HTTP for webhooks (docs/reference.md "Webhook egress"): one delivery attempt, and alert
//! POSTs, over one pooled keep-alive client (http and https via rustls).

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use http::{Method, Request};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;

use super::Spec;
use crate::body::{self, Body};

/// The header a receiver de-duplicates on.
pub use crate::head::names::X_DESKGATE_WEBHOOK_ID;

/// A receiver's response body is read (so the connection can be reused) up
/// to this much, then the rest is abandoned.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Why a delivery attempt failed. Every one of these is retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("connect error: {0}")]
    Connect(String),
    #[error("no response within {0} ms")]
    Timeout(u64),
    /// Any status outside 2xx (redirects are not followed).
    #[error("receiver answered {0}")]
    Status(u16),
    #[error("exchange failed: {0}")]
    Protocol(String),
    /// The stored request cannot be sent (validated at acceptance, so only
    /// foreign or corrupt records get here).
    #[error("request cannot be built: {0}")]
    Invalid(String),
}

use crate::upstream::Connector;

/// The pooled client for deliveries and alerts.
pub struct Outbound {
    client: Client<Connector, Body>,
    timeout: Duration,
}

impl Outbound {
    /// `timeout` bounds a whole attempt: connect, response headers and the
    /// (bounded) response body.
    pub fn new(timeout: Duration) -> Result<Outbound, String> {
        let client = crate::upstream::pooled_client(timeout, None, Duration::from_secs(30), 32)?;
        Ok(Outbound { client, timeout })
    }

    /// One attempt: `Ok(status)` for a 2xx.
    pub async fn send(&self, id: &str, spec: &Spec) -> Result<u16, Failure> {
        let req = build(id, spec)?;
        let exchange = async {
            let rsp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    Failure::Connect(source_chain(&e))
                } else {
                    Failure::Protocol(source_chain(&e))
                }
            })?;
            let status = rsp.status();
            // Drain (bounded) so the pooled connection can carry the next one.
            let _ = Limited::new(rsp.into_body(), MAX_RESPONSE_BODY).collect().await;
            Ok(status.as_u16())
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(Failure::Timeout(self.timeout.as_millis() as u64)),
            Ok(Err(f)) => Err(f),
            Ok(Ok(s)) if (200..300).contains(&s) => Ok(s),
            Ok(Ok(s)) => Err(Failure::Status(s)),
        }
    }

    /// POSTs an alert as JSON once; `Err` says why it was not accepted
    /// (the caller retries).
    pub async fn alert(&self, url: &str, alert: &serde_json::Value) -> Result<(), String> {
        let bytes = serde_json::to_vec(alert).map_err(|e| e.to_string())?;
        let req = Request::post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, user_agent())
            .body(body::full(bytes))
            .map_err(|e| format!("alert_url is not usable: {e}"))?;
        let exchange = async {
            let rsp =
                self.client.request(req).await.map_err(|e| format!("alert_url unreachable: {}", source_chain(&e)))?;
            let status = rsp.status();
            let _ = Limited::new(rsp.into_body(), MAX_RESPONSE_BODY).collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("alert_url answered {}", status.as_u16()))
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("alert_url did not answer within {} ms", self.timeout.as_millis())),
        }
    }
}

fn user_agent() -> HeaderValue {
    HeaderValue::from_static(concat!("deskgate/", env!("CARGO_PKG_VERSION")))
}

/// The outbound request: the stored method, headers and body, plus the id.
fn build(id: &str, spec: &Spec) -> Result<Request<Body>, Failure> {
    let method = Method::from_bytes(spec.method.as_bytes()).map_err(|e| Failure::Invalid(e.to_string()))?;
    let mut req = Request::builder()
        .method(method)
        .uri(spec.url.as_str())
        .body(body::full(Bytes::from(spec.body.clone())))
        .map_err(|e| Failure::Invalid(e.to_string()))?;
    let h = req.headers_mut();
    for (k, v) in &spec.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| Failure::Invalid(e.to_string()))?;
        let value = HeaderValue::from_str(v).map_err(|e| Failure::Invalid(e.to_string()))?;
        h.append(name, value);
    }
    let id = HeaderValue::from_str(id).map_err(|e| Failure::Invalid(e.to_string()))?;
    h.insert(X_DESKGATE_WEBHOOK_ID.clone(), id);
    if !h.contains_key(USER_AGENT) {
        h.insert(USER_AGENT, user_agent());
    }
    Ok(req)
}

/// An error with its causes, e.g. "client error (Connect): tcp connect error: Connection refused".
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
