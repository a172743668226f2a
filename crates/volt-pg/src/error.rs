//! Errors from the Postgres side, each saying whether a retry can help.

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection could not be made or was lost: retry with backoff.
    #[error("connection to Postgres failed: {0}")]
    Connection(String),
    /// Postgres answered with an error to a statement.
    #[error("Postgres error: {message}")]
    Query {
        message: String,
        code: Option<String>,
    },
    /// The replication stream sent something volt cannot decode.
    #[error("replication protocol error: {0}")]
    Protocol(String),
    /// The configuration can never work (bad URL, missing privilege, wal_level).
    #[error("{0}")]
    Config(String),
}

impl PgError {
    /// Whether trying again later (reconnecting) can make this go away.
    pub fn is_retryable(&self) -> bool {
        match self {
            PgError::Connection(_) => true,
            PgError::Query { code, .. } => code.as_deref().is_none_or(|c| {
                // Class 08: connection exceptions; 57P: operator intervention
                // (admin shutdown, crash shutdown); 53: insufficient resources;
                // 55006: object in use (slot held by another walsender).
                c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") || c == "55006"
            }),
            PgError::Protocol(_) | PgError::Config(_) => false,
        }
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            PgError::Query {
                message: db.message().to_string(),
                code: Some(db.code().code().to_string()),
            }
        } else if e.is_closed() {
            PgError::Connection(e.to_string())
        } else {
            // Socket errors, timeouts and unexpected EOFs all surface here.
            PgError::Connection(e.to_string())
        }
    }
}

impl From<pgwire_replication::PgWireError> for PgError {
    fn from(e: pgwire_replication::PgWireError) -> Self {
        if e.is_server() {
            PgError::Query {
                message: e.to_string(),
                code: None,
            }
        } else if e.is_io() || e.is_transient() {
            PgError::Connection(e.to_string())
        } else if e.is_auth() {
            PgError::Config(e.to_string())
        } else {
            PgError::Protocol(e.to_string())
        }
    }
}
