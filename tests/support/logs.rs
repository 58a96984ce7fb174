//! The gateway's log lines, captured in-process.
//!
//! [`Logs::capture`] installs a JSON subscriber as the *thread's* default
//! (`tracing::subscriber::set_default`): on a current-thread tokio runtime
//! (plain `#[tokio::test]`) the gateway's tasks run on the test's thread, so
//! every line the gateway logs during the test lands here, and tests running
//! in parallel on other threads never mix in. A multi-thread test would see
//! nothing from the worker threads: assert logs only in current-thread tests.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// Log lines captured while this lives.
pub struct Logs {
    buf: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Keeps two inert dispatchers alive for the whole test process.
///
/// tracing caches each log site's interest when the site is first hit. While
/// at most one dispatcher is alive, that interest is decided by the *hitting
/// thread's* default alone: a test without [`Logs`] that first hits the
/// gateway's `refused` site would mark it "never", and a capturing test on
/// another thread would then miss every such line. With two more
/// dispatchers that want `info` always alive, a site is never marked
/// "never", and each event still goes only to its own thread's default.
fn keep_callsites_open() {
    static KEEPERS: std::sync::OnceLock<[tracing::Dispatch; 2]> = std::sync::OnceLock::new();
    KEEPERS.get_or_init(|| {
        let inert = || {
            tracing::Dispatch::new(
                tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_writer(std::io::sink).finish(),
            )
        };
        [inert(), inert()]
    });
}

impl Logs {
    /// Starts capturing `info` and above, as the binary logs with `--log-format json`.
    pub fn capture() -> Logs {
        keep_callsites_open();
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        Logs { buf, _guard: tracing::subscriber::set_default(subscriber) }
    }

    /// Every line so far, parsed.
    pub fn lines(&self) -> Vec<Value> {
        let text = String::from_utf8_lossy(&self.buf.lock().expect("log buffer")).into_owned();
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
    }

    /// The lines whose message is `message` (e.g. `"refused"`).
    pub fn events(&self, message: &str) -> Vec<Value> {
        self.lines().into_iter().filter(|l| l["message"] == message).collect()
    }

    /// The access-log lines (target `deskgate::access`) whose message is
    /// `message` (`"served"` or `"refused"`).
    pub fn access(&self, message: &str) -> Vec<Value> {
        self.events(message).into_iter().filter(|l| l["target"] == "deskgate::access").collect()
    }

    /// The one access-log line of the call with request id `id` (asserts
    /// there is exactly one).
    pub fn access_line(&self, id: &str) -> Value {
        let lines: Vec<Value> =
            self.lines().into_iter().filter(|l| l["target"] == "deskgate::access" && l["request_id"] == id).collect();
        assert_eq!(lines.len(), 1, "one access line for {id}: {:?}", self.lines());
        lines.into_iter().next().unwrap_or_default()
    }

    /// The `refused` lines for `tenant` with `reason`.
    pub fn refused(&self, tenant: &str, reason: &str) -> Vec<Value> {
        self.events("refused").into_iter().filter(|l| l["tenant"] == tenant && l["reason"] == reason).collect()
    }

    /// Asserts `times` `refused` lines for `tenant` with `reason`, each with
    /// `status` and a request id; returns the ids.
    pub fn assert_refused(&self, tenant: &str, reason: &str, status: u16, times: usize) -> Vec<String> {
        let lines = self.refused(tenant, reason);
        assert_eq!(lines.len(), times, "refused lines for {tenant}/{reason}: {:?}", self.lines());
        lines
            .iter()
            .map(|l| {
                assert_eq!(l["status"], status, "{l}");
                let id = l["request_id"].as_str().unwrap_or_default().to_owned();
                assert!(!id.is_empty(), "a refused line without request_id: {l}");
                id
            })
            .collect()
    }
}
