//! Helpers for the operations tests (`tests/ops_*.rs`): config files in a
//! temp dir, an echoing upstream (plain or TLS), test certificates and a
//! child-process runner for the built binary. Everything binds
//! `127.0.0.1:0`. The client, the metrics reader and `eventually` are the
//! kit's own, re-exported here so an ops test needs one `use`.

pub use super::client::{admin_get, read, send, Reply};
pub use super::eventually;
pub use super::metrics::{parse_metrics, promtool_check, value, Sample};
use super::upstream::accept_loop;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

/// A basic-auth header whose key a log must never show.
pub const SECRET_API_KEY: &str = "sEcReTkEy0123456789abcdefXYZ";

/// `Authorization: Basic base64("SECRET_API_KEY:X")`.
pub fn basic_auth() -> String {
    format!("Basic {}", base64(&format!("{SECRET_API_KEY}:X")))
}

pub fn base64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------- configs

/// A config directory that lives as long as the test.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new() -> ConfigDir {
        ConfigDir { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `name` atomically (write + rename), as editors and Kubernetes do.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        let tmp = path.with_extension("tmp~");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &path).expect("rename config");
        path
    }
}

/// A config with `acme` (growth, `ticket_list = 3`) in front of `upstream`.
/// `top` goes before any table; `server` and `upstream` into their tables.
pub fn config_toml(upstream_url: &str, top: &str, server: &str, upstream: &str) -> String {
    format!(
        r#"{top}
[server]
listen = "127.0.0.1:0"
shutdown_grace_ms = 5000
{server}

[admin]
listen = "127.0.0.1:0"

[upstream]
url = "{upstream_url}"
{upstream}

[[tenant]]
name = "acme"
domain = "acme.freshdesk.com"
plan = "growth"
endpoints = {{ ticket_list = 3 }}
"#
    )
}

// ---------------------------------------------------------------- upstream

/// Answers every call after reading its whole body: 200, JSON
/// `{"path": ..., "bytes": N, "authorization": bool}`. `?delay_ms=N` waits
/// before answering.
async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let delay = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay_ms=")))
        .and_then(|v| v.parse::<u64>().ok());
    let auth = req.headers().contains_key(http::header::AUTHORIZATION);
    let bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => usize::MAX,
    };
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let body = format!(r#"{{"path":"{path}","bytes":{bytes},"authorization":{auth}}}"#);
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    rsp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(rsp)
}

/// Starts the echoing upstream over plain HTTP.
pub async fn start_upstream() -> SocketAddr {
    start_upstream_with(None).await
}

/// Starts the echoing upstream, over TLS when `tls` is given.
pub async fn start_upstream_with(tls: Option<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
    accept_loop(listener, move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            match acceptor {
                None => {
                    let _ = builder.serve_connection(TokioIo::new(stream), service_fn(echo)).await;
                }
                Some(a) => {
                    if let Ok(s) = a.accept(stream).await {
                        let _ = builder.serve_connection(TokioIo::new(s), service_fn(echo)).await;
                    }
                }
            }
        }
    });
    addr
}

// ---------------------------------------------------------------- requests

/// `GET path` with `Host: host` and, if given, `Authorization`.
pub fn get(host: &str, path: &str, auth: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::get(path).header("host", host);
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body(Full::new(Bytes::new())).expect("request")
}

// ---------------------------------------------------------------- TLS

/// A test CA and a leaf for `127.0.0.1` and `localhost` signed by it, as PEM.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    ca: Arc<(rcgen::Certificate, rcgen::KeyPair)>,
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "deskgate test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
        TestPki::leaf(Arc::new((ca_cert, ca_key)))
    }

    /// A new leaf (new key) from the same CA: a renewed certificate.
    pub fn reissued(&self) -> TestPki {
        TestPki::leaf(self.ca.clone())
    }

    fn leaf(ca: Arc<(rcgen::Certificate, rcgen::KeyPair)>) -> TestPki {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let key = KeyPair::generate().expect("leaf key");
        let mut leaf =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("leaf params");
        leaf.distinguished_name.push(DnType::CommonName, "deskgate test");
        let cert = leaf.signed_by(&key, &ca.0, &ca.1).expect("leaf cert");
        TestPki { ca_pem: ca.0.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem(), ca }
    }

    /// Writes `NAME.pem` and `NAME-key.pem` into `dir`; returns their paths.
    pub fn write(&self, dir: &ConfigDir, name: &str) -> (PathBuf, PathBuf) {
        (dir.write(&format!("{name}.pem"), &self.cert_pem), dir.write(&format!("{name}-key.pem"), &self.key_pem))
    }

    /// A rustls server config for an in-process TLS upstream.
    pub fn server_config(&self) -> rustls::ServerConfig {
        let certs = rustls_pemfile::certs(&mut self.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().expect("certs");
        let key = rustls_pemfile::private_key(&mut self.key_pem.as_bytes()).expect("key").expect("a key");
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg
    }

    /// A client that trusts only this CA and offers `alpn`.
    pub fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut self.ca_pem.as_bytes()) {
            roots.add(c.expect("ca")).expect("add ca");
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

/// Connects with TLS to `addr` (SNI `localhost`); returns the stream and the
/// protocol ALPN chose.
pub async fn tls_connect(
    pki: &TestPki,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> (tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = pki.connector(alpn).connect(name, tcp).await.expect("TLS handshake");
    let proto = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    (tls, proto)
}

/// The leaf certificate (DER) the server at `addr` presents.
pub async fn presented_cert(pki: &TestPki, addr: SocketAddr) -> Vec<u8> {
    let (tls, _) = tls_connect(pki, addr, &[b"http/1.1"]).await;
    let certs = tls.get_ref().1.peer_certificates().expect("certs");
    certs[0].as_ref().to_vec()
}

impl TestPki {
    /// The leaf certificate as DER.
    pub fn cert_der(&self) -> Vec<u8> {
        rustls_pemfile::certs(&mut self.cert_pem.as_bytes()).next().expect("a cert").expect("cert").as_ref().to_vec()
    }
}

// ---------------------------------------------------------------- binary

/// The built `deskgate` binary running as a child, its stderr collected.
pub struct Running {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub api: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts `deskgate --config PATH` (logs as JSON: stderr is a pipe) and waits
/// for its "listening" line.
pub fn run_binary(config: &Path, envs: &[(&str, &str)]) -> Running {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deskgate"));
    cmd.arg("--config").arg(config);
    run_binary_cmd(cmd, envs)
}

/// As [`run_binary`], from a prepared command (e.g. under `setpriv`, or
/// finding its config through `DESKGATE_CONFIG`). `RUST_LOG` is `info`
/// unless `envs` says otherwise.
pub fn run_binary_cmd(mut cmd: Command, envs: &[(&str, &str)]) -> Running {
    cmd.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn deskgate");
    let lines = Arc::new(Mutex::new(Vec::new()));
    for pipe in [
        child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                lines.lock().expect("lines").push(line);
            }
        });
    }
    let listening = wait_line(&lines, Duration::from_secs(20), |l| l.contains("deskgate listening"));
    let Some(listening) = listening else {
        let _ = child.kill();
        panic!("deskgate did not start:\n{}", lines.lock().expect("lines").join("\n"));
    };
    let v: serde_json::Value = serde_json::from_str(&listening).expect("JSON log line");
    let addr = |k: &str| -> SocketAddr {
        v[k].as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no {k} in {listening}"))
    };
    Running { api: addr("api_addr"), admin: addr("admin_addr"), child, lines }
}

/// Waits for a line matching `pred`.
pub fn wait_line(lines: &Mutex<Vec<String>>, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
    let end = Instant::now() + limit;
    loop {
        if let Some(l) = lines.lock().expect("lines").iter().find(|l| pred(l)) {
            return Some(l.clone());
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Running {
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    pub fn log(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    pub fn wait_line(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        wait_line(&self.lines, limit, pred)
    }

    /// Waits (from a multi-thread test runtime) for the process to exit with
    /// status 0 within `limit`; panics with its log otherwise.
    pub fn assert_exits_cleanly(&mut self, limit: Duration) {
        let status = tokio::task::block_in_place(|| self.wait_exit(limit))
            .unwrap_or_else(|| panic!("did not exit within {limit:?}:\n{}", self.log()));
        assert!(status.success(), "exit status {status:?}:\n{}", self.log());
    }

    /// Waits for exit, killing the child after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------- healthcheck

/// A loopback port free now: for configs that must name their admin port up
/// front (`deskgate healthcheck` reads it from the file, so `:0` will not do).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// What `deskgate healthcheck` answered: exit code, stdout, stderr.
pub struct Health {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `deskgate healthcheck` from a prepared command (config by
/// `--config` or `DESKGATE_CONFIG`), off the async runtime.
pub fn healthcheck_cmd(mut cmd: Command) -> Health {
    let out = cmd.arg("healthcheck").stdin(Stdio::null()).output().expect("run deskgate healthcheck");
    Health {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `deskgate healthcheck --config PATH`.
pub fn healthcheck(config: &Path) -> Health {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deskgate"));
    cmd.arg("--config").arg(config);
    healthcheck_cmd(cmd)
}
