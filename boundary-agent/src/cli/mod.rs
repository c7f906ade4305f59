//! Subcommands of the `boundary` binary: one module each.
pub mod check;
pub mod run;
pub mod validate;
