//! The daemons' and the gate's modules import each other one way only (issues 26, 28): a
//! circle — `a` imports `b`, which imports `a` — means neither can be read, tested or changed
//! without the other. This reads each crate's `src/` as it is at test time and fails naming
//! the circle if one comes back.
//!
//! A module is a file under `src/`, or a directory there as a whole (`sink/dir.rs` is
//! `sink`): files that share a directory are one job. An import is a `crate::m` path in code
//! (`use crate::{a, b::C}` too); comments, string literals and items under `#[cfg(test)]` are
//! not read. Cross-module paths in these crates are written from `crate::` (not `super::`),
//! so that is all it looks for. `crate::X` where `X` is no module is the crate root
//! (`lib.rs`), which declares every module and so depends on all of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → the modules it imports.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The crate root's node.
const ROOT: &str = "lib";

/// A crate's `src/`, from the workspace root.
fn src_of(krate: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src")
}

/// Fails naming the circle in `krate`, after checking the graph holds `known` imports (a
/// reader that found none would pass anything).
fn assert_one_way(krate: &str, known: &[(&str, &str)]) {
    let graph = read_graph(&src_of(krate));
    for (module, import) in known {
        assert!(
            graph
                .get(*module)
                .is_some_and(|imports| imports.contains(*import)),
            "{krate}: {module} imports {import}, but the graph read from src/ lacks it:\n{}",
            show(&graph)
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "{krate}'s modules import each other in a circle: {}\n\
             (move what the circle is about to the module that owns it)\n{}",
            cycle.join(" → "),
            show(&graph)
        );
    }
}

#[test]
fn the_receivers_modules_import_each_other_one_way_only() {
    assert_one_way(
        "receiver",
        &[
            ("publisher", "gate"),
            ("publisher", "sink"),
            ("state", "records"),
        ],
    );
}

#[test]
fn the_senders_modules_import_each_other_one_way_only() {
    assert_one_way("sender", &[]);
}

#[test]
fn the_gates_modules_import_each_other_one_way_only() {
    assert_one_way(
        "inspect",
        &[
            ("policy", "formats"),
            ("formats", "inspector"),
            ("inspector", "zipmap"),
        ],
    );
}

#[test]
fn the_cycle_finder_names_a_circle_and_passes_a_dag() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (from, to) in edges {
            g.entry(from.to_string())
                .or_default()
                .insert(to.to_string());
            g.entry(to.to_string()).or_default();
        }
        g
    };
    let dag = graph(&[("a", "b"), ("a", "c"), ("b", "c"), ("d", "a")]);
    assert_eq!(find_cycle(&dag), None);
    let circle = graph(&[("a", "b"), ("b", "c"), ("c", "d"), ("d", "b"), ("a", "d")]);
    assert_eq!(
        find_cycle(&circle).map(|c| c.join(" → ")),
        Some("b → c → d → b".to_string())
    );
    assert_eq!(
        find_cycle(&graph(&[("a", "a")])).map(|c| c.join(" → ")),
        Some("a → a".to_string())
    );
}

#[test]
fn a_circle_through_a_directory_module_is_found_and_test_imports_are_not_one() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("sink")).unwrap();
    let write = |file: &str, text: &str| std::fs::write(src.join(file), text).unwrap();
    write("lib.rs", "mod a; mod b; mod sink;");
    write("main.rs", "use crate::b::B;"); // the binary: another crate
    write("a.rs", "use crate::b::B; pub struct A;");
    write(
        "b.rs",
        "pub struct B;\n#[cfg(test)]\nmod tests { use crate::sink::S; }",
    );
    write("sink/mod.rs", "mod dir; pub struct S;");
    write("sink/dir.rs", "use crate::a::A;");
    assert_eq!(find_cycle(&read_graph(src)), None);

    write("b.rs", "use crate::sink::S; pub struct B;");
    assert_eq!(
        find_cycle(&read_graph(src)).map(|c| c.join(" → ")),
        Some("a → b → sink → a".to_string())
    );
    // An item of the crate root is an import of the root, which declares every module.
    write("b.rs", "use crate::A; pub struct B;");
    assert_eq!(
        find_cycle(&read_graph(src)).map(|c| c.join(" → ")),
        Some("a → b → lib → a".to_string())
    );
}

#[test]
fn imports_are_crate_paths_in_code_not_in_comments_strings_or_tests() {
    let source = r##"
//! See [`x`](crate::commented).
use crate::{context::{self, Context}, failure::Failure};
use crate::state::ObjectKey;
/* crate::blocked /* nested */ crate::still_blocked */
pub(crate) fn f<'a>(s: &'a str) -> char {
    let _ = crate::publish::place;
    let _ = ("crate::quoted", r#"crate::raw "quoted""#, b"crate::bytes", '{', '\'');
    let _ = $crate::macro_path;
    let _ = sluice_crate::other;
    crate::ROOT_ITEM
}
#[cfg(test)]
use crate::test_use;
#[cfg(test)]
mod tests {
    use crate::tested::{A, B};
    fn g() { let _ = '}'; }
}
fn after() -> crate::after_tests::T {}
"##;
    let found = imports_of(source);
    let expected = [
        "context",
        "failure",
        "state",
        "publish",
        "ROOT_ITEM",
        "after_tests",
    ];
    assert_eq!(
        found,
        expected
            .iter()
            .map(|m| m.to_string())
            .collect::<BTreeSet<_>>()
    );
}

/// One line per module: `module: its imports`.
fn show(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(module, imports)| {
            let imports: Vec<&str> = imports.iter().map(String::as_str).collect();
            format!("{module}: {}\n", imports.join(" "))
        })
        .collect()
}

/// Reads every `.rs` file under `src` (but `main.rs`, the binary, another crate).
fn read_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    collect_files(src, &mut files);
    let module_of = |file: &Path| -> String {
        let relative = file.strip_prefix(src).expect("under src");
        let first = relative.components().next().expect("a path");
        let first = first.as_os_str().to_str().expect("a UTF-8 name");
        match first.strip_suffix(".rs") {
            Some("lib") => ROOT.to_string(),
            Some(name) => name.to_string(),
            None => first.to_string(), // a directory: one module
        }
    };
    let files: Vec<_> = files
        .into_iter()
        .filter(|f| f.strip_prefix(src).ok() != Some(Path::new("main.rs")))
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let module = module_of(file);
        let source = std::fs::read_to_string(file).expect("a readable source file");
        let imports = graph.entry(module.clone()).or_default();
        for name in imports_of(&source) {
            let target = if modules.contains(&name) {
                name
            } else {
                ROOT.to_string()
            };
            if target != module {
                imports.insert(target);
            }
        }
    }
    let all: BTreeSet<String> = modules.iter().filter(|m| *m != ROOT).cloned().collect();
    graph.entry(ROOT.to_string()).or_default().extend(all);
    graph
}

fn collect_files(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a readable directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The first segment of every `crate::` path in the code of `source`.
fn imports_of(source: &str) -> BTreeSet<String> {
    imports(&drop_test_items(&strip(source)))
}

/// A circle in `graph` as its modules in order, the first repeated at the end; `None` if
/// there is none. Depth-first, in name order, so the same graph names the same circle.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    enum Seen {
        OnPath,
        Done,
    }
    fn visit<'g>(
        graph: &'g Graph,
        module: &'g str,
        seen: &mut BTreeMap<&'g str, Seen>,
        path: &mut Vec<&'g str>,
    ) -> Option<Vec<String>> {
        seen.insert(module, Seen::OnPath);
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            match seen.get(next.as_str()) {
                Some(Seen::OnPath) => {
                    let start = path.iter().position(|m| *m == next).expect("on the path");
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|m| m.to_string()).collect();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(Seen::Done) => {}
                None => {
                    if let Some(cycle) = visit(graph, next, seen, path) {
                        return Some(cycle);
                    }
                }
            }
        }
        path.pop();
        seen.insert(module, Seen::Done);
        None
    }
    let mut seen = BTreeMap::new();
    for module in graph.keys() {
        if !seen.contains_key(module.as_str()) {
            if let Some(cycle) = visit(graph, module, &mut seen, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

/// `source` without comments, and with string and character literals emptied: what is left
/// is code, so a path in a doc comment or a message is not taken for an import.
fn strip(source: &str) -> String {
    let s: Vec<char> = source.chars().collect();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && (i == 0 || !ident(s[i - 1]) || (s[i - 1] == 'b' && (i < 2 || !ident(s[i - 2]))))
            && matches!(next, Some('"' | '#'))
        {
            // A raw string: r"…", r#"…"#, br#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while s.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if s.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            while j < s.len() {
                if s[j] == '"' && (1..=hashes).all(|k| s.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < s.len() && s[i] != '"' {
                i += if s[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next == Some('\\') {
            // An escaped character literal: '\n', '\'', '\u{7f}' (past the escaped character,
            // which may be the quote).
            i += 3;
            while i < s.len() && s[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c == '\'' && s.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else {
            // Code, and the quote of a lifetime.
            out.push(c);
            i += 1;
        }
    }
    out
}

/// `code` (from [`strip`]) without the items under `#[cfg(test)]`: each runs to its first `;`
/// or to the `}` that closes its body, outside any bracket.
fn drop_test_items(code: &str) -> String {
    const ATTRIBUTE: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find(ATTRIBUTE) {
        out.push_str(&rest[..at]);
        let item = &rest[at + ATTRIBUTE.len()..];
        let mut depth = 0i32;
        let mut end = item.len();
        for (i, c) in item.char_indices() {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' => depth -= 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The first segment after every `crate::` in `code` (from [`strip`]), each of a group's
/// paths in `crate::{a::X, b}`.
fn imports(code: &str) -> BTreeSet<String> {
    const CRATE: &str = "crate::";
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let read_ident = |s: &str| -> String { s.chars().take_while(|c| ident(*c)).collect() };
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices(CRATE) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| ident(c) || c == '$' || c == ':') {
            continue;
        }
        let path = code[at + CRATE.len()..].trim_start();
        if let Some(group) = path.strip_prefix('{') {
            // Each path of the group starts after `{` or a `,` at the group's own depth.
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start => {
                        start = false;
                        found.insert(read_ident(&group[i..]));
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(read_ident(path));
        }
    }
    found.retain(|name| !name.is_empty() && name != "self");
    found
}
