//! The layout's rules, read from `src/` (docs/architecture.md explains
//! them):
//!
//! 1. `src/domain/` is pure: no file there names a runtime crate (`worker`,
//!    `wasm_bindgen`, `js_sys`, `web_sys`) or the runtime layer.
//! 2. Raw JavaScript interop (`extern` blocks, `#[wasm_bindgen]`) lives in
//!    `src/runtime/js/`, and the exports `src/shim.js` calls in
//!    `src/runtime/entry.rs`; nowhere else.
//! 3. `src/runtime/js/` depends on nothing of the runtime above it.
//! 4. No import circles between the files of `src/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const RUNTIME_CRATES: [&str; 4] = ["worker", "wasm_bindgen", "js_sys", "web_sys"];

/// Every `.rs` file under `src/`, as a path relative to the crate root,
/// with its text stripped of comments.
fn sources() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = BTreeMap::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read file");
                let relative = path.strip_prefix(root).expect("under root");
                files.insert(slash(relative), code_only(&text));
            }
        }
    }
    files
}

fn slash(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The text without `//` comments (doc comments included), so that prose
/// naming "the worker" is not code naming `worker`.
fn code_only(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal (a URL) is kept.
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `code` names crate `name`: `name::...`, `use name`, or (for
/// wasm-bindgen) its attribute.
fn names_crate(code: &str, name: &str) -> bool {
    let bytes = code.as_bytes();
    code.match_indices(name).any(|(at, _)| {
        let starts = at == 0
            || !matches!(bytes[at - 1], b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b':');
        let after = &code[at + name.len()..];
        starts
            && (after.starts_with("::")
                || code[..at].trim_end().ends_with("use")
                || code[..at].ends_with("#["))
    })
}

/// What rule 1 finds wrong in the domain's files.
fn domain_violations(files: &BTreeMap<String, String>) -> Vec<String> {
    let mut found = Vec::new();
    for (path, code) in files.iter().filter(|(p, _)| p.starts_with("src/domain/")) {
        for name in RUNTIME_CRATES {
            if names_crate(code, name) {
                found.push(format!("{path} names the runtime crate `{name}`"));
            }
        }
        if code.contains("crate::runtime") {
            found.push(format!("{path} imports the runtime layer"));
        }
    }
    found
}

/// What rule 2 finds wrong: JavaScript interop outside its two places.
fn interop_violations(files: &BTreeMap<String, String>) -> Vec<String> {
    let allowed =
        |path: &str| path.starts_with("src/runtime/js/") || path == "src/runtime/entry.rs";
    files
        .iter()
        .filter(|(path, _)| !allowed(path))
        .filter(|(_, code)| code.contains("extern \"C\"") || code.contains("#[wasm_bindgen"))
        .map(|(path, _)| format!("{path} declares JavaScript bindings or exports"))
        .collect()
}

/// The file a module path (`crate::runtime::js::socket::X`) resolves to:
/// the longest prefix that is a file, through the crate root's re-exports
/// of the domain's modules.
fn resolve(files: &BTreeMap<String, String>, segments: &[&str]) -> Option<String> {
    let mut segments: Vec<&str> = segments.to_vec();
    if segments
        .first()
        .is_some_and(|s| *s != "domain" && *s != "runtime")
    {
        segments.insert(0, "domain");
    }
    (1..=segments.len()).rev().find_map(|n| {
        let base = format!("src/{}", segments[..n].join("/"));
        [format!("{base}.rs"), format!("{base}/mod.rs")]
            .into_iter()
            .find(|candidate| files.contains_key(candidate))
    })
}

/// The module path of a file (`src/runtime/js/socket.rs` → runtime, js, socket).
fn module_of(path: &str) -> Vec<String> {
    let inner = path.trim_start_matches("src/").trim_end_matches(".rs");
    let inner = inner.trim_end_matches("/mod").trim_end_matches("lib");
    inner
        .split('/')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Each file's imports of other files of `src/`: `crate::`, `super::` and
/// `self::` paths anywhere in its code.
fn imports(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (path, code) in files {
        // `self::` is the file's own module, `super::` its parent.
        let module = module_of(path);
        let parent = module[..module.len().saturating_sub(1)].to_vec();
        let mut edges = BTreeSet::new();
        for (root, base) in [
            ("crate::", Vec::new()),
            ("super::", parent),
            ("self::", module),
        ] {
            for (at, _) in code.match_indices(root) {
                let before = at.checked_sub(1).map(|i| code.as_bytes()[i]);
                if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'_') {
                    continue;
                }
                for tail in import_paths(&code[at + root.len()..]) {
                    let mut segments: Vec<&str> = base.iter().map(String::as_str).collect();
                    segments.extend(tail.split("::").filter(|s| !s.is_empty()));
                    if let Some(target) = resolve(files, &segments) {
                        if &target != path {
                            edges.insert(target);
                        }
                    }
                }
            }
        }
        graph.insert(path.clone(), edges);
    }
    graph
}

/// The paths one import names after its root: `a::b::C`, or each item of
/// a group (`{a, b::C}`, one level deep), which names siblings, not the
/// module the group is in.
fn import_paths(rest: &str) -> Vec<String> {
    let word = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect()
    };
    let head = word(rest);
    let after = &rest[head.len()..];
    match after.strip_prefix('{') {
        Some(group) => {
            let inner = group.split('}').next().unwrap_or("");
            inner
                .split(',')
                .map(|item| format!("{head}{}", word(item.trim())))
                .collect()
        }
        None => vec![head],
    }
}

/// Import circles: each as the files on it, in order.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            found.push(stack[at..].to_vec());
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, stack, done, found);
        }
        stack.pop();
        done.insert(node.to_owned());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn the_domain_is_pure() {
    let violations = domain_violations(&sources());
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn javascript_interop_lives_in_runtime_js_and_the_entry() {
    let violations = interop_violations(&sources());
    assert!(violations.is_empty(), "{violations:#?}");
}

/// What rule 3 finds wrong: the JS crossings importing the runtime above.
fn upward_imports(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    graph
        .iter()
        .filter(|(path, _)| path.starts_with("src/runtime/js/"))
        .flat_map(|(path, edges)| {
            edges
                .iter()
                .filter(|to| !to.starts_with("src/runtime/js/") && !to.starts_with("src/domain/"))
                .map(move |to| format!("{path} -> {to}"))
        })
        .collect()
}

#[test]
fn runtime_js_depends_only_on_the_domain_and_itself() {
    let upward = upward_imports(&imports(&sources()));
    assert!(upward.is_empty(), "{upward:#?}");
}

#[test]
fn no_import_circles() {
    let files = sources();
    let found = circles(&imports(&files));
    assert!(found.is_empty(), "import circles: {found:#?}");
}

/// The checks themselves catch what they are for: each is run on a copy of
/// `src/` with one rule broken.
#[test]
fn each_rule_fails_when_broken() {
    let files = sources();
    let mut broken = files.clone();
    broken
        .get_mut("src/domain/filter.rs")
        .expect("filter.rs")
        .push_str("\nfn leak() { let _ = worker::js_sys::Date::now(); }\n");
    assert!(!domain_violations(&broken).is_empty());
    let mut broken = files.clone();
    broken
        .get_mut("src/runtime/object/mod.rs")
        .expect("object")
        .push_str("\n#[wasm_bindgen]\nextern \"C\" { fn f(); }\n");
    assert!(!interop_violations(&broken).is_empty());
    let mut broken = files.clone();
    broken
        .get_mut("src/domain/protocol.rs")
        .expect("protocol.rs")
        .push_str("\nuse crate::domain::acks::Tracking;\n");
    broken
        .get_mut("src/domain/acks.rs")
        .expect("acks.rs")
        .push_str("\nuse crate::protocol::Envelope;\n");
    assert!(!circles(&imports(&broken)).is_empty());
    let mut broken = files;
    broken
        .get_mut("src/runtime/js/socket.rs")
        .expect("socket.rs")
        .push_str("\nuse crate::runtime::settings::Settings;\n");
    assert!(!upward_imports(&imports(&broken)).is_empty());
}
