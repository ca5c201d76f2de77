//! The shape of pool-runtime's source, as its design says it must stay:
//! the scheduler keeps policy and names no backend, the MPI backend uses
//! neither the local backend nor the scheduler's internals, and no two
//! modules import each other, directly or in a circle.
//!
//! Read from the sources: every `crate::…` and `super::…` path in code
//! (comments and doc comments aside) is an edge from its file's module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The modules whose edges are checked: each file belongs to the deepest
/// of these that contains it. `backend` itself (its `mod.rs`, the boundary
/// the scheduler sees) and the crate root are left out of the circle check:
/// they are the parents that hold the others together.
const UNITS: &[&str] = &[
    "async_result",
    "backend::child",
    "backend::forkserver",
    "backend::handshake",
    "backend::local",
    "backend::mpi",
    "backend::process",
    "backend::shm",
    "backend::slab",
    "builder",
    "call",
    "completion",
    "entry",
    "error",
    "imap",
    "in_order",
    "logging",
    "memory",
    "pool",
    "pool_options",
    "progress",
    "result_thread",
    "run",
    "scheduler",
    "shared",
    "stats",
    "sys",
    "worker",
];

/// The user-facing layer, above the scheduler.
const API: &[&str] = &[
    "async_result",
    "builder",
    "call",
    "pool",
    "pool_options",
    "progress",
    "result_thread",
    "run",
    "stats",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pool-runtime/src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file: `backend/local.rs` is
/// `backend::local`, `scheduler/mod.rs` is `scheduler`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The unit a module path belongs to (`None` for the root and `backend`).
fn unit_of(path: &[String]) -> Option<&'static str> {
    let joined = path.join("::");
    UNITS
        .iter()
        .filter(|u| joined == **u || joined.starts_with(&format!("{u}::")))
        .max_by_key(|u| u.len())
        .copied()
}

/// Code without comments, and its `crate::`/`super::` paths resolved to
/// module paths.
fn edges_of(file: &Path) -> BTreeSet<Vec<String>> {
    let text = std::fs::read_to_string(file).expect("read a source file");
    let module = module_of(file);
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        // Every path start: `crate::` or one or more `super::`.
        let mut rest = code;
        while let Some(at) = rest.find(['c', 's']) {
            let tail = &rest[at..];
            let boundary = at == 0
                || !rest[..at]
                    .chars()
                    .last()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_');
            let resolved = if !boundary {
                None
            } else if let Some(path) = tail.strip_prefix("crate::") {
                Some((Vec::new(), path))
            } else if tail.starts_with("super::") {
                let mut base = module.clone();
                let mut path = tail;
                while let Some(p) = path.strip_prefix("super::") {
                    base.pop();
                    path = p;
                }
                Some((base, path))
            } else {
                None
            };
            if let Some((mut base, path)) = resolved {
                // Module segments: lowercase identifiers followed by `::`,
                // or a `{` group whose lowercase entries are modules too.
                let mut segs = path.split("::");
                for seg in segs.by_ref() {
                    let name: String = seg
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if name.is_empty() || name.starts_with(|c: char| c.is_uppercase()) {
                        break;
                    }
                    base.push(name.clone());
                    if name.len() != seg.len() {
                        break;
                    }
                }
                out.insert(base);
            }
            rest = &tail[1..];
        }
    }
    out
}

/// Edges between units: `from -> {to}`, with the files that make them.
fn graph() -> BTreeMap<&'static str, BTreeMap<&'static str, BTreeSet<String>>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<&str, BTreeMap<&str, BTreeSet<String>>> = BTreeMap::new();
    for file in files {
        let Some(from) = unit_of(&module_of(&file)) else {
            continue;
        };
        for target in edges_of(&file) {
            if let Some(to) = unit_of(&target)
                && to != from
            {
                graph
                    .entry(from)
                    .or_default()
                    .entry(to)
                    .or_default()
                    .insert(
                        file.strip_prefix(src())
                            .unwrap_or(&file)
                            .display()
                            .to_string(),
                    );
            }
        }
    }
    graph
}

/// The units `from` imports among those `forbidden` says, with the files.
fn imports_of(from: &str, forbidden: impl Fn(&str) -> bool) -> Vec<String> {
    graph()
        .get(from)
        .into_iter()
        .flatten()
        .filter(|(to, _)| forbidden(to))
        .map(|(to, files)| format!("{to} (in {files:?})"))
        .collect()
}

#[test]
fn the_scheduler_names_no_backend() {
    let bad = imports_of("scheduler", |to| {
        to.starts_with("backend::") && to != "backend::handshake"
    });
    assert!(bad.is_empty(), "the scheduler imports {bad:?}");
}

#[test]
fn the_mpi_backend_uses_neither_the_local_backend_nor_the_scheduler() {
    let bad = imports_of("backend::mpi", |to| {
        ["backend::local", "scheduler"].contains(&to)
    });
    assert!(bad.is_empty(), "the MPI backend imports {bad:?}");
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let graph = graph();
    // Depth-first search for a cycle; report the first one found.
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, BTreeMap<&'a str, BTreeSet<String>>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(at) = stack.iter().position(|n| *n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node);
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node);
        for next in graph.get(node).into_iter().flat_map(|m| m.keys()) {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node);
        None
    }
    // The API layer (pool, builder, async results, calls) may refer back
    // and forth (`Pool::builder()` and `PoolBuilder::build()`); below it,
    // no circle.
    let graph: BTreeMap<&str, BTreeMap<&str, BTreeSet<String>>> = graph
        .into_iter()
        .filter(|(from, _)| !API.contains(from))
        .map(|(from, to)| {
            (
                from,
                to.into_iter().filter(|(t, _)| !API.contains(t)).collect(),
            )
        })
        .collect();
    let mut done = BTreeSet::new();
    for node in UNITS {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(node, &graph, &mut stack, &mut done) {
            let detail: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {} ({:?})", w[0], w[1], graph[w[0]][w[1]]))
                .collect();
            panic!(
                "modules import each other in a circle:\n{}",
                detail.join("\n")
            );
        }
    }
}

/// The check itself sees edges: the scheduler uses the backend boundary
/// and the worker uses the system calls.
#[test]
fn the_import_graph_is_read() {
    let graph = graph();
    assert!(graph["backend::local"].contains_key("backend::process"));
    assert!(graph["worker"].contains_key("sys"));
    assert!(graph["entry"].contains_key("worker"));
}
