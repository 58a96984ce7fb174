//! deskgate: a rate-limiting reverse proxy for a helpdesk API.
#![forbid(unsafe_code)]

pub mod body;
pub mod checks;
pub mod config;
pub mod endpoint;
pub mod limiter;
pub mod reject;
