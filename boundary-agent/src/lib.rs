//! Boundary agent: turns a `config.yaml` allowlist into kernel policy and runs commands under it.
//!
//! The floors, each using only those below it:
//! - `cli` (in the `boundary` binary): arguments, messages, exit codes;
//! - [`daemon`] (`boundary agent`), [`client`] (`boundary run` through it, inspection) and
//!   their [`protocol`];
//! - [`session`]: one policy, one cgroup, one copy of the programs, the event pipeline;
//! - the kernel side: [`loader`] (programs, maps, pins), [`cgroup`] (session cgroups),
//!   [`confine`] (what the command gives up before exec: privileges, no_new_privs, Landlock);
//!   [`resolver`] (names to addresses), [`dns`] (the per-session DNS proxy every query of a
//!   session goes through) and [`events`] (enrichment, sinks);
//! - [`policy`]: the pure policy (parse with positions, validate, match, compile); no I/O;
//! - [`error`]: the crate's one error type.

pub mod error;

pub mod dns;
pub mod policy;
pub mod resolver;

pub mod cgroup;
pub mod events;
pub mod loader;
pub mod session;

pub mod client;
pub mod confine;
pub mod daemon;
pub mod protocol;
