//! What every request reads: the config snapshot in force and the shared parts.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, Tenant};
use crate::limiter::Limiter;
use crate::metrics::{Metrics, TenantSeries};
use crate::upstream::Upstream;

/// How a host relates to its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// The tenant's `domain`: API calls are served.
    Canonical,
    /// One of its `vanity_hosts`: fine for the portal, refused for `/api/`.
    Vanity,
}

/// One immutable view of the config, swapped whole on reload. A request
/// loads it once and uses it to the end, so a reload never changes the rules
/// under a request in flight.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    /// Lower-case host (no port, no trailing dot) → tenant.
    pub hosts: HashMap<String, HostEntry>,
}

/// What a host leads to.
#[derive(Debug, Clone)]
pub struct HostEntry {
    pub tenant: Arc<Tenant>,
    pub kind: HostKind,
    /// The tenant's metric series (one per tenant, shared by its hosts).
    pub series: Arc<TenantSeries>,
}

impl Snapshot {
    pub fn new(config: Config) -> Snapshot {
        let mut hosts = HashMap::with_capacity(config.tenants.len() * 2);
        for t in &config.tenants {
            let series = Arc::new(TenantSeries::default());
            let entry = |kind| HostEntry { tenant: t.clone(), kind, series: series.clone() };
            hosts.insert(t.domain.clone(), entry(HostKind::Canonical));
            for v in &t.vanity_hosts {
                hosts.insert(v.clone(), entry(HostKind::Vanity));
            }
        }
        Snapshot { config: Arc::new(config), hosts }
    }
}

/// Everything the servers share. No globals: tests build their own.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub limiter: Arc<Limiter>,
    pub upstream: Upstream,
    pub metrics: Metrics,
}
