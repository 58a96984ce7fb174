//! Hot reload (docs/reference.md "Reload", "Operations" signals): SIGHUP or a change to the
//! config file, `tenants_dir` or the TLS certificate and key → `Config::load`
//! → one atomic swap.
//!
//! A config that fails to load is logged (`PATH:LINE:COL: message`) and the
//! one in force stays. Requests in flight keep the `Snapshot` they loaded, so
//! a swap never changes the rules under them; budgets live in the store, keyed
//! by tenant name, so what was consumed survives. Settings that belong to a
//! bound socket or a built client (listen addresses, upstream, store) cannot
//! change without a restart: a reload that changes them applies everything
//! else and logs a warning naming them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::state::{Shared, Snapshot};
use crate::tls;

/// Quiet time after the last file event before reloading: editors and
/// Kubernetes write several events per change.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A steady stream of events still reloads at least this often.
const DEBOUNCE_MAX: Duration = Duration::from_secs(2);

/// The TLS config the API listener hands to new connections, if it speaks TLS.
pub type TlsSlot = ArcSwapOption<rustls::ServerConfig>;

/// Reloads the config in force from its file now. On success the new
/// snapshot (and the re-read certificate and key, when the API listener
/// speaks TLS) is in force when this returns; on failure nothing changed.
/// Either way the outcome is logged and counted in
/// `deskgate_config_reloads_total{result}`.
pub async fn reload_now(shared: &Shared, tls: Option<&TlsSlot>) -> Result<(), ConfigError> {
    let old = shared.snapshot.load_full();
    match load(&old.config, tls).await {
        Ok((mut config, server_tls)) => {
            let restart = restart_only_changes(&old.config, &mut config, tls.is_some());
            if !restart.is_empty() {
                tracing::warn!(
                    settings = restart.join(", "),
                    "config reloaded, but these settings apply only after a restart"
                );
            }
            let tenants = config.tenants.len();
            let path = config.path.display().to_string();
            let new = Snapshot::new(config).pending_restart(restart);
            carry_seen(&old, &new);
            shared.snapshot.store(Arc::new(new));
            if let (Some(slot), Some(server_tls)) = (tls, server_tls) {
                slot.store(Some(Arc::new(server_tls)));
            }
            shared.metrics.count_reload(true);
            tracing::info!(config = %path, tenants, "config reloaded");
            Ok(())
        }
        Err(e) => {
            shared.metrics.count_reload(false);
            tracing::error!(error = %e, "config reload failed; the previous config stays in force");
            Err(e)
        }
    }
}

/// Loads the file (off the runtime: it is blocking I/O) and, if the listener
/// speaks TLS, the certificate and key the new config names.
async fn load(old: &Config, tls: Option<&TlsSlot>) -> Result<(Config, Option<rustls::ServerConfig>), ConfigError> {
    let path = old.path.clone();
    let config = tokio::task::spawn_blocking(move || Config::load(&path)).await.map_err(|e| ConfigError {
        path: old.path.clone(),
        line: 0,
        col: 0,
        msg: format!("reload task failed: {e}"),
    })??;
    let server_tls = match (tls, &config.server.tls) {
        (Some(_), Some(files)) => {
            let (cert, key) = (files.cert.clone(), files.key.clone());
            let built = tokio::task::spawn_blocking(move || tls::server_config(&cert, &key))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            Some(built.map_err(|msg| ConfigError {
                path: files.cert.clone(),
                line: 0,
                col: 0,
                msg: format!("[server].tls: {msg}"),
            })?)
        }
        _ => None,
    };
    Ok((config, server_tls))
}

/// The settings fixed until a restart. Where the file (`new`) differs from
/// what runs (`running`, the snapshot in force, which always holds the
/// running values of these), the running value is kept in `new` — so the
/// snapshot, and `/config`, show what runs — and the setting is named.
/// Reverting the file to the running value names nothing.
fn restart_only_changes(running: &Config, new: &mut Config, listener_tls: bool) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! fixed {
        ($($field:ident).+, $name:expr) => {
            if running.$($field).+ != new.$($field).+ {
                new.$($field).+ = running.$($field).+.clone();
                changed.push($name);
            }
        };
    }
    fixed!(server.listen, "server.listen");
    if listener_tls != new.server.tls.is_some() {
        new.server.tls = running.server.tls.clone();
        changed.push("server.tls (on/off)");
    }
    fixed!(server.header_read_timeout, "server.header_read_timeout_ms");
    fixed!(server.fast_path, "server.fast_path");
    fixed!(admin.listen, "admin.listen");
    fixed!(upstream.url, "upstream.url");
    fixed!(upstream.ca_file, "upstream.ca_file");
    fixed!(upstream.connect_timeout, "upstream.connect_timeout_ms");
    fixed!(upstream.timeout, "upstream.timeout_ms");
    fixed!(upstream.pool_idle_timeout, "upstream.pool_idle_timeout_ms");
    fixed!(upstream.pool_max_idle, "upstream.pool_max_idle");
    if running.limiter.store != new.limiter.store {
        new.limiter.store = running.limiter.store.clone();
        // The password is part of the store's URLs: its source goes with them.
        new.redis_password_from = running.redis_password_from.clone();
        changed.push("limiter.store");
    }
    fixed!(limiter.on_store_error, "limiter.on_store_error");
    fixed!(limiter.store_timeout, "limiter.store_timeout_ms");
    fixed!(limiter.key_prefix, "limiter.key_prefix");
    fixed!(limiter.redis_batch, "limiter.redis_batch");
    // The webhook listener and dispatcher copy their settings at start.
    match (&running.webhooks, &new.webhooks) {
        (Some(r), Some(n)) if r.listen != n.listen => changed.push("webhooks.listen"),
        (Some(_), None) | (None, Some(_)) => changed.push("webhooks (on/off)"),
        (r, n) if r != n => changed.push("webhooks"),
        _ => {}
    }
    new.webhooks = running.webhooks.clone();
    changed
}

/// The tenants this replica has served keep their budget series over a
/// reload (a scrape reads the budgets of those only); a tenant gone from the
/// config has no series left to show.
fn carry_seen(old: &Snapshot, new: &Snapshot) {
    // A set, not `Config::tenant` per name: with 10,000 tenants a linear
    // lookup per tenant made a reload take most of a second.
    let seen: std::collections::HashSet<&str> =
        old.hosts.values().filter(|e| e.series.seen()).map(|e| &*e.tenant.name).collect();
    if seen.is_empty() {
        return;
    }
    for e in new.hosts.values() {
        if seen.contains(&*e.tenant.name) {
            e.series.mark_seen();
        }
    }
}

/// What the watcher reacts to: the main config file, the TLS certificate
/// and key, and `*.toml` in `tenants_dir` — in directories resolved once so
/// event paths compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Watched {
    /// Files as (canonical directory, file name).
    files: Vec<(PathBuf, std::ffi::OsString)>,
    tenants_dir: Option<PathBuf>,
}

impl Watched {
    fn of(config: &Config) -> Watched {
        let mut paths = vec![config.path.as_path()];
        if let Some(tls) = &config.server.tls {
            paths.push(&tls.cert);
            paths.push(&tls.key);
        }
        let files = paths
            .into_iter()
            .filter_map(|p| {
                let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                Some((canonical(dir), p.file_name()?.to_owned()))
            })
            .collect();
        Watched { files, tenants_dir: config.tenants_dir.as_deref().map(canonical) }
    }

    fn dirs(&self) -> Vec<&Path> {
        let mut dirs: Vec<&Path> = Vec::new();
        for d in self.files.iter().map(|(d, _)| d.as_path()).chain(self.tenants_dir.as_deref()) {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        dirs
    }

    /// Whether a change to `path` can change the config.
    fn concerns(&self, path: &Path) -> bool {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return false;
        };
        let name_str = name.to_string_lossy();
        // Kubernetes updates a mounted ConfigMap or Secret by swapping the
        // `..data` symlink, so the files themselves never see an event.
        let k8s_swap = name_str.starts_with("..data");
        if self.files.iter().any(|(d, n)| d == dir && (n == name || k8s_swap)) {
            return true;
        }
        match &self.tenants_dir {
            Some(t) if dir == t => k8s_swap || (!name_str.starts_with('.') && name_str.ends_with(".toml")),
            _ => false,
        }
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Starts the reloader: SIGHUP and file changes, until `shutdown` turns true.
pub fn spawn(shared: Arc<Shared>, tls: Option<Arc<TlsSlot>>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (tx, mut events) = mpsc::unbounded_channel::<notify::Event>();
        let mut watcher = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                let _ = tx.send(ev);
            }
            Err(e) => tracing::warn!(error = %e, "config file watcher error"),
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch config files; reload with SIGHUP");
                None
            }
        };
        let mut watched = Watched::of(&shared.snapshot.load().config);
        if let Some(w) = watcher.as_mut() {
            watch_dirs(w, &watched, None);
        }
        let mut hangup = Hangup::new();
        loop {
            tokio::select! {
                biased;
                // (The `Ref` that `wait_for` yields is not `Send`: drop it inside.)
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading config");
                }
                ev = events.recv() => {
                    let Some(ev) = ev else { break };
                    if !(is_change(&ev.kind) && ev.paths.iter().any(|p| watched.concerns(p))) {
                        continue;
                    }
                    debounce(&mut events).await;
                    tracing::debug!(paths = ?ev.paths, "config files changed");
                }
            }
            let _ = reload_now(&shared, tls.as_deref()).await;
            let now = Watched::of(&shared.snapshot.load().config);
            if now != watched {
                if let Some(w) = watcher.as_mut() {
                    watch_dirs(w, &now, Some(&watched));
                }
                watched = now;
            }
        }
        drop(watcher);
    })
}

/// Swallows events until none came for `DEBOUNCE` (or `DEBOUNCE_MAX` passed).
async fn debounce(events: &mut mpsc::UnboundedReceiver<notify::Event>) {
    let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
    loop {
        let quiet = tokio::time::Instant::now() + DEBOUNCE;
        match tokio::time::timeout_at(quiet.min(deadline), events.recv()).await {
            Ok(Some(_)) if tokio::time::Instant::now() < deadline => continue,
            _ => return,
        }
    }
}

fn watch_dirs(w: &mut RecommendedWatcher, now: &Watched, before: Option<&Watched>) {
    if let Some(before) = before {
        for dir in before.dirs() {
            if !now.dirs().contains(&dir) {
                let _ = w.unwatch(dir);
            }
        }
    }
    for dir in now.dirs() {
        if before.is_some_and(|b| b.dirs().contains(&dir)) {
            continue;
        }
        if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; reload with SIGHUP");
        }
    }
}

/// SIGHUP where there is one; never fires elsewhere.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn new() -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP"))
                .ok();
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = self.signal.as_mut() {
            if s.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched() -> Watched {
        Watched {
            files: vec![
                (PathBuf::from("/etc/deskgate"), "deskgate.toml".into()),
                (PathBuf::from("/etc/deskgate/tls"), "tls.crt".into()),
            ],
            tenants_dir: Some(PathBuf::from("/etc/deskgate/tenants.d")),
        }
    }

    #[test]
    fn only_the_config_file_and_tenant_tomls_concern_the_reloader() {
        let w = watched();
        for (path, expected) in [
            ("/etc/deskgate/deskgate.toml", true),
            ("/etc/deskgate/other.toml", false),
            ("/etc/deskgate/deskgate.toml.swp", false),
            ("/etc/deskgate/..data", true),
            ("/etc/deskgate/tenants.d/acme.toml", true),
            ("/etc/deskgate/tenants.d/.acme.toml", false),
            ("/etc/deskgate/tenants.d/acme.toml~", false),
            ("/etc/deskgate/tenants.d/README", false),
            ("/etc/deskgate/tenants.d/..data_tmp", true),
            ("/tmp/deskgate.toml", false),
            ("/etc/deskgate/tls/tls.crt", true),
            ("/etc/deskgate/tls/..data", true),
            ("/etc/deskgate/tls/other.crt", false),
        ] {
            assert_eq!(w.concerns(Path::new(path)), expected, "{path}");
        }
    }

    #[test]
    fn reading_a_file_is_not_a_change() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(is_change(&EventKind::Modify(notify::event::ModifyKind::Any)));
    }

    #[test]
    fn changing_a_switch_or_pool_setting_is_named_as_needing_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let load = |text: &str| {
            let path = dir.path().join("deskgate.toml");
            std::fs::write(&path, text).expect("write config");
            Config::load(&path).expect("config loads")
        };
        let old = load("");
        let mut new = load(
            "[server]\nfast_path = false\n[upstream]\npool_idle_timeout_ms = 1000\npool_max_idle = 8\n\
             [limiter]\nredis_batch = false\n",
        );
        assert_eq!(
            restart_only_changes(&old, &mut new, false),
            ["server.fast_path", "upstream.pool_idle_timeout_ms", "upstream.pool_max_idle", "limiter.redis_batch"]
        );
        // What runs is kept: the new snapshot holds the running values.
        assert!(new.server.fast_path && new.limiter.redis_batch);
        assert_eq!(
            (new.upstream.pool_idle_timeout, new.upstream.pool_max_idle),
            (old.upstream.pool_idle_timeout, 1024)
        );
        assert!(restart_only_changes(&old, &mut new, false).is_empty());
    }
}
