//! Read access to a request head for the steps that judge and forward it
//! (`proxy`'s steps, `checks`, `tenant`, `upstream::forwarding`):
//! hyper's parsed [`Parts`], or the fast path's head as it lies in the
//! connection's read buffer. One set of steps reads both, so the two paths
//! cannot judge a call differently; the fast path builds no `HeaderMap` (an
//! allocation for the map and one per field value, per call).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::Method;

/// Every field name the gateway reads or sets, as statics, in one place: what
/// takes a name that lives forever (a lookup here borrows its name for as
/// long as the values it returns; `fields::Fields` keeps the names it sets)
/// cannot take the `http` constants, which are consts, not statics.
pub mod names {
    use http::header::{self, HeaderName};

    pub static ACCEPT: HeaderName = header::ACCEPT;
    pub static ALLOW: HeaderName = header::ALLOW;
    pub static AUTHORIZATION: HeaderName = header::AUTHORIZATION;
    pub static CONNECTION: HeaderName = header::CONNECTION;
    pub static CONTENT_LENGTH: HeaderName = header::CONTENT_LENGTH;
    pub static CONTENT_TYPE: HeaderName = header::CONTENT_TYPE;
    pub static HOST: HeaderName = header::HOST;
    pub static RETRY_AFTER: HeaderName = header::RETRY_AFTER;
    pub static TRANSFER_ENCODING: HeaderName = header::TRANSFER_ENCODING;
    pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    pub static X_RATELIMIT_TOTAL: HeaderName = HeaderName::from_static("x-ratelimit-total");
    pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    pub static X_RATELIMIT_USED: HeaderName = HeaderName::from_static("x-ratelimit-used-currentrequest");
    pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
    pub static X_DESKGATE_WEBHOOK_ID: HeaderName = HeaderName::from_static("x-deskgate-webhook-id");
}

/// A request's header fields, looked up by name in any case.
pub trait RequestFields {
    /// The values of every field named `name`, in the order received.
    fn values<'a>(&'a self, name: &'static HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a;

    /// Every field as (name, value), in the order received (a `HeaderMap`
    /// gives a name's values together, in the order of its first field).
    fn all(&self) -> impl Iterator<Item = (&[u8], &[u8])>;

    /// The first value of `name`, if any.
    fn first(&self, name: &'static HeaderName) -> Option<&[u8]> {
        self.values(name).next()
    }

    /// Whether a field named `name` is present.
    fn has(&self, name: &'static HeaderName) -> bool {
        self.values(name).next().is_some()
    }
}

/// A request head: the target and method, and the fields.
pub trait RequestHead: RequestFields {
    fn method(&self) -> &Method;
    fn path(&self) -> &str;
    fn query(&self) -> Option<&str>;
    /// The authority of an absolute-form target (`GET http://host/…`).
    fn authority(&self) -> Option<&str>;
}

impl RequestFields for HeaderMap {
    fn values<'a>(&'a self, name: &'static HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).into_iter().map(HeaderValue::as_bytes)
    }

    fn all(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
    }
}

impl RequestFields for Parts {
    fn values<'a>(&'a self, name: &'static HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        RequestFields::values(&self.headers, name)
    }

    fn all(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        RequestFields::all(&self.headers)
    }
}

impl RequestHead for Parts {
    fn method(&self) -> &Method {
        &self.method
    }

    fn path(&self) -> &str {
        self.uri.path()
    }

    fn query(&self) -> Option<&str> {
        self.uri.query()
    }

    fn authority(&self) -> Option<&str> {
        self.uri.authority().map(|a| a.as_str())
    }
}

/// A field value as text, on the terms of [`HeaderValue::to_str`]: visible
/// ASCII, spaces and tabs only.
pub fn text(value: &[u8]) -> Option<&str> {
    if value.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// Whether `name` (any case) is `known`'s name.
pub fn is(name: &[u8], known: &HeaderName) -> bool {
    name.eq_ignore_ascii_case(known.as_str().as_bytes())
}

/// Whether a field value is one [`HeaderValue::from_bytes`] takes: no
/// control characters but tab.
pub fn valid_value(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// A call's request id: the downstream's `X-Request-Id` when it sent a sane
/// one, else one made here (32 hex digits), kept inline: a call that brings
/// none allocates nothing for its id.
#[derive(Clone, Debug)]
pub enum RequestId {
    Made([u8; 32]),
    Given(HeaderValue),
}

impl RequestId {
    /// The downstream's `X-Request-Id` if it sent a sane one, else a fresh one.
    pub fn of(fields: &(impl RequestFields + ?Sized)) -> RequestId {
        if let Some(v) = fields.first(&names::X_REQUEST_ID) {
            if !v.is_empty() && v.len() <= 200 {
                if let Ok(v) = HeaderValue::from_bytes(v) {
                    return RequestId::Given(v);
                }
            }
        }
        let mut id: u128 = rand::random();
        let mut buf = [0u8; 32];
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for b in buf.iter_mut().rev() {
            *b = DIGITS[(id & 0xf) as usize];
            id >>= 4;
        }
        RequestId::Made(buf)
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Made(id) => id,
            RequestId::Given(v) => v.as_bytes(),
        }
    }

    /// For logs: as `HeaderValue::to_str` reads it ("" when not visible ASCII).
    pub fn as_str(&self) -> &str {
        text(self.as_bytes()).unwrap_or("")
    }

    pub fn to_value(&self) -> HeaderValue {
        match self {
            RequestId::Given(v) => v.clone(),
            // Hex digits: always a valid value.
            RequestId::Made(id) => HeaderValue::from_bytes(id).unwrap_or_else(|_| HeaderValue::from_static("0")),
        }
    }
}
