//! Subcommands of the `bridge` binary. (in progress)
