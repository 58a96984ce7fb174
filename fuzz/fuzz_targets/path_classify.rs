//! Path normalisation + classification (docs/reference.md "Endpoint classes"). Properties, not just
//! "no panic":
//! - normalisation is idempotent, and its output is what the allocation-free
//!   fast path accepts as canonical (returned borrowed);
//! - the output has no empty, `.` or `..` segment, no `\` and no NUL;
//! - any other spelling of a normalised path (duplicate/trailing slashes, `.`
//!   and `x/..` segments, percent-encoded unreserved characters, lower-case
//!   hex, ASCII case of the `/api/v2` prefix) normalises back to it, so it
//!   is an API call exactly when the canonical one is and classifies the
//!   same (endpoint, cost, or the same 405);
//! - a call's cost is within 1..=MAX_COST.
#![no_main]

use std::borrow::Cow;

use deskgate::endpoint::{classify, is_api, normalize_path, MAX_COST};
use http::Method;
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO"];

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let method = Method::from_bytes(METHODS[usize::from(data[0]) % METHODS.len()].as_bytes()).unwrap();
    let ops = &data[1..data.len().min(9)];
    let rest = String::from_utf8_lossy(&data[data.len().min(9)..]);
    let (raw, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*rest, None),
    };

    let Ok(norm) = normalize_path(raw) else { return };
    let norm = norm.into_owned();

    // Idempotent, and the fast path agrees it is canonical.
    match normalize_path(&norm) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, norm, "{raw:?}"),
        other => panic!("normalising {raw:?} gave {norm:?}, which normalises to {other:?}"),
    }
    assert!(norm.starts_with('/'), "{norm:?}");
    if norm != "/" {
        for seg in norm[1..].split('/') {
            assert!(!seg.is_empty() && seg != "." && seg != "..", "{raw:?} → {norm:?}");
        }
    }
    assert!(!norm.contains('\\') && !norm.contains('\0'), "{raw:?} → {norm:?}");

    let canonical = classify(&method, &norm, query).map(|r| (r.endpoint, r.cost));
    if let Ok((_, cost)) = &canonical {
        assert!((1..=MAX_COST).contains(cost), "{raw:?}: cost {cost}");
    }

    // Another spelling of the same path classifies the same.
    let other = respell(&norm, ops);
    match normalize_path(&other) {
        Ok(n) => assert_eq!(n, norm, "{other:?} (a spelling of {norm:?}) normalised elsewhere"),
        Err(e) => panic!("{other:?} (a spelling of {norm:?}) was refused: {e:?}"),
    }
    assert_eq!(is_api(&norm), is_api(&normalize_path(&other).unwrap()));
    let respelled = classify(&method, &norm, query).map(|r| (r.endpoint, r.cost));
    assert_eq!(format!("{canonical:?}"), format!("{respelled:?}"));
});

/// A different spelling of the canonical path `p`, steered by `ops`.
fn respell(p: &str, ops: &[u8]) -> String {
    let mut segs: Vec<String> = if p == "/" { Vec::new() } else { p[1..].split('/').map(str::to_owned).collect() };
    let mut out = String::new();
    let prefix_api = segs.first().is_some_and(|s| s == "api");
    for (i, seg) in segs.iter_mut().enumerate() {
        let op = ops.get(i % ops.len().max(1)).copied().unwrap_or(0);
        if op & 1 != 0 {
            out.push('/'); // duplicate slash
        }
        if op & 2 != 0 {
            out.push_str("/."); // a `.` segment
        }
        if op & 4 != 0 {
            out.push_str("/zz%2e%2E/.."); // a segment ("zz..", encoded) and the `..` that drops it
        }
        out.push('/');
        let bytes = seg.as_bytes();
        let mut j = 0;
        while j < bytes.len() {
            let b = bytes[j];
            let case_op = (i == 0 && prefix_api) || (i == 1 && prefix_api && seg.eq_ignore_ascii_case("v2"));
            if b == b'%' && op & 8 != 0 {
                // lower-case the hex digits of an escape that stays encoded
                out.push('%');
                out.push_str(&seg[j + 1..j + 3].to_ascii_lowercase());
                j += 3;
                continue;
            }
            if b == b'%' {
                out.push_str(&seg[j..j + 3]);
                j += 3;
                continue;
            }
            if (b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')) && op & 16 != 0 && (j % 2 == 0) {
                out.push_str(&format!("%{b:02x}"));
            } else if case_op && op & 32 != 0 && b.is_ascii_alphabetic() {
                out.push(char::from(b.to_ascii_uppercase()));
            } else {
                let ch_len = seg[j..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&seg[j..j + ch_len]);
                j += ch_len;
                continue;
            }
            j += 1;
        }
    }
    let last = ops.last().copied().unwrap_or(0);
    if last & 64 != 0 || out.is_empty() {
        out.push('/'); // trailing slash
    }
    if last & 128 != 0 {
        out = format!("/x/..{out}"); // a leading segment and its `..`
    }
    out
}
