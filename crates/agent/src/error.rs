//! Errors of the agent core.

use crate::config::ConfigError;

/// What can stop the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("spool: {0}")]
    Spool(#[from] logferry_spool::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("cannot start the sender runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("metrics.listen {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
