//! The crate's one error type. User-facing problems carry enough context (file, line, field,
//! missing privilege) to be fixed without reading the source.

use std::fmt;
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

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

/// One problem, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub col: usize,
    /// Dotted path of the field, e.g. `allowlist[2].ports` or `mode`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, p.line, p.col, p.field, p.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
