//! What crosses the gateway, field by field (SPEC §3.5): the one hop-by-hop
//! table and the one set of forwarding rules (`X-Forwarded-*`, `Host`,
//! `X-Request-Id`). Both upstream clients apply them: hyper's edits its
//! `HeaderMap` ([`edit_request`], [`strip_hop_by_hop`]), the raw pool writes
//! head text ([`write_request_head`]); a test below holds the two to the same
//! result.
//!
//! RFC 9110 §7.6.1: "a proxy or gateway MUST parse a received Connection
//! header field before a message is forwarded and, for each
//! connection-option in this field, remove any header or trailer field(s)
//! from the message with the same name ..., and then remove the Connection
//! header field itself".

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

use super::Forwarding;
use crate::h1;
use crate::head::names::{CONNECTION, HOST, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID};
use crate::head::{self, RequestFields};

/// Hop-by-hop fields, dropped both ways whatever `Connection` says: the ones
/// RFC 9110 §7.6.1 names, `Transfer-Encoding` (the framing is each hop's
/// own) and the legacy ones proxies drop (`Keep-Alive`, `Proxy-Connection`).
pub static HOP_BY_HOP: [&HeaderName; 9] = [
    &CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &PROXY_AUTHENTICATE,
    &PROXY_AUTHORIZATION,
    &TE,
    &TRAILER,
    &head::names::TRANSFER_ENCODING,
    &UPGRADE,
];

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static PROXY_AUTHENTICATE: HeaderName = header::PROXY_AUTHENTICATE;
static PROXY_AUTHORIZATION: HeaderName = header::PROXY_AUTHORIZATION;
static TE: HeaderName = header::TE;
static TRAILER: HeaderName = header::TRAILER;
static UPGRADE: HeaderName = header::UPGRADE;

/// Whether `name` is in [`HOP_BY_HOP`].
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| head::is(name, h))
}

/// Whether a `Connection` value lists `name` as one of its options.
pub fn lists(connection: &[u8], name: &[u8]) -> bool {
    connection.split(|&b| b == b',').any(|o| o.trim_ascii().eq_ignore_ascii_case(name))
}

/// Request fields the gateway sets itself on every forwarded call, in place
/// of the downstream's.
fn set_here(name: &[u8]) -> bool {
    [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST, &HOST, &X_REQUEST_ID].iter().any(|n| head::is(name, n))
}

/// What the upstream is told about a call, from the downstream's fields and
/// what the gateway resolved: the values of the fields [`set_here`] names.
struct Told<'a> {
    /// A trusted proxy's `X-Forwarded-For` chain, extended with the peer.
    chain: Option<&'a str>,
    proto: &'static [u8],
    /// `Host` (and `X-Forwarded-Host`): the charged tenant's canonical
    /// domain; for portal traffic, the downstream's `Host`.
    host: Option<&'a [u8]>,
    /// A trusted proxy's own `X-Forwarded-Host`, kept as sent.
    kept_forwarded_host: bool,
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
            kept_forwarded_host: f.peer_trusted && fields.has(&X_FORWARDED_HOST),
        }
    }

    /// Whether a downstream field named `name` is replaced by what this says.
    fn replaces(&self, name: &[u8]) -> bool {
        set_here(name) && !(self.kept_forwarded_host && head::is(name, &X_FORWARDED_HOST))
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
    let told = Told::of(h, f);
    let ip = f.peer.ip().to_string();
    let xff = match told.chain {
        Some(prev) => HeaderValue::try_from(format!("{prev}, {ip}")),
        None => HeaderValue::try_from(ip),
    };
    let host = told.host.and_then(|v| HeaderValue::from_bytes(v).ok());
    let (kept_forwarded_host, proto) = (told.kept_forwarded_host, told.proto);
    h.remove(&X_FORWARDED_FOR);
    h.remove(&HOST);
    if !kept_forwarded_host {
        h.remove(&X_FORWARDED_HOST);
    }
    if let Ok(v) = xff {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(if proto == b"https" { "https" } else { "http" }));
    if let Some(v) = host {
        if !kept_forwarded_host {
            h.insert(X_FORWARDED_HOST.clone(), v.clone());
        }
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
    let connection = fields.has(&CONNECTION);
    for (name, value) in fields.all() {
        if told.replaces(name)
            || is_hop_by_hop(name)
            || (connection && fields.values(&CONNECTION).any(|c| lists(c, name)))
        {
            continue;
        }
        // Names go out lower-case, as hyper's client writes them.
        out.extend(name.iter().map(u8::to_ascii_lowercase));
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
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
        if !told.kept_forwarded_host {
            h1::write_field(out, b"x-forwarded-host", host);
        }
        h1::write_field(out, b"host", host);
    }
    h1::write_field(out, b"x-request-id", f.request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let extra: [&[(&str, &str)]; 6] = [
            &[],
            &[("x-forwarded-for", "203.0.113.7"), ("x-forwarded-host", "edge.example"), ("x-forwarded-proto", "https")],
            &[("x-forwarded-for", "203.0.113.7, 198.51.100.2"), ("x-request-id", "abc")],
            &[("proxy-authorization", "Basic eDp4"), ("trailer", "x-sum"), ("upgrade", "h2c"), ("x-kept", "1")],
            &[("x-forwarded-for", "bad\u{ff}value"), ("x-forwarded-host", "a"), ("x-forwarded-host", "b")],
            &[("connection", "keep-alive, X-Secret-Hop"), ("x-secret-hop", "1"), ("keep-alive", "timeout=5")],
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
                        assert!(!fields(&raw).iter().any(|l| l.starts_with("x-secret-hop")
                            || l.starts_with("connection")
                            || l.starts_with("keep-alive")));
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 48);
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
