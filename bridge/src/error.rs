//! The crate's one error type.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The interception store (SQLite or PostgreSQL) failed or is unreachable.
    #[error("store: {0}")]
    Store(String),
    /// A store URL that names no supported backend.
    #[error("invalid store URL {url:?}: {reason} (use a path, sqlite://PATH or postgres://USER@HOST:PORT/DB)")]
    StoreUrl { url: String, reason: String },
    /// A bridge key id that does not exist.
    #[error("no bridge key with id {0:?} (see `llm-bridge keys list`)")]
    UnknownKey(String),
    /// The on-disk spool could not be read or written.
    #[error("spool {path}: {reason}")]
    Spool { path: String, reason: String },
    /// Telemetry (logging, OTLP export) could not be set up.
    #[error("telemetry: {0}")]
    Telemetry(String),
    /// A bad argument to a usage or listing query (e.g. an unparsable `--since`).
    #[error("{0}")]
    Query(String),
    /// bridge.yaml is unreadable or invalid; the message names file, line, column and field.
    #[error("{0}")]
    Config(String),
    /// The gateway could not start serving (e.g. the listen address is taken).
    #[error("server: {0}")]
    Server(String),
}
