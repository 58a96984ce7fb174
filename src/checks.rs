//! Header checks of docs/reference.md "Request order" steps 5-8: Authorization, Accept, Content-Type,
//! Content-Length. Pure functions over a request's fields (hyper's
//! [`http::HeaderMap`] or the fast path's head); none allocates when the
//! request passes, none panics on any header bytes.

use http::Method;

use crate::head::names::{ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use crate::head::{RequestFields, RequestHead};

use crate::reject::Reject;

/// Step 5: exactly one `Authorization` header, scheme `Basic` or `Bearer`
/// (any case), followed by a non-empty credential.
///
/// The credential itself is the upstream's to verify. Two `Authorization`
/// headers are refused too: the upstream might honour the one we did not check.
pub fn authorization(h: &(impl RequestFields + ?Sized)) -> Result<(), Reject> {
    let mut values = h.values(&AUTHORIZATION);
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(Reject::InvalidCredentials);
    };
    let v = trim(value);
    let split = v.iter().position(|&b| b == b' ' || b == b'\t');
    let (scheme, credential) = match split {
        Some(i) => (&v[..i], trim(&v[i..])),
        None => (v, &[][..]),
    };
    let known = scheme.eq_ignore_ascii_case(b"basic") || scheme.eq_ignore_ascii_case(b"bearer");
    if known && !credential.is_empty() {
        Ok(())
    } else {
        Err(Reject::InvalidCredentials)
    }
}

/// Step 6: `Accept` is absent or admits `application/json`.
///
/// Read as RFC 9110 §12.5.1 says: across all `Accept` headers, the most
/// specific range matching `application/json` decides (`application/json`
/// over `application/*` over `*/*`), and it must have q > 0. So
/// `application/json;q=0, */*` is refused, while `text/html, */*;q=0.1` is
/// fine. If several ranges of the same specificity match, the highest q wins.
/// A malformed q (`q=abc`) counts as 1, as if absent: the client named the
/// type, and refusing on a typo would help no one. A field with no media range
/// at all (`Accept:` empty) is treated as absent.
pub fn accept(h: &(impl RequestFields + ?Sized)) -> Result<(), Reject> {
    // (specificity, q) of the best match so far; specificity 0 = none.
    let mut best: (u8, f64) = (0, 0.0);
    let mut any_range = false;
    for value in h.values(&ACCEPT) {
        for range in value.split(|&b| b == b',') {
            let mut parts = range.split(|&b| b == b';');
            let media = trim(parts.next().unwrap_or_default());
            if media.is_empty() {
                continue;
            }
            any_range = true;
            let specificity = if media.eq_ignore_ascii_case(b"application/json") {
                3
            } else if media.eq_ignore_ascii_case(b"application/*") {
                2
            } else if media == b"*/*" {
                1
            } else {
                continue;
            };
            let q = parts.find_map(|p| param(p, b"q")).map_or(1.0, parse_q);
            if specificity > best.0 || (specificity == best.0 && q > best.1) {
                best = (specificity, q);
            }
        }
    }
    if !any_range || (best.0 > 0 && best.1 > 0.0) {
        Ok(())
    } else {
        Err(Reject::InvalidAccept)
    }
}

/// A request the gateway answers itself whatever its path: `CONNECT` (a
/// gateway is no tunnel: 405) and the asterisk-form target of `OPTIONS *`
/// (a question to the gateway, not to the upstream: 400).
pub fn request_form(req: &impl RequestHead) -> Result<(), Reject> {
    if req.method() == Method::CONNECT {
        return Err(Reject::MethodNotAllowed { allow: "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS" });
    }
    if !req.path().starts_with('/') {
        return Err(Reject::BadRequest {
            field: "path",
            message: "The request target must be a path starting with `/`.".to_owned(),
        });
    }
    Ok(())
}

/// RFC 9112 §6.1: `chunked` is the only transfer coding the gateway
/// carries, once, and last. Another coding (`gzip, chunked`) would be
/// dropped with the hop-by-hop field and the upstream would read the body
/// differently than it was sent: 501 (a coding the gateway does not
/// implement). `chunked` twice is malformed: 400.
pub fn transfer_coding(h: &(impl RequestFields + ?Sized)) -> Result<(), Reject> {
    let mut chunked = 0;
    for coding in h.values(&TRANSFER_ENCODING).flat_map(|v| v.split(|&b| b == b',')) {
        let coding = trim(coding);
        if coding.is_empty() {
            continue;
        }
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return Err(Reject::UnsupportedTransferCoding);
        }
        chunked += 1;
    }
    if chunked > 1 {
        return Err(Reject::BadRequest {
            field: "Transfer-Encoding",
            message: "Transfer-Encoding names chunked more than once; send it once.".to_owned(),
        });
    }
    Ok(())
}

/// [`transfer_coding`] and [`connection_options`] in one pass over the
/// fields: every call meets them, and nearly none has either field.
pub fn framing_and_connection(h: &(impl RequestFields + ?Sized)) -> Result<(), Reject> {
    let (mut coded, mut connection) = (false, false);
    for (name, _) in h.all() {
        match name.first().map(u8::to_ascii_lowercase) {
            Some(b't') => coded |= name.eq_ignore_ascii_case(b"transfer-encoding"),
            Some(b'c') => connection |= name.eq_ignore_ascii_case(b"connection"),
            _ => {}
        }
    }
    if coded {
        transfer_coding(h)?;
    }
    if connection {
        connection_options(h)?;
    }
    Ok(())
}

/// Fields a `Connection` option may not name: the ones the gateway checks
/// or sets. A proxy removes every field `Connection` names (RFC 9110
/// §7.6.1), so `Connection: keep-alive, Authorization` would have step 5
/// pass on a credential the upstream never gets.
const POLICED: [&str; 8] = [
    "authorization",
    "content-type",
    "content-length",
    "host",
    "accept",
    "x-request-id",
    "forwarded",
    "transfer-encoding",
];

/// `Connection` names none of the fields the gateway polices or sets (nor
/// any `X-Forwarded-*`): 400 otherwise.
pub fn connection_options(h: &(impl RequestFields + ?Sized)) -> Result<(), Reject> {
    for option in h.values(&CONNECTION).flat_map(|v| v.split(|&b| b == b',')) {
        let option = trim(option);
        let policed = POLICED.iter().any(|p| option.eq_ignore_ascii_case(p.as_bytes()))
            || (option.len() >= 12 && option[..12].eq_ignore_ascii_case(b"x-forwarded-"));
        if policed {
            return Err(Reject::BadRequest {
                field: "Connection",
                message: format!(
                    "Connection may not name {}: the gateway checks or sets that field.",
                    String::from_utf8_lossy(option)
                ),
            });
        }
    }
    Ok(())
}

/// A `GET` or `HEAD` API call carries no body: a server that merges body
/// parameters would read an `include` list the gateway did not price, and
/// one that ignores the body would read it as the next request.
pub fn bodiless(method: &Method, body_present: bool) -> Result<(), Reject> {
    if body_present && (method == Method::GET || method == Method::HEAD) {
        return Err(Reject::BadRequest {
            field: "body",
            message: format!("A {method} request may not carry a body; send its parameters in the query."),
        });
    }
    Ok(())
}

/// Whether the request carries a body by its headers: `Content-Length` > 0
/// (an unparsable one counts as a body; [`content_length`] refuses it) or any
/// `Transfer-Encoding` (RFC 9112 §6.1: its presence means a body follows).
///
/// An HTTP/2 request may stream a body with neither header; the caller should
/// also ask the body itself (`!body.is_end_stream()`) and use
/// [`content_type_given`].
pub fn has_body(h: &(impl RequestFields + ?Sized)) -> bool {
    if h.values(&TRANSFER_ENCODING).any(|v| !trim(v).is_empty()) {
        return true;
    }
    h.values(&CONTENT_LENGTH).flat_map(|v| v.split(|&b| b == b',')).any(|n| !matches!(parse_len(n), Some(0)))
}

/// Step 7: a request with a body ([`has_body`]) must have `Content-Type`
/// `application/json` (any parameters) or `multipart/form-data` with a
/// non-empty `boundary`. A bodiless request may send any Content-Type.
pub fn content_type(h: &(impl RequestFields + ?Sized)) -> Result<(), Reject> {
    content_type_given(h, has_body(h))
}

/// [`content_type`] with the body's presence decided by the caller (who may
/// know better than the headers, e.g. an HTTP/2 body without Content-Length).
/// Two `Content-Type` headers are refused: which one would the upstream read?
pub fn content_type_given(h: &(impl RequestFields + ?Sized), has_body: bool) -> Result<(), Reject> {
    if !has_body {
        return Ok(());
    }
    let mut values = h.values(&CONTENT_TYPE);
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(Reject::InvalidContentType);
    };
    let mut parts = value.split(|&b| b == b';');
    let media = trim(parts.next().unwrap_or_default());
    if media.eq_ignore_ascii_case(b"application/json") {
        return Ok(());
    }
    if media.eq_ignore_ascii_case(b"multipart/form-data")
        && parts.filter_map(|p| param(p, b"boundary")).any(|b| !unquote(b).is_empty())
    {
        return Ok(());
    }
    Err(Reject::InvalidContentType)
}

/// Step 8: the declared body size is at most `max`.
///
/// Repeated or comma-listed Content-Length values are accepted only if all
/// equal (RFC 9110 §8.6); differing or non-numeric ones are 400. A number too
/// big for u64 is certainly above `max`: 413. Without Content-Length (chunked)
/// there is nothing to check here: the streaming body must be capped by the
/// caller.
pub fn content_length(h: &(impl RequestFields + ?Sized), max: u64) -> Result<(), Reject> {
    let mut declared: Option<u64> = None;
    for v in h.values(&CONTENT_LENGTH) {
        for item in v.split(|&b| b == b',') {
            let item = trim(item);
            if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
                return Err(bad_length("Content-Length must be a non-negative whole number of bytes."));
            }
            let n = parse_len(item).unwrap_or(u64::MAX);
            match declared {
                Some(d) if d != n => {
                    return Err(bad_length("The request has conflicting Content-Length values; send exactly one."))
                }
                _ => declared = Some(n),
            }
        }
    }
    match declared {
        Some(n) if n > max => Err(Reject::PayloadTooLarge { limit: max }),
        _ => Ok(()),
    }
}

fn bad_length(message: &str) -> Reject {
    Reject::BadRequest { field: "Content-Length", message: message.to_owned() }
}

/// Trims optional whitespace (RFC 9110 §5.6.3: SP and HTAB).
fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// The value of parameter `name` (case-insensitive) in one `name=value` chunk.
fn param<'a>(chunk: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let i = chunk.iter().position(|&b| b == b'=')?;
    trim(&chunk[..i]).eq_ignore_ascii_case(name).then(|| trim(&chunk[i + 1..]))
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// A q value; malformed (not a finite number) reads as 1.
fn parse_q(v: &[u8]) -> f64 {
    std::str::from_utf8(unquote(v)).ok().and_then(|s| s.parse::<f64>().ok()).filter(|q| q.is_finite()).unwrap_or(1.0)
}

/// Digits only (`str::parse` would take `+5`); None on anything else or overflow.
fn parse_len(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(
        0u64,
        |n, &b| {
            if b.is_ascii_digit() {
                n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
            } else {
                None
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;
    use http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&HeaderName, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            match HeaderValue::from_bytes(value) {
                Ok(v) => {
                    h.append((*name).clone(), v);
                }
                Err(e) => panic!("bad test header {value:?}: {e}"),
            }
        }
        h
    }

    fn one(name: &HeaderName, value: &str) -> HeaderMap {
        headers(&[(name, value.as_bytes())])
    }

    #[test]
    fn authorization_with_basic_or_bearer_and_a_credential_passes() {
        for v in [
            "Basic YWJjOlg=",
            "basic YWJjOlg=",
            "BASIC YWJjOlg=",
            "Bearer abc.def.ghi",
            "bEaReR t",
            "Basic  YWJjOlg=",
            " Basic\tYWJjOlg= ",
        ] {
            assert_eq!(authorization(&one(&AUTHORIZATION, v)), Ok(()), "{v:?}");
        }
    }

    #[test]
    fn missing_or_malformed_authorization_is_invalid_credentials() {
        assert_eq!(authorization(&HeaderMap::new()), Err(Reject::InvalidCredentials));
        for v in ["", "Basic", "Basic ", "Bearer   ", "Digest abc", "Token abc", "BasicYWJj", "YWJjOlg=", "Basic\t"] {
            assert_eq!(authorization(&one(&AUTHORIZATION, v)), Err(Reject::InvalidCredentials), "{v:?}");
        }
        let two = headers(&[(&AUTHORIZATION, b"Basic a"), (&AUTHORIZATION, b"Bearer b")]);
        assert_eq!(authorization(&two), Err(Reject::InvalidCredentials));
    }

    #[test]
    fn accept_admitting_json_passes() {
        assert_eq!(accept(&HeaderMap::new()), Ok(()));
        for v in [
            "",
            " , ",
            "application/json",
            "APPLICATION/JSON",
            "application/json; charset=utf-8",
            "application/*",
            "*/*",
            "text/html, application/json;q=0.5",
            "text/html,*/*;q=0.1",
            "application/json;q=1",
            "application/json;q=0.001",
            "application/json; Q=1.0",
            "application/json;q=abc",
            "application/json;q=\"0.5\"",
            "application/*;q=0, application/json",
            "application/json;q=0, application/json;q=0.2",
            "*/*;q=0, application/*;q=0.3",
        ] {
            assert_eq!(accept(&one(&ACCEPT, v)), Ok(()), "{v:?}");
        }
        let split = headers(&[(&ACCEPT, b"text/html"), (&ACCEPT, b"application/json")]);
        assert_eq!(accept(&split), Ok(()));
    }

    #[test]
    fn accept_not_admitting_json_is_406() {
        for v in [
            "text/html",
            "text/*",
            "application/xml",
            "application/jsonx",
            "application/vnd.api+json",
            "application/json;q=0",
            "application/json;q=0.0",
            "application/json;q=0.000",
            "application/*;q=0",
            "*/*;q=0",
            "application/json;q=0, */*",
            "application/json;q=0, application/*;q=1",
            "application/*;q=0, */*;q=1",
            "text/html, text/plain;q=0.5",
        ] {
            assert_eq!(accept(&one(&ACCEPT, v)), Err(Reject::InvalidAccept), "{v:?}");
        }
        let split = headers(&[(&ACCEPT, b"application/json;q=0"), (&ACCEPT, b"*/*")]);
        assert_eq!(accept(&split), Err(Reject::InvalidAccept));
    }

    #[test]
    fn a_body_is_seen_by_length_or_transfer_encoding() {
        for (pairs, want) in [
            (vec![], false),
            (vec![(&CONTENT_LENGTH, &b"0"[..])], false),
            (vec![(&CONTENT_LENGTH, &b"00"[..])], false),
            (vec![(&CONTENT_LENGTH, &b"1"[..])], true),
            (vec![(&CONTENT_LENGTH, &b"abc"[..])], true),
            (vec![(&TRANSFER_ENCODING, &b"chunked"[..])], true),
            (vec![(&TRANSFER_ENCODING, &b"gzip, CHUNKED"[..])], true),
            (vec![(&CONTENT_LENGTH, &b"0"[..]), (&TRANSFER_ENCODING, &b"chunked"[..])], true),
        ] {
            assert_eq!(has_body(&headers(&pairs)), want, "{pairs:?}");
        }
    }

    #[test]
    fn a_body_with_json_or_multipart_content_type_passes() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/json;charset=UTF-8",
            "multipart/form-data; boundary=----abc",
            "Multipart/Form-Data;BOUNDARY=x",
            "multipart/form-data; charset=utf-8; boundary=\"a b\"",
        ] {
            let h = headers(&[(&CONTENT_LENGTH, b"10"), (&CONTENT_TYPE, ct.as_bytes())]);
            assert_eq!(content_type(&h), Ok(()), "{ct:?}");
        }
    }

    #[test]
    fn a_body_with_another_or_no_content_type_is_415() {
        for ct in [
            &b"text/plain"[..],
            b"application/x-www-form-urlencoded",
            b"application/jsonp",
            b"multipart/form-data",
            b"multipart/form-data; boundary=",
            b"multipart/form-data; boundary=\"\"",
            b"multipart/mixed; boundary=x",
            b"",
        ] {
            let h = headers(&[(&TRANSFER_ENCODING, b"chunked"), (&CONTENT_TYPE, ct)]);
            assert_eq!(content_type(&h), Err(Reject::InvalidContentType), "{ct:?}");
        }
        let none = headers(&[(&CONTENT_LENGTH, b"5")]);
        assert_eq!(content_type(&none), Err(Reject::InvalidContentType));
        let two =
            headers(&[(&CONTENT_LENGTH, b"5"), (&CONTENT_TYPE, b"application/json"), (&CONTENT_TYPE, b"text/plain")]);
        assert_eq!(content_type(&two), Err(Reject::InvalidContentType));
    }

    #[test]
    fn a_bodiless_request_may_send_any_content_type() {
        for pairs in [
            vec![(&CONTENT_TYPE, &b"application/json"[..])],
            vec![(&CONTENT_TYPE, &b"text/plain"[..])],
            vec![(&CONTENT_TYPE, &b"text/plain"[..]), (&CONTENT_LENGTH, &b"0"[..])],
            vec![],
        ] {
            assert_eq!(content_type(&headers(&pairs)), Ok(()), "{pairs:?}");
        }
        let h2_body = one(&CONTENT_TYPE, "text/plain");
        assert_eq!(content_type_given(&h2_body, true), Err(Reject::InvalidContentType));
    }

    #[test]
    fn content_length_within_the_limit_passes() {
        for pairs in [
            vec![],
            vec![(&CONTENT_LENGTH, &b"0"[..])],
            vec![(&CONTENT_LENGTH, &b"100"[..])],
            vec![(&CONTENT_LENGTH, &b"100, 100"[..])],
            vec![(&CONTENT_LENGTH, &b"100"[..]), (&CONTENT_LENGTH, &b"100"[..])],
            vec![(&TRANSFER_ENCODING, &b"chunked"[..])],
        ] {
            assert_eq!(content_length(&headers(&pairs), 100), Ok(()), "{pairs:?}");
        }
    }

    #[test]
    fn content_length_above_the_limit_is_413() {
        for v in ["101", "99999999999", "99999999999999999999999999"] {
            assert_eq!(
                content_length(&one(&CONTENT_LENGTH, v), 100),
                Err(Reject::PayloadTooLarge { limit: 100 }),
                "{v:?}"
            );
        }
    }

    #[test]
    fn bad_or_conflicting_content_length_is_400() {
        for pairs in [
            vec![(&CONTENT_LENGTH, &b"abc"[..])],
            vec![(&CONTENT_LENGTH, &b"+5"[..])],
            vec![(&CONTENT_LENGTH, &b"-1"[..])],
            vec![(&CONTENT_LENGTH, &b"1.5"[..])],
            vec![(&CONTENT_LENGTH, &b""[..])],
            vec![(&CONTENT_LENGTH, &b"5,"[..])],
            vec![(&CONTENT_LENGTH, &b"5, 6"[..])],
            vec![(&CONTENT_LENGTH, &b"5"[..]), (&CONTENT_LENGTH, &b"6"[..])],
        ] {
            assert!(
                matches!(
                    content_length(&headers(&pairs), 100),
                    Err(Reject::BadRequest { field: "Content-Length", .. })
                ),
                "{pairs:?}"
            );
        }
    }
}
