//! Host → tenant (SPEC §3 step 1): canonical domain, vanity host or unknown.

use std::borrow::Cow;
use std::sync::Arc;

use crate::head::names::HOST;
use crate::head::{self, RequestHead};

use crate::config::Tenant;
use crate::reject::Reject;
use crate::state::{HostEntry, HostKind};

/// The host the downstream asked for, normalised (lower-case, no port, no
/// trailing dot). RFC 9112 §3.2.2: with an absolute-form target (and in h2's
/// `:authority`) the URI's authority wins over any `Host` header, so a proxy
/// must not let the two disagree its way into another tenant.
pub fn requested_host(req: &impl RequestHead) -> Result<Cow<'_, str>, Reject> {
    let mut hosts = req.values(&HOST);
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(bad_host("Send exactly one Host header."));
    }
    let raw = match req.authority() {
        Some(a) => a,
        None => match header {
            Some(h) => head::text(h).ok_or_else(|| bad_host("The Host header is not valid ASCII."))?,
            None => return Err(bad_host("A Host header is required.")),
        },
    };
    normalize_host(raw)
}

fn bad_host(message: &str) -> Reject {
    Reject::BadRequest { field: "Host", message: message.to_owned() }
}

/// Lower-cases and strips `:port` and one trailing dot; refuses userinfo.
pub fn normalize_host(raw: &str) -> Result<Cow<'_, str>, Reject> {
    if raw.contains('@') {
        return Err(bad_host("The Host must not carry user information."));
    }
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop the port.
        match rest.find(']') {
            Some(end) => &raw[..end + 2],
            None => return Err(bad_host("The Host is not a valid host name.")),
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return Err(bad_host("The Host is not a valid host name.")),
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(bad_host("The Host is empty."));
    }
    // Outside an IPv6 literal, a colon or bracket left after the port is
    // gone (`]:81]:80`), or a second trailing dot (`a..`), is no host name;
    // refusing them keeps this a fixed point.
    if !host.starts_with('[') && (host.ends_with('.') || host.bytes().any(|b| matches!(b, b':' | b'[' | b']'))) {
        return Err(bad_host("The Host is not a valid host name."));
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(host))
    }
}

/// Step 1: the tenant whose canonical domain the call used, given what the
/// host led to in the snapshot (`Snapshot::hosts`).
pub fn resolve(entry: Option<&HostEntry>) -> Result<&Arc<Tenant>, Reject> {
    match entry {
        Some(HostEntry { tenant, kind: HostKind::Canonical, .. }) => Ok(tenant),
        Some(HostEntry { tenant, kind: HostKind::Vanity, .. }) => {
            Err(Reject::VanityHost { domain: tenant.domain.clone() })
        }
        None => Err(Reject::UnknownHost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_case_and_a_trailing_dot_are_ignored() {
        for raw in ["acme.freshdesk.com", "ACME.freshdesk.com:443", "acme.freshdesk.com.", "Acme.Freshdesk.Com.:8080"] {
            assert_eq!(normalize_host(raw).unwrap(), "acme.freshdesk.com", "{raw}");
        }
        assert_eq!(normalize_host("[::1]:8080").unwrap(), "[::1]");
    }

    #[test]
    fn userinfo_and_garbage_ports_are_refused() {
        for raw in ["user@acme.freshdesk.com", "acme.freshdesk.com:x", "", ":80", "[::1"] {
            assert!(normalize_host(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn two_host_headers_are_refused() {
        let req = http::Request::builder()
            .uri("/api/v2/tickets")
            .header("host", "a.example")
            .header("host", "b.example")
            .body(())
            .unwrap();
        let (parts, _) = req.into_parts();
        assert!(matches!(requested_host(&parts), Err(Reject::BadRequest { .. })));
    }

    #[test]
    fn an_absolute_uri_wins_over_the_host_header() {
        let req = http::Request::builder()
            .uri("http://acme.freshdesk.com/api/v2/tickets")
            .header("host", "globex.freshdesk.com")
            .body(())
            .unwrap();
        let (parts, _) = req.into_parts();
        assert_eq!(requested_host(&parts).unwrap(), "acme.freshdesk.com");
    }
}
