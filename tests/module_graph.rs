//! The modules of `src/` import one another without a cycle: the layering
//! written in `docs::internals` ("Module layering") holds. Reads every
//! `src/**/*.rs`, collects its `crate::<module>` references (code, `use`
//! lines and doc links alike) by top-level module — a child module counts
//! as its parent (`after_func/runner.rs` is `after_func`), `lib.rs` and
//! `docs/` are the crate root's and left out — and fails naming a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to, or `None` for the
/// crate root (`lib.rs`) and the prose modules under `docs/`.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("a file under src/");
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "docs").then(|| name.to_owned())
}

/// The `crate::<name>` references in `text` whose `<name>` is in `modules`.
fn references(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        // `$crate::` in a macro names the crate root, not a module edge.
        if text[..at].ends_with('$') {
            continue;
        }
        let rest = &text[at + "crate::".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        if modules.contains(name) {
            found.insert(name.to_owned());
        }
    }
    found
}

/// The import graph of the crate's top-level modules.
fn module_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(&src, f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let Some(module) = top_module(&src, file) else {
            continue;
        };
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(
            references(&text, &modules)
                .into_iter()
                .filter(|to| *to != module),
        );
    }
    graph
}

/// A cycle of `graph`, as the modules along it (first = last), if any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit<'g>(
        graph: &'g Graph,
        node: &'g str,
        marks: &mut BTreeMap<&'g str, Mark>,
        path: &mut Vec<&'g str>,
    ) -> Option<Vec<String>> {
        marks.insert(node, Mark::OnPath);
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next.as_str()).copied().unwrap_or(Mark::New) {
                Mark::OnPath => {
                    let start = path.iter().position(|m| *m == next).expect("on the path");
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|m| m.to_string()).collect();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(graph, next, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node.as_str()).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(cycle) = visit(graph, node, &mut marks, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn src_modules_import_no_cycle() {
    let graph = module_graph();
    // The reader found the modules it must find (a moved `src/` would
    // otherwise pass vacuously).
    for module in [
        "node",
        "cancel",
        "context",
        "timer",
        "after_func",
        "waiters",
        "list",
    ] {
        assert!(
            graph.contains_key(module),
            "module {module} not found: {graph:?}"
        );
    }
    assert!(
        graph["after_func"].contains("waiters"),
        "after_func/runner.rs or mod.rs edges missing: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        let edges: Vec<String> = graph
            .iter()
            .map(|(from, to)| {
                format!(
                    "  {from} -> {}",
                    to.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        panic!(
            "import cycle among the modules of src/: {}\nthe graph:\n{}",
            cycle.join(" -> "),
            edges.join("\n")
        );
    }
}

#[test]
fn cycle_finder_finds_a_cycle() {
    let mut graph = Graph::new();
    let edge = |graph: &mut Graph, from: &str, to: &str| {
        graph
            .entry(from.to_owned())
            .or_default()
            .insert(to.to_owned());
        graph.entry(to.to_owned()).or_default();
    };
    edge(&mut graph, "a", "b");
    edge(&mut graph, "b", "c");
    assert_eq!(find_cycle(&graph), None);
    edge(&mut graph, "c", "a");
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

#[test]
fn references_count_only_modules() {
    let modules: BTreeSet<String> = ["node", "after_func"]
        .iter()
        .map(|m| m.to_string())
        .collect();
    let text = "use crate::node::Node; crate::after_func::run(); crate::Context; $crate::node";
    let found = references(text, &modules);
    assert_eq!(found, modules);
    assert!(references("crate::Context crate::max_workers", &modules).is_empty());
}
