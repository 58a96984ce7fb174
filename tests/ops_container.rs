//! The container (README "Container"): what can be checked without an
//! image engine — the image's config is valid with the image's empty
//! tenants.d, the binary serves from the image's layout and config path
//! (`$DESKGATE_CONFIG`, no flags) as the image's non-root user and its
//! HEALTHCHECK passes there, the Dockerfile keeps its promises (multi-stage,
//! non-root, both ports, digest-pinned bases, an exec-form HEALTHCHECK), and
//! the compose file's gateway config serves with Redis and the sample
//! helpdesk as compose wires them. `scripts/check-deploy` checks the build
//! context and the compose file's schema.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use support::ops::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// distroless' `nonroot` user, as in the Dockerfile's `USER`.
const NONROOT: u32 = 65532;

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_image_config_passes_deskgate_check_with_the_images_empty_tenants_dir() {
    // As the image has it: the config and an empty tenants.d beside it.
    let root = ConfigDir::new();
    let cfg = root.write("etc/deskgate/deskgate.toml", &repo_file("docker/deskgate.toml"));
    std::fs::create_dir_all(root.path("etc/deskgate/tenants.d")).expect("mkdir");
    let out =
        Command::new(env!("CARGO_BIN_EXE_deskgate")).args(["check", "--config"]).arg(&cfg).output().expect("check");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("tenants: none"), "no tenant is baked in: {text}");
}

#[test]
fn the_dockerfile_is_multi_stage_pinned_non_root_health_checked_and_bakes_no_tenant() {
    let df = repo_file("Dockerfile");
    // Continuation lines joined, comments dropped: one instruction per entry.
    let joined =
        df.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n").replace("\\\n", " ");
    let lines: Vec<&str> = joined.split("\n").map(str::trim).filter(|l| !l.is_empty()).collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage");
    for from in &froms {
        let image = from.split_whitespace().nth(1).expect("image");
        let digest = image.split_once("@sha256:").map(|(_, d)| d).unwrap_or("");
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "base image not pinned by digest: {from}"
        );
    }
    assert!(lines.iter().any(|l| l.starts_with("COPY --from=build")), "runtime copies from the build stage");
    let user = lines.iter().rev().find(|l| l.starts_with("USER ")).expect("USER");
    assert!(user.contains(&NONROOT.to_string()), "{user}");
    assert!(lines.contains(&"ENV DESKGATE_CONFIG=/etc/deskgate/deskgate.toml"));
    assert!(lines.contains(&"EXPOSE 8080 9090"));
    assert!(df.contains("cargo build --release --locked"));
    // Exec form (no shell in distroless), the binary asking its own /readyz.
    let health = lines.iter().find(|l| l.starts_with("HEALTHCHECK ")).expect("HEALTHCHECK");
    assert!(health.contains(r#"CMD ["/usr/local/bin/deskgate", "healthcheck"]"#), "{health}");
    // `deskgate demo` in a container must be reachable through -p.
    assert!(df.contains("DESKGATE_DEMO_LISTEN=0.0.0.0:8080"), "demo on all interfaces");
    // No tenant is baked in: a user who mounts only deskgate.toml gets only
    // the tenants they wrote.
    assert!(!df.contains("tenants.d/*"), "the image copies a tenant file");
    assert!(lines.iter().any(|l| l.contains("mkdir -p /rootfs/etc/deskgate/tenants.d")));
}

/// The image's root filesystem under `root`: `/usr/local/bin/deskgate`,
/// `/etc/deskgate/deskgate.toml` (`config`), an empty
/// `/etc/deskgate/tenants.d/`; root-owned as in the image, world-readable.
fn image_layout(root: &ConfigDir, config: &str) -> (PathBuf, PathBuf) {
    let cfg_path = root.write("etc/deskgate/deskgate.toml", config);
    std::fs::create_dir_all(root.path("etc/deskgate/tenants.d")).expect("mkdir");
    let bin = root.path("usr/local/bin/deskgate");
    std::fs::create_dir_all(bin.parent().expect("dir")).expect("mkdir");
    std::fs::copy(env!("CARGO_BIN_EXE_deskgate"), &bin).expect("copy binary");
    for dir in ["", "etc", "etc/deskgate", "etc/deskgate/tenants.d", "usr", "usr/local", "usr/local/bin"] {
        chmod(&root.path(dir), 0o755);
    }
    chmod(&cfg_path, 0o644);
    chmod(&bin, 0o755);
    (bin, cfg_path)
}

/// `bin` as the image's user when this test can switch users (root with
/// setpriv), else as the current user; whether it switched.
fn as_image_user(bin: &Path) -> (Command, bool) {
    let is_root = uid_of(std::process::id()) == Some(0);
    if is_root && Path::new("/usr/bin/setpriv").exists() {
        let mut c = Command::new("/usr/bin/setpriv");
        c.arg(format!("--reuid={NONROOT}")).arg(format!("--regid={NONROOT}")).arg("--clear-groups").arg("--").arg(bin);
        (c, true)
    } else {
        eprintln!("not root or no setpriv: running as the current (non-root) user");
        (Command::new(bin), false)
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_from_the_image_layout_as_the_non_root_user_and_its_healthcheck_passes() {
    let upstream = start_upstream().await;
    // The user mounts only deskgate.toml (the image's, with their tenant
    // added): ports on loopback, the upstream and the admin port named up
    // front (the healthcheck reads it from the file).
    let admin_port = free_port();
    let config = repo_file("docker/deskgate.toml")
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("0.0.0.0:9090", &format!("127.0.0.1:{admin_port}"))
        .replace("http://127.0.0.1:8081", &format!("http://{upstream}"))
        + "\n[[tenant]]\nname = \"acme\"\ndomain = \"acme.freshdesk.com\"\nplan = \"growth\"\n";
    let root = ConfigDir::new();
    let (bin, cfg_path) = image_layout(&root, &config);
    let cfg = cfg_path.display().to_string();

    // The image's entrypoint: `deskgate run`, config from $DESKGATE_CONFIG.
    let (mut cmd, switched) = as_image_user(&bin);
    cmd.arg("run");
    let mut gw = run_binary_cmd(cmd, &[("DESKGATE_CONFIG", &cfg)]);
    let uid = uid_of(gw.child.id()).expect("uid of the child");
    assert_ne!(uid, 0, "running as root");
    if switched {
        assert_eq!(uid, NONROOT);
    }
    let ready = admin_get(gw.admin, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());

    // The image's HEALTHCHECK: `deskgate healthcheck` as the same user, config
    // from $DESKGATE_CONFIG.
    let health = tokio::task::spawn_blocking({
        let (bin, cfg) = (bin.clone(), cfg.clone());
        move || {
            let (mut cmd, _) = as_image_user(&bin);
            cmd.env("DESKGATE_CONFIG", &cfg);
            healthcheck_cmd(cmd)
        }
    })
    .await
    .expect("healthcheck task");
    assert_eq!(health.code, Some(0), "stdout: {}\nstderr: {}", health.stdout, health.stderr);

    // The user's tenant is served and charged; the example tenant of the
    // repository is not in the image.
    let reply = send(gw.api, get("acme.freshdesk.com", "/api/v2/tickets", Some(&basic_auth()))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.text().contains(r#""path":"/api/v2/tickets""#), "{}", reply.text());
    assert!(reply.text().contains(r#""authorization":true"#), "{}", reply.text());
    assert_eq!(support::used(gw.admin, "acme").await, 1);
    let reply = send(gw.api, get("example.freshdesk.com", "/api/v2/tickets", Some(&basic_auth()))).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
    assert_eq!(admin_get(gw.admin, "/tenants/example").await.status, StatusCode::NOT_FOUND);
    let cfg_view = admin_get(gw.admin, "/config").await;
    assert!(cfg_view.text().contains("deskgate.toml"), "{}", cfg_view.text());

    gw.signal("TERM");
    gw.assert_exits_cleanly(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_gateway_config_serves_the_example_tenant_from_redis_and_the_sample_helpdesk() {
    let Some(redis) = support::redis::RedisServer::start("compose stack") else { return };
    // compose.yaml's helpdesk service: `deskgate sample-helpdesk --listen ADDR`.
    let helpdesk_port = free_port();
    let mut helpdesk = std::process::Command::new(env!("CARGO_BIN_EXE_deskgate"))
        .args(["sample-helpdesk", "--listen", &format!("127.0.0.1:{helpdesk_port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sample-helpdesk");
    let helpdesk_addr: std::net::SocketAddr = format!("127.0.0.1:{helpdesk_port}").parse().expect("addr");
    let up =
        eventually(
            Duration::from_secs(10),
            || async move { tokio::net::TcpStream::connect(helpdesk_addr).await.is_ok() },
        )
        .await;
    assert!(up, "the sample helpdesk did not listen");

    // The compose service's files: docker/compose/deskgate.toml at
    // /etc/deskgate/deskgate.toml, docker/tenants.d at /etc/deskgate/tenants.d;
    // compose's service names become loopback addresses here.
    let config = repo_file("docker/compose/deskgate.toml")
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("0.0.0.0:9090", "127.0.0.1:0")
        .replace("http://helpdesk:8081", &format!("http://127.0.0.1:{helpdesk_port}"))
        .replace("redis://redis:6379/0", &format!("redis://127.0.0.1:{}/0", redis.port));
    let compose = repo_file("compose.yaml");
    assert!(compose.contains("./docker/compose/deskgate.toml:/etc/deskgate/deskgate.toml:ro"), "{compose}");
    assert!(compose.contains("./docker/tenants.d:/etc/deskgate/tenants.d:ro"), "{compose}");
    assert!(compose.contains(r#"command: ["sample-helpdesk", "--listen", "0.0.0.0:8081"]"#), "{compose}");
    let root = ConfigDir::new();
    let cfg_path = root.write("etc/deskgate/deskgate.toml", &config);
    for entry in std::fs::read_dir(Path::new(REPO).join("docker/tenants.d")).expect("docker/tenants.d") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        root.write(&format!("etc/deskgate/tenants.d/{name}"), &std::fs::read_to_string(entry.path()).expect("tenant"));
    }
    let gw = run_binary(&cfg_path, &[]);

    let reply = send(gw.api, get("example.freshdesk.com", "/api/v2/tickets", Some(&basic_auth()))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}\n{}", reply.text(), gw.log());
    assert!(reply.text().contains("Printer on fire"), "the sample helpdesk's tickets: {}", reply.text());
    assert_eq!(support::used(gw.admin, "example").await, 1);
    let tenant = admin_get(gw.admin, "/tenants/example").await.json();
    assert_eq!(tenant["store_reachable"], serde_json::Value::Bool(true), "{tenant}");
    // The budget is in Redis: its key exists there.
    let keys = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "--scan", "--pattern", "deskgate*"])
        .output()
        .expect("redis-cli");
    assert!(!String::from_utf8_lossy(&keys.stdout).trim().is_empty(), "no budget key in Redis");

    let _ = helpdesk.kill();
    let _ = helpdesk.wait();
}
