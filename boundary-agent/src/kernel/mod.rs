//! The kernel side of a boundary: the eBPF programs and their maps and pins ([`loader`], with
//! the session's syscall filter), the session cgroups ([`cgroup`]), and what a command gives up
//! before it executes ([`confine`]: privileges, no_new_privs, Landlock, the filter).

pub mod cgroup;
pub mod confine;
pub mod loader;
