//! `upstream::chunked::Chunked::feed` (where the raw pool finds the end of
//! an upstream's chunked answer) against a reference reading written here
//! for clarity, not speed. Shared by the `chunked_end` fuzz target and
//! `tests/fuzz_regressions.rs`.
//!
//! Input: the first byte's low 3 bits give a number of cuts, the next bytes
//! (that many) the lengths of the first pieces; the rest is the body, and
//! what is left of it after the pieces is fed as the last piece.
//!
//! Properties, for any bytes and any split of them:
//! - the decoder ends the body where the reference does, or both refuse it,
//!   or both wait for more;
//! - the outcome does not depend on how the bytes were split;
//! - `feed` consumes all it is given until the end, nothing past the end,
//!   and, once done, takes nothing more.

use deskgate::upstream::chunked::Chunked;

/// Whether the reference reading lets a bare LF inside a trailer line pass.
/// The decoder refuses one (RFC 9112 allows none there; see
/// `tests/fuzz_regressions.rs`, `a_bare_lf_in_a_chunked_trailer_is_refused`),
/// so the reference does too.
pub const ALLOW_BARE_LF_IN_TRAILERS: bool = false;

/// What a reading makes of a body's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// The body ends after this many bytes.
    End(usize),
    /// Every byte fits the framing, and the body has not ended.
    More,
    /// A byte that chunked framing does not allow.
    Bad,
}

pub fn check(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else { return };
    let cuts = usize::from(first & 7).min(rest.len());
    let (lengths, body) = rest.split_at(cuts);
    let mut pieces = Vec::new();
    let mut left = body;
    for &n in lengths {
        let (piece, after) = left.split_at(usize::from(n).min(left.len()));
        pieces.push(piece);
        left = after;
    }
    pieces.push(left);

    let expected = reference(body, ALLOW_BARE_LF_IN_TRAILERS);
    assert_eq!(decode(&[body]), expected, "whole body {:?}", String::from_utf8_lossy(body));
    assert_eq!(decode(&pieces), expected, "split at {lengths:?}: {:?}", String::from_utf8_lossy(body));
}

/// The decoder fed `pieces` in turn.
pub fn decode(pieces: &[&[u8]]) -> Reading {
    let mut c = Chunked::default();
    let mut at = 0;
    for piece in pieces {
        let Ok(n) = c.feed(piece) else { return Reading::Bad };
        at += n;
        if c.done() {
            // Nothing past the end is the body's, and nothing more is taken.
            assert_eq!(c.feed(b"0\r\n\r\n"), Ok(0), "fed after its end");
            return Reading::End(at);
        }
        assert_eq!(n, piece.len(), "stopped inside a piece without ending");
    }
    Reading::More
}

/// The reference reading (RFC 9112 §7.1):
///
/// ```text
/// chunked-body = *chunk last-chunk trailer-section CRLF
/// chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
/// last-chunk   = 1*"0" [ chunk-ext ] CRLF
/// trailer-section = *( field-line CRLF )
/// ```
///
/// Checked as framing only: what lies inside an extension or a trailer line
/// is copied through unread, so it is not judged, except that it holds no CR
/// or LF (a line ends with CRLF, and only there). An extension starts at
/// `;` or at whitespace after the size (`BWS ";"`). A size has at most 15
/// hex digits (the decoder's bound: sizes up to 2^60, no overflow). With
/// `bare_lf_in_trailers`, a trailer line may hold LF (see
/// [`ALLOW_BARE_LF_IN_TRAILERS`]).
pub fn reference(b: &[u8], bare_lf_in_trailers: bool) -> Reading {
    let mut i = 0;
    // Expects CRLF at `i`.
    let crlf = |i: usize| match (b.get(i), b.get(i + 1)) {
        (None, _) | (Some(b'\r'), None) => Err(Reading::More),
        (Some(b'\r'), Some(b'\n')) => Ok(i + 2),
        _ => Err(Reading::Bad),
    };
    loop {
        let digits = b[i..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if digits > 15 {
            return Reading::Bad;
        }
        if i + digits == b.len() {
            return Reading::More;
        }
        if digits == 0 {
            return Reading::Bad;
        }
        let hex = std::str::from_utf8(&b[i..i + digits]).expect("hex digits are ASCII");
        let size = u64::from_str_radix(hex, 16).expect("at most 15 hex digits fit");
        i += digits;
        if matches!(b[i], b';' | b' ' | b'\t') {
            let ext = b[i..].iter().take_while(|&&c| c != b'\r' && c != b'\n').count();
            i += ext;
        }
        i = match crlf(i) {
            Ok(i) => i,
            Err(r) => return r,
        };
        if size == 0 {
            break;
        }
        if ((b.len() - i) as u64) < size {
            return Reading::More;
        }
        i += size as usize;
        i = match crlf(i) {
            Ok(i) => i,
            Err(r) => return r,
        };
    }
    // Trailer lines, then the empty line that ends the body.
    loop {
        if b.get(i) == Some(&b'\r') {
            return match crlf(i) {
                Ok(end) => Reading::End(end),
                Err(r) => r,
            };
        }
        let line = b[i..].iter().take_while(|&&c| c != b'\r' && (bare_lf_in_trailers || c != b'\n')).count();
        i += line;
        i = match crlf(i) {
            Ok(i) => i,
            Err(r) => return r,
        };
    }
}
