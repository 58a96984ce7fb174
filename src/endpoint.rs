//! (method, path) → [`Route`]: endpoint class, cost and the normalised path
//! (SPEC §3 step 4, §3.1, §3.2 cost). Pure: no I/O, table-tested below.

mod normalize;

use std::borrow::Cow;

use http::{Method, Uri};

use crate::reject::Reject;

pub use normalize::normalize_path;

/// Endpoint classes of SPEC §3.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    TicketCreate,
    TicketUpdate,
    TicketList,
    ContactList,
    /// Any other `/api/v2/...` call: account budget only.
    Other,
}

impl Endpoint {
    /// Number of classes that have their own budget.
    pub const CLASSIFIED: usize = 4;
    /// The classes with a budget, in index order.
    pub const ALL_CLASSIFIED: [Endpoint; 4] = [
        Endpoint::TicketCreate,
        Endpoint::TicketUpdate,
        Endpoint::TicketList,
        Endpoint::ContactList,
    ];

    /// Name used in config keys, headers and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Endpoint::TicketCreate => "ticket_create",
            Endpoint::TicketUpdate => "ticket_update",
            Endpoint::TicketList => "ticket_list",
            Endpoint::ContactList => "contact_list",
            Endpoint::Other => "other",
        }
    }

    /// Index into [`crate::config::EndpointBudgets`]; `None` for `Other`.
    pub const fn index(self) -> Option<usize> {
        match self {
            Endpoint::TicketCreate => Some(0),
            Endpoint::TicketUpdate => Some(1),
            Endpoint::TicketList => Some(2),
            Endpoint::ContactList => Some(3),
            Endpoint::Other => None,
        }
    }

    /// Parses a config key (`ticket_create`, ...); `other` is not a budget key.
    pub fn from_key(key: &str) -> Option<Endpoint> {
        Endpoint::ALL_CLASSIFIED.into_iter().find(|e| e.as_str() == key)
    }
}

/// A classified API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    pub endpoint: Endpoint,
    /// Credits this call costs (1 + include credits).
    pub cost: u32,
    /// The normalised path, forwarded upstream in place of the original spelling.
    pub path: Cow<'a, str>,
}
