//! The layout block (docs/architecture.md): the fenced block opening with the line `Cargo.toml …
//! workspace; …`. Under its `boot-userspace/` line, lines indented by exactly two spaces name
//! the crate's top-level modules (`  config/  TOML config`, `  serve, cli  commands`); a
//! deeper indent continues a description. Pure: README text in, listed names out.

use std::collections::BTreeSet;

/// The module names the layout block lists under `boot-userspace/` (a trailing `/` or `.rs`
/// dropped), or `None` when the README has no layout block.
pub(super) fn listed_modules(readme: &str) -> Option<BTreeSet<String>> {
    let mut lines = readme.lines();
    // Find the block: a fence whose first line is `Cargo.toml` followed by `workspace`.
    loop {
        let line = lines.next()?;
        if line.trim_start().starts_with("```") {
            let first = lines.next()?;
            let mut words = first.split_whitespace();
            if words.next() == Some("Cargo.toml")
                && words.next().is_some_and(|w| w.starts_with("workspace"))
            {
                break;
            }
        }
    }
    let mut listed = BTreeSet::new();
    let mut under = false;
    for line in lines {
        if line.trim_start().starts_with("```") {
            break;
        }
        if !line.starts_with(' ') {
            under = line.starts_with("boot-userspace/");
            continue;
        }
        if !under || !line.starts_with("  ") || line[2..].starts_with(' ') {
            continue;
        }
        // `  serve, cli    description`: the names are the first word and every word after
        // one that ends in a comma.
        for word in line.split_whitespace() {
            let name = word.trim_end_matches(',');
            let name = name.trim_end_matches('/').trim_end_matches(".rs");
            listed.insert(name.to_owned());
            if !word.ends_with(',') {
                break;
            }
        }
    }
    Some(listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const README: &str = "# X\n\n```sh\ncargo xtask test\n```\n\n```\nCargo.toml        workspace; shared lints\n\
        boot-ebpf/\n  programs/       XDP programs\nboot-userspace/   the daemon\n  config/         TOML config\n\
        \x20 util/ helpers\n  inventory       hosts\n                  (continued description)\n\
        \x20 serve, cli      `bootfabric serve`\n  main.rs         thin main\nxtask/            tasks\n  notmine/\n```\n";

    #[test]
    fn lists_the_two_space_entries_under_boot_userspace_only() {
        let listed = listed_modules(README).expect("block");
        let names: Vec<&str> = listed.iter().map(String::as_str).collect();
        assert_eq!(
            names,
            ["cli", "config", "inventory", "main", "serve", "util"]
        );
    }

    #[test]
    fn a_readme_without_the_block_has_no_list() {
        assert_eq!(listed_modules("# X\n```\nsomething else\n```\n"), None);
    }
}
