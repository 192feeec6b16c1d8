//! `bootfabric admin token create`: writes a fresh admin token where the daemon reads it.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

/// `bootfabric admin ...`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// The bearer token of the admin API's control calls.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `bootfabric admin token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Write a fresh random token (32 bytes from the OS, hex) with mode 0600.
    Create(CreateArgs),
}

/// Arguments of `bootfabric admin token create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Config file whose admin.token_file names the file to write.
    #[arg(short, long, default_value = "/etc/bootfabric/bootfabric.toml")]
    pub config: PathBuf,
    /// Write this file instead of the config's admin.token_file.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Replace an existing token (clients holding the old one are then refused).
    #[arg(long)]
    pub force: bool,
    /// Also print the token on standard output.
    #[arg(long)]
    pub print: bool,
}

/// Runs `bootfabric admin ...`; returns the exit code (2 for usage and config errors).
pub fn run(command: &AdminCommand) -> i32 {
    match command {
        AdminCommand::Token(TokenCommand::Create(args)) => create(args),
    }
}

fn create(args: &CreateArgs) -> i32 {
    let path = match &args.file {
        Some(p) => p.clone(),
        None => match token_file_of(&args.config) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("bootfabric admin token create: {e}");
                return 2;
            }
        },
    };
    match crate::config::secrets::token::create(&path, args.force) {
        Ok(token) => {
            eprintln!("wrote a new admin token to {} (mode 0600)", path.display());
            if args.print {
                println!("{token}");
            }
            0
        }
        Err(e) => {
            eprintln!("bootfabric admin token create: {e}");
            1
        }
    }
}

/// Why `admin.token_file` could not be found in a config.
#[derive(Debug, thiserror::Error)]
enum TokenFileOfError {
    /// The config cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The config.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config is not valid TOML of our schema.
    #[error("{path}: {source}")]
    Parse {
        /// The config.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// The key is not set, and no `--file` was given.
    #[error("{path}: key `admin.token_file` is not set: set it, or give --file")]
    Unset {
        /// The config.
        path: PathBuf,
    },
}

/// `admin.token_file` of the config at `config`, against its folder. Only the TOML is read:
/// the full load would refuse the config while the token file does not exist yet.
fn token_file_of(config: &Path) -> Result<PathBuf, TokenFileOfError> {
    let path = || config.to_owned();
    let text = std::fs::read_to_string(config).map_err(|source| TokenFileOfError::Read {
        path: path(),
        source,
    })?;
    let wire: crate::config::wire::ConfigFile =
        toml::from_str(&text).map_err(|source| TokenFileOfError::Parse {
            path: path(),
            source,
        })?;
    let file = wire
        .admin
        .token_file
        .ok_or_else(|| TokenFileOfError::Unset { path: path() })?;
    Ok(config.parent().unwrap_or(Path::new(".")).join(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_found_beside_the_config_or_named_as_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("bootfabric.toml");
        std::fs::write(&cfg, "[admin]\ntoken_file = \"admin.token\"\n").expect("write");
        assert_eq!(
            token_file_of(&cfg).expect("set"),
            dir.path().join("admin.token")
        );
        std::fs::write(&cfg, "[admin]\n").expect("write");
        let e = token_file_of(&cfg).expect_err("unset").to_string();
        assert!(
            e.contains("`admin.token_file`") && e.contains("--file"),
            "{e}"
        );
        std::fs::write(&cfg, "[admin]\nno_such_key = 1\n").expect("write");
        assert!(matches!(
            token_file_of(&cfg),
            Err(TokenFileOfError::Parse { .. })
        ));
    }
}
