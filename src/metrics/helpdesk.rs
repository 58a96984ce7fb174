//! What the helpdesk's own limit headers did (README, "Upstream-aware
//! budgets"): its 429s, the charges made on its word, and a plan that
//! disagrees with the config. Touched only when the helpdesk disagrees.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Name;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: Name,
}

/// The families, by tenant.
pub struct HelpdeskMetrics {
    /// `deskgate_upstream_rate_limited_total`: answers the helpdesk itself
    /// refused with 429 (relayed to the client), trusted or not.
    pub upstream_429: Family<TenantLabel, Counter>,
    /// `deskgate_upstream_reconciliations_total`: store charges made on the
    /// helpdesk's word (a lower `X-RateLimit-Remaining`, or a 429).
    pub reconciliations: Family<TenantLabel, Counter>,
    /// `deskgate_upstream_credits_charged_total`: the credits they charged.
    pub credits: Family<TenantLabel, Counter>,
    /// `deskgate_upstream_budget_mismatch`: the helpdesk's
    /// `X-RateLimit-Total` while it differs from the configured account
    /// budget, 0 once it agrees.
    pub mismatch: Family<TenantLabel, Gauge>,
}

impl HelpdeskMetrics {
    pub fn register(registry: &mut Registry) -> HelpdeskMetrics {
        let m = HelpdeskMetrics {
            upstream_429: Family::default(),
            reconciliations: Family::default(),
            credits: Family::default(),
            mismatch: Family::default(),
        };
        registry.register(
            "deskgate_upstream_rate_limited",
            "Answers the helpdesk itself refused with 429 (relayed; with trust_upstream_limits the account is then closed until its Retry-After), by tenant",
            m.upstream_429.clone(),
        );
        registry.register(
            "deskgate_upstream_reconciliations",
            "Charges made to a tenant's account window on the helpdesk's word (a lower X-RateLimit-Remaining, or a 429), by tenant",
            m.reconciliations.clone(),
        );
        registry.register(
            "deskgate_upstream_credits_charged",
            "Credits charged to a tenant's account window on the helpdesk's word, by tenant",
            m.credits.clone(),
        );
        registry.register(
            "deskgate_upstream_budget_mismatch",
            "The helpdesk's X-RateLimit-Total while it differs from the tenant's configured account budget (0 once it agrees), by tenant",
            m.mismatch.clone(),
        );
        m
    }

    /// The labels of `tenant`.
    pub fn tenant(tenant: &std::sync::Arc<str>) -> TenantLabel {
        TenantLabel { tenant: Name(tenant.clone()) }
    }
}
