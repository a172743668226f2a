//! ShapeLogCollector: the single consumer of the replication stream. Routes each
//! transaction fragment to the shapes it touches: it stores a shape's part itself when
//! the shape is in its steady state (`ShapeWriter::offer`), and otherwise hands it to the
//! shape's Consumer, up to `IN_FLIGHT` fragments ahead of them (each Consumer's mailbox
//! keeps its parts in order). It records a transaction as written only once every part
//! is stored and every earlier fragment is settled, so the replication client applies
//! backpressure and acknowledges nothing that is not durable.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::future::join_all;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use volt_shapes::{Filter, RoutedChange, Shape, TxFragment};
use volt_storage::{ShapeDbOp, ShapeLog};

use crate::actors::consumer::{
    Consumer, ConsumerArgs, ConsumerMsg, Offer, SharedWriter, TxPart, Work, lock,
};
use crate::delivery::{Delivery, Outcome};
use crate::mailbox::{Mailbox, MailboxDepth};
use crate::prefetch::prefetch;
use crate::shapes;
use crate::shared::clear_if_mine;
use crate::shared::{ShapeEntry, Shared};
use crate::status::Condition;
use crate::task::OwnedTask;

pub struct ShapeLogCollector;

pub enum SlcMsg {
    /// A fragment of a committed transaction; replied to once routed (stored, or handed
    /// to the Consumers) once at most `IN_FLIGHT` fragments are left unsettled.
    Fragment(TxFragment, RpcReplyPort<Result<(), String>>),
    /// A new replication stream starts: transactions cut short by the old one will be
    /// sent again from their start.
    StreamStarted(RpcReplyPort<()>),
    /// Route changes to a new shape from now on (before its snapshot starts).
    AddShape {
        handle: String,
        shape: Arc<Shape>,
        consumer: ActorRef<ConsumerMsg>,
        writer: SharedWriter,
        reply: RpcReplyPort<()>,
    },
    RemoveShape(String),
    /// This instance now holds the replication slot's lock: stop following the stored
    /// shapes and write them.
    TakeOver,
    /// The flusher failed: nothing written would be acknowledged any more.
    FlusherFailed(String),
    /// Fragments in flight may have been stored by every Consumer, or be past their
    /// deadline: settle those at the front, in order.
    Settle,
    /// The replication stream has ended for a shutdown: settle what is in flight, stop
    /// the flush rounds and fence every log written (which writes out what it
    /// committed), so that nothing is written once the slot's lock may pass to another
    /// instance.
    Quiesce(RpcReplyPort<()>),
}

/// Fragments routed and not yet settled, at most: the collector routes the next ones
/// while Consumers store these (on 2 cores, routing and storing overlap instead of
/// taking turns), and waits for the oldest beyond this.
const IN_FLIGHT: usize = 8;

/// A fragment handed to its Consumers and not settled yet.
struct InFlight {
    delivery: Arc<Delivery>,
    /// The recipients' handles, in delivery order.
    handles: Vec<String>,
    deadline: tokio::time::Instant,
    epoch: u64,
    lsn: u64,
    commit_end_lsn: Option<u64>,
    changes: Vec<Arc<RoutedChange>>,
}

#[derive(Clone)]
struct Route {
    handle: String,
    consumer: ActorRef<ConsumerMsg>,
    writer: SharedWriter,
    /// The writer's shape and log, reachable without its lock: to prefetch.
    shape: Arc<Shape>,
    log: Arc<ShapeLog>,
}

impl Route {
    /// Start loading what storing a part for this shape reads first.
    fn prefetch_state(&self) {
        prefetch(&*self.writer, 4);
        prefetch(&*self.shape, 8);
        prefetch(&*self.log, 8);
    }
}

/// How many parts ahead of the one being stored the next ones' state is prefetched (and
/// twice that, their route): far enough for a miss to complete meanwhile.
const PREFETCH_AHEAD: usize = 4;

/// The shapes being routed to: the filter index picks the shapes a change affects, by a
/// small id that maps to the shape's handle and consumer.
#[derive(Default)]
struct Routes {
    filter: Filter<u64>,
    by_id: HashMap<u64, Route>,
    ids: HashMap<String, u64>,
    next_id: u64,
}

impl Routes {
    fn add(
        &mut self,
        handle: String,
        shape: Arc<Shape>,
        consumer: ActorRef<ConsumerMsg>,
        writer: SharedWriter,
    ) {
        self.remove(&handle);
        let id = self.next_id;
        self.next_id += 1;
        self.filter.add(id, shape.clone());
        self.ids.insert(handle.clone(), id);
        let log = lock(&writer).log().clone();
        self.by_id.insert(
            id,
            Route {
                handle,
                consumer,
                writer,
                shape,
                log,
            },
        );
    }

    fn remove(&mut self, handle: &str) {
        if let Some(id) = self.ids.remove(handle) {
            self.filter.remove(id);
            self.by_id.remove(&id);
        }
    }
}

pub struct SlcState {
    shared: Arc<Shared>,
    routes: Routes,
    /// Route ids of the shapes that received part of the transaction in progress.
    touched: HashSet<u64>,
    mailbox: Arc<MailboxDepth>,
    /// While following another instance's storage: the task keeping followed logs up to
    /// date, and the one waiting for the slot's lock.
    follower: Option<(OwnedTask, OwnedTask)>,
    /// Once writing: the flush rounds that make written transactions durable.
    flusher: Option<OwnedTask>,
    /// Routed fragments, oldest first, settled in that order.
    in_flight: std::collections::VecDeque<InFlight>,
    /// Sends `Settle` now and then, for fragments whose Consumers stalled.
    _stall_check: OwnedTask,
    /// This collector, its sends counted in `mailbox`.
    me: Arc<Mailbox<SlcMsg>>,
}

impl SlcState {
    fn remove(&mut self, handle: &str) {
        if let Some(id) = self.routes.ids.get(handle) {
            self.touched.remove(id);
        }
        self.routes.remove(handle);
    }

    /// Remove every shape on table `oid` (truncated, or its schema changed).
    fn invalidate_table(&mut self, oid: u32, why: &str) {
        for id in self.routes.filter.shapes_on(oid) {
            let (Some(shape), Some(route)) = (
                self.routes.filter.shape(id).cloned(),
                self.routes.by_id.get(&id).cloned(),
            ) else {
                continue;
            };
            tracing::info!(handle = %route.handle, table = %shape.def.qualified_table(), reason = why, "invalidating shape");
            self.remove(&route.handle);
            self.shared
                .schemas
                .remove(&(shape.table.schema.clone(), shape.table.name.clone()));
            shapes::invalidate(&self.shared, &route.handle);
        }
    }

    /// Route a fragment to the Consumers of the shapes it touches. It is settled later
    /// (`settle_ready`), in order, once they all stored it: only then is a transaction
    /// recorded as written.
    async fn process(&mut self, frag: TxFragment) -> Result<(), String> {
        for rel in &frag.relations {
            let changed = self.routes.filter.shapes_on(rel.oid).into_iter().any(|id| {
                self.routes
                    .filter
                    .shape(id)
                    .is_some_and(|s| !s.matches_relation(rel))
            });
            if changed {
                self.invalidate_table(rel.oid, "the table's schema changed");
            }
        }
        for rel in &frag.truncated {
            self.invalidate_table(rel.oid, "the table was truncated");
        }
        let epoch = self.shared.durability.epoch();
        let n_changes = frag.changes.len();
        // Shared, not copied, by the shapes a change goes to.
        let mut changes: Vec<Arc<RoutedChange>> = Vec::with_capacity(n_changes);
        let mut per_shape: HashMap<u64, Vec<Arc<RoutedChange>>> = HashMap::new();
        let mut hits = Vec::new();
        for change in frag.changes {
            let known = self.routes.filter.affected(&change, &mut hits);
            let change = if hits.len() == 1 {
                RoutedChange::for_one_shape(change)
            } else {
                RoutedChange::new(change)
            };
            let change = Arc::new(change.with_known_match(known));
            for id in &hits {
                per_shape.entry(*id).or_default().push(change.clone());
            }
            changes.push(change);
        }
        // Borrowed, not cloned: a clone copies the handle and increments reference
        // counts on cold lines, each stalling in turn.
        let mut parts: Vec<(&Route, Vec<Arc<RoutedChange>>)> = Vec::with_capacity(per_shape.len());
        let commit = frag.commit_end_lsn.is_some();
        if commit {
            // The commit goes to every shape the transaction touched, even those with
            // no change in this last fragment.
            for id in self.touched.drain() {
                if !per_shape.contains_key(&id)
                    && let Some(route) = self.routes.by_id.get(&id)
                {
                    parts.push((route, Vec::new()));
                }
            }
        }
        for (id, changes) in per_shape {
            if let Some(route) = self.routes.by_id.get(&id) {
                if !commit {
                    self.touched.insert(id);
                }
                parts.push((route, changes));
            }
        }
        // Stored here when the shape is in its steady state (no message, no wake of
        // its Consumer: with thousands of shapes, most of the cost of a change);
        // otherwise handed to its Consumer.
        let held = self.shared.failpoints.hold_consumer.load_full();
        let mut deliveries = Vec::new();
        let mut failed = Vec::new();
        for i in 0..parts.len() {
            if let Some((ahead, _)) = parts.get(i + 2 * PREFETCH_AHEAD) {
                prefetch(*ahead, 2);
            }
            if let Some((ahead, _)) = parts.get(i + PREFETCH_AHEAD) {
                ahead.prefetch_state();
            }
            let route = parts[i].0;
            let part = TxPart {
                xid: frag.xid,
                lsn: frag.lsn,
                changes: std::mem::take(&mut parts[i].1),
                commit,
            };
            let mut writer = lock(&route.writer);
            let offer = if held.as_ref().is_some_and(|h| h.handle == route.handle) {
                writer.deliver(Work::Part(part))
            } else {
                writer.offer(part, &self.shared)
            };
            drop(writer);
            match offer {
                Offer::Stored | Offer::Superseded => {}
                Offer::Failed(e) => failed.push((route.handle.clone(), e)),
                Offer::Deliver(work) => deliveries.push((route, work)),
            }
        }
        // A shape that cannot store its part within the grace period is dropped rather
        // than allowed to hold the slot (and every other shape) back.
        let deadline = tokio::time::Instant::now() + self.shared.config.flush_stall_grace;
        let me = self.me.clone();
        let (delivery, tickets) = Delivery::new(deliveries.len(), move || {
            let _ = me.cast(SlcMsg::Settle);
        });
        let mut handles = Vec::with_capacity(deliveries.len());
        for ((route, work), ticket) in deliveries.into_iter().zip(tickets) {
            // A Consumer that is gone drops the message, and with it the ticket. Its
            // mailbox keeps each shape's parts in order however many are in flight.
            let _ = route.consumer.cast(ConsumerMsg::Store(work, ticket));
            handles.push(route.handle.clone());
        }
        for (handle, e) in failed {
            tracing::error!(%handle, error = %e, "could not store changes; invalidating shape");
            self.remove(&handle);
            shapes::invalidate(&self.shared, &handle);
        }
        self.in_flight.push_back(InFlight {
            delivery,
            handles,
            deadline,
            epoch,
            lsn: frag.lsn,
            commit_end_lsn: frag.commit_end_lsn,
            changes,
        });
        metrics::counter!("volt_changes_total").increment(n_changes as u64);
        self.settle_ready();
        while self.in_flight.len() > IN_FLIGHT {
            self.settle_oldest().await;
        }
        Ok(())
    }

    /// Settle the fragments at the front that every Consumer answered or whose deadline
    /// passed.
    fn settle_ready(&mut self) {
        let now = tokio::time::Instant::now();
        while let Some(f) = self
            .in_flight
            .pop_front_if(|f| f.delivery.is_settled() || f.deadline <= now)
        {
            let outcomes = f.delivery.outcomes_now();
            self.settle(f, outcomes);
        }
    }

    /// Wait for the oldest fragment's Consumers (until its deadline) and settle it.
    async fn settle_oldest(&mut self) {
        if let Some(f) = self.in_flight.pop_front() {
            let outcomes = f.delivery.outcomes_by(f.deadline).await;
            self.settle(f, outcomes);
        }
    }

    /// Every fragment in flight, waited for.
    async fn settle_all(&mut self) {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await;
        }
    }

    fn settle(&mut self, f: InFlight, outcomes: Vec<Outcome>) {
        let grace = self.shared.config.flush_stall_grace;
        for (handle, outcome) in f.handles.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Stored => continue,
                Outcome::Failed(e) => {
                    tracing::error!(%handle, error = %e, "consumer could not store changes; invalidating shape");
                }
                Outcome::Stalled => {
                    tracing::error!(%handle, grace = ?grace, "shape stalled storing a transaction; invalidating it");
                }
                // Consumers stopped by a shutdown: their shapes stay.
                Outcome::Dropped if *self.shared.replication_shutdown.borrow() => continue,
                // The consumer died: its shape is gone (clients will refetch).
                Outcome::Dropped => {}
            }
            self.remove(&handle);
            shapes::invalidate(&self.shared, &handle);
        }
        for change in &f.changes {
            change.forget_renderings();
        }
        if let Some(end) = f.commit_end_lsn {
            // Every shape has replied, so every log it wrote is queued for a flush.
            self.shared.durability.written(f.epoch, end);
            metrics::counter!("volt_transactions_total").increment(1);
            self.shared.last_seen_lsn.store(f.lsn, Ordering::Release);
        }
    }
}

/// Sends the collector `Settle` a few times per grace period, so that a fragment whose
/// Consumer stalled is settled (and the shape dropped) even when no Consumer answers.
fn stall_check(slc: Arc<Mailbox<SlcMsg>>, grace: std::time::Duration) -> OwnedTask {
    let every = (grace / 4).clamp(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    );
    OwnedTask::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if slc.cast(SlcMsg::Settle).is_err() {
                return;
            }
        }
    })
}

/// Shape definitions from ShapeDb rows, with one TableSchema per table shared by its
/// shapes.
fn decode_rows(rows: Vec<(String, String)>) -> Vec<(String, Result<Shape, String>)> {
    let mut tables: HashMap<u32, Vec<Arc<volt_shapes::TableSchema>>> = HashMap::new();
    rows.into_iter()
        .map(|(handle, definition)| {
            let shape = Shape::decode_definition(&definition).and_then(|(def, table)| {
                let same = tables.entry(table.oid).or_default();
                let table = match same.iter().find(|t| ***t == table) {
                    Some(t) => t.clone(),
                    None => {
                        let t = Arc::new(table);
                        same.push(t.clone());
                        t
                    }
                };
                Shape::new(def, table).map_err(|e| e.to_string())
            });
            (handle, shape)
        })
        .collect()
}

/// The logs of the previous shape subsystem's shapes that it wrote: their consumers were
/// killed, but a commit of theirs may still be running on the blocking pool. They are
/// fenced (waiting for such a write) before their directories are reopened, so that
/// nothing writes behind the new writers' backs.
fn written_logs(shared: &Shared) -> Vec<Arc<ShapeLog>> {
    shared
        .shapes
        .handles()
        .iter()
        .filter_map(|h| shared.shapes.get(h))
        .filter(|e| e.consumer.is_some())
        .map(|e| e.log.clone())
        .collect()
}

/// A stored shape: its handle, definition and log, each as read.
type Stored = (
    String,
    Result<Shape, String>,
    Result<Arc<ShapeLog>, volt_storage::StorageError>,
);

/// Every shape ShapeDb holds, with its log opened by `open` (on the blocking pool), after
/// fencing the logs the previous shape subsystem wrote (see `written_logs`).
async fn open_stored(
    shared: &Arc<Shared>,
    mut open: impl FnMut(&str, std::path::PathBuf) -> Result<Arc<ShapeLog>, volt_storage::StorageError>
    + Send
    + 'static,
) -> Result<Vec<Stored>, ActorProcessingErr> {
    let rows = shared
        .shape_db
        .load_all()
        .await
        .map_err(|e| format!("cannot read the shape registry: {e}"))?;
    let dir = shared.config.shapes_dir();
    let previous = written_logs(shared);
    tokio::task::spawn_blocking(move || {
        for log in &previous {
            log.fence();
        }
        decode_rows(rows)
            .into_iter()
            .map(|(handle, shape)| {
                let log = open(&handle, dir.join(&handle));
                (handle, shape, log)
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| format!("shape restore panicked: {e}").into())
}

/// Serve what another instance has stored while it holds the replication slot (a rolling
/// deploy sharing the storage directory): every shape whose snapshot it finished, read
/// only, following its writes. Nothing is written: not the logs, not ShapeDb, not the
/// directory. Returns the handles followed.
async fn follow_stored(shared: &Arc<Shared>) -> Result<HashSet<String>, ActorProcessingErr> {
    let chunk_bytes = shared.config.chunk_bytes;
    let opened = open_stored(shared, move |_, dir| {
        ShapeLog::open_follower(dir, chunk_bytes).map(Arc::new)
    })
    .await?;
    let mut followed = HashSet::new();
    for (handle, shape, log) in opened {
        // Not finished yet by its writer (or unreadable): not ours to judge or remove.
        let (Ok(shape), Ok(log)) = (shape, log) else {
            continue;
        };
        shared.shapes.insert(Arc::new(ShapeEntry::new(
            handle.clone(),
            Arc::new(shape),
            log,
            None,
        )));
        followed.insert(handle);
    }
    tracing::info!(
        shapes = followed.len(),
        "serving the stored shapes read-only until this instance holds the replication slot"
    );
    Ok(followed)
}

/// Keep the followed logs that readers wait on up to date with their writer, until the
/// returned task is dropped: another process's appends send no notification, so they are
/// polled.
fn follower_task(shared: Arc<Shared>) -> OwnedTask {
    OwnedTask::spawn(async move {
        let mut tick = tokio::time::interval(FOLLOW_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for handle in s.shapes.handles() {
                    if let Some(entry) = s.shapes.get(&handle)
                        && entry.consumer.is_none()
                        && entry.log.has_readers()
                    {
                        shapes::follow(&s, &entry);
                    }
                }
            })
            .await;
        }
    })
}

/// How often a follower looks for its writer's new transactions while readers wait.
const FOLLOW_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);

/// Rebuild the shapes an earlier run (or, for `followed` logs, the instance this one
/// followed until now) left: definitions from ShapeDb, logs from disk. A followed log is
/// promoted in place, so its readers carry on. A shape whose definition or log cannot be
/// read is dropped (its clients refetch).
async fn restore(
    shared: &Arc<Shared>,
    routes: &mut Routes,
) -> Result<HashSet<String>, ActorProcessingErr> {
    let sup = shared
        .consumer_supervisor
        .load_full()
        .ok_or("the consumer supervisor is not running")?;
    let chunk_bytes = shared.config.chunk_bytes;
    let mut followed: HashMap<String, Arc<ShapeLog>> = shared
        .shapes
        .handles()
        .iter()
        .filter_map(|h| shared.shapes.get(h))
        .filter(|e| e.consumer.is_none())
        .map(|e| (e.handle.clone(), e.log.clone()))
        .collect();
    let opened = open_stored(shared, move |handle, dir| match followed.remove(handle) {
        Some(log) => log.promote().map(|()| log),
        None => ShapeLog::open(dir, chunk_bytes).map(Arc::new),
    })
    .await?;
    let mut kept = HashSet::new();
    let (mut restored, mut dropped) = (0usize, 0usize);
    for (handle, shape, log) in opened {
        let (shape, log) = match (shape, log) {
            (Ok(s), Ok(l)) => (Arc::new(s), l),
            (s, l) => {
                let why = s.err().or_else(|| l.err().map(|e| e.to_string()));
                tracing::warn!(%handle, reason = ?why, "dropping a shape that cannot be restored");
                shared.record(ShapeDbOp::Remove { handle });
                dropped += 1;
                continue;
            }
        };
        let args = ConsumerArgs::new(shared, handle.clone(), shape.clone(), log.clone(), true);
        let writer = args.writer.clone();
        let spawned = Actor::spawn_linked(None, Consumer, args, (*sup).clone()).await;
        // One unrestorable shape must not keep the whole subsystem from starting.
        let consumer = match spawned {
            Ok((consumer, _)) => consumer,
            Err(e) => {
                tracing::warn!(%handle, error = %e, "dropping a shape whose consumer cannot start");
                shared.record(ShapeDbOp::Remove { handle });
                dropped += 1;
                continue;
            }
        };
        // What an earlier run or incarnation wrote may not be durable yet (its flush
        // round cut short, or the process killed with it in the page cache); a
        // replayed transaction the log already holds is skipped, not written again,
        // so the first round syncs every restored log before anything is acknowledged.
        shared.durability.queue().push(&log);
        routes.add(handle.clone(), shape.clone(), consumer.clone(), writer);
        shared.shapes.insert(Arc::new(ShapeEntry::new(
            handle.clone(),
            shape,
            log,
            Some(consumer),
        )));
        kept.insert(handle);
        restored += 1;
    }
    shapes::remove_orphan_dirs(shared, &kept);
    if restored + dropped > 0 {
        tracing::info!(restored, dropped, "restored shapes from storage");
    }
    Ok(kept)
}

/// Registry entries of `previous` that a restore did not bring back are gone: their
/// readers are told to refetch.
fn close_unrestored(shared: &Shared, previous: Vec<String>, kept: &HashSet<String>) {
    for handle in previous {
        if !kept.contains(&handle)
            && let Some(entry) = shared.shapes.remove(&handle)
        {
            entry.log.close();
        }
    }
}

/// Become the writer of the shapes' storage: restore every shape (promoting the followed
/// ones), then take transactions. The registry entries a previous shape subsystem (or
/// the followed instance) left and that are not restored are gone: their readers are
/// told to refetch.
async fn take_over(
    myself: ActorRef<SlcMsg>,
    state: &mut SlcState,
) -> Result<(), ActorProcessingErr> {
    state.follower = None;
    let shared = state.shared.clone();
    let previous = shared.shapes.handles();
    let kept = restore(&shared, &mut state.routes).await?;
    close_unrestored(&shared, previous, &kept);
    // Every restored log is queued (see `restore`) before the first round.
    state.flusher = Some(crate::durability::flusher(shared.clone(), move |panic| {
        let _ = myself.cast(SlcMsg::FlusherFailed(panic));
    }));
    shared.writes_storage.store(true, Ordering::Release);
    shared.report(Condition::ShapeLogCollectorReady, true);
    Ok(())
}

impl Actor for ShapeLogCollector {
    type Msg = SlcMsg;
    type State = SlcState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: Arc<Shared>,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Kept short: the supervisor starts the next child (and then the connection
        // subsystem) only once this returns, so restoring shapes here would make the
        // two subsystems start one after the other. Messages sent to the collector
        // meanwhile wait in its mailbox until post_start has restored the shapes.
        let mailbox = shared
            .actors
            .track_mailbox(myself.get_id(), "ShapeLogCollector");
        let shared_grace = shared.config.flush_stall_grace;
        let me = Arc::new(Mailbox::new(myself, mailbox.clone()));
        shared.shape_log_collector.store(Some(me.clone()));
        Ok(SlcState {
            shared,
            routes: Routes::default(),
            touched: HashSet::new(),
            mailbox,
            follower: None,
            flusher: None,
            in_flight: std::collections::VecDeque::new(),
            _stall_check: stall_check(me.clone(), shared_grace),
            me,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let shared = state.shared.clone();
        if shared.status.is_set(Condition::SlotLocked) {
            return take_over(myself, state).await;
        }
        // Another instance may be writing this storage: follow it until the slot's lock
        // is ours (which is at once, unless another instance holds it).
        shared.writes_storage.store(false, Ordering::Release);
        let previous = shared.shapes.handles();
        let followed = follow_stored(&shared).await?;
        close_unrestored(&shared, previous, &followed);
        let s = shared.clone();
        state.follower = Some((
            follower_task(shared),
            OwnedTask::spawn(async move {
                while !s
                    .status
                    .wait_for(Condition::SlotLocked, std::time::Duration::from_secs(3600))
                    .await
                {}
                let _ = myself.cast(SlcMsg::TakeOver);
            }),
        ));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.mailbox.received();
        match msg {
            SlcMsg::Fragment(frag, reply) => {
                let res = state.process(frag).await;
                let _ = reply.send(res);
            }
            SlcMsg::Settle => state.settle_ready(),
            SlcMsg::Quiesce(reply) => {
                state.settle_all().await;
                state.flusher = None;
                let logs = written_logs(&state.shared);
                let _ = tokio::task::spawn_blocking(move || {
                    for log in logs {
                        log.fence();
                    }
                })
                .await;
                let _ = reply.send(());
            }
            SlcMsg::StreamStarted(reply) => {
                // What the old stream sent is settled before its cut-short transactions
                // are rolled back.
                state.settle_all().await;
                let cut_short: Vec<Route> = state
                    .touched
                    .drain()
                    .collect::<Vec<_>>()
                    .iter()
                    .filter_map(|id| state.routes.by_id.get(id).cloned())
                    .collect();
                let rollbacks = cut_short.iter().map(|r| {
                    // Counted like a part: until the Consumer has rolled back, the new
                    // stream's parts for the shape queue behind the rollback.
                    lock(&r.writer).rollback_sent();
                    r.consumer.call(
                        ConsumerMsg::Rollback,
                        Some(std::time::Duration::from_secs(30)),
                    )
                });
                join_all(rollbacks).await;
                let _ = reply.send(());
            }
            SlcMsg::AddShape {
                handle,
                shape,
                consumer,
                writer,
                reply,
            } => {
                state.routes.add(handle, shape, consumer, writer);
                let _ = reply.send(());
            }
            SlcMsg::RemoveShape(handle) => state.remove(&handle),
            SlcMsg::TakeOver => {
                if state.follower.is_some() {
                    tracing::info!(
                        "this instance holds the replication slot: taking over the stored shapes"
                    );
                    take_over(myself, state).await?;
                }
            }
            SlcMsg::FlusherFailed(why) => return Err(why.into()),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        clear_if_mine(&state.shared.shape_log_collector, myself.get_id());
        Ok(())
    }
}
