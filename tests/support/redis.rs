//! Real `redis-server` processes for tests: one per test, on a free loopback
//! port (never 6379), in a temp dir, killed on drop. A cluster of three
//! masters is built with `redis-cli --cluster create`; a primary with a
//! replica under three sentinels (`redis-server --sentinel`) by
//! [`RedisSentinels`].
//!
//! Without `redis-server` on PATH, [`RedisServer::start`] prints a line and
//! returns `None` (the test returns), unless `DESKGATE_REQUIRE_REDIS=1`.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether Redis tests can run here; panics if they must and cannot.
pub fn available(test: &str) -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("DESKGATE_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
            panic!("{test}: redis-server is not on PATH and DESKGATE_REQUIRE_REDIS=1");
        }
        println!("skipping {test}: redis-server is not on PATH");
    }
    ok
}

/// A port free on 127.0.0.1 (and, for cluster nodes, its bus port +10000 too).
fn free_port(with_bus: bool) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if port == 6379 {
            continue;
        }
        if with_bus {
            if port > 55_000 {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port + 10_000)).is_err() {
                continue;
            }
        }
        return port;
    }
}

/// One `redis-server`.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
    /// A sentinel's config file (a sentinel rewrites it as it learns).
    sentinel_conf: Option<std::path::PathBuf>,
    /// `requirepass`, which [`RedisServer::cli`] then sends.
    password: Option<String>,
}

impl RedisServer {
    /// A standalone server, or `None` when Redis tests are skipped.
    pub fn start(test: &str) -> Option<RedisServer> {
        if !available(test) {
            return None;
        }
        Some(RedisServer::spawn(free_port(false), Vec::new()))
    }

    fn spawn(port: u16, extra: Vec<String>) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = RedisServer { port, dir, extra, child: None, sentinel_conf: None, password: None };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let mut cmd = Command::new("redis-server");
        if let Some(conf) = &self.sentinel_conf {
            cmd.arg(conf).arg("--sentinel");
        } else {
            cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--dir", &self.dir.path().display().to_string()]);
        }
        let child =
            cmd.args(&self.extra).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server on port {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `redis-cli -p PORT args…`, trimmed stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(pw) = &self.password {
            cmd.args(["-a", pw, "--no-auth-warning"]);
        }
        let out = cmd.args(args).stderr(Stdio::null()).output().expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Three masters, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(test: &str) -> Option<RedisCluster> {
        if !available(test) {
            return None;
        }
        let mut nodes = Vec::new();
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let p = free_port(true);
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        for &port in &ports {
            let dir = tempfile::tempdir().expect("tempdir");
            let conf = dir.path().join(format!("nodes-{port}.conf")).display().to_string();
            let extra = vec!["--cluster-enabled".into(), "yes".into(), "--cluster-config-file".into(), conf];
            let mut s = RedisServer { port, dir, extra, child: None, sentinel_conf: None, password: None };
            s.launch();
            nodes.push(s);
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes.iter().all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")) {
            assert!(Instant::now() < deadline, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(RedisCluster { nodes })
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// The name the sentinels of [`RedisSentinels`] know the primary by.
pub const SENTINEL_MASTER: &str = "deskgate-primary";

/// A primary, one replica of it, and three sentinels watching it (quorum
/// 2) that call it down after 1 s without an answer, as a small production
/// setup would (with shorter timeouts, so a failover takes seconds).
pub struct RedisSentinels {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
}

impl RedisSentinels {
    pub fn start(test: &str) -> Option<RedisSentinels> {
        RedisSentinels::start_with(test, None)
    }

    /// With `password` set, the primary and the replica require it
    /// (`requirepass`, `masterauth`) and the sentinels use it
    /// (`sentinel auth-pass`); the sentinels themselves need none.
    pub fn start_with(test: &str, password: Option<&str>) -> Option<RedisSentinels> {
        if !available(test) {
            return None;
        }
        let auth: Vec<String> = password
            .map(|pw| vec!["--requirepass".into(), pw.into(), "--masterauth".into(), pw.into()])
            .unwrap_or_default();
        let node = |extra: Vec<String>| {
            let mut s = RedisServer {
                port: free_port(false),
                dir: tempfile::tempdir().expect("tempdir"),
                extra,
                child: None,
                sentinel_conf: None,
                password: password.map(str::to_owned),
            };
            s.launch();
            s
        };
        let primary = node(auth.clone());
        let replicaof = vec!["--replicaof".into(), "127.0.0.1".into(), primary.port.to_string()];
        let replica = node([auth, replicaof].concat());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !replica.cli(&["INFO", "replication"]).contains("master_link_status:up") {
            assert!(Instant::now() < deadline, "the replica did not sync");
            std::thread::sleep(Duration::from_millis(50));
        }
        let sentinels: Vec<RedisServer> = (0..3)
            .map(|_| {
                let port = free_port(false);
                let dir = tempfile::tempdir().expect("tempdir");
                let conf = dir.path().join("sentinel.conf");
                let text = format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {m} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {m} 1000\n\
                     sentinel failover-timeout {m} 5000\n\
                     sentinel parallel-syncs {m} 1\n{auth_pass}",
                    auth_pass =
                        password.map(|pw| format!("sentinel auth-pass {SENTINEL_MASTER} {pw}\n")).unwrap_or_default(),
                    dir = dir.path().display(),
                    m = SENTINEL_MASTER,
                    primary = primary.port,
                );
                std::fs::write(&conf, text).expect("write sentinel.conf");
                let mut s = RedisServer {
                    port,
                    dir,
                    extra: Vec::new(),
                    child: None,
                    sentinel_conf: Some(conf),
                    password: None,
                };
                s.launch();
                s
            })
            .collect();
        let set = RedisSentinels { primary, replica, sentinels };
        // Ready for a failover: every sentinel sees the others (quorum and
        // majority reachable) and knows the replica it would promote.
        let deadline = Instant::now() + Duration::from_secs(30);
        let replica = set.replica.port.to_string();
        while !set.sentinels.iter().all(|s| {
            s.cli(&["SENTINEL", "CKQUORUM", SENTINEL_MASTER]).starts_with("OK 3")
                && s.cli(&["SENTINEL", "REPLICAS", SENTINEL_MASTER]).contains(&replica)
        }) {
            assert!(Instant::now() < deadline, "the sentinels did not find each other and the replica");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(set)
    }

    /// The sentinels' URLs, for `[limiter] redis_sentinel`.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The port of the server the first sentinel names as primary now.
    pub fn primary_port(&self) -> u16 {
        let addr = self.sentinels[0].cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER]);
        addr.lines().nth(1).and_then(|p| p.trim().parse().ok()).unwrap_or(0)
    }
}
