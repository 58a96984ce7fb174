//! `deskgate demo` (SPEC §1): a sample helpdesk upstream on loopback, the
//! gateway in front of it with the memory store and a sample tenant, and
//! ready-to-paste curl commands — one of which ends in 429.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, LOCATION};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::app::Gateway;
use crate::body::{self, Body};
use crate::config::Config;

/// Starts the sample helpdesk on `127.0.0.1:0` and returns its address.
/// Its answers look like the helpdesk's: JSON tickets and contacts.
pub async fn start_sample_helpdesk() -> std::io::Result<SocketAddr> {
    start_sample_helpdesk_on("127.0.0.1:0").await
}

/// Starts the sample helpdesk on `listen` and returns its address.
pub async fn start_sample_helpdesk_on(listen: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let next_id = Arc::new(AtomicU64::new(1001));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let next_id = next_id.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| sample_answer(next_id.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}

async fn sample_answer(next_id: Arc<AtomicU64>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    let (status, body) = match (req.method(), path) {
        (&Method::GET, "/api/v2/tickets") => (
            StatusCode::OK,
            r#"[{"id":1,"subject":"Printer on fire","status":2},{"id":2,"subject":"Cannot log in","status":3}]"#
                .to_owned(),
        ),
        (&Method::POST, "/api/v2/tickets") => {
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let mut rsp = json(StatusCode::CREATED, format!(r#"{{"id":{id},"status":2}}"#));
            if let Ok(v) = HeaderValue::try_from(format!("/api/v2/tickets/{id}")) {
                rsp.headers_mut().insert(LOCATION, v);
            }
            return Ok(rsp);
        }
        (&Method::GET, "/api/v2/contacts") => (StatusCode::OK, r#"[{"id":7,"name":"Ada Lovelace"}]"#.to_owned()),
        (_, p) if p.starts_with("/api/v2/tickets/") || p.starts_with("/api/v2/contacts/") => {
            (StatusCode::OK, format!(r#"{{"path":"{p}"}}"#))
        }
        (_, p) if p.starts_with("/api/") => (StatusCode::NOT_FOUND, r#"{"code":"not_found"}"#.to_owned()),
        _ => (StatusCode::OK, r#"{"portal":"Welcome to the support portal"}"#.to_owned()),
    };
    Ok(json(status, body))
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut rsp = Response::new(body::full(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    rsp
}

/// The demo's config, as a user would write it.
pub fn demo_toml(listen: &str, admin: &str, upstream: SocketAddr) -> String {
    format!(
        r#"# deskgate demo config (written by `deskgate demo`)
[server]
listen = "{listen}"

[admin]
listen = "{admin}"

[upstream]
url = "http://{upstream}"

[limiter]
store = "memory"

[[tenant]]
name = "demo"
domain = "demo.freshdesk.com"
plan = "growth"                       # 200 credits/minute
vanity_hosts = ["support.demo.com"]
endpoints = {{ ticket_list = 5 }}       # small, so the demo reaches 429 quickly

[[tenant]]
name = "seedling"
domain = "seedling.freshdesk.com"
plan = "sprout"                       # no API access
"#
    )
}

/// Runs the demo until Ctrl-C.
pub async fn run(listen: &str, admin: &str) -> Result<(), String> {
    let upstream = start_sample_helpdesk().await.map_err(|e| format!("cannot start the sample helpdesk: {e}"))?;
    let dir = std::env::temp_dir().join(format!("deskgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("deskgate.toml");
    std::fs::write(&path, demo_toml(listen, admin, upstream)).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = Config::load(&path).map_err(|e| e.to_string())?;
    let gateway =
        Gateway::start(config).await.map_err(|e| format!("{e} (pick other ports with --listen ADDR --admin ADDR)"))?;
    // Bound to all interfaces (in a container, so `-p` reaches it): the
    // commands name loopback, which works from the same host or container.
    let api = crate::healthcheck::reachable(gateway.api_addr);
    let adm = crate::healthcheck::reachable(gateway.admin_addr);
    println!(
        r#"
deskgate demo is running.
  sample helpdesk (upstream): http://{upstream}
  gateway (API):              http://{api}     tenant "demo" at Host demo.freshdesk.com, plan growth
  admin:                      http://{adm}     /metrics /healthz /readyz /tenants/demo /config
  config:                     {config}

Try these:

  # list tickets (200, with X-RateLimit-* and RateLimit headers)
  curl -i -u demo-api-key:X -H 'Host: demo.freshdesk.com' http://{api}/api/v2/tickets

  # create a ticket (201, Location passes through)
  curl -i -u demo-api-key:X -H 'Host: demo.freshdesk.com' -H 'Content-Type: application/json' \
       -d '{{"subject":"Printer on fire","email":"ada@example.com"}}' http://{api}/api/v2/tickets

  # the ticket_list budget is 5 per minute: the 6th call answers 429 with Retry-After
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' -u demo-api-key:X \
       -H 'Host: demo.freshdesk.com' http://{api}/api/v2/tickets; done; echo
  curl -i -u demo-api-key:X -H 'Host: demo.freshdesk.com' http://{api}/api/v2/tickets

  # refused before they cost anything: vanity host (403), no credentials (401), XML (406), no API plan (403)
  curl -i -u demo-api-key:X -H 'Host: support.demo.com' http://{api}/api/v2/tickets
  curl -i -H 'Host: demo.freshdesk.com' http://{api}/api/v2/contacts
  curl -i -u demo-api-key:X -H 'Host: demo.freshdesk.com' -H 'Accept: application/xml' http://{api}/api/v2/contacts
  curl -i -u demo-api-key:X -H 'Host: seedling.freshdesk.com' http://{api}/api/v2/tickets

  # what is left, without spending anything; and the metrics
  curl -s http://{adm}/tenants/demo
  curl -s http://{adm}/metrics | grep '^deskgate_requests_total'

Ctrl-C stops both.
"#,
        config = path.display()
    );
    crate::app::wait_for_signal().await;
    println!("stopping");
    gateway.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `deskgate sample-helpdesk`: only the demo's sample helpdesk, on `listen`,
/// until SIGTERM or Ctrl-C: an upstream stand-in to put the gateway in front
/// of (the compose file runs it as its own service).
pub async fn run_sample_helpdesk(listen: &str) -> Result<(), String> {
    let addr = start_sample_helpdesk_on(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    tracing::info!(%addr, "sample helpdesk listening");
    crate::app::wait_for_signal().await;
    Ok(())
}
