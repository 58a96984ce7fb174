//! deskgate: a rate-limiting reverse proxy for a helpdesk API (Freshdesk-style
//! `/api/v2`). Every tenant gets its plan's per-minute budget, in total and per
//! endpoint, enforced over a rolling window and shared by every replica
//! through one store.
//!
//! # Request flow
//!
//! `server` accepts a connection. A plain-TCP one starts on the fast path
//! (`fast::serve`: `fast::head::parse` reads each head in place); a TLS or h2
//! one, or one the fast path hands over, is served by hyper
//! (`hyper_wire::handle`). Either way each call enters `proxy::serve_call`
//! once, with a `proxy::Wire` that knows only how the call's bytes move:
//! request id → `decide` (request form, framing, `Connection`, `Host`, path;
//! `tenant` (1) → HTTPS (2) → API access (3) → `endpoint::classify` (4) →
//! `checks` (5–8) → `limiter::Limiter::acquire` (9)) → `wire.exchange` (10,
//! through `upstream::raw` or `upstream::hyper`, with the fields
//! `upstream::forwarding` rules) → an upstream error becomes a
//! `reject::Reject` → `wire.answer` or `wire.refuse`, with `finish` adding
//! the rate-limit headers (`headers`) and the request id, counting
//! (`metrics`), once, and the call's access-log line (`access_log`) written.
//! Nothing below `proxy` calls back into it.
//!
//! # Layout
//!
//! - `cli`, `main.rs`: command line; `logging`: the subscriber and its
//!   `RUST_LOG` filter; `app`: wiring, listeners, shutdown
//! - `config` (+ `raw`, `validate`, `plans`, `summary`): TOML → validated types
//! - `state`: `Shared` and the swappable `Snapshot`
//! - `server`: accept loop, TLS, HTTP/1.1 + h2; `tls`: rustls configs
//! - `proxy`: the one call lifecycle and the `Wire` trait
//! - `fast` (+ `head`): the HTTP/1.1 fast path — which path a connection and
//!   a request take, the connection loop, its `Wire`, the head codec;
//!   `hyper_wire`: hyper's `Wire`; `h1`: the HTTP/1 writer both hand-written
//!   sides share
//! - `upstream` (+ `forwarding`, `raw`, `hyper`, `chunked`): both upstream
//!   clients, the one hop-by-hop table and forwarding rules, `UpstreamError`
//! - `head`: a request head's fields, every field-name static, `RequestId`
//! - `tenant`, `endpoint`, `checks`: the steps (pure); `host`: the one
//!   normal form of a host name (configured and requested)
//! - `limiter` (+ `window`, `memory`, `redis`, `store`): budgets; one decision
//!   logic over a memory or Redis store (`AnyStore`), answering data
//! - `hold`: calls held waiting for room (`max_wait_ms`), one line per
//!   tenant per replica, between `decide` and the limiter
//! - `headers`: decision → rate-limit headers; `reject`: every refusal, built
//!   from the steps', the limiter's and the upstream's data; `fields`: where
//!   both write (a `HeaderMap` or the fast path's text)
//! - `metrics`, `admin`: Prometheus registry and the admin listener;
//!   `access_log`: one structured line per call
//!   `scrape`: what `/metrics` reads at scrape time (budget gauges, store state)
//! - `reload`: SIGHUP and file changes → load → atomic swap
//! - `demo`: `deskgate demo`; `healthcheck`: `deskgate healthcheck`
//! - `webhooks` (+ `api`, `dispatch`, `deliver`, `queue`, `redis_queue`): webhook
//!   egress on its own listener, spending the same budgets
//!
//! `scripts/module-cycles` checks that no module imports another in a circle.
#![forbid(unsafe_code)]

pub mod access_log;
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
pub mod healthcheck;
pub mod hold;
pub mod host;
pub mod hyper_wire;
pub mod limiter;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod reconcile;
pub mod reject;
pub mod reload;
pub mod scrape;
pub mod server;
pub mod state;
pub mod tenant;
pub mod tls;
pub mod upstream;
pub mod webhooks;
