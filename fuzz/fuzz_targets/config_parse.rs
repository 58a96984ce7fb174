//! Config parsing and validation (docs/reference.md "Configuration"). Properties:
//! - `Config::load` never panics on any file content;
//! - an error always carries a position inside the file (or none) and a
//!   non-empty message;
//! - a config that loads keeps the invariants the gateway relies on: every
//!   tenant's plan exists, hosts are unique and normalised, a tenant with API
//!   access has a non-zero budget and no endpoint budget above it, windows
//!   are non-zero; its summary and redacted JSON render without panicking.
#![no_main]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::OnceLock;

use deskgate::config::Config;
use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("deskgate-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("tenants.d")).unwrap();
        dir.join("deskgate.toml")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    std::fs::write(path, data).unwrap();
    match Config::load(path) {
        Err(e) => {
            assert!(!e.msg.is_empty());
            if let Ok(text) = std::str::from_utf8(data) {
                assert!(e.line <= text.lines().count() + 1, "{e}");
            }
            let _ = e.to_string();
        }
        Ok(cfg) => {
            let mut hosts = HashSet::new();
            for t in &cfg.tenants {
                assert!(cfg.plans.contains_key(&t.plan), "{} names unknown plan {}", t.name, t.plan);
                for h in std::iter::once(&t.domain).chain(&t.vanity_hosts) {
                    assert!(hosts.insert(h.clone()), "host {h} claimed twice");
                    assert_eq!(*h, h.to_ascii_lowercase());
                    assert!(!h.ends_with('.'));
                }
                assert!(t.window_seconds > 0);
                if t.api_access {
                    assert!(t.per_minute > 0, "{}", t.name);
                    for b in t.endpoints.iter().flatten() {
                        assert!(*b > 0 && *b <= t.per_minute, "{}: endpoint {b} over {}", t.name, t.per_minute);
                    }
                }
            }
            let _ = cfg.summary();
            let _ = cfg.redacted_json();
        }
    }
});
