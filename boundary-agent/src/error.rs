//! The crate's one error type. User-facing problems carry enough context (file, line, field,
//! missing privilege) to be fixed without reading the source.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{0}")]
    Io(#[from] std::io::Error),

    #[error("boundary run needs privileges it does not have: {0}. Run it as root (sudo boundary run ...); the command was not started")]
    MissingPrivileges(String),

    #[error("cgroup v2 is not available: {0}")]
    NoCgroup2(String),

    #[error("loading the eBPF programs failed: {0}")]
    Ebpf(String),

    #[error("the policy does not fit the kernel maps: {0}")]
    Compile(String),

    #[error("DNS: {0}")]
    Dns(String),

    #[error("{0}")]
    Confine(String),

    #[error("the boundary agent: {0}")]
    Agent(String),

    #[error("invalid target {target:?}: {reason}")]
    InvalidTarget { target: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use boundary_policy::{ConfigError, Problem};

impl From<boundary_policy::CompileError> for Error {
    fn from(e: boundary_policy::CompileError) -> Error {
        Error::Compile(e.0)
    }
}
