//! (method, path) → [`Route`]: endpoint class, cost and the normalised path
//! (docs/reference.md "Request order" step 4, "Endpoint classes", "Budgets" cost). Pure: no I/O, table-tested below.

mod normalize;

use std::borrow::Cow;

use std::collections::HashSet;

use http::Method;
use percent_encoding::percent_decode_str;

pub use normalize::{has_params, is_api, names_api, normalize_path};

/// Ceiling of a call's cost: a query with thousands of `include` items must
/// not overflow, nor cost more than any plan's budget could ever hold.
pub const MAX_COST: u32 = 1000;

/// Why step 4 cannot route a call. Data, not a response: `reject` turns it
/// into the 400 or 405, so this module (which `config` and `limiter` build
/// on) does not depend on the refusals, which depend on the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// The path cannot be normalised safely: a 400 on the field `path`,
    /// with this message.
    BadPath(&'static str),
    /// A known resource, a method not allowed on it: a 405 with this `Allow`.
    MethodNotAllowed { allow: &'static str },
}

/// Endpoint classes of docs/reference.md "Endpoint classes".
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
    pub const ALL_CLASSIFIED: [Endpoint; 4] =
        [Endpoint::TicketCreate, Endpoint::TicketUpdate, Endpoint::TicketList, Endpoint::ContactList];

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

/// The resources of docs/reference.md "Endpoint classes" that answer 405 for a method they do not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Tickets,
    Ticket,
    Contacts,
    Contact,
}

impl Resource {
    /// `path` is normalised, so the prefix is exactly `/api/v2/`. A `.json`
    /// format suffix names the same resource (Rails routes `tickets.json`
    /// and `tickets/42.json` as the ticket list and ticket 42), so it is
    /// classified and priced as that resource; the path is forwarded as sent.
    fn of(path: &str) -> Option<Resource> {
        let rest = path.strip_prefix("/api/v2/")?;
        let rest = match rest.len().checked_sub(5) {
            Some(i) if rest.is_char_boundary(i) && rest[i..].eq_ignore_ascii_case(".json") => &rest[..i],
            _ => rest,
        };
        let (collection, id) = match rest.split_once('/') {
            Some((c, id)) => (c, Some(id)),
            None => (rest, None),
        };
        let is_id = |id: &str| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
        match (collection, id) {
            ("tickets", None) => Some(Resource::Tickets),
            ("tickets", Some(id)) if is_id(id) => Some(Resource::Ticket),
            ("contacts", None) => Some(Resource::Contacts),
            ("contacts", Some(id)) if is_id(id) => Some(Resource::Contact),
            _ => None,
        }
    }

    /// The `Allow` header of a 405 on this resource: exactly the list of docs/reference.md "Endpoint classes".
    fn allow(self) -> &'static str {
        match self {
            Resource::Tickets | Resource::Contacts => "GET, POST",
            Resource::Ticket | Resource::Contact => "GET, PUT, DELETE",
        }
    }
}

/// Classifies an API call (docs/reference.md "Request order" step 4, "Endpoint classes") and prices it ("Budgets" cost).
///
/// `path` must already be normalised ([`normalize_path`]); callers classify
/// only API calls ([`is_api`]), and any path outside the known resources is
/// [`Endpoint::Other`] at cost 1.
///
/// Methods on the known resources:
/// - `HEAD` is allowed wherever `GET` is and classified and priced like `GET`
///   (RFC 9110 §9.3.2: HEAD is GET without the content, so it costs the
///   upstream the same work). `Allow` still lists the documented methods only.
/// - `OPTIONS` and any other method not listed is 405 with the documented `Allow`:
///   the helpdesk API serves no CORS preflight.
pub fn classify<'a>(method: &Method, path: &'a str, query: Option<&str>) -> Result<Route<'a>, RouteError> {
    let route = |endpoint, cost| Route { endpoint, cost, path: Cow::Borrowed(path) };
    let Some(resource) = Resource::of(path) else {
        return Ok(route(Endpoint::Other, 1));
    };
    let get = *method == Method::GET || *method == Method::HEAD;
    let endpoint = match resource {
        Resource::Tickets if get => Endpoint::TicketList,
        Resource::Tickets if *method == Method::POST => Endpoint::TicketCreate,
        Resource::Ticket if *method == Method::PUT => Endpoint::TicketUpdate,
        Resource::Contacts if get => Endpoint::ContactList,
        Resource::Contacts if *method == Method::POST => Endpoint::Other,
        Resource::Ticket | Resource::Contact if get || *method == Method::PUT || *method == Method::DELETE => {
            Endpoint::Other
        }
        _ => return Err(RouteError::MethodNotAllowed { allow: resource.allow() }),
    };
    // Embedding credits (docs/reference.md "Budgets"): 1 per include on one ticket, 2 per
    // include on the ticket list.
    let per_include = match resource {
        Resource::Tickets if get => 2,
        Resource::Ticket if get => 1,
        _ => 0,
    };
    let cost = if per_include == 0 {
        1
    } else {
        let n = query.map_or(0, count_includes);
        n.saturating_mul(per_include).saturating_add(1).min(MAX_COST)
    };
    Ok(route(endpoint, cost))
}

/// Number of distinct non-empty items over every `include=` parameter.
///
/// Parsed the way the helpdesk (a Rails app) reads a query: `&`-separated
/// pairs, `+` is a space, names and values percent-decoded (so `%2C` is a
/// separator too, and `%69nclude` is `include`). Items are trimmed of
/// whitespace and compared exactly; repeated `include=` parameters are merged
/// rather than the last one winning, so a client cannot get embeds it did not
/// pay for whichever parameter the upstream honours. Whether an item names a
/// real embed is the upstream's business: every distinct item is charged.
/// Stops counting past [`MAX_COST`] items, bounding the work on a hostile query.
fn count_includes(query: &str) -> u32 {
    let mut seen: HashSet<String> = HashSet::new();
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(name) != "include" {
            continue;
        }
        for item in form_decode(value).split(',') {
            let item = item.trim();
            if item.is_empty() || seen.contains(item) {
                continue;
            }
            seen.insert(item.to_owned());
            if seen.len() > MAX_COST as usize {
                return MAX_COST;
            }
        }
    }
    u32::try_from(seen.len()).unwrap_or(MAX_COST)
}

/// `application/x-www-form-urlencoded` decoding of one name or value; an
/// invalid escape is kept literally and invalid UTF-8 replaced, never refused.
fn form_decode(s: &str) -> Cow<'_, str> {
    if s.contains('+') {
        let spaced = s.replace('+', " ");
        Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
    } else {
        percent_decode_str(s).decode_utf8_lossy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Method {
        match Method::from_bytes(s.as_bytes()) {
            Ok(m) => m,
            Err(e) => panic!("bad method {s:?}: {e}"),
        }
    }

    fn route(method: &str, raw: &str, query: Option<&str>) -> (Endpoint, u32) {
        let path = match normalize_path(raw) {
            Ok(p) => p,
            Err(e) => panic!("{raw:?} was refused: {e:?}"),
        };
        match classify(&m(method), &path, query) {
            Ok(r) => {
                assert_eq!(r.path, path, "route path is the normalised path");
                (r.endpoint, r.cost)
            }
            Err(e) => panic!("{method} {raw:?} was refused: {e:?}"),
        }
    }

    fn allow(method: &str, path: &str) -> &'static str {
        match classify(&m(method), path, None) {
            Err(RouteError::MethodNotAllowed { allow }) => allow,
            other => panic!("{method} {path}: expected 405, got {other:?}"),
        }
    }

    #[test]
    fn every_spelling_of_get_tickets_is_the_ticket_list() {
        for raw in [
            "/api/v2/tickets",
            "//api/v2/tickets",
            "/API/v2/tickets/",
            "/API/V2/TICKETS/../tickets",
            "/api/v2/./tickets",
            "/api/v2/x/../tickets",
            "/api/v2/%74ickets",
            "/api/%2e/v2/tickets",
            "/api/v2/x/%2E%2e/tickets//",
        ] {
            assert_eq!(route("GET", raw, None), (Endpoint::TicketList, 1), "{raw:?}");
        }
    }

    #[test]
    fn spec_endpoint_classes_are_recognised() {
        for (method, path, want) in [
            ("POST", "/api/v2/tickets", Endpoint::TicketCreate),
            ("PUT", "/api/v2/tickets/42", Endpoint::TicketUpdate),
            ("PUT", "/api/v2/tickets/%34%32/", Endpoint::TicketUpdate),
            ("GET", "/api/v2/tickets", Endpoint::TicketList),
            ("GET", "/api/v2/contacts", Endpoint::ContactList),
            ("HEAD", "/api/v2/tickets", Endpoint::TicketList),
            ("HEAD", "/api/v2/contacts", Endpoint::ContactList),
            ("GET", "/api/v2/tickets/42", Endpoint::Other),
            ("HEAD", "/api/v2/tickets/42", Endpoint::Other),
            ("DELETE", "/api/v2/tickets/42", Endpoint::Other),
            ("POST", "/api/v2/contacts", Endpoint::Other),
            ("GET", "/api/v2/contacts/7", Endpoint::Other),
            ("PUT", "/api/v2/contacts/7", Endpoint::Other),
            ("DELETE", "/api/v2/contacts/7", Endpoint::Other),
            ("POST", "/api/v2/tickets/outbound_email", Endpoint::Other),
            ("POST", "/api/v2/tickets/42/reply", Endpoint::Other),
            ("PATCH", "/api/v2/tickets/42/notes", Endpoint::Other),
            ("GET", "/api/v2/search/tickets", Endpoint::Other),
            ("GET", "/api/v2/Tickets", Endpoint::Other),
            ("GET", "/api/v1/tickets", Endpoint::Other),
            ("GET", "/api", Endpoint::Other),
            ("PUT", "/api/v2/tickets/-1", Endpoint::Other),
            ("PUT", "/api/v2/tickets/4x", Endpoint::Other),
        ] {
            assert_eq!(route(method, path, None).0, want, "{method} {path}");
        }
    }

    #[test]
    fn a_method_not_allowed_on_a_known_resource_is_405_with_spec_allow() {
        for (method, path, want) in [
            ("PUT", "/api/v2/tickets", "GET, POST"),
            ("DELETE", "/api/v2/tickets", "GET, POST"),
            ("PATCH", "/api/v2/tickets", "GET, POST"),
            ("OPTIONS", "/api/v2/tickets", "GET, POST"),
            ("POST", "/api/v2/tickets/42", "GET, PUT, DELETE"),
            ("PATCH", "/api/v2/tickets/42", "GET, PUT, DELETE"),
            ("OPTIONS", "/api/v2/tickets/42", "GET, PUT, DELETE"),
            ("PUT", "/api/v2/contacts", "GET, POST"),
            ("DELETE", "/api/v2/contacts", "GET, POST"),
            ("POST", "/api/v2/contacts/7", "GET, PUT, DELETE"),
            ("TRACE", "/api/v2/contacts/7", "GET, PUT, DELETE"),
            ("get", "/api/v2/tickets", "GET, POST"),
        ] {
            assert_eq!(allow(method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn includes_on_the_ticket_list_cost_two_credits_each() {
        for (query, cost) in [
            ("include=description,requester,stats", 7),
            ("include=requester", 3),
            ("page=2&include=requester&per_page=100", 3),
            ("include=description%2Crequester%2cstats", 7),
            ("include=description&include=requester,stats", 7),
            ("include=requester,requester&include=requester", 3),
            ("include=,requester,,", 3),
            ("include=", 1),
            ("include", 1),
            ("includes=requester", 1),
            ("include=requester,+stats+", 5),
            ("%69nclude=requester", 3),
            ("", 1),
        ] {
            assert_eq!(route("GET", "/api/v2/tickets", Some(query)), (Endpoint::TicketList, cost), "{query:?}");
        }
    }

    #[test]
    fn includes_on_one_ticket_cost_one_credit_each() {
        for (method, query, cost) in [
            ("GET", "include=conversations,requester", 3),
            ("HEAD", "include=conversations,requester", 3),
            ("GET", "include=stats", 2),
            ("GET", "include=stats,stats", 2),
            ("GET", "x=1", 1),
        ] {
            assert_eq!(route(method, "/api/v2/tickets/42", Some(query)), (Endpoint::Other, cost), "{method} {query:?}");
        }
    }

    #[test]
    fn includes_elsewhere_cost_nothing_extra() {
        for (method, path) in [
            ("PUT", "/api/v2/tickets/42"),
            ("POST", "/api/v2/tickets"),
            ("GET", "/api/v2/contacts"),
            ("GET", "/api/v2/contacts/7"),
            ("GET", "/api/v2/tickets/42/conversations"),
        ] {
            let (_, cost) = route(method, path, Some("include=a,b,c"));
            assert_eq!(cost, 1, "{method} {path}");
        }
    }

    #[test]
    fn cost_is_capped_and_never_overflows() {
        let huge: String = (0..5000).map(|i| format!("i{i},")).collect();
        let q = format!("include={huge}");
        assert_eq!(route("GET", "/api/v2/tickets", Some(&q)).1, MAX_COST);
        assert_eq!(route("GET", "/api/v2/tickets/1", Some(&q)).1, MAX_COST);
        let q: String = (0..600).map(|i| format!("include=x{i}&")).collect();
        assert_eq!(route("GET", "/api/v2/tickets", Some(&q)).1, MAX_COST);
        assert_eq!(route("GET", "/api/v2/tickets/1", Some(&q)).1, 601);
    }

    #[test]
    fn a_json_format_suffix_is_the_resource_it_names() {
        assert_eq!(route("GET", "/api/v2/tickets.json", Some("include=a,b,c")), (Endpoint::TicketList, 7));
        assert_eq!(route("GET", "/api/v2/tickets/42.json", Some("include=a,b")), (Endpoint::Other, 3));
        assert_eq!(route("PUT", "/api/v2/tickets/42.JSON", None), (Endpoint::TicketUpdate, 1));
        assert_eq!(route("POST", "/api/v2/tickets.json", None), (Endpoint::TicketCreate, 1));
        assert_eq!(route("GET", "/api/v2/contacts.json", None), (Endpoint::ContactList, 1));
        assert_eq!(allow("PATCH", "/api/v2/tickets.json"), "GET, POST");
        // Not a format suffix of a known resource: `other` at cost 1.
        assert_eq!(route("GET", "/api/v2/tickets/.json", Some("include=a")), (Endpoint::Other, 1));
        assert_eq!(route("GET", "/api/v2/ticketsjson", None), (Endpoint::Other, 1));
    }

    #[test]
    fn route_borrows_the_path_it_was_given() {
        let path = "/api/v2/tickets/42";
        let r = classify(&Method::PUT, path, None);
        assert!(matches!(r, Ok(Route { path: Cow::Borrowed(p), .. }) if p == path));
    }
}
