//! Accept, Content-Type, Content-Length and Authorization parsing (docs/reference.md "Request order"
//! steps 5–8). Properties:
//! - no check panics on any header bytes, in any number of fields;
//! - an absent `Accept` is fine, and adding a field `application/json` makes
//!   any `Accept` fine (the most specific range decides, q=1 wins ties);
//! - a request without a body passes step 7 whatever its `Content-Type`,
//!   and with a body, `application/json` passes;
//! - `Content-Length` is accepted only if every value is the same plain
//!   number, and refused with 413 only when that number exceeds the limit.
#![no_main]

use deskgate::checks;
use deskgate::reject::Reject;
use http::header::{HeaderName, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

const NAMES: [HeaderName; 5] = [ACCEPT, CONTENT_TYPE, CONTENT_LENGTH, AUTHORIZATION, TRANSFER_ENCODING];

fuzz_target!(|data: &[u8]| {
    // Fields separated by 0xFF; each field's first byte picks its name.
    let mut h = HeaderMap::new();
    for field in data.split(|&b| b == 0xFF) {
        let Some((&sel, value)) = field.split_first() else { continue };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            h.append(NAMES[usize::from(sel) % NAMES.len()].clone(), v);
        }
    }
    let max = 1_048_576;
    let _ = checks::authorization(&h);
    let accept = checks::accept(&h);
    let body = checks::has_body(&h);
    let ct = checks::content_type(&h);
    let cl = checks::content_length(&h, max);

    if !h.contains_key(ACCEPT) {
        assert!(accept.is_ok());
    }
    let mut with_json = h.clone();
    with_json.append(ACCEPT, HeaderValue::from_static("application/json"));
    assert!(checks::accept(&with_json).is_ok(), "{h:?}");

    assert!(checks::content_type_given(&h, false).is_ok());
    let mut json = h.clone();
    json.remove(CONTENT_TYPE);
    json.insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    assert!(checks::content_type_given(&json, true).is_ok());
    if !body {
        assert!(ct.is_ok());
    }

    // Reference reading of Content-Length: all values equal plain numbers.
    let mut values = Vec::new();
    let mut malformed = false;
    for v in h.get_all(CONTENT_LENGTH) {
        for item in v.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii_start();
            let item = item.iter().rposition(|b| *b != b' ' && *b != b'\t').map_or(&item[..0], |i| &item[..=i]);
            if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
                malformed = true;
            } else {
                // Numbers past u64 are all "too big" alike (the check cannot
                // and need not tell two of them apart: either way, refused).
                let n = std::str::from_utf8(item).unwrap().parse::<u64>().map_or(u128::MAX, u128::from);
                values.push(n);
            }
        }
    }
    let conflicting = values.windows(2).any(|w| w[0] != w[1]);
    let all_too_large = !values.is_empty() && values.iter().all(|&n| n > u128::from(max));
    match (&cl, malformed || conflicting) {
        (Err(Reject::BadRequest { .. }), true) => {}
        // Different values, all past the limit (past u64 they cannot even be
        // told apart): refused as too large rather than as conflicting.
        (Err(Reject::PayloadTooLarge { .. }), true) if !malformed && all_too_large => {}
        (Err(Reject::PayloadTooLarge { .. }), false) => assert!(values[0] > u128::from(max)),
        (Ok(()), false) => assert!(values.first().is_none_or(|&n| n <= u128::from(max))),
        (other, bad) => panic!("{h:?}: content_length gave {other:?}, malformed/conflicting = {bad}"),
    }
});
