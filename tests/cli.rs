//! SPEC §1: the binary as a user runs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
