//! Differential: see the properties in fuzz/properties/fast_head.rs (shared with
//! tests/fuzz_regressions.rs, which replays fuzz/regressions/fast_head-* in
//! `cargo test`).
#![no_main]

#[path = "../properties/fast_head.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| properties::check(data));
