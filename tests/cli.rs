//! The binary as a user runs it: `check`, `run`, `demo`, their errors, and
//! that `check` accepts only what `run` starts with.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::ops::{self, *};

const BIN: &str = env!("CARGO_BIN_EXE_deskgate");

#[test]
fn check_accepts_the_example_config_and_summarises_it() {
    let out = Command::new(BIN).args(["check", "--config", "config/deskgate.toml"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("acme"), "{stdout}");
    assert!(stdout.contains("globex"), "tenants_dir is read: {stdout}");
}

#[test]
fn check_reports_a_broken_config_as_path_line_col_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:0\"\n\n[[tenant]]\nname = \"acme\"\ndomain = \"acme.freshdesk.com\"\nplan = \"platinum\"\n").unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:7:", path.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("platinum"), "{stderr}");
}

#[test]
fn run_with_a_broken_config_exits_1_without_panicking() {
    let out = Command::new(BIN).args(["--config", "/nonexistent/deskgate.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // No made-up position in a file that does not exist; the way to name another.
    assert!(stderr.contains("/nonexistent/deskgate.toml: cannot read config file"), "{stderr}");
    assert!(!stderr.contains(":1:1"), "{stderr}");
    assert!(stderr.contains("--config") && stderr.contains("DESKGATE_CONFIG"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

/// `deskgate check --config PATH`: (exit code, stdout, stderr).
fn check(path: &Path, envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "--config"]).arg(path);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run deskgate check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// How `deskgate run` ended within a few seconds: `Ok(log)` once it logged
/// that it listens (it is then stopped), `Err(log)` when it exited first.
fn run_starts(path: &Path, envs: &[(&str, &str)]) -> Result<String, String> {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(path).arg("--log-format").arg("json");
    cmd.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn deskgate");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr");
    let collected = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            collected.lock().expect("lines").push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let started = loop {
        if lines.lock().expect("lines").iter().any(|l| l.contains("deskgate listening")) {
            break true;
        }
        if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let log = lines.lock().expect("lines").join("\n");
    if started {
        Ok(log)
    } else {
        Err(log)
    }
}

/// A loopback port nothing listens on: a remote store that cannot be reached.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn a_redis_url_the_client_cannot_parse_is_refused_by_check_and_run_at_its_position() {
    let dir = ConfigDir::new();
    let path = dir.write(
        "bad.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [limiter]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:notaport/0\"\n",
    );
    let (code, _, stderr) = check(&path, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    let at = format!(
        "{}:7:13: limiter.redis_url: \"redis://127.0.0.1:notaport/0\" is not a valid Redis URL",
        path.display()
    );
    assert!(stderr.contains(&at), "{stderr}");
    let log = run_starts(&path, &[]).expect_err("run refuses it too");
    assert!(log.contains(&at), "{log}");
}

#[test]
fn check_names_every_independent_mistake_with_its_key_and_type_in_words() {
    let dir = ConfigDir::new();
    let path = dir.write(
        "bad.toml",
        "[server]\nmax_body_bytes = \"20MB\"\ntenants_dir = \"tenants.d\"\n\
         [limiter]\nstore = \"redis-cluster\"\n\
         [[tenant]]\nname = \"acme\"\ndomain = \"acme.freshdesk.com\"\n\
         [[tenant]]\nname = \"globex\"\ndomain = \"globex.freshdesk.com\"\nplan = \"pro\"\nburst = 3\n",
    );
    let (code, stdout, stderr) = check(&path, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    let p = path.display();
    let expected = [
        format!("{p}:2:18: `server.max_body_bytes` must be an integer (bytes), found the string \"20MB\""),
        format!("{p}:3:1: unknown key `tenants_dir` in `server`"),
        format!("{p}:5:9: `limiter.store` must be one of \"memory\", \"redis\", found \"redis-cluster\""),
        format!("{p}:6:1: `tenant[0]` is missing the required key `plan`"),
        format!("{p}:13:1: unknown key `burst` in `tenant[1]`"),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, want) in lines.iter().zip(&expected) {
        assert!(line.starts_with(want.as_str()), "{line}\nwanted: {want}");
    }
    assert!(stderr.contains("write `tenants_dir` above the first [table]"), "{stderr}");
    assert!(!stderr.contains("expected i64") && !stderr.contains("invalid type"), "{stderr}");
}

#[test]
fn a_single_tenant_table_in_the_main_file_is_told_to_use_double_brackets() {
    let dir = ConfigDir::new();
    let path = dir.write("bad.toml", "[tenant]\nname = \"acme\"\ndomain = \"acme.freshdesk.com\"\nplan = \"pro\"\n");
    let (code, _, stderr) = check(&path, &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.starts_with(&format!("{}:1:1: `tenant`: ", path.display())), "{stderr}");
    assert!(stderr.contains("write [[tenant]]"), "{stderr}");
}

#[test]
fn check_says_who_can_reach_each_listener_and_loopback_is_the_default() {
    let dir = ConfigDir::new();
    let path = dir.write("gw.toml", "[upstream]\nurl = \"http://127.0.0.1:9\"\n");
    let (code, stdout, stderr) = check(&path, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("api listener: 127.0.0.1:8080 (") && stdout.contains("loopback only"), "{stdout}");
    let path = dir.write("gw.toml", "[server]\nlisten = \"0.0.0.0:8080\"\n");
    let (_, stdout, _) = check(&path, &[]);
    let api = stdout.lines().find(|l| l.starts_with("api listener:")).expect("api line");
    assert!(api.contains("listening on all interfaces"), "{stdout}");
}

#[test]
fn the_demo_refuses_config_and_names_a_bad_listen_flag_not_a_temporary_file() {
    let out = Command::new(BIN).args(["demo", "--config", "mine.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--config is not used by the demo"), "{stderr}");
    let out = Command::new(BIN).args(["demo", "--listen", "localhost:80"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--listen \"localhost:80\": expected IP:PORT"), "{stderr}");
    assert!(!stderr.contains("deskgate-demo") && !stderr.contains(".toml"), "{stderr}");
}

/// The Redis password from a file and from the environment: the gateway
/// authenticates with it (a call is judged and charged in a Redis that
/// requires it), and `check`, the logs and `/config` never show it.
#[tokio::test(flavor = "multi_thread")]
async fn the_redis_password_comes_from_a_file_or_the_environment_and_is_never_shown() {
    let Some(redis) = support::redis::RedisServer::start("redis password from a secret") else { return };
    const SECRET: &str = "Tr0ub4dor-and-3";
    redis.cli(&["CONFIG", "SET", "requirepass", SECRET]);
    let upstream = format!("http://{}", start_upstream().await);
    let dir = ConfigDir::new();
    dir.write("secrets/redis-password", &format!("{SECRET}\n"));
    for (run, (key, envs)) in [
        ("redis_password_file = \"secrets/redis-password\"", vec![]),
        ("redis_password_env = \"REDIS_PASSWORD\"", vec![("REDIS_PASSWORD", SECRET)]),
    ]
    .into_iter()
    .enumerate()
    {
        let limiter = format!(
            "\n[limiter]\nstore = \"redis\"\nredis_url = \"{}/0\"\non_store_error = \"fail_closed\"\n{key}\n",
            redis.url()
        );
        let text = config_toml(&upstream, "", "", "").replacen("\n[[tenant]]", &format!("{limiter}\n[[tenant]]"), 1);
        let path = dir.write("deskgate.toml", &text);
        let (code, stdout, stderr) = check(&path, &envs);
        assert_eq!(code, Some(0), "{key}: {stderr}");
        assert!(stdout.contains("password from"), "{stdout}");
        assert!(!stdout.contains(SECRET), "{stdout}");

        let mut gw = run_binary(&path, &envs);
        // fail_closed: without the password every call would be 503.
        let r = send(gw.api, get("acme.freshdesk.com", "/api/v2/tickets", Some(&basic_auth()))).await;
        assert_eq!(r.status, StatusCode::OK, "{key}: {}\n{}", r.text(), gw.log());
        assert_eq!(r.json()["path"], "/api/v2/tickets", "what reached the upstream");
        // One call per run, counted in the same Redis window.
        assert_eq!(support::used(gw.admin, "acme").await, run as u64 + 1, "{key}: charged in Redis");
        let config = admin_get(gw.admin, "/config").await.text();
        assert!(config.contains("redis://:***@127.0.0.1:"), "{config}");
        assert!(!config.contains(SECRET), "{config}");
        gw.signal("TERM");
        gw.assert_exits_cleanly(Duration::from_secs(10));
        assert!(!gw.log().contains(SECRET), "{}", gw.log());
    }

    // A missing secret is refused at its key, before anything starts.
    let text = std::fs::read_to_string(dir.path("deskgate.toml")).unwrap();
    let (code, _, stderr) = check(&dir.path("deskgate.toml"), &[]);
    assert_eq!(code, Some(1));
    let line = text.lines().position(|l| l.starts_with("redis_password_env")).unwrap() + 1;
    let at = format!(
        "{}:{line}:22: limiter.redis_password_env: environment variable REDIS_PASSWORD is not set",
        dir.path("deskgate.toml").display()
    );
    assert!(stderr.contains(&at), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_lists_every_tenant_with_plan_hosts_and_shadow() {
    let upstream = format!("http://{}", start_upstream().await);
    let dir = ConfigDir::new();
    let extra = "\n[[tenant]]\nname = \"globex\"\ndomain = \"globex.freshdesk.com\"\nplan = \"pro\"\n\
                 vanity_hosts = [\"help.globex.com\"]\nshadow = true\n";
    let path = dir.write("deskgate.toml", &(config_toml(&upstream, "", "", "") + extra));
    let mut gw = run_binary(&path, &[]);
    let r = admin_get(gw.admin, "/tenants").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["count"], 2);
    assert_eq!(
        v["tenants"],
        serde_json::json!([
            {"name": "acme", "plan": "growth", "domain": "acme.freshdesk.com", "vanity_hosts": [], "shadow": false},
            {"name": "globex", "plan": "pro", "domain": "globex.freshdesk.com", "vanity_hosts": ["help.globex.com"], "shadow": true},
        ])
    );
    gw.signal("TERM");
    gw.assert_exits_cleanly(Duration::from_secs(10));
}

#[test]
fn version_and_help_answer() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["check", "demo", "--config", "--log-format"] {
        assert!(help.contains(word), "{help}");
    }
}

#[test]
fn the_demo_prints_curl_commands_that_work_and_one_reaches_429() {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut api = None;
    let mut curls = Vec::new();
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.trim().strip_prefix("gateway (API):") {
            api = rest.split_whitespace().next().map(str::to_owned);
        }
        if line.contains("Ctrl-C stops both") {
            break;
        }
        if line.trim_start().starts_with("curl ") {
            curls.push(line);
        }
    }
    let api = api.expect("the demo names its gateway address");
    assert!(api.starts_with("http://127.0.0.1:"), "{api}");
    assert!(curls.len() >= 5, "{curls:?}");
    // Run the first printed curl command for real, if curl is installed.
    if Command::new("curl").arg("--version").output().is_ok() {
        let list = curls.iter().find(|c| c.contains("/api/v2/tickets") && !c.contains("-d")).unwrap();
        let mut statuses = Vec::new();
        for _ in 0..6 {
            let cmd = format!("curl -s -o /dev/null -w '%{{http_code}}'{}", list.trim().trim_start_matches("curl -i"));
            let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
            statuses.push(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        assert_eq!(statuses, ["200", "200", "200", "200", "200", "429"]);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One way to write each part of a config, good or bad.
struct Variant {
    name: &'static str,
    /// Text for the part; `{redis}` is a closed loopback port, `{dir}` the config's folder.
    text: String,
}

fn variants(parts: &[(&'static str, &str)]) -> Vec<Variant> {
    parts.iter().map(|(name, text)| Variant { name, text: (*text).to_owned() }).collect()
}

/// Whatever `check` accepts, `run` starts with — here with every Redis
/// unreachable (fail_open and fail_closed both start) — and whatever it
/// refuses, `run` refuses with the same first line. The corpus crosses
/// good and bad spellings of every part `run` reads before serving:
/// listeners, the store URLs and password, TLS files, the upstream and its CA,
/// webhooks.
#[test]
fn every_config_check_accepts_run_starts_with() {
    let dir = ConfigDir::new();
    let pki = TestPki::new();
    let (cert, key) = pki.write(&dir, "tls");
    dir.write("ca.pem", &pki.ca_pem);
    dir.write("garbage.pem", "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n");
    dir.write("empty.pem", "");
    dir.write("pw", "s3cret\n");
    let redis = closed_port();
    let listeners = variants(&[
        ("loopback", "[server]\nlisten = \"127.0.0.1:0\"\n"),
        ("ipv6", "[server]\nlisten = \"[::1]:0\"\n"),
        ("name", "[server]\nlisten = \"localhost:0\"\n"),
        (
            "tls",
            &format!(
                "[server]\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
                cert.display(),
                key.display()
            ),
        ),
        (
            "tls-key-swapped",
            &format!(
                "[server]\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
                key.display(),
                cert.display()
            ),
        ),
        (
            "tls-garbage",
            "[server]\nlisten = \"127.0.0.1:0\"\ntls = { cert = \"garbage.pem\", key = \"tls-key.pem\" }\n",
        ),
    ]);
    let stores = variants(&[
        ("memory", ""),
        ("redis", "store = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis}/0\"\n"),
        ("redis-ipv6", "store = \"redis\"\nredis_url = \"redis://[::1]:{redis}\"\n"),
        ("rediss", "store = \"redis\"\nredis_url = \"rediss://127.0.0.1:{redis}/2\"\n"),
        ("redis-userinfo", "store = \"redis\"\nredis_url = \"redis://app:pw@127.0.0.1:{redis}/0\"\n"),
        ("redis-bad-port", "store = \"redis\"\nredis_url = \"redis://127.0.0.1:notaport/0\"\n"),
        ("redis-bad-db", "store = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis}/zero\"\n"),
        ("redis-no-host", "store = \"redis\"\nredis_url = \"redis://\"\n"),
        (
            "redis-pw-file",
            "store = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis}\"\nredis_password_file = \"pw\"\n",
        ),
        (
            "redis-pw-twice",
            "store = \"redis\"\nredis_url = \"redis://:a@127.0.0.1:{redis}\"\nredis_password_file = \"pw\"\n",
        ),
        (
            "redis-pw-missing",
            "store = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis}\"\nredis_password_file = \"nope\"\n",
        ),
        (
            "cluster",
            "store = \"redis\"\nredis_cluster = [\"redis://127.0.0.1:{redis}\", \"redis://127.0.0.1:{redis}\"]\n",
        ),
        ("cluster-bad", "store = \"redis\"\nredis_cluster = [\"redis://127.0.0.1:{redis}\", \"redis://h:x\"]\n"),
    ]);
    let upstreams = variants(&[
        ("http", "[upstream]\nurl = \"http://127.0.0.1:9\"\n"),
        ("https-ca", "[upstream]\nurl = \"https://127.0.0.1:9\"\nca_file = \"ca.pem\"\n"),
        ("ca-garbage", "[upstream]\nurl = \"https://127.0.0.1:9\"\nca_file = \"garbage.pem\"\n"),
        ("ca-empty", "[upstream]\nurl = \"https://127.0.0.1:9\"\nca_file = \"empty.pem\"\n"),
        ("ftp", "[upstream]\nurl = \"ftp://127.0.0.1:9\"\n"),
    ]);
    let extras = variants(&[
        ("none", ""),
        ("webhooks", "[webhooks]\nlisten = \"127.0.0.1:0\"\n"),
        ("webhooks-alert", "[webhooks]\nlisten = \"127.0.0.1:0\"\nalert_url = \"http://127.0.0.1:9/alerts\"\n"),
    ]);
    let failure = ["fail_open", "fail_closed"];

    // Every variant of each part at least once, the rest by a fixed stride
    // through the product (the whole product would take minutes).
    let total = listeners.len() * stores.len() * upstreams.len() * extras.len() * failure.len();
    let mut picks: Vec<usize> = (0..total).step_by(23).collect();
    for i in 0..stores.len().max(listeners.len()).max(upstreams.len()) {
        picks.push(i * (1 + listeners.len() * stores.len() + stores.len()) % total);
    }
    let (mut accepted, mut refused) = (0, 0);
    for n in picks {
        let mut k = n;
        let mut next = |len: usize| {
            let i = k % len;
            k /= len;
            i
        };
        let (l, s, u, e, f) = (
            &listeners[next(listeners.len())],
            &stores[next(stores.len())],
            &upstreams[next(upstreams.len())],
            &extras[next(extras.len())],
            failure[next(failure.len())],
        );
        let text = format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{}\n[limiter]\non_store_error = \"{f}\"\n{}\n{}\n\
             [[tenant]]\nname = \"acme\"\ndomain = \"acme.freshdesk.com\"\nplan = \"pro\"\n",
            l.text, u.text, s.text, e.text
        )
        .replace("{redis}", &redis.to_string());
        let label = format!("{} / {} / {} / {} / {f}", l.name, s.name, u.name, e.name);
        let path = dir.write("deskgate.toml", &text);
        let (code, _, stderr) = check(&path, &[]);
        match code {
            Some(0) => {
                accepted += 1;
                if let Err(log) = run_starts(&path, &[]) {
                    panic!("check accepted but run did not start [{label}]:\n{text}\n{log}");
                }
            }
            Some(1) => {
                refused += 1;
                let first = stderr.lines().next().unwrap_or_default();
                assert!(first.starts_with(&format!("{}:", path.display())), "[{label}] {stderr}");
                let log = run_starts(&path, &[]).expect_err(&format!("run started with what check refused [{label}]"));
                assert!(log.contains(first), "[{label}] check said {first:?}, run said:\n{log}");
            }
            other => panic!("check exited {other:?} [{label}]: {stderr}"),
        }
    }
    assert!(accepted >= 10 && refused >= 10, "the corpus holds both: {accepted} accepted, {refused} refused");
}

/// A config whose admin listener is on a port named up front (the
/// healthcheck reads it from the file), in front of `upstream`.
fn health_config(dir: &ConfigDir, upstream: &str, admin_port: u16) -> PathBuf {
    let toml = ops::config_toml(upstream, "", "", "").replacen(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"0.0.0.0:{admin_port}\""),
        1,
    );
    assert!(toml.contains(&format!("0.0.0.0:{admin_port}")), "{toml}");
    dir.write("deskgate.toml", &toml)
}

async fn healthcheck(config: &Path) -> Health {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || ops::healthcheck(&config)).await.expect("healthcheck task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_when_the_gateway_is_ready_and_spends_nothing() {
    let upstream = start_upstream().await;
    let dir = ConfigDir::new();
    let port = free_port();
    let path = health_config(&dir, &format!("http://{upstream}"), port);
    let gw = ops::run_binary(&path, &[]);
    assert_eq!(gw.admin.port(), port);

    // An admin listener on 0.0.0.0 is asked on loopback.
    let h = healthcheck(&path).await;
    assert_eq!(h.code, Some(0), "stdout: {}\nstderr: {}", h.stdout, h.stderr);
    assert!(h.stdout.contains(&format!("http://127.0.0.1:{port}/readyz")), "{}", h.stdout);
    assert!(h.stderr.is_empty(), "{}", h.stderr);

    // The config found through DESKGATE_CONFIG, as the container image runs it.
    let h = tokio::task::spawn_blocking({
        let path = path.clone();
        move || {
            let mut cmd = Command::new(BIN);
            cmd.env("DESKGATE_CONFIG", &path);
            ops::healthcheck_cmd(cmd)
        }
    })
    .await
    .expect("healthcheck task");
    assert_eq!(h.code, Some(0), "{}", h.stderr);

    // Probing is no API call: nothing counted, nothing charged.
    let text = support::metrics::metrics_text(gw.admin).await;
    assert!(!text.contains("deskgate_requests_total{"), "{text}");
    assert_eq!(support::used(gw.admin, "acme").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_1_while_the_gateway_drains_and_says_why() {
    let upstream = start_upstream().await;
    let dir = ConfigDir::new();
    let path = health_config(&dir, &format!("http://{upstream}"), free_port());
    let mut gw = ops::run_binary(&path, &[]);
    let api = gw.api;
    // A slow call keeps the gateway draining after SIGTERM.
    let slow = tokio::spawn(async move {
        send(api, get("acme.freshdesk.com", "/api/v2/contacts?delay_ms=2500", Some(&basic_auth()))).await
    });
    assert!(
        ops::eventually(Duration::from_secs(2), || async { support::used(gw.admin, "acme").await == 1 }).await,
        "the slow call was charged"
    );
    gw.signal("TERM");
    assert!(gw.wait_line(Duration::from_secs(2), |l| l.contains("shutting down")).is_some(), "{}", gw.log());

    let h = healthcheck(&path).await;
    assert_eq!(h.code, Some(1), "stdout: {}\nstderr: {}", h.stdout, h.stderr);
    assert!(h.stderr.contains("503") && h.stderr.contains("shutting down"), "{}", h.stderr);
    assert_eq!(h.stderr.trim().lines().count(), 1, "one line: {}", h.stderr);

    // The drained call still reached the upstream and came back whole.
    let answer = slow.await.expect("slow call");
    assert_eq!(answer.status, http::StatusCode::OK, "{}", answer.text());
    assert!(answer.text().contains(r#""path":"/api/v2/contacts""#), "{}", answer.text());
    gw.assert_exits_cleanly(Duration::from_secs(6));
}

#[test]
fn healthcheck_exits_1_when_nothing_listens_or_the_config_is_broken() {
    let dir = ConfigDir::new();
    let path = health_config(&dir, "http://127.0.0.1:9", free_port());
    let h = ops::healthcheck(&path);
    assert_eq!(h.code, Some(1), "{}", h.stdout);
    assert!(h.stderr.contains("cannot connect"), "{}", h.stderr);
    assert_eq!(h.stderr.trim().lines().count(), 1, "one line: {}", h.stderr);
    assert!(h.stdout.is_empty(), "{}", h.stdout);

    let h = ops::healthcheck(Path::new("/nonexistent/deskgate.toml"));
    assert_eq!(h.code, Some(1));
    assert!(
        h.stderr.contains("cannot read the config") && h.stderr.contains("/nonexistent/deskgate.toml"),
        "{}",
        h.stderr
    );
    assert!(!h.stderr.contains("panicked"), "{}", h.stderr);

    // Port 0 is picked at start-up: there is nothing to ask.
    let zero = dir.write("zero.toml", &ops::config_toml("http://127.0.0.1:9", "", "", ""));
    let h = ops::healthcheck(&zero);
    assert_eq!(h.code, Some(1));
    assert!(h.stderr.contains("port 0"), "{}", h.stderr);
}

#[test]
fn the_demo_listens_where_the_container_image_asks_and_prints_loopback_commands() {
    // The image sets these, so `docker run -p ... deskgate demo` is reachable.
    let api_port = free_port();
    let admin_port = std::iter::repeat_with(free_port).find(|p| *p != api_port).unwrap();
    let mut child = Command::new(BIN)
        .arg("demo")
        .env("DESKGATE_DEMO_LISTEN", format!("0.0.0.0:{api_port}"))
        .env("DESKGATE_DEMO_ADMIN", format!("0.0.0.0:{admin_port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut api = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.trim().strip_prefix("gateway (API):") {
            api = rest.split_whitespace().next().map(str::to_owned);
        }
        if line.contains("Ctrl-C stops both") {
            break;
        }
    }
    // The printed address is one a user on the same host can use...
    assert_eq!(api.as_deref(), Some(format!("http://127.0.0.1:{api_port}").as_str()));
    // ...and the listeners are on every interface: 127.0.0.2 is a local
    // address that a listener bound to 127.0.0.1 alone would refuse.
    for port in [api_port, admin_port] {
        let other: std::net::SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
        assert!(
            std::net::TcpStream::connect_timeout(&other, Duration::from_secs(2)).is_ok(),
            "port {port} is not reachable on every interface"
        );
    }
    // The premise: 127.0.0.2 does not reach a listener bound to 127.0.0.1.
    let loopback_only = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = loopback_only.local_addr().unwrap().port();
    let other: std::net::SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(&other, Duration::from_secs(2)).is_err(),
        "127.0.0.2 reaches a loopback-only listener"
    );
    let _ = child.kill();
    let _ = child.wait();
}
