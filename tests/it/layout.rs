//! The house rules of DESIGN.md that a reader of the sources can check: `metrics` is a
//! leaf the others report into, and the controller's modules import each other in one
//! direction only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
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

/// The module names that follow `prefix` in `line` (`super::super::pods` counts as `pods`).
fn paths_after<'a>(line: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        let mut name = rest;
        while let Some(r) = name.strip_prefix("super::") {
            name = r;
        }
        let end = name
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(name.len());
        if end > 0 {
            out.push(&name[..end]);
        }
    }
    out
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

#[test]
fn the_controller_modules_import_each_other_in_one_direction() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/controller");
    let mut modules = BTreeSet::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if let Some(m) = name.strip_suffix(".rs")
            && m != "mod"
        {
            modules.insert(m.to_owned());
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in &modules {
        let text = source(&format!("src/controller/{m}.rs"));
        for line in code_lines(&text) {
            for prefix in ["super::", "crate::controller::"] {
                for dep in paths_after(line, prefix) {
                    if dep != m && modules.contains(dep) {
                        edges.entry(m.clone()).or_default().insert(dep.to_owned());
                    }
                }
            }
        }
    }
    // Depth-first search; a module met again on the current path closes a cycle.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(i) = path.iter().position(|p| p == m) {
            panic!(
                "src/controller imports in a circle: {} -> {m}",
                path[i..].join(" -> ")
            );
        }
        if done.contains(m) {
            return;
        }
        path.push(m.to_owned());
        for dep in edges.get(m).into_iter().flatten() {
            visit(dep, edges, path, done);
        }
        path.pop();
        done.insert(m.to_owned());
    }
    let mut done = BTreeSet::new();
    for m in &modules {
        visit(m, &edges, &mut Vec::new(), &mut done);
    }
    // The check sees the imports at all (it would pass vacuously otherwise).
    assert!(
        edges
            .get("exporters")
            .is_some_and(|d| d.contains("plan") && d.contains("backup")),
        "{edges:?}"
    );
}
