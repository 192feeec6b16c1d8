//! The layering check (tests/src/layering.rs): the crate against docs/architecture.md as the
//! CI gate, and the check itself on small in-memory trees, each breaking one rule. Needs no
//! root and no network.

use std::path::{Path, PathBuf};

use bootfabric_lab::layering::{
    analyze, check, check_readme, parse_table, CircleEdge, Repo, Site, Table, Violation,
};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The CI gate: every import of boot-userspace/src keeps to the table in
/// docs/architecture.md, and its layout block lists exactly the crate's modules.
#[test]
fn the_crate_matches_docs_architecture_md() {
    if let Err(violations) = bootfabric_lab::layering::check_repo(&repo_root()) {
        let lines: Vec<String> = violations.iter().map(|v| format!("  {v}")).collect();
        panic!(
            "{} layering violation(s) (cargo xtask layers prints the graph):\n{}",
            violations.len(),
            lines.join("\n")
        );
    }
}

const TABLE: &str = "# Architecture\n\n## Layers\n\n```layers\n# lowest first\nutil: util::xorshift\n\
model: model::ledger, model::boot\nservices: services::dhcp, services::http\ncommands: commands\n```\n\n\
```layers-allow\nmodel\n```\n\n```anyhow\ncommands\n```\n";

fn table() -> Table {
    parse_table(TABLE).expect("the test table parses")
}

const SRC: &str = "boot-userspace/src/";

/// A small crate that keeps every rule of [`TABLE`]; each test changes one file.
fn tree() -> Vec<(String, String)> {
    let files: &[(&str, &str)] = &[
        ("lib.rs", "//! The crate.\n#![deny(missing_docs)]\npub mod util;\npub mod model;\npub mod services;\npub mod commands;\n"),
        ("util/mod.rs", "pub mod xorshift;\n"),
        ("util/xorshift.rs", "pub struct Rng(u64);\n"),
        ("model/mod.rs", "pub mod boot;\npub mod ledger;\n"),
        ("model/boot.rs", "pub struct BootSettings;\n"),
        (
            "model/ledger.rs",
            "use crate::util::xorshift::Rng;\nuse super::boot::BootSettings;\npub struct Ledger;\n\
             #[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        ),
        ("services/mod.rs", "pub mod dhcp;\npub mod http;\n"),
        (
            "services/dhcp/mod.rs",
            "mod server;\npub use server::Server;\nuse crate::model::{\n    ledger::Ledger,\n    boot::BootSettings,\n};\n",
        ),
        (
            "services/dhcp/server.rs",
            "use super::super::super::model::boot::BootSettings;\npub struct Server;\n",
        ),
        ("services/http.rs", "pub fn serve(l: &crate::model::ledger::Ledger) {}\n"),
        (
            "commands/mod.rs",
            "use anyhow::Context as _;\nuse crate::{services::{dhcp::Server, http}, model::ledger::Ledger};\n\
             pub fn run() -> anyhow::Result<()> { anyhow::bail!(\"no\") }\n",
        ),
        ("main.rs", "fn main() -> anyhow::Result<()> { bootfabric::commands::run() }\n"),
    ];
    files
        .iter()
        .map(|(p, s)| (format!("{SRC}{p}"), (*s).to_owned()))
        .collect()
}

/// `tree()` with `path` (under src/) replaced by or added as `text`.
fn with(path: &str, text: &str) -> Vec<(String, String)> {
    let mut t = tree();
    let full = format!("{SRC}{path}");
    t.retain(|(p, _)| *p != full);
    t.push((full, text.to_owned()));
    t
}

fn borrowed(tree: &[(String, String)]) -> Vec<(&str, &str)> {
    tree.iter().map(|(p, s)| (p.as_str(), s.as_str())).collect()
}

fn violations(tree: &[(String, String)]) -> Vec<Violation> {
    match check(&table(), &borrowed(tree)) {
        Ok(()) => Vec::new(),
        Err(v) => v,
    }
}

fn site(path: &str, line: usize) -> Site {
    Site {
        path: format!("{SRC}{path}"),
        line,
    }
}

#[test]
fn a_tree_that_keeps_the_rules_passes() {
    assert_eq!(violations(&tree()), []);
    let a = analyze(&table(), &borrowed(&tree()));
    let edge = |f: &str, t: &str| a.edges.get(&(f.to_owned(), t.to_owned())).map(Vec::len);
    // The multi-line group in dhcp/mod.rs gives two edges; server.rs's `super::` one more.
    assert_eq!(edge("services::dhcp", "model::ledger"), Some(1));
    assert_eq!(edge("services::dhcp", "model::boot"), Some(2));
    assert_eq!(edge("model::ledger", "model::boot"), Some(1));
    assert_eq!(edge("commands", "services::http"), Some(1));
}

#[test]
fn an_added_circle_fails() {
    // model allows sideways imports, so the circle is the only thing wrong: boot uses
    // ledger inline, ledger already uses boot through `super::`; and a second pair through
    // a group spread over lines.
    let t = with(
        "model/boot.rs",
        "pub struct BootSettings;\n\nfn f() {\n    let _ = crate::model::ledger::Ledger;\n}\n",
    );
    assert_eq!(
        violations(&t),
        [Violation::Circle {
            edges: vec![
                CircleEdge {
                    from: "model::boot".into(),
                    to: "model::ledger".into(),
                    site: site("model/boot.rs", 4),
                },
                CircleEdge {
                    from: "model::ledger".into(),
                    to: "model::boot".into(),
                    site: site("model/ledger.rs", 2),
                },
            ]
        }]
    );

    let t = with(
        "model/boot.rs",
        "use crate::{\n    util::xorshift::Rng,\n    model::{\n        ledger::Ledger,\n    },\n};\npub struct BootSettings;\n",
    );
    let v = violations(&t);
    assert_eq!(v.len(), 1, "{v:?}");
    let text = v[0].to_string();
    assert!(
        text.starts_with("import circle: model::boot -> model::ledger -> model::boot (")
            && text.contains("model::boot -> model::ledger at boot-userspace/src/model/boot.rs:4")
            && text
                .contains("model::ledger -> model::boot at boot-userspace/src/model/ledger.rs:2"),
        "{text}"
    );
}

#[test]
fn the_real_tree_with_an_added_circle_fails() {
    let repo = Repo::load(&repo_root()).unwrap_or_else(|v| panic!("cannot load the repo: {v:?}"));
    let real = repo.analyze();
    // An edge that runs down the layers (preferably services::http -> model::ledger); the
    // injected file makes its target use its source, upward, closing a circle.
    let layer = |c: &str| {
        let segs: Vec<String> = c.split("::").map(str::to_owned).collect();
        repo.table.place(&segs).map(|p| p.layer)
    };
    let preferred = ("services::http".to_owned(), "model::ledger".to_owned());
    let (high, low) = if real.edges.contains_key(&preferred) {
        preferred
    } else {
        real.edges
            .keys()
            .find(|(f, t)| layer(f) > layer(t))
            .cloned()
            .expect("the real tree has an edge down the layers")
    };
    let probe = format!("{SRC}{}/layering_probe.rs", low.replace("::", "/"));
    let mut sources = repo.sources.clone();
    sources.push((
        probe.clone(),
        format!("//! Injected.\n\nuse crate::{high}::X;\n"),
    ));

    let v = analyze(&repo.table, &borrowed(&sources)).violations;
    let upward = v.iter().any(|v| {
        matches!(v, Violation::Upward { from, to, sites, .. }
            if *from == low && *to == high && sites.iter().any(|s| s.path == probe && s.line == 3))
    });
    let circle = v.iter().any(|v| {
        matches!(v, Violation::Circle { edges }
            if edges.iter().any(|e| e.from == low && e.to == high && e.site.path == probe)
                && edges.iter().any(|e| e.from == high))
    });
    let text: Vec<String> = v.iter().map(ToString::to_string).collect();
    assert!(
        upward && circle,
        "{low} -> {high} not caught:\n{}",
        text.join("\n")
    );
}

#[test]
fn super_paths_resolve_against_the_file_they_are_in() {
    // In util/xorshift.rs's inline `mod tests`, `super` is util::xorshift, then util, then the
    // crate root. (model::boot uses nothing, so this upward edge closes no circle.)
    let t = with(
        "util/xorshift.rs",
        "pub struct Rng(u64);\nmod tests {\n    use super::super::super::model::boot::BootSettings;\n}\n",
    );
    assert_eq!(
        violations(&t),
        [Violation::Upward {
            from: "util::xorshift".into(),
            from_layer: "util".into(),
            to: "model::boot".into(),
            to_layer: "model".into(),
            sites: vec![site("util/xorshift.rs", 3)],
        }]
    );
}

#[test]
fn test_code_counts_like_any_other_code() {
    let t = with(
        "util/xorshift.rs",
        "pub struct Rng(u64);\n#[cfg(test)]\nmod tests {\n    use crate::model::boot::BootSettings;\n}\n",
    );
    let v = violations(&t);
    assert!(
        matches!(v.as_slice(), [Violation::Upward { from, to, sites, .. }]
            if from == "util::xorshift" && to == "model::boot" && sites == &[site("util/xorshift.rs", 4)]),
        "{v:?}"
    );
}

#[test]
fn comments_and_strings_are_not_imports() {
    let t = with(
        "model/boot.rs",
        "//! Read by [`crate::commands`] and `crate::services::http`.\n/// See crate::services::dhcp.\n\
         pub struct BootSettings;\n/* crate::commands /* nested crate::commands */ */\n\
         pub const A: &str = \"crate::commands::run\";\npub const B: &str = r#\"crate::services::http \"quoted\"\"#;\n\
         pub const C: char = '\"';\npub const D: &str = \"crate::commands\";\n",
    );
    assert_eq!(violations(&t), []);
}

#[test]
fn inline_paths_in_expressions_and_types_count() {
    let t = with(
        "util/xorshift.rs",
        "pub struct Rng(u64);\nfn f(_: Vec<crate::model::boot::BootSettings>) {\n    \
         let _ = crate::model::boot::BootSettings;\n}\n",
    );
    let v = violations(&t);
    assert!(
        matches!(v.as_slice(), [Violation::Upward { from, to, sites, .. }]
            if from == "util::xorshift" && to == "model::boot"
                && sites == &[site("util/xorshift.rs", 2), site("util/xorshift.rs", 3)]),
        "{v:?}"
    );
    assert!(v[0].to_string().starts_with(
        "upward import: util::xorshift (layer util) uses model::boot (layer model, above it) \
         at boot-userspace/src/util/xorshift.rs:2, :3;"
    ));
}

#[test]
fn an_upward_import_that_closes_a_circle_is_both() {
    // model::boot -> services::http -> model::ledger -> model::boot.
    let t = with(
        "model/boot.rs",
        "pub struct BootSettings;\nfn f() {\n    crate::services::http::serve(todo!());\n}\n",
    );
    let text: Vec<String> = violations(&t).iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "upward import: model::boot (layer model) uses services::http (layer services, above it) \
             at boot-userspace/src/model/boot.rs:3; a layer may only use the layers listed before it \
             in docs/architecture.md",
            "import circle: model::boot -> services::http -> model::ledger -> model::boot \
             (model::boot -> services::http at boot-userspace/src/model/boot.rs:3; \
             services::http -> model::ledger at boot-userspace/src/services/http.rs:1; \
             model::ledger -> model::boot at boot-userspace/src/model/ledger.rs:2); \
             remove one of these edges",
        ]
    );
}

#[test]
fn one_service_using_another_is_sideways() {
    let t = with(
        "services/http.rs",
        "use crate::services::dhcp::Server;\npub fn serve(l: &crate::model::ledger::Ledger) {}\n",
    );
    let v = violations(&t);
    assert_eq!(
        v,
        [Violation::Sideways {
            from: "services::http".into(),
            to: "services::dhcp".into(),
            layer: "services".into(),
            sites: vec![site("services/http.rs", 1)],
        }]
    );
    assert!(v[0].to_string().contains(
        "services::http uses services::dhcp, both in layer services, at boot-userspace/src/services/http.rs:1"
    ));
}

#[test]
fn anyhow_outside_commands_fails() {
    let t = with(
        "services/http.rs",
        "use anyhow::Context as _;\npub fn serve() -> anyhow::Result<()> {\n    Err(anyhow::anyhow!(\"x\"))\n}\n",
    );
    let v = violations(&t);
    assert_eq!(
        v,
        [Violation::Anyhow {
            component: "services::http".into(),
            layer: "services".into(),
            allowed: vec!["commands".into()],
            path: format!("{SRC}services/http.rs"),
            lines: vec![1, 2, 3],
        }]
    );
    assert!(v[0]
        .to_string()
        .starts_with("boot-userspace/src/services/http.rs:1, :2, :3: anyhow in services::http"));
}

#[test]
fn a_module_missing_from_the_table_fails() {
    // A file of some module no component covers, and a parent-of-components file that holds
    // more than `mod` declarations.
    let mut t = with("model/extra.rs", "pub struct Extra;\n");
    t.retain(|(p, _)| !p.ends_with("model/mod.rs"));
    t.push((
        format!("{SRC}model/mod.rs"),
        "pub mod boot;\npub mod extra;\npub mod ledger;\n\npub fn helper() {}\n".into(),
    ));
    let v = violations(&t);
    assert_eq!(
        v,
        [
            Violation::Uncovered {
                module: "model::extra".into(),
                site: site("model/extra.rs", 1),
            },
            Violation::Uncovered {
                module: "model".into(),
                site: site("model/mod.rs", 5),
            },
        ]
    );
    // A component the table lists but no file is.
    let mut t = tree();
    t.retain(|(p, _)| !p.ends_with("model/boot.rs") && !p.contains("dhcp/server.rs"));
    t.retain(|(p, _)| !p.ends_with("model/ledger.rs"));
    t.push((
        format!("{SRC}model/ledger.rs"),
        "pub struct Ledger;\n".into(),
    ));
    t.retain(|(p, _)| !p.ends_with("dhcp/mod.rs"));
    t.push((
        format!("{SRC}services/dhcp/mod.rs"),
        "pub struct Server;\n".into(),
    ));
    assert_eq!(
        violations(&t),
        [Violation::MissingComponent {
            component: "model::boot".into(),
            layer: "model".into(),
        }]
    );
}

#[test]
fn a_root_file_that_reaches_into_a_component_is_not_a_declaration_file() {
    let t = with(
        "lib.rs",
        "//! The crate.\npub mod util;\npub mod model;\npub mod services;\npub mod commands;\n\
         pub use crate::commands::run;\n",
    );
    assert_eq!(
        violations(&t),
        [Violation::Uncovered {
            module: "crate".into(),
            site: site("lib.rs", 6),
        }]
    );
}

#[test]
fn a_path_to_no_component_fails() {
    let t = with(
        "commands/mod.rs",
        "use crate::services;\npub fn run() -> anyhow::Result<()> { Ok(()) }\n",
    );
    let v = violations(&t);
    assert_eq!(
        v,
        [Violation::Unresolved {
            written: "crate::services".into(),
            target: Some("services".into()),
            site: site("commands/mod.rs", 1),
        }]
    );
}

#[test]
fn the_readme_layout_block_must_list_exactly_the_modules() {
    let readme = "# Bootfabric\n\n```\nCargo.toml        workspace; shared lints\nboot-userspace/   the daemon\n\
                  \x20 util/           helpers\n  model/          shared core\n  commands/       the CLI\n\
                  \x20 inventory       hosts (gone)\nxtask/            tasks\n```\n";
    let t = tree();
    assert_eq!(
        check_readme(readme, &borrowed(&t)),
        [
            Violation::ReadmeUnlisted {
                entry: "services/".into(),
                path: "services/".into(),
            },
            Violation::ReadmeStale {
                name: "inventory".into()
            },
        ]
    );
    let good = readme.replace(
        "  inventory       hosts (gone)\n",
        "  services/       dhcp, http\n",
    );
    assert_eq!(check_readme(&good, &borrowed(&t)), []);
    assert_eq!(
        check_readme("# no layout\n", &borrowed(&t)),
        [Violation::ReadmeNoBlock]
    );
}
