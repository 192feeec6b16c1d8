//! Every figure the project publishes comes from a kept benchmark run. The figures live in
//! docs/benchmarks.md and docs/demo.md (moved out of the README), and may appear in the README
//! or any other document under docs/ or bench/. A table of figures (a body cell that is a bare
//! number, such as `1.05`, `**0.274**` or `38.5 s`) must be followed by a line naming the run's
//! `bench/results/<bench>/<stamp>-<commit>/table.md` (a relative link such as
//! `../bench/results/…` counts); that folder must hold the table, the raw output and the meta
//! (commit, date, a clean tree) that `bench/lib.sh`'s `results_open` writes; the commit must be
//! in this checkout's history; and every row a document shows must be a row of that table, so
//! that no figure is edited by hand or left behind by a newer run.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// One markdown table: its first line's number (1-based) and its lines.
struct Table {
    line: usize,
    rows: Vec<String>,
    /// The first non-blank line after the table.
    after: Option<String>,
}

fn tables(text: &str) -> Vec<Table> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut fence = false;
    while i < lines.len() {
        if lines[i].trim_start().starts_with("```") {
            fence = !fence;
            i += 1;
            continue;
        }
        if fence || !lines[i].trim_start().starts_with('|') {
            i += 1;
            continue;
        }
        let start = i;
        while i < lines.len() && lines[i].trim_start().starts_with('|') {
            i += 1;
        }
        let after = lines[i..]
            .iter()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.to_string());
        out.push(Table {
            line: start + 1,
            rows: lines[start..i].iter().map(|l| normalise(l)).collect(),
            after,
        });
    }
    out
}

/// A row with its cells trimmed, so spacing does not matter.
fn normalise(row: &str) -> String {
    let cells: Vec<&str> = row
        .trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect();
    format!("| {} |", cells.join(" | "))
}

fn cells(row: &str) -> Vec<String> {
    row.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

/// A cell that is a measured figure: a number with a fraction, maybe bold, with a bound sign
/// before it and a unit or a parenthesised remark after it (`**1.085**`, `≥ 4000`,
/// `43.6 s`, `> 6 (stopped)`, `38.5 s, 38.1 s`).
fn is_figure(cell: &str) -> bool {
    let c = cell.trim_matches('*').trim();
    let c = c.trim_start_matches(['≥', '>', '<', '≤', '~']).trim_start();
    let number: String = c
        .chars()
        .take_while(|ch| ch.is_ascii_digit() || *ch == '.' || *ch == ',')
        .collect();
    if !number.contains('.') || !number.starts_with(|ch: char| ch.is_ascii_digit()) {
        return false;
    }
    let rest = c[number.len()..].trim_start();
    rest.is_empty()
        || rest.starts_with('(')
        || rest.starts_with('*')
        || ["s", "x", "×", "%", "MiB/s", "µs", "s,"]
            .iter()
            .any(|u| rest == *u || rest.starts_with(&format!("{u} ")) || rest.starts_with(','))
}

fn is_figure_table(t: &Table) -> bool {
    // Rows 0 and 1 are the header and the delimiter.
    t.rows
        .iter()
        .skip(2)
        .any(|r| cells(r).iter().any(|c| is_figure(c)))
}

/// The `bench/results/.../table.md` named in a line (in a link's text or its target).
fn results_path(line: &str) -> Option<String> {
    line.match_indices("bench/results/").find_map(|(i, _)| {
        let tail = &line[i..];
        let end = tail
            .find(|c: char| c.is_whitespace() || "`()[]<>\"'".contains(c))
            .unwrap_or(tail.len());
        let path = &tail[..end];
        path.ends_with("/table.md").then(|| path.to_string())
    })
}

fn meta_field<'a>(meta: &'a str, key: &str) -> Option<&'a str> {
    meta.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .map(str::trim)
}

fn in_history(root: &Path, commit: &str) -> Result<(), String> {
    if !root.join(".git").exists() {
        return Ok(()); // a source tarball: nothing to check against
    }
    let shallow = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--is-shallow-repository"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
        .unwrap_or(false);
    if shallow {
        return Ok(()); // a shallow clone lacks the older commits a run may name
    }
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["merge-base", "--is-ancestor", commit, "HEAD"])
        .output()
        .map_err(|e| format!("git: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "commit {commit} is not in this checkout's history ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What is wrong with one figure table, if anything.
fn check(root: &Path, t: &Table) -> Result<(), String> {
    let after = t.after.as_deref().unwrap_or("");
    let rel = results_path(after).ok_or_else(|| {
        format!("the line after it must name the run's bench/results/<bench>/<run>/table.md, found {after:?}")
    })?;
    let dir = root.join(&rel);
    let dir = dir.parent().unwrap_or(&dir);
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    let table = read("table.md")?;
    let meta = read("meta.txt")?;
    let raw = read("raw.txt")?;
    if raw.trim().is_empty() {
        return Err(format!("{rel}: raw.txt is empty"));
    }
    let commit = meta_field(&meta, "commit").unwrap_or("");
    if commit.len() != 40 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{rel}: meta.txt names no commit"));
    }
    if meta_field(&meta, "date").is_none() {
        return Err(format!("{rel}: meta.txt names no date"));
    }
    if meta_field(&meta, "tree") != Some("clean") {
        return Err(format!(
            "{rel}: the run was made from a tree with uncommitted changes"
        ));
    }
    in_history(root, commit).map_err(|e| format!("{rel}: {e}"))?;
    let kept: Vec<String> = table.lines().map(normalise).collect();
    for row in t.rows.iter().filter(|r| !r.contains("---")) {
        if !kept.contains(row) {
            return Err(format!("{rel}: the row {row:?} is not in the run's table"));
        }
    }
    Ok(())
}

/// The project's documents: README.md and the markdown under docs/ (benchmarks.md, demo.md and
/// the rest) and bench/ (the kept runs' own tables excepted), as paths relative to the root.
fn documents(root: &Path) -> Vec<String> {
    let mut out = vec!["README.md".to_string()];
    let mut stack = vec!["docs".to_string(), "bench".to_string()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let rel = format!("{dir}/{}", e.file_name().to_string_lossy());
            if rel == "bench/results" {
                continue;
            }
            if e.path().is_dir() {
                stack.push(rel);
            } else if rel.ends_with(".md") {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// The documents that hold the published figures: each must still have figure tables, so a
/// move or a rename that would leave them unchecked fails here.
const FIGURE_DOCUMENTS: [&str; 2] = ["docs/benchmarks.md", "docs/demo.md"];

#[test]
fn every_published_figure_quotes_a_kept_run() {
    let root = root();
    let mut problems = Vec::new();
    let mut checked = 0;
    let mut per_document = std::collections::BTreeMap::new();
    let documents = documents(&root);
    for doc in &documents {
        let Ok(text) = std::fs::read_to_string(root.join(doc)) else {
            continue;
        };
        for t in tables(&text).iter().filter(|t| is_figure_table(t)) {
            checked += 1;
            *per_document.entry(doc.clone()).or_insert(0) += 1;
            if let Err(e) = check(&root, t) {
                problems.push(format!("{doc}:{}: {e}", t.line));
            }
        }
    }
    assert!(checked > 0, "no figure table found: the detector is broken");
    for doc in FIGURE_DOCUMENTS {
        assert!(
            documents.iter().any(|d| d == doc),
            "{doc} is not among the checked documents: {documents:?}"
        );
        assert!(
            per_document.get(doc).is_some_and(|n| *n > 0),
            "{doc} has no figure table: were the figures moved without this test?"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_figure_detector_tells_figures_from_text() {
    for f in [
        "1.05",
        "**1.085**",
        "≥ 4000.5",
        "43.6 s",
        "> 6.0 (stopped)",
        "38.5 s, 38.1 s",
        "2099.2",
    ] {
        assert!(is_figure(f), "{f} is a figure");
    }
    for t in [
        "`16`",
        "done (issue 7): 1.08x of the lower bound",
        "4000",
        "1,000",
        "scheduler",
        "`0.5`",
    ] {
        assert!(!is_figure(t), "{t} is not a figure");
    }
    let doc =
        "text\n\n| a | b |\n|---|---|\n| x | 1.5 |\n\nResults: bench/results/x/1-abc/table.md\n";
    let t = tables(doc);
    assert_eq!(t.len(), 1);
    assert!(is_figure_table(&t[0]));
    assert_eq!(
        t[0].after.as_deref().and_then(results_path).as_deref(),
        Some("bench/results/x/1-abc/table.md")
    );
    let link = "Results: [`bench/results/x/1-abc/`](bench/results/x/1-abc/table.md) (raw).";
    assert_eq!(
        results_path(link).as_deref(),
        Some("bench/results/x/1-abc/table.md")
    );
    // docs/ links to the runs relative to itself.
    let relative = "Results: [run](../bench/results/x/1-abc/table.md).";
    assert_eq!(
        results_path(relative).as_deref(),
        Some("bench/results/x/1-abc/table.md")
    );
}
