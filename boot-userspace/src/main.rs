//! The `bootfabric` binary.

use clap::Parser;

fn main() {
    let cli = bootfabric::cli::Cli::parse();
    std::process::exit(bootfabric::cli::run(cli));
}
