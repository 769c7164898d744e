//! Fuzz target `marker_scanner`: what it checks is `checks::marker_scanner`'s to say (the main
//! crate's test run checks the same on the committed seeds).
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::marker_scanner(data));
