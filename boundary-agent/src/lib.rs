//! Boundary agent: turns a `config.yaml` allowlist into kernel policy and runs commands under it.
//!
//! The directories, each floor using only those below it:
//! - `cli/` (in the `boundary` binary): arguments, messages, exit codes;
//! - [`daemon`] (`boundary agent`), with its [`protocol`] and the [`client`] side
//!   (`boundary run` through the agent, `status`, `sessions`, `events`);
//! - [`session`]: one policy, one cgroup, one slot in a shared program set, the event pipeline;
//! - [`kernel`]: [`loader`] (programs, maps, pins, the syscall filter), [`cgroup`] (session
//!   cgroups), [`confine`] (what the command gives up before exec); [`resolver`] (names to
//!   addresses), [`dns`] (the per-session DNS proxy every query of a session goes through)
//!   [`events`] (enrichment, sinks) and [`rings`] (reading a program set's shared event
//!   rings, routing each record to its session);
//! - [`control`] (`boundary agent --control-plane`): the policy from Bridge, the event spool
//!   and its shipper, session credentials; [`managed`]: such a policy on disk, as sessions
//!   read it;
//! - [`policy`]: the pure policy (parse with positions, validate, match, compile); no I/O;
//! - [`error`]: the crate's one error type.

pub mod error;

/// The policy language lives in its own crate (Bridge's control plane validates with it too).
pub use boundary_policy as policy;
pub mod resolver;

pub mod managed;

pub mod dns;
pub mod events;
pub mod kernel;
pub mod rings;
pub mod session;

pub mod control;
pub mod daemon;

// The kernel and daemon pieces by their short names, as the binary and the tests use them.
pub use daemon::{client, protocol};
pub use kernel::{cgroup, confine, loader};
