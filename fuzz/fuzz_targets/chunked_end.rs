//! Differential: see the properties in fuzz/properties/chunked_end.rs (shared with
//! tests/fuzz_regressions.rs, which replays fuzz/regressions/chunked_end-* in
//! `cargo test`).
#![no_main]

#[path = "../properties/chunked_end.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| properties::check(data));
