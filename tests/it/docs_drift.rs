//! Docs that cannot drift from the code: every metric the code exports is in
//! the metrics table of `docs/operations.md` (and every row there is one the
//! code exports), every decision label the binary renders is in the table of
//! decisions, every config field is in the reference config
//! `config/quota-proxy.toml`, and every command the README shows still parses
//! (its subcommand and flags, its example, bench and config file), and every
//! repository path the README and docs/ name exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::support::binary::metrics_at_start;
use clap::Parser;
use quota_proxy::cli::Cli;
use quota_proxy::config::Config;

/// A file of the repository, read whole.
fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The words of `text` that start with `prefix` and continue with
/// `[a-z0-9_]`.
fn words_with_prefix(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let tail = &rest[at..];
        let end = tail[prefix.len()..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(tail.len(), |at| prefix.len() + at);
        found.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    found
}

/// The first cells of the rows of the markdown table that follows the line
/// containing `heading` in `doc`, with their backticks removed.
fn table_keys(doc: &str, heading: &str) -> BTreeSet<String> {
    let after = doc
        .split_once(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in the doc"))
        .1;
    after
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2) // header and separator
        .filter_map(|row| row.split('|').nth(1))
        .map(|cell| cell.trim().trim_matches('`').to_owned())
        .collect()
}

#[test]
fn every_exported_metric_is_in_the_metrics_table_and_no_other() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut in_code = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a source file");
        // Metric names are string literals: "quota_proxy_…".
        for name in words_with_prefix(&text, "\"quota_proxy_") {
            in_code.insert(name.trim_start_matches('"').to_owned());
        }
    }
    assert!(
        in_code.len() > 10,
        "found only {in_code:?}: is the scan broken?"
    );
    let in_table = table_keys(&read("docs/operations.md"), "### Metrics");
    let missing: Vec<_> = in_code.difference(&in_table).collect();
    let stale: Vec<_> = in_table.difference(&in_code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/operations.md's metrics table drifted from the code:\n\
         exported but not in the table: {missing:?}\n\
         in the table but never exported: {stale:?}"
    );
}

#[tokio::test]
async fn every_decision_label_the_binary_renders_is_in_the_decisions_table() {
    let text = metrics_at_start().await;
    // Every series of an inspected route exists at 0 from the start.
    let rendered: BTreeSet<String> = words_with_prefix(&text, "decision=\"")
        .into_iter()
        .map(|label| label.trim_start_matches("decision=\"").to_owned())
        .collect();
    assert!(
        rendered.contains("allowed") && rendered.contains("denied"),
        "no decision series in:\n{text}"
    );
    let documented = table_keys(
        &read("docs/operations.md"),
        "Decisions of `quota_proxy_requests_total`",
    );
    assert_eq!(
        rendered, documented,
        "docs/operations.md's table of decisions differs from what the binary renders"
    );
}

/// The field names a section of the config accepts, read from serde's
/// answer to an unknown field (every config type denies unknown fields).
fn accepted_fields(section: &[&str]) -> Vec<String> {
    let mut value: toml::Table = toml::from_str(&read("config/quota-proxy.toml")).expect("TOML");
    let mut table = &mut value;
    for key in section {
        table = table
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("a section is a table");
    }
    table.insert("not_a_field_of_any_section".into(), 1.into());
    let text = toml::to_string(&value).expect("renders");
    let error = match toml::from_str::<Config>(&text) {
        Ok(_) => panic!("[{}] accepted an unknown field", section.join(".")),
        Err(e) => e.to_string(),
    };
    let expected = error
        .split_once("expected one of ")
        .or_else(|| error.split_once("expected "))
        .unwrap_or_else(|| panic!("no field list in: {error}"))
        .1;
    let list = expected.lines().next().unwrap_or("");
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_config_field_is_in_the_reference_config() {
    let reference = read("config/quota-proxy.toml");
    // A field is documented when a line (commented out or not) of its
    // section sets it.
    let documented = |section: &str, field: &str| {
        let mut current = String::new();
        reference.lines().any(|line| {
            let line = line.trim_start_matches('#').trim();
            if let Some(header) = line.strip_prefix('[') {
                current = header.trim_matches(|c| c == '[' || c == ']').to_owned();
                return false;
            }
            current == section
                && line
                    .strip_prefix(field)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    };
    let sections: BTreeSet<String> = reference
        .lines()
        .map(|line| line.trim_start_matches('#').trim())
        .filter_map(|line| line.strip_prefix('['))
        .map(|header| header.trim_matches(|c| c == '[' || c == ']').to_owned())
        .filter(|header| !header.contains(' ') && !header.is_empty())
        .collect();
    let mut missing = Vec::new();
    for section in std::iter::once(String::new()).chain(sections.clone()) {
        // Arrays of tables ([[routes]]) and maps of plans take no unknown
        // keys of their own in the same way; their fields are checked
        // through an element below.
        if section == "routes" || section == "plans" {
            continue;
        }
        let path: Vec<&str> = section.split('.').filter(|s| !s.is_empty()).collect();
        for field in accepted_fields(&path) {
            if !documented(&section, &field) && !sections.contains(&join(&section, &field)) {
                missing.push(join(&section, &field));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "config fields missing from config/quota-proxy.toml (add each, commented, with its default): {missing:?}"
    );
}

fn join(section: &str, field: &str) -> String {
    if section.is_empty() {
        field.to_owned()
    } else {
        format!("{section}.{field}")
    }
}

#[test]
fn every_command_in_the_readme_still_parses() {
    let readme = read("README.md");
    let mut checked = 0;
    let mut in_block = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let command = line.split(" #").next().unwrap_or("").trim();
        if !in_block || !command.starts_with("cargo ") {
            continue;
        }
        let words: Vec<&str> = command.split_whitespace().collect();
        let named = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|at| words.get(at + 1))
                .copied()
        };
        if let Some(example) = named("--example") {
            let path = format!("examples/{example}.rs");
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(&path).exists(),
                "README: `{command}`: no {path}"
            );
        }
        if let Some(bench) = named("--bench") {
            let path = format!("benches/{bench}.rs");
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(&path).exists(),
                "README: `{command}`: no {path}"
            );
        }
        if words.get(1) == Some(&"run") && named("--example").is_none() {
            // `cargo run [--release] [-- ARGS]`: ARGS go to quota-proxy.
            let args = words.iter().skip_while(|w| **w != "--").skip(1);
            let cli = Cli::try_parse_from(std::iter::once(&"quota-proxy").chain(args))
                .unwrap_or_else(|e| panic!("README: `{command}` no longer parses: {e}"));
            let config = Path::new(env!("CARGO_MANIFEST_DIR")).join(&cli.config);
            Config::load(&config)
                .unwrap_or_else(|e| panic!("README: `{command}`: {}: {e}", cli.config.display()));
        }
        checked += 1;
    }
    assert!(
        checked >= 4,
        "found only {checked} commands in README.md's code blocks"
    );
}

/// The repository paths `text` names: words that start with one of
/// `tests/`, `src/`, `benches/`, `deploy/`, `config/` (not inside a longer
/// path such as `crates/loadbench/src/…` or `/etc/…`), up to the first
/// character a path here never holds (so `:line`, `#anchor`, a closing
/// backtick or parenthesis end it), without a sentence's final `.` or `,`.
/// Each comes with the text that follows it.
fn repository_paths(text: &str) -> Vec<(&str, &str)> {
    const PREFIXES: [&str; 5] = ["tests/", "src/", "benches/", "deploy/", "config/"];
    let in_path = |c: char| c.is_ascii_alphanumeric() || "_-./*".contains(c);
    let mut found = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let rest = &text[at..];
        let starts_word = text[..at].chars().next_back().is_none_or(|c| !in_path(c));
        if !starts_word || !PREFIXES.iter().any(|p| rest.starts_with(p)) {
            at += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        }
        let end = rest.find(|c: char| !in_path(c)).unwrap_or(rest.len());
        let path = rest[..end].trim_end_matches(['.', ',']);
        found.push((path, &rest[path.len()..]));
        at += end;
    }
    found
}

/// Whether `path` (a file, a folder, or a folder and a name with one `*`)
/// names something in the repository.
fn exists_in_repository(path: &str) -> bool {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some((dir, pattern)) = path.rsplit_once('/').filter(|(_, name)| name.contains('*')) else {
        return root.join(path).exists();
    };
    let (before, after) = pattern.split_once('*').expect("a glob");
    std::fs::read_dir(root.join(dir)).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with(before) && name.ends_with(after) && name.len() >= pattern.len() - 1
        })
    })
}

#[test]
fn every_repository_path_the_docs_name_exists() {
    let mut pages = vec!["README.md".to_owned()];
    for entry in
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")).expect("read docs/")
    {
        let name = entry.expect("directory entry").file_name();
        let name = name.to_string_lossy();
        // The benchmark history names the files of each change as they
        // were then; some have moved since.
        if name.ends_with(".md") && name != "benchmark-history.md" {
            pages.push(format!("docs/{name}"));
        }
    }
    let mut checked = 0;
    let mut missing = Vec::new();
    for page in &pages {
        let text = read(page);
        for (number, line) in text.lines().enumerate() {
            for (path, after) in repository_paths(line) {
                // `kubectl … deploy/NAME` names a Deployment, not a file.
                if line.contains("kubectl") && path.matches('/').count() == 1 && !path.contains('.')
                {
                    continue;
                }
                // A record of what was done names a file as it was then,
                // followed by where that code is today.
                if after.starts_with("` (today `") {
                    continue;
                }
                checked += 1;
                if !exists_in_repository(path) {
                    missing.push(format!("{page}:{}: {path}", number + 1));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "found only {checked} paths: is the scan broken?"
    );
    assert!(
        missing.is_empty(),
        "paths named in the docs that are not in the repository:\n{}",
        missing.join("\n")
    );
}

#[test]
fn repository_paths_are_read_up_to_a_line_an_anchor_or_a_sentence_end() {
    let paths = |text| -> Vec<&str> {
        repository_paths(text)
            .into_iter()
            .map(|(path, _)| path)
            .collect()
    };
    assert_eq!(
        paths("see `src/report/marker.rs:29`, src/lib.rs#levels and tests/it/."),
        ["src/report/marker.rs", "src/lib.rs", "tests/it/"]
    );
    assert_eq!(
        paths("crates/loadbench/src/floor.rs, /etc/quota-proxy/config/x.toml, ../src/a.rs"),
        Vec::<&str>::new()
    );
    assert_eq!(
        paths("`src/store/*.rs` and config/a.toml,"),
        ["src/store/*.rs", "config/a.toml"]
    );
    assert!(exists_in_repository("src/store/*.rs"));
    assert!(!exists_in_repository("src/store/*.lua"));
}
