//! deskgate: a rate-limiting reverse proxy for a helpdesk API.
#![forbid(unsafe_code)]

pub mod body;
pub mod checks;
pub mod endpoint;
pub mod reject;
