//! Judged request == forwarded request: see the properties in
//! fuzz/properties/judged_forwarded.rs (shared with
//! tests/fuzz_regressions.rs, which replays fuzz/regressions/judged_forwarded-*
//! and the seeds in `cargo test`).
#![no_main]

#[path = "../properties/judged_forwarded.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| properties::check(data));
