//! Host → tenant (docs/reference.md "Request order" step 1): canonical domain, vanity host or unknown.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::head::names::HOST;
use crate::head::{self, RequestHead};

use crate::config::{Config, Tenant};
use crate::host;
use crate::metrics::TenantSeries;
use crate::reconcile::HelpdeskView;
use crate::reject::Reject;

/// How a host relates to its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// The tenant's `domain`: API calls are served.
    Canonical,
    /// One of its `vanity_hosts`: fine for the portal, refused for `/api/`.
    Vanity,
}

/// What a host leads to.
#[derive(Debug, Clone)]
pub struct HostEntry {
    pub tenant: Arc<Tenant>,
    pub kind: HostKind,
    /// The tenant's metric series (one per tenant, shared by its hosts).
    pub series: Arc<TenantSeries>,
    /// The helpdesk's latest numbers for the tenant (`reconcile`).
    pub helpdesk: Arc<HelpdeskView>,
}

/// Every configured host (normalised by `config`, as [`normalize_host`]
/// normalises requests) → what it leads to, for a new `Snapshot`.
pub fn host_table(config: &Config) -> HashMap<String, HostEntry> {
    let mut hosts = HashMap::with_capacity(config.tenants.len() * 2);
    for t in &config.tenants {
        let series = Arc::new(TenantSeries::default());
        let helpdesk = Arc::new(HelpdeskView::default());
        let entry = |kind| HostEntry { tenant: t.clone(), kind, series: series.clone(), helpdesk: helpdesk.clone() };
        hosts.insert(t.domain.clone(), entry(HostKind::Canonical));
        for v in &t.vanity_hosts {
            hosts.insert(v.clone(), entry(HostKind::Vanity));
        }
    }
    hosts
}

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

/// [`host::normalize_host`] as step 1 answers it: a 400 on the field `Host`.
pub fn normalize_host(raw: &str) -> Result<Cow<'_, str>, Reject> {
    host::normalize_host(raw).map_err(|e| bad_host(e.message()))
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
    fn a_bad_host_is_a_400_on_the_host_field() {
        for raw in ["user@acme.freshdesk.com", "acme.freshdesk.com:x", "", ":80", "[::1"] {
            assert!(matches!(normalize_host(raw), Err(Reject::BadRequest { field: "Host", .. })), "{raw}");
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
