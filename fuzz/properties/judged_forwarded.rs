//! The request the gateway judged is the request the upstream gets (issue
//! 18): a request built from the fuzz input is judged as `proxy::decide`
//! judges it, forwarded by `upstream::forwarding`'s rules, and the
//! forwarded head, read back as the upstream reads it, is judged again.
//! Shared by the `judged_forwarded` fuzz target and
//! `tests/fuzz_regressions.rs`.
//!
//! Input: the first byte holds flags (bit 0: the peer is a trusted proxy,
//! bit 1: the connection is TLS, bit 2: a body arrives without framing, as
//! an h2 body can), the rest is text: a line `METHOD TARGET`, then one
//! `name: value` per line (`\r` optional). It is written out as an HTTP/1.1
//! head; what hyper's parser or `http`'s types refuse is hyper's 400 and
//! not looked at further.
//!
//! The judgement mirrors `decide`'s steps, in its order, from the public
//! step functions (`decide` itself is private and needs a limiter): request
//! form, transfer coding, `Connection` options, requested host, the
//! HTTPS-ness of the call, path normalisation, API or portal (and the `;`
//! spelling of `api`), tenant (a fixed table standing for `Snapshot::hosts`
//! through `tenant::resolve`'s rule: canonical domains resolve, a vanity
//! host is 403, any other 404), path parameters, classification (endpoint
//! and cost), then steps 5-8 (Authorization, Accept, bodyless methods,
//! Content-Type, Content-Length). Left out: `require_https` and
//! `api_access` (config, not request, decides them) and the limiter.
//!
//! Properties, for every request the gateway accepts:
//! - the forwarded head (`forwarding::write_request_head`, with the
//!   `Forwarding` the gateway builds: the tenant's domain as host, the
//!   normalised path when it changed) is one whole HTTP/1.1 head that hyper
//!   would take, and judged again (from a trusted peer, without TLS: the
//!   gateway's own `X-Forwarded-Proto` must carry the HTTPS-ness) it is
//!   accepted with the same judgement: method, host, HTTPS-ness, API or
//!   portal, tenant, endpoint, cost, path and query;
//! - it holds exactly one `Host` (an API call's: the tenant's domain; a
//!   portal page's: the host the gateway judged), `X-Forwarded-Host` equal
//!   to it, exactly one `X-Forwarded-For`, `X-Forwarded-Proto` (the
//!   judged scheme) and `X-Request-Id`, no other `X-Forwarded-*`, no
//!   `Forwarded`, `Front-End-Https`, no field name with `_`, no hop-by-hop
//!   field nor one the request's `Connection` named, no `X-Real-IP` or
//!   `True-Client-IP` from an untrusted peer, and on an API call no
//!   method-override field;
//! - hyper's client's edit of the same fields (`forwarding::edit_request`
//!   on a `HeaderMap`) sends the same fields (names and values);
//! - when the fast path takes the same head (`fast::head::parse`), it is
//!   judged the same, and its forwarded fields are the same.
//!
//! One disagreement is allowed, and pinned instead
//! ([`ALLOW_PORTAL_HOST_FIELD_OVER_AUTHORITY`]).

use std::borrow::Cow;
use std::time::Duration;

use deskgate::checks;
use deskgate::endpoint::{self, Endpoint};
use deskgate::fast::head::{parse, FastHead, Head};
use deskgate::head::{self, RequestFields, RequestHead, RequestId};
use deskgate::reject::Reject;
use deskgate::tenant;
use deskgate::upstream::forwarding::{edit_request, write_request_head};
use deskgate::upstream::Forwarding;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Uri};

/// The tenants' hosts: (host, canonical).
const HOSTS: [(&str, bool); 3] =
    [("acme.freshdesk.com", true), ("globex.freshdesk.com", true), ("support.acme.com", false)];

/// A portal page asked for with an absolute-form target
/// (`GET http://b/ HTTP/1.1` + `Host: a`) is judged by the target's
/// authority (`tenant::requested_host`, RFC 9112 §3.2.2), but forwarded
/// with the downstream's `Host` field as sent (none if it sent none), where
/// RFC 9112 §3.2.2 has a proxy generate `Host` from the target. Portal
/// traffic is neither charged nor policed by host, so it is allowed here:
/// for such a request the property pins the `Host` fields as sent and
/// compares the forwarded head's judgement with that of the same request in
/// origin form. See `tests/fuzz_regressions.rs`,
/// `a_portal_page_in_absolute_form_is_forwarded_with_its_host_field`.
pub const ALLOW_PORTAL_HOST_FIELD_OVER_AUTHORITY: bool = false;

const MAX_BODY_BYTES: u64 = 1 << 20;
const PEER: &str = "192.0.2.1:5555";
const PEER_IP: &str = "192.0.2.1";

/// Written out here rather than taken from `forwarding`, so the property
/// does not trust the tables it checks.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];
const ORIGIN_CLAIMS: [&str; 2] = ["forwarded", "front-end-https"];

/// What the gateway made of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub method: Method,
    /// The requested host, normalised.
    pub host: String,
    pub https: bool,
    /// An API call's tenant (its domain), endpoint and cost; `None` for the portal.
    pub api: Option<(String, Endpoint, u32)>,
    /// The path sent upstream, and the query.
    pub path: String,
    pub query: Option<String>,
}

/// `decide`'s steps, in its order (see the module docs for what is left out).
pub fn judge(req: &impl RequestHead, trusted: bool, tls: bool, body_present: bool) -> Result<Judged, Reject> {
    checks::request_form(req)?;
    checks::transfer_coding(req)?;
    checks::connection_options(req)?;
    let host = tenant::requested_host(req)?.into_owned();
    let https = tls
        || (trusted
            && req
                .first(&head::names::X_FORWARDED_PROTO)
                .and_then(head::text)
                .and_then(|v| v.split(',').next())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("https")));
    let normalized = match endpoint::normalize_path(req.path()).map_err(Reject::from)? {
        Cow::Owned(s) => Some(s),
        Cow::Borrowed(_) => None,
    };
    let path = normalized.as_deref().unwrap_or(req.path());
    let judged = |api, sent: Option<String>| Judged {
        method: req.method().clone(),
        host: host.clone(),
        https,
        api,
        path: sent.unwrap_or_else(|| req.path().to_owned()),
        query: req.query().map(str::to_owned),
    };
    if !endpoint::is_api(path) {
        if endpoint::names_api(path) {
            return Err(Reject::BadRequest { field: "path", message: "params".to_owned() });
        }
        let sent = normalized.clone().filter(|_| req.path().to_ascii_lowercase().contains("api"));
        return Ok(judged(None, sent));
    }
    // Step 1, by `tenant::resolve`'s rule.
    let domain = match HOSTS.iter().find(|(h, _)| *h == host) {
        Some((h, true)) => *h,
        Some((h, false)) => return Err(Reject::VanityHost { domain: h.to_string() }),
        None => return Err(Reject::UnknownHost),
    };
    if endpoint::has_params(path) {
        return Err(Reject::BadRequest { field: "path", message: "params".to_owned() });
    }
    let route = endpoint::classify(req.method(), path, req.query()).map_err(Reject::from)?;
    checks::authorization(req)?;
    checks::accept(req)?;
    checks::bodiless(req.method(), body_present)?;
    checks::content_type_given(req, body_present)?;
    checks::content_length(req, MAX_BODY_BYTES)?;
    Ok(judged(Some((domain.to_owned(), route.endpoint, route.cost)), normalized.clone()))
}

/// The request as hyper hands it over (`Parts`), or `None` where hyper
/// answers 400 itself. Also returns where the head ends.
pub fn read(head: &[u8]) -> Option<(Parts, usize)> {
    let mut found = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut found);
    let Ok(httparse::Status::Complete(len)) = req.parse(head) else { return None };
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let uri = Uri::try_from(req.path?).ok()?;
    let mut b = http::Request::builder().method(method).uri(uri);
    for f in req.headers.iter() {
        b = b.header(HeaderName::from_bytes(f.name.as_bytes()).ok()?, HeaderValue::from_bytes(f.value).ok()?);
    }
    Some((b.body(()).ok()?.into_parts().0, len))
}

/// The fuzz input as an HTTP/1.1 head, and its flags.
pub fn head_of(data: &[u8]) -> Option<(Vec<u8>, u8)> {
    let (&flags, text) = data.split_first()?;
    let mut lines = text.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next()?;
    let (method, target) = match first.iter().position(|&b| b == b' ') {
        Some(i) => (&first[..i], &first[i + 1..]),
        None => (first, &b"/"[..]),
    };
    let mut out = Vec::with_capacity(data.len() + 64);
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        out.extend_from_slice(&line[..colon]);
        out.extend_from_slice(b": ");
        out.extend_from_slice(line[colon + 1..].trim_ascii_start());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some((out, flags))
}

/// A head's fields, `name: value` with lower-case names, sorted.
fn field_lines<'a>(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<String> {
    let mut lines: Vec<String> = fields
        .map(|(n, v)| format!("{}: {}", String::from_utf8_lossy(n).to_ascii_lowercase(), String::from_utf8_lossy(v)))
        .collect();
    lines.sort();
    lines
}

pub fn check(data: &[u8]) {
    let Some((raw, flags)) = head_of(data) else { return };
    let (trusted, tls, unframed) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let Some((parts, _)) = read(&raw) else { return };
    let body_present = checks::has_body(&parts.headers) || unframed;
    let first = judge(&parts, trusted, tls, body_present);

    // The fast path judges a head it takes the same, from the same steps.
    let mut at = Vec::new();
    let fast = match parse(&raw, &mut at) {
        Head::Ready(p) | Head::Waiting(p) => Some(FastHead::new(p.method, p.target, &raw[..p.len], &at)),
        _ => None,
    };
    if let Some(fast) = &fast {
        assert_eq!(judge(fast, trusted, tls, body_present), first, "the fast path judged it differently");
    }
    let Ok(judged) = first else { return };

    // Forwarded as `Plan::forwarding` describes it.
    let request_id = RequestId::of(&parts.headers);
    let f = Forwarding {
        peer: PEER.parse().expect("a socket address"),
        https: judged.https,
        peer_trusted: trusted,
        host: judged.api.as_ref().map(|(domain, _, _)| domain.as_str()).or(parts.uri.authority().map(|a| a.as_str())),
        path: (judged.path != parts.uri.path()).then_some(judged.path.as_str()),
        request_id: &request_id,
        max_body_bytes: MAX_BODY_BYTES,
        body_idle: Duration::from_secs(1),
    };
    let path = f.path.unwrap_or(parts.uri.path());
    let mut sent = Vec::new();
    write_request_head(&mut sent, &parts.method, path, parts.uri.query(), &parts.headers, &f, PEER_IP);
    let (again, len) = read(&sent)
        .unwrap_or_else(|| panic!("the forwarded head is not one hyper takes: {:?}", String::from_utf8_lossy(&sent)));
    assert_eq!(len, sent.len(), "the forwarded head ends early: {:?}", String::from_utf8_lossy(&sent));
    let shown = || String::from_utf8_lossy(&sent).into_owned();

    // The upstream's reading of it is the gateway's.
    let count = |name: &str| again.headers.get_all(name).iter().count();
    let value = |name: &str| again.headers.get(name).map(|v| v.as_bytes());
    assert_eq!(again.uri.path(), judged.path, "{}", shown());
    let authority_dropped =
        ALLOW_PORTAL_HOST_FIELD_OVER_AUTHORITY && judged.api.is_none() && parts.uri.authority().is_some();
    if authority_dropped {
        // Pinned: the first `Host` field as sent, and judged as the same
        // request in origin form would be.
        assert_eq!(value("host"), parts.headers.get("host").map(|v| v.as_bytes()), "{}", shown());
        let origin = http::Request::builder()
            .method(parts.method.clone())
            // `http://b?q` has the path `/` and no `/` in its path-and-query.
            .uri(match parts.uri.query() {
                Some(q) => format!("{}?{q}", parts.uri.path()),
                None => parts.uri.path().to_owned(),
            })
            .body(())
            .expect("an origin-form request");
        let (mut origin, ()) = origin.into_parts();
        origin.headers = parts.headers.clone();
        let expected = judge(&origin, trusted, tls, body_present);
        assert_eq!(judge(&again, true, false, body_present), expected, "judged again: {}", shown());
    } else {
        assert_eq!(judge(&again, true, false, body_present).as_ref(), Ok(&judged), "judged again: {}", shown());
        assert_eq!(count("host"), 1, "{}", shown());
        match &judged.api {
            Some((domain, _, _)) => assert_eq!(value("host"), Some(domain.as_bytes()), "{}", shown()),
            None => {
                let told = value("host").and_then(head::text).map(tenant::normalize_host);
                assert!(matches!(told, Some(Ok(h)) if h == judged.host), "the portal host: {}", shown());
            }
        }
    }

    // What it carries.
    assert!(count("host") <= 1, "{}", shown());
    assert_eq!(value("x-forwarded-host"), value("host"), "{}", shown());
    assert_eq!(count("x-forwarded-host"), count("host"), "{}", shown());
    for name in ["x-forwarded-for", "x-forwarded-proto", "x-request-id"] {
        assert_eq!(count(name), 1, "{name}: {}", shown());
    }
    let proto: &[u8] = if judged.https { b"https" } else { b"http" };
    assert_eq!(value("x-forwarded-proto"), Some(proto), "{}", shown());
    let options: Vec<String> = parts
        .headers
        .get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|o| String::from_utf8_lossy(o.trim_ascii()).to_ascii_lowercase())
        .collect();
    for name in again.headers.keys() {
        let n = name.as_str();
        assert!(!n.contains('_'), "{n}: {}", shown());
        assert!(
            !n.starts_with("x-forwarded-") || ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"].contains(&n),
            "{n}: {}",
            shown()
        );
        assert!(!ORIGIN_CLAIMS.contains(&n) && !HOP_BY_HOP.contains(&n), "{n}: {}", shown());
        assert!(!options.iter().any(|o| o == n), "{n}, named by Connection: {}", shown());
        assert!(trusted || !["x-real-ip", "true-client-ip"].contains(&n), "{n}: {}", shown());
        assert!(judged.api.is_none() || !METHOD_OVERRIDES.contains(&n), "{n}: {}", shown());
    }

    // hyper's client sends the same fields.
    let mut map: HeaderMap = parts.headers.clone();
    edit_request(&mut map, &f);
    let sent_fields = field_lines(again.headers.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())));
    assert_eq!(field_lines(map.all()), sent_fields, "edit_request differs from the raw head: {}", shown());

    // And so does the fast path, writing from the head where it lies.
    if let Some(fast) = &fast {
        let mut out = Vec::new();
        write_request_head(&mut out, &fast.method, path, fast.query, fast, &f, PEER_IP);
        let (from_fast, _) = read(&out).expect("the fast path's forwarded head is one hyper takes");
        let fast_fields = field_lines(from_fast.headers.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())));
        assert_eq!(fast_fields, sent_fields, "the fast path forwards other fields");
        assert_eq!(from_fast.uri, again.uri, "the fast path forwards another target");
    }
}
