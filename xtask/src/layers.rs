//! `cargo xtask layers`: the layering check of docs/architecture.md (the same one
//! tests/tests/layering.rs runs in CI), with the component graph printed so a reader sees
//! which component uses which and how often.

use bootfabric_lab::layering::Repo;

use crate::root;

/// Prints the component graph (each edge with its number of references, grouped by the
/// using component's layer) and every violation; exits with status 1 when there is one.
pub fn run() -> anyhow::Result<()> {
    let repo = match Repo::load(&root()) {
        Ok(repo) => repo,
        Err(violations) => return report(&violations),
    };
    let analysis = repo.analyze();
    println!("component graph (from -> to: references), by layer, lowest first:");
    for (index, layer) in repo.table.layers.iter().enumerate() {
        println!("  layer {}:", layer.name);
        for ((from, to), sites) in &analysis.edges {
            let from_layer = repo.table.place(&segments(from)).map(|p| p.layer);
            if from_layer == Some(index) {
                let to_layer = repo
                    .table
                    .place(&segments(to))
                    .map_or("?", |p| repo.table.layer_name(p.layer));
                println!("    {from} -> {to} ({to_layer}): {}", sites.len());
            }
        }
    }
    report(&analysis.violations)
}

fn segments(component: &str) -> Vec<String> {
    component.split("::").map(str::to_owned).collect()
}

fn report(violations: &[bootfabric_lab::layering::Violation]) -> anyhow::Result<()> {
    if violations.is_empty() {
        println!("layering: no violations");
        return Ok(());
    }
    println!("\n{} violation(s):", violations.len());
    for v in violations {
        println!("  {v}");
    }
    // The list above is the whole report; an error here would only add a backtrace to it.
    std::process::exit(1)
}
