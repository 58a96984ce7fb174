//! What the helpdesk says about the account's budget on an answer:
//! `X-RateLimit-Remaining`, `X-RateLimit-Total` and, on a 429,
//! `Retry-After`. Read in the one pass over the answer's fields that reads
//! its framing (`forwarding::read_answer`), without allocating: the numbers
//! are parsed from the field bytes in place.

use http::HeaderMap;

use crate::head::names::{RETRY_AFTER, X_RATELIMIT_REMAINING, X_RATELIMIT_TOTAL};

/// The helpdesk's numbers, each `None` when absent or not a plain number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reported {
    pub remaining: Option<u32>,
    pub total: Option<u32>,
    /// Whole seconds (the delta-seconds form; an HTTP date is not read).
    pub retry_after_s: Option<u32>,
}

impl Reported {
    /// Takes `name: value` if it is one of the three fields; `true` if it was.
    pub fn note(&mut self, name: &[u8], value: &[u8]) -> bool {
        let slot = if name.eq_ignore_ascii_case(X_RATELIMIT_REMAINING.as_str().as_bytes()) {
            &mut self.remaining
        } else if name.eq_ignore_ascii_case(X_RATELIMIT_TOTAL.as_str().as_bytes()) {
            &mut self.total
        } else if name.eq_ignore_ascii_case(RETRY_AFTER.as_str().as_bytes()) {
            &mut self.retry_after_s
        } else {
            return false;
        };
        *slot = number(value);
        true
    }

    /// The same, from a hyper answer's fields.
    pub fn from_map(h: &HeaderMap) -> Reported {
        let get = |name| h.get(name).and_then(|v| number(v.as_bytes()));
        Reported {
            remaining: get(&X_RATELIMIT_REMAINING),
            total: get(&X_RATELIMIT_TOTAL),
            retry_after_s: get(&RETRY_AFTER),
        }
    }

    /// Whether the answer said anything about the budget.
    pub fn is_empty(&self) -> bool {
        self.remaining.is_none() && self.total.is_none() && self.retry_after_s.is_none()
    }
}

/// One plain decimal number, surrounding blanks allowed; beyond `u32`
/// it saturates (no budget is that large). Anything else (a sign, a
/// fraction, a date, a list) is not a number the gateway acts on.
fn number(v: &[u8]) -> Option<u32> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u32, |n, d| n.saturating_mul(10).saturating_add(u32::from(d - b'0'))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_fields_are_read_as_plain_numbers_and_nothing_else() {
        let mut r = Reported::default();
        assert!(r.note(b"X-RateLimit-Remaining", b" 37 "));
        assert!(r.note(b"x-ratelimit-total", b"400"));
        assert!(r.note(b"Retry-After", b"12"));
        assert!(!r.note(b"X-RateLimit-Used-CurrentRequest", b"1"));
        assert_eq!(r, Reported { remaining: Some(37), total: Some(400), retry_after_s: Some(12) });
        for bad in [&b"-1"[..], b"3.5", b"", b"1, 2", b"Wed, 21 Oct 2015 07:28:00 GMT", b"+4"] {
            let mut r = Reported::default();
            r.note(b"x-ratelimit-remaining", bad);
            assert_eq!(r.remaining, None, "{bad:?}");
        }
        let mut r = Reported::default();
        r.note(b"x-ratelimit-total", b"99999999999999");
        assert_eq!(r.total, Some(u32::MAX));
        assert!(Reported::default().is_empty());
    }
}
