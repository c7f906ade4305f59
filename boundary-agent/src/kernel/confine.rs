//! What the wrapped command gives up before its first instruction: the process-level half of
//! the boundary (the eBPF programs are the network half).
//!
//! In the forked child, before `exec`, in this order:
//! 1. join the session cgroup (single-shot mode, where boundary is root), so every socket the
//!    command ever creates is judged by the session's programs;
//! 2. empty the capability bounding and ambient sets and switch to the unprivileged user
//!    (when started by root: `sudo` → SUDO_UID/SUDO_GID, or `--user`);
//! 3. set `no_new_privs`, so setuid binaries (`sudo`, `su`) and file capabilities inside can
//!    never regain privileges;
//! 4. enter a Landlock domain: the command cannot ptrace, signal, or reach abstract Unix
//!    sockets of processes outside its session (Landlock's scoping, ABI 6; on older kernels
//!    only the ptrace restriction, which every Landlock domain carries);
//! 5. in daemon mode, connect to the agent and ask it to move this very process (identified
//!    by the kernel through SO_PEERCRED/SO_PEERPIDFD) into the session cgroup, and wait for
//!    its answer. A child that is not moved never execs;
//! 6. install the session's syscall filter (seccomp, see [`SyscallFilter`]): the socket
//!    allowlist, no bpf(), no user namespaces, no io_uring, even where BPF LSM is missing. Its
//!    refusals go to a supervisor (the agent, or the single-shot `boundary run`) that reports
//!    each one as an event: the filter's listener is handed over with SCM_RIGHTS.
//!
//! In daemon mode the filter is installed before the join, and its listener travels with the
//! join request, so that the agent can check (/proc) that the process it moves has
//! no_new_privs and a filter, and supervise it.
//!
//! Everything the child runs is prepared before the fork: the closure only makes
//! async-signal-safe system calls on memory allocated in the parent.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::loader::SyscallFilter;

/// The unprivileged identity the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub name: String,
    pub home: Option<std::path::PathBuf>,
}

impl TargetUser {
    /// Looks up a user by name or numeric uid in the user database.
    pub fn lookup(spec: &str) -> Result<TargetUser> {
        let user = match spec.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            Err(_) => nix::unistd::User::from_name(spec),
        }
        .map_err(|e| Error::Confine(format!("looking up user `{spec}`: {e}")))?;
        let Some(user) = user else {
            // A bare uid with no passwd entry is still a valid identity (containers).
            if let Ok(uid) = spec.parse::<u32>() {
                return Ok(TargetUser {
                    uid,
                    gid: uid,
                    groups: vec![uid],
                    name: uid.to_string(),
                    home: None,
                });
            }
            return Err(Error::Confine(format!("no user named `{spec}`")));
        };
        let name = CString::new(user.name.as_bytes())
            .map_err(|_| Error::Confine(format!("user name `{}` contains NUL", user.name)))?;
        let groups = nix::unistd::getgrouplist(&name, user.gid)
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| vec![user.gid.as_raw()]);
        Ok(TargetUser {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
            name: user.name,
            home: Some(user.dir),
        })
    }

    /// The user `sudo` was invoked by, from SUDO_UID/SUDO_GID.
    pub fn from_sudo() -> Option<Result<TargetUser>> {
        let uid = std::env::var("SUDO_UID").ok()?;
        let uid: u32 = match uid.parse() {
            Ok(u) => u,
            Err(_) => {
                return Some(Err(Error::Confine(format!(
                    "SUDO_UID `{uid}` is not a uid"
                ))))
            }
        };
        if uid == 0 {
            return None;
        }
        let mut user = match TargetUser::lookup(&uid.to_string()) {
            Ok(u) => u,
            Err(e) => return Some(Err(e)),
        };
        if let Some(gid) = std::env::var("SUDO_GID").ok().and_then(|g| g.parse().ok()) {
            user.gid = gid;
            if !user.groups.contains(&gid) {
                user.groups.push(gid);
            }
        }
        Some(Ok(user))
    }
}

/// Who the command runs as, decided once from the caller and the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// The caller itself (an unprivileged caller, or root with `--root`).
    Caller,
    /// Switch to this user (root callers only).
    User(TargetUser),
}

impl RunAs {
    /// Root callers must say whom the command runs as; unprivileged callers run as themselves.
    pub fn decide(user: Option<&str>, allow_root: bool) -> Result<RunAs> {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            if let Some(spec) = user {
                let wanted = TargetUser::lookup(spec)?;
                if wanted.uid != nix::unistd::getuid().as_raw() {
                    return Err(Error::Confine(format!(
                        "--user {spec}: only root can run a command as another user"
                    )));
                }
            }
            return Ok(RunAs::Caller);
        }
        if let Some(spec) = user {
            return Ok(RunAs::User(TargetUser::lookup(spec)?));
        }
        if allow_root {
            return Ok(RunAs::Caller);
        }
        match TargetUser::from_sudo() {
            Some(user) => Ok(RunAs::User(user?)),
            None => Err(Error::Confine(
                "refusing to run the command as root: a root process with capabilities can \
                 remove its own boundary. Pass --user NAME (or run through sudo, which drops \
                 to the invoking user), or --root to run it as root knowing that this is not \
                 a security boundary"
                    .into(),
            )),
        }
    }
}

/// Everything the child does between fork and exec, prepared in the parent.
pub struct Confinement {
    cgroup_procs: Option<CString>,
    user: Option<TargetUser>,
    landlock: Option<OwnedFd>,
    last_cap: u32,
    join: Option<Join>,
    seccomp: SyscallFilter,
    /// Single-shot mode: the child's end of a socket pair to the supervising parent.
    supervisor: Option<std::os::fd::RawFd>,
}

/// Daemon mode: the request the child sends to the agent to be moved into its session.
struct Join {
    socket: libc::sockaddr_un,
    socket_len: libc::socklen_t,
    request: Vec<u8>,
}

impl Confinement {
    pub fn new(run_as: &RunAs) -> Result<Confinement> {
        Ok(Confinement {
            cgroup_procs: None,
            user: match run_as {
                RunAs::Caller => None,
                RunAs::User(u) => Some(u.clone()),
            },
            landlock: landlock_ruleset()?,
            last_cap: last_cap(),
            join: None,
            seccomp: SyscallFilter::new(),
            supervisor: None,
        })
    }

    /// Single-shot mode: the child writes itself into `procs` (a cgroup.procs file).
    pub fn join_cgroup(mut self, procs: &Path) -> Result<Confinement> {
        self.cgroup_procs = Some(
            CString::new(procs.as_os_str().as_bytes())
                .map_err(|_| Error::Confine("cgroup path contains NUL".into()))?,
        );
        Ok(self)
    }

    /// Daemon mode: the child asks the agent at `socket` to move it, sending `request` (one
    /// JSON line) and expecting a line starting with `{"ok":true`.
    pub fn join_through_agent(mut self, socket: &Path, request: Vec<u8>) -> Result<Confinement> {
        // SAFETY: sockaddr_un is plain data; zeroed is a valid (empty) value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = socket.as_os_str().as_bytes();
        if bytes.len() >= addr.sun_path.len() {
            return Err(Error::Confine(format!(
                "agent socket path {} is too long",
                socket.display()
            )));
        }
        for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
        self.join = Some(Join {
            socket: addr,
            socket_len: len as libc::socklen_t,
            request,
        });
        Ok(self)
    }

    /// Single-shot mode: the filter's listener goes to whoever holds the other end of
    /// `socket` (a socket pair), which supervises the command (see [`receive_listener`]).
    pub fn supervised_through(mut self, socket: std::os::fd::RawFd) -> Confinement {
        self.supervisor = Some(socket);
        self
    }

    /// Environment the command should see for the user it runs as.
    pub fn user_env(&self) -> Vec<(&'static str, String)> {
        match &self.user {
            None => Vec::new(),
            Some(u) => {
                let mut env = vec![("USER", u.name.clone()), ("LOGNAME", u.name.clone())];
                if let Some(home) = &u.home {
                    env.push(("HOME", home.display().to_string()));
                }
                env
            }
        }
    }

    /// Installs the steps as the command's `pre_exec` hook.
    pub fn install(self, cmd: &mut tokio::process::Command) {
        // SAFETY: `apply` only makes async-signal-safe system calls on memory prepared before
        // the fork (see the module doc).
        unsafe {
            cmd.pre_exec(move || self.apply());
        }
    }

    /// Runs in the child between fork and exec. Any error aborts the exec.
    fn apply(&self) -> std::io::Result<()> {
        // SAFETY (whole function): raw system calls on valid, pre-allocated memory.
        unsafe {
            if let Some(procs) = &self.cgroup_procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    // Never exec outside the cgroup: the command would run unconfined.
                    return Err(err);
                }
            }
            // Ambient capabilities would survive the exec; clearing them is allowed to anyone.
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            if let Some(user) = &self.user {
                // Needs CAP_SETPCAP, which root still has here: after this, nothing the
                // command execs can ever hold a capability.
                for cap in 0..=self.last_cap {
                    if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::setgroups(user.groups.len(), user.groups.as_ptr()) != 0
                    || libc::setresgid(user.gid, user.gid, user.gid) != 0
                    || libc::setresuid(user.uid, user.uid, user.uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(ruleset) = &self.landlock {
                if libc::syscall(
                    libc::SYS_landlock_restrict_self,
                    ruleset.as_raw_fd(),
                    0 as libc::c_uint,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // From here on the process can create only the sockets the policy knows; the
            // refusals wait for the supervisor, which reports them.
            if self.join.is_none() && self.supervisor.is_none() {
                return self.seccomp.install();
            }
            let listener = self.seccomp.install_notifying()?;
            if let Some(join) = &self.join {
                join_through_agent(join, listener.as_raw_fd())?;
            } else if let Some(socket) = self.supervisor {
                send_fd(socket, listener.as_raw_fd(), b"L")?;
            }
            // Our copy of the listener goes; the supervisor holds the other.
            drop(listener);
        }
        Ok(())
    }
}

/// Sends `payload` with `fd` attached (SCM_RIGHTS). Async-signal-safe: no allocation.
fn send_fd(socket: i32, fd: i32, payload: &[u8]) -> std::io::Result<usize> {
    // SAFETY: msghdr and cmsg buffers live on this stack frame and are sized with CMSG_SPACE;
    // the CMSG_* helpers only compute pointers within them.
    unsafe {
        let mut space = [0u64; 4];
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        let n = libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// Single-shot mode, in the parent: the listener the child sent through its end of the pair.
pub fn receive_listener(socket: &std::os::unix::net::UnixStream) -> std::io::Result<OwnedFd> {
    socket.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    recv_with_fd(socket.as_raw_fd(), 8)?
        .1
        .ok_or_else(|| std::io::Error::other("the command sent no syscall-filter listener"))
}

/// Reads one message of up to `max` bytes with recvmsg, keeping a file descriptor sent with
/// it (at most one; the kernel closes any extra).
pub fn recv_with_fd(
    fd: std::os::fd::RawFd,
    max: usize,
) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = vec![0u8; max];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let (bytes, fds) = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(std::io::Error::from)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(received) = c {
                fds.extend(received);
            }
        }
        (msg.bytes, fds)
    };
    buf.truncate(bytes);
    // SAFETY: the kernel installed these fds for us; each is owned exactly once.
    let mut owned = fds.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) });
    Ok((buf, owned.next()))
}

/// Connects to the agent, sends the join request and waits for its answer.
///
/// # Safety
/// Async-signal-safe only; called in the forked child.
unsafe fn join_through_agent(join: &Join, listener: i32) -> std::io::Result<()> {
    // SAFETY: plain system calls on valid memory; see the caller.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fail = |fd: i32| {
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            Err(err)
        };
        if libc::connect(
            fd,
            (&join.socket as *const libc::sockaddr_un).cast(),
            join.socket_len,
        ) != 0
        {
            return fail(fd);
        }
        // The request's first bytes carry the filter's listener.
        let mut sent = match send_fd(fd, listener, &join.request) {
            Ok(n) => n,
            Err(e) => {
                libc::close(fd);
                return Err(e);
            }
        };
        while sent < join.request.len() {
            let n = libc::write(
                fd,
                join.request[sent..].as_ptr().cast(),
                join.request.len() - sent,
            );
            if n <= 0 {
                return fail(fd);
            }
            sent += n as usize;
        }
        // The answer's first bytes decide; the rest of the line is for humans (and logs).
        let want = b"{\"ok\":true";
        let mut got = [0u8; 10];
        let mut have = 0;
        while have < got.len() {
            let n = libc::read(fd, got[have..].as_mut_ptr().cast(), got.len() - have);
            if n <= 0 {
                break;
            }
            have += n as usize;
        }
        libc::close(fd);
        if have == want.len() && got == *want {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(libc::EPERM))
        }
    }
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(40)
}

const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_ACCESS_FS_EXECUTE: u64 = 1;
const LANDLOCK_RULE_PATH_BENEATH: u32 = 1;
const LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1;
const LANDLOCK_SCOPE_SIGNAL: u64 = 2;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI the kernel offers, 0 when Landlock is not available.
pub fn landlock_abi() -> i64 {
    // SAFETY: the documented version query: NULL attr, size 0.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    abi.max(0)
}

/// A ruleset whose domain confines the command to its own session: scoped signals and
/// abstract Unix sockets (ABI 6+), and, as every Landlock domain does, no ptrace of processes
/// outside it. It restricts no file access. `None` when the kernel has no Landlock.
fn landlock_ruleset() -> Result<Option<OwnedFd>> {
    let abi = landlock_abi();
    if abi == 0 {
        return Ok(None);
    }
    let (attr, size) = if abi >= 6 {
        (
            RulesetAttr {
                handled_access_fs: 0,
                handled_access_net: 0,
                scoped: LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL,
            },
            std::mem::size_of::<RulesetAttr>(),
        )
    } else {
        // Older kernels: a domain that handles one file right and grants it everywhere. It
        // restricts nothing on the file system but still forbids ptrace out of the domain.
        (
            RulesetAttr {
                handled_access_fs: LANDLOCK_ACCESS_FS_EXECUTE,
                handled_access_net: 0,
                scoped: 0,
            },
            std::mem::size_of::<u64>(),
        )
    };
    // SAFETY: attr is a valid ruleset attribute of `size` bytes.
    let fd = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, &attr, size, 0u32) };
    if fd < 0 {
        return Err(Error::Confine(format!(
            "creating the Landlock ruleset (ABI {abi}): {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: the kernel returned a new fd that we now own.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if abi < 6 {
        let root = std::fs::File::open("/")
            .map_err(|e| Error::Confine(format!("opening / for the Landlock rule: {e}")))?;
        let rule = PathBeneathAttr {
            allowed_access: LANDLOCK_ACCESS_FS_EXECUTE,
            parent_fd: root.as_raw_fd(),
        };
        // SAFETY: rule is a valid path-beneath attribute.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset.as_raw_fd(),
                LANDLOCK_RULE_PATH_BENEATH,
                &rule,
                0u32,
            )
        };
        if rc != 0 {
            return Err(Error::Confine(format!(
                "adding the Landlock rule: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(Some(ruleset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_users_by_name_and_uid() {
        let root = TargetUser::lookup("root").unwrap();
        assert_eq!(root.uid, 0);
        assert_eq!(TargetUser::lookup("0").unwrap().name, "root");
        // A uid with no passwd entry is accepted as is (containers often have none).
        let bare = TargetUser::lookup("4000123").unwrap();
        assert_eq!((bare.uid, bare.gid), (4000123, 4000123));
        assert!(TargetUser::lookup("no-such-user-xyz").is_err());
    }

    #[test]
    fn this_kernel_offers_landlock_scoping() {
        // TOOLCHAIN.md: landlock is an active LSM on the project's machines (kernel 6.18).
        assert!(landlock_abi() >= 6, "Landlock ABI {}", landlock_abi());
    }
}
