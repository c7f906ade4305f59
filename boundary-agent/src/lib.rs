//! Boundary agent: turns a `config.yaml` allowlist into kernel policy and runs commands under it.
//!
//! Config side: [`config`] parses and validates, [`policy`] matches and compiles rules into
//! prefix entries, [`resolver`] turns domains into addresses and keeps them fresh.
//! Kernel side: [`loader`] loads the eBPF programs and fills their maps, [`cgroup`] creates the
//! session cgroup, [`session`] runs the wrapped command, [`events`] enriches and ships decisions.

pub mod error;

pub mod config;
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
