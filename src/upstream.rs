//! Step 10 (docs/reference.md "Proxying"): the upstream, and the two clients that reach it.
//!
//! - [`hyper`]: hyper's pooled client, for any call (streamed bodies, h2 or
//!   TLS downstream, an https:// upstream);
//! - [`raw`]: a pool of plain keep-alive sockets the fast path writes a
//!   request head to and reads an answer head from, for a plain-HTTP upstream.
//!
//! Both pools idle and size alike (`[upstream] pool_idle_timeout_ms` and
//! `pool_max_idle`), both send and read what [`forwarding`] rules, and both
//! fail with one [`UpstreamError`].

pub mod chunked;
pub mod forwarding;
pub mod hyper;
pub mod raw;
pub mod reported;

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::Scheme;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::config::UpstreamConfig;
use crate::head::RequestId;

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
        // The raw pool's limits on an answer head, so both clients relay
        // (or refuse, 502) the same answers.
        .http1_max_buf_size(raw::MAX_RESPONSE_HEAD)
        .http1_max_headers(raw::MAX_RESPONSE_HEADERS)
        .build(connector))
}

/// The upstream: where calls go and the clients that take them.
pub struct Upstream {
    pub hyper: hyper::HyperClient,
    /// For a plain-HTTP upstream, the fast path's pool.
    pub raw: Option<raw::Pool>,
    timeout: Duration,
}

/// What the gateway resolved about a call, for the fields it forwards.
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
    pub request_id: &'a RequestId,
    pub max_body_bytes: u64,
    /// Longest pause allowed between two pieces of the request body.
    pub body_idle: Duration,
}

impl Upstream {
    /// Builds both clients. Fails on an unreadable `ca_file`.
    pub fn new(cfg: &UpstreamConfig) -> Result<Upstream, String> {
        let (idle, max_idle) = (cfg.pool_idle_timeout, cfg.pool_max_idle);
        let client = pooled_client(cfg.connect_timeout, cfg.ca_file.as_deref(), idle, max_idle)?;
        let scheme = cfg.url.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = cfg.url.authority().cloned().ok_or_else(|| "upstream url has no host".to_owned())?;
        let raw = (scheme == Scheme::HTTP).then(|| {
            let port = authority.port_u16().unwrap_or(80);
            raw::Pool::new(format!("{}:{port}", authority.host()), cfg.connect_timeout, cfg.timeout, idle, max_idle)
        });
        let hyper = hyper::HyperClient { client, scheme, authority, timeout: cfg.timeout };
        Ok(Upstream { hyper, raw, timeout: cfg.timeout })
    }

    /// The configured response-headers timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}
