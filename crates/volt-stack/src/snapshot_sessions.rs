//! The sessions snapshots and subset queries run on: at most `max_concurrent_snapshots`
//! open at once, each used by one snapshot at a time. A finished snapshot leaves its
//! session open for the next one, which saves the connection's setup (TCP, auth,
//! settings) on every shape a herd creates.

use std::sync::Mutex;

use tokio::sync::{Semaphore, SemaphorePermit};
use volt_pg::PgConfig;
use volt_pg::conn::PgConn;
use volt_pg::error::PgError;
use volt_pg::snapshot::SnapshotTx;

pub struct SnapshotSessions {
    permits: Semaphore,
    /// Open sessions no snapshot uses. With the ones in use, never more than permits:
    /// a session is only opened under a permit, and only kept by giving it back here.
    idle: Mutex<Vec<PgConn>>,
}

/// A snapshot transaction holding one of the sessions' permits until `end`.
pub struct Session<'a> {
    tx: SnapshotTx,
    owner: &'a SnapshotSessions,
    _permit: SemaphorePermit<'a>,
}

/// Why no session could be had.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the stack is shutting down")]
    Closed,
    #[error(transparent)]
    Pg(#[from] PgError),
}

impl SnapshotSessions {
    pub fn new(size: usize) -> SnapshotSessions {
        SnapshotSessions {
            permits: Semaphore::new(size.max(1)),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Begin a snapshot transaction, waiting for a permit, on an idle session if one is
    /// still open, else on a new one; with `copy_sql`, prepare its COPY (see
    /// `SnapshotTx::begin_on`).
    pub async fn begin(
        &self,
        config: &PgConfig,
        copy_sql: Option<&str>,
    ) -> Result<Session<'_>, SessionError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SessionError::Closed)?;
        while let Some(conn) = self.take_idle() {
            // An idle session may have died with its server: try the next one, or connect.
            if conn.is_closed() {
                continue;
            }
            match SnapshotTx::begin_on(conn, copy_sql).await {
                Ok(tx) => return Ok(self.session(tx, permit)),
                // Postgres refused the statement (a table dropped since, say): every
                // other session would refuse it too, and be closed for it.
                Err(e) if !e.is_retryable() => return Err(e.into()),
                Err(_) => {}
            }
        }
        let tx = SnapshotTx::begin(config, copy_sql).await?;
        Ok(self.session(tx, permit))
    }

    fn session<'a>(&'a self, tx: SnapshotTx, permit: SemaphorePermit<'a>) -> Session<'a> {
        Session {
            tx,
            owner: self,
            _permit: permit,
        }
    }

    fn take_idle(&self) -> Option<PgConn> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Keep an ended snapshot's session for the next one (None: it closed).
    fn give_back(&self, conn: Option<PgConn>) {
        if let Some(conn) = conn {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
    }

    /// Sessions open and unused.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Close every idle session (on shutdown: Postgres sees clean disconnects).
    pub async fn close_idle(&self) {
        while let Some(conn) = self.take_idle() {
            conn.close(std::time::Duration::from_secs(2)).await;
        }
    }
}

impl Session<'_> {
    /// End the transaction; the session goes back to the idle ones before the permit is
    /// released, so no snapshot ever opens a session beyond the limit.
    pub async fn end(self) {
        let conn = self.tx.end().await;
        self.owner.give_back(conn);
    }

    /// Run the COPY prepared at `begin` and end the transaction (see
    /// `SnapshotTx::copy_rows_then_end`); the session goes back as `end` gives it.
    pub async fn copy_rows_then_end<E: From<PgError>>(
        self,
        part: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let conn = self.tx.copy_rows_then_end(part).await?;
        self.owner.give_back(conn);
        Ok(())
    }
}

impl std::ops::Deref for Session<'_> {
    type Target = SnapshotTx;
    fn deref(&self) -> &SnapshotTx {
        &self.tx
    }
}
