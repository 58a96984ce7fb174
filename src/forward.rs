//! Step 10 (SPEC §3.5): send the call upstream over a pooled keep-alive
//! client and stream the answer back.
//!
//! Bodies are never buffered: the downstream `Incoming` becomes the upstream
//! request body and the upstream `Incoming` becomes the downstream response
//! body. Hop-by-hop headers are dropped both ways (RFC 9110 §7.6.1: "a proxy
//! or gateway MUST parse a received Connection header field before a message
//! is forwarded and, for each connection-option in this field, remove any
//! header or trailer field(s) from the message with the same name ..., and
//! then remove the Connection header field itself").

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::{Body, BoxError};
use crate::config::UpstreamConfig;
use crate::reject::Reject;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Why the upstream exchange failed; the `kind` label of
/// `deskgate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect,
    Timeout,
    /// The downstream body outgrew `max_body_bytes` while streaming.
    BodyTooLarge,
    /// The downstream body broke while streaming (invalid chunked framing, or
    /// the client went away): the client's fault, not the upstream's.
    DownstreamBody,
    /// The downstream body stopped arriving (nothing for `header_read_timeout`).
    DownstreamStalled,
    /// Anything else: reset, malformed response, ...
    Protocol,
}

impl UpstreamError {
    /// Every kind, for metrics that start at 0.
    pub const ALL: [UpstreamError; 6] = [
        UpstreamError::Connect,
        UpstreamError::Timeout,
        UpstreamError::BodyTooLarge,
        UpstreamError::DownstreamBody,
        UpstreamError::DownstreamStalled,
        UpstreamError::Protocol,
    ];

    pub fn kind(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::BodyTooLarge => "body_too_large",
            UpstreamError::DownstreamBody => "downstream_body",
            UpstreamError::DownstreamStalled => "downstream_stalled",
            UpstreamError::Protocol => "protocol",
        }
    }
}

/// http:// and https:// (rustls) over one TCP connector.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A pooled keep-alive client for http:// and https:// peers (system roots
/// plus `ca_file`). Shared by the upstream and the webhook egress, so both
/// dial, time out and pool the same way.
pub fn pooled_client(
    connect_timeout: Duration,
    ca_file: Option<&std::path::Path>,
    idle_timeout: Duration,
    max_idle_per_host: usize,
) -> Result<Client<Connector, Body>, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    let tls = crate::tls::upstream_client_config(ca_file)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(max_idle_per_host)
        .build(connector))
}

/// The upstream: where calls go and the pooled client that takes them.
#[derive(Clone)]
pub struct Upstream {
    client: Client<Connector, Body>,
    /// The fast path's pool, for a plain-HTTP upstream (`fast`).
    plain: Option<Arc<crate::fast::Pool>>,
    scheme: Scheme,
    authority: Authority,
    timeout: Duration,
}

/// What `send` needs to know about the downstream call.
pub struct Forwarding<'a> {
    pub peer: SocketAddr,
    /// The call arrived over TLS (or from a trusted proxy that says so).
    pub https: bool,
    /// Whether the peer's own X-Forwarded-* headers are believed.
    pub peer_trusted: bool,
    /// The tenant's canonical host the call was resolved by (sent upstream as
    /// `Host`); `None` for portal traffic, whose `Host` passes untouched.
    pub host: Option<&'a str>,
    /// The normalised path, when it differs from the one received (no query).
    pub path: Option<&'a str>,
    pub request_id: crate::proxy::RequestId,
    pub max_body_bytes: u64,
    /// Longest pause allowed between two pieces of the request body.
    pub body_idle: Duration,
}

impl Upstream {
    /// Builds the pooled client. Fails on an unreadable `ca_file`.
    pub fn new(cfg: &UpstreamConfig) -> Result<Upstream, String> {
        let client = pooled_client(cfg.connect_timeout, cfg.ca_file.as_deref(), Duration::from_secs(90), 1024)?;
        let scheme = cfg.url.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = cfg.url.authority().cloned().ok_or_else(|| "upstream url has no host".to_owned())?;
        let plain = (scheme == Scheme::HTTP).then(|| {
            let port = authority.port_u16().unwrap_or(80);
            let pool = crate::fast::Pool::new(format!("{}:{port}", authority.host()), cfg.connect_timeout, cfg.timeout);
            Arc::new(pool)
        });
        Ok(Upstream { client, plain, scheme, authority, timeout: cfg.timeout })
    }

    /// Sends `req` upstream and returns its response, streaming.
    pub async fn send(&self, f: &Forwarding<'_>, req: Request<Incoming>) -> Result<Response<Body>, UpstreamError> {
        let (mut parts, incoming) = req.into_parts();
        let path = f.path.unwrap_or(parts.uri.path());
        let pq = match parts.uri.query() {
            Some(q) => {
                let mut s = String::with_capacity(path.len() + 1 + q.len());
                s.push_str(path);
                s.push('?');
                s.push_str(q);
                PathAndQuery::try_from(s)
            }
            None => PathAndQuery::try_from(path),
        }
        .map_err(|_| UpstreamError::Protocol)?;
        parts.uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| UpstreamError::Protocol)?;
        // Whatever the downstream spoke (h2 included), the pool speaks HTTP/1.1.
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        set_forwarded(&mut parts.headers, f);

        // The request body: cut when the client pauses longer than
        // `body_idle` (else a trickling upload holds this connection and an
        // upstream one forever), capped at `max_body_bytes`, and telling the
        // timer below whom the call waits on.
        let (waiting, waits_on) = watch::channel(Some(Instant::now()));
        let incoming = IdleCut::new(incoming, f.body_idle, |_| BoxError::from(DownstreamStalled));
        let incoming = Tracked { inner: incoming, waiting };
        let body: Body = Limited::new(incoming, usize::try_from(f.max_body_bytes).unwrap_or(usize::MAX))
            .map_err(|e| match e.downcast::<hyper::Error>() {
                // Tagged so that `classify_error` can tell a broken downstream
                // body from a broken upstream.
                Ok(e) => BoxError::from(DownstreamBodyError(*e)),
                Err(e) => e,
            })
            .boxed();
        let req = Request::from_parts(parts, body);
        // `timeout_ms` runs while the call waits on the upstream, not on the
        // client: an upload that takes longer but keeps moving is not a 504,
        // and an upstream that stops reading the body is.
        let rsp = tokio::select! {
            r = self.client.request(req) => r,
            () = upstream_deadline(waits_on, self.timeout) => return Err(UpstreamError::Timeout),
        };
        let rsp = rsp.map_err(|e| classify_error(&e))?;
        let (mut parts, incoming) = rsp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = IdleCut::new(incoming, self.timeout, |idle| {
            BoxError::from(format!("upstream body stalled for {} ms", idle.as_millis()))
        });
        Ok(Response::from_parts(parts, body.boxed()))
    }
}

fn classify_error(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    if e.is_connect() {
        return UpstreamError::Connect;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return UpstreamError::BodyTooLarge;
        }
        if s.is::<DownstreamBodyError>() {
            return UpstreamError::DownstreamBody;
        }
        if s.is::<DownstreamStalled>() {
            return UpstreamError::DownstreamStalled;
        }
        source = s.source();
    }
    UpstreamError::Protocol
}

/// Maps an upstream failure to the refusal the downstream sees.
pub fn reject_for(e: UpstreamError, timeout: Duration, max_body_bytes: u64, body_idle: Duration) -> Reject {
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

impl Upstream {
    /// The fast path's connection pool; `None` for an https upstream.
    pub fn plain_pool(&self) -> Option<&Arc<crate::fast::Pool>> {
        self.plain.as_ref()
    }

    /// The configured response-headers timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// A downstream body error, as the upstream client reports it.
#[derive(Debug, thiserror::Error)]
#[error("downstream body: {0}")]
struct DownstreamBodyError(hyper::Error);

/// The request body stopped arriving for longer than the body idle limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled")]
struct DownstreamStalled;

/// A body that fails with `stalled()` when its source sends nothing for
/// `idle` while it is being waited on. On the upstream's response body it
/// keeps an upstream that stalls mid-body from holding the downstream
/// connection, its task and a pooled connection forever; on the request body,
/// a client that trickles its upload. The clock runs only while the body is
/// polled and has nothing, so a slow reader on the other side is not
/// mistaken for a slow writer.
struct IdleCut<B> {
    inner: B,
    idle: Duration,
    /// Makes the error a stall ends the body with (given `idle`).
    stalled: fn(Duration) -> BoxError,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> IdleCut<B> {
    fn new(inner: B, idle: Duration, stalled: fn(Duration) -> BoxError) -> IdleCut<B> {
        IdleCut { inner, idle, stalled, deadline: None }
    }
}

impl<B> http_body::Body for IdleCut<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.deadline = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let idle = this.idle;
        let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err((this.stalled)(idle)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Passes the request body through and says whom the call waits on: `None`
/// while the client owes the next piece (the idle cut's business), `Some(t)`
/// since `t`, while the upstream holds what it was given and owes the next
/// read or the answer.
struct Tracked<B> {
    inner: B,
    waiting: watch::Sender<Option<Instant>>,
}

impl<B> http_body::Body for Tracked<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        this.waiting.send_replace(match frame {
            Poll::Pending => None,
            Poll::Ready(_) => Some(Instant::now()),
        });
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Returns once the call has waited on the upstream for `timeout` in one go
/// (see [`Tracked`]); never while the client is the one behind.
async fn upstream_deadline(mut waits_on: watch::Receiver<Option<Instant>>, timeout: Duration) {
    loop {
        let since = *waits_on.borrow_and_update();
        match since {
            Some(t) => {
                tokio::select! {
                    () = tokio::time::sleep_until(t + timeout) => return,
                    changed = waits_on.changed() => {
                        // The body is gone (all sent): only the answer is owed.
                        if changed.is_err() {
                            tokio::time::sleep_until(t + timeout).await;
                            return;
                        }
                    }
                }
            }
            None => {
                if waits_on.changed().await.is_err() {
                    // Dropped while the client owed a piece: the call is
                    // failing on that side already; nothing to time here.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// The hop-by-hop fields of RFC 9110 §7.6.1 plus the legacy ones proxies drop.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop fields, including those the `Connection` header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    h.remove(header::UPGRADE);
}

/// Whether `name` is removed by [`strip_hop_by_hop`] whatever `Connection` says.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| crate::head::is(name, h)) || crate::head::is(name, &header::UPGRADE)
}

pub(crate) fn set_forwarded(h: &mut HeaderMap, f: &Forwarding<'_>) {
    let ip = f.peer.ip().to_string();
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        // Only a trusted proxy's chain is kept; anyone else's is replaced.
        Some(prev) if f.peer_trusted => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::try_from(xff) {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(if f.https { "https" } else { "http" }));
    let host = match f.host {
        // The resolved host is the tenant the budget was charged to; the
        // upstream must see the same one (absolute-form and :authority included).
        Some(host) => HeaderValue::from_str(host).ok(),
        None => h.get(header::HOST).cloned(),
    };
    if let Some(v) = host {
        if !(f.peer_trusted && h.contains_key(&X_FORWARDED_HOST)) {
            h.insert(X_FORWARDED_HOST.clone(), v.clone());
        }
        h.insert(header::HOST, v);
    }
    h.insert(X_REQUEST_ID.clone(), f.request_id.to_value());
}

/// A body-less response for tests and the demo.
pub fn bytes_body(b: &'static [u8]) -> Body {
    crate::body::full(Bytes::from_static(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_fields_and_hop_by_hop_fields_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, X-Secret-Hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }
}
