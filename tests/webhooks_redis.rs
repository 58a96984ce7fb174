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
use support::redis::RedisCluster;
use support::webhooks::{max_in_any_interval, post_webhook, wait_final, webhook_status, Receiver, RedisServer};
use support::{client, get, used, RecordingUpstream};

const BIN: &str = env!("CARGO_BIN_EXE_deskgate");

/// A config on disk: `acme` may spend `per_2s` per 2 s window.
fn write_config(dir: &Path, upstream: SocketAddr, redis: &RedisServer, per_2s: u32) -> PathBuf {
    write_config_with(
        dir,
        upstream,
        &format!("redis_url = \"{}\"", redis.url()),
        per_2s,
        "delivery_timeout_ms = 1000\n",
    )
}

/// [`write_config`] with the store given as TOML (`redis_url = …` or
/// `redis_cluster = […]`) and `keys` in `[webhooks]` (at least `delivery_timeout_ms`).
fn write_config_with(dir: &Path, upstream: SocketAddr, store: &str, per_2s: u32, keys: &str) -> PathBuf {
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
{store}
store_timeout_ms = 500

[webhooks]
listen = "127.0.0.1:0"
max_postpone_s = 30
retry_schedule_s = [1, 1]
{keys}
[plans.tight]
per_minute = {per_2s}
window_seconds = 2

[[tenant]]
name = "acme"
domain = "acme.freshdesk.com"
plan = "tight"
"#
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

/// Posts `bodies` for `tenant` as webhooks `prefix-0..`, alternating over `addrs`;
/// returns the ids and the `status` each was answered.
async fn post_bodies(
    addrs: &[SocketAddr],
    rx: &Receiver,
    tenant: &str,
    prefix: &str,
    n: usize,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let got = post_webhook(
            addrs[i % addrs.len()],
            json!({"tenant": tenant, "url": rx.url("/r"), "id": id, "body": format!("{{\"{prefix}\":{i}}}")}),
        )
        .await;
        assert_eq!(got.status, 202, "{id}: {:?}", got.body);
        out.push((id, got.json()["status"].as_str().unwrap_or("").to_owned()));
    }
    out
}

/// Each of `ids` delivered exactly once, in one attempt, its body intact,
/// never two deliveries of one id at once.
async fn assert_each_once(wh: SocketAddr, rx: &Receiver, ids: &[(String, String)]) {
    for (id, _) in ids {
        let v = wait_final(wh, id, Duration::from_secs(20)).await;
        assert_eq!(v["status"], "delivered", "{id}: {v}");
        assert_eq!(v["attempts"], 1, "{id}: charged once: {v}");
    }
    let by_id = rx.by_id();
    for (id, _) in ids {
        assert_eq!(by_id.get(id), Some(&1), "{id}: {by_id:?}");
        let hit = rx.hits().into_iter().find(|h| &h.id == id).unwrap();
        let (prefix, n) = id.rsplit_once('-').unwrap();
        assert_eq!(hit.body, format!("{{\"{prefix}\":{n}}}"), "{id}: body intact");
    }
    assert_eq!(rx.overlaps.load(Ordering::SeqCst), 0, "two deliveries of one webhook at once");
}

#[tokio::test]
async fn two_replicas_and_a_receiver_slower_than_the_lease_deliver_each_webhook_once() {
    let Some(redis) = RedisServer::start("two_replicas_and_a_receiver_slower_than_the_lease_deliver_each_webhook_once")
    else {
        return;
    };
    let up = RecordingUpstream::start().await;
    let rx = Receiver::start().await;
    // Held almost four leases: without renewal the other replica would
    // claim each delivery and send it again meanwhile.
    rx.hold_ms.store(1500, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let store = format!("redis_url = \"{}\"", redis.url());
    let path = write_config_with(dir.path(), up.addr, &store, 4, "delivery_timeout_ms = 5000\nlease_ms = 400\n");
    // One replica a separate process of the built binary, one in this process.
    let a = Process::start(&path);
    let b = replica(&path).await;
    let whs = [a.webhooks, b.webhooks_addr.unwrap()];
    let ids = post_bodies(&whs, &rx, "acme", "lease", 6).await;
    let statuses: Vec<&str> = ids.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(statuses, ["sent", "sent", "sent", "sent", "postponed", "postponed"]);
    assert_eq!(used(b.admin_addr, "acme").await, 4, "the postponed ones are not charged yet");
    assert_each_once(whs[1], &rx, &ids).await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_bound_per_tenant_holds_across_replicas_sharing_the_redis_queue() {
    let Some(redis) = RedisServer::start("the_bound_per_tenant_holds_across_replicas_sharing_the_redis_queue") else {
        return;
    };
    let up = RecordingUpstream::start().await;
    let rx = Receiver::start().await;
    rx.hold_ms.store(1500, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let store = format!("redis_url = \"{}\"", redis.url());
    let path =
        write_config_with(dir.path(), up.addr, &store, 2, "delivery_timeout_ms = 5000\nmax_queued_per_tenant = 3\n");
    let a = replica(&path).await;
    let b = replica(&path).await;
    let whs = [a.webhooks_addr.unwrap(), b.webhooks_addr.unwrap()];
    // Two in flight (held by the receiver) and one waiting for the budget: the bound.
    let ids = post_bodies(&whs, &rx, "acme", "bound", 3).await;
    assert_eq!(ids.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(), ["sent", "sent", "postponed"]);
    for wh in whs {
        let got =
            post_webhook(wh, json!({"tenant": "acme", "url": rx.url("/r"), "id": "bound-over", "body": "no"})).await;
        assert_eq!(got.status, 429, "{:?}", got.body);
        assert_eq!(got.json()["code"], "webhook_queue_full");
        assert_eq!(got.header("retry-after"), "60");
    }
    let gone = support::webhooks::json_call(&client(), whs[0], "GET", "/webhooks/bound-over", None).await;
    assert_eq!(gone.status, 404, "the refused webhook was not stored");
    assert_eq!(used(a.admin_addr, "acme").await, 2, "refusals cost nothing");
    assert_each_once(whs[0], &rx, &ids).await;
    // Drained: room again.
    let got = post_webhook(whs[1], json!({"tenant": "acme", "url": rx.url("/r"), "id": "bound-later"})).await;
    assert_eq!(got.status, 202, "{:?}", got.body);
    assert!(!rx.hits().iter().any(|h| h.id == "bound-over"));
    for (gw, n) in [(&a, 1.0), (&b, 1.0)] {
        let m = support::webhooks::metrics(gw.admin_addr).await;
        let got = support::webhooks::sample(&m, r#"deskgate_webhooks_total{tenant="acme",outcome="queue_full"}"#);
        assert_eq!(got, Some(n), "each replica counts its own refusals: {m}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Six tenants on a 3-master cluster, each with 2 per 2 s: their webhooks
/// spread over the nodes by tenant hash tag.
fn cluster_config(dir: &Path, upstream: SocketAddr, cluster: &RedisCluster) -> PathBuf {
    let urls = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    let path = write_config_with(
        dir,
        upstream,
        &format!("redis_cluster = [{urls}]"),
        2,
        "delivery_timeout_ms = 5000\nlease_ms = 400\n",
    );
    let mut toml = std::fs::read_to_string(&path).unwrap();
    for t in TENANTS_ON_CLUSTER {
        toml.push_str(&format!("\n[[tenant]]\nname = \"{t}\"\ndomain = \"{t}.freshdesk.com\"\nplan = \"tight\"\n"));
    }
    std::fs::write(&path, toml).unwrap();
    path
}

const TENANTS_ON_CLUSTER: [&str; 5] = ["beta", "gamma", "delta", "omega", "zeta"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_queue_runs_on_a_three_node_cluster_with_each_tenant_in_its_own_slot() {
    let Some(cluster) =
        RedisCluster::start("the_redis_queue_runs_on_a_three_node_cluster_with_each_tenant_in_its_own_slot")
    else {
        return;
    };
    let up = RecordingUpstream::start().await;
    let rx = Receiver::start().await;
    // Longer than the lease: renewals go to each tenant's own node.
    rx.hold_ms.store(700, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let path = cluster_config(dir.path(), up.addr, &cluster);
    let a = replica(&path).await;
    let b = replica(&path).await;
    let whs = [a.webhooks_addr.unwrap(), b.webhooks_addr.unwrap()];
    let tenants: Vec<&str> = std::iter::once("acme").chain(TENANTS_ON_CLUSTER).collect();
    let mut all = Vec::new();
    for t in &tenants {
        // 2 per 2 s: two go out at once, the third waits for the budget and
        // is claimed later by either replica's dispatcher.
        let ids = post_bodies(&whs, &rx, t, &format!("c{t}"), 3).await;
        assert_eq!(ids.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(), ["sent", "sent", "postponed"], "{t}");
        assert_eq!(used(a.admin_addr, t).await, 2, "{t}");
        all.extend(ids);
    }
    assert_each_once(whs[0], &rx, &all).await;
    // Either replica answers for any id (the id index).
    let v = webhook_status(whs[1], "cacme-0").await;
    assert_eq!((v["status"].as_str(), v["tenant"].as_str()), (Some("delivered"), Some("acme")));
    // Each tenant's webhooks sit on one node, next to its rate-limit key;
    // the tenants are spread over more than one node.
    let mut nodes_used = std::collections::BTreeSet::new();
    for t in &tenants {
        let holders: Vec<usize> = cluster
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.cli(&["EXISTS", &format!("deskgate:{{{t}}}:wh:job:c{t}-0")]) == "1")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(holders.len(), 1, "{t}: {holders:?}");
        let node = &cluster.nodes[holders[0]];
        for k in [format!("deskgate:{{{t}}}:wh:job:c{t}-1"), format!("deskgate:{{{t}}}:wh:job:c{t}-2")] {
            assert_eq!(node.cli(&["EXISTS", &k]), "1", "{k} on the tenant's node");
        }
        let slot = node.cli(&["CLUSTER", "KEYSLOT", &format!("deskgate:{{{t}}}:wh:due")]);
        assert_eq!(slot, node.cli(&["CLUSTER", "KEYSLOT", &format!("deskgate:{{{t}}}:rl")]), "{t}");
        nodes_used.insert(holders[0]);
    }
    assert!(nodes_used.len() >= 2, "tenants spread over the cluster: {nodes_used:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn webhooks_queued_in_the_single_tag_layout_are_moved_over_and_delivered_once() {
    let Some(redis) = RedisServer::start("webhooks_queued_in_the_single_tag_layout_are_moved_over_and_delivered_once")
    else {
        return;
    };
    let up = RecordingUpstream::start().await;
    let rx = Receiver::start().await;
    // One postponed, one left in flight by a replica of the earlier layout
    // that died (its lease ran out), one still held by a live one.
    let spec = |body: &str| {
        json!({"tenant": "acme", "url": rx.url("/old"), "method": "POST", "headers": [["x-old", "1"]], "body": body})
            .to_string()
    };
    let state = json!({"status": "postponed", "attempts": 0, "failures": 0}).to_string();
    let now_ms: u64 = redis.cli(&["TIME"]).lines().next().unwrap().parse::<u64>().unwrap() * 1000;
    for (id, set, score) in [
        ("old-due", "due", now_ms - 1000),
        ("old-held", "inflight", now_ms - 100),
        ("old-busy", "inflight", now_ms + 60_000),
    ] {
        let job = format!("{{deskgate:webhooks}}:job:{id}");
        let body = format!("body of {id}");
        assert_eq!(
            redis.cli(&["HSET", &job, "spec", &spec(&body), "state", &state, "accepted_ms", "1", "owner", "gone"]),
            "4"
        );
        assert_eq!(redis.cli(&["ZADD", &format!("{{deskgate:webhooks}}:{set}"), &score.to_string(), id]), "1");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), up.addr, &redis, 4);
    let gw = replica(&path).await;
    let wh = gw.webhooks_addr.unwrap();
    for id in ["old-due", "old-held"] {
        let v = wait_final(wh, id, Duration::from_secs(10)).await;
        assert_eq!((v["status"].as_str(), v["attempts"].as_u64()), (Some("delivered"), Some(1)), "{id}: {v}");
        let hit = rx.hits().into_iter().find(|h| h.id == id).unwrap();
        assert_eq!(hit.body, format!("body of {id}"));
        assert_eq!(hit.headers["x-old"], "1");
    }
    assert_eq!(rx.count(), 2, "the live holder's webhook is left to it: {:?}", rx.by_id());
    assert_eq!(used(gw.admin_addr, "acme").await, 2);
    assert_eq!(redis.cli(&["ZCARD", "{deskgate:webhooks}:due"]), "0");
    assert_eq!(redis.cli(&["ZRANGE", "{deskgate:webhooks}:inflight", "0", "-1"]), "old-busy");
    assert_eq!(redis.cli(&["EXISTS", "deskgate:{acme}:wh:job:old-held"]), "1");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_bound_through_two_replicas_is_cut_exactly_at_it() {
    let Some(redis) = RedisServer::start("a_flood_past_the_bound_through_two_replicas_is_cut_exactly_at_it") else {
        return;
    };
    let up = RecordingUpstream::start().await;
    let rx = Receiver::start().await;
    rx.hold_ms.store(3000, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let store = format!("redis_url = \"{}\"", redis.url());
    let path =
        write_config_with(dir.path(), up.addr, &store, 2, "delivery_timeout_ms = 5000\nmax_queued_per_tenant = 20\n");
    let a = replica(&path).await;
    let b = replica(&path).await;
    let whs = [a.webhooks_addr.unwrap(), b.webhooks_addr.unwrap()];
    // 60 at once, half through each replica: two go out (held by the
    // receiver), the rest wait for the budget, and the bound is 20.
    let posts: Vec<_> = (0..60)
        .map(|i| {
            let wh = whs[i % 2];
            let url = rx.url("/flood");
            tokio::spawn(async move {
                let got = post_webhook(wh, json!({"tenant": "acme", "url": url, "id": format!("flood-{i}")})).await;
                (got.status.as_u16(), got.json()["code"].as_str().unwrap_or("").to_owned())
            })
        })
        .collect();
    let mut accepted = 0;
    let mut refused = 0;
    for p in posts {
        match p.await.unwrap() {
            (202, _) => accepted += 1,
            (429, code) => {
                assert_eq!(code, "webhook_queue_full");
                refused += 1
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    println!("60 posted at once through two replicas: {accepted} accepted, {refused} refused (bound 20)");
    assert_eq!((accepted, refused), (20, 40));
    let queued: u64 = ["due", "inflight"]
        .iter()
        .map(|s| redis.cli(&["ZCARD", &format!("deskgate:{{acme}}:wh:{s}")]).parse::<u64>().unwrap())
        .sum();
    assert_eq!(queued, 20, "what Redis holds");
    assert_eq!(used(a.admin_addr, "acme").await, 2, "only the two sent were charged");
    let mut counted = 0.0;
    for gw in [&a, &b] {
        let m = support::webhooks::metrics(gw.admin_addr).await;
        counted += support::webhooks::sample(&m, r#"deskgate_webhooks_total{tenant="acme",outcome="queue_full"}"#)
            .unwrap_or(0.0);
    }
    assert_eq!(counted, 40.0, "every refusal counted once");
    assert!(rx.wait_for(2, Duration::from_secs(3)).await);
    assert_eq!(rx.count(), 2, "only what the budget allowed went out");
    a.shutdown().await;
    b.shutdown().await;
}
