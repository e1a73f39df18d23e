//! Guards the layering of `custos-api`: each top-level module of `api/src` is a room on a floor,
//! and a room may import only rooms on strictly lower floors (or itself); every top-level module
//! must have a room; and the file-level import graph must have no circles.
//!
//! Run `cargo test -p custos-api --test architecture -- --nocapture` to see the picture. The
//! scanner is std only: it reads `crate::`, `super::`, `self::` and declared-child paths from the
//! sources with comments and literals blanked. It expands no macros and follows no `use` renames.
//! A path counts for the deepest module file on it (`crate::service::exports::f` is
//! `service/exports.rs` if that exists, else `service.rs`). A parent's `pub use child::Item` is
//! its facade, not an import; `lib.rs` and `main.rs` import nothing for this test.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// The floors of the target layout; each room is the top-level module of the same name. Higher
/// is a higher floor: a room may import only rooms of strictly lower rank, or itself.
#[rustfmt::skip]
const RANKS: &[(&str, u8)] = &[
    ("cli", 7), ("startup", 6), ("http", 5), ("graphql", 4), ("service", 3),
    ("auth", 2), ("infra", 1), ("error", 0), ("config", 0), ("telemetry", 0),
];

#[test]
fn api_layers_hold() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rooms: Vec<(&str, &str)> = RANKS.iter().map(|(room, _)| (*room, *room)).collect();
    let report = analyze(&src, &rooms, RANKS);
    let text = report.render();
    println!("{text}");
    let clean = report.upward.is_empty() && report.unranked.is_empty();
    assert!(
        clean && report.circles.is_empty(),
        "the api's layers do not hold:\n{text}"
    );
}

/// The picture of the `api/src` tree named by `CUSTOS_ARCH_SRC`, for comparing checkouts. Run
/// with `--ignored --nocapture` after the `--`, e.g. on an old checkout's tree:
/// `CUSTOS_ARCH_SRC=/old/api/src cargo test -p custos-api --test architecture -- --ignored`.
#[test]
#[ignore = "set CUSTOS_ARCH_SRC to an api/src directory"]
fn picture_of_another_tree() {
    // The pre-refactor (flat) layout, kept so the before/after picture can be re-run on an old
    // checkout. `authz` counts as auth: its policy half belongs there, and the GraphQL extension
    // it also holds is exactly what must show as upward.
    #[rustfmt::skip]
    const OLD_ROOMS: &[(&str, &str)] = &[
        ("cli", "cli"), ("bench", "cli"), ("bench_datasheets", "cli"), ("bench_privacy", "cli"),
        ("app", "startup"), ("http", "http"), ("graphql", "graphql"),
        ("service", "service"), ("history", "service"), ("reports", "service"),
        ("auth", "auth"), ("two_factor", "auth"), ("authz", "auth"),
        ("cluster", "infra"), ("keys", "infra"), ("subject_keys", "infra"), ("tenancy", "infra"),
        ("event_store", "infra"), ("projector", "infra"), ("integrity", "infra"),
        ("blind_index", "infra"),
        ("error", "error"), ("config", "config"), ("telemetry", "telemetry"),
    ];
    let src = std::env::var("CUSTOS_ARCH_SRC")
        .expect("CUSTOS_ARCH_SRC should name the api/src directory of the tree to picture");
    println!("{}", analyze(Path::new(&src), OLD_ROOMS, RANKS).render());
}

#[test]
fn scanner_reads_paths_but_not_comments_or_literals() {
    let text = r###"
use crate::{a::b, c::{d, e}};
// crate::zzz is only mentioned here, /* crate::zzz */ and /// crate::zzz too
/* nested /* crate::zzz */ crate::zzz */
fn f<'a>(x: &'a str) -> (&'a str, char, &'static str, &'_ [u8]) {
    (x, '"', r#"crate::yyy"#, b"crate::yyy")
}
const S: &str = "crate::yyy \" crate::yyy";
mod exports;
pub(crate) use exports::Ticket;
fn g() -> exports::Download { make() }
mod tests {
    use super::*;
}
"###;
    let found: Vec<(usize, String, bool)> = scan(text, &["service".to_owned()])
        .into_iter()
        .map(|r| (r.line, r.target.join("::"), r.reexport))
        .collect();
    let want = [
        (2, "a::b", false),
        (2, "c::d", false),
        (2, "c::e", false),
        (10, "service::exports::Ticket", true),
        (11, "service::exports::Download", false),
        (13, "service", false),
    ];
    let want: Vec<(usize, String, bool)> = want
        .iter()
        .map(|(l, p, r)| (*l, p.to_string(), *r))
        .collect();
    assert_eq!(found, want);
}

/// What [`analyze`] found: counts, then the three lists the layering test requires to be empty.
struct Report {
    files: usize,
    imports: usize,
    upward: Vec<String>,
    unranked: Vec<String>,
    circles: Vec<Vec<String>>,
}

impl Report {
    /// A summary line, then one indented line per finding.
    fn render(&self) -> String {
        let (up, un, circles) = (self.upward.len(), self.unranked.len(), self.circles.len());
        let largest = self.circles.iter().map(Vec::len).max().unwrap_or(0);
        let mut out = format!(
            "layers: {} files, {} imports, {up} upward, {un} unranked, {circles} circles \
             (largest {largest} files)\n",
            self.files, self.imports
        );
        let mut section = |title: String, lines: &[String]| {
            if !lines.is_empty() {
                let _ = writeln!(out, "{title}");
                lines.iter().for_each(|l| _ = writeln!(out, "  {l}"));
            }
        };
        section(
            "upward imports (a room may import only lower floors):".into(),
            &self.upward,
        );
        section("top-level modules without a room:".into(), &self.unranked);
        for circle in &self.circles {
            let files: Vec<String> = circle.iter().map(|f| format!("api/src/{f}")).collect();
            section(format!("circle of {} files:", circle.len()), &files);
        }
        out
    }
}

/// Builds the file-level import graph of the crate under `src` and checks it against the room
/// table (`rooms`: top-level module -> room; `ranks`: room -> floor).
fn analyze(src: &Path, rooms: &[(&str, &str)], ranks: &[(&str, u8)]) -> Report {
    let room_of = |top: &str| -> Option<(&str, u8)> {
        let room = rooms.iter().find(|(m, _)| *m == top)?.1;
        let rank = ranks
            .iter()
            .find(|(r, _)| *r == room)
            .map(|(_, rank)| *rank);
        Some((
            room,
            rank.unwrap_or_else(|| panic!("room {room} has no rank")),
        ))
    };
    let mut files = Vec::new();
    collect_rs(src, src, &mut files);
    files.sort();
    // Module path -> file (relative to src, `/`-separated), for every file but main.rs.
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .filter_map(|rel| Some((module_of(rel)?, rel.clone())))
        .collect();
    let read = |rel: &str| {
        let path = src.join(rel);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    };
    // What lib.rs re-exports (`pub use app::Application;` makes `crate::Application` app's).
    let root_names: BTreeMap<String, Vec<String>> = match modules.get(&Vec::new()) {
        Some(lib) => scan(&read(lib), &[])
            .into_iter()
            .filter(|r| r.reexport)
            .filter_map(|r| Some((r.target.last()?.clone(), r.target)))
            .collect(),
        None => BTreeMap::new(),
    };
    let (mut imports, mut upward, mut edges) = (0, Vec::new(), BTreeSet::new());
    for (module, rel) in &modules {
        let Some(top) = module.first() else { continue }; // lib.rs only declares and re-exports
        for r in scan(&read(rel), module) {
            let mut target = r.target;
            if let Some(full) = target.first().and_then(|n| root_names.get(n)) {
                if !modules.contains_key(&target[..1]) {
                    target.splice(..1, full.iter().cloned());
                }
            }
            // The deepest module file on the path: `crate::a::b::f` is a/b.rs, else a.rs.
            let Some((to_module, to)) = (1..=target.len())
                .rev()
                .find_map(|n| modules.get_key_value(&target[..n]))
            else {
                continue; // an item of the crate root itself, or no file of this crate
            };
            // A parent's `pub use child::Item` is its facade, not a dependency of its code.
            if to == rel || (r.reexport && to_module.starts_with(module)) {
                continue;
            }
            imports += 1;
            edges.insert((rel.clone(), to.clone()));
            if let (Some((a, r_a)), Some((b, r_b))) = (room_of(top), room_of(&to_module[0])) {
                if a != b && r_b >= r_a {
                    upward.push(format!(
                        "api/src/{rel}:{}: {a} (rank {r_a}) imports {b} (rank {r_b}) via {}",
                        r.line, r.written
                    ));
                }
            }
        }
    }
    let tops: BTreeSet<&String> = modules.keys().filter_map(|m| m.first()).collect();
    let unranked = (tops.into_iter())
        .filter(|top| !rooms.iter().any(|(m, _)| m == top))
        .map(|top| match modules.get(std::slice::from_ref(top)) {
            Some(file) => format!("api/src/{file}: `{top}` has no room"),
            None => format!("api/src/{top}/: `{top}` has no room"),
        })
        .collect();
    let circles = circles(&files, &edges);
    Report {
        files: files.len(),
        imports,
        upward,
        unranked,
        circles,
    }
}

/// Every `.rs` file under `dir`, relative to `root`, with `/` separators.
fn collect_rs(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry should be readable").path();
        if path.is_dir() {
            collect_rs(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).expect("a file under root");
            let parts: Vec<_> = rel.iter().map(|p| p.to_string_lossy()).collect();
            out.push(parts.join("/"));
        }
    }
}

/// `a/b/c.rs` (or `a/b/c/mod.rs`) is `a::b::c`; `lib.rs` is the root; `main.rs` is not a module.
fn module_of(rel: &str) -> Option<Vec<String>> {
    match rel {
        "main.rs" => None,
        "lib.rs" => Some(Vec::new()),
        _ => {
            let stem = rel.strip_suffix(".rs")?;
            let stem = stem.strip_suffix("/mod").unwrap_or(stem);
            Some(stem.split('/').map(str::to_owned).collect())
        }
    }
}

/// Strongly connected components of two or more files (Tarjan), largest first.
fn circles(files: &[String], edges: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    let id = |f: &String| files.binary_search(f).expect("edges join files");
    let n = files.len();
    let mut next = vec![Vec::new(); n];
    for (from, to) in edges {
        next[id(from)].push(id(to));
    }
    let mut t = Tarjan {
        next,
        index: vec![None; n],
        low: vec![0; n],
        ..Tarjan::default()
    };
    for v in 0..n {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }
    let mut out: Vec<Vec<String>> = (t.found.into_iter())
        .filter(|c| c.len() >= 2)
        .map(|c| {
            let mut names: Vec<String> = c.into_iter().map(|i| files[i].clone()).collect();
            names.sort();
            names
        })
        .collect();
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out
}

#[derive(Default)]
struct Tarjan {
    next: Vec<Vec<usize>>,
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    stack: Vec<usize>,
    counter: usize,
    found: Vec<Vec<usize>>,
}

impl Tarjan {
    fn visit(&mut self, v: usize) {
        (self.index[v], self.low[v]) = (Some(self.counter), self.counter);
        self.counter += 1;
        self.stack.push(v);
        for w in self.next[v].clone() {
            match self.index[w] {
                None => {
                    self.visit(w);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(i) if self.stack.contains(&w) => self.low[v] = self.low[v].min(i),
                Some(_) => {}
            }
        }
        if Some(self.low[v]) == self.index[v] {
            let at = self
                .stack
                .iter()
                .rposition(|&w| w == v)
                .expect("v on the stack");
            self.found.push(self.stack.split_off(at));
        }
    }
}

/// One crate-internal path in a file: its line, as written, and as an absolute module path.
struct Ref {
    line: usize,
    written: String,
    target: Vec<String>,
    /// Part of a `pub use` / `pub(..) use` statement.
    reexport: bool,
}

#[derive(PartialEq)]
enum Tok {
    Ident(String),
    Sep,
    Punct(char),
}

/// The crate-internal paths in `text`, the source of module `module`: `crate::`, `super::`,
/// `self::` and paths through children declared with `mod name;`, with `use` groups expanded.
/// Inside an inline `mod name { .. }`, `self`/`super` are relative to that inline module.
fn scan(text: &str, module: &[String]) -> Vec<Ref> {
    let toks = tokens(&strip(text));
    let ident = |k: usize| match toks.get(k) {
        Some((Tok::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let is = |k: usize, t: Tok| toks.get(k).is_some_and(|(x, _)| *x == t);
    let children: BTreeSet<&str> = (0..toks.len())
        .filter(|&k| ident(k) == Some("mod") && is(k + 2, Tok::Punct(';')))
        .filter_map(|k| ident(k + 1))
        .collect();
    let (mut k, mut depth, mut inline, mut refs) = (0, 0, Vec::<(&str, usize)>::new(), Vec::new());
    while k < toks.len() {
        let after = |p: Tok| is(k.wrapping_sub(1), p);
        match &toks[k].0 {
            Tok::Punct('{') => {
                depth += 1;
                let name = ident(k.wrapping_sub(1));
                if let (Some("mod"), Some(name)) = (ident(k.wrapping_sub(2)), name) {
                    inline.push((name, depth));
                }
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|&(_, d)| d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(w)
                if is(k + 1, Tok::Sep)
                    && !after(Tok::Sep)
                    && !after(Tok::Punct('.'))
                    && (["crate", "super", "self"].contains(&w.as_str())
                        || children.contains(w.as_str())) =>
            {
                let before = |n: usize| k.wrapping_sub(n);
                let reexport = ident(before(1)) == Some("use")
                    && (ident(before(2)) == Some("pub") || is(before(2), Tok::Punct(')')));
                let mut here = module.to_vec();
                here.extend(inline.iter().map(|(name, _)| name.to_string()));
                let mut leaves = Vec::new();
                k = use_tree(&toks, k, Vec::new(), &mut leaves);
                for (segs, line) in leaves {
                    if let Some(target) = resolve(&segs, module, &here) {
                        refs.push(Ref {
                            line,
                            written: segs.join("::"),
                            target,
                            reexport,
                        });
                    }
                }
                continue;
            }
            _ => {}
        }
        k += 1;
    }
    refs
}

/// Reads the path (or `use` tree) starting at token `k`, pushes each leaf with its line, and
/// returns the index after it. A glob leaf ends in `*`; `self` in a group stays as written.
fn use_tree(
    toks: &[(Tok, usize)],
    mut k: usize,
    mut segs: Vec<String>,
    leaves: &mut Vec<(Vec<String>, usize)>,
) -> usize {
    let is = |k: usize, t: Tok| toks.get(k).is_some_and(|(x, _)| *x == t);
    let mut line = toks.get(k).map_or(0, |t| t.1);
    match toks.get(k) {
        Some((Tok::Ident(s), l)) => {
            segs.push(s.clone());
            line = *l;
        }
        Some((Tok::Punct('*'), l)) => {
            segs.push("*".to_owned());
            leaves.push((segs, *l));
            return k + 1;
        }
        Some((Tok::Punct('{'), _)) => {
            k += 1;
            while k < toks.len() && !is(k, Tok::Punct('}')) {
                k = use_tree(toks, k, segs.clone(), leaves);
                if matches!(toks.get(k), Some((Tok::Ident(w), _)) if w == "as") {
                    k += 2; // `name as alias`: the alias is a local name only
                }
                if is(k, Tok::Punct(',')) {
                    k += 1;
                } else if !is(k, Tok::Punct('}')) {
                    return k; // not a group after all: leave the rest to the caller
                }
            }
            return k + 1;
        }
        _ => {}
    }
    let more = matches!(
        toks.get(k + 2),
        Some((Tok::Ident(_) | Tok::Punct('{' | '*'), _))
    );
    if is(k + 1, Tok::Sep) && more {
        return use_tree(toks, k + 2, segs, leaves);
    }
    if !segs.is_empty() {
        leaves.push((segs, line));
    }
    k + 1
}

/// The absolute module path of `segs`, written in file module `module` at (inline) module `here`.
fn resolve(segs: &[String], module: &[String], here: &[String]) -> Option<Vec<String>> {
    let (first, rest) = segs.split_first()?;
    let mut abs = match first.as_str() {
        "crate" => Vec::new(),
        "self" => here.to_vec(),
        "super" => here.split_last()?.1.to_vec(),
        child => module.iter().cloned().chain([child.to_owned()]).collect(),
    };
    for s in rest {
        match s.as_str() {
            "super" => _ = abs.pop()?,
            "self" | "*" => {}
            _ => abs.push(s.clone()),
        }
    }
    Some(abs)
}

/// Splits stripped source into identifiers (and numbers), `::` and single punctuation, each with
/// its line.
fn tokens(text: &str) -> Vec<(Tok, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let (mut out, mut line, mut i) = (Vec::new(), 1, 0);
    while i < chars.len() {
        let c = chars[i];
        if word(c) {
            let len = chars[i..].iter().take_while(|&&c| word(c)).count();
            out.push((Tok::Ident(chars[i..i + len].iter().collect()), line));
            i += len;
            continue;
        }
        if c == '\n' {
            line += 1;
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push((Tok::Sep, line));
            i += 1;
        } else if !c.is_whitespace() {
            out.push((Tok::Punct(c), line));
        }
        i += 1;
    }
    out
}

/// `text` with comments (line, doc, nested block) and string, raw string, byte and char
/// literals blanked, newlines kept. `'a` and `'_` are lifetimes and stay.
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    // The end of a quoted literal whose body starts at `k`, honouring backslash escapes.
    let quoted = |mut k: usize, q: char| {
        while k < c.len() && c[k] != q {
            k += if c[k] == '\\' { 2 } else { 1 };
        }
        (k + 1).min(c.len())
    };
    // The end of a raw string whose `#`s (if any) start at `k`; None for a raw identifier.
    let raw = |k: usize| {
        let hashes = c[k..].iter().take_while(|&&h| h == '#').count();
        let close: Vec<char> = std::iter::once('"')
            .chain(std::iter::repeat_n('#', hashes))
            .collect();
        let body = k + hashes + 1;
        let end = (body..c.len()).find(|&j| c[j..].starts_with(&close));
        (at(k + hashes) == '"').then(|| end.map_or(c.len(), |j| j + close.len()))
    };
    let (mut out, mut i) = (String::with_capacity(text.len()), 0);
    while i < c.len() {
        let fresh = i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        let end = match (c[i], at(i + 1)) {
            ('/', '/') => Some((i..c.len()).find(|&j| c[j] == '\n').unwrap_or(c.len())),
            ('/', '*') => {
                let (mut depth, mut j) = (0, i);
                while j < c.len() {
                    match (c[j], at(j + 1)) {
                        ('/', '*') => depth += 1,
                        ('*', '/') => depth -= 1,
                        _ => {
                            j += 1;
                            continue;
                        }
                    }
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                }
                Some(j.min(c.len()))
            }
            ('"', _) => Some(quoted(i + 1, '"')),
            ('b', '"' | '\'') if fresh => Some(quoted(i + 2, at(i + 1))),
            ('r', '"' | '#') if fresh => raw(i + 1),
            ('b', 'r') if fresh && matches!(at(i + 2), '"' | '#') => raw(i + 2),
            ('\'', '\\') => Some(quoted(i + 1, '\'')),
            ('\'', _) if at(i + 2) == '\'' => Some(i + 3),
            _ => None,
        };
        match end {
            Some(end) => {
                out.extend(
                    c[i..end]
                        .iter()
                        .map(|&ch| if ch == '\n' { ch } else { ' ' }),
                );
                i = end;
            }
            None => {
                out.push(c[i]);
                i += 1;
            }
        }
    }
    out
}
