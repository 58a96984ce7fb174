//! The fast path's codec: a request head parsed where it lies in the
//! connection's read buffer. A head is taken only if the fast path carries
//! it exactly as hyper would read it ([`super::hands_over`] says what is
//! left to hyper); its target and fields are then read in place, through
//! `head::RequestHead`, as hyper's `Parts` are: no `HeaderMap`, no copy.

use std::ops::Range;

use http::header::HeaderName;
use http::Method;

use super::{body_length, hands_over, origin_form, MAX_HEAD};
use crate::head::{self, RequestFields, RequestHead};

/// More fields than this: hyper's turn.
pub const MAX_HEADERS: usize = 64;

/// What the start of the read buffer holds.
#[derive(Debug)]
pub enum Head {
    /// A head the fast path takes, with its whole declared body.
    Ready(Parsed),
    /// A head the fast path takes whose declared body has not all arrived
    /// (when the wait for it is over: it stalled).
    Waiting(Parsed),
    /// Not a whole head yet.
    Partial,
    /// Not the fast path's: hyper serves the connection from here on.
    HandOver,
    /// The connection closed, or the wait for a head ran out.
    Closed,
}

/// A head the fast path took: where it ends, its body's length, and what
/// was parsed (the fields' places are in the [`FieldsAt`] given to [`parse`]).
#[derive(Debug, Clone)]
pub struct Parsed {
    /// Length of the head (the body follows it in the buffer).
    pub len: usize,
    /// Declared body length (`Content-Length`, at most `MAX_BODY`).
    pub body: usize,
    pub method: Method,
    pub target: Target,
}

/// Where an origin-form request target lies in the read buffer. Checked by
/// [`parse`] to be what `http::Uri` takes from it, ASCII only, so reading it
/// takes no copy (an `http::Uri` is one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Offset of the target's first byte (`/`).
    pub start: u32,
    /// Offset of the `?`, or of the end when there is no query.
    pub query_at: u32,
    /// Offset just past the target.
    pub end: u32,
}

/// Where one field's name and value lie in the read buffer.
#[derive(Debug, Clone)]
pub struct FieldAt {
    pub name: Range<u32>,
    pub value: Range<u32>,
}

/// The places of the fields of the head being served. Kept per connection,
/// so a call allocates nothing for its fields.
pub type FieldsAt = Vec<FieldAt>;

/// Parses the head at the start of `buf`, and records where its fields lie
/// in `at`.
pub fn parse(buf: &[u8], at: &mut FieldsAt) -> Head {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Head::HandOver,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::HandOver,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Head::HandOver;
    };
    let Some(query_at) = origin_form(path.as_bytes()) else { return Head::HandOver };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Head::HandOver };
    // Offsets into the read buffer, which holds at most a head of about
    // MAX_HEAD, a small body and what was read with them: u32 is plenty.
    let base = buf.as_ptr() as usize;
    let place = |s: &[u8]| {
        let from = (s.as_ptr() as usize).wrapping_sub(base) as u32;
        from..from + s.len() as u32
    };
    let path_at = place(path.as_bytes());
    let target = Target { start: path_at.start, query_at: path_at.start + query_at as u32, end: path_at.end };
    at.clear();
    let mut body = None;
    for f in req.headers.iter() {
        let name = f.name.as_bytes();
        // What hyper's `HeaderName`/`HeaderValue` would refuse goes to hyper,
        // which answers it (httparse has checked the name's characters).
        if name.is_empty() || !head::valid_value(f.value) {
            return Head::HandOver;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            // One plain length the fast path can hold; a second field, a list
            // or anything odd is hyper's to judge.
            match (body, body_length(f.value)) {
                (None, Some(n)) => body = Some(n),
                _ => return Head::HandOver,
            }
        } else if hands_over(name) {
            return Head::HandOver;
        }
        at.push(FieldAt { name: place(name), value: place(f.value) });
    }
    let parsed = Parsed { len, body: body.unwrap_or(0), method, target };
    if buf.len() >= len + parsed.body {
        Head::Ready(parsed)
    } else {
        Head::Waiting(parsed)
    }
}

/// A request head the fast path took: method and target parsed, target and
/// fields read where they lie in the read buffer.
pub struct FastHead<'b> {
    pub method: Method,
    pub path: &'b str,
    pub query: Option<&'b str>,
    buf: &'b [u8],
    fields: &'b [FieldAt],
}

impl<'b> FastHead<'b> {
    pub fn new(method: Method, target: Target, buf: &'b [u8], fields: &'b [FieldAt]) -> FastHead<'b> {
        let Target { start, query_at, end } = target;
        let (start, query_at, end) = (start as usize, query_at as usize, end as usize);
        // `parse` let only ASCII through: never the fallbacks.
        let text = |r: Range<usize>| buf.get(r).and_then(|b| std::str::from_utf8(b).ok());
        let path = text(start..query_at).unwrap_or("/");
        let query = if query_at < end { Some(text(query_at + 1..end).unwrap_or_default()) } else { None };
        FastHead { method, path, query, buf, fields }
    }

    fn slice(&self, r: &Range<u32>) -> &[u8] {
        // The ranges were taken from this buffer: always in bounds.
        self.buf.get(r.start as usize..r.end as usize).unwrap_or_default()
    }
}

impl RequestFields for FastHead<'_> {
    fn values<'a>(&'a self, name: &'static HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let name = name.as_str().as_bytes();
        self.fields
            .iter()
            .filter(move |f| self.slice(&f.name).eq_ignore_ascii_case(name))
            .map(move |f| self.slice(&f.value))
    }

    fn all(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(move |f| (self.slice(&f.name), self.slice(&f.value)))
    }
}

impl RequestHead for FastHead<'_> {
    fn method(&self) -> &Method {
        &self.method
    }

    fn path(&self) -> &str {
        self.path
    }

    fn query(&self) -> Option<&str> {
        self.query
    }

    fn authority(&self) -> Option<&str> {
        // The fast path takes origin-form targets only (`/…`).
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::MAX_BODY;
    use super::*;
    use crate::head::names::{X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID};
    use crate::head::RequestId;
    use http::header::{HeaderMap, HeaderValue};
    use http::Uri;
    use rand::{Rng, SeedableRng};

    /// `parse` with a fresh list of field places.
    fn parsed(buf: &[u8]) -> (Head, FieldsAt) {
        let mut at = Vec::new();
        (parse(buf, &mut at), at)
    }

    const HEAD: &[u8] = b"GET /api/v2/tickets?page=2 HTTP/1.1\r\nHost: acme.freshdesk.com\r\nAuthorization: Basic eDp4\r\nAccept: application/json\r\n\r\n";

    #[test]
    fn a_plain_head_is_taken_and_anything_with_a_body_or_options_is_not() {
        match parsed(HEAD) {
            (Head::Ready(p), at) => {
                assert_eq!((p.len, p.body), (HEAD.len(), 0));
                let req = FastHead::new(p.method, p.target, HEAD, &at);
                assert_eq!((req.path(), req.query()), ("/api/v2/tickets", Some("page=2")));
                assert_eq!(req.all().count(), 3);
                assert_eq!(req.first(&head::names::HOST), Some(&b"acme.freshdesk.com"[..]));
                assert_eq!(req.first(&head::names::AUTHORIZATION), Some(&b"Basic eDp4"[..]));
            }
            _ => panic!("a plain GET is the fast path's"),
        }
        assert!(matches!(parsed(&HEAD[..HEAD.len() - 1]).0, Head::Partial));
        // A small body of plain declared length is taken, its length reported.
        let post = b"POST /api/v2/tickets HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}";
        assert!(matches!(parsed(post).0, Head::Ready(p) if p.len == post.len() - 2 && p.body == 2));
        assert!(matches!(parsed(&post[..post.len() - 1]).0, Head::Waiting(p) if p.body == 2));
        let big = format!("PUT /api/v2/tickets/1 HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        for hyper_s in [
            big.as_bytes(),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\n{}",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\n{}",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n{}",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        ] {
            assert!(matches!(parsed(hyper_s).0, Head::HandOver), "{:?}", String::from_utf8_lossy(hyper_s));
        }
    }

    #[test]
    fn mangled_heads_never_panic_and_a_taken_head_is_within_the_input() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..20_000 {
            let mut bytes = HEAD.to_vec();
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(0..bytes.len());
                match rng.gen_range(0..3) {
                    0 => bytes[i] = rng.gen(),
                    1 => {
                        bytes.remove(i);
                    }
                    _ => bytes.insert(i, *b"\r\n: \t/?%\0".get(rng.gen_range(0..9)).unwrap_or(&b'x')),
                }
            }
            if let (Head::Ready(p) | Head::Waiting(p), at) = parsed(&bytes) {
                assert!(p.len <= bytes.len());
                assert!(p.body <= MAX_BODY);
                let req = FastHead::new(p.method, p.target, &bytes[..p.len], &at);
                assert!(req.path().starts_with('/'));
                assert!(req.all().all(|(n, _)| !hands_over(n)));
                assert!(req.values(&head::names::CONTENT_LENGTH).count() <= 1);
                // Every field read in place is the field httparse finds there.
                let mut found = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut direct = httparse::Request::new(&mut found);
                assert!(direct.parse(&bytes).is_ok());
                let direct: Vec<(&[u8], &[u8])> = direct.headers.iter().map(|f| (f.name.as_bytes(), f.value)).collect();
                assert_eq!(req.all().collect::<Vec<_>>(), direct);
            }
        }
    }

    /// Lookups by name, in any case, with repeated fields: the fast path's
    /// head answers exactly as hyper's map does, so both judge a call alike.
    #[test]
    fn fields_read_in_place_answer_lookups_as_a_header_map_does() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let names: [&'static HeaderName; 8] = [
            &head::names::HOST,
            &head::names::ACCEPT,
            &head::names::AUTHORIZATION,
            &head::names::CONTENT_TYPE,
            &head::names::CONTENT_LENGTH,
            &X_REQUEST_ID,
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
        ];
        for _ in 0..2_000 {
            let mut text = "GET /api/v2/tickets HTTP/1.1\r\n".to_owned();
            // The map hyper would build of the same fields.
            let mut map = HeaderMap::new();
            for _ in 0..rng.gen_range(0..8) {
                let name = names[rng.gen_range(0..names.len())].as_str();
                // Any case, as clients send them.
                let name: String =
                    name.chars().map(|c| if rng.gen_bool(0.5) { c.to_ascii_uppercase() } else { c }).collect();
                let value = if name.eq_ignore_ascii_case("content-length") {
                    "0".to_owned()
                } else {
                    // (No spaces at the ends: those are not part of a value.)
                    format!("v{} {}y", rng.gen_range(0..3), "x".repeat(rng.gen_range(0..3)))
                };
                text.push_str(&format!("{name}: {value}\r\n"));
                map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(&value).unwrap());
            }
            text.push_str("\r\n");
            let (head, at) = parsed(text.as_bytes());
            let Head::Ready(p) = head else {
                // Two Content-Length fields: hyper's to judge.
                assert!(text.to_ascii_lowercase().matches("content-length").count() > 1, "{text}");
                continue;
            };
            let req = FastHead::new(p.method, p.target, &text.as_bytes()[..p.len], &at);
            for name in names {
                let from_map: Vec<&[u8]> = map.get_all(name).iter().map(HeaderValue::as_bytes).collect();
                assert_eq!(req.values(name).collect::<Vec<_>>(), from_map, "{text}");
                assert_eq!(req.has(name), map.contains_key(name));
            }
            // The request id the client sent is the one kept.
            if let Some(sent) = map.get(&X_REQUEST_ID) {
                assert_eq!(RequestId::of(&req).as_bytes(), sent.as_bytes());
            }
        }
    }

    #[test]
    fn a_target_read_in_place_is_what_http_uri_makes_of_it() {
        // Bytes from every class http's scanners know, and some they refuse.
        const ALPHABET: &[u8] = b"/?#azAZ09-._~%!$&'()*+,;=:@\"{}|^`[]<> \t\x7f\x00\x80\xc3\xa9";
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (mut taken, mut hypers) = (0, 0);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..24);
            let mut target = vec![b'/'];
            target.extend((0..len).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())]));
            let uri = Uri::try_from(target.as_slice());
            match origin_form(&target) {
                Some(query_at) => {
                    taken += 1;
                    let t = Target { start: 0, query_at: query_at as u32, end: target.len() as u32 };
                    let req = FastHead::new(Method::GET, t, &target, &[]);
                    let uri = uri.unwrap_or_else(|e| panic!("{:?}: taken here, refused by Uri: {e}", target));
                    assert_eq!((req.path(), req.query()), (uri.path(), uri.query()), "{:?}", target);
                }
                None => {
                    hypers += 1;
                    // Left to hyper: refused by Uri too, or a fragment or a
                    // byte above ASCII, which Uri reads differently.
                    assert!(
                        uri.is_err() || target.iter().any(|&b| b == b'#' || b >= 0x80),
                        "{:?}: Uri takes it as it is, the fast path does not",
                        target
                    );
                }
            }
        }
        assert!(taken > 1_000 && hypers > 1_000, "taken {taken}, left to hyper {hypers}");
        // Absolute-form and asterisk-form targets are hyper's.
        for other in [&b"http://a/x"[..], b"*", b""] {
            assert_eq!(origin_form(other), None);
        }
    }
}
