//! What the store benches share: tenant names and an ask that is always
//! admitted and charged.

use deskgate::endpoint::Endpoint;
use deskgate::limiter::{Ask, Policy};

/// `n` tenant names.
pub fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("tenant-{i}")).collect()
}

/// A call of `tenant` to ticket list, against a budget nobody exhausts, so
/// every call takes the charging path (account and endpoint windows).
pub fn ask(tenant: &str) -> Ask<'_> {
    Ask {
        tenant,
        cost: 1,
        account: Policy { name: "account", quota: 2_000_000_000, window_s: 60 },
        endpoint: Some((Endpoint::TicketList, Policy { name: "ticket_list", quota: 2_000_000_000, window_s: 60 })),
    }
}
