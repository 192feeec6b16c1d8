//! The token file: read and checked at start-up, created by `bootfabric admin token create`.
//!
//! A file readable by others, or owned by another user, is refused: whoever can read the
//! token can reboot the fleet, and whoever owns the file can replace it.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Shortest token accepted: a guessable token is no credential.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted (the file is read whole).
pub const MAX_TOKEN_LEN: usize = 1024;

/// The admin bearer token. Only its SHA-256 is kept, and compared in constant time: equal
/// lengths, so neither the contents nor the length leak through timing. `Debug` never
/// shows it.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a token file's contents are not a token.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Nothing but (at most) a newline.
    #[error("the file is empty")]
    Empty,
    /// Too short to resist guessing.
    #[error("the token is {len} characters long; give at least {MIN_TOKEN_LEN} (`bootfabric admin token create` makes one)")]
    Short {
        /// Its length.
        len: usize,
    },
    /// Too long for a header.
    #[error("the token is longer than {MAX_TOKEN_LEN} characters")]
    Long,
    /// Whitespace or a control character inside: it could not be sent in a header as is.
    #[error(
        "the token holds whitespace or a control character (only one trailing newline is ignored)"
    )]
    BadCharacter,
}

impl Token {
    /// Parses a token file's contents: one trailing newline (`\n` or `\r\n`) is ignored, the
    /// rest is the token, visible ASCII only.
    pub fn parse(text: &[u8]) -> Result<Self, TokenError> {
        let text = text
            .strip_suffix(b"\n")
            .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
            .unwrap_or(text);
        if text.is_empty() {
            return Err(TokenError::Empty);
        }
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Long);
        }
        if !text.iter().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::BadCharacter);
        }
        if text.len() < MIN_TOKEN_LEN {
            return Err(TokenError::Short { len: text.len() });
        }
        Ok(Self {
            digest: Sha256::digest(text).into(),
        })
    }

    /// Whether `presented` is this token, in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// Why a token file is refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// It cannot be opened or read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a regular file.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// Group or others may read or write it.
    #[error("{path} has mode {mode:04o}: give it 0600 or stricter (chmod 600 {path})")]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Owned by someone other than the daemon's user.
    #[error("{path} is owned by uid {owner}, not by the daemon's user (uid {daemon})")]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The daemon's effective uid.
        daemon: u32,
    },
    /// Its contents are not a usable token.
    #[error("{path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        source: TokenError,
    },
}

/// Reads the token at `path` after checking, on the opened file itself (so a swap between
/// check and read changes nothing), that only the daemon's user can read or change it.
pub fn load(path: &Path) -> Result<Token, TokenFileError> {
    let mut file = open_private(path)?;
    read_token(path, &mut file).map(|(token, _)| token)
}

/// Reads a webhook's signing secret at `path`, checked as the admin token is (mode 0600 or
/// stricter, owned by the daemon's user, at least [`MIN_TOKEN_LEN`] visible characters): the
/// bytes an HMAC is keyed with, one trailing newline removed.
pub fn load_secret(path: &Path) -> Result<Vec<u8>, TokenFileError> {
    let mut file = open_private(path)?;
    let (_, mut text) = read_token(path, &mut file)?;
    if text.ends_with(b"\n") {
        text.pop();
        if text.ends_with(b"\r") {
            text.pop();
        }
    }
    Ok(text)
}

/// Reads a private key file (a TLS client key): at most 64 KiB, checked as the admin token
/// file is (a regular file, mode 0600 or stricter, owned by the daemon's user).
pub fn read_private(path: &Path) -> Result<Vec<u8>, TokenFileError> {
    let file = open_private(path)?;
    let mut bytes = Vec::new();
    file.take(64 * 1024)
        .read_to_end(&mut bytes)
        .map_err(|source| TokenFileError::Read {
            path: path.to_owned(),
            source,
        })?;
    Ok(bytes)
}

/// Opens `path` and checks, on the opened file itself (so a swap between check and read
/// changes nothing), that it is a regular file only the daemon's user can read or change.
fn open_private(path: &Path) -> Result<File, TokenFileError> {
    let read = |source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(TokenFileError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TokenFileError::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    let daemon = nix::unistd::geteuid().as_raw();
    if meta.uid() != daemon {
        return Err(TokenFileError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            daemon,
        });
    }
    Ok(file)
}

/// Reads and parses the token from `file` (opened from `path`): what the daemon and the
/// client both do, so that the client sends exactly what the daemon will accept. Returns
/// the raw bytes too, for the client to send.
fn read_token(path: &Path, file: &mut File) -> Result<(Token, Vec<u8>), TokenFileError> {
    // Bounded: a token is short, and the path could name something huge by mistake.
    let mut text = Vec::new();
    file.take(MAX_TOKEN_LEN as u64 + 3)
        .read_to_end(&mut text)
        .map_err(|source| TokenFileError::Read {
            path: path.to_owned(),
            source,
        })?;
    let token = Token::parse(&text).map_err(|source| TokenFileError::Token {
        path: path.to_owned(),
        source,
    })?;
    Ok((token, text))
}

/// Reads the token at `path` for a client (`bootfabric reboot`): what the daemon will
/// compare, one trailing newline removed. Mode and owner are the daemon's concern; a
/// client that can read the file may send it.
pub fn read_for_client(path: &Path) -> Result<String, TokenFileError> {
    let mut file = File::open(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let (_, text) = read_token(path, &mut file)?;
    let text = String::from_utf8_lossy(&text);
    Ok(text
        .trim_end_matches('\n')
        .trim_end_matches('\r')
        .to_owned())
}

/// Bytes of randomness in a created token (hex-encoded: 64 characters).
pub const TOKEN_BYTES: usize = 32;

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The file is there and `--force` was not given.
    #[error(
        "{path} exists: give --force to replace it (control calls with the old token then fail)"
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The OS random number generator failed.
    #[error("the OS random number generator failed: {0}")]
    Random(String),
    /// Writing failed.
    #[error("{path}: {source}")]
    Write {
        /// The file (or its temporary sibling).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A fresh token: [`TOKEN_BYTES`] from the OS RNG, as lowercase hex.
pub fn generate() -> Result<String, CreateError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::getrandom(&mut bytes).map_err(|e| CreateError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a fresh token to `path` with mode 0600 and returns it. Without `force` an
/// existing file is left alone; with it, the new token is written beside it and renamed
/// over it, so the file is never half-written nor, for an instant, readable by others.
pub fn create(path: &Path, force: bool) -> Result<String, CreateError> {
    let token = generate()?;
    let write = |p: &Path, new: bool| -> Result<(), CreateError> {
        let err = |source| CreateError::Write {
            path: p.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(p)
            .map_err(|e| {
                if new && e.kind() == std::io::ErrorKind::AlreadyExists {
                    CreateError::Exists { path: p.to_owned() }
                } else {
                    err(e)
                }
            })?;
        // The umask may have narrowed the mode further, never widened it; set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
        file.write_all(format!("{token}\n").as_bytes())
            .map_err(err)?;
        file.sync_all().map_err(err)
    };
    if !force {
        write(path, true)?;
        return Ok(token);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "token".to_owned());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    write(&tmp, false)?;
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        CreateError::Write {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn token_files_trim_one_newline_and_refuse_empty_short_and_spaced() {
        let t = Token::parse(format!("{TOKEN}\n").as_bytes()).expect("newline");
        assert!(t.matches(TOKEN.as_bytes()));
        let t = Token::parse(format!("{TOKEN}\r\n").as_bytes()).expect("crlf");
        assert!(t.matches(TOKEN.as_bytes()));
        assert!(!t.matches(format!("{TOKEN}\n").as_bytes()));
        assert_eq!(Token::parse(b"").err(), Some(TokenError::Empty));
        assert_eq!(Token::parse(b"\n").err(), Some(TokenError::Empty));
        assert_eq!(
            Token::parse(b"short\n").err(),
            Some(TokenError::Short { len: 5 })
        );
        assert_eq!(
            Token::parse(format!("{TOKEN}\n\n").as_bytes()).err(),
            Some(TokenError::BadCharacter)
        );
        assert_eq!(
            Token::parse(format!("{TOKEN} x").as_bytes()).err(),
            Some(TokenError::BadCharacter)
        );
        assert_eq!(
            Token::parse(&[b'a'; MAX_TOKEN_LEN + 1]).err(),
            Some(TokenError::Long)
        );
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn tokens_compare_whole() {
        let t = Token::parse(TOKEN.as_bytes()).expect("token");
        assert!(t.matches(TOKEN.as_bytes()));
        assert!(!t.matches(&TOKEN.as_bytes()[..TOKEN.len() - 1]));
        assert!(!t.matches(format!("{TOKEN}0").as_bytes()));
        assert!(!t.matches(b""));
        assert!(!t.matches(TOKEN.to_uppercase().as_bytes()));
    }

    #[test]
    fn created_tokens_load_and_are_not_overwritten_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.token");
        let token = create(&path, false).expect("create");
        assert_eq!(token.len(), 2 * TOKEN_BYTES);
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(load(&path).expect("load").matches(token.as_bytes()));
        assert!(matches!(
            create(&path, false),
            Err(CreateError::Exists { .. })
        ));
        assert!(load(&path).expect("kept").matches(token.as_bytes()));
        assert_eq!(read_for_client(&path).expect("client"), token);
        let again = create(&path, true).expect("force");
        assert_ne!(again, token);
        assert!(load(&path).expect("replaced").matches(again.as_bytes()));
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
    }

    #[test]
    fn readable_by_others_empty_or_missing_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.token");
        create(&path, false).expect("create");
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let e = load(&path).expect_err("mode");
            assert!(
                matches!(e, TokenFileError::Mode { mode: m, .. } if m == mode),
                "{mode:o}: {e}"
            );
            assert!(e.to_string().contains("0600 or stricter"), "{e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        assert!(load(&path).is_ok(), "0400 is stricter");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&path, "\n").expect("empty");
        assert!(matches!(
            load(&path),
            Err(TokenFileError::Token {
                source: TokenError::Empty,
                ..
            })
        ));
        assert!(matches!(
            load(&dir.path().join("nope")),
            Err(TokenFileError::Read { .. })
        ));
        assert!(matches!(
            load(dir.path()),
            Err(TokenFileError::NotAFile { .. }) | Err(TokenFileError::Mode { .. })
        ));
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        // Only root can give a file away; elsewhere this case cannot be built.
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.token");
        create(&path, false).expect("create");
        nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
        let e = load(&path).expect_err("owner");
        assert!(
            matches!(e, TokenFileError::Owner { owner: 65534, .. }),
            "{e}"
        );
    }
}
