//! Request path → canonical path (docs/reference.md "Endpoint classes"), so that no spelling of a path
//! escapes its endpoint budget and the upstream sees what we classified.
//!
//! The canonical form:
//! - starts with `/`; no empty segments (duplicate or trailing slashes), except
//!   that the root is `/`;
//! - no `.` or `..` segments (resolved per RFC 3986 §5.2.4, also when they were
//!   percent-encoded);
//! - percent-encoded unreserved characters (RFC 3986 §2.3) are decoded; every
//!   other escape is kept, with uppercase hex digits (RFC 3986 §6.2.2.1);
//! - a first segment `api` (any ASCII case) is lowercased, and so is a second
//!   segment `v2` after it; the rest keeps its case (ids and slugs may be
//!   case-sensitive upstream).
//!
//! Refused with 400, because a server behind us could read them as a different
//! path than we do: an encoded `/` (`%2F`) or `\` (`%5C`), a literal `\`
//! (some servers treat it as a separator), NUL (raw or `%00`), an invalid
//! escape (`%G1`, a truncated `%4`), `..` above the root, and a path that does
//! not start with `/` (`*`, absolute-form leftovers, empty).
//!
//! An already canonical path is returned borrowed: the hot path (a plain
//! `/api/v2/tickets/42`) is one scan and no allocation.

use std::borrow::Cow;

use super::RouteError;

/// Normalises a request path (without query); see the module docs for the
/// canonical form and what is refused.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, RouteError> {
    if is_canonical(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    rebuild(raw).map(Cow::Owned)
}

/// Whether a normalised path is an API call (policed) rather than a portal
/// page (forwarded untouched): `/api` or anything under `/api/`.
pub fn is_api(normalized: &str) -> bool {
    normalized == "/api" || normalized.starts_with("/api/")
}

/// Whether a normalised path holds a `;` (raw, or `%3B` as normalisation
/// spells it): segment parameters, which some servers strip before routing.
pub fn has_params(normalized: &str) -> bool {
    let b = normalized.as_bytes();
    // One pass for both bytes; most paths have neither.
    b.iter().any(|&c| c == b';' || c == b'%') && (b.contains(&b';') || b.windows(3).any(|w| w == b"%3B"))
}

/// Whether a normalised path that is not an API call would be one to a
/// server that strips `;` parameters from its segments (`/api;x/v2/...`,
/// `/api%3Bx/...`).
pub fn names_api(normalized: &str) -> bool {
    let first = normalized.strip_prefix('/').unwrap_or(normalized).split('/').next().unwrap_or_default();
    let cut = [first.find(';'), first.find("%3B")].into_iter().flatten().min();
    cut.is_some_and(|i| first[..i].eq_ignore_ascii_case("api"))
}

fn bad(message: &'static str) -> RouteError {
    RouteError::BadPath(message)
}

/// RFC 3986 §2.3 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_upper_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'A'..=b'F').contains(&b)
}

/// Bytes that may never appear decoded in a path we forward.
fn forbidden_decoded(b: u8) -> bool {
    matches!(b, b'/' | b'\\' | 0)
}

/// One scan, no allocation: true only if [`rebuild`] would return `raw` as is.
fn is_canonical(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    if rest.is_empty() {
        return true; // the root
    }
    for (i, seg) in rest.split('/').enumerate() {
        if seg.is_empty() || seg == "." || seg == ".." {
            return false;
        }
        let b = seg.as_bytes();
        let mut j = 0;
        while j < b.len() {
            match b[j] {
                0 | b'\\' => return false,
                b'%' => {
                    let (Some(&h), Some(&l)) = (b.get(j + 1), b.get(j + 2)) else {
                        return false;
                    };
                    if !is_upper_hex(h) || !is_upper_hex(l) {
                        return false;
                    }
                    let v = hex_val(h).unwrap_or(0) << 4 | hex_val(l).unwrap_or(0);
                    if is_unreserved(v) || forbidden_decoded(v) {
                        return false;
                    }
                    j += 3;
                }
                _ => j += 1,
            }
        }
        // Prefix case: `api` then `v2` must already be lowercase.
        if (i == 0 && seg.eq_ignore_ascii_case("api") && seg != "api")
            || (i == 1 && rest.starts_with("api/") && seg.eq_ignore_ascii_case("v2") && seg != "v2")
        {
            return false;
        }
    }
    true
}

/// Decodes one segment: unreserved escapes decoded, others uppercased.
fn decode_segment(seg: &str) -> Result<String, RouteError> {
    let b = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut j = 0;
    // Copy runs of plain characters as &str slices so multi-byte UTF-8 stays intact.
    let mut run_start = 0;
    while j < b.len() {
        match b[j] {
            0 => return Err(bad("The path contains a NUL character.")),
            b'\\' => return Err(bad("The path contains a backslash (\\); use / to separate path segments.")),
            b'%' => {
                out.push_str(&seg[run_start..j]);
                let (h, l) = match (b.get(j + 1), b.get(j + 2)) {
                    (Some(&h), Some(&l)) => (h, l),
                    _ => {
                        return Err(bad(
                            "The path contains a truncated percent-escape; '%' must be followed by two hex digits (write %25 for a literal '%').",
                        ))
                    }
                };
                let (Some(hv), Some(lv)) = (hex_val(h), hex_val(l)) else {
                    return Err(bad(
                        "The path contains an invalid percent-escape; '%' must be followed by two hex digits (write %25 for a literal '%').",
                    ));
                };
                let v = hv << 4 | lv;
                match v {
                    b'/' => {
                        return Err(bad(
                            "The path contains an encoded slash (%2F), which is not allowed; use a literal / between segments.",
                        ))
                    }
                    b'\\' => {
                        return Err(bad(
                            "The path contains an encoded backslash (%5C), which is not allowed.",
                        ))
                    }
                    0 => return Err(bad("The path contains an encoded NUL (%00).")),
                    v if is_unreserved(v) => out.push(char::from(v)),
                    _ => {
                        out.push('%');
                        out.push(char::from(h.to_ascii_uppercase()));
                        out.push(char::from(l.to_ascii_uppercase()));
                    }
                }
                j += 3;
                run_start = j;
            }
            _ => j += 1,
        }
    }
    out.push_str(&seg[run_start..]);
    Ok(out)
}

/// The slow path: builds the canonical form, or refuses.
fn rebuild(raw: &str) -> Result<String, RouteError> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(bad("The request path must start with '/', e.g. /api/v2/tickets."));
    };
    let mut segs: Vec<String> = Vec::new();
    for seg in rest.split('/') {
        // Decode first, so `%2e%2e` is resolved like `..` (and every segment,
        // even an empty or dropped one, is checked for refused bytes).
        let seg = decode_segment(seg)?;
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                if segs.pop().is_none() {
                    return Err(bad("The path climbs above the root with '..', which is not allowed."));
                }
            }
            _ => segs.push(seg),
        }
    }
    if let Some(first) = segs.first_mut() {
        if first.eq_ignore_ascii_case("api") {
            first.make_ascii_lowercase();
            if let Some(second) = segs.get_mut(1) {
                if second.eq_ignore_ascii_case("v2") {
                    second.make_ascii_lowercase();
                }
            }
        }
    }
    let mut out = String::with_capacity(raw.len());
    if segs.is_empty() {
        out.push('/');
    }
    for seg in &segs {
        out.push('/');
        out.push_str(seg);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> String {
        match normalize_path(raw) {
            Ok(p) => p.into_owned(),
            Err(e) => panic!("{raw:?} was refused: {e:?}"),
        }
    }

    fn refused(raw: &str) -> String {
        match normalize_path(raw) {
            Ok(p) => panic!("{raw:?} was accepted as {p:?}"),
            Err(RouteError::BadPath(message)) => message.to_owned(),
            Err(other) => panic!("{raw:?} gave {other:?}, not a 400"),
        }
    }

    const TICKET_SPELLINGS: &[&str] = &[
        "/api/v2/tickets",
        "//api/v2/tickets",
        "/api//v2///tickets",
        "/api/v2/tickets/",
        "/api/v2/tickets//",
        "/API/v2/tickets/",
        "/API/V2/tickets",
        "/aPi/v2/tickets",
        "/api/v2/./tickets",
        "/./api/v2/tickets/.",
        "/api/v2/x/../tickets",
        "/api/v2/x/y/../../tickets",
        "/api/v2/%74ickets",
        "/api/v2/%74%69%63%6B%65%74%73",
        "/api/v2/%74%69%63%6b%65%74%73",
        "/%61pi/%76%32/tickets",
        "/%41PI/V%32/tickets",
        "/api/%2e/v2/tickets",
        "/api/%2E/v2/tickets",
        "/api/v2/x/%2e%2e/tickets",
        "/api/v2/x/.%2E/tickets",
        "/api/v3/../v2/tickets",
        "/portal/../api/v2/tickets",
    ];

    #[test]
    fn every_spelling_of_the_ticket_list_normalises_to_one_path() {
        for raw in TICKET_SPELLINGS {
            assert_eq!(norm(raw), "/api/v2/tickets", "{raw:?}");
        }
    }

    #[test]
    fn canonical_paths_are_borrowed_not_allocated() {
        for raw in [
            "/",
            "/api",
            "/api/v2/tickets",
            "/api/v2/tickets/42",
            "/api/v2/contacts/7",
            "/api/v2/search/tickets",
            "/api/v2/tickets/outbound_email",
            "/api/v2/a%20b",
            "/api/v2/caf%C3%A9",
            "/support/Solutions/Articles",
            "/API2/x",
            "/apix",
            "/api/V3/Tickets",
            "/api/x/V2",
            "/a.b/.c/d..",
            "/~user",
        ] {
            assert!(matches!(normalize_path(raw), Ok(Cow::Borrowed(p)) if p == raw), "{raw:?}");
        }
    }

    #[test]
    fn non_canonical_spellings_are_rewritten() {
        for (raw, want) in [
            ("//", "/"),
            ("/.", "/"),
            ("/./", "/"),
            ("/a/..", "/"),
            ("/API", "/api"),
            ("/Api", "/api"),
            ("/Api/", "/api"),
            ("/API/V3/Tickets", "/api/V3/Tickets"),
            ("/x/API/V2/", "/x/API/V2"),
        ] {
            assert_eq!(norm(raw), want, "{raw:?}");
        }
        for (raw, want) in [
            ("/api/v2/a%20b", "/api/v2/a%20b"),
            ("/api/v2/a%3ab", "/api/v2/a%3Ab"),
            ("/api/v2/caf%c3%a9", "/api/v2/caf%C3%A9"),
            ("/api/v2/%25", "/api/v2/%25"),
            ("/api/v2/%2541", "/api/v2/%2541"),
            ("/api/v2/%7Euser", "/api/v2/~user"),
            ("/api/v2/%5F%2D%2E", "/api/v2/_-."),
            ("/api/v2/tickets/%34%32", "/api/v2/tickets/42"),
            ("/api/v2/café/", "/api/v2/café"),
        ] {
            assert_eq!(norm(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        let mut inputs: Vec<&str> = TICKET_SPELLINGS.to_vec();
        inputs.extend([
            "/",
            "//",
            "/API",
            "/api/v2/a%3ab/",
            "/api/v2/caf%c3%a9",
            "/api/v2/%2541",
            "/api/v2/%252e%252e/x",
            "/a/b/c/../../d/./e//",
            "/API/V3/x/../Y",
            "/x/%2e%2e/API/v2",
        ]);
        for raw in inputs {
            let once = norm(raw);
            let twice = normalize_path(&once);
            assert!(matches!(&twice, Ok(Cow::Borrowed(p)) if *p == once), "{raw:?} → {once:?} → {twice:?}");
        }
    }

    #[test]
    fn encoded_slash_is_refused() {
        for raw in ["/api/v2/tickets%2F42", "/api%2fv2/tickets", "/%2F"] {
            assert!(refused(raw).contains("%2F"), "{raw:?}");
        }
    }

    #[test]
    fn encoded_and_literal_backslashes_are_refused() {
        for raw in ["/api/v2/tickets%5C42", "/api/v2/tickets%5c42", "/api\\v2\\tickets", "/\\api/v2"] {
            assert!(refused(raw).contains("backslash"), "{raw:?}");
        }
    }

    #[test]
    fn nul_raw_or_encoded_is_refused() {
        for raw in ["/api/v2/tickets%00", "/api/v2/tick\0ets", "/%00/../api"] {
            assert!(refused(raw).contains("NUL"), "{raw:?}");
        }
    }

    #[test]
    fn invalid_percent_escapes_are_refused() {
        for raw in
            ["/api/v2/%G1", "/api/v2/%1G", "/api/v2/%4", "/api/v2/%", "/api/v2/%%41", "/api/v2/x%/y", "/api/v2/%é"]
        {
            assert!(refused(raw).contains("percent-escape"), "{raw:?}");
        }
    }

    #[test]
    fn dot_dot_above_the_root_is_refused() {
        for raw in ["/..", "/../api/v2/tickets", "/api/../../etc/passwd", "/%2e%2e/api", "/api/v2/../../../x", "//.."] {
            assert!(refused(raw).contains("above the root"), "{raw:?}");
        }
    }

    #[test]
    fn a_path_not_starting_with_a_slash_is_refused() {
        for raw in ["", "*", "api/v2/tickets", "http://x/api", "%2Fapi", "\\api/v2"] {
            assert!(refused(raw).contains("start with '/'"), "{raw:?}");
        }
    }

    #[test]
    fn api_paths_are_told_from_portal_paths() {
        for (p, want) in [
            ("/api", true),
            ("/api/", true),
            ("/api/v2/tickets", true),
            ("/api/v1/x", true),
            ("/", false),
            ("/apis", false),
            ("/apix/v2", false),
            ("/support/api", false),
            ("/API", false), // callers pass normalised paths
        ] {
            assert_eq!(is_api(p), want, "{p:?}");
        }
        assert!(is_api(&norm("/API/")));
        assert!(is_api(&norm("//Api//v2")));
    }
}
