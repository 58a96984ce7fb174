//! The container (docs/reference.md "Operations"): what can be checked without a Docker engine —
//! the image's config is valid, the binary starts from the image's config
//! path (`$DESKGATE_CONFIG`, no flags) as the image's non-root user, and the
//! Dockerfile keeps its promises (multi-stage, non-root, both ports).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use support::ops::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// distroless' `nonroot` user, as in the Dockerfile's `USER`.
const NONROOT: u32 = 65532;

#[test]
fn the_image_config_passes_deskgate_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_deskgate"))
        .args(["check", "--config"])
        .arg(Path::new(REPO).join("docker/deskgate.toml"))
        .output()
        .expect("run check");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("example"), "the example tenant from tenants.d: {text}");
}

#[test]
fn the_dockerfile_is_multi_stage_runs_as_non_root_and_exposes_both_ports() {
    let df = std::fs::read_to_string(Path::new(REPO).join("Dockerfile")).expect("Dockerfile");
    let lines: Vec<&str> = df.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    assert!(lines.iter().filter(|l| l.starts_with("FROM ")).count() >= 2, "multi-stage");
    assert!(lines.iter().any(|l| l.starts_with("COPY --from=build")), "runtime copies from the build stage");
    let user = lines.iter().rev().find(|l| l.starts_with("USER ")).expect("USER");
    assert!(!user.contains("root") || user.contains("nonroot"), "{user}");
    assert!(user.contains(&NONROOT.to_string()), "{user}");
    assert!(lines.contains(&"ENV DESKGATE_CONFIG=/etc/deskgate/deskgate.toml"));
    assert!(lines.contains(&"EXPOSE 8080 9090"));
    assert!(df.contains("cargo build --release --locked"));
    // What the image copies in exists.
    assert!(Path::new(REPO).join("docker/deskgate.toml").is_file());
    assert!(Path::new(REPO).join("docker/tenants.d/example.toml").is_file());
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
async fn the_binary_starts_from_the_image_config_path_as_the_non_root_user() {
    let upstream = start_upstream().await;
    // A root filesystem laid out like the image's: /usr/local/bin/deskgate,
    // /etc/deskgate/deskgate.toml, /etc/deskgate/tenants.d/ (root-owned,
    // world-readable); only the ports (loopback, 0) and the upstream differ.
    let root = ConfigDir::new();
    let config = std::fs::read_to_string(Path::new(REPO).join("docker/deskgate.toml"))
        .expect("image config")
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("0.0.0.0:9090", "127.0.0.1:0")
        .replace("http://127.0.0.1:8081", &format!("http://{upstream}"));
    let cfg_path = root.write("etc/deskgate/deskgate.toml", &config);
    root.write(
        "etc/deskgate/tenants.d/example.toml",
        &std::fs::read_to_string(Path::new(REPO).join("docker/tenants.d/example.toml")).expect("tenant"),
    );
    let bin = root.path("usr/local/bin/deskgate");
    std::fs::create_dir_all(bin.parent().expect("dir")).expect("mkdir");
    std::fs::copy(env!("CARGO_BIN_EXE_deskgate"), &bin).expect("copy binary");
    for dir in ["", "etc", "etc/deskgate", "etc/deskgate/tenants.d", "usr", "usr/local", "usr/local/bin"] {
        chmod(&root.path(dir), 0o755);
    }
    chmod(&bin, 0o755);

    let is_root = uid_of(std::process::id()) == Some(0);
    let setpriv = Path::new("/usr/bin/setpriv").exists();
    let mut cmd = if is_root && setpriv {
        let mut c = Command::new("/usr/bin/setpriv");
        c.arg(format!("--reuid={NONROOT}")).arg(format!("--regid={NONROOT}")).arg("--clear-groups").arg("--").arg(&bin);
        c
    } else {
        eprintln!("not root or no setpriv: running as the current (non-root) user");
        Command::new(&bin)
    };
    // The image's entrypoint: `deskgate run`, config from $DESKGATE_CONFIG.
    cmd.arg("run");
    let cfg = cfg_path.display().to_string();
    let mut gw = run_binary_cmd(cmd, &[("DESKGATE_CONFIG", &cfg)]);

    let uid = uid_of(gw.child.id()).expect("uid of the child");
    assert_ne!(uid, 0, "running as root");
    if is_root && setpriv {
        assert_eq!(uid, NONROOT);
    }
    let ready = admin_get(gw.admin, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    let reply = send(gw.api, get("example.freshdesk.com", "/api/v2/tickets", Some(&basic_auth()))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let cfg_view = admin_get(gw.admin, "/config").await;
    assert!(cfg_view.text().contains("deskgate.toml"), "{}", cfg_view.text());

    gw.signal("TERM");
    gw.assert_exits_cleanly(Duration::from_secs(5));
}
