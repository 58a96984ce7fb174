//! deskgate: a rate-limiting reverse proxy for a helpdesk API (Freshdesk-style
//! `/api/v2`). Every tenant gets its plan's per-minute budget, in total and per
//! endpoint, enforced over a rolling window and shared by every replica
//! through one store.
//!
//! # Request flow
//!
//! `server` accepts a connection and hands each request to `proxy::handle`,
//! which loads one config `Snapshot` and walks SPEC §3 top to bottom:
//! `tenant::resolve` (1) → HTTPS (2) → API access (3) → `endpoint::classify` (4)
//! → `checks` (5–8) → `limiter::Limiter::acquire` (9) → `forward::Upstream::send`
//! (10). Every refusal is a `reject::Reject`; one exit (`proxy::finish`) adds
//! the rate-limit headers (`headers`), counts (`metrics`) and logs.
//!
//! # Layout
//!
//! - `cli`, `main.rs`: command line; `app`: wiring, listeners, shutdown
//! - `config` (+ `raw`, `validate`, `plans`, `summary`): TOML → validated types
//! - `state`: `Shared` and the swappable `Snapshot`
//! - `server`: accept loop, TLS, HTTP/1.1 + h2; `tls`: rustls configs
//! - `proxy`: the straight line; `tenant`, `endpoint`, `checks`: steps 1–8 (pure);
//!   `host`: the one normal form of a host name (configured and requested)
//! - `limiter` (+ `window`, `memory`, `redis`, `store`): budgets; one decision
//!   logic over a memory or Redis store (`AnyStore`), answering data
//! - `forward`: pooled upstream client, hop-by-hop, `X-Forwarded-*`
//! - `headers`: decision → rate-limit headers; `reject`: refusals → responses;
//!   `fields`: where both write (a response's `HeaderMap` or the fast path's text)
//! - `metrics`, `admin`: Prometheus registry and the admin listener
//! - `reload`: SIGHUP and file changes → load → atomic swap
//! - `demo`: `deskgate demo`
//! - `webhooks` (+ `api`, `dispatch`, `deliver`, `queue`, `redis_queue`): webhook
//!   egress on its own listener, spending the same budgets (SPEC §6)
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod body;
pub mod checks;
pub mod cli;
pub mod config;
pub mod demo;
pub mod endpoint;
pub mod fast;
pub mod fields;
pub mod h1;
pub mod head;
pub mod headers;
pub mod host;
pub mod hyper_wire;
pub mod limiter;
pub mod metrics;
pub mod proxy;
pub mod reject;
pub mod reload;
pub mod server;
pub mod state;
pub mod tenant;
pub mod tls;
pub mod upstream;
pub mod webhooks;
