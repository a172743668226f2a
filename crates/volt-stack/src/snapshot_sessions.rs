//! The sessions snapshots and subset queries run on: at most `max_concurrent_snapshots`
//! open at once, each used by one snapshot at a time. A finished snapshot leaves its
//! session open for the next one, which saves the connection's setup (TCP, auth,
//! settings) on every shape a herd creates.
//!
//! Under a herd, a finished snapshot also leaves its transaction open for a snapshot
//! that waits for a session, if that one's shape was routed before the transaction
//! began: every change the transaction's snapshot does not hold then reaches the shape
//! through the replication stream, which is what makes a snapshot valid for a shape.
//! Such a snapshot costs Postgres its COPY only, not a transaction and a snapshot of
//! its own.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};
use volt_pg::PgConfig;
use volt_pg::conn::PgConn;
use volt_pg::error::PgError;
use volt_pg::snapshot::SnapshotTx;

/// How long a transaction stays open for further snapshots, and for how many: an open
/// snapshot holds back vacuum, and shapes that join it late apply more of the stream.
const SHARE_FOR: Duration = Duration::from_secs(1);
const SHARE_MAX: u32 = 64;

pub struct SnapshotSessions {
    permits: Semaphore,
    /// Open sessions no snapshot uses. With the ones in use, never more than permits:
    /// a session is only opened under a permit, and only kept by giving it back here.
    idle: Mutex<Vec<Idle>>,
    /// Snapshots waiting for a permit.
    waiting: AtomicUsize,
}

enum Idle {
    Plain(PgConn),
    /// Its transaction is still open for a waiting snapshot (see the module's doc).
    Open(SnapshotTx, Sharing),
}

/// When a transaction began and how many snapshots it has served.
#[derive(Clone, Copy)]
struct Sharing {
    begun: Instant,
    served: u32,
}

impl Sharing {
    fn open_for_more(&self) -> bool {
        self.begun.elapsed() < SHARE_FOR && self.served < SHARE_MAX
    }

    /// Whether a snapshot whose shape was routed at `routed` may read in this
    /// transaction: only if it began after that (see the module's doc).
    fn serves(&self, routed: Option<Instant>) -> bool {
        self.open_for_more() && routed.is_some_and(|r| r < self.begun)
    }
}

/// A snapshot transaction holding one of the sessions' permits until `end`.
pub struct Session<'a> {
    tx: SnapshotTx,
    sharing: Sharing,
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

/// Counts a snapshot among the waiting ones until dropped (also when its Snapshotter is
/// stopped while it waits).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SnapshotSessions {
    pub fn new(size: usize) -> SnapshotSessions {
        SnapshotSessions {
            permits: Semaphore::new(size.max(1)),
            idle: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Begin a snapshot transaction, waiting for a permit, on an idle session if one is
    /// still open, else on a new one; with `copy_sql`, prepare its COPY (see
    /// `SnapshotTx::begin_on`). With `routed`, the caller's shape was routed (and its
    /// table published) before that instant, so it may use a transaction that began
    /// after it; without, it gets a transaction of its own.
    pub async fn begin(
        &self,
        config: &PgConfig,
        copy_sql: Option<&str>,
        routed: Option<Instant>,
    ) -> Result<Session<'_>, SessionError> {
        let permit = {
            self.waiting.fetch_add(1, Ordering::AcqRel);
            let _waiting = Waiting(&self.waiting);
            self.permits
                .acquire()
                .await
                .map_err(|_| SessionError::Closed)?
        };
        while let Some(idle) = self.take_idle_for(routed) {
            let conn = match idle {
                Idle::Open(mut tx, sharing) if sharing.serves(routed) => {
                    let prepared = match copy_sql {
                        Some(sql) => tx.prepare_copy(sql).await,
                        None => Ok(()),
                    };
                    match prepared {
                        Ok(()) => {
                            // Postgres was spared a transaction and a snapshot.
                            metrics::counter!("volt_snapshots_sharing_a_transaction_total")
                                .increment(1);
                            let sharing = Sharing {
                                served: sharing.served + 1,
                                ..sharing
                            };
                            return Ok(self.session(tx, sharing, permit));
                        }
                        Err(e) if !e.is_retryable() => return Err(e.into()),
                        Err(_) => continue,
                    }
                }
                Idle::Open(tx, _) => match tx.end().await {
                    Some(conn) => conn,
                    None => continue,
                },
                Idle::Plain(conn) => conn,
            };
            // An idle session may have died with its server: try the next one, or connect.
            if conn.is_closed() {
                continue;
            }
            let begun = Instant::now();
            match SnapshotTx::begin_on(conn, copy_sql).await {
                Ok(tx) => return Ok(self.session(tx, Sharing::new(begun), permit)),
                // Postgres refused the statement (a table dropped since, say): every
                // other session would refuse it too, and be closed for it.
                Err(e) if !e.is_retryable() => return Err(e.into()),
                Err(_) => {}
            }
        }
        let begun = Instant::now();
        let tx = SnapshotTx::begin(config, copy_sql).await?;
        Ok(self.session(tx, Sharing::new(begun), permit))
    }

    fn session<'a>(
        &'a self,
        tx: SnapshotTx,
        sharing: Sharing,
        permit: SemaphorePermit<'a>,
    ) -> Session<'a> {
        Session {
            tx,
            sharing,
            owner: self,
            _permit: permit,
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_idle(&self) -> Option<Idle> {
        self.idle().pop()
    }

    /// An open transaction a snapshot routed at `routed` may read in, if one is idle;
    /// else any idle session.
    fn take_idle_for(&self, routed: Option<Instant>) -> Option<Idle> {
        let mut idle = self.idle();
        let open = idle
            .iter()
            .rposition(|i| matches!(i, Idle::Open(_, sharing) if sharing.serves(routed)));
        match open {
            Some(k) => Some(idle.swap_remove(k)),
            None => idle.pop(),
        }
    }

    /// Whether a finished snapshot's transaction should stay open: a snapshot waits that
    /// no transaction already left open would serve.
    fn keep_open(&self, sharing: &Sharing) -> bool {
        let open = self
            .idle()
            .iter()
            .filter(|i| matches!(i, Idle::Open(..)))
            .count();
        sharing.open_for_more() && self.waiting.load(Ordering::Acquire) > open
    }

    /// Keep an ended snapshot's session for the next one (None: it closed). With no
    /// snapshot waiting, transactions left open for earlier waiters are ended.
    async fn give_back(&self, conn: Option<PgConn>) {
        if let Some(conn) = conn {
            self.idle().push(Idle::Plain(conn));
        }
        if self.waiting.load(Ordering::Acquire) == 0 {
            self.end_open_idle().await;
        }
    }

    async fn end_open_idle(&self) {
        let open: Vec<SnapshotTx> = {
            let mut idle = self.idle();
            let (open, plain): (Vec<_>, Vec<_>) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|i| matches!(i, Idle::Open(..)));
            *idle = plain;
            open.into_iter()
                .filter_map(|i| match i {
                    Idle::Open(tx, _) => Some(tx),
                    Idle::Plain(_) => None,
                })
                .collect()
        };
        let ended = futures::future::join_all(open.into_iter().map(SnapshotTx::end)).await;
        for conn in ended.into_iter().flatten() {
            self.idle().push(Idle::Plain(conn));
        }
    }

    /// Snapshots waiting for a permit.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Sessions open and unused.
    pub fn idle_count(&self) -> usize {
        self.idle().len()
    }

    /// Close every idle session (on shutdown: Postgres sees clean disconnects).
    pub async fn close_idle(&self) {
        while let Some(idle) = self.take_idle() {
            match idle {
                Idle::Plain(conn) => conn.close(Duration::from_secs(2)).await,
                Idle::Open(tx, _) => tx.close().await,
            }
        }
    }
}

impl Sharing {
    fn new(begun: Instant) -> Sharing {
        Sharing { begun, served: 1 }
    }
}

impl Session<'_> {
    /// End the transaction, or leave it open for a waiting snapshot (see the module's
    /// doc); the session goes back to the idle ones before the permit is released, so no
    /// snapshot ever opens a session beyond the limit.
    pub async fn end(self) {
        if self.owner.keep_open(&self.sharing) {
            self.owner.idle().push(Idle::Open(self.tx, self.sharing));
            return;
        }
        let conn = self.tx.end().await;
        self.owner.give_back(conn).await;
    }

    /// Run the COPY prepared at `begin` and end the transaction (see
    /// `SnapshotTx::copy_rows_then_end`), or leave it open as `end` does.
    pub async fn copy_rows_then_end<E: From<PgError>>(
        self,
        part: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let Session {
            mut tx,
            sharing,
            owner,
            _permit,
        } = self;
        if owner.keep_open(&sharing) {
            tx.copy_rows(part).await?;
            // The snapshots it was kept for may have found other sessions meanwhile.
            if owner.waiting.load(Ordering::Acquire) > 0 {
                owner.idle().push(Idle::Open(tx, sharing));
            } else {
                let conn = tx.end().await;
                owner.give_back(conn).await;
            }
            return Ok(());
        }
        let conn = tx.copy_rows_then_end(part).await?;
        owner.give_back(conn).await;
        Ok(())
    }
}

impl std::ops::Deref for Session<'_> {
    type Target = SnapshotTx;
    fn deref(&self) -> &SnapshotTx {
        &self.tx
    }
}
