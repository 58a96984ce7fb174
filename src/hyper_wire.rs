//! The hyper path's `Wire`: calls that hyper's server carries (TLS, h2,
//! streamed bodies, whatever the fast path hands over), sent through
//! hyper's pooled client (`upstream::hyper`). Bodies stream both ways.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use http::request::Parts;
use http::{Method, Request, Response, Uri};
use hyper::body::{Body as _, Incoming};

use crate::access_log::Target;
use crate::body::Body;
use crate::checks;
use crate::head::names::{HOST, X_REQUEST_ID};
use crate::proxy::{self, ConnInfo, Wire};
use crate::reject::Reject;
use crate::state::Shared;
use crate::upstream::hyper::HyperClient;
use crate::upstream::reported::Reported;
use crate::upstream::{Forwarding, UpstreamError};

/// hyper's service for the API listener: one call through the lifecycle.
pub async fn handle(shared: Arc<Shared>, conn: ConnInfo, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let mut wire = HyperWire { parts, body: Some(body), client: &shared.upstream.hyper, credential: None, sent: None };
    Ok(proxy::serve_call(&shared, conn, &mut wire).await)
}

/// One call hyper carries.
struct HyperWire<'u> {
    parts: Parts,
    /// The request body, until the exchange takes it.
    body: Option<Incoming>,
    client: &'u HyperClient,
    /// The `Authorization` value, kept when the exchange takes the head (a
    /// `HeaderValue` clone shares the request's bytes: nothing is copied).
    credential: Option<HeaderValue>,
    /// What the access log shows of the request, kept when the exchange
    /// takes the head (clones that share the request's bytes).
    sent: Option<Sent>,
}

/// The method, target and `Host` of a request whose head went upstream.
struct Sent {
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
}

impl Wire for HyperWire<'_> {
    type Head = Parts;
    type Answer = Response<Body>;
    type Output = Response<Body>;
    type Fields = HeaderMap;

    fn head(&self) -> &Parts {
        &self.parts
    }

    fn body_present(&self) -> bool {
        checks::has_body(&self.parts.headers) || self.body.as_ref().is_some_and(|b| !b.is_end_stream())
    }

    async fn exchange(&mut self, fwd: &Forwarding<'_>) -> Result<Response<Body>, UpstreamError> {
        // The call is sent once: its head and body move into the upstream request.
        let body = self.body.take().ok_or(UpstreamError::Protocol)?;
        self.credential = self.parts.headers.get(AUTHORIZATION).cloned();
        self.sent = Some(Sent {
            method: self.parts.method.clone(),
            uri: self.parts.uri.clone(),
            host: self.parts.headers.get(&HOST).cloned(),
        });
        let parts = std::mem::replace(&mut self.parts, Request::new(()).into_parts().0);
        self.client.send(fwd, parts, body).await
    }

    fn credential(&self) -> Option<&[u8]> {
        match &self.credential {
            Some(v) => Some(v.as_bytes()),
            None => self.parts.headers.get(AUTHORIZATION).map(HeaderValue::as_bytes),
        }
    }

    fn target(&self) -> Target<'_> {
        let (method, uri, host) = match &self.sent {
            Some(s) => (&s.method, &s.uri, s.host.as_ref()),
            None => (&self.parts.method, &self.parts.uri, self.parts.headers.get(&HOST)),
        };
        let host = uri.authority().map(|a| a.as_str().as_bytes()).or(host.map(HeaderValue::as_bytes));
        Target { method, path: uri.path(), host }
    }

    fn status(answer: &Response<Body>) -> u16 {
        answer.status().as_u16()
    }

    fn answer_has_request_id(answer: &Response<Body>) -> bool {
        answer.headers().contains_key(&X_REQUEST_ID)
    }

    fn reported(answer: &Response<Body>) -> Reported {
        Reported::from_map(answer.headers())
    }

    async fn answer(&mut self, mut answer: Response<Body>, ours: impl FnOnce(&mut HeaderMap)) -> Response<Body> {
        ours(answer.headers_mut());
        answer
    }

    async fn refuse(&mut self, reject: Reject, ours: impl FnOnce(&mut HeaderMap)) -> Response<Body> {
        let mut rsp = reject.into_response();
        ours(rsp.headers_mut());
        rsp
    }
}
