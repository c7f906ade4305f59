//! Bridge: the governed LLM gateway.
//!
//! Agents call Bridge instead of the providers. Bridge authenticates the user, forwards the
//! request (streaming byte for byte) to the configured upstream, and turns every exchange into
//! an [`record::InterceptionRecord`] that is stored, logged and exported off the hot path.

pub mod error;
pub mod record;

// Request path.
pub mod auth;
pub mod config;
pub mod providers;
pub mod proxy;
pub mod server;
pub mod tls;

// Boundary's control plane: enrolment, policies per template, the agent API, sessions.
pub mod control;

// Recording path.
pub mod audit;
pub mod concurrency;
pub mod governance;
pub mod journal;
pub mod keypool;
pub mod keys;
pub mod pricing;
pub mod private_files;
pub mod rate_windows;
pub mod recorder;
pub mod redact;
pub mod retention;
pub mod spool;
pub mod store;
pub mod telemetry;
pub mod usage;
// The audit page.
pub mod web;
pub mod yaml;
