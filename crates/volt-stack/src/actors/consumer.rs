//! Consumer: one per shape. Owns the shape's writing state (`ShapeWriter`): filters what
//! the snapshot already holds, and appends the shape's changes transaction by
//! transaction. The collector stores a part itself, under the writer's lock, when the
//! shape is in its steady state (snapshot known, nothing waiting in the Consumer's
//! hands); everything else (buffering before the snapshot, a full disk, parts behind
//! ones still queued) goes through the Consumer's mailbox, in order.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ractor::{
    Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent, rpc::CallResult,
};
use volt_pg::snapshot::PgSnapshot;
use volt_shapes::{RenderedItem, RoutedChange, Shape};
use volt_storage::{LogOffset, ShapeDbOp, ShapeLog, SnapshotState, StorageError};

use crate::actors::shape_log_collector::SlcMsg;
use crate::actors::snapshotter::{SNAPSHOT_COMPLETE, Snapshotter, SnapshotterArgs};
use crate::delivery::Ticket;
use crate::shared::{ShapeEntry, Shared};

pub struct Consumer;

/// The part of one transaction fragment that concerns one shape.
#[derive(Debug, Clone)]
pub struct TxPart {
    pub xid: u32,
    pub lsn: u64,
    /// Shared with the other shapes the changes go to.
    pub changes: Vec<Arc<RoutedChange>>,
    /// This part ends the transaction.
    pub commit: bool,
}

/// What the collector hands a Consumer to store.
pub enum Work {
    Part(TxPart),
    /// A transaction the collector wrote but could not commit for a full disk: the
    /// Consumer retries the commit until there is space (or the shape is given up).
    Commit(LogOffset),
}

pub enum ConsumerMsg {
    SnapshotStarted(PgSnapshot),
    SnapshotFailed(String),
    /// Answered through the ticket once stored (or dropped with it).
    Store(Work, Ticket),
    /// Forget the transaction in progress: a new stream will send it again.
    Rollback(RpcReplyPort<()>),
}

/// A shape's writing state, shared by its Consumer and the collector. Locked only in
/// synchronous code, never across an await, so neither waits on the other for long.
pub struct ShapeWriter {
    shape: Arc<Shape>,
    log: Arc<ShapeLog>,
    snapshot: Option<PgSnapshot>,
    /// The snapshot is written and synced: until then its Snapshotter holds the log's
    /// lock for whole batches and syncs, which the collector must not wait on.
    snapshot_done: bool,
    /// Skip transactions the snapshot already contains, until the first one that
    /// started after it.
    filtering: bool,
    /// The transaction being written: its last item is held back until the next one
    /// (or the commit) says whether it is the shape's last change of the transaction.
    held: Option<RenderedItem>,
    skipping_tx: Option<u32>,
    /// The line being written, reused from item to item.
    line: Vec<u8>,
    /// A change's items as rendered, reused from change to change.
    items: Vec<RenderedItem>,
    /// The log's latest committed transaction: the shape's only writer keeps its own
    /// copy rather than read the log's (a cache miss per part with thousands of shapes).
    latest_tx: u64,
    /// Work handed to the Consumer and not yet stored (in its mailbox, or buffered
    /// until the snapshot starts): while there is any, later parts follow it there, so
    /// that the shape's parts are stored in order.
    queued: usize,
    /// The Consumer is gone: parts go to its mailbox, which drops them (and the
    /// collector drops the shape).
    closed: bool,
}

pub type SharedWriter = Arc<Mutex<ShapeWriter>>;

/// The writer, locked. A panic while it was locked left the shape's state unknown; the
/// shape is being dropped then (its Consumer died or the collector failed it), and
/// `closed` sends everything to the Consumer's mailbox, so the state is never used.
pub fn lock(writer: &SharedWriter) -> MutexGuard<'_, ShapeWriter> {
    writer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What became of a part the collector offered to store itself.
pub enum Offer {
    Stored,
    Failed(String),
    /// The log is fenced or only followed: another writer has taken over, and this
    /// collector is on its way out; not the shape's failure.
    Superseded,
    /// For the Consumer (counted in `queued`).
    Deliver(Work),
}

/// Why a part was not stored.
#[derive(Debug)]
enum Failure {
    Superseded(String),
    Failed(String),
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Failure {
        match e {
            StorageError::Fenced { .. } | StorageError::ReadOnly { .. } => {
                Failure::Superseded(e.to_string())
            }
            e => Failure::Failed(e.to_string()),
        }
    }
}

impl From<Failure> for String {
    fn from(f: Failure) -> String {
        match f {
            Failure::Superseded(why) | Failure::Failed(why) => why,
        }
    }
}

impl ShapeWriter {
    pub fn shared(shape: &Arc<Shape>, log: &Arc<ShapeLog>) -> SharedWriter {
        Arc::new(Mutex::new(ShapeWriter {
            shape: shape.clone(),
            log: log.clone(),
            snapshot: None,
            snapshot_done: false,
            filtering: true,
            held: None,
            skipping_tx: None,
            line: Vec::new(),
            items: Vec::new(),
            latest_tx: log.latest_offset().tx,
            queued: 0,
            closed: false,
        }))
    }

    /// Store `part` now, on the caller's (the collector's) task, if the shape is in its
    /// steady state; otherwise hand it to the Consumer. A panic while storing fails the
    /// shape, not the collector.
    pub fn offer(&mut self, part: TxPart, shared: &Shared) -> Offer {
        if self.closed
            || self.queued > 0
            || !self.snapshot_done
            || shared.storage_full.load(Ordering::Relaxed)
        {
            return self.deliver(Work::Part(part));
        }
        let stored = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let Some(offset) = self.apply(&part)? else {
                return Ok(None);
            };
            match self.commit(offset, shared) {
                Ok(()) => Ok(None),
                Err(e) if e.is_disk_full() => Ok(Some(offset)),
                Err(e) => Err(Failure::from(e)),
            }
        }));
        match stored {
            Ok(Ok(None)) => Offer::Stored,
            Ok(Ok(Some(offset))) => self.deliver(Work::Commit(offset)),
            Ok(Err(Failure::Superseded(_))) => Offer::Superseded,
            Ok(Err(Failure::Failed(e))) => self.fail(e),
            Err(_) => self.fail("storing changes panicked".into()),
        }
    }

    pub fn log(&self) -> &Arc<ShapeLog> {
        &self.log
    }

    /// A rollback is sent to the Consumer: later parts queue behind it.
    pub fn rollback_sent(&mut self) {
        self.queued += 1;
    }

    /// Hand `work` to the Consumer, behind whatever it already has.
    pub fn deliver(&mut self, work: Work) -> Offer {
        self.queued += 1;
        Offer::Deliver(work)
    }

    fn fail(&mut self, why: String) -> Offer {
        self.closed = true;
        Offer::Failed(why)
    }

    /// Write the shape's part of a transaction; returns the offset to commit when the
    /// part ends a transaction that gave the shape changes.
    fn apply(&mut self, part: &TxPart) -> Result<Option<LogOffset>, Failure> {
        // Already in the log (a replay after a reconnect or a restart): skip it whole.
        if part.lsn <= self.latest_tx {
            return Ok(None);
        }
        let snapshot = self
            .snapshot
            .as_ref()
            .ok_or_else(|| Failure::Failed("snapshot not started".into()))?;
        if self.filtering {
            if snapshot.is_after(part.xid) {
                self.filtering = false;
            } else if snapshot.contains_xid(part.xid) {
                self.skipping_tx = (!part.commit).then_some(part.xid);
                return Ok(None);
            }
        }
        if self.skipping_tx == Some(part.xid) {
            if part.commit {
                self.skipping_tx = None;
            }
            return Ok(None);
        }
        let mut items = std::mem::take(&mut self.items);
        for change in &part.changes {
            self.shape
                .render_into(change, part.xid, part.lsn, &mut items);
            for item in items.drain(..) {
                if let Some(prev) = self.held.replace(item) {
                    self.write(&prev, part.lsn, false)?;
                }
            }
        }
        self.items = items;
        if part.commit
            && let Some(last) = self.held.take()
        {
            self.write(&last, part.lsn, true)?;
            return Ok(Some(LogOffset::new(part.lsn, last.op)));
        }
        Ok(None)
    }

    fn write(&mut self, item: &RenderedItem, lsn: u64, last: bool) -> Result<(), Failure> {
        self.line.clear();
        item.write_line(&mut self.line, last);
        self.log
            .append_bytes(LogOffset::new(lsn, item.op), &self.line, last)?;
        Ok(())
    }

    /// Commit a written transaction: visible to readers, and its log queued for the
    /// next flush round (which makes it durable for every shape at once) before the
    /// collector hears it is stored.
    fn commit(&mut self, offset: LogOffset, shared: &Shared) -> Result<(), StorageError> {
        self.log.commit(offset)?;
        self.latest_tx = offset.tx;
        shared.durability.queue().push(&self.log);
        Ok(())
    }
}

/// The Consumer's hold on its writer: when the Consumer goes, however it ends, the
/// collector stops storing for it.
struct OwnedWriter(SharedWriter);

impl Drop for OwnedWriter {
    fn drop(&mut self) {
        lock(&self.0).closed = true;
    }
}

pub struct ConsumerArgs {
    pub shared: Arc<Shared>,
    pub handle: String,
    pub shape: Arc<Shape>,
    pub log: Arc<ShapeLog>,
    /// Shared with the collector, which routes to it.
    pub writer: SharedWriter,
    /// The shape comes from storage: its snapshot is done and its log may already hold
    /// transactions that the stream sends again. A new shape registers itself (route,
    /// registry, ShapeDb) and takes its snapshot.
    pub restored: bool,
}

impl ConsumerArgs {
    pub fn new(
        shared: &Arc<Shared>,
        handle: String,
        shape: Arc<Shape>,
        log: Arc<ShapeLog>,
        restored: bool,
    ) -> ConsumerArgs {
        ConsumerArgs {
            shared: shared.clone(),
            handle,
            writer: ShapeWriter::shared(&shape, &log),
            shape,
            log,
            restored,
        }
    }
}

pub struct ConsumerState {
    shared: Arc<Shared>,
    handle: String,
    shape: Arc<Shape>,
    log: Arc<ShapeLog>,
    writer: OwnedWriter,
    /// Parts received before the snapshot said which transactions it holds.
    buffered: Vec<TxPart>,
    /// While parts are buffered (answered for, not stored): nothing from the first of
    /// them on may be declared durable.
    buffered_hold: Option<crate::durability::DurabilityHold>,
    _listed: Listed,
}

impl ConsumerState {
    fn writer(&self) -> MutexGuard<'_, ShapeWriter> {
        lock(&self.writer.0)
    }

    /// Store work handed over by the collector, then count it off `queued`.
    async fn store(&mut self, work: Work) -> Result<(), String> {
        let offset = match work {
            Work::Part(part) => self.writer().apply(&part)?,
            Work::Commit(offset) => Some(offset),
        };
        if let Some(offset) = offset {
            self.commit(offset).await?;
        }
        self.writer().queued -= 1;
        Ok(())
    }

    /// Commit, waiting out a full disk.
    async fn commit(&mut self, offset: LogOffset) -> Result<(), String> {
        let mut delay = std::time::Duration::from_millis(100);
        let mut retrying: Option<DiskFullRetry> = None;
        loop {
            let res = self.writer().commit(offset, &self.shared);
            match res {
                Ok(()) => return Ok(()),
                // A full disk may get space back: hold the transaction (and, through
                // the collector, the stream) and try again; the flush-stall grace bounds
                // how long before the shape is given up. A full disk is declared over by
                // the flush round that writes everything out again (a commit alone may
                // not have written).
                Err(e) if e.is_disk_full() => {
                    retrying.get_or_insert_with(|| DiskFullRetry::new(&self.shared));
                    if !self.shared.storage_full.swap(true, Ordering::Relaxed) {
                        tracing::error!(handle = %self.handle, error = %e, "the storage disk is full; holding replication until it has space");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// Counts a Consumer among those retrying for a full disk while it lives (however the
/// retry ends, the Consumer killed included).
struct DiskFullRetry(Arc<Shared>);

impl DiskFullRetry {
    fn new(shared: &Arc<Shared>) -> DiskFullRetry {
        shared.disk_full_retries.fetch_add(1, Ordering::AcqRel);
        DiskFullRetry(shared.clone())
    }
}

impl Drop for DiskFullRetry {
    fn drop(&mut self) {
        self.0.disk_full_retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps an actor listed in the directory for as long as its state lives (the state is
/// dropped however the actor ends, even when killed).
pub(crate) struct Listed {
    shared: Arc<Shared>,
    id: ractor::ActorId,
}

impl Listed {
    pub(crate) fn new(
        shared: &Arc<Shared>,
        id: ractor::ActorId,
        kind: &'static str,
        name: String,
    ) -> Listed {
        shared.actors.register(id, kind, name);
        Listed {
            shared: shared.clone(),
            id,
        }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.shared.actors.unregister(self.id);
    }
}

/// Route a new shape and make it findable, before its snapshot starts, so no change can
/// fall between the snapshot and the stream.
async fn register(
    myself: &ActorRef<ConsumerMsg>,
    args: &ConsumerArgs,
) -> Result<(), ActorProcessingErr> {
    let shared = &args.shared;
    let slc = shared
        .shape_log_collector
        .load_full()
        .ok_or("the shape log collector is not running")?;
    match slc
        .call(
            |reply| SlcMsg::AddShape {
                handle: args.handle.clone(),
                shape: args.shape.clone(),
                consumer: myself.clone(),
                writer: args.writer.clone(),
                reply,
            },
            Some(std::time::Duration::from_secs(30)),
        )
        .await
    {
        Ok(CallResult::Success(())) => {}
        _ => return Err("the shape log collector did not take the new shape".into()),
    }
    shared.shapes.insert(Arc::new(ShapeEntry::new(
        args.handle.clone(),
        args.shape.clone(),
        args.log.clone(),
        Some(myself.clone()),
    )));
    shared.record(ShapeDbOp::Add {
        handle: args.handle.clone(),
        definition: args.shape.to_definition_json(),
    });
    Ok(())
}

impl Actor for Consumer {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ConsumerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let listed = Listed::new(
            &args.shared,
            myself.get_id(),
            "Consumer",
            format!("Consumer:{}", args.handle),
        );
        if args.restored {
            let recorded = args
                .log
                .pg_snapshot()
                .ok_or("a restored shape has no recorded snapshot")?;
            let snapshot = serde_json::from_value::<PgSnapshot>(recorded)
                .map_err(|e| format!("a restored shape's snapshot is unreadable: {e}"))?;
            // Before the collector routes to it (it does once this returns).
            let mut writer = lock(&args.writer);
            writer.snapshot = Some(snapshot);
            writer.snapshot_done = true;
        } else {
            register(&myself, &args).await?;
        }
        Ok(ConsumerState {
            shared: args.shared,
            handle: args.handle,
            shape: args.shape,
            log: args.log,
            writer: OwnedWriter(args.writer),
            buffered: Vec::new(),
            buffered_hold: None,
            _listed: listed,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.writer().snapshot.is_none() {
            let args = SnapshotterArgs {
                shared: state.shared.clone(),
                handle: state.handle.clone(),
                shape: state.shape.clone(),
                log: state.log.clone(),
                consumer: myself.clone(),
            };
            Actor::spawn_linked(None, Snapshotter, args, myself.get_cell()).await?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConsumerMsg::SnapshotStarted(snapshot) => {
                // The Snapshotter recorded it in the log before telling us. The
                // buffered parts are still counted in `queued`, so the collector hands
                // later ones here until they are stored.
                state.writer().snapshot = Some(snapshot);
                for part in std::mem::take(&mut state.buffered) {
                    state.store(Work::Part(part)).await?;
                }
                // Stored and their log queued: a round may declare them durable.
                state.buffered_hold = None;
            }
            ConsumerMsg::SnapshotFailed(reason) => {
                state.log.mark_snapshot_failed(reason.clone());
                return Err(format!("snapshot failed: {reason}").into());
            }
            ConsumerMsg::Rollback(reply) => {
                let mut w = lock(&state.writer.0);
                // Counted by the collector when it sent it: the new stream's parts
                // came here, after it.
                w.queued -= 1;
                w.held = None;
                w.skipping_tx = None;
                // A buffered transaction cut short is sent again from its start.
                if let Some(cut) = state.buffered.last().filter(|p| !p.commit).map(|p| p.xid) {
                    while state
                        .buffered
                        .last()
                        .is_some_and(|p| !p.commit && p.xid == cut)
                    {
                        state.buffered.pop();
                        w.queued -= 1;
                    }
                }
                let res = state.log.rollback();
                drop(w);
                let _ = reply.send(());
                res?;
            }
            ConsumerMsg::Store(work, ticket) => {
                let buffering = state.writer().snapshot.is_none();
                let work = match work {
                    // Answered now, so the stream is not held up for the snapshot's
                    // length; durability is, from this transaction on, until stored.
                    Work::Part(part) if buffering => {
                        if state.buffered_hold.is_none() {
                            state.buffered_hold = Some(state.shared.durability.hold(part.lsn));
                        }
                        state.buffered.push(part);
                        ticket.answer(&Ok(()));
                        return Ok(());
                    }
                    work => work,
                };
                if let Some(hold) = state.shared.failpoints.hold_consumer.load_full()
                    && hold.handle == state.handle
                {
                    hold.waiting.fetch_add(1, Ordering::AcqRel);
                    let _ = hold.gate.acquire().await.map(|p| p.forget());
                }
                let res = state.store(work).await;
                ticket.answer(&res);
                if let Err(e) = res {
                    return Err(format!("could not store changes: {e}").into());
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorTerminated(_, _, reason) = &evt
            && reason.as_deref() == Some(SNAPSHOT_COMPLETE)
        {
            state.writer().snapshot_done = true;
        }
        let failure = match evt {
            SupervisionEvent::ActorFailed(_, err) => Some(err.to_string()),
            // Any other end than a finished snapshot leaves the shape without one.
            SupervisionEvent::ActorTerminated(_, _, reason)
                if reason.as_deref() != Some(SNAPSHOT_COMPLETE) =>
            {
                Some(format!(
                    "the snapshotter stopped: {}",
                    reason.unwrap_or_else(|| "killed".into())
                ))
            }
            _ => None,
        };
        if let Some(reason) = failure
            && !matches!(
                state.log.snapshot_progress().borrow().state,
                SnapshotState::Done { .. }
            )
        {
            let _ = myself.cast(ConsumerMsg::SnapshotFailed(reason));
        }
        Ok(())
    }
}
