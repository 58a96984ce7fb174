//! The fast path's reading of a request head against a reference reading:
//! the same bytes parsed by `httparse::Request` directly and typed as hyper
//! types them (`http::Method`, `http::Uri`, `HeaderName`, `HeaderValue`).
//! Shared by the `fast_head` fuzz target and `tests/fuzz_regressions.rs`.
//!
//! Properties, for any bytes:
//! - `fast::head::parse` never panics and never answers `Closed`; it asks for
//!   more only while the reference asks for more (and the buffer is below
//!   `MAX_HEAD` and holds at most `MAX_HEADERS` fields), and hands over
//!   whatever the reference refuses;
//! - a head it takes (`Ready`/`Waiting`) ends where the reference's does,
//!   within the input, and reads the same method, path, query, fields (names
//!   and values, in order) and body framing (one plain `Content-Length` or
//!   none, no `Transfer-Encoding`); its body is at most `MAX_BODY`, and it is
//!   `Ready` exactly when the whole body is in the buffer;
//! - lookups by name and `RequestId::of` on the head read in place answer as
//!   on a `HeaderMap` built from the reference's fields;
//! - it does not shrink: a head the reference reads as HTTP/1.1, origin-form
//!   ASCII target without fragment, at most `MAX_HEADERS` valid fields, none
//!   of them a hand-over field, and at most one plain `Content-Length` up to
//!   `MAX_BODY` (in at most 6 digits), is taken.

use deskgate::fast::head::{parse, FastHead, Head, MAX_HEADERS};
use deskgate::fast::{MAX_BODY, MAX_HEAD};
use deskgate::head::{names, RequestFields, RequestHead, RequestId};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};

/// Fields that make a request hyper's (streamed bodies, upgrades, interim
/// answers, connection options), written out here rather than taken from
/// `fast::hands_over`, so the property does not trust the code it checks.
const HYPERS: [&str; 8] =
    ["transfer-encoding", "connection", "upgrade", "expect", "te", "keep-alive", "proxy-connection", "http2-settings"];

static X_A: HeaderName = HeaderName::from_static("a");
static X_X: HeaderName = HeaderName::from_static("x");

/// Names looked up on both readings (the fuzzer's seeds and mutations reach
/// them; `a` and `x` are short enough to be found from scratch).
static LOOKUPS: [&HeaderName; 10] = [
    &names::HOST,
    &names::ACCEPT,
    &names::AUTHORIZATION,
    &names::CONTENT_TYPE,
    &names::CONTENT_LENGTH,
    &names::X_REQUEST_ID,
    &names::X_FORWARDED_FOR,
    &names::TRANSFER_ENCODING,
    &X_A,
    &X_X,
];

/// The reference reading of a complete head.
struct Reference<'b> {
    len: usize,
    version: u8,
    method: &'b str,
    path: &'b str,
    fields: Vec<(&'b [u8], &'b [u8])>,
}

pub fn check(data: &[u8]) {
    // More room than the fast path gives itself, so "too many fields" is
    // the fast path's own limit, checked below, not a shared one.
    let mut found = [httparse::EMPTY_HEADER; 4 * MAX_HEADERS];
    let mut req = httparse::Request::new(&mut found);
    let reference = match req.parse(data) {
        Ok(httparse::Status::Complete(len)) => Ok(Reference {
            len,
            version: req.version.expect("a complete head has a version"),
            method: req.method.expect("a complete head has a method"),
            path: req.path.expect("a complete head has a target"),
            fields: req.headers.iter().map(|f| (f.name.as_bytes(), f.value)).collect(),
        }),
        Ok(httparse::Status::Partial) => Err(true),
        Err(_) => Err(false),
    };

    let mut at = Vec::new();
    let head = parse(data, &mut at);
    let taken = match (&head, &reference) {
        (Head::Ready(p) | Head::Waiting(p), Ok(r)) => (p.clone(), r),
        (Head::Ready(_) | Head::Waiting(_), Err(partial)) => {
            panic!("taken, but httparse reads {}", if *partial { "a partial head" } else { "an error" })
        }
        (Head::Closed, _) => panic!("parse never closes"),
        (Head::Partial, Err(true)) => {
            assert!(data.len() < MAX_HEAD, "a partial head of {} bytes is still waited for", data.len());
            return;
        }
        (Head::Partial, _) => panic!("waits for more, but httparse reads {:?}", reference.as_ref().err()),
        (Head::HandOver, Err(true)) => {
            // Past MAX_HEAD, or already past MAX_HEADERS fields: hyper's.
            let mut room = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let too_many = httparse::Request::new(&mut room).parse(data) == Err(httparse::Error::TooManyHeaders);
            assert!(data.len() >= MAX_HEAD || too_many, "a partial head of {} bytes is handed over", data.len());
            return;
        }
        (Head::HandOver, Err(false)) => return,
        (Head::HandOver, Ok(r)) => {
            assert!(!fast_paths(r), "handed over, though the fast path should take it: {:?}", r.fields);
            return;
        }
    };
    let (p, r) = taken;

    // Where the head ends, and its body.
    assert_eq!(p.len, r.len, "head length");
    assert!(p.len <= data.len());
    assert!(p.body <= MAX_BODY);
    assert_eq!(matches!(head, Head::Ready(_)), data.len() >= p.len + p.body, "Ready iff the body is all there");
    assert_eq!(r.version, 1, "an HTTP/1.0 head was taken");
    let t = p.target;
    assert!(t.start <= t.query_at && t.query_at <= t.end && t.end as usize <= p.len, "target {t:?} not in the head");

    // Method and target, as hyper types them.
    let method = Method::from_bytes(r.method.as_bytes()).expect("taken, but Method refuses it");
    assert_eq!(p.method, method);
    let uri = Uri::try_from(r.path.as_bytes()).unwrap_or_else(|e| panic!("taken, but Uri refuses {:?}: {e}", r.path));
    assert!(uri.scheme().is_none() && uri.authority().is_none(), "taken, but not origin-form: {uri}");
    let fast = FastHead::new(p.method.clone(), p.target, &data[..p.len], &at);
    assert_eq!((fast.path(), fast.query()), (uri.path(), uri.query()), "target {:?}", r.path);
    assert_eq!(fast.method(), &method);
    assert_eq!(fast.authority(), None);

    // Fields, in order, each one hyper would build.
    assert_eq!(fast.all().collect::<Vec<_>>(), r.fields, "fields");
    let mut map = HeaderMap::new();
    for &(name, value) in &r.fields {
        let n = HeaderName::from_bytes(name).unwrap_or_else(|e| panic!("taken, but HeaderName refuses {name:?}: {e}"));
        let v =
            HeaderValue::from_bytes(value).unwrap_or_else(|e| panic!("taken, but HeaderValue refuses {value:?}: {e}"));
        map.append(n, v);
    }
    assert!(r.fields.len() <= MAX_HEADERS);

    // Body framing: no Transfer-Encoding, and the one Content-Length (or none).
    assert!(!map.contains_key(&names::TRANSFER_ENCODING));
    for name in HYPERS {
        assert!(!map.contains_key(name), "taken with a {name} field");
    }
    let lengths: Vec<&[u8]> = map.get_all(&names::CONTENT_LENGTH).iter().map(HeaderValue::as_bytes).collect();
    match lengths.as_slice() {
        [] => assert_eq!(p.body, 0),
        [one] => {
            assert_eq!(Some(p.body as u64), plain_number(one), "Content-Length {:?}", String::from_utf8_lossy(one))
        }
        more => panic!("taken with {} Content-Length fields", more.len()),
    }

    // Lookups by name answer as the map does.
    for &name in &LOOKUPS {
        let from_map: Vec<&[u8]> = map.get_all(name).iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(fast.values(name).collect::<Vec<_>>(), from_map, "values of {name}");
        assert_eq!(fast.first(name), from_map.first().copied());
        assert_eq!(fast.has(name), map.contains_key(name));
    }
    match (RequestId::of(&fast), RequestId::of(&map)) {
        (RequestId::Given(a), RequestId::Given(b)) => assert_eq!(a, b),
        // Both made here: random, nothing to compare.
        (RequestId::Made(_), RequestId::Made(_)) => {}
        (a, b) => panic!("request id: fast path {a:?}, map {b:?}"),
    }
}

/// Whether the reference reading is a head the fast path must take.
fn fast_paths(r: &Reference) -> bool {
    let target = r.path.as_bytes();
    let origin_form = target.first() == Some(&b'/')
        && target.len() <= MAX_HEAD
        && target.iter().all(|&b| b.is_ascii() && b != b'#')
        && Uri::try_from(target).is_ok_and(|u| u.scheme().is_none());
    let mut lengths = 0;
    let fields_ok = r.fields.iter().all(|&(name, value)| {
        let hypers = HYPERS.iter().any(|h| name.eq_ignore_ascii_case(h.as_bytes()));
        let length_ok = if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            // (Written in at most 6 digits: a length padded with zeros
            // past that is hyper's, by the fast path's choice.)
            value.len() <= 6 && plain_number(value).is_some_and(|n| n <= MAX_BODY as u64)
        } else {
            true
        };
        !hypers && length_ok && HeaderName::from_bytes(name).is_ok() && HeaderValue::from_bytes(value).is_ok()
    });
    r.version == 1
        && Method::from_bytes(r.method.as_bytes()).is_ok()
        && origin_form
        && r.fields.len() <= MAX_HEADERS
        && fields_ok
        && lengths <= 1
}

/// A Content-Length that is one plain decimal number (no sign, list or
/// spaces); `None` past `u64`.
fn plain_number(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}
