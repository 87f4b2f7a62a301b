//! The house rules that a compiler does not check, checked over the whole tree (rust-analyzer's
//! `tidy.rs` is the model): every Rust file opens with a `//!` paragraph; no non-test function
//! grows past `FUNCTION_LINES_MAX` lines (the few that are longer today are listed with their
//! length and may only shrink); lines over `LINE_COLUMNS_MAX` columns may only become fewer;
//! each crate depends only on what its layer allows (the engine never on I/O, the journal never
//! on the engine, the wire contract on no crate of ours); and ARCHITECTURE.md's file index names
//! every source file. It reads files; it runs nothing.

use std::path::{Path, PathBuf};

/// Longest non-test function, in lines from `fn` to its closing brace.
const FUNCTION_LINES_MAX: usize = 120;

/// Functions longer than `FUNCTION_LINES_MAX` when this test was written: (file, function,
/// lines). Each may shrink, never grow; when one is split below the limit, drop it from here.
const LONG_FUNCTIONS: &[(&str, &str, usize)] = &[
    // Lengths as `cargo fmt` (rustfmt.toml: 100 columns) lays them out.
];

/// Widest line, in characters: rustfmt's `max_width`. What rustfmt cannot wrap (long string
/// literals, comments) is counted below.
const LINE_COLUMNS_MAX: usize = 100;

/// Lines wider than `LINE_COLUMNS_MAX` when this test was written; the count may only fall.
const WIDE_LINES_NOW: usize = 127;

/// Per crate (its folder), the only dependencies it may have. The engine is pure (no I/O, no
/// async, no clock crates; siphasher for the keyed PIN hash the switch and the exporter share);
/// the journal knows bytes, not the engine; the wire contract knows none of our crates; the
/// switch never links settlement (the exporter is its own binary); settlement, the load
/// generator and the harness sit beside the switch, none of them on it.
const ALLOWED_DEPENDENCIES: &[(&str, &[&str])] = &[
    // The client library's transports: tokio, TLS (rustls) over it, and QUIC (quinn).
    ("protocol", &["rkyv", "crc32c", "thiserror", "tokio", "rustls", "tokio-rustls", "quinn"]),
    ("journal", &["memmap2", "crc32c", "thiserror", "libc"]),
    ("switch/core", &["pinswitch-protocol", "rkyv", "serde", "siphasher"]),
    (
        "switch/server",
        &[
            "pinswitch-protocol",
            "pinswitch-journal",
            "pinswitch-core",
            "rkyv",
            "tokio",
            "crossbeam-channel",
            "glommio",
            "futures-io",
            "dashmap",
            "getrandom",
            "clap",
            "toml",
            "serde",
            "anyhow",
            "thiserror",
            // TLS on the front door and the test CA of `pinswitch tls init`.
            "rustls",
            "rustls-webpki",
            "rcgen",
            // QUIC on the front door.
            "quinn",
            // ISO 8583 PIN blocks (triple DES under the zone PIN key).
            "des",
        ],
    ),
    (
        "switch/exporter",
        &[
            "pinswitch-protocol",
            "pinswitch-journal",
            "pinswitch-core",
            "rkyv",
            "serde",
            "toml",
            "thiserror",
            "crc32c",
            "tokio",
            "clap",
            "anyhow",
        ],
    ),
    (
        "loadgen",
        &[
            "pinswitch-protocol",
            "tokio",
            "hdrhistogram",
            "clap",
            "anyhow",
            "serde",
            "serde_json",
            "crc32c",
        ],
    ),
    ("tests", &["pinswitch-protocol", "tokio", "anyhow"]),
];

/// (crate folder, crate) pairs that no section of the manifest may name, dev and build
/// dependencies included: the switch does not link settlement even for its tests, and settlement
/// reads the switch's files, never its code (issue 13).
const NEVER_DEPENDS: &[(&str, &str)] =
    &[("switch/server", "pinswitch-exporter"), ("switch/exporter", "pinswitch-server")];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file of ours, as paths relative to the root ("/"-separated), sorted.
fn rust_files() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            if path.is_dir() {
                walk(&path, root, out);
            } else if name.ends_with(".rs") {
                let relative = path.strip_prefix(root).unwrap_or(&path);
                out.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let root = root();
    let mut out = Vec::new();
    for top in ["protocol", "journal", "switch", "loadgen", "benches", "tests"] {
        walk(&root.join(top), &root, &mut out);
    }
    out.sort();
    out
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|error| panic!("reading {relative}: {error}"))
}

/// Test code: files in a `tests/` folder (and the harness crate), and what follows a
/// `#[cfg(test)] mod tests` line.
fn is_test_file(relative: &str) -> bool {
    relative.starts_with("tests/") || relative.contains("/tests/")
}

/// The non-test functions of a file with their length in lines: from the `fn` line to the
/// first line that is the closing brace at the same indentation (the layout rustfmt writes).
fn functions(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index];
        let next = lines.get(index + 1).map(|next| next.trim_start());
        if line.trim() == "#[cfg(test)]" && next.is_some_and(|next| next.starts_with("mod tests")) {
            break;
        }
        if let Some(name) = function_name(line) {
            let indent = &line[..line.len() - line.trim_start().len()];
            let mut signature_end = index;
            let ends = |at: usize| {
                lines[at].trim_end().ends_with('{') || lines[at].trim_end().ends_with(';')
            };
            while signature_end < lines.len() && !ends(signature_end) {
                signature_end += 1;
            }
            if signature_end < lines.len() && lines[signature_end].trim_end().ends_with('{') {
                let closing = format!("{indent}}}");
                let end = (signature_end + 1..lines.len())
                    .find(|&at| lines[at] == closing)
                    .unwrap_or(lines.len() - 1);
                found.push((name, end - index + 1));
            }
        }
        index += 1;
    }
    found
}

/// `Some(name)` for a line that starts a function item.
fn function_name(line: &str) -> Option<String> {
    let mut rest = line.trim_start();
    for prefix in ["pub(crate) ", "pub(super) ", "pub ", "const ", "async ", "unsafe "] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("async ").unwrap_or(rest);
    let rest = rest.strip_prefix("fn ")?;
    let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    (!name.is_empty()).then_some(name)
}

/// The dependency names of a Cargo.toml's `[dependencies]` section.
fn dependencies(manifest: &str) -> Vec<String> {
    dependencies_in(manifest, &["[dependencies]"])
}

/// The dependency names of the named sections of a Cargo.toml.
fn dependencies_in(manifest: &str, sections: &[&str]) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = sections.contains(&line);
            continue;
        }
        if inside && !line.is_empty() && !line.starts_with('#') {
            let name = line
                .split(|c: char| c == '=' || c == '.' || c.is_whitespace())
                .next()
                .unwrap_or("");
            names.push(name.to_string());
        }
    }
    names
}

#[test]
fn every_rust_file_opens_with_a_module_paragraph() {
    let missing: Vec<String> =
        rust_files().into_iter().filter(|file| !read(file).starts_with("//!")).collect();
    assert!(missing.is_empty(), "files that do not open with a `//!` paragraph: {missing:?}");
}

#[test]
fn functions_stay_short() {
    let mut problems = Vec::new();
    for file in rust_files().into_iter().filter(|file| !is_test_file(file)) {
        for (name, lines) in functions(&read(&file)) {
            let listed = LONG_FUNCTIONS
                .iter()
                .find(|(at, listed_name, _)| *at == file && *listed_name == name);
            match listed {
                Some((_, _, max)) if lines > *max => problems
                    .push(format!("{file}: fn {name} grew to {lines} lines (listed at {max})")),
                None if lines > FUNCTION_LINES_MAX => problems
                    .push(format!("{file}: fn {name} is {lines} lines, over {FUNCTION_LINES_MAX}")),
                _ => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_long_function_list_names_functions_that_exist() {
    for (file, name, max) in LONG_FUNCTIONS {
        // A file may hold several functions of one name: the longest is the listed one.
        let lines = functions(&read(file))
            .into_iter()
            .filter(|(found, _)| found == name)
            .map(|(_, lines)| lines)
            .max();
        let lines =
            lines.unwrap_or_else(|| panic!("{file}: fn {name} is listed but not found: unlist it"));
        assert!(
            lines > FUNCTION_LINES_MAX,
            "{file}: fn {name} is {lines} lines now, within the limit: unlist it"
        );
        assert!(lines <= *max, "{file}: fn {name} grew to {lines} lines (listed at {max})");
    }
}

#[test]
fn wide_lines_only_become_fewer() {
    let wide_in = |file: &String| {
        read(file).lines().filter(|line| line.chars().count() > LINE_COLUMNS_MAX).count()
    };
    let wide: usize = rust_files().iter().map(wide_in).sum();
    assert!(
        wide <= WIDE_LINES_NOW,
        "{wide} lines over {LINE_COLUMNS_MAX} columns, above the {WIDE_LINES_NOW} allowed"
    );
}

#[test]
fn crates_depend_only_on_what_their_layer_allows() {
    for (crate_dir, allowed) in ALLOWED_DEPENDENCIES {
        let manifest = read(&format!("{crate_dir}/Cargo.toml"));
        for name in dependencies(&manifest) {
            assert!(
                allowed.contains(&name.as_str()),
                "{crate_dir} depends on {name}, which its layer does not allow"
            );
        }
    }
    let sections = ["[dependencies]", "[dev-dependencies]", "[build-dependencies]"];
    for (crate_dir, never) in NEVER_DEPENDS {
        let manifest = read(&format!("{crate_dir}/Cargo.toml"));
        assert!(
            !dependencies_in(&manifest, &sections).iter().any(|name| name == never),
            "{crate_dir} names {never} in its manifest, which it may never depend on"
        );
    }
}

/// ARCHITECTURE.md's file index names every source file (tests and the fuzz target aside) and
/// no file that is gone: the codemap stays one hop from the code.
#[test]
fn the_file_index_names_every_source_file() {
    let architecture = read("ARCHITECTURE.md");
    let listed: Vec<&str> = architecture
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once("` |").map(|(path, _)| path))
        .filter(|path| path.ends_with(".rs"))
        .collect();
    let files: Vec<String> = rust_files()
        .into_iter()
        .filter(|file| {
            file == "tests/tidy.rs" || file.starts_with("tests/src/") || !is_test_file(file)
        })
        .filter(|file| !file.contains("/fuzz/"))
        .collect();
    let missing: Vec<&String> =
        files.iter().filter(|file| !listed.contains(&file.as_str())).collect();
    assert!(
        missing.is_empty(),
        "source files missing from ARCHITECTURE.md's file index: {missing:?}"
    );
    let gone: Vec<&&str> =
        listed.iter().filter(|path| !files.iter().any(|file| file == *path)).collect();
    assert!(
        gone.is_empty(),
        "ARCHITECTURE.md's file index names files that do not exist: {gone:?}"
    );
}

/// What the engine may take from the wire contract: its vocabulary (result codes, the numbered
/// enums, notice kinds, the op id's clock and the audit digest), never a message struct. The
/// engine's outputs are its own types; each front end converts them (ARCHITECTURE.md, "One
/// type rule").
const ENGINE_WIRE_VOCABULARY: &[&str] = &[
    "BlockReason",
    "CardState",
    "Category",
    "Field",
    "Funding",
    "MsgType",
    "NOTICE_ABORT",
    "NOTICE_EXPIRED",
    "NOTICE_LOW_BALANCE",
    "NOTICE_REAUTHORIZE",
    "OpStatus",
    "ResultCode",
    "op_id_time_ms",
    "session_digest",
];

/// The names a text takes from `pinswitch_protocol`: `pinswitch_protocol::Name` paths and the
/// names inside `use pinswitch_protocol::{...}` (an `as` rename counts as its original name).
fn protocol_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("pinswitch_protocol::") {
        rest = &rest[at + "pinswitch_protocol::".len()..];
        let list = match rest.strip_prefix('{') {
            Some(inner) => &inner[..inner.find('}').unwrap_or(inner.len())],
            None => {
                &rest[..rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len())]
            }
        };
        for item in list.split(',') {
            let name = item.split_whitespace().next().unwrap_or("");
            if !name.is_empty() {
                names.push(name.to_string());
            }
        }
    }
    names
}

#[test]
fn the_engine_takes_only_the_wire_vocabulary() {
    for file in rust_files().into_iter().filter(|file| file.starts_with("switch/core/src/")) {
        for name in protocol_names(&read(&file)) {
            assert!(
                ENGINE_WIRE_VOCABULARY.contains(&name.as_str()),
                "{file} takes {name} from the wire contract; the engine answers in its own types"
            );
        }
    }
}

/// The scanners themselves, on a known text, so a broken scanner cannot pass everything.
#[test]
fn the_scanners_see_what_is_there() {
    let text = concat!(
        "//! x\nfn short() {\n    one();\n}\n\n",
        "pub(crate) async fn three(\n    a: u8,\n) -> u8 {\n    a\n}\n",
        "trait T {\n    fn declared(&self);\n}\n",
        "#[cfg(test)]\nmod tests {\n    fn hidden() {\n    }\n}\n",
    );
    assert_eq!(functions(text), vec![("short".to_string(), 3), ("three".to_string(), 5)]);
    let manifest = concat!(
        "[package]\nname = \"x\"\n[dependencies]\n# why\nrkyv.workspace = true\nserde = { workspace = true }\n",
        "[dev-dependencies]\ntempfile = \"3\"\n",
    );
    assert_eq!(dependencies(manifest), vec!["rkyv".to_string(), "serde".to_string()]);
    let uses = "use pinswitch_protocol::{\n    CardState as State, ResultCode,\n};\nlet x = pinswitch_protocol::OpResult::default();";
    assert_eq!(
        protocol_names(uses),
        vec!["CardState".to_string(), "ResultCode".to_string(), "OpResult".to_string()]
    );
}
