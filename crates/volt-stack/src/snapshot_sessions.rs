//! The sessions snapshots and subset queries run on: at most `max_concurrent_snapshots`
//! open at once, each used by one snapshot at a time. A finished snapshot leaves its
//! session open for the next one, which saves the connection's setup (TCP, auth,
//! settings) on every shape a herd creates.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};
use volt_pg::PgConfig;
use volt_pg::conn::PgConn;
use volt_pg::error::PgError;
use volt_pg::snapshot::{RowsBy, SnapshotTx};
use volt_shapes::RowValues;

pub struct SnapshotSessions {
    permits: Semaphore,
    /// Open sessions no snapshot uses. With the ones in use, never more than permits:
    /// a session is only opened under a permit, and only kept by giving it back here.
    idle: Mutex<Vec<PgConn>>,
    /// Snapshots waiting for a permit.
    queued: AtomicUsize,
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
            queued: AtomicUsize::new(0),
        }
    }

    /// Begin a snapshot transaction, waiting for a permit, on an idle session if one is
    /// still open, else on a new one; with `select_sql`, set up the reading of its rows
    /// (see `SnapshotTx::begin_on`). A snapshot with others queued behind it is one of a
    /// herd, where Postgres's CPU per snapshot bounds how fast the herd is served: its
    /// rows come by `RowsBy::OneQuery`. Otherwise by `RowsBy::Copy`, cheapest for a
    /// large snapshot.
    pub async fn begin(
        &self,
        config: &PgConfig,
        select_sql: Option<&str>,
    ) -> Result<Session<'_>, SessionError> {
        let permit = {
            self.queued.fetch_add(1, Ordering::AcqRel);
            let _left = Dequeue(&self.queued);
            self.permits
                .acquire()
                .await
                .map_err(|_| SessionError::Closed)?
        };
        let by = if self.queued.load(Ordering::Acquire) > 0 {
            RowsBy::OneQuery
        } else {
            RowsBy::Copy
        };
        while let Some(conn) = self.take_idle() {
            // An idle session may have died with its server: try the next one, or connect.
            if conn.is_closed() {
                continue;
            }
            match SnapshotTx::begin_on(conn, select_sql, by).await {
                Ok(tx) => return Ok(self.session(tx, permit)),
                // Postgres refused the statement (it cannot parse it; a missing table
                // shows only as the rows are read): every other session would refuse it
                // too, and be closed for it.
                Err(e) if !e.is_retryable() => return Err(e.into()),
                Err(_) => {}
            }
        }
        let tx = SnapshotTx::begin(config, select_sql, by).await?;
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

    /// Snapshots waiting for a session.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
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

/// Leaves the queue however the wait ends (a snapshot stopped meanwhile drops it).
struct Dequeue<'a>(&'a AtomicUsize);

impl Drop for Dequeue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Session<'_> {
    /// End the transaction; the session goes back to the idle ones before the permit is
    /// released, so no snapshot ever opens a session beyond the limit.
    pub async fn end(self) {
        let conn = self.tx.end().await;
        self.owner.give_back(conn);
    }

    /// Read the rows of the query sent at `begin` and end the transaction (see
    /// `SnapshotTx::rows_then_end`); the session goes back as `end` gives it.
    pub async fn rows_then_end<E: From<PgError>>(
        self,
        row: impl FnMut(&dyn RowValues) -> Result<(), E>,
    ) -> Result<(), E> {
        let conn = self.tx.rows_then_end(row).await?;
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
