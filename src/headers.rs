//! Decision → response headers (SPEC §3.3): `X-RateLimit-*`, the IETF
//! `RateLimit-Policy` / `RateLimit` pair, and `Retry-After` on a 429.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::HeaderMap;

use crate::limiter::{Decision, PolicyState};

pub static X_RATELIMIT_TOTAL: HeaderName = HeaderName::from_static("x-ratelimit-total");
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub static X_RATELIMIT_USED: HeaderName = HeaderName::from_static("x-ratelimit-used-currentrequest");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Adds the rate-limit headers of `d` to a response (any status).
pub fn render(d: &Decision, h: &mut HeaderMap) {
    // Every call renders these: numbers go through `itoa` and the strings are
    // built by hand, not by `format!`, which costs several times as much.
    h.reserve(6);
    h.insert(X_RATELIMIT_TOTAL.clone(), number(u64::from(d.account.policy.quota)));
    h.insert(X_RATELIMIT_REMAINING.clone(), number(u64::from(d.account.remaining)));
    h.insert(X_RATELIMIT_USED.clone(), number(u64::from(d.charged())));

    let mut policy = Vec::with_capacity(96);
    push_policy(&mut policy, &d.account);
    if let Some(e) = &d.endpoint {
        policy.extend_from_slice(b", ");
        push_policy(&mut policy, e);
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(policy)) {
        h.insert(RATELIMIT_POLICY.clone(), v);
    }

    let tight = d.tighter();
    let mut rl = Vec::with_capacity(64);
    push_quoted(&mut rl, tight.policy.name);
    rl.extend_from_slice(b";r=");
    push_number(&mut rl, u64::from(tight.remaining));
    rl.extend_from_slice(b";t=");
    push_number(&mut rl, until_room_s(tight));
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(rl)) {
        h.insert(RATELIMIT.clone(), v);
    }

    if !d.allowed {
        if let crate::reject::Reject::RateLimited { retry_after_s, .. } = d.reject() {
            h.insert(RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
    }
}

/// `HeaderValue::from(u32)` allocates twice (a `BytesMut`, then its
/// conversion); copying `itoa`'s stack buffer allocates once.
fn number(n: u64) -> HeaderValue {
    let mut buf = itoa::Buffer::new();
    HeaderValue::from_str(buf.format(n)).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn push_number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_quoted(out: &mut Vec<u8>, name: &str) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.push(b'"');
}

fn push_policy(out: &mut Vec<u8>, p: &PolicyState) {
    push_quoted(out, p.policy.name);
    out.extend_from_slice(b";q=");
    push_number(out, u64::from(p.policy.quota));
    out.extend_from_slice(b";w=");
    push_number(out, u64::from(p.policy.window_s));
}

fn until_room_s(p: &PolicyState) -> u64 {
    match p.retry_ms {
        Some(u64::MAX) => u64::from(p.policy.window_s),
        Some(ms) => ms.div_ceil(1000),
        None => p.reset_ms.div_ceil(1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Policy;

    fn state(name: &'static str, quota: u32, remaining: u32, reset_ms: u64, retry_ms: Option<u64>) -> PolicyState {
        PolicyState { policy: Policy { name, quota, window_s: 60 }, remaining, reset_ms, retry_ms }
    }

    #[test]
    fn both_policies_are_named_and_the_tighter_one_is_reported() {
        let d = Decision {
            allowed: true,
            cost: 1,
            account: state("account", 400, 350, 30_000, None),
            endpoint: Some(state("ticket_list", 100, 37, 11_200, None)),
            degraded: false,
        };
        let mut h = HeaderMap::new();
        render(&d, &mut h);
        assert_eq!(h["x-ratelimit-total"], "400");
        assert_eq!(h["x-ratelimit-remaining"], "350");
        assert_eq!(h["x-ratelimit-used-currentrequest"], "1");
        assert_eq!(h["ratelimit-policy"], "\"account\";q=400;w=60, \"ticket_list\";q=100;w=60");
        assert_eq!(h["ratelimit"], "\"ticket_list\";r=37;t=12");
        assert!(h.get("retry-after").is_none());
    }

    #[test]
    fn a_refusal_costs_nothing_and_says_when_to_retry() {
        let d = Decision {
            allowed: false,
            cost: 3,
            account: state("account", 50, 1, 4_000, Some(9_001)),
            endpoint: None,
            degraded: false,
        };
        let mut h = HeaderMap::new();
        render(&d, &mut h);
        assert_eq!(h["x-ratelimit-used-currentrequest"], "0");
        assert_eq!(h["retry-after"], "10");
        assert_eq!(h["ratelimit"], "\"account\";r=1;t=10");
    }
}
