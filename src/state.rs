//! What every request reads: the config snapshot in force and the shared parts.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::hold::HoldRoom;
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::tenant::{self, HostEntry};
use crate::upstream::Upstream;

/// One immutable view of the config, swapped whole on reload. A request
/// loads it once and uses it to the end, so a reload never changes the rules
/// under a request in flight.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    /// Lower-case host (no port, no trailing dot) → tenant.
    pub hosts: HashMap<String, HostEntry>,
    /// Settings the files changed that apply only after a restart (the
    /// config above holds their running values), for `/config`.
    pub pending_restart: Vec<&'static str>,
}

impl Snapshot {
    pub fn new(config: Config) -> Snapshot {
        let hosts = tenant::host_table(&config);
        Snapshot { config: Arc::new(config), hosts, pending_restart: Vec::new() }
    }

    /// The same snapshot, naming settings that wait for a restart.
    pub fn pending_restart(mut self, settings: Vec<&'static str>) -> Snapshot {
        self.pending_restart = settings;
        self
    }
}

/// Everything the servers share. No globals: tests build their own.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub limiter: Arc<Limiter>,
    pub upstream: Upstream,
    pub metrics: Metrics,
    /// Calls held waiting for room (`max_wait_ms`).
    pub hold: HoldRoom,
}
