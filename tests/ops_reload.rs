//! Hot reload (docs/reference.md "Reload", "Operations" SIGHUP): file changes and SIGHUP
//! swap the config atomically; a broken one is refused with PATH:LINE:COL and
//! the old one stays; consumed budget and in-flight calls survive.

mod support;

use std::time::Duration;

use deskgate::app::Gateway;
use deskgate::config::Config;
use http::StatusCode;
use support::ops::*;

const WATCH_LIMIT: Duration = Duration::from_secs(5);

fn acme(ticket_list: u32) -> String {
    format!(
        "\n[[tenant]]\nname = \"acme\"\ndomain = \"acme.freshdesk.com\"\nplan = \"growth\"\nendpoints = {{ ticket_list = {ticket_list} }}\n"
    )
}

/// `config_toml` with acme's `ticket_list` budget set to `n`.
fn config_with(upstream: &str, top: &str, n: u32) -> String {
    config_toml(upstream, top, "", "").replace(&acme(3), &acme(n))
}

/// `deskgate_config_last_reload_successful`.
async fn last_reload_ok(gw: &Gateway) -> f64 {
    let m = parse_metrics(&admin_get(gw.admin_addr, "/metrics").await.text());
    value(&m, "deskgate_config_last_reload_successful", &[]).unwrap_or(-1.0)
}

async fn reloads(gw: &Gateway, result: &str) -> f64 {
    let m = parse_metrics(&admin_get(gw.admin_addr, "/metrics").await.text());
    value(&m, "deskgate_config_reloads_total", &[("result", result)]).unwrap_or(-1.0)
}

async fn ticket_list_budget(gw: &Gateway) -> (u64, u64) {
    let r = admin_get(gw.admin_addr, "/tenants/acme").await;
    let v: serde_json::Value = serde_json::from_str(&r.text()).expect("JSON");
    let w = v["windows"]
        .as_array()
        .expect("windows")
        .iter()
        .find(|w| w["policy"] == "ticket_list")
        .expect("ticket_list window")
        .clone();
    (w["budget"].as_u64().expect("budget"), w["used"].as_u64().expect("used"))
}

#[tokio::test]
async fn a_changed_config_file_applies_its_new_budget_and_keeps_consumed_budget_and_in_flight_calls() {
    let upstream = format!("http://{}", start_upstream().await);
    let dir = ConfigDir::new();
    let path = dir.write("deskgate.toml", &config_with(&upstream, "", 3));
    let gw = Gateway::start(Config::load(&path).expect("config")).await.expect("start");
    let auth = basic_auth();
    for _ in 0..2 {
        let r = send(gw.api_addr, get("acme.freshdesk.com", "/api/v2/tickets", Some(&auth))).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // A slow call in flight while the config is swapped under it.
    let api = gw.api_addr;
    let in_flight = tokio::spawn(async move {
        send(api, get("acme.freshdesk.com", "/api/v2/contacts?delay_ms=1000", Some(&basic_auth()))).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    dir.write("deskgate.toml", &config_with(&upstream, "", 5));
    assert!(
        eventually(WATCH_LIMIT, || async { ticket_list_budget(&gw).await.0 == 5 }).await,
        "the watcher never applied the new budget"
    );
    assert_eq!(ticket_list_budget(&gw).await, (5, 2), "consumed budget was lost");
    assert_eq!(reloads(&gw, "success").await, 1.0);
    assert_eq!(reloads(&gw, "failure").await, 0.0);

    for expected in ["2", "1", "0"] {
        let r = send(gw.api_addr, get("acme.freshdesk.com", "/api/v2/tickets", Some(&auth))).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("ratelimit").split("r=").nth(1).and_then(|s| s.split(';').next()),
            Some(expected),
            "{:?}",
            r.headers
        );
    }
    let r = send(gw.api_addr, get("acme.freshdesk.com", "/api/v2/tickets", Some(&auth))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);

    let slow = in_flight.await.expect("in-flight call");
    assert_eq!(slow.status, StatusCode::OK, "{}", slow.text());

    // The per-call series run on across the reload: one series per label
    // set, whichever snapshot counted the call.
    let m = parse_metrics(&admin_get(gw.admin_addr, "/metrics").await.text());
    let answered = |status| {
        value(&m, "deskgate_requests_total", &[("tenant", "acme"), ("endpoint", "ticket_list"), ("status", status)])
    };
    assert_eq!(answered("200"), Some(5.0));
    assert_eq!(answered("429"), Some(1.0));
    assert_eq!(value(&m, "deskgate_budget_remaining", &[("tenant", "acme"), ("policy", "ticket_list")]), Some(0.0));

    // The explicit path (what SIGHUP calls) works too.
    gw.reload().await.expect("reload");
    assert_eq!(reloads(&gw, "success").await, 2.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_broken_config_is_refused_with_its_location_and_the_old_one_stays_in_force() {
    let upstream = format!("http://{}", start_upstream().await);
    let dir = ConfigDir::new();
    let good = config_with(&upstream, "", 3);
    let path = dir.write("deskgate.toml", &good);
    let gw = Gateway::start(Config::load(&path).expect("config")).await.expect("start");
    let auth = basic_auth();
    let r = send(gw.api_addr, get("acme.freshdesk.com", "/api/v2/tickets", Some(&auth))).await;
    assert_eq!(r.status, StatusCode::OK);

    // An unknown key on a known line, and the budget changed (it must not apply).
    let broken = config_with(&upstream, "", 9).replace("[admin]\n", "[admin]\nlisten_typo = 1\n");
    let line = broken.lines().position(|l| l.starts_with("listen_typo")).expect("typo line") + 1;
    dir.write("deskgate.toml", &broken);
    assert!(
        eventually(WATCH_LIMIT, || async { reloads(&gw, "failure").await == 1.0 }).await,
        "the watcher never counted the failed reload"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(reloads(&gw, "failure").await, 1.0, "one change, one reload");
    assert_eq!(reloads(&gw, "success").await, 0.0);

    let err = gw.reload().await.expect_err("broken config");
    assert_eq!(err.line, line, "{err}");
    assert!(err.col >= 1);
    let shown = err.to_string();
    assert!(shown.starts_with(&format!("{}:{line}:", path.display())), "not PATH:LINE:COL: {shown}");
    assert!(shown.contains("listen_typo"), "{shown}");
    assert_eq!(reloads(&gw, "failure").await, 2.0);
    assert_eq!(last_reload_ok(&gw).await, 0.0, "an alert on the last reload sees it failed");

    // The old config is still in force, budget and all.
    assert_eq!(ticket_list_budget(&gw).await, (3, 1));
    let r = send(gw.api_addr, get("acme.freshdesk.com", "/api/v2/tickets", Some(&auth))).await;
    assert_eq!(r.status, StatusCode::OK);

    // Fixing the file is picked up again.
    dir.write("deskgate.toml", &good.replace(&acme(3), &acme(4)));
    assert!(eventually(WATCH_LIMIT, || async { ticket_list_budget(&gw).await == (4, 2) }).await);
    assert_eq!(last_reload_ok(&gw).await, 1.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_tenant_file_added_to_tenants_dir_is_picked_up_and_a_removed_one_is_dropped() {
    let upstream = format!("http://{}", start_upstream().await);
    let dir = ConfigDir::new();
    std::fs::create_dir_all(dir.path("tenants.d")).expect("mkdir");
    let path = dir.write("deskgate.toml", &config_toml(&upstream, "tenants_dir = \"tenants.d\"", "", ""));
    let gw = Gateway::start(Config::load(&path).expect("config")).await.expect("start");
    let auth = basic_auth();
    let beta = |gw_addr| {
        let auth = auth.clone();
        async move { send(gw_addr, get("beta.freshdesk.com", "/api/v2/tickets", Some(&auth))).await.status }
    };
    assert_eq!(beta(gw.api_addr).await, StatusCode::NOT_FOUND);

    // A file that is not *.toml is no reason to reload.
    dir.write("tenants.d/README.md", "tenants live here");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(reloads(&gw, "success").await, 0.0);

    dir.write("tenants.d/beta.toml", "[tenant]\nname = \"beta\"\ndomain = \"beta.freshdesk.com\"\nplan = \"trial\"\n");
    assert!(
        eventually(WATCH_LIMIT, || async { beta(gw.api_addr).await == StatusCode::OK }).await,
        "the new tenant file was never picked up"
    );
    let t = admin_get(gw.admin_addr, "/tenants/beta").await;
    assert!(t.text().contains(r#""plan": "trial""#), "{}", t.text());

    std::fs::remove_file(dir.path("tenants.d/beta.toml")).expect("rm");
    assert!(
        eventually(WATCH_LIMIT, || async { beta(gw.api_addr).await == StatusCode::NOT_FOUND }).await,
        "the removed tenant file still serves"
    );
    // Its budget gauge does not linger either.
    let metrics = admin_get(gw.admin_addr, "/metrics").await.text();
    assert!(!metrics.contains("tenant=\"beta\",policy"), "{metrics}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary_and_a_broken_file_is_logged_with_path_line_col() {
    // The config is reached through a symlink and edited in place in another
    // directory, which the watcher cannot see: only SIGHUP reloads it.
    let dir = ConfigDir::new();
    let real = dir.write("real/deskgate.toml", &config_with("http://127.0.0.1:9", "", 3));
    std::fs::create_dir_all(dir.path("link")).expect("mkdir");
    let link = dir.path("link/deskgate.toml");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let gw = run_binary(&link, &[]);
    let tenants = |admin| async move {
        let r = admin_get(admin, "/tenants/acme").await;
        r.text()
    };
    assert!(tenants(gw.admin).await.contains(r#""budget": 3,"#));

    std::fs::write(&real, config_with("http://127.0.0.1:9", "", 7)).expect("edit in place");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(tenants(gw.admin).await.contains(r#""budget": 3,"#), "reloaded without SIGHUP?");

    gw.signal("HUP");
    let admin = gw.admin;
    assert!(
        eventually(WATCH_LIMIT, || async move { tenants(admin).await.contains(r#""budget": 7,"#) }).await,
        "SIGHUP did not reload:\n{}",
        gw.log()
    );
    assert!(gw.log().contains("SIGHUP"), "{}", gw.log());

    let broken = config_with("http://127.0.0.1:9", "", 7).replace("plan = \"growth\"", "plan = \"no-such-plan\"");
    let line = broken.lines().position(|l| l.contains("no-such-plan")).expect("line") + 1;
    std::fs::write(&real, &broken).expect("break");
    gw.signal("HUP");
    let where_ = format!("{}:{line}:", link.display());
    let logged = tokio::task::block_in_place(|| {
        gw.wait_line(WATCH_LIMIT, |l| l.contains("config reload failed") && l.contains(&where_))
    });
    let logged = logged.unwrap_or_else(|| panic!("no error line with {where_}:\n{}", gw.log()));
    let v: serde_json::Value = serde_json::from_str(&logged).expect("JSON log line");
    assert_eq!(v["level"], "ERROR", "{logged}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("no-such-plan")), "{logged}");

    // Still running with the last good config, both outcomes counted.
    assert!(tenants(gw.admin).await.contains(r#""budget": 7,"#));
    let m = parse_metrics(&admin_get(gw.admin, "/metrics").await.text());
    assert_eq!(value(&m, "deskgate_config_reloads_total", &[("result", "success")]), Some(1.0));
    assert_eq!(value(&m, "deskgate_config_reloads_total", &[("result", "failure")]), Some(1.0));
}

/// Lays out `files` the way the kubelet writes a mounted ConfigMap: a
/// timestamped directory, a `..data` symlink to it, and one symlink per key.
/// Called again, it swaps `..data` atomically and removes the old directory.
fn configmap_write(dir: &std::path::Path, generation: u32, files: &[(&str, &str)]) {
    use std::os::unix::fs::symlink;
    let ts = format!("..2026_01_01_00_00_0{generation}");
    std::fs::create_dir_all(dir.join(&ts)).expect("mkdir");
    for (name, text) in files {
        std::fs::write(dir.join(&ts).join(name), text).expect("write");
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link).expect("key symlink");
        }
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    symlink(&ts, dir.join("..data_tmp")).expect("tmp symlink");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).expect("remove old generation");
    }
}

#[tokio::test]
async fn a_kubernetes_configmap_update_is_picked_up_for_the_config_and_the_tenants() {
    let upstream = format!("http://{}", start_upstream().await);
    let root = ConfigDir::new();
    let (cfg_dir, tenants_dir) = (root.path("etc/deskgate"), root.path("etc/deskgate-tenants"));
    let top = format!("tenants_dir = {:?}", tenants_dir.display().to_string());
    configmap_write(&cfg_dir, 1, &[("deskgate.toml", &config_with(&upstream, &top, 3))]);
    let beta = "[tenant]\nname = \"beta\"\ndomain = \"beta.freshdesk.com\"\nplan = \"trial\"\n";
    configmap_write(&tenants_dir, 1, &[("beta.toml", beta)]);
    let gw = Gateway::start(Config::load(&cfg_dir.join("deskgate.toml")).expect("config")).await.expect("start");
    assert_eq!(ticket_list_budget(&gw).await, (3, 0));

    configmap_write(&cfg_dir, 2, &[("deskgate.toml", &config_with(&upstream, &top, 6))]);
    assert!(
        eventually(WATCH_LIMIT, || async { ticket_list_budget(&gw).await.0 == 6 }).await,
        "the ConfigMap update of the config file was not seen"
    );

    let gamma = "[tenant]\nname = \"gamma\"\ndomain = \"gamma.freshdesk.com\"\nplan = \"trial\"\n";
    configmap_write(&tenants_dir, 2, &[("beta.toml", beta), ("gamma.toml", gamma)]);
    assert!(
        eventually(WATCH_LIMIT, || async { admin_get(gw.admin_addr, "/tenants/gamma").await.status == StatusCode::OK })
            .await,
        "a tenant key added to the tenants ConfigMap was not seen"
    );
    // And again: the watch survived the first swap.
    configmap_write(&tenants_dir, 3, &[("gamma.toml", gamma)]);
    assert!(
        eventually(WATCH_LIMIT, || async {
            admin_get(gw.admin_addr, "/tenants/beta").await.status == StatusCode::NOT_FOUND
        })
        .await,
        "a second ConfigMap update was not seen"
    );
    gw.shutdown().await;
}

/// `/config` shows what runs: a reload that changes a restart-only setting
/// keeps its running value there (and the gateway keeps using it), names it
/// under `pending_restart`, and applies the rest; the digest and load time
/// say which files were taken. Reverting the setting clears the pending list.
#[tokio::test]
async fn config_shows_the_values_in_force_across_a_reload_of_a_restart_only_setting() {
    let upstream = format!("http://{}", start_upstream().await);
    let dir = ConfigDir::new();
    let slow = |timeout_ms: u32, n: u32| {
        config_toml(&upstream, "", "", &format!("timeout_ms = {timeout_ms}")).replace(&acme(3), &acme(n))
    };
    let path = dir.write("deskgate.toml", &slow(2000, 3));
    let gw = Gateway::start(Config::load(&path).expect("config")).await.expect("start");
    let before = admin_get(gw.admin_addr, "/config").await.json();
    assert_eq!(before["upstream"]["timeout_ms"], 2000);
    assert_eq!(before["pending_restart"], serde_json::json!([]));
    assert_eq!(before["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(before["sha256"].as_str().map(str::len), Some(64), "{before}");
    assert!(before["loaded_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{before}");

    dir.write("deskgate.toml", &slow(300, 5));
    gw.reload().await.expect("reload");
    let after = admin_get(gw.admin_addr, "/config").await.json();
    assert_eq!(after["upstream"]["timeout_ms"], 2000, "the running value, not the file's");
    assert_eq!(after["pending_restart"], serde_json::json!(["upstream.timeout_ms"]));
    assert_ne!(after["sha256"], before["sha256"], "other files, other digest");
    assert_eq!(after["tenants"][0]["endpoints"]["ticket_list"], 5, "a reloadable setting applies");
    assert_eq!(ticket_list_budget(&gw).await, (5, 0));

    // And 2000 ms is what runs: an answer 800 ms late still arrives.
    let auth = basic_auth();
    let r = send(gw.api_addr, get("acme.freshdesk.com", "/api/v2/tickets?delay_ms=800", Some(&auth))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["path"], "/api/v2/tickets", "what reached the upstream");
    assert_eq!(ticket_list_budget(&gw).await, (5, 1));

    // Back to the running value: nothing waits for a restart any more.
    dir.write("deskgate.toml", &slow(2000, 5));
    gw.reload().await.expect("reload");
    let reverted = admin_get(gw.admin_addr, "/config").await.json();
    assert_eq!(reverted["pending_restart"], serde_json::json!([]));
    // The budget differs from the start's file, the timeout from the last one.
    assert_ne!(reverted["sha256"], after["sha256"]);
    assert_ne!(reverted["sha256"], before["sha256"]);
    gw.shutdown().await;
}
