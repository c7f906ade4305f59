//! The session's syscall filter (seccomp): the same "only what we know" as the eBPF programs,
//! for what must hold even where the BPF LSM programs cannot load (kernels that refuse
//! BPF_PROG_TYPE_LSM, or where `bpf` is not among the active LSMs).
//!
//! - `socket()`: AF_UNIX, AF_NETLINK, AF_INET and AF_INET6 only (the family allowlist of the
//!   `lsm_socket_create` program), inet ones of type stream, datagram or raw (not
//!   SOCK_PACKET, which the kernel turns into AF_PACKET); inet sockets are then judged, and
//!   refusals reported, by the `sock_create` program (TCP, MPTCP, UDP only). `socketpair()`: AF_UNIX only. Everything
//!   else (AF_PACKET, AF_VSOCK, AF_XDP, AF_ALG, ...) fails with EPERM. A seccomp filter writes
//!   no Boundary event: where the LSM programs load, they refuse (and report) first.
//! - `bpf()`: EPERM (no loading, detaching or reading pinned programs and maps).
//! - `unshare()` / `clone()` with CLONE_NEWUSER: EPERM; `clone3()`: ENOSYS, so that libc
//!   falls back to `clone()`, whose flags a filter can read.
//! - `io_uring_setup()`: EPERM (io_uring creates sockets without the `socket()` syscall).
//! - any other syscall ABI (x32, i386): the process is killed.
//!
//! The filter is built before fork ([`SyscallFilter::new`]) and installed in the child right
//! before exec ([`SyscallFilter::install`], async-signal-safe); it is inherited by every
//! descendant and cannot be removed. It applies to root inside the session too.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
/// x32 syscalls carry this bit in their number on x86_64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF opcodes (linux/filter.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

// struct seccomp_data offsets.
const NR: u32 = 0;
const ARCH: u32 = 4;
const fn arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

const AF_UNIX: u32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const AF_NETLINK: u32 = 16;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
/// SOCK_TYPE_MASK: the type without SOCK_NONBLOCK / SOCK_CLOEXEC.
const SOCK_TYPE_MASK: u32 = 0xf;
const CLONE_NEWUSER: u32 = 0x1000_0000;

/// A jump target: the next instruction, or a label.
#[derive(Clone, Copy)]
enum To {
    Next,
    L(&'static str),
}

enum Insn {
    Stmt(u16, u32),
    Jump(u16, u32, To, To),
    Label(&'static str),
}

/// A prebuilt seccomp program, in two variants: refusals answered by the kernel (EPERM), or
/// handed to a supervisor that reports them and answers EPERM ([`supervise`]).
pub struct SyscallFilter {
    program: Vec<libc::sock_filter>,
    notifying: Vec<libc::sock_filter>,
}

/// One refused system call, as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The calling thread's id (in the supervisor's pid namespace).
    pub pid: u32,
    /// `socket`, `socketpair`, `bpf`, `io_uring_setup`, `unshare` or `clone`.
    pub syscall: &'static str,
    /// The call's first three arguments (family, type, protocol for socket(); the command
    /// for bpf(); the flags for unshare() and clone()).
    pub args: [u64; 3],
}

impl Default for SyscallFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl SyscallFilter {
    /// Builds the filter (allocates; call before fork).
    pub fn new() -> SyscallFilter {
        SyscallFilter {
            program: assemble(&program(SECCOMP_RET_ERRNO | libc::EPERM as u32)),
            notifying: assemble(&program(SECCOMP_RET_USER_NOTIF)),
        }
    }

    /// Installs the filter on the calling thread (inherited across fork and exec). Only
    /// makes syscalls: safe between fork and exec. Without CAP_SYS_ADMIN the kernel demands
    /// no_new_privs first, which is then set.
    pub fn install(&self) -> io::Result<()> {
        install(&self.program, 0).map(|_| ())
    }

    /// Installs the notifying variant and returns its listener: hand it to a thread or
    /// process that runs [`supervise`] (over a Unix socket, SCM_RIGHTS), then close it here.
    /// Every refused call waits for the supervisor's answer; once the last listener fd is
    /// closed, refused calls fail with ENOSYS instead (still refused). Async-signal-safe.
    pub fn install_notifying(&self) -> io::Result<OwnedFd> {
        let fd = install(&self.notifying, libc::SECCOMP_FILTER_FLAG_NEW_LISTENER)?;
        // SAFETY: the kernel returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Instructions in the program (for tests).
    pub fn len(&self) -> usize {
        self.program.len()
    }

    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }
}

/// Answers the refused calls of the processes behind `listener`, calling `report` for each
/// first: EPERM, or, when `report` returns true (audit mode), the call goes ahead. Returns
/// when every process under the filter is gone.
pub fn supervise(listener: OwnedFd, mut report: impl FnMut(Refusal) -> bool) -> io::Result<()> {
    loop {
        match pending(listener.as_fd(), -1)? {
            Pending::Refusal => answer(listener.as_fd(), &mut report)?,
            Pending::Nothing => {}
            Pending::Gone => return Ok(()),
        }
    }
}

/// [`supervise`] as a task of the tokio runtime, with no thread of its own: an agent serves
/// hundreds of sessions.
pub async fn supervise_async(
    listener: OwnedFd,
    mut report: impl FnMut(Refusal) -> bool,
) -> io::Result<()> {
    // SAFETY: the AsyncFd owns the listener, which stays open (and the same fd) as long as
    // it is registered.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE)
    }?;
    loop {
        let mut guard = fd.readable().await?;
        // Readiness is edge-triggered: answer everything pending before waiting again (the
        // receive itself would block if nothing were).
        loop {
            match pending(fd.get_ref().as_fd(), 0)? {
                Pending::Refusal => answer(fd.get_ref().as_fd(), &mut report)?,
                Pending::Nothing => break,
                Pending::Gone => return Ok(()),
            }
        }
        guard.clear_ready();
    }
}

enum Pending {
    /// A refused call waits for its answer.
    Refusal,
    Nothing,
    /// No process is left under the filter.
    Gone,
}

/// Polls the listener (`timeout_ms` as poll(2): -1 waits).
fn pending(listener: BorrowedFd, timeout_ms: i32) -> io::Result<Pending> {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            return Ok(Pending::Nothing);
        }
        return Err(err);
    }
    if n == 0 {
        return Ok(Pending::Nothing);
    }
    if pfd.revents & libc::POLLIN != 0 {
        return Ok(Pending::Refusal);
    }
    // POLLHUP: no process is left under the filter.
    Ok(Pending::Gone)
}

/// Receives one pending refusal, reports it and answers it.
fn answer(listener: BorrowedFd, report: &mut impl FnMut(Refusal) -> bool) -> io::Result<()> {
    // SAFETY: zeroed is a valid seccomp_notif (the kernel requires it zeroed).
    let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: valid listener fd and struct.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV,
            &mut req,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // The target went away between notification and receipt: next one.
            Some(libc::EINTR) | Some(libc::ENOENT) => return Ok(()),
            _ => return Err(err),
        }
    }
    let nr = req.data.nr as libc::c_long;
    let syscall = match nr {
        libc::SYS_socket => "socket",
        libc::SYS_socketpair => "socketpair",
        libc::SYS_bpf => "bpf",
        libc::SYS_io_uring_setup => "io_uring_setup",
        libc::SYS_unshare => "unshare",
        libc::SYS_clone => "clone",
        _ => "unknown",
    };
    let allow = report(Refusal {
        pid: req.pid,
        syscall,
        args: [req.data.args[0], req.data.args[1], req.data.args[2]],
    });
    // CONTINUE lets the kernel run the call as if no filter had stopped it; it is only
    // used for audit mode, where nothing is refused.
    let mut resp = libc::seccomp_notif_resp {
        id: req.id,
        val: 0,
        error: if allow { 0 } else { -libc::EPERM },
        flags: if allow {
            libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32
        } else {
            0
        },
    };
    // SAFETY: valid listener fd and struct.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &mut resp,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // ENOENT: the caller was interrupted meanwhile; it retries and is asked again.
        if err.raw_os_error() != Some(libc::ENOENT) {
            return Err(err);
        }
    }
    Ok(())
}

fn install(program: &[libc::sock_filter], flags: libc::c_ulong) -> io::Result<libc::c_long> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    let call = || {
        // SAFETY: prog points to a valid filter that outlives the call.
        unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &prog as *const libc::sock_fprog,
            )
        }
    };
    let rc = call();
    if rc >= 0 {
        return Ok(rc);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EACCES) {
        return Err(err);
    }
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let rc = call();
    if rc >= 0 {
        Ok(rc)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The filter, with `refuse` as the action for what it refuses.
fn program(refuse: u32) -> Vec<Insn> {
    use Insn::*;
    use To::*;
    let nr = |n: libc::c_long| n as u32;
    let enosys = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let insns = vec![
        Stmt(BPF_LD_W_ABS, ARCH),
        Jump(BPF_JEQ_K, AUDIT_ARCH, Next, L("kill")),
        Stmt(BPF_LD_W_ABS, NR),
        Jump(BPF_JGE_K, X32_SYSCALL_BIT, L("kill"), Next),
        Jump(BPF_JEQ_K, nr(libc::SYS_socket), L("socket"), Next),
        Jump(BPF_JEQ_K, nr(libc::SYS_socketpair), L("socketpair"), Next),
        Jump(BPF_JEQ_K, nr(libc::SYS_bpf), L("refuse"), Next),
        Jump(BPF_JEQ_K, nr(libc::SYS_io_uring_setup), L("refuse"), Next),
        Jump(BPF_JEQ_K, nr(libc::SYS_clone3), L("enosys"), Next),
        Jump(BPF_JEQ_K, nr(libc::SYS_unshare), L("flags0"), Next),
        Jump(BPF_JEQ_K, nr(libc::SYS_clone), L("flags0"), L("allow")),
        // unshare(flags) and clone(flags, ...) on x86_64 and aarch64: flags is argument 0.
        Label("flags0"),
        Stmt(BPF_LD_W_ABS, arg_lo(0)),
        Jump(BPF_JSET_K, CLONE_NEWUSER, L("refuse"), L("allow")),
        Label("socketpair"),
        Stmt(BPF_LD_W_ABS, arg_lo(0)),
        Jump(BPF_JEQ_K, AF_UNIX, L("allow"), L("refuse")),
        Label("socket"),
        Stmt(BPF_LD_W_ABS, arg_lo(0)),
        Jump(BPF_JEQ_K, AF_UNIX, L("allow"), Next),
        Jump(BPF_JEQ_K, AF_NETLINK, L("allow"), Next),
        Jump(BPF_JEQ_K, AF_INET, L("inet"), Next),
        Jump(BPF_JEQ_K, AF_INET6, L("inet"), L("refuse")),
        // Inet sockets of type stream, datagram or raw pass: the eBPF programs judge their
        // type and protocol (and report what they refuse, which a seccomp filter cannot).
        // Any other type is refused here: SOCK_PACKET in particular, which the kernel
        // turns into an AF_PACKET socket after this filter has seen AF_INET.
        Label("inet"),
        Stmt(BPF_LD_W_ABS, arg_lo(1)),
        Stmt(BPF_ALU_AND_K, SOCK_TYPE_MASK),
        Jump(BPF_JEQ_K, SOCK_STREAM, L("allow"), Next),
        Jump(BPF_JEQ_K, SOCK_DGRAM, L("allow"), Next),
        Jump(BPF_JEQ_K, SOCK_RAW, L("allow"), L("refuse")),
        Label("allow"),
        Stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
        Label("refuse"),
        Stmt(BPF_RET_K, refuse),
        Label("enosys"),
        Stmt(BPF_RET_K, enosys),
        Label("kill"),
        Stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
    ];
    insns
}

/// Resolves labels into classic BPF's relative forward jumps.
fn assemble(insns: &[Insn]) -> Vec<libc::sock_filter> {
    let mut labels = std::collections::HashMap::new();
    let mut pc = 0usize;
    for insn in insns {
        match insn {
            Insn::Label(name) => {
                labels.insert(*name, pc);
            }
            _ => pc += 1,
        }
    }
    let mut out = Vec::with_capacity(pc);
    for insn in insns {
        let here = out.len();
        let target = |to: To| -> u8 {
            match to {
                To::Next => 0,
                To::L(name) => {
                    let at = labels[name];
                    let offset = at
                        .checked_sub(here + 1)
                        .expect("classic BPF jumps only forward");
                    u8::try_from(offset).expect("jump within 255 instructions")
                }
            }
        };
        match *insn {
            Insn::Label(_) => {}
            Insn::Stmt(code, k) => out.push(libc::sock_filter {
                code,
                jt: 0,
                jf: 0,
                k,
            }),
            Insn::Jump(code, k, jt, jf) => out.push(libc::sock_filter {
                code,
                jt: target(jt),
                jf: target(jf),
                k,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_assembles_with_forward_jumps_ending_in_returns() {
        let f = SyscallFilter::new();
        assert!(f.len() > 20);
        let last = f.program.last().unwrap();
        assert_eq!(last.code, BPF_RET_K);
        assert_eq!(last.k, SECCOMP_RET_KILL_PROCESS);
        for (i, insn) in f
            .program
            .iter()
            .enumerate()
            .filter(|(_, i)| i.code & 7 == 5)
        {
            assert!(i + 1 + (insn.jt as usize) < f.len());
            assert!(i + 1 + (insn.jf as usize) < f.len());
        }
    }
}
