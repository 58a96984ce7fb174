//! The helpdesk's published plans (docs/reference.md "Configuration"): what a tenant gets when the
//! config does not redefine its plan.

use std::collections::BTreeMap;

use super::{EndpointBudgets, Plan};

/// Default window of every built-in plan: per-minute budgets.
pub(super) const DEFAULT_WINDOW_SECONDS: u32 = 60;
/// Default `max_held_calls`: enough to smooth a burst of one integration,
/// few enough that a flood holds no more than this many tasks per tenant.
pub(super) const DEFAULT_MAX_HELD_CALLS: u32 = 100;
/// `trust_upstream_limits` where neither plan nor tenant sets it: on. The
/// helpdesk's `X-RateLimit-Remaining` counts every integration on the
/// account, not only the calls that pass here, and deskgate only ever
/// charges more on its word, never less: the worst a wrong number can do is
/// refuse early (for at most one window), while trusting nothing forwards
/// calls into 429s the helpdesk announced (README, "Upstream-aware budgets").
pub const DEFAULT_TRUST_UPSTREAM_LIMITS: bool = true;

/// The built-in plans by name. A `[plans.NAME]` table in the config replaces
/// the plan of that name as a whole.
pub fn builtin_plans() -> BTreeMap<String, Plan> {
    // (name, api_access, per_minute, [ticket_create, ticket_update, ticket_list, contact_list])
    const TABLE: [(&str, bool, u32, Option<[u32; 4]>); 8] = [
        ("sprout", false, 0, None),
        ("free", false, 0, None),
        ("trial", true, 50, None),
        ("growth", true, 200, Some([80, 80, 20, 20])),
        ("pro", true, 400, Some([160, 160, 100, 100])),
        ("enterprise", true, 700, Some([280, 280, 200, 200])),
        ("enterprise_1000", true, 1000, Some([400, 400, 300, 300])),
        ("enterprise_2000", true, 2000, Some([800, 800, 400, 400])),
    ];
    TABLE
        .iter()
        .map(|&(name, api_access, per_minute, endpoints)| {
            let endpoints: EndpointBudgets = match endpoints {
                Some(e) => e.map(Some),
                None => [None; 4],
            };
            let plan = Plan {
                name: name.to_owned(),
                api_access,
                per_minute,
                endpoints,
                window_seconds: DEFAULT_WINDOW_SECONDS,
                max_wait: std::time::Duration::ZERO,
                max_held_calls: DEFAULT_MAX_HELD_CALLS,
                trust_upstream_limits: DEFAULT_TRUST_UPSTREAM_LIMITS,
            };
            (name.to_owned(), plan)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;

    #[test]
    fn builtin_endpoint_budgets_fit_their_plan_totals() {
        for plan in builtin_plans().values() {
            assert_eq!(plan.api_access, plan.per_minute > 0, "{}", plan.name);
            for b in plan.endpoints.iter().flatten() {
                assert!(*b <= plan.per_minute, "{}", plan.name);
            }
        }
    }

    #[test]
    fn pro_plan_has_the_published_budgets() {
        let plans = builtin_plans();
        let pro = &plans["pro"];
        assert_eq!(pro.per_minute, 400);
        let list = Endpoint::TicketList.index().map(|i| pro.endpoints[i]);
        assert_eq!(list, Some(Some(100)));
    }
}
