//! The one normal form of a host name, for the hosts a config lists and the
//! hosts requests ask for (docs/reference.md "Request order" step 1 ignores port, case and a trailing
//! dot): a configured host is stored as a request for it is normalised, so
//! every spelling a client may send finds it. A leaf, so that `config` and
//! `tenant` share it without depending on each other.

use std::borrow::Cow;

/// Why a host cannot be normalised. Data: `tenant` answers a request with a
/// 400, `config` refuses the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// `user@host`: user information has no place in a host.
    UserInfo,
    /// Nothing left once the port and trailing dot are gone.
    Empty,
    /// A port that is not a number, an unclosed IPv6 literal, or colons,
    /// brackets or dots left over.
    Invalid,
}

impl HostError {
    /// What is wrong, in words for the client.
    pub fn message(self) -> &'static str {
        match self {
            HostError::UserInfo => "The Host must not carry user information.",
            HostError::Empty => "The Host is empty.",
            HostError::Invalid => "The Host is not a valid host name.",
        }
    }
}

/// Lower-cases and strips `:port` and one trailing dot; refuses userinfo and
/// what is no host name once those are gone. A fixed point: normalising a
/// normalised host gives it back unchanged. Borrowed when nothing changes.
pub fn normalize_host(raw: &str) -> Result<Cow<'_, str>, HostError> {
    if raw.contains('@') {
        return Err(HostError::UserInfo);
    }
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop the port.
        match rest.find(']') {
            Some(end) => &raw[..end + 2],
            None => return Err(HostError::Invalid),
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return Err(HostError::Invalid),
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    // Outside an IPv6 literal, a colon or bracket left after the port is
    // gone (`]:81]:80`), or a second trailing dot (`a..`), is no host name;
    // refusing them keeps this a fixed point.
    if !host.starts_with('[') && (host.ends_with('.') || host.bytes().any(|b| matches!(b, b':' | b'[' | b']'))) {
        return Err(HostError::Invalid);
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(host))
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
        assert_eq!(normalize_host("user@acme.freshdesk.com"), Err(HostError::UserInfo));
        assert_eq!(normalize_host(":80"), Err(HostError::Empty));
        for raw in ["acme.freshdesk.com:x", "[::1", "acme.freshdesk.com..", "a:b:80"] {
            assert_eq!(normalize_host(raw), Err(HostError::Invalid), "{raw}");
        }
    }
}
