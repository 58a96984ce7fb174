//! `deskgate healthcheck`: asks the admin listener named in the config for
//! `/readyz` and turns the answer into an exit code, so an image without a
//! shell or curl (distroless) can still have a `HEALTHCHECK`.
//!
//! Plain blocking TCP and a hand-written HTTP/1.1 GET: the check runs every
//! few seconds in a fresh process, so it needs no HTTP client and nothing
//! async. It loads the config as `run` does (the same file, the same
//! validation), so it asks exactly the admin listener the gateway binds.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Config;

/// How long the whole check may take (connect, write, read): well under the
/// shortest interval an orchestrator would probe at.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The most of the answer read: a status line and a short body.
const MAX_ANSWER: usize = 4096;

/// Loads the config at `path`, asks its admin listener for `/readyz`.
/// `Ok` (the gateway is ready) names what was asked; `Err` is the one-line
/// reason it is not.
pub fn run(path: &Path) -> Result<String, String> {
    let config = Config::load(path).map_err(|e| format!("cannot read the config: {e}"))?;
    let addr = probe_addr(config.admin.listen)?;
    probe(addr, TIMEOUT)
}

/// Where to reach a listener bound to `listen` from the same host: an
/// unspecified address (`0.0.0.0`, `::`) is reached on loopback.
pub fn probe_addr(listen: SocketAddr) -> Result<SocketAddr, String> {
    if listen.port() == 0 {
        return Err(format!("admin.listen is {listen}: port 0 is picked at start-up, so it cannot be probed"));
    }
    Ok(reachable(listen))
}

/// The address a client on the same host uses for a listener bound to
/// `listen`: loopback (same family) for an unspecified address.
pub fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `GET /readyz` on `addr` within `timeout`: `Ok` on 200, `Err` with the
/// status and the body's first line (the gateway says why it is not ready)
/// or the connection error otherwise.
pub fn probe(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let url = format!("http://{addr}/readyz");
    let fail = |what: String| format!("{url}: {what}");
    let end = Instant::now() + timeout;
    let left = || end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail(format!("cannot connect: {e}")))?;
    stream.set_write_timeout(Some(left())).map_err(|e| fail(e.to_string()))?;
    let request = format!(
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: deskgate-healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(|e| fail(format!("cannot send: {e}")))?;
    let mut answer = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while answer.len() < MAX_ANSWER {
        stream.set_read_timeout(Some(left())).map_err(|e| fail(e.to_string()))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if answer.is_empty() => return Err(fail(format!("no answer: {e}"))),
            // Connection: close was asked for; what arrived is enough.
            Err(_) => break,
        }
        if Instant::now() >= end {
            break;
        }
    }
    judge(&answer).map_err(fail).map(|ok| format!("{url}: {ok}"))
}

/// Reads an HTTP/1.x answer: `Ok` when its status is 200.
fn judge(answer: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or("");
    let status =
        status_line.strip_prefix("HTTP/1.").and_then(|rest| rest.get(2..5)).and_then(|code| code.parse::<u16>().ok());
    let said = body.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let said: String = said.chars().take(200).collect();
    match status {
        Some(200) => Ok(if said.is_empty() { "200".to_owned() } else { format!("200 {said}") }),
        Some(code) if said.is_empty() => Err(format!("not ready: {code}")),
        Some(code) => Err(format!("not ready: {code} {said}")),
        None if answer.is_empty() => Err("the connection closed without an answer".to_owned()),
        None => Err(format!("not an HTTP answer: {:?}", status_line.chars().take(80).collect::<String>())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_probed_on_loopback() {
        assert_eq!(probe_addr("0.0.0.0:9090".parse().unwrap()).unwrap(), "127.0.0.1:9090".parse().unwrap());
        assert_eq!(probe_addr("[::]:9090".parse().unwrap()).unwrap(), "[::1]:9090".parse().unwrap());
        assert_eq!(probe_addr("10.1.2.3:9090".parse().unwrap()).unwrap(), "10.1.2.3:9090".parse().unwrap());
        let e = probe_addr("127.0.0.1:0".parse().unwrap()).unwrap_err();
        assert!(e.contains("port 0"), "{e}");
    }

    #[test]
    fn only_a_200_is_ready_and_a_refusal_says_why() {
        assert_eq!(judge(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n").unwrap(), "200 ready");
        let e = judge(b"HTTP/1.1 503 Service Unavailable\r\n\r\nshutting down\n").unwrap_err();
        assert_eq!(e, "not ready: 503 shutting down");
        assert_eq!(judge(b"HTTP/1.0 404 Not Found\r\n\r\n").unwrap_err(), "not ready: 404");
        assert!(judge(b"").unwrap_err().contains("without an answer"));
        assert!(judge(b"SSH-2.0-OpenSSH\r\n").unwrap_err().contains("not an HTTP answer"));
        assert!(judge(b"HTTP/1.1 2").is_err());
    }
}
