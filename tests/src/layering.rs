//! The layering check: the import rules written in docs/architecture.md, checked against the
//! `crate::` imports of boot-userspace/src, so the architecture picture is kept true by CI.
//!
//! The document's ```` ```layers ```` block lists layers lowest first, each with its
//! components (module paths); a file belongs to the component with the longest matching
//! prefix, so `services/dhcp/server.rs` (`services::dhcp::server`) is in `services::dhcp`.
//! Every path from one component into another is an edge (paths inside one component are
//! not); [`check`] fails on:
//! - an edge that goes up the layer order ([`Violation::Upward`]);
//! - an edge between two components of one layer, unless the ```` ```layers-allow ```` block
//!   lists that layer ([`Violation::Sideways`]);
//! - any circle of edges, allowed layers included ([`Violation::Circle`], found as the
//!   strongly connected components of the component graph, each edge shown on a circle);
//! - a file in no component, unless it is nothing but `mod` and `use` declarations that
//!   reach nothing through `crate::`, `super::` or `self::`, such as `lib.rs`
//!   ([`Violation::Uncovered`]), and a path into a module no component covers
//!   ([`Violation::Unresolved`]);
//! - `anyhow` in a file outside the layers of the ```` ```anyhow ```` block
//!   ([`Violation::Anyhow`]);
//! - a listed component that no file is ([`Violation::MissingComponent`]).
//!
//! [`check_repo`] adds the README: its layout block must list exactly the crate's top-level
//! modules ([`Violation::ReadmeUnlisted`], [`Violation::ReadmeStale`]).
//!
//! What counts as an import: `use` declarations (nested groups over many lines, `pub use`,
//! globs) and paths written inline in expressions and types, rooted at `crate::`,
//! `super::`, `self::` or a child module the same module declares. Comments, doc comments
//! and string literals are stripped first, so a doc link to `crate::admin` is no import.
//! `#[cfg(test)]` code counts like any other code: a test that imports upward is still an
//! upward import. `main.rs` is the binary's own crate (it reaches the library as
//! `bootfabric::`), so it is not scanned, and `anyhow` is allowed there. `#[path]`
//! attributes and `include!` are not followed.
//!
//! The parsing is std-only, a small lexer rather than a Rust parser: [`lex`] strips and
//! tokenizes, [`refs`] finds and resolves paths, [`table`] reads the document, [`readme`]
//! the README's layout block.

mod lex;
mod readme;
mod refs;
mod table;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    fmt,
    path::Path,
};

pub use table::{parse_table, Layer, Place, Table, TableError};

/// The library's source root, relative to the repository root.
pub const SRC: &str = "boot-userspace/src/";
/// The document holding the layer table, relative to the repository root.
pub const ARCHITECTURE: &str = "docs/architecture.md";
/// The document holding the source layout block (once the README's), relative to the repository
/// root: docs/architecture.md, beside the layer table.
pub const README: &str = "docs/architecture.md";

/// A place in a source file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Site {
    /// Path from the repository root (`boot-userspace/src/model/ledger.rs`).
    pub path: String,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path, self.line)
    }
}

/// One edge of a circle: `from` uses `to`, first at `site`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircleEdge {
    /// The importing component.
    pub from: String,
    /// The imported component.
    pub to: String,
    /// The first place `from` uses `to`.
    pub site: Site,
}

/// A broken rule. Its `Display` is one line an operator can act on without reading this
/// code: what is wrong, where (file:line), and what the rule is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// docs/architecture.md's table could not be read.
    Table(TableError),
    /// A file could not be read.
    Read {
        /// The file.
        path: String,
        /// Why.
        error: String,
    },
    /// A source file in no component of the table.
    Uncovered {
        /// Its module path (`crate` for `lib.rs`).
        module: String,
        /// The first line that makes it more than a file of `mod` declarations.
        site: Site,
    },
    /// A path into a module that no component covers (such as `crate::services`, a parent of
    /// components, or `super::` climbing above the crate root).
    Unresolved {
        /// The path as written.
        written: String,
        /// What it resolves to (`None` above the crate root).
        target: Option<String>,
        /// Where it is written.
        site: Site,
    },
    /// A component using one in a higher layer.
    Upward {
        /// The importing component.
        from: String,
        /// Its layer.
        from_layer: String,
        /// The imported component.
        to: String,
        /// Its (higher) layer.
        to_layer: String,
        /// Every place `from` uses `to`.
        sites: Vec<Site>,
    },
    /// A component using another of its own layer, which the table does not allow.
    Sideways {
        /// The importing component.
        from: String,
        /// The imported component.
        to: String,
        /// Their layer.
        layer: String,
        /// Every place `from` uses `to`.
        sites: Vec<Site>,
    },
    /// Components that use each other in a circle; the first edge's `from` is the last
    /// edge's `to`.
    Circle {
        /// The edges in order.
        edges: Vec<CircleEdge>,
    },
    /// `anyhow` in a layer that the `anyhow` block does not list.
    Anyhow {
        /// The component.
        component: String,
        /// Its layer.
        layer: String,
        /// The layers allowed to use anyhow.
        allowed: Vec<String>,
        /// The file.
        path: String,
        /// Lines naming anyhow.
        lines: Vec<usize>,
    },
    /// A component of the table that no source file is.
    MissingComponent {
        /// The component.
        component: String,
        /// Its layer.
        layer: String,
    },
    /// README.md has no layout block.
    ReadmeNoBlock,
    /// A top-level module of the crate that the README's layout block does not list.
    ReadmeUnlisted {
        /// The module as it would be listed: `model/` for a directory, `explain` for a file.
        entry: String,
        /// Its path under [`SRC`]: `model/` or `explain.rs`.
        path: String,
    },
    /// A name in the README's layout block that is no top-level module of the crate.
    ReadmeStale {
        /// The listed name.
        name: String,
    },
}

/// `a.rs:12, :40; b.rs:7`: every site, grouped by file.
fn sites(list: &[Site]) -> String {
    let mut out = String::new();
    let mut last: Option<&str> = None;
    for s in list {
        if last == Some(s.path.as_str()) {
            out.push_str(&format!(", :{}", s.line));
        } else {
            if last.is_some() {
                out.push_str("; ");
            }
            out.push_str(&s.to_string());
            last = Some(&s.path);
        }
    }
    out
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Table(e) => write!(f, "{ARCHITECTURE}: {e}"),
            Violation::Read { path, error } => write!(f, "{path}: cannot read: {error}"),
            Violation::Uncovered { module, site } => write!(
                f,
                "{site}: module {module} is in no component of the ```layers table in \
                 {ARCHITECTURE}: list it in a layer (only files of bare `mod` declarations may \
                 stay outside, and this one holds more from this line on)"
            ),
            Violation::Unresolved {
                written,
                target,
                site,
            } => match target {
                Some(t) => {
                    write!(f, "{site}: `{written}`")?;
                    if *written != format!("crate::{t}") {
                        write!(f, " (`crate::{t}`)")?;
                    }
                    write!(
                        f,
                        " is in no component of the ```layers table in {ARCHITECTURE}: list \
                         its module in a layer, or use the path of the component that defines it"
                    )
                }
                None => write!(f, "{site}: `{written}` climbs above the crate root"),
            },
            Violation::Upward {
                from,
                from_layer,
                to,
                to_layer,
                sites: s,
            } => write!(
                f,
                "upward import: {from} (layer {from_layer}) uses {to} (layer {to_layer}, above \
                 it) at {}; a layer may only use the layers listed before it in {ARCHITECTURE}",
                sites(s)
            ),
            Violation::Sideways {
                from,
                to,
                layer,
                sites: s,
            } => write!(
                f,
                "sideways import: {from} uses {to}, both in layer {layer}, at {}; components of \
                 layer {layer} must not use each other (it is not in ```layers-allow)",
                sites(s)
            ),
            Violation::Circle { edges } => {
                write!(f, "import circle: ")?;
                for e in edges {
                    write!(f, "{} -> ", e.from)?;
                }
                write!(f, "{}", edges.first().map_or("", |e| e.from.as_str()))?;
                let parts: Vec<String> = edges
                    .iter()
                    .map(|e| format!("{} -> {} at {}", e.from, e.to, e.site))
                    .collect();
                write!(f, " ({}); remove one of these edges", parts.join("; "))
            }
            Violation::Anyhow {
                component,
                layer,
                allowed,
                path,
                lines,
            } => {
                let lines: Vec<String> = lines.iter().map(|l| format!(":{l}")).collect();
                write!(
                    f,
                    "{path}{}: anyhow in {component} (layer {layer}); only layer(s) {} may use \
                     anyhow (```anyhow in {ARCHITECTURE}): return a thiserror type",
                    lines.join(", "),
                    allowed.join(", ")
                )
            }
            Violation::MissingComponent { component, layer } => write!(
                f,
                "{ARCHITECTURE} lists component {component} (layer {layer}), but no file of \
                 {SRC} is that module: remove it from the table or fix its path"
            ),
            Violation::ReadmeNoBlock => write!(
                f,
                "{README}: no layout block (a fence whose first line is `Cargo.toml  workspace; …`)"
            ),
            Violation::ReadmeUnlisted { entry, path } => write!(
                f,
                "{README}: the layout block does not list {SRC}{path}: add a line `  {entry}  …` \
                 under `boot-userspace/`"
            ),
            Violation::ReadmeStale { name } => write!(
                f,
                "{README}: the layout block lists `{name}` under `boot-userspace/`, but {SRC} has \
                 no top-level module {name}"
            ),
        }
    }
}

/// The component graph and what is wrong with it.
#[derive(Debug, Default)]
pub struct Analysis {
    /// Every edge between two components, with each place it is written (sorted).
    pub edges: BTreeMap<(String, String), Vec<Site>>,
    /// Every broken rule, in a stable order.
    pub violations: Vec<Violation>,
}

/// The module path of a source file (`services/dhcp/mod.rs` → `services::dhcp`, `lib.rs` →
/// the root, empty), or `None` for a file outside the library (`main.rs`, `bin/`, anything
/// not under [`SRC`]).
fn module_of(path: &str) -> Option<Vec<String>> {
    let rel = path.strip_prefix(SRC)?.strip_suffix(".rs")?;
    let mut segs: Vec<String> = rel.split('/').map(str::to_owned).collect();
    match segs.as_slice() {
        [only] if only == "lib" => Some(Vec::new()),
        [only] if only == "main" => None,
        [first, ..] if first == "bin" => None,
        _ => {
            if segs.last().is_some_and(|s| s == "mod") {
                segs.pop();
            }
            Some(segs)
        }
    }
}

fn display_module(m: &[String]) -> String {
    if m.is_empty() {
        "crate".to_owned()
    } else {
        m.join("::")
    }
}

/// Checks `sources` (path from the repository root, text) against `table`.
pub fn check(table: &Table, sources: &[(&str, &str)]) -> Result<(), Vec<Violation>> {
    let a = analyze(table, sources);
    if a.violations.is_empty() {
        Ok(())
    } else {
        Err(a.violations)
    }
}

/// The component graph of `sources` and every rule it breaks (the README aside).
pub fn analyze(table: &Table, sources: &[(&str, &str)]) -> Analysis {
    let mut edges: BTreeMap<(String, String), Vec<Site>> = BTreeMap::new();
    let mut present: BTreeSet<String> = BTreeSet::new();
    let mut per_file = Vec::new();
    let mut anyhow = Vec::new();
    for (path, src) in sources {
        let Some(module) = module_of(path) else {
            continue;
        };
        let scan = refs::scan(&module, src);
        let site = |line| Site {
            path: (*path).to_owned(),
            line,
        };
        let Some(from) = table.place(&module) else {
            // Outside every component: only a file of declarations, reaching nothing.
            let reaching = scan
                .refs
                .iter()
                .find(|r| r.root != refs::Root::Child)
                .map(|r| r.line);
            if let Some(line) = scan.first_item.into_iter().chain(reaching).min() {
                per_file.push(Violation::Uncovered {
                    module: display_module(&module),
                    site: site(line),
                });
            }
            continue;
        };
        present.insert(from.component.to_owned());
        for r in &scan.refs {
            let to = r.target.as_deref().and_then(|t| table.place(t));
            match to {
                None => per_file.push(Violation::Unresolved {
                    written: r.written.clone(),
                    target: r.target.as_deref().map(display_module),
                    site: site(r.line),
                }),
                Some(to) if to.component == from.component => {}
                Some(to) => {
                    edges
                        .entry((from.component.to_owned(), to.component.to_owned()))
                        .or_default()
                        .push(site(r.line));
                }
            }
        }
        if !scan.anyhow.is_empty() && !table.anyhow.contains(table.layer_name(from.layer)) {
            let mut lines = scan.anyhow.clone();
            lines.dedup();
            anyhow.push(Violation::Anyhow {
                component: from.component.to_owned(),
                layer: table.layer_name(from.layer).to_owned(),
                allowed: table.anyhow.iter().cloned().collect(),
                path: (*path).to_owned(),
                lines,
            });
        }
    }
    for s in edges.values_mut() {
        s.sort();
        s.dedup();
    }

    let mut violations = per_file;
    violations.extend(edge_rules(table, &edges));
    violations.extend(circles(&edges));
    violations.extend(anyhow);
    violations.extend(missing_components(table, &present));
    Analysis { edges, violations }
}

/// An [`Violation::Upward`] or [`Violation::Sideways`] for each edge that breaks the order.
fn edge_rules(table: &Table, edges: &BTreeMap<(String, String), Vec<Site>>) -> Vec<Violation> {
    let layer = |component: &str| {
        let segs: Vec<String> = component.split("::").map(str::to_owned).collect();
        table.place(&segs).map_or(0, |p| p.layer)
    };
    let mut violations = Vec::new();
    for ((from, to), s) in edges {
        let (fl, tl) = (layer(from), layer(to));
        if tl > fl {
            violations.push(Violation::Upward {
                from: from.clone(),
                from_layer: table.layer_name(fl).to_owned(),
                to: to.clone(),
                to_layer: table.layer_name(tl).to_owned(),
                sites: s.clone(),
            });
        } else if tl == fl && !table.sideways.contains(table.layer_name(fl)) {
            violations.push(Violation::Sideways {
                from: from.clone(),
                to: to.clone(),
                layer: table.layer_name(fl).to_owned(),
                sites: s.clone(),
            });
        }
    }
    violations
}

/// A [`Violation::MissingComponent`] for each component of the table no file is.
fn missing_components(table: &Table, present: &BTreeSet<String>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for l in &table.layers {
        for c in l.components.iter().filter(|c| !present.contains(*c)) {
            violations.push(Violation::MissingComponent {
                component: c.clone(),
                layer: l.name.clone(),
            });
        }
    }
    violations
}

/// Every circle of the graph: within each strongly connected component of two or more
/// components (Tarjan), the shortest circle through each edge not yet shown, so every edge
/// that holds a circle together appears in at least one message.
fn circles(edges: &BTreeMap<(String, String), Vec<Site>>) -> Vec<Violation> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        adj.entry(from).or_default().push(to);
        adj.entry(to).or_default();
    }
    let mut out = Vec::new();
    for scc in tarjan(&adj).into_iter().filter(|s| s.len() > 1) {
        let inside: BTreeSet<&str> = scc.iter().copied().collect();
        let mut shown: BTreeSet<(&str, &str)> = BTreeSet::new();
        for (from, to) in edges.keys() {
            let (from, to) = (from.as_str(), to.as_str());
            if !inside.contains(from) || !inside.contains(to) || shown.contains(&(from, to)) {
                continue;
            }
            // The shortest way back from `to` to `from` inside the component.
            let mut back: BTreeMap<&str, &str> = BTreeMap::new();
            let mut queue = VecDeque::from([to]);
            while let Some(n) = queue.pop_front() {
                if n == from {
                    break;
                }
                for &m in adj.get(n).into_iter().flatten() {
                    if inside.contains(m) && m != to && !back.contains_key(m) {
                        back.insert(m, n);
                        queue.push_back(m);
                    }
                }
            }
            let mut ring = vec![from];
            let mut n = from;
            while n != to {
                match back.get(n) {
                    Some(&p) => {
                        ring.push(p);
                        n = p;
                    }
                    None => break, // cannot happen inside a strongly connected component
                }
            }
            ring.reverse(); // to … from, then close with from → to
            let mut cycle = vec![from];
            cycle.extend(ring.into_iter().take_while(|&n| n != from));
            let edges_of: Vec<CircleEdge> = (0..cycle.len())
                .map(|i| {
                    let (a, b) = (cycle[i], cycle[(i + 1) % cycle.len()]);
                    shown.insert((a, b));
                    CircleEdge {
                        from: a.to_owned(),
                        to: b.to_owned(),
                        site: edges[&(a.to_owned(), b.to_owned())][0].clone(),
                    }
                })
                .collect();
            out.push(Violation::Circle { edges: edges_of });
        }
    }
    out
}

/// Tarjan's strongly connected components of `adj`, each sorted, in a stable order.
fn tarjan<'a>(adj: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<Vec<&'a str>> {
    struct State<'a> {
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(v: &'a str, adj: &BTreeMap<&'a str, Vec<&'a str>>, s: &mut State<'a>) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in adj.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(w, adj, s);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                scc.push(w);
                if w == v {
                    break;
                }
            }
            scc.sort();
            s.out.push(scc);
        }
    }
    let mut s = State {
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for &v in adj.keys() {
        if !s.index.contains_key(v) {
            visit(v, adj, &mut s);
        }
    }
    s.out.sort();
    s.out
}

/// The README's layout block against the crate's top-level modules (each directory or `.rs`
/// file directly under [`SRC`], `lib.rs` and `main.rs` aside).
pub fn check_readme(readme: &str, sources: &[(&str, &str)]) -> Vec<Violation> {
    let Some(listed) = readme::listed_modules(readme) else {
        return vec![Violation::ReadmeNoBlock];
    };
    // name → (entry as listed, path under SRC)
    let mut modules: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (path, _) in sources {
        let Some(rel) = path.strip_prefix(SRC) else {
            continue;
        };
        let (name, entry, path) = match rel.split_once('/') {
            Some((dir, _)) => (dir.to_owned(), format!("{dir}/"), format!("{dir}/")),
            None => {
                let name = rel.strip_suffix(".rs").unwrap_or(rel).to_owned();
                (name.clone(), name, rel.to_owned())
            }
        };
        if name != "lib" && name != "main" && name != "bin" {
            modules.insert(name, (entry, path));
        }
    }
    let mut out = Vec::new();
    for (name, (entry, path)) in &modules {
        if !listed.contains(name) {
            out.push(Violation::ReadmeUnlisted {
                entry: entry.clone(),
                path: path.clone(),
            });
        }
    }
    for name in &listed {
        if !modules.contains_key(name) && name != "lib" && name != "main" {
            out.push(Violation::ReadmeStale { name: name.clone() });
        }
    }
    out
}

/// What the check reads from a repository.
#[derive(Debug)]
pub struct Repo {
    /// docs/architecture.md's table.
    pub table: Table,
    /// Every `.rs` file under [`SRC`]: (path from the repository root, text), sorted.
    pub sources: Vec<(String, String)>,
    /// README.md's text.
    pub readme: String,
}

impl Repo {
    /// Reads the table, the README and every source file under `root`.
    pub fn load(root: &Path) -> Result<Repo, Vec<Violation>> {
        let read = |rel: &str| {
            std::fs::read_to_string(root.join(rel)).map_err(|e| Violation::Read {
                path: rel.to_owned(),
                error: e.to_string(),
            })
        };
        let table = parse_table(&read(ARCHITECTURE).map_err(|v| vec![v])?)
            .map_err(|e| vec![Violation::Table(e)])?;
        let readme = read(README).map_err(|v| vec![v])?;
        let mut sources = Vec::new();
        let mut dirs = vec![SRC.trim_end_matches('/').to_owned()];
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(root.join(&dir)).map_err(|e| {
                vec![Violation::Read {
                    path: dir.clone(),
                    error: e.to_string(),
                }]
            })?;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let rel = format!("{dir}/{name}");
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(rel);
                } else if name.ends_with(".rs") {
                    let text = read(&rel).map_err(|v| vec![v])?;
                    sources.push((rel, text));
                }
            }
        }
        sources.sort();
        Ok(Repo {
            table,
            sources,
            readme,
        })
    }

    /// The sources as borrowed pairs, for [`check`] and [`analyze`].
    pub fn sources(&self) -> Vec<(&str, &str)> {
        self.sources
            .iter()
            .map(|(p, s)| (p.as_str(), s.as_str()))
            .collect()
    }

    /// The graph and every violation, the README's included.
    pub fn analyze(&self) -> Analysis {
        let sources = self.sources();
        let mut a = analyze(&self.table, &sources);
        a.violations.extend(check_readme(&self.readme, &sources));
        a
    }
}

/// The whole check on the repository at `root`: the table of docs/architecture.md, the
/// sources under boot-userspace/src and README.md's layout block.
pub fn check_repo(root: &Path) -> Result<(), Vec<Violation>> {
    let a = Repo::load(root)?.analyze();
    if a.violations.is_empty() {
        Ok(())
    } else {
        Err(a.violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_map_to_module_paths() {
        let m = |p: &str| module_of(p).map(|m| m.join("::"));
        assert_eq!(m("boot-userspace/src/lib.rs"), Some(String::new()));
        assert_eq!(m("boot-userspace/src/main.rs"), None);
        assert_eq!(
            m("boot-userspace/src/services/mod.rs"),
            Some("services".into())
        );
        assert_eq!(
            m("boot-userspace/src/services/dhcp/server.rs"),
            Some("services::dhcp::server".into())
        );
        assert_eq!(m("tests/src/lib.rs"), None);
    }

    #[test]
    fn sites_are_grouped_by_file() {
        let s = |path: &str, line| Site {
            path: path.into(),
            line,
        };
        assert_eq!(
            sites(&[s("a.rs", 1), s("a.rs", 9), s("b.rs", 2)]),
            "a.rs:1, :9; b.rs:2"
        );
    }
}
