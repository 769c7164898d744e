//! The code reads in one direction: every top-level module of `src/` sits on
//! one level and imports only from its own level or lower ones, and no
//! top-level modules import each other in a circle (`docs/layout.md`).
//!
//! | level | modules |
//! |---|---|
//! | 0 domain | `config` (the bottom: it imports only `periods`), `periods`, `clock`, `flag`, `report`, `response`, `decision`, `counters`, `hop_by_hop`, `pybase64` |
//! | 1 ports | `store`, `identity` |
//! | 2 middleware | `quota` |
//! | 3 runtime | `metrics`, `telemetry`, `server`, `proxy`, `admin`, `app`, `cli` |
//!
//! An import is any `crate::x` path in code (`use crate::x::…`,
//! `use crate::{x::…, y}`, `crate::x::f()`), tests included; comment lines
//! are not read. A failure names the file and line of each import that
//! breaks the rule.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// Every top-level module and its level.
const LEVELS: &[(&str, u8)] = &[
    // 0 domain: types, parsing and pure rules.
    ("config", 0),
    ("periods", 0),
    ("clock", 0),
    ("flag", 0),
    ("report", 0),
    ("response", 0),
    ("decision", 0),
    ("counters", 0),
    ("hop_by_hop", 0),
    ("pybase64", 0),
    // 1 ports: the store and where identities come from.
    ("store", 1),
    ("identity", 1),
    // 2 middleware: the quota layer.
    ("quota", 2),
    // 3 runtime: serving, wiring, operations.
    ("metrics", 3),
    ("telemetry", 3),
    ("server", 3),
    ("proxy", 3),
    ("admin", 3),
    ("app", 3),
    ("cli", 3),
];

/// What `config`, the bottom of level 0, may import.
const CONFIG_IMPORTS: &[&str] = &["periods"];

/// One import of a top-level module by another.
#[derive(Debug, Clone)]
struct Import {
    from: String,
    to: String,
    /// `src/…:line`.
    at: String,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The `.rs` files under `dir`, sorted.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The modules `src/lib.rs` declares (`pub mod x;`, `mod x;`).
fn declared_modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs");
    lib.lines()
        .map(str::trim)
        .filter_map(|line| {
            line.strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))
        })
        .filter_map(|rest| rest.strip_suffix(';'))
        .map(str::to_owned)
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifier at the start of `text`.
fn ident(text: &str) -> &str {
    let end = text.find(|c: char| !is_ident(c)).unwrap_or(text.len());
    &text[..end]
}

/// The first segments of the `crate::` paths in `code` (comment lines
/// blanked), with the byte offset of each `crate::`.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with(is_ident) {
            continue; // `quota_proxy_crate::` and the like
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::b, c, d::{e, f}}`: the names at depth 1.
            let mut depth = 1;
            let mut expect_name = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => expect_name = true,
                    c if depth == 1 && expect_name && is_ident(c) => {
                        found.push((at, ident(&group[i..]).to_owned()));
                        expect_name = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push((at, ident(rest).to_owned()));
        }
    }
    found
}

/// Every import of one top-level module by another in `src/`.
fn imports(modules: &BTreeSet<String>) -> Vec<Import> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut imports = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&root).expect("under src");
        let first = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a file name");
        let from = first.strip_suffix(".rs").unwrap_or(first);
        if from == "lib" || from == "main" {
            continue;
        }
        assert!(
            modules.contains(from),
            "src/{} is in no module src/lib.rs declares",
            relative.display()
        );
        let text = std::fs::read_to_string(&file).expect("source file");
        // Comment lines blanked, so doc links are not read as imports.
        let code: String = text
            .lines()
            .map(|line| {
                if line.trim_start().starts_with("//") {
                    ""
                } else {
                    line
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        for (at, to) in crate_paths(&code) {
            if to == from || !modules.contains(&to) {
                continue; // its own module, or an item of lib.rs
            }
            let line = code[..at].matches('\n').count() + 1;
            imports.push(Import {
                from: from.to_owned(),
                to,
                at: format!("src/{}:{line}", relative.display()),
            });
        }
    }
    imports
}

/// A path of imports from `start` to `goal`, if there is one.
fn path(
    edges: &BTreeMap<(String, String), Import>,
    start: &str,
    goal: &str,
) -> Option<Vec<Import>> {
    let mut came_from: BTreeMap<&str, &Import> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(module) = queue.pop_front() {
        if module == goal {
            let mut steps = Vec::new();
            let mut at = goal;
            while at != start {
                let import = came_from[at];
                steps.push(import.clone());
                at = &import.from;
            }
            steps.reverse();
            return Some(steps);
        }
        for ((from, to), import) in edges {
            if from == module && to != start && !came_from.contains_key(to.as_str()) {
                came_from.insert(to, import);
                queue.push_back(to);
            }
        }
    }
    None
}

/// What is wrong with `imports`, one line per problem.
fn violations(imports: &[Import]) -> Vec<String> {
    let level: BTreeMap<&str, u8> = LEVELS.iter().copied().collect();
    let mut problems = Vec::new();
    // The first import of each pair of modules stands for the pair.
    let mut edges: BTreeMap<(String, String), Import> = BTreeMap::new();
    for import in imports {
        edges
            .entry((import.from.clone(), import.to.clone()))
            .or_insert_with(|| import.clone());
        let (from, to) = (level[import.from.as_str()], level[import.to.as_str()]);
        if to > from {
            problems.push(format!(
                "{}: `{}` (level {from}) imports `{}` (level {to}), a higher level",
                import.at, import.from, import.to
            ));
        } else if import.from == "config" && !CONFIG_IMPORTS.contains(&import.to.as_str()) {
            problems.push(format!(
                "{}: `config` imports `{}`; config is the bottom and imports only {CONFIG_IMPORTS:?}",
                import.at, import.to
            ));
        }
    }
    // Each cycle once, however many of its imports lead into it.
    let mut cycles = BTreeSet::new();
    for ((from, to), import) in &edges {
        if let Some(back) = path(&edges, to, from) {
            let round: Vec<&Import> = std::iter::once(import).chain(&back).collect();
            let members: BTreeSet<String> = round.iter().map(|i| i.from.clone()).collect();
            if cycles.insert(members) {
                let steps: Vec<String> = round
                    .iter()
                    .map(|i| format!("{} -> {} ({})", i.from, i.to, i.at))
                    .collect();
                problems.push(format!("cycle: {}", steps.join(", ")));
            }
        }
    }
    problems
}

#[test]
fn every_module_has_a_level() {
    let declared = declared_modules();
    let placed: BTreeSet<String> = LEVELS.iter().map(|(m, _)| (*m).to_owned()).collect();
    assert_eq!(
        declared, placed,
        "src/lib.rs's modules and LEVELS differ: give each module a level"
    );
}

#[test]
fn imports_go_down_and_never_round_in_a_circle() {
    let imports = imports(&declared_modules());
    assert!(
        imports.iter().any(|i| i.from == "quota" && i.to == "store"),
        "the scan finds the quota layer's store imports"
    );
    let problems = violations(&imports);
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_scan_reads_groups_and_paths_and_catches_a_cycle() {
    let code = "use crate::{config::Config, periods::{Period, Calendar},\n    store};\nlet x = crate::clock::now(); let y = quota_proxy_crate::z;";
    let names: Vec<String> = crate_paths(code).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["config", "periods", "store", "clock"]);

    let import = |from: &str, to: &str| Import {
        from: from.to_owned(),
        to: to.to_owned(),
        at: format!("src/{from}.rs:1"),
    };
    let problems = violations(&[import("flag", "report"), import("report", "flag")]);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("cycle: flag -> report")),
        "{problems:?}"
    );
    let problems = violations(&[import("store", "quota")]);
    assert!(
        problems.iter().any(|p| p.contains("a higher level")),
        "{problems:?}"
    );
}
