//! `boundary agent --control-plane URL`: the agent as a member of a fleet that Bridge governs
//! (see docs/CONTROL_PLANE.md, the wire contract).
//!
//! - [`client`]: HTTPS to the control plane (hyper, rustls with the webpki roots and
//!   `--ca-file`), the agent's token and identity headers on every request;
//! - [`policy`]: long-polls the template's policy, keeps the last good one on disk, points
//!   the default policy's sessions at it, reports status;
//! - [`spool`]: the bounded on-disk queue every event goes through, with its `event.id`;
//! - [`shipper`]: sends the spool in batches, deletes only what the server acknowledged;
//! - [`credential`]: the per-session credential given to the wrapped command.

pub mod client;
pub mod spool;
