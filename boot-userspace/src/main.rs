//! The `bootfabric` binary.

use clap::Parser;

fn main() {
    let cli = bootfabric::commands::Cli::parse();
    std::process::exit(bootfabric::commands::run(cli));
}
