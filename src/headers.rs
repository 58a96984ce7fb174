//! Decision → response headers (docs/reference.md "Response headers"): `X-RateLimit-*`, the IETF
//! `RateLimit-Policy` / `RateLimit` pair, and `Retry-After` on a 429.

use crate::fields::Fields;
use crate::head::names::{
    self, RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_REMAINING, X_RATELIMIT_TOTAL, X_RATELIMIT_USED,
};
use crate::limiter::{Decision, PolicyState};

/// Adds the rate-limit headers of `d` to a response (any status).
pub fn render(d: &Decision, h: &mut impl Fields) {
    // Every call renders these: numbers go through `itoa` and the strings are
    // built by hand, not by `format!`, which costs several times as much.
    h.field(&X_RATELIMIT_TOTAL, |v| push_number(v, u64::from(d.account.policy.quota)));
    h.field(&X_RATELIMIT_REMAINING, |v| push_number(v, u64::from(d.account.remaining)));
    h.field(&X_RATELIMIT_USED, |v| push_number(v, u64::from(d.charged())));
    h.field(&RATELIMIT_POLICY, |v| push_policies(v, d));
    let tight = d.tighter();
    h.field(&RATELIMIT, |v| {
        push_quoted(v, tight.policy.name);
        v.extend_from_slice(b";r=");
        push_number(v, u64::from(tight.remaining));
        v.extend_from_slice(b";t=");
        push_number(v, until_room_s(tight));
    });
    // A refusal may have set it already (`Reject::fields`), to the same value.
    if let Some(refusal) = d.refusal() {
        if !h.contains(&names::RETRY_AFTER) {
            h.field(&names::RETRY_AFTER, |v| push_number(v, refusal.retry_after_s));
        }
    }
}

/// Adds the rate-limit headers a shadow tenant's answer shows: the budgets
/// that would be enforced and what this call took, but nothing a client
/// backs off on (no `X-RateLimit-Remaining`, `RateLimit` or `Retry-After`),
/// so a dry run changes no client's behaviour.
pub fn render_unenforced(d: &Decision, h: &mut impl Fields) {
    h.field(&X_RATELIMIT_TOTAL, |v| push_number(v, u64::from(d.account.policy.quota)));
    h.field(&X_RATELIMIT_USED, |v| push_number(v, u64::from(d.charged())));
    h.field(&RATELIMIT_POLICY, |v| push_policies(v, d));
}

fn push_policies(v: &mut Vec<u8>, d: &Decision) {
    push_policy(v, &d.account);
    if let Some(e) = &d.endpoint {
        v.extend_from_slice(b", ");
        push_policy(v, e);
    }
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
    use http::HeaderMap;

    fn state(name: &'static str, quota: u32, remaining: u32, reset_ms: u64, retry_ms: Option<u64>) -> PolicyState {
        PolicyState { policy: Policy { name, quota, window_s: 60 }, remaining, reset_ms, retry_ms, slot: 0 }
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
    fn a_shadow_answer_names_the_budgets_but_no_remaining_or_wait() {
        let d = Decision {
            allowed: false,
            cost: 1,
            account: state("account", 50, 0, 4_000, Some(9_001)),
            endpoint: Some(state("ticket_list", 20, 0, 4_000, Some(9_001))),
            degraded: false,
        };
        let mut h = HeaderMap::new();
        render_unenforced(&d, &mut h);
        assert_eq!(h["x-ratelimit-total"], "50");
        assert_eq!(h["x-ratelimit-used-currentrequest"], "0");
        assert_eq!(h["ratelimit-policy"], "\"account\";q=50;w=60, \"ticket_list\";q=20;w=60");
        for name in ["retry-after", "ratelimit", "x-ratelimit-remaining"] {
            assert!(h.get(name).is_none(), "{name}");
        }
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
