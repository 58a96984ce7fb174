//! Host resolution (docs/reference.md "Request order" step 1). Properties:
//! - `requested_host` and `normalize_host` never panic on any header or
//!   request-target bytes;
//! - a normalised host is a fixed point (normalising it again changes
//!   nothing), lower-case, without a trailing dot, userinfo or port;
//! - a host that resolves to a tenant's canonical domain *is* that domain,
//!   and every decorated spelling of a configured host (case, trailing dot,
//!   port) resolves to the same tenant the same way.
#![no_main]

use std::sync::OnceLock;

use deskgate::config::Config;
use deskgate::state::Snapshot;
use deskgate::tenant::{normalize_host, requested_host, resolve};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
[upstream]
url = "http://127.0.0.1:8081"
[[tenant]]
name = "acme"
domain = "acme.freshdesk.com"
plan = "pro"
vanity_hosts = ["support.acme.com"]
[[tenant]]
name = "tiny"
domain = "tiny.freshdesk.com"
plan = "growth"
[[tenant]]
name = "v6"
domain = "[::1]"
plan = "trial"
"#;

fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("deskgate-fuzz-host-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("deskgate.toml");
        std::fs::write(&path, CONFIG).unwrap();
        Snapshot::new(Config::load(&path).unwrap())
    })
}

fuzz_target!(|data: &[u8]| {
    let snap = snapshot();
    let (selector, rest) = data.split_first().unwrap_or((&0, &[]));
    let text = String::from_utf8_lossy(rest);

    // As a Host header, and as the authority of an absolute-form target.
    let mut b = http::Request::builder().uri("/api/v2/tickets");
    if let Ok(v) = http::HeaderValue::from_bytes(rest) {
        b = b.header("host", v);
        if selector & 1 != 0 {
            b = b.header("host", "acme.freshdesk.com");
        }
    }
    if selector & 2 != 0 {
        if let Ok(uri) = http::Uri::try_from(format!("http://{text}/api/v2/tickets")) {
            b = b.uri(uri);
        }
    }
    if let Ok(req) = b.body(()) {
        let (parts, _) = req.into_parts();
        if let Ok(host) = requested_host(&parts) {
            check_normalized(&host);
            if let Ok(t) = resolve(snap, &host) {
                assert_eq!(t.domain, *host, "resolved as canonical but is not the domain");
            }
        }
    }

    if let Ok(host) = normalize_host(&text) {
        check_normalized(&host);
    }

    // Decorated spellings of a configured host resolve like the host itself.
    let configured = ["acme.freshdesk.com", "tiny.freshdesk.com", "support.acme.com", "[::1]"];
    let base = configured[usize::from(*selector >> 2) % configured.len()];
    let mut decorated: String = base
        .chars()
        .zip(rest.iter().chain(std::iter::repeat(&0)))
        .map(|(c, b)| if b & 1 != 0 { c.to_ascii_uppercase() } else { c })
        .collect();
    if selector & 0x40 != 0 {
        decorated.push('.');
    }
    if selector & 0x80 != 0 {
        decorated.push_str(&format!(":{}", rest.first().copied().unwrap_or(0)));
    }
    let want = resolve(snap, base).map(|t| t.name.clone()).map_err(|e| e.code());
    let got = normalize_host(&decorated)
        .map_err(|e| e.code())
        .and_then(|h| resolve(snap, &h).map(|t| t.name.clone()).map_err(|e| e.code()));
    assert_eq!(format!("{got:?}"), format!("{want:?}"), "{decorated:?} vs {base:?}");
});

fn check_normalized(host: &str) {
    assert!(!host.is_empty());
    assert!(!host.contains('@'), "{host:?}");
    assert!(!host.ends_with('.'), "{host:?}");
    assert!(!host.bytes().any(|b| b.is_ascii_uppercase()), "{host:?}");
    match normalize_host(host) {
        Ok(again) => assert_eq!(again, host, "not a fixed point"),
        Err(e) => panic!("{host:?} normalised, then refused: {e:?}"),
    }
    if !host.starts_with('[') {
        // No port left (a numeric last label is fine: `a.b:1` → `a.b`).
        assert!(host.rsplit_once(':').is_none_or(|(_, p)| !p.bytes().all(|b| b.is_ascii_digit())), "{host:?}");
    }
}
