//! The crate's top-level modules form no import cycle: `daemon` wires things together and no
//! module imports it back, `config` reads settings that the layers own, and so on. Read from
//! the sources (every `crate::module` path outside tests), so a new cycle fails here with the
//! path that closes it.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// Whether a file is test code only (`tests.rs`, `*_tests.rs`, a `tests/` directory).
fn test_file(file: &Path) -> bool {
    file.components().any(|c| c.as_os_str() == "tests")
        || file
            .file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|s| s == "tests" || s.ends_with("_tests") || s == "fixtures")
}

/// The modules a text names through `crate::x` or `use crate::{x, y}`, ignoring comments
/// and `#[cfg(test)] mod tests { ... }` blocks at the end of a file.
fn references(text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let code = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end]
                    .split(',')
                    .map(|s| s.trim().split("::").next().unwrap_or(""))
                    .collect()
            } else {
                vec![
                    rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or(""),
                ]
            };
            for n in names {
                if known.contains(n) {
                    out.insert(n.to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let known: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for f in &files {
        let Some(m) = module_of(&src, f) else {
            continue;
        };
        if test_file(f) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for r in references(&text, &known) {
            if r != m {
                edges
                    .entry(m.clone())
                    .or_default()
                    .entry(r)
                    .or_insert_with(|| f.clone());
            }
        }
    }
    // Depth-first search for a back edge; report the whole cycle.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeMap<String, PathBuf>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for next in edges.get(m).into_iter().flat_map(BTreeMap::keys) {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for m in &known {
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            let how: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {} ({})", w[0], w[1], edges[&w[0]][&w[1]].display()))
                .collect();
            panic!("import cycle:\n  {}", how.join("\n  "));
        }
    }
}
