//! The fuzz targets' checks (fuzz/fuzz_targets/checks.rs) in the test run:
//! every target's committed seeds and random inputs, so a parser change
//! that breaks a target's build or its invariants fails here, not at the
//! next fuzzing session. `cargo fuzz` runs the same checks for hours.

use std::path::Path;

use proptest::prelude::*;

#[path = "../../fuzz/fuzz_targets/checks.rs"]
mod checks;

/// A fuzz target's check of one input.
type Check = fn(&[u8]);

/// Every fuzz target, by name, with its check.
const TARGETS: [(&str, Check); 6] = [
    ("marker_scanner", checks::marker_scanner),
    ("sse_reader", checks::sse_reader),
    ("flag_json", checks::flag_json),
    ("flag_form", checks::flag_form),
    ("flag_multipart", checks::flag_multipart),
    ("flag_charset", checks::flag_charset),
];

fn fuzz_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz"))
}

#[test]
fn every_target_holds_on_its_committed_seeds() {
    for (target, check) in TARGETS {
        let corpus = fuzz_dir().join("corpus").join(target);
        let mut seeds: Vec<_> = std::fs::read_dir(&corpus)
            .unwrap_or_else(|e| panic!("{}: {e}", corpus.display()))
            .map(|entry| entry.expect("a corpus entry").path())
            .filter(|path| {
                path.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            })
            .collect();
        seeds.sort();
        assert!(seeds.len() >= 4, "{target} has {} seeds", seeds.len());
        for seed in seeds {
            let input = std::fs::read(&seed).expect("a seed");
            let caught = std::panic::catch_unwind(|| check(&input));
            assert!(caught.is_ok(), "{target} failed on {}", seed.display());
        }
    }
}

/// The package's targets are exactly these, each handing its input to the
/// check of its name: a new target is checked here too, or this fails.
#[test]
fn every_target_in_the_fuzz_package_is_checked_here() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let manifest: toml::Table = manifest.parse().expect("fuzz/Cargo.toml is TOML");
    let mut bins: Vec<String> = manifest["bin"]
        .as_array()
        .expect("[[bin]] targets")
        .iter()
        .map(|bin| bin["name"].as_str().expect("a target's name").to_owned())
        .collect();
    bins.sort();
    let mut checked: Vec<String> = TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    checked.sort();
    assert_eq!(bins, checked);
    for bin in &bins {
        let path = fuzz_dir().join("fuzz_targets").join(format!("{bin}.rs"));
        let source = std::fs::read_to_string(&path).expect("a target's source");
        assert!(
            source.contains(&format!("checks::{bin}(data)")),
            "{} does not hand its input to checks::{bin}",
            path.display()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random inputs, options byte and chunk sizes included, for every
    /// target: the fuzzer's first minute, in every test run.
    #[test]
    fn every_target_holds_on_random_inputs(
        target in 0..TARGETS.len(),
        input in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        (TARGETS[target].1)(&input);
    }
}
