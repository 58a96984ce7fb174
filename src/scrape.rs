//! What `/metrics` computes when it is scraped, rather than calls setting it
//! as they pass: the budget gauges and the store's state. A gauge set by
//! calls stays at what the last call saw — an idle tenant that ran out would
//! show 0 left long after its window emptied.
//!
//! Budgets are read like `/tenants/{name}` reads them (cost-0 asks, nothing
//! consumed), for the tenants this replica has judged an API call of since
//! it started: a replica that never served a tenant has nothing to say about
//! it, and 10,000 configured tenants do not mean 10,000 store reads per
//! scrape. Reads go out together, a bounded number at a time (on Redis they
//! share round trips: batched or pipelined on one connection), each bounded
//! by `store_timeout_ms`.

use std::sync::Arc;

use futures_util::stream::{self, StreamExt};

use crate::config::Tenant;
use crate::endpoint::Endpoint;
use crate::limiter::{Ask, Limiter, PolicyState};
use crate::metrics::{Name, TenantPolicy};
use crate::state::Shared;
use crate::tenant::HostKind;

/// Tenants whose budgets are read at once.
const READS_IN_FLIGHT: usize = 64;

/// The exposition of every collector, budgets read now: OpenMetrics text
/// when `open`, else the classic text format.
pub async fn metrics_text(shared: &Shared, open: bool) -> String {
    let m = &shared.metrics;
    let healthy = shared.limiter.store_healthy();
    let snap = shared.snapshot.load_full();
    let tenants: Vec<Arc<Tenant>> = snap
        .hosts
        .values()
        .filter(|e| e.kind == HostKind::Canonical && e.tenant.api_access && e.series.seen())
        .map(|e| e.tenant.clone())
        .collect();
    let read: Vec<(Arc<Tenant>, Vec<PolicyState>)> = if healthy {
        let limiter = &shared.limiter;
        stream::iter(tenants.clone())
            .map(|t: Arc<Tenant>| {
                let limiter = Arc::clone(limiter);
                async move {
                    let read = read_budgets(&limiter, &t).await;
                    (t, read)
                }
            })
            .buffer_unordered(READS_IN_FLIGHT)
            .collect()
            .await
    } else {
        // A store that does not answer: no remaining budget is known, and
        // asking per tenant would only wait for timeouts.
        Vec::new()
    };
    // Written and encoded under one lock (held for no await): two scrapes
    // at once would clear each other's budget series midway.
    let _one = m.scrape_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    m.store_up.set(i64::from(healthy));
    m.budget_remaining.clear();
    m.budget_limit.clear();
    for t in &tenants {
        let tenant = Name(t.name.clone());
        for (policy, quota) in budgets(t) {
            m.budget_limit.get_or_create(&TenantPolicy { tenant: tenant.clone(), policy }).set(i64::from(quota));
        }
    }
    for (t, states) in read {
        let tenant = Name(t.name.clone());
        for p in states {
            let labels = TenantPolicy { tenant: tenant.clone(), policy: p.policy.name };
            m.budget_remaining.get_or_create(&labels).set(i64::from(p.remaining));
        }
    }
    if open {
        m.encode()
    } else {
        m.encode_classic()
    }
}

/// `t`'s budgets: the account's, then each endpoint class's it has.
fn budgets(t: &Tenant) -> impl Iterator<Item = (&'static str, u32)> + '_ {
    let endpoints = Endpoint::ALL_CLASSIFIED
        .into_iter()
        .filter_map(|e| Some((e.as_str(), e.index().and_then(|i| t.endpoints[i])?)));
    std::iter::once(("account", t.per_minute)).chain(endpoints)
}

/// What is left of each of `t`'s budgets now, without consuming anything;
/// a budget the store could not read (or read degraded) is left out.
async fn read_budgets(limiter: &Limiter, t: &Tenant) -> Vec<PolicyState> {
    let mut out = Vec::with_capacity(1 + Endpoint::CLASSIFIED);
    let endpoints: Vec<Endpoint> =
        Endpoint::ALL_CLASSIFIED.into_iter().filter(|e| e.index().is_some_and(|i| t.endpoints[i].is_some())).collect();
    // Every ask reads the account too: the first one's answer is kept.
    let asks = if endpoints.is_empty() { vec![Endpoint::Other] } else { endpoints };
    for e in asks {
        let Ok(d) = limiter.acquire(&Ask::new(t, e, 0)).await else { continue };
        if d.degraded {
            continue;
        }
        if !out.iter().any(|p: &PolicyState| p.policy.name == "account") {
            out.push(d.account);
        }
        out.extend(d.endpoint);
    }
    out
}
