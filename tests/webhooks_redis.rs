//! docs/reference.md "Webhook egress" with `store = "redis"`: the queue lives in a real `redis-server`
//! (started here on a free loopback port), survives a restart of every
//! replica, is worked by one replica at a time, and loses nothing when a
//! replica is killed mid-delivery. Skipped with a printed line when
//! `redis-server` is missing, unless `DESKGATE_REQUIRE_REDIS=1`.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use deskgate::app::Gateway;
use deskgate::config::Config;
use serde_json::json;
use support::webhooks::{max_in_any_interval, post_webhook, wait_final, Receiver, RedisServer};
use support::{client, get, RecordingUpstream};

const BIN: &str = env!("CARGO_BIN_EXE_deskgate");

/// A config on disk: `acme` may spend `per_2s` per 2 s window.
fn write_config(dir: &Path, upstream: SocketAddr, redis: &RedisServer, per_2s: u32) -> PathBuf {
    let path = dir.join("deskgate.toml");
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace_ms = 500

[admin]
listen = "127.0.0.1:0"

[upstream]
url = "http://{upstream}"
timeout_ms = 1000
connect_timeout_ms = 500

[limiter]
store = "redis"
redis_url = "{url}"
store_timeout_ms = 500

[webhooks]
listen = "127.0.0.1:0"
max_postpone_s = 30
retry_schedule_s = [1, 1]
delivery_timeout_ms = 1000

[plans.tight]
per_minute = {per_2s}
window_seconds = 2

[[tenant]]
name = "acme"
domain = "acme.freshdesk.com"
plan = "tight"
"#,
        url = redis.url()
    );
    std::fs::write(&path, toml).unwrap();
    path
}

async fn replica(path: &Path) -> Gateway {
    let cfg = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
    Gateway::start(cfg).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Posts `n` webhooks `prefix-0..n` for `acme`, alternating over `addrs`.
async fn post_many(addrs: &[SocketAddr], rx: &Receiver, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let got = post_webhook(
            addrs[i % addrs.len()],
            json!({"tenant": "acme", "url": rx.url("/r"), "id": id, "body": "{}"}),
        )
        .await;
        assert_eq!(got.status, 202, "{:?}", got.body);
        ids.push(id);
    }
    ids
}

async fn assert_all_delivered(wh: SocketAddr, ids: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    for id in ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = wait_final(wh, id, left).await;
        assert_eq!(v["status"], "delivered", "{id}: {v}");
    }
}

#[tokio::test]
async fn the_redis_queue_survives_a_restart_of_every_replica() {
    let Some(redis) = RedisServer::start("the_redis_queue_survives_a_restart_of_every_replica") else {
        return;
    };
    let up = RecordingUpstream::start().await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), up.addr, &redis, 2);

    let a = replica(&path).await;
    let ids = post_many(&[a.webhooks_addr.unwrap()], &rx, "restart", 6).await;
    // Two fit the budget; four wait in Redis. Stop the only replica.
    assert!(rx.wait_for(2, Duration::from_secs(3)).await);
    a.shutdown().await;
    assert_eq!(rx.count(), 2, "nothing else was due yet");

    let b = replica(&path).await;
    let wh = b.webhooks_addr.unwrap();
    assert_all_delivered(wh, &ids, Duration::from_secs(15)).await;
    let by_id = rx.by_id();
    assert_eq!(by_id.len(), 6);
    assert!(by_id.values().all(|n| *n == 1), "{by_id:?}");
    b.shutdown().await;
}

#[tokio::test]
async fn two_replicas_share_one_budget_and_deliver_each_webhook_exactly_once() {
    let Some(redis) = RedisServer::start("two_replicas_share_one_budget_and_deliver_each_webhook_exactly_once") else {
        return;
    };
    let up = RecordingUpstream::start().await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), up.addr, &redis, 5);
    let a = replica(&path).await;
    let b = replica(&path).await;
    let whs = [a.webhooks_addr.unwrap(), b.webhooks_addr.unwrap()];
    // API calls through both replicas while webhooks arrive and drain.
    let api: Vec<_> = [a.api_addr, b.api_addr]
        .into_iter()
        .map(|addr| {
            tokio::spawn(async move {
                let c = client();
                let end = Instant::now() + Duration::from_secs(4);
                let mut admitted = Vec::new();
                while Instant::now() < end {
                    if get(&c, addr, "acme.freshdesk.com", "/api/v2/tickets/1").await.status == 200 {
                        admitted.push(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
                admitted
            })
        })
        .collect();
    let mut ids = Vec::new();
    for chunk in 0..4 {
        ids.extend(post_many(&whs, &rx, &format!("pair{chunk}"), 3).await);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let mut all = Vec::new();
    for t in api {
        all.extend(t.await.unwrap());
    }
    let api_n = all.len();
    assert!(api_n >= 1, "API calls got a share of the budget");
    assert_all_delivered(whs[0], &ids, Duration::from_secs(20)).await;
    let by_id = rx.by_id();
    assert_eq!(by_id.len(), 12);
    assert!(by_id.values().all(|n| *n == 1), "delivered twice: {by_id:?}");
    assert_eq!(rx.overlaps.load(Ordering::SeqCst), 0);
    all.extend(rx.hits().iter().map(|h| h.at));
    let worst = max_in_any_interval(&all, Duration::from_millis(1800));
    println!("{api_n} api calls, 12 deliveries; at most {worst} in any 1.8 s");
    assert!(worst <= 5, "{worst} within 1.8 s, budget 5 per 2 s");
    a.shutdown().await;
    b.shutdown().await;
}

/// A `deskgate run` process and the address of its webhook listener.
struct Process {
    child: Child,
    webhooks: SocketAddr,
}

impl Process {
    fn start(path: &Path) -> Process {
        let mut child = Command::new(BIN)
            .args(["--config"])
            .arg(path)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, addr_rx) = std::sync::mpsc::channel();
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let addr = v["webhooks_addr"].as_str().or_else(|| v["fields"]["webhooks_addr"].as_str());
                if let Some(addr) = addr {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.to_owned());
                    }
                }
            }
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(15)).expect("the replica logs its webhooks address");
        Process { child, webhooks: addr.parse().unwrap() }
    }

    /// SIGKILL: no drain, no cleanup, leases left behind in Redis.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn a_replica_killed_mid_delivery_loses_nothing_and_redelivers_with_the_same_id() {
    let Some(redis) = RedisServer::start("a_replica_killed_mid_delivery_loses_nothing_and_redelivers_with_the_same_id")
    else {
        return;
    };
    let up = RecordingUpstream::start().await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), up.addr, &redis, 4);
    let mut victim = Process::start(&path);
    let survivor = replica(&path).await;

    // The receiver sits on deliveries, so the victim is mid-delivery when it dies.
    rx.hold_ms.store(1500, Ordering::SeqCst);
    let ids = post_many(&[victim.webhooks], &rx, "kill", 8).await;
    assert!(rx.wait_for(4, Duration::from_secs(3)).await, "the four admitted webhooks are being delivered");
    let killed_at = Instant::now();
    victim.kill();
    rx.hold_ms.store(0, Ordering::SeqCst);
    let held: Vec<String> = rx.hits().iter().map(|h| h.id.clone()).collect();

    assert_all_delivered(survivor.webhooks_addr.unwrap(), &ids, Duration::from_secs(25)).await;
    let by_id = rx.by_id();
    assert_eq!(by_id.len(), 8, "every webhook reached the receiver: {by_id:?}");
    for id in &held {
        assert!(by_id[id] >= 2, "{id} was redelivered after the kill");
    }
    let redelivered = rx.hits().iter().filter(|h| held.contains(&h.id) && h.at > killed_at).count();
    assert!(redelivered >= held.len());
    assert_eq!(rx.overlaps.load(Ordering::SeqCst), 0, "two replicas delivered one webhook at once");
    survivor.shutdown().await;
}
