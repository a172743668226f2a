//! Consumer: one per shape. Owns the shape's log writer, filters what the snapshot
//! already holds, and appends the shape's changes transaction by transaction.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ractor::{
    Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent, rpc::CallResult,
};
use volt_pg::snapshot::PgSnapshot;
use volt_shapes::{RenderedItem, RoutedChange, Shape};
use volt_storage::{LogOffset, ShapeDbOp, ShapeLog, SnapshotState};

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

pub enum ConsumerMsg {
    SnapshotStarted(PgSnapshot),
    SnapshotFailed(String),
    /// Answered through the ticket once stored (or dropped with it).
    Changes(TxPart, Ticket),
    /// Forget the transaction in progress: a new stream will send it again.
    Rollback(RpcReplyPort<()>),
}

pub struct ConsumerArgs {
    pub shared: Arc<Shared>,
    pub handle: String,
    pub shape: Arc<Shape>,
    pub log: Arc<ShapeLog>,
    /// The shape comes from storage: its snapshot is done and its log may already hold
    /// transactions that the stream sends again. A new shape registers itself (route,
    /// registry, ShapeDb) and takes its snapshot.
    pub restored: bool,
}

pub struct ConsumerState {
    shared: Arc<Shared>,
    handle: String,
    shape: Arc<Shape>,
    log: Arc<ShapeLog>,
    snapshot: Option<PgSnapshot>,
    /// Skip transactions the snapshot already contains, until the first one that
    /// started after it.
    filtering: bool,
    /// Parts received before the snapshot said which transactions it holds.
    buffered: Vec<TxPart>,
    /// While parts are buffered (answered for, not stored): nothing from the first of
    /// them on may be declared durable.
    buffered_hold: Option<crate::durability::DurabilityHold>,
    /// The transaction being written: its last item is held back until the next one
    /// (or the commit) says whether it is the shape's last change of the transaction.
    held: Option<RenderedItem>,
    skipping_tx: Option<u32>,
    /// The line being written, reused from item to item.
    line: Vec<u8>,
    /// The log's latest committed transaction: this Consumer is its only writer, so it
    /// keeps its own copy rather than read the log's (a cache miss per part with
    /// thousands of shapes).
    latest_tx: u64,
    _listed: Listed,
}

impl ConsumerState {
    /// Write the shape's part of a transaction; returns the offset to commit when the
    /// part ends a transaction that gave the shape changes.
    fn apply(&mut self, part: TxPart) -> Result<Option<LogOffset>, String> {
        // Already in the log (a replay after a reconnect or a restart): skip it whole.
        if part.lsn <= self.latest_tx {
            return Ok(None);
        }
        let snapshot = self.snapshot.as_ref().ok_or("snapshot not started")?;
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
        for change in &part.changes {
            for item in self.shape.render(change, part.xid, part.lsn) {
                if let Some(prev) = self.held.replace(item) {
                    self.write(&prev, part.lsn, false)?;
                }
            }
        }
        if part.commit
            && let Some(last) = self.held.take()
        {
            self.write(&last, part.lsn, true)?;
            return Ok(Some(LogOffset::new(part.lsn, last.op)));
        }
        Ok(None)
    }

    fn write(&mut self, item: &RenderedItem, lsn: u64, last: bool) -> Result<(), String> {
        self.line.clear();
        item.write_line(&mut self.line, last);
        self.log
            .append_bytes(LogOffset::new(lsn, item.op), &self.line, last)
            .map_err(|e| e.to_string())
    }

    /// Apply a part and commit a finished transaction: written out and visible, its log
    /// queued for the next flush round (which makes it durable for every shape at once)
    /// before the collector hears it is stored.
    async fn store(&mut self, part: TxPart) -> Result<(), String> {
        let Some(offset) = self.apply(part)? else {
            return Ok(());
        };
        let mut delay = std::time::Duration::from_millis(100);
        let mut retrying: Option<DiskFullRetry> = None;
        loop {
            match self.log.commit(offset) {
                Ok(()) => {
                    self.latest_tx = offset.tx;
                    // A full disk is declared over by the flush round that writes
                    // everything out again (a commit alone may not have written).
                    self.shared.durability.queue().push(&self.log);
                    return Ok(());
                }
                // A full disk may get space back: hold the transaction (and, through
                // the collector, the stream) and try again; the flush-stall grace bounds
                // how long before the shape is given up.
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
        let snapshot = if args.restored {
            let recorded = args
                .log
                .pg_snapshot()
                .ok_or("a restored shape has no recorded snapshot")?;
            Some(
                serde_json::from_value::<PgSnapshot>(recorded)
                    .map_err(|e| format!("a restored shape's snapshot is unreadable: {e}"))?,
            )
        } else {
            register(&myself, &args).await?;
            None
        };
        let latest_tx = args.log.latest_offset().tx;
        Ok(ConsumerState {
            shared: args.shared,
            handle: args.handle,
            shape: args.shape,
            log: args.log,
            snapshot,
            filtering: true,
            buffered: Vec::new(),
            buffered_hold: None,
            held: None,
            skipping_tx: None,
            line: Vec::new(),
            latest_tx,
            _listed: listed,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.snapshot.is_none() {
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
                // The Snapshotter recorded it in the log before telling us.
                state.snapshot = Some(snapshot);
                for part in std::mem::take(&mut state.buffered) {
                    state.store(part).await?;
                }
                // Stored and their log queued: a round may declare them durable.
                state.buffered_hold = None;
            }
            ConsumerMsg::SnapshotFailed(reason) => {
                state.log.mark_snapshot_failed(reason.clone());
                return Err(format!("snapshot failed: {reason}").into());
            }
            ConsumerMsg::Rollback(reply) => {
                state.held = None;
                state.skipping_tx = None;
                // A buffered transaction cut short is sent again from its start.
                if let Some(cut) = state.buffered.last().filter(|p| !p.commit).map(|p| p.xid) {
                    while state
                        .buffered
                        .last()
                        .is_some_and(|p| !p.commit && p.xid == cut)
                    {
                        state.buffered.pop();
                    }
                }
                let res = state.log.rollback();
                let _ = reply.send(());
                res?;
            }
            ConsumerMsg::Changes(part, ticket) => {
                if state.snapshot.is_none() {
                    // Answered now, so the stream is not held up for the snapshot's
                    // length; durability is, from this transaction on, until stored.
                    if state.buffered_hold.is_none() {
                        state.buffered_hold = Some(state.shared.durability.hold(part.lsn));
                    }
                    state.buffered.push(part);
                    ticket.answer(&Ok(()));
                    return Ok(());
                }
                if let Some(hold) = state.shared.failpoints.hold_consumer.load_full()
                    && hold.0 == state.handle
                {
                    let _ = hold.1.acquire().await.map(|p| p.forget());
                }
                let res = state.store(part).await;
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
