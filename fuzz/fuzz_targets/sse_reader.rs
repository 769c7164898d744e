//! Fuzz target `sse_reader`: what it checks is `checks::sse_reader`'s to say (the main
//! crate's test run checks the same on the committed seeds).
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::sse_reader(data));
