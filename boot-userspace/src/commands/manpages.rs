//! `bootfabric completions SHELL` and `bootfabric man --out DIR`: the shell completions and
//! the man pages, generated from the same clap definitions as the parser, so they cannot
//! drift from the options the binary takes. The Debian package (`cargo xtask package`) ships
//! what these print.

use std::{io::Write, path::Path};

use clap::CommandFactory;

use super::Cli;

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "bootfabric", out);
}

/// Writes `bootfabric.1` and one page per visible subcommand (`bootfabric-hosts-ls.1`, …)
/// into `dir`, creating it. Returns the number of pages written.
pub fn man(dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    // clap_mangen writes no date: a page rendered twice from one source is the same file,
    // which a reproducible package needs.
    clap_mangen::generate_to(Cli::command(), dir)?;
    let pages = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".1"))
        .count();
    Ok(pages)
}
