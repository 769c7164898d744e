//! Fuzz target `flag_charset`: what it checks is `checks::flag_charset`'s to say (the main
//! crate's test run checks the same on the committed seeds).
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::flag_charset(data));
