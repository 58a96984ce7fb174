//! SPEC §1: the binary as a user runs it.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::ops::{self as ops, basic_auth, free_port, get, send, start_upstream, ConfigDir, Health};

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
    assert!(stderr.contains("/nonexistent/deskgate.toml:1:1:"), "{stderr}");
    assert!(!stderr.contains("panicked"));
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
