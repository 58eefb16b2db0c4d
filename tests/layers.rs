//! The layer rule of `src/`, checked on every test run.
//!
//! Every import points down:
//!
//! ```text
//! entry     main.rs, app.rs, cli/
//! drivers   routes/ (a request), watch/ (a schedule): what sets a role going
//! roles     handover/ (self-upgrade), companion/ (other containers)
//! backend   swarm/: the self-upgrade's second backend, which only handover/ picks
//! shared    recreate/: what both roles need, the upgrade interface among it
//! base      everything else: docker, registry, config, events, state, ...
//! ```
//!
//! A file may import its own layer or a lower one; the roles never import
//! each other, nor do the drivers; only the self-upgrade imports the Swarm
//! backend; and no files import each other in a circle. An import is any path into the crate: a `use` of `crate::`,
//! `super::`, `self::` or a child module, or such a path written inline.
//! Comments are left out; test modules count like the code beside them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer of a top-level module, and its room: files of two rooms of the
/// same layer may import each other only in the shared and base layers.
fn layer_of(top: &str) -> (u8, &'static str) {
    match top {
        "main" | "app" | "cli" => (6, "entry"),
        "routes" => (5, "routes"),
        "watch" => (5, "watch"),
        "handover" => (4, "handover"),
        "companion" => (4, "companion"),
        "swarm" => (3, "swarm"),
        "recreate" => (2, "shared"),
        _ => (1, "base"),
    }
}

/// A file's module path: `src/a/b.rs` is `a::b`, `src/a/mod.rs` is `a`,
/// `src/lib.rs` is the root and `src/main.rs` is `main`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments and string literals' contents, line by line
/// (so that line numbers stay right).
fn code_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        let mut kept = String::new();
        let mut chars = line.chars().peekable();
        let mut in_str = false;
        while let Some(c) = chars.next() {
            if in_block {
                if c == '*' && chars.peek() == Some(&'/') {
                    chars.next();
                    in_block = false;
                }
                continue;
            }
            if in_str {
                if c == '\\' {
                    chars.next();
                } else if c == '"' {
                    in_str = false;
                    kept.push('"');
                }
                continue;
            }
            match c {
                '/' if chars.peek() == Some(&'/') => break,
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    in_block = true;
                }
                '"' => {
                    in_str = true;
                    kept.push('"');
                }
                // A char literal such as '"' must not open a string.
                '\'' => {
                    kept.push(c);
                    let rest: String = chars.clone().take(3).collect();
                    if rest.starts_with("\\") {
                        // '\x': skip to the closing quote
                        for c in chars.by_ref() {
                            if c == '\'' {
                                break;
                            }
                        }
                    } else if rest.chars().nth(1) == Some('\'') {
                        chars.next();
                        chars.next();
                    }
                }
                _ => kept.push(c),
            }
        }
        out.push(kept);
    }
    out
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into its paths.
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    fn split_top(s: &str) -> Vec<&str> {
        let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
        for (i, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        parts
    }
    let mut out = Vec::new();
    for part in split_top(tree) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        if let (Some(open), Some(close)) = (part.find('{'), part.rfind('}')) {
            let prefix: Vec<String> = squeeze(&part[..open])
                .trim_end_matches("::")
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            for sub in expand_use(&part[open + 1..close]) {
                let mut path = prefix.clone();
                path.extend(sub);
                out.push(path);
            }
        } else {
            let path = squeeze(part.split(" as ").next().unwrap_or(part));
            out.push(path.split("::").filter(|s| !s.is_empty()).map(str::to_string).collect());
        }
    }
    out
}

struct Crate {
    /// Module path -> file.
    modules: BTreeMap<Vec<String>, PathBuf>,
}

impl Crate {
    /// The file a path starting at module `at` lands in, if it names a part
    /// of this crate: the longest prefix that is a module.
    fn resolve(&self, at: &[String], path: &[String]) -> Option<PathBuf> {
        let first = path.first()?;
        // Inside an inline module (`mod tests`), a path that stays within
        // the file's own module lands in the file itself.
        let (mut base, rest): (Vec<String>, &[String]) = match first.as_str() {
            "crate" => (Vec::new(), &path[1..]),
            "self" => (at.to_vec(), &path[1..]),
            "super" => {
                let mut base = at.to_vec();
                let mut rest = path;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                (base, rest)
            }
            _ => {
                let mut child = at.to_vec();
                child.push(first.clone());
                if !self.modules.contains_key(&child) {
                    return None;
                }
                (at.to_vec(), path)
            }
        };
        let mut found = self.modules.get(&base).cloned();
        let mut up = base.clone();
        while found.is_none() && !up.is_empty() {
            up.pop();
            found = self.modules.get(&up).cloned();
        }
        for seg in rest {
            base.push(seg.clone());
            match self.modules.get(&base) {
                Some(file) => found = Some(file.clone()),
                None => break,
            }
        }
        found
    }
}

/// Every import of every file: (from, line, to).
fn imports(src: &Path) -> (Vec<(PathBuf, usize, PathBuf)>, Crate) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .filter(|f| !f.ends_with("main.rs") || f.parent() != Some(src))
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    let krate = Crate { modules };
    let mut edges = Vec::new();
    for file in &files {
        let at = if file.parent() == Some(src) && file.ends_with("main.rs") {
            vec!["main".to_string()]
        } else {
            module_of(src, file)
        };
        let lines = code_lines(&std::fs::read_to_string(file).unwrap());
        // Each line's module: the file's, or an inline `mod x { ... }` in it.
        let mut scopes: Vec<(usize, String)> = Vec::new();
        let mut depth = 0usize;
        let mut line_module = Vec::with_capacity(lines.len());
        for line in &lines {
            let t = line.trim_start();
            let t = ["pub(crate) ", "pub(super) ", "pub "]
                .iter()
                .find_map(|p| t.strip_prefix(p))
                .unwrap_or(t);
            if let Some(name) = t.strip_prefix("mod ").and_then(|r| r.strip_suffix('{'))
                && !name.trim().is_empty()
            {
                scopes.push((depth, name.trim().to_string()));
            }
            let mut module = at.clone();
            module.extend(scopes.iter().map(|(_, n)| n.clone()));
            line_module.push(module);
            for c in line.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth = depth.saturating_sub(1);
                        if scopes.last().is_some_and(|(d, _)| *d == depth) {
                            scopes.pop();
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut paths: Vec<(usize, Vec<String>)> = Vec::new();
        // `use` statements, possibly over several lines.
        let mut i = 0;
        while i < lines.len() {
            let t = lines[i].trim_start();
            let t = t
                .strip_prefix("pub(crate) ")
                .or(t.strip_prefix("pub(super) "))
                .unwrap_or(t);
            let t = t.strip_prefix("pub ").unwrap_or(t);
            if let Some(rest) = t.strip_prefix("use ") {
                let mut stmt = rest.to_string();
                let start = i;
                while !stmt.contains(';') && i + 1 < lines.len() {
                    i += 1;
                    stmt.push_str(&lines[i]);
                }
                let stmt = stmt.split(';').next().unwrap();
                for path in expand_use(stmt) {
                    paths.push((start + 1, path));
                }
            } else {
                // Inline paths: `crate::a::b`, `super::x`, `child::y`.
                let bytes: Vec<char> = lines[i].chars().collect();
                let mut j = 0;
                while j < bytes.len() {
                    let starts_word =
                        j == 0 || !(bytes[j - 1].is_alphanumeric() || bytes[j - 1] == '_' || bytes[j - 1] == ':');
                    if starts_word && (bytes[j].is_alphabetic() || bytes[j] == '_') {
                        let mut k = j;
                        while k < bytes.len() && (bytes[k].is_alphanumeric() || bytes[k] == '_' || bytes[k] == ':') {
                            k += 1;
                        }
                        let word: String = bytes[j..k].iter().collect();
                        if word.contains("::") {
                            let path: Vec<String> =
                                word.split("::").filter(|s| !s.is_empty()).map(str::to_string).collect();
                            paths.push((i + 1, path));
                        }
                        j = k;
                    } else {
                        j += 1;
                    }
                }
            }
            i += 1;
        }
        for (line, path) in paths {
            if let Some(to) = krate.resolve(&line_module[line - 1], &path)
                && &to != file
            {
                edges.push((file.clone(), line, to));
            }
        }
    }
    (edges, krate)
}

fn top(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.iter().next().unwrap().to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_import_points_down_and_the_roles_never_import_each_other() {
    let src = src_dir();
    let (edges, _) = imports(&src);
    assert!(
        edges.len() > 100,
        "the import reader found only {} imports",
        edges.len()
    );
    let mut wrong = BTreeSet::new();
    for (from, line, to) in &edges {
        let (a, b) = (top(&src, from), top(&src, to));
        let ((la, ra), (lb, rb)) = (layer_of(&a), layer_of(&b));
        let up = lb > la;
        let across = la == lb && ra != rb && la >= 4;
        // The Swarm backend is the self-upgrade's: the entry may wire it,
        // companion mode and the drivers reach it only through handover/.
        let swarm = rb == "swarm" && ra != "swarm" && ra != "handover" && ra != "entry";
        if up || across || swarm {
            wrong.insert(format!(
                "{}:{line} ({ra}) imports {} ({rb})",
                from.strip_prefix(&src).unwrap().display(),
                to.strip_prefix(&src).unwrap().display()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let src = src_dir();
    let (edges, _) = imports(&src);
    let mut graph: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (from, _, to) in &edges {
        graph.entry(from.clone()).or_default().insert(to.clone());
        graph.entry(to.clone()).or_default();
    }
    // Tarjan's strongly connected components.
    struct Walk<'a> {
        graph: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        circles: Vec<Vec<&'a PathBuf>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a PathBuf) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in &self.graph[v] {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut circle = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    circle.push(w);
                    if w == v {
                        break;
                    }
                }
                if circle.len() > 1 {
                    self.circles.push(circle);
                }
            }
        }
    }
    let mut walk = Walk {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        circles: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    let shown: Vec<String> = walk
        .circles
        .iter()
        .map(|c| {
            let names: Vec<String> = c
                .iter()
                .map(|f| f.strip_prefix(&src).unwrap().display().to_string())
                .collect();
            format!("{} files: {}", names.len(), names.join(", "))
        })
        .collect();
    assert!(shown.is_empty(), "import circles:\n{}", shown.join("\n"));
}

#[test]
fn the_import_reader_sees_use_trees_and_relative_paths() {
    let paths = expand_use("crate::{docker::{Engine, DockerError}, state::Shared as S}");
    assert_eq!(
        paths,
        vec![
            vec!["crate", "docker", "Engine"],
            vec!["crate", "docker", "DockerError"],
            vec!["crate", "state", "Shared"],
        ]
    );
    let lines = code_lines("let a = \"crate::x\"; // crate::y\nuse crate::z;");
    assert!(!lines[0].contains("crate::"), "{lines:?}");
    assert!(lines[1].contains("crate::z"));
}
