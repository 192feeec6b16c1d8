//! One source file → the module paths it refers to. Pure: a file's module path and text in,
//! resolved references out.
//!
//! A reference is any path into this crate: a `use` (nested groups over many lines, `pub use`,
//! `as`, globs) or a path written inline in an expression or a type. Paths are resolved
//! against the module they are written in: `crate::` from the root, `super::` and `self::`
//! from the enclosing module (an inline `mod tests { … }` is a module of its own, so its
//! `super` is the file's module), and a first segment naming a child module declared in the
//! same module (`mod server;` then `server::Server`) from that module. Paths into other
//! crates are not references. `#[cfg(test)]` code is scanned like any other code.

use std::collections::{BTreeSet, HashMap};

use super::lex::{strip, tokens, Tok, Token};

/// How a path was rooted, which decides how it resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Root {
    /// `crate::…` (or `$crate::…` in a macro).
    Crate,
    /// `super::…` or `self::…`.
    Relative,
    /// A child module declared in the same module (`mod x;` … `x::…`).
    Child,
}

/// One path into this crate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Reference {
    /// Line the path (or, in a `use` group, its last segment) is on.
    pub line: usize,
    /// The absolute module path it names, from the crate root; `None` when `super::` climbs
    /// above the crate root.
    pub target: Option<Vec<String>>,
    /// The path as written, for messages (`super::ledger::Ledger`).
    pub written: String,
    /// How it was rooted.
    pub root: Root,
}

/// What one file holds, as far as the layering check cares.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// Every path into this crate, in source order.
    pub refs: Vec<Reference>,
    /// Lines naming `anyhow` (`anyhow::`, `use anyhow`, `anyhow!`).
    pub anyhow: Vec<usize>,
    /// The first line holding something other than attributes and `mod`/`use` declarations
    /// at the top level; `None` for a pure module-declaration file such as `lib.rs`.
    pub first_item: Option<usize>,
}

/// Scans `src`, the text of the file whose module path is `module` (empty for `lib.rs`).
pub(super) fn scan(module: &[String], src: &str) -> Scan {
    let toks = tokens(&strip(src));
    let Scopes {
        of_token,
        paths,
        children,
    } = scopes(module, &toks);
    let mut out = Scan {
        first_item: first_item(&toks),
        anyhow: toks
            .iter()
            .filter(|t| t.is("anyhow"))
            .map(|t| t.line)
            .collect(),
        ..Scan::default()
    };
    let mut i = 0;
    while i < toks.len() {
        let here = &paths[of_token[i]];
        let prev = i.checked_sub(1).map(|p| &toks[p]);
        let next_is_sep = toks.get(i + 1).is_some_and(|t| t.tok == Tok::PathSep);
        if toks[i].is("use") && !toks.get(i + 1).is_some_and(|t| t.is_punct('<')) {
            // `use` is a keyword: this is a use declaration (`use<'a>` is precise capturing).
            let mut pos = i + 1;
            let mut leaves = Vec::new();
            use_tree(&toks, &mut pos, Vec::new(), &mut leaves);
            for (segs, line) in leaves {
                if let Some(r) = reference(here, &children, segs, line) {
                    out.refs.push(r);
                }
            }
            i = pos.max(i + 1);
            continue;
        }
        let path_start =
            next_is_sep && prev.is_none_or(|p| p.tok != Tok::PathSep && !p.is_punct('.'));
        // `pub(in crate::x)` is a visibility, not a path to anything.
        let in_visibility = prev.is_some_and(|p| p.is("in")) && i >= 2 && toks[i - 2].is_punct('(');
        if path_start && !in_visibility {
            if let Tok::Ident(first) = &toks[i].tok {
                let mut segs = vec![first.clone()];
                let mut k = i + 1;
                while toks.get(k).is_some_and(|t| t.tok == Tok::PathSep) {
                    match toks.get(k + 1).map(|t| &t.tok) {
                        Some(Tok::Ident(s)) => {
                            segs.push(s.clone());
                            k += 2;
                        }
                        _ => break,
                    }
                }
                if let Some(r) = reference(here, &children, segs, toks[i].line) {
                    out.refs.push(r);
                }
                i = k;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// The modules of one file: the file's own and each inline `mod x { … }` in it.
struct Scopes {
    /// For every token, the index of its module in `paths`.
    of_token: Vec<usize>,
    /// Module paths from the crate root; `paths[0]` is the file's module.
    paths: Vec<Vec<String>>,
    /// The child modules each module declares (`mod x;` and `mod x { … }`).
    children: HashMap<Vec<String>, BTreeSet<String>>,
}

fn scopes(module: &[String], toks: &[Token]) -> Scopes {
    let mut scopes = vec![module.to_vec()];
    let mut children: HashMap<Vec<String>, BTreeSet<String>> = HashMap::new();
    // Open inline modules: (scope index, brace depth inside it).
    let mut open: Vec<(usize, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut scope_of = Vec::with_capacity(toks.len());
    let mut pending: Option<usize> = None;
    for (i, t) in toks.iter().enumerate() {
        let current = open.last().map_or(0, |&(s, _)| s);
        scope_of.push(current);
        if t.is("mod") {
            if let Some(Tok::Ident(name)) = toks.get(i + 1).map(|n| &n.tok) {
                let follows = toks.get(i + 2);
                if follows.is_some_and(|f| f.is_punct('{') || f.is_punct(';')) {
                    children
                        .entry(scopes[current].clone())
                        .or_default()
                        .insert(name.clone());
                }
                if follows.is_some_and(|f| f.is_punct('{')) {
                    let mut path = scopes[current].clone();
                    path.push(name.clone());
                    scopes.push(path);
                    pending = Some(scopes.len() - 1);
                }
            }
        } else if t.is_punct('{') {
            depth += 1;
            if let Some(s) = pending.take() {
                open.push((s, depth));
            }
        } else if t.is_punct('}') {
            if open.last().is_some_and(|&(_, d)| d == depth) {
                open.pop();
            }
            depth = depth.saturating_sub(1);
        }
    }
    Scopes {
        of_token: scope_of,
        paths: scopes,
        children,
    }
}

/// Parses one use tree starting at `pos` (after `use` or inside a group) and appends each of
/// its leaves: the full path (a glob's or a `{self}`'s is its prefix) and the line of its
/// last segment.
fn use_tree(
    toks: &[Token],
    pos: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, usize)>,
) {
    let mut segs = prefix;
    let mut line = toks.get(*pos).map_or(0, |t| t.line);
    if toks.get(*pos).is_some_and(|t| t.tok == Tok::PathSep) {
        // `use ::other_crate::…`: never this crate.
        segs.push("::".to_owned());
        *pos += 1;
    }
    while let Some(t) = toks.get(*pos) {
        match &t.tok {
            Tok::Ident(s) if s != "as" => {
                segs.push(s.clone());
                line = t.line;
                *pos += 1;
                if toks.get(*pos).is_some_and(|t| t.tok == Tok::PathSep) {
                    *pos += 1;
                } else {
                    break;
                }
            }
            Tok::Punct('*') => {
                line = t.line;
                *pos += 1;
                break;
            }
            Tok::Punct('{') => {
                *pos += 1;
                while let Some(t) = toks.get(*pos) {
                    if t.is_punct('}') {
                        *pos += 1;
                        break;
                    }
                    if t.is_punct(',') {
                        *pos += 1;
                        continue;
                    }
                    let before = *pos;
                    use_tree(toks, pos, segs.clone(), out);
                    if *pos == before {
                        *pos += 1; // not a use tree: skip the token rather than loop
                    }
                }
                return;
            }
            _ => break,
        }
    }
    if toks.get(*pos).is_some_and(|t| t.is("as")) {
        *pos += 2;
    }
    if segs.last().is_some_and(|s| s == "self") && segs.len() > 1 {
        segs.pop();
    }
    if !segs.is_empty() {
        out.push((segs, line));
    }
}

/// Resolves `segs`, written in module `here`, to a reference into this crate, or `None` for
/// a path into another crate (or a local item such as an enum).
fn reference(
    here: &[String],
    children: &HashMap<Vec<String>, BTreeSet<String>>,
    segs: Vec<String>,
    line: usize,
) -> Option<Reference> {
    let written = segs.join("::");
    let first = segs.first()?.as_str();
    let (root, target) = match first {
        "crate" => (Root::Crate, Some(segs[1..].to_vec())),
        "self" | "super" => {
            let mut at = here.to_vec();
            let mut rest = &segs[..];
            let mut ok = true;
            while let Some((s, tail)) = rest.split_first() {
                match s.as_str() {
                    "self" => {}
                    "super" => ok &= at.pop().is_some(),
                    _ => break,
                }
                rest = tail;
            }
            at.extend(rest.iter().cloned());
            (Root::Relative, ok.then_some(at))
        }
        name if children.get(here).is_some_and(|c| c.contains(name)) => {
            let mut at = here.to_vec();
            at.extend(segs.iter().cloned());
            (Root::Child, Some(at))
        }
        _ => return None,
    };
    Some(Reference {
        line,
        target,
        written,
        root,
    })
}

/// The line of the first top-level token that is not part of an attribute, a visibility, a
/// `mod x;` or a `use …;` declaration.
fn first_item(toks: &[Token]) -> Option<usize> {
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i];
        if t.is_punct('#') {
            // `#[…]` or `#![…]`: skip to the matching `]`.
            let mut k = i + 1;
            if toks.get(k).is_some_and(|t| t.is_punct('!')) {
                k += 1;
            }
            if !toks.get(k).is_some_and(|t| t.is_punct('[')) {
                return Some(t.line);
            }
            i = skip_group(toks, k, '[', ']');
        } else if t.is("pub") {
            i += 1;
            if toks.get(i).is_some_and(|t| t.is_punct('(')) {
                i = skip_group(toks, i, '(', ')');
            }
        } else if t.is("mod") && toks.get(i + 2).is_some_and(|t| t.is_punct(';')) {
            i += 3;
        } else if t.is("use") {
            while i < toks.len() && !toks[i].is_punct(';') {
                i += 1;
            }
            i += 1;
        } else {
            return Some(t.line);
        }
    }
    None
}

/// The index after the group opened by `open` at `at`, nesting counted.
fn skip_group(toks: &[Token], at: usize, open: char, close: char) -> usize {
    let mut depth = 0usize;
    let mut k = at;
    while k < toks.len() {
        if toks[k].is_punct(open) {
            depth += 1;
        } else if toks[k].is_punct(close) {
            depth -= 1;
            if depth == 0 {
                return k + 1;
            }
        }
        k += 1;
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(path: &str) -> Vec<String> {
        path.split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// (line, target joined with `::`) of each reference.
    fn targets(module_path: &str, src: &str) -> Vec<(usize, String)> {
        scan(&module(module_path), src)
            .refs
            .into_iter()
            .map(|r| {
                (
                    r.line,
                    r.target.map_or("<above root>".into(), |t| t.join("::")),
                )
            })
            .collect()
    }

    #[test]
    fn use_groups_over_many_lines_give_one_leaf_each() {
        let src = "use crate::{\n    model::ledger::{self, Ledger},\n    config::{Config as C, wire::*},\n};\npub use crate::fabric::Fabric;";
        assert_eq!(
            targets("commands::serve", src),
            [
                (2, "model::ledger".into()),
                (2, "model::ledger::Ledger".into()),
                (3, "config::Config".into()),
                (3, "config::wire".into()),
                (5, "fabric::Fabric".into()),
            ]
        );
    }

    #[test]
    fn super_resolves_against_the_file_and_inline_modules() {
        let src = "use super::ledger::Ledger;\nuse super::super::services::dhcp;\nfn f() { super::boot::x(); self::g(); }\n\
                   mod tests {\n    use super::*;\n    fn t() { super::super::gate::Gate::new(); }\n}\n\
                   fn after() { super::files::open(); }";
        assert_eq!(
            targets("model::render", src),
            [
                (1, "model::ledger::Ledger".into()),
                (2, "services::dhcp".into()),
                (3, "model::boot::x".into()),
                (3, "model::render::g".into()),
                (5, "model::render".into()),
                (6, "model::gate::Gate::new".into()),
                (8, "model::files::open".into()),
            ]
        );
    }

    #[test]
    fn super_above_the_root_resolves_to_nothing() {
        assert_eq!(
            targets("util", "use super::super::x;"),
            [(1, "<above root>".into())]
        );
    }

    #[test]
    fn inline_paths_in_expressions_and_types_count() {
        let src = "fn f(x: crate::model::boot::BootSettings) -> Vec<crate::config::Config> {\n\
                   let y = crate::util::metrics::CoreMetrics::new(); $crate::xdp::attach(); x.y::<crate::fabric::Iface>()\n}";
        assert_eq!(
            targets("services::http", src),
            [
                (1, "model::boot::BootSettings".into()),
                (1, "config::Config".into()),
                (2, "util::metrics::CoreMetrics::new".into()),
                (2, "xdp::attach".into()),
                (2, "fabric::Iface".into()),
            ]
        );
    }

    #[test]
    fn child_modules_resolve_but_other_crates_do_not() {
        let src = "mod server;\npub use server::Server;\nuse std::net::Ipv4Addr;\nuse tokio::net;\nfn f() { server::x(); std::mem::drop(1); }";
        assert_eq!(
            targets("services::dhcp", src),
            [
                (2, "services::dhcp::server::Server".into()),
                (5, "services::dhcp::server::x".into()),
            ]
        );
    }

    #[test]
    fn comments_strings_and_visibilities_are_no_references() {
        let src = "//! See [`crate::admin`].\n/// Uses crate::services::dhcp.\npub(in crate::model) fn f() {\n\
                   let s = \"crate::admin::x\"; let r = r#\"crate::admin\"#; /* crate::api */\n}";
        assert_eq!(targets("model::boot", src), []);
    }

    #[test]
    fn anyhow_is_found_in_each_form() {
        let s = scan(
            &module("model::ledger"),
            "use anyhow::Context;\nfn f() { anyhow!(\"x\"); }\n// anyhow\nuse anyhow;",
        );
        assert_eq!(s.anyhow, [1, 2, 4]);
    }

    #[test]
    fn a_file_of_mod_declarations_is_pure() {
        let pure = "//! The crate.\n#![deny(missing_docs)]\npub mod a;\n#[cfg(test)]\npub(crate) mod b;\npub use a::X;";
        assert_eq!(scan(&[], pure).first_item, None);
        let not = "pub mod a;\n\nfn helper() {}";
        assert_eq!(scan(&[], not).first_item, Some(3));
    }
}
