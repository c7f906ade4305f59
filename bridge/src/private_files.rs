//! Files and directories that hold prompts, completions and command lines: owner-only.
//!
//! The store (SQLite and its `-wal`/`-shm` files), the spool and the journal carry what users
//! typed, so Bridge creates them `0600` (files) and `0700` (directories) whatever the umask.
//! SQLite gives its `-wal` and `-shm` files the mode of the database file, so creating the
//! database file `0600` first is what keeps those private too. Existing files keep their mode
//! (an admin may have chosen `0640` for a backup group); one readable by everyone is reported.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Mode of the files Bridge creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories Bridge creates.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents with [`DIR_MODE`]; an existing directory is kept.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(DIR_MODE);
    }
    b.create(dir)?;
    warn_if_world_readable(dir);
    Ok(())
}

/// Options that create a file with [`FILE_MODE`] (an existing file keeps its mode).
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(FILE_MODE);
    }
    o
}

/// Opens `path` for appending, creating it with [`FILE_MODE`].
pub fn append(path: &Path) -> io::Result<File> {
    options().create(true).append(true).open(path)
}

/// Writes `data` to `path`, creating it with [`FILE_MODE`].
pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut f = options()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(data)
}

/// Creates `path` empty with [`FILE_MODE`] if it does not exist, so that a program creating
/// it later (SQLite) finds the mode set.
pub fn touch(path: &Path) -> io::Result<()> {
    options().create(true).append(true).open(path).map(|_| ())
}

/// Logs a warning when an existing file or directory can be read by every user.
pub fn warn_if_world_readable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o004 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:04o}"),
                    "readable by every user, but it holds prompts: chmod o-rwx it (Bridge creates such files 0600, directories 0700)"
                );
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_directories_are_created_owner_only_whatever_the_umask() {
        let base =
            std::env::temp_dir().join(format!("bridge-private-{}", uuid::Uuid::now_v7().simple()));
        let dir = base.join("a/b");
        // SAFETY: umask only changes this process's file-creation mask.
        let old = unsafe { libc::umask(0) };
        create_dir_all(&dir).unwrap();
        write(&dir.join("f"), b"x").unwrap();
        append(&dir.join("g")).unwrap();
        touch(&dir.join("h")).unwrap();
        unsafe { libc::umask(old) };
        assert_eq!(mode(&base), 0o700);
        assert_eq!(mode(&dir), 0o700);
        for f in ["f", "g", "h"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
