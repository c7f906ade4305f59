//! The session's cgroup v2: where the wrapped command and all its descendants live, and where
//! the eBPF programs are attached.
//!
//! A socket belongs to the cgroup of the process that created it, and a process keeps its
//! cgroup across fork and exec, so moving the child in before `exec` (see [`Cgroup::join_path`])
//! puts the whole process tree, daemons included, under the session's programs.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Directory under the cgroup2 root that holds one child per session.
const PARENT: &str = "boundary";

/// Where cgroup v2 is mounted: the first `cgroup2` entry of /proc/self/mountinfo
/// (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(|source| Error::File {
        path: "/proc/self/mountinfo".into(),
        source,
    })?;
    cgroup2_root_in(&text).ok_or_else(|| {
        Error::NoCgroup2(
            "no cgroup2 file system is mounted (see /proc/self/mountinfo); mount one with \
             `mount -t cgroup2 none /sys/fs/cgroup`"
                .into(),
        )
    })
}

fn cgroup2_root_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "36 25 0:31 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// A session cgroup, removed (after killing what is left in it) by [`Cgroup::remove`].
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    dir: File,
}

impl Cgroup {
    /// Creates `<root>/boundary/<name>`.
    pub fn create(root: &Path, name: &str) -> Result<Cgroup> {
        let parent = root.join(PARENT);
        match fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(Error::File {
                    path: parent,
                    source,
                })
            }
        }
        let path = parent.join(name);
        fs::create_dir(&path).map_err(|source| Error::File {
            path: path.clone(),
            source,
        })?;
        let dir = File::open(&path).map_err(|source| Error::File {
            path: path.clone(),
            source,
        })?;
        Ok(Cgroup { path, dir })
    }

    /// Opens an existing session cgroup (a restarted agent adopting a session).
    pub fn open(path: &Path) -> Result<Cgroup> {
        let dir = File::open(path).map_err(|source| Error::File {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Cgroup {
            path: path.to_path_buf(),
            dir,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file a child writes "0" to, in `pre_exec`, to join the cgroup.
    pub fn join_path(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Whether any process is still in the cgroup.
    pub fn populated(&self) -> bool {
        is_populated(&self.path)
    }

    /// Kills every process left in the cgroup and removes it. Waits (briefly) for the kernel to
    /// reap them, since a cgroup with members cannot be removed.
    pub fn remove(self) -> Result<()> {
        remove_dir(&self.path)
    }
}

impl AsFd for Cgroup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

fn is_populated(path: &Path) -> bool {
    fs::read_to_string(path.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Kills what is left in the cgroup at `path` and removes it.
pub fn remove_dir(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    kill_all(path)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(source) => {
                return Err(Error::File {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Kills every process in the cgroup at `path` (the cgroup itself stays). cgroup.kill (5.14+)
/// kills the whole subtree atomically, forks in flight included.
pub fn kill_all(path: &Path) -> Result<()> {
    if is_populated(path) {
        fs::write(path.join("cgroup.kill"), "1").map_err(|source| Error::File {
            path: path.join("cgroup.kill"),
            source,
        })?;
    }
    Ok(())
}

/// The session cgroup directories under `root` (for the stale-session sweep).
pub fn sessions(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(root.join(PARENT)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect()
}

pub fn session_populated(path: &Path) -> bool {
    is_populated(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "25 1 0:23 / /sys/fs/cgroup rw - tmpfs tmpfs ro\n\
                      30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                      31 25 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_root_in(hybrid),
            Some("/sys/fs/cgroup/unified".into())
        );
        let unified = "29 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_root_in(unified), Some("/sys/fs/cgroup".into()));
        assert_eq!(cgroup2_root_in("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }
}
