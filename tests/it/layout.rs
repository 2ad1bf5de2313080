//! The house rules of DESIGN.md that a reader of the sources can check: `metrics` is a
//! leaf the others report into.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

fn source(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The code of a file without its comments (doc links are not dependencies).
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with("//"))
}

#[test]
fn metrics_imports_no_other_module_of_the_operator() {
    let text = source("src/metrics.rs");
    let found: Vec<&str> = code_lines(&text)
        .filter(|l| l.contains("crate::"))
        .collect();
    assert!(
        found.is_empty(),
        "src/metrics.rs must stay a leaf (others report into it), but it uses:\n{}",
        found.join("\n")
    );
}
