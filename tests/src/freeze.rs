//! A file system a test can freeze, standing in for a hung disk under the daemon's state.

use std::process::Command;

use crate::TempDir;

/// An ext4 file system on a loop device in a temporary folder, for the daemon's state, that a
/// test can freeze (FIFREEZE, as `fsfreeze` does): every write and fdatasync on it then blocks
/// until it is thawed, as on a hung disk. Unmounted (which frees the loop device) on drop.
pub struct FreezableFs {
    /// Where it is mounted.
    pub mnt: std::path::PathBuf,
    _dir: TempDir,
}

/// A frozen [`FreezableFs`]; thawed on drop. Declare it after the daemon, so that it is
/// dropped (thawed) first: a process blocked on a frozen file system cannot even be killed.
pub struct Frozen<'a>(&'a FreezableFs);

impl FreezableFs {
    /// Makes and mounts it (needs root, `mkfs.ext4`, `mount`, `fsfreeze`).
    pub fn new() -> Result<Self, String> {
        let dir = TempDir::new()?;
        let img = dir.path.join("state.img");
        let mnt = dir.path.join("state");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(32 << 20))
            .map_err(|e| e.to_string())?;
        crate::run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img))?;
        crate::run(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&mnt),
        )?;
        Ok(Self { mnt, _dir: dir })
    }

    /// Freezes it until the answer is dropped.
    pub fn freeze(&self) -> Result<Frozen<'_>, String> {
        crate::run(Command::new("fsfreeze").arg("-f").arg(&self.mnt))?;
        Ok(Frozen(self))
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if let Err(e) = crate::run(Command::new("fsfreeze").arg("-u").arg(&self.0.mnt)) {
            eprintln!("lab cleanup: {e}");
        }
    }
}

impl Drop for FreezableFs {
    fn drop(&mut self) {
        if let Err(e) = crate::run(Command::new("umount").arg(&self.mnt)) {
            eprintln!("lab cleanup: {e}");
        }
    }
}
