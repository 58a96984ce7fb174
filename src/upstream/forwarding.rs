//! What crosses the gateway, field by field (docs/reference.md "Proxying"): the one
//! hop-by-hop table and the one set of forwarding rules. Both upstream
//! clients apply them: hyper's edits its `HeaderMap` ([`edit_request`],
//! [`strip_hop_by_hop`]), the raw pool writes head text
//! ([`write_request_head`]); a test below holds the two to the same result.
//!
//! The upstream is told only what the gateway judged: the charged tenant's
//! canonical domain as `Host` and `X-Forwarded-Host`, the peer (after a
//! trusted proxy's chain) as `X-Forwarded-For`, the scheme the gateway saw as
//! `X-Forwarded-Proto`, and the call's `X-Request-Id`. Every other claim a
//! downstream makes about the call's origin (`Forwarded`, any other
//! `X-Forwarded-*`, `Front-End-Https`; `X-Real-IP` and `True-Client-IP`
//! unless a trusted proxy sent them) is dropped, as is every field whose
//! name holds `_` (CGI-style servers read `Transfer_Encoding` as
//! `Transfer-Encoding`; nginx drops such fields by default too) and, on an
//! API call, every method-override field (a Rack stack would run a
//! `POST` charged as `other` as the `GET` it names).
//!
//! RFC 9110 §7.6.1: "a proxy or gateway MUST parse a received Connection
//! header field before a message is forwarded and, for each
//! connection-option in this field, remove any header or trailer field(s)
//! from the message with the same name ..., and then remove the Connection
//! header field itself".

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;

use super::Forwarding;
use crate::h1;
use crate::head::names::{CONNECTION, HOST, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID};
use crate::head::{self, RequestFields};

/// Hop-by-hop fields, dropped both ways whatever `Connection` says: the ones
/// RFC 9110 §7.6.1 names, `Transfer-Encoding` (the framing is each hop's
/// own) and the legacy ones proxies drop (`Keep-Alive`, `Proxy-Connection`).
/// Lower-case names, compared as bytes: every field of every call on the
/// fast path meets this table, and a `HeaderName` comparison costs a lookup
/// of its text.
pub static HOP_BY_HOP: [&str; 9] = [
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

/// The lower-case first letter of a field name: most fields are told apart
/// from the tables here by it alone.
fn initial(name: &[u8]) -> u8 {
    name.first().map_or(0, u8::to_ascii_lowercase)
}

fn is_any(name: &[u8], table: &[&str]) -> bool {
    table.iter().any(|t| name.eq_ignore_ascii_case(t.as_bytes()))
}

/// Whether `name` is in [`HOP_BY_HOP`].
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    matches!(initial(name), b'c' | b'k' | b'p' | b't' | b'u') && is_any(name, &HOP_BY_HOP)
}

/// Whether a `Connection` value lists `name` as one of its options.
pub fn lists(connection: &[u8], name: &[u8]) -> bool {
    connection.split(|&b| b == b',').any(|o| o.trim_ascii().eq_ignore_ascii_case(name))
}

/// Request fields the gateway sets itself on every forwarded call, in place
/// of the downstream's.
static SET_HERE: [&str; 5] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "host", "x-request-id"];

fn set_here(name: &[u8]) -> bool {
    matches!(initial(name), b'h' | b'x') && is_any(name, &SET_HERE)
}

/// Fields naming a method other than the request's: Rack's and others'
/// method overrides.
pub static METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// Whether a downstream request field is kept from the upstream (besides
/// hop-by-hop fields and those `set_here`), for a call `f` describes.
pub fn withheld(name: &[u8], f: &Forwarding<'_>) -> bool {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if name.contains(&b'_') {
        return true;
    }
    if !matches!(initial(name), b'f' | b't' | b'x') {
        return false;
    }
    is("forwarded")
        || is("front-end-https")
        || (name.len() > 12 && name[..12].eq_ignore_ascii_case(b"x-forwarded-") && !set_here(name))
        || (!f.peer_trusted && (is("x-real-ip") || is("true-client-ip")))
        || (f.host.is_some() && METHOD_OVERRIDES.iter().any(|m| is(m)))
}

/// What the upstream is told about a call, from the downstream's fields and
/// what the gateway resolved: the values of the fields `set_here` names.
struct Told<'a> {
    /// A trusted proxy's `X-Forwarded-For` chain, extended with the peer.
    chain: Option<&'a str>,
    proto: &'static [u8],
    /// `Host` (and `X-Forwarded-Host`): the charged tenant's canonical
    /// domain; for portal traffic, the downstream's `Host`.
    host: Option<&'a [u8]>,
}

impl<'a> Told<'a> {
    fn of(fields: &'a (impl RequestFields + ?Sized), f: &'a Forwarding<'_>) -> Told<'a> {
        Told {
            // Only a trusted proxy's chain is kept; anyone else's is replaced.
            chain: fields.first(&X_FORWARDED_FOR).and_then(head::text).filter(|_| f.peer_trusted),
            proto: if f.https { b"https" } else { b"http" },
            // The resolved host is the tenant the budget was charged to; the
            // upstream must see the same one (absolute-form and :authority included).
            host: match f.host {
                Some(host) => Some(host.as_bytes()),
                None => fields.first(&HOST),
            },
        }
    }
}

/// Removes hop-by-hop fields, including those a `Connection` field names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(&CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(&CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// The request's fields as hyper's client sends them: hop-by-hop ones
/// removed, the forwarding fields set.
pub fn edit_request(h: &mut HeaderMap, f: &Forwarding<'_>) {
    strip_hop_by_hop(h);
    if h.keys().any(|n| withheld(n.as_str().as_bytes(), f)) {
        let withheld: Vec<HeaderName> = h.keys().filter(|n| withheld(n.as_str().as_bytes(), f)).cloned().collect();
        for n in withheld {
            h.remove(n);
        }
    }
    let told = Told::of(h, f);
    let ip = f.peer.ip().to_string();
    let xff = match told.chain {
        Some(prev) => HeaderValue::try_from(format!("{prev}, {ip}")),
        None => HeaderValue::try_from(ip),
    };
    let host = told.host.and_then(|v| HeaderValue::from_bytes(v).ok());
    let proto = told.proto;
    for n in [&X_FORWARDED_FOR, &HOST, &X_FORWARDED_HOST] {
        h.remove(n);
    }
    if let Ok(v) = xff {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(if proto == b"https" { "https" } else { "http" }));
    if let Some(v) = host {
        h.insert(X_FORWARDED_HOST.clone(), v.clone());
        h.insert(HOST.clone(), v);
    }
    h.insert(X_REQUEST_ID.clone(), f.request_id.to_value());
}

/// The request head as the raw pool sends it (origin-form, HTTP/1.1): what
/// [`edit_request`] makes of hyper's map, written in one pass without a map
/// (no insertions, no allocation: this runs for every call on the fast
/// path). `ip` is the peer's address as text.
#[allow(clippy::too_many_arguments)]
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    fields: &impl RequestFields,
    f: &Forwarding<'_>,
    ip: &str,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let told = Told::of(fields, f);
    // A field `Connection` names is hop-by-hop too. Heads with `Connection`
    // are rare here (the fast path hands them to hyper), so the fields are
    // written in one pass, and written again only if `Connection` turns up.
    let start = out.len();
    for connection in [false, true] {
        let mut named = false;
        for (name, value) in fields.all() {
            if is_hop_by_hop(name) {
                named |= name.eq_ignore_ascii_case(b"connection");
                continue;
            }
            if set_here(name) || withheld(name, f) || (connection && fields.values(&CONNECTION).any(|c| lists(c, name)))
            {
                continue;
            }
            // Names go out lower-case, as hyper's client writes them.
            out.extend(name.iter().map(u8::to_ascii_lowercase));
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if !named || connection {
            break;
        }
        out.truncate(start);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = told.chain {
        out.extend_from_slice(prev.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    h1::write_field(out, b"x-forwarded-proto", told.proto);
    if let Some(host) = told.host {
        h1::write_field(out, b"x-forwarded-host", host);
        h1::write_field(out, b"host", host);
    }
    h1::write_field(out, b"x-request-id", f.request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How an upstream answer's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerBody {
    /// No body: an answer to `HEAD`, a 204, a 304 or an interim answer.
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes (`Transfer-Encoding` not ending in
    /// `chunked`, or no framing at all); the downstream connection closes
    /// after it.
    UntilClose,
}

/// An upstream answer the gateway will not relay: 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadAnswer;

/// What the gateway reads of an upstream answer's head, in one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerHead {
    pub body: AnswerBody,
    /// `Content-Length`, one number, when it goes downstream ([`relays_length`]).
    pub relayed_length: Option<u64>,
    /// `Connection: close`: the upstream will not take another request on it.
    pub close: bool,
    /// The answer carries its own `X-Request-Id`.
    pub request_id: bool,
    /// The helpdesk's own account numbers (`X-RateLimit-*`, `Retry-After`).
    pub reported: super::reported::Reported,
}

/// The one reading of an upstream answer's framing, for both clients: the
/// downstream must be able to read the answer exactly as the upstream sent
/// it, and nothing of it may be left on a pooled connection for the next
/// tenant's call. Refused (502): a `101` the gateway never asked for, and a
/// `Content-Length` that is not one plain number (`+5`, `5, 6`; repeats of
/// one number are that number). With `Transfer-Encoding`, `Content-Length`
/// is not the framing and is not relayed ([`relays_length`]).
pub fn read_answer<'a>(
    status: u16,
    head_only: bool,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<AnswerHead, BadAnswer> {
    if status == 101 {
        return Err(BadAnswer);
    }
    let mut length: Option<u64> = None;
    let mut coded: Option<bool> = None;
    let (mut close, mut request_id) = (false, false);
    let mut reported = super::reported::Reported::default();
    for (name, value) in fields {
        // Every field of every answer passes here: most are told apart by
        // their first letter alone.
        if !matches!(initial(name), b'c' | b't' | b'x' | b'r') {
            continue;
        }
        if matches!(initial(name), b'x' | b'r') && reported.note(name, value) {
            // The helpdesk's numbers (`reconcile`).
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= lists(value, b"close");
        } else if name.eq_ignore_ascii_case(X_REQUEST_ID.as_str().as_bytes()) {
            request_id = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for n in value.split(|&b| b == b',') {
                let n = plain_length(n.trim_ascii()).ok_or(BadAnswer)?;
                match length {
                    Some(m) if m != n => return Err(BadAnswer),
                    _ => length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().map(<[u8]>::trim_ascii);
            coded = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
        }
    }
    let body = if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        AnswerBody::None
    } else {
        match (coded, length) {
            (Some(true), _) => AnswerBody::Chunked,
            (Some(false), _) | (None, None) => AnswerBody::UntilClose,
            (None, Some(n)) => AnswerBody::Length(n),
        }
    };
    let relayed_length = length.filter(|_| relays_length(status, head_only, body, coded.is_some()));
    Ok(AnswerHead { body, relayed_length, close, request_id, reported })
}

/// Whether an answer's `Content-Length` goes downstream (as one number):
/// not beside `Transfer-Encoding`, and never on a 204 or an interim answer
/// (RFC 9110 §8.6); on a 304 or an answer to `HEAD` it describes the body
/// the request did not ask for, and passes.
pub fn relays_length(status: u16, head_only: bool, body: AnswerBody, chunked_or_coded: bool) -> bool {
    !chunked_or_coded
        && status != 204
        && status >= 200
        && (matches!(body, AnswerBody::Length(_)) || head_only || status == 304)
}

/// One decimal number, digits only (no sign, no spaces inside).
fn plain_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// hyper's answer head, made what [`read_answer`] says may be relayed:
/// `Content-Length` one number or gone, hop-by-hop fields gone, the version
/// the gateway speaks.
pub fn edit_answer(parts: &mut http::response::Parts, head_only: bool) -> Result<(), BadAnswer> {
    let h = &mut parts.headers;
    let status = parts.status.as_u16();
    let read = read_answer(status, head_only, h.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())))?;
    h.remove(&head::names::CONTENT_LENGTH);
    if let Some(n) = read.relayed_length {
        h.insert(head::names::CONTENT_LENGTH.clone(), HeaderValue::from(n));
    }
    strip_hop_by_hop(h);
    parts.version = http::Version::HTTP_11;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;
    use std::time::Duration;

    use crate::head::RequestId;

    /// The fields of a head, one `name: value` per line, names lower-cased, sorted.
    fn fields(head: &[u8]) -> Vec<String> {
        let text = String::from_utf8(head.to_vec()).unwrap();
        let mut lines: Vec<String> = text
            .split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                format!("{}: {v}", n.to_ascii_lowercase())
            })
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn the_raw_head_equals_hyper_s_map_edited_by_the_same_rules() {
        let extra: [&[(&str, &str)]; 8] = [
            &[],
            &[("x-forwarded-for", "203.0.113.7"), ("x-forwarded-host", "edge.example"), ("x-forwarded-proto", "https")],
            &[("x-forwarded-for", "203.0.113.7, 198.51.100.2"), ("x-request-id", "abc")],
            &[("proxy-authorization", "Basic eDp4"), ("trailer", "x-sum"), ("upgrade", "h2c"), ("x-kept", "1")],
            &[("x-forwarded-for", "bad\u{ff}value"), ("x-forwarded-host", "a"), ("x-forwarded-host", "b")],
            &[("connection", "keep-alive, X-Secret-Hop"), ("x-secret-hop", "1"), ("keep-alive", "timeout=5")],
            &[
                ("forwarded", "for=1.2.3.4;host=globex.freshdesk.com;proto=https"),
                ("x-forwarded-ssl", "on"),
                ("x-forwarded-port", "443"),
                ("x-real-ip", "1.2.3.4"),
                ("true-client-ip", "1.2.3.4"),
                ("front-end-https", "on"),
            ],
            &[("transfer_encoding", "chunked"), ("x_forwarded_host", "globex"), ("x-http-method-override", "GET")],
        ];
        let mut cases = 0;
        for extra in extra {
            for trusted in [false, true] {
                for https in [false, true] {
                    for host in [Some("acme.freshdesk.com"), None] {
                        let mut h = HeaderMap::new();
                        h.insert(header::HOST, HeaderValue::from_static("Support.Acme.com:8080"));
                        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic eDp4"));
                        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
                        for (n, v) in extra {
                            h.append(HeaderName::from_static(n), HeaderValue::from_bytes(v.as_bytes()).unwrap());
                        }
                        let f = Forwarding {
                            peer: "192.0.2.1:5555".parse().unwrap(),
                            https,
                            peer_trusted: trusted,
                            host,
                            path: None,
                            request_id: &RequestId::Given(HeaderValue::from_static("req-1")),
                            max_body_bytes: 1 << 20,
                            body_idle: Duration::from_secs(1),
                        };
                        let mut raw = Vec::new();
                        write_request_head(&mut raw, &Method::GET, "/api/v2/tickets", None, &h, &f, "192.0.2.1");
                        let mut map = h.clone();
                        edit_request(&mut map, &f);
                        let mut edited = b"GET /api/v2/tickets HTTP/1.1\r\n".to_vec();
                        for (n, v) in &map {
                            h1::write_field(&mut edited, n.as_str().as_bytes(), v.as_bytes());
                        }
                        assert_eq!(
                            fields(&raw),
                            fields(&edited),
                            "extra {extra:?} trusted {trusted} https {https} host {host:?}"
                        );
                        assert!(raw.ends_with(b"\r\n\r\n"));
                        let sent = fields(&raw);
                        let gone = ["x-secret-hop", "connection", "keep-alive", "forwarded", "front-end-https"];
                        assert!(!sent.iter().any(|l| gone.iter().any(|g| l.starts_with(&format!("{g}:")))), "{sent:?}");
                        assert!(!sent.iter().any(|l| l.split(':').next().unwrap().contains('_')), "{sent:?}");
                        // Exactly the three the gateway sets: For, Proto, Host.
                        assert_eq!(sent.iter().filter(|l| l.starts_with("x-forwarded-")).count(), 3, "{sent:?}");
                        // The upstream is told the charged tenant, whatever a proxy claimed.
                        if let Some(host) = host {
                            assert!(sent.contains(&format!("x-forwarded-host: {host}")), "{sent:?}");
                            assert!(!sent.iter().any(|l| l.starts_with("x-http-method-override")), "{sent:?}");
                        }
                        assert_eq!(
                            sent.iter().any(|l| l.starts_with("x-real-ip")),
                            trusted && extra.iter().any(|(n, _)| *n == "x-real-ip")
                        );
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 64);
    }

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
