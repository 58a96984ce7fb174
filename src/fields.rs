//! Where the gateway's own response fields go, so that the rate-limit
//! headers (`headers`) and a refusal's own fields (`reject`) are written by
//! one renderer on both paths. A leaf: `reject` writes into it without
//! depending on `headers`, which depends on the limiter.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// Where the gateway's own response fields go: a response's [`HeaderMap`]
/// (the hyper path, refusals) or [`RawFields`], the text the fast path
/// splices into the upstream's head. One renderer serves both, so the two
/// paths cannot answer with different fields.
pub trait Fields {
    /// Sets `name` to the value `write` appends to the buffer it is given.
    fn field(&mut self, name: &'static HeaderName, write: impl FnOnce(&mut Vec<u8>));

    /// Whether `name` is set.
    fn contains(&self, name: &HeaderName) -> bool;
}

impl Fields for HeaderMap {
    fn field(&mut self, name: &'static HeaderName, write: impl FnOnce(&mut Vec<u8>)) {
        let mut v = Vec::with_capacity(64);
        write(&mut v);
        // Values are rendered from numbers and static names: always valid.
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(v)) {
            self.insert(name.clone(), v);
        }
    }

    fn contains(&self, name: &HeaderName) -> bool {
        self.contains_key(name)
    }
}

/// The gateway's fields as head text (`name: value\r\n` each), plus their
/// names, so the upstream's fields of the same names can be left out.
/// Reused from call to call on a connection: rendering into it allocates
/// nothing once it has grown.
#[derive(Default)]
pub struct RawFields {
    text: Vec<u8>,
    names: Vec<&'static HeaderName>,
}

impl RawFields {
    pub fn clear(&mut self) {
        self.text.clear();
        self.names.clear();
    }

    /// `name: value\r\n` for every field set, in the order they were set.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// Whether one of the fields set is named `name` (any ASCII case).
    pub fn has(&self, name: &[u8]) -> bool {
        self.names.iter().any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
    }

    /// The names of the fields set, lower-case.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.names.iter().map(|n| n.as_str())
    }
}

impl Fields for RawFields {
    fn field(&mut self, name: &'static HeaderName, write: impl FnOnce(&mut Vec<u8>)) {
        // Each name is set once per call (`render` and `finish` see to it).
        debug_assert!(!self.names.contains(&name));
        self.names.push(name);
        self.text.extend_from_slice(name.as_str().as_bytes());
        self.text.extend_from_slice(b": ");
        write(&mut self.text);
        self.text.extend_from_slice(b"\r\n");
    }

    fn contains(&self, name: &HeaderName) -> bool {
        self.names.contains(&name)
    }
}
