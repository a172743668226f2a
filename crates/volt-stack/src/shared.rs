//! State shared between the actors and the request handlers. Actors own the writes;
//! handlers read without messaging anyone.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use ractor::{ActorCell, ActorId, ActorRef};
use serde::Serialize;
use tokio::sync::Semaphore;
use volt_pg::{PgConfig, PgConn};
use volt_shapes::{Shape, ShapeDef, TableSchema};
use volt_storage::{ShapeDb, ShapeDbOp, ShapeLog};

use crate::actors::consumer::ConsumerMsg;
use crate::actors::publication_manager::PublicationMsg;
use crate::actors::shape_cache::ShapeCacheMsg;
use crate::actors::shape_db_writer::ShapeDbMsg;
use crate::actors::shape_log_collector::SlcMsg;
use crate::actors::status_monitor::StatusMsg;
use crate::mailbox::{Mailbox, MailboxDepth};
use crate::status::{Condition, StatusBoard};

#[derive(Debug, Clone)]
pub struct StackConfig {
    pub pg: PgConfig,
    /// `ELECTRIC_REPLICATION_STREAM_ID`: names the slot and the publication.
    pub stream_id: String,
    pub storage_dir: PathBuf,
    /// How many snapshot queries may run at once.
    pub max_concurrent_snapshots: usize,
    /// `ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD`: snapshot and log chunk size.
    pub chunk_bytes: u64,
    /// `ELECTRIC_TWEAKS_SCHEMA_RECONCILER_PERIOD`: how often shapes are checked against
    /// the live schema and unneeded tables leave the publication.
    pub reconcile_period: std::time::Duration,
    /// `ELECTRIC_FLUSH_STALL_GRACE_PERIOD`: a shape that cannot store a transaction for
    /// this long is invalidated, so it cannot hold the slot back forever.
    pub flush_stall_grace: std::time::Duration,
    /// `VOLT_FLUSH_INTERVAL`: flush rounds start at most this often. Each round writes
    /// out every log changed since the last one, once: a longer interval writes a shape
    /// hit by many transactions fewer times, and acknowledges to Postgres that much later.
    pub flush_interval: std::time::Duration,
    /// `ELECTRIC_MAX_SHAPES`: past it, the least recently read shapes are evicted.
    pub max_shapes: Option<usize>,
    /// Creation requests are refused (503) while this many messages wait for ShapeCache.
    pub max_shape_cache_mailbox: usize,
    /// Requests for a shape being created wait for it instead of queueing behind it in
    /// ShapeCache's mailbox (off only to measure what it saves).
    pub coalesce_creates: bool,
}

impl StackConfig {
    pub fn slot_name(&self) -> String {
        format!("electric_slot_{}", self.stream_id)
    }

    pub fn publication_name(&self) -> String {
        format!("electric_publication_{}", self.stream_id)
    }

    pub fn shapes_dir(&self) -> PathBuf {
        self.storage_dir.join("shapes")
    }

    /// Where removed shapes' directories wait to be deleted.
    pub fn trash_dir(&self) -> PathBuf {
        self.storage_dir.join("trash")
    }
}

/// Something stored in a shared slot that knows which actor it belongs to.
pub(crate) trait OwnedBy {
    fn owner(&self) -> ActorId;
}

impl<T> OwnedBy for ActorRef<T> {
    fn owner(&self) -> ActorId {
        self.get_id()
    }
}

impl OwnedBy for ActorCell {
    fn owner(&self) -> ActorId {
        self.get_id()
    }
}

/// Empty an actor's published slot when that actor stops, unless a successor already
/// replaced it.
pub(crate) fn clear_if_mine<T: OwnedBy>(slot: &ArcSwapOption<T>, me: ActorId) {
    if slot.load().as_ref().is_some_and(|r| r.owner() == me) {
        slot.store(None);
    }
}

/// A live shape: its definition, its log, and the Consumer that writes it.
pub struct ShapeEntry {
    pub handle: String,
    pub shape: Arc<Shape>,
    pub log: Arc<ShapeLog>,
    /// None while this instance only follows a log another instance writes.
    pub consumer: Option<ActorRef<ConsumerMsg>>,
    /// When a client last read it, on a process-wide logical clock: eviction takes the
    /// oldest.
    pub last_read: AtomicU64,
}

impl ShapeEntry {
    pub fn new(
        handle: String,
        shape: Arc<Shape>,
        log: Arc<ShapeLog>,
        consumer: Option<ActorRef<ConsumerMsg>>,
    ) -> ShapeEntry {
        let entry = ShapeEntry {
            handle,
            shape,
            log,
            consumer,
            last_read: AtomicU64::new(0),
        };
        entry.touch();
        entry
    }

    pub fn touch(&self) {
        // A logical clock: exact order, even for reads in the same microsecond.
        static READS: AtomicU64 = AtomicU64::new(1);
        self.last_read
            .store(READS.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Handle <-> definition, readable by request handlers. Written by ShapeCache (add) and
/// by shape clean-up (remove).
#[derive(Default)]
pub struct ShapeRegistry {
    by_def: DashMap<ShapeDef, String>,
    by_handle: DashMap<String, Arc<ShapeEntry>>,
    /// Which shape a Consumer writes: its supervisor learns of an exit by actor id only,
    /// after the actor's own state (and its directory listing) is gone.
    by_consumer: DashMap<ActorId, String>,
}

impl ShapeRegistry {
    pub fn by_def(&self, def: &ShapeDef) -> Option<Arc<ShapeEntry>> {
        let handle = self.by_def.get(def)?.clone();
        self.get(&handle)
    }

    pub fn get(&self, handle: &str) -> Option<Arc<ShapeEntry>> {
        self.by_handle.get(handle).map(|e| e.clone())
    }

    pub fn len(&self) -> usize {
        self.by_handle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_handle.is_empty()
    }

    /// The least recently read shape, other than `except`.
    pub fn least_recently_read(&self, except: &str) -> Option<String> {
        self.by_handle
            .iter()
            .filter(|e| e.key() != except)
            .min_by_key(|e| e.value().last_read.load(Ordering::Relaxed))
            .map(|e| e.key().clone())
    }

    pub fn handles(&self) -> Vec<String> {
        self.by_handle.iter().map(|e| e.key().clone()).collect()
    }

    /// The shape whose Consumer is (or was, until its shape is removed) this actor.
    pub fn handle_of_consumer(&self, id: ActorId) -> Option<String> {
        self.by_consumer.get(&id).map(|h| h.clone())
    }

    pub(crate) fn insert(&self, entry: Arc<ShapeEntry>) {
        let consumer = entry.consumer.as_ref().map(|c| c.get_id());
        self.by_def
            .insert(entry.shape.def.clone(), entry.handle.clone());
        if let Some(id) = consumer {
            self.by_consumer.insert(id, entry.handle.clone());
        }
        if let Some(old) = self.by_handle.insert(entry.handle.clone(), entry)
            && let Some(old_id) = old.consumer.as_ref().map(|c| c.get_id())
            && Some(old_id) != consumer
        {
            // A restored entry replaced its predecessor, whose Consumer is gone.
            self.by_consumer.remove(&old_id);
        }
    }

    pub(crate) fn remove(&self, handle: &str) -> Option<Arc<ShapeEntry>> {
        let (_, entry) = self.by_handle.remove(handle)?;
        self.by_def
            .remove_if(&entry.shape.def, |_, h| h.as_str() == handle);
        if let Some(c) = &entry.consumer {
            self.by_consumer.remove(&c.get_id());
        }
        Some(entry)
    }
}

/// The state of a creation in progress or just failed, published by ShapeCache (its only
/// writer) for request handlers to read without messaging it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateMark {
    InProgress,
    /// `id` tells this failure from a later one of the same shape, so the sweep that
    /// follows it deletes only its own entry.
    Failed {
        reason: String,
        id: u64,
    },
}

/// ShapeCache's create-lock table, keyed by the full definition (a hash could collide
/// and strand a waiter).
#[derive(Default)]
pub struct CreateLocks {
    marks: DashMap<ShapeDef, CreateMark>,
    next_id: AtomicU64,
}

impl CreateLocks {
    pub fn get(&self, def: &ShapeDef) -> Option<CreateMark> {
        self.marks.get(def).map(|m| m.clone())
    }

    pub fn len(&self) -> usize {
        self.marks.len()
    }

    /// How many creations are in progress, and how many failures are published.
    pub fn counts(&self) -> (usize, usize) {
        self.marks
            .iter()
            .fold((0, 0), |(creating, failed), m| match m.value() {
                CreateMark::InProgress => (creating + 1, failed),
                CreateMark::Failed { .. } => (creating, failed + 1),
            })
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    pub(crate) fn set_in_progress(&self, def: &ShapeDef) {
        self.marks.insert(def.clone(), CreateMark::InProgress);
    }

    pub(crate) fn set_failed(&self, def: &ShapeDef, reason: String) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.marks
            .insert(def.clone(), CreateMark::Failed { reason, id });
        id
    }

    pub(crate) fn clear(&self, def: &ShapeDef) {
        self.marks.remove(def);
    }

    /// Remove a failure once its grace has passed, unless a newer attempt replaced it.
    pub(crate) fn sweep(&self, def: &ShapeDef, id: u64) {
        self.marks.remove_if(
            def,
            |_, m| matches!(m, CreateMark::Failed { id: failed, .. } if *failed == id),
        );
    }

    pub(crate) fn clear_all(&self) {
        self.marks.clear();
    }
}

/// Test hooks in the creation path (the seeds' failpoints). Unset in production.
#[derive(Default)]
pub struct Failpoints {
    /// When set, a creation waits for a permit of this semaphore before it starts.
    pub hold_create: ArcSwapOption<Semaphore>,
    /// When set, a creation fails with this reason.
    pub fail_create: ArcSwapOption<String>,
    /// When set, each flush round waits for a permit of this semaphore before it syncs.
    pub hold_flush: ArcSwapOption<Semaphore>,
    /// When set, a Snapshotter waits for a permit before it takes its snapshot.
    pub hold_snapshot: ArcSwapOption<Semaphore>,
    /// When set, the collector hands this shape's parts to its Consumer, which waits
    /// for a permit before it stores each.
    pub hold_consumer: ArcSwapOption<ConsumerHold>,
}

pub struct ConsumerHold {
    pub handle: String,
    pub gate: Arc<Semaphore>,
    /// Parts the Consumer has started waiting for a permit for.
    pub waiting: std::sync::atomic::AtomicUsize,
}

impl ConsumerHold {
    pub fn new(handle: String, gate: Arc<Semaphore>) -> ConsumerHold {
        ConsumerHold {
            handle,
            gate,
            waiting: Default::default(),
        }
    }
}

/// Kind and display name of every live actor, for the tree dump; restart counts by
/// display name, kept across incarnations.
#[derive(Default)]
pub struct ActorDirectory {
    /// Kind, display name and start time of each live actor incarnation.
    actors: DashMap<ActorId, (&'static str, String, std::time::Instant)>,
    restarts: DashMap<String, u32>,
    /// Mailbox depth counters of the actors that keep one.
    mailboxes: DashMap<ActorId, Arc<MailboxDepth>>,
}

impl ActorDirectory {
    pub(crate) fn register(&self, id: ActorId, kind: &'static str, name: String) {
        self.actors
            .insert(id, (kind, name, std::time::Instant::now()));
    }

    pub(crate) fn unregister(&self, id: ActorId) {
        self.actors.remove(&id);
        self.mailboxes.remove(&id);
    }

    /// Start counting an actor's mailbox: returns the counter the actor's handler bumps
    /// and its senders' [`Mailbox`] shares.
    pub(crate) fn track_mailbox(&self, id: ActorId, actor: &'static str) -> Arc<MailboxDepth> {
        let depth = Arc::new(MailboxDepth::new(actor));
        self.mailboxes.insert(id, depth.clone());
        depth
    }

    pub fn mailbox_depth(&self, id: ActorId) -> Option<u64> {
        self.mailboxes.get(&id).map(|d| d.depth())
    }

    pub(crate) fn count_restart(&self, name: &str) {
        *self.restarts.entry(name.to_string()).or_insert(0) += 1;
    }

    pub fn name_of(&self, id: ActorId) -> Option<String> {
        self.actors.get(&id).map(|e| e.1.clone())
    }

    pub fn restarts(&self, name: &str) -> u32 {
        self.restarts.get(name).map(|r| *r).unwrap_or(0)
    }
}

/// One node of `/v1/admin/tree`.
#[derive(Debug, Clone, Serialize)]
pub struct TreeNode {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub parent: Option<String>,
    pub status: String,
    pub restarts: u32,
    /// Milliseconds since this incarnation of the actor started.
    pub uptime_ms: u64,
    /// Messages waiting in its mailbox, for the actors that count them.
    pub mailbox: Option<u64>,
    /// Messages sent to this incarnation so far, for the same actors.
    pub messages: Option<u64>,
    pub children: Vec<TreeNode>,
}

/// How `POST /v1/admin/kill` names its victim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActorSelector {
    /// Display names from the root down, e.g. `StackSupervisor/.../ShapeCache`.
    Path(Vec<String>),
    /// A display name, e.g. `ShapeCache` or `Consumer:<handle>`.
    Name(String),
    /// The first actor of a kind (depth first), or the one of that kind for a shape.
    Kind { kind: String, shape: Option<String> },
}

pub struct Shared {
    pub config: StackConfig,
    pub status: StatusBoard,
    pub shapes: ShapeRegistry,
    /// Table metadata for request validation, filled on first use.
    pub schemas: DashMap<(String, String), Arc<TableSchema>>,
    /// The connection subsystem's admin connection, when it is up.
    pub admin: ArcSwapOption<PgConn>,
    pub snapshot_sessions: crate::snapshot_sessions::SnapshotSessions,
    pub actors: ActorDirectory,
    pub root: ArcSwapOption<ActorCell>,
    pub status_monitor: ArcSwapOption<ActorRef<StatusMsg>>,
    pub shape_log_collector: ArcSwapOption<Mailbox<SlcMsg>>,
    pub shape_cache: ArcSwapOption<Mailbox<ShapeCacheMsg>>,
    /// Creations in progress or just failed; written only by ShapeCache.
    pub creating: CreateLocks,
    pub failpoints: Failpoints,
    pub consumer_supervisor: ArcSwapOption<ActorCell>,
    /// The persistent shape registry; written only through `shape_db_writer`.
    pub shape_db: ShapeDb,
    pub shape_db_writer: ArcSwapOption<ActorRef<ShapeDbMsg>>,
    /// Registry changes handed to the writer and not yet in ShapeDb: a shape created
    /// while this is above zero would not survive a crash.
    pub registry_unwritten: AtomicU64,
    pub publication_manager: ArcSwapOption<ActorRef<PublicationMsg>>,
    /// A shape could not write because the disk is full: health says so and new shapes
    /// are refused until a write succeeds again.
    pub storage_full: std::sync::atomic::AtomicBool,
    /// Consumers retrying a commit the full disk refused: a flush round does not declare
    /// the disk full no more while any is.
    pub disk_full_retries: std::sync::atomic::AtomicUsize,
    /// Set on clean shutdown: the replication stream finishes its acknowledgements and
    /// ends.
    pub replication_shutdown: tokio::sync::watch::Sender<bool>,
    /// Commit LSN of the last transaction the ShapeLogCollector processed.
    pub last_seen_lsn: AtomicU64,
    /// What is written and what is durable (group commit of the shape logs).
    pub durability: crate::durability::Durability,
    /// Whether this instance writes the shapes' storage. Until its connection holds the
    /// replication slot's lock, another instance may be writing the same storage
    /// directory (a rolling deploy): this one then only follows it, serving the shapes
    /// stored there read-only.
    pub writes_storage: std::sync::atomic::AtomicBool,
    handle_seq: AtomicU64,
}

impl Shared {
    pub fn new(config: StackConfig, shape_db: ShapeDb) -> Arc<Shared> {
        Arc::new(Shared {
            snapshot_sessions: crate::snapshot_sessions::SnapshotSessions::new(
                config.max_concurrent_snapshots,
            ),
            config,
            status: StatusBoard::default(),
            shapes: ShapeRegistry::default(),
            schemas: DashMap::new(),
            admin: ArcSwapOption::empty(),
            actors: ActorDirectory::default(),
            root: ArcSwapOption::empty(),
            status_monitor: ArcSwapOption::empty(),
            shape_log_collector: ArcSwapOption::empty(),
            shape_cache: ArcSwapOption::empty(),
            creating: CreateLocks::default(),
            failpoints: Failpoints::default(),
            consumer_supervisor: ArcSwapOption::empty(),
            shape_db,
            shape_db_writer: ArcSwapOption::empty(),
            registry_unwritten: AtomicU64::new(0),
            publication_manager: ArcSwapOption::empty(),
            storage_full: std::sync::atomic::AtomicBool::new(false),
            disk_full_retries: std::sync::atomic::AtomicUsize::new(0),
            replication_shutdown: tokio::sync::watch::Sender::new(false),
            last_seen_lsn: AtomicU64::new(0),
            durability: Default::default(),
            writes_storage: std::sync::atomic::AtomicBool::new(false),
            handle_seq: AtomicU64::new(0),
        })
    }

    /// A live actor by its display name (`ShapeCache`, `Consumer:<handle>`), found by
    /// walking the tree: actors are not registered under global names, so a restarted
    /// actor never collides with its dying predecessor's name.
    pub fn find_actor(&self, name: &str) -> Option<ActorCell> {
        fn walk(dir: &ActorDirectory, cell: &ActorCell, name: &str) -> Option<ActorCell> {
            if dir.name_of(cell.get_id()).as_deref() == Some(name) {
                return Some(cell.clone());
            }
            cell.get_children().iter().find_map(|c| walk(dir, c, name))
        }
        let root = self.root.load_full()?;
        walk(&self.actors, &root, name)
    }

    /// A live actor and its display name, for the admin kill endpoint.
    pub fn select_actor(&self, sel: &ActorSelector) -> Option<(ActorCell, String)> {
        let root = self.root.load_full()?;
        let info = |cell: &ActorCell| {
            self.actors
                .actors
                .get(&cell.get_id())
                .map(|e| (e.0, e.1.clone()))
        };
        match sel {
            ActorSelector::Name(name) => self.find_actor(name).map(|c| (c, name.clone())),
            ActorSelector::Path(parts) => {
                let mut cell: ActorCell = (*root).clone();
                let (first, rest) = parts.split_first()?;
                if info(&cell)?.1 != *first {
                    return None;
                }
                for part in rest {
                    cell = cell
                        .get_children()
                        .into_iter()
                        .find(|c| info(c).is_some_and(|(_, n)| n == *part))?;
                }
                let name = info(&cell)?.1;
                Some((cell, name))
            }
            ActorSelector::Kind { kind, shape } => {
                fn walk(
                    cell: &ActorCell,
                    hit: &dyn Fn(&ActorCell) -> Option<String>,
                ) -> Option<(ActorCell, String)> {
                    if let Some(name) = hit(cell) {
                        return Some((cell.clone(), name));
                    }
                    cell.get_children().iter().find_map(|c| walk(c, hit))
                }
                let hit = |cell: &ActorCell| {
                    let (k, name) = info(cell)?;
                    let shape_ok = match shape {
                        None => true,
                        Some(h) => {
                            name.strip_prefix(k).and_then(|n| n.strip_prefix(':'))
                                == Some(h.as_str())
                        }
                    };
                    (k == kind.as_str() && shape_ok).then_some(name)
                };
                walk(&root, &hit)
            }
        }
    }

    /// Report a condition to the StatusMonitor (the board's only writer).
    /// See `writes_storage`.
    pub fn is_following(&self) -> bool {
        !self.writes_storage.load(Ordering::Acquire)
    }

    pub fn report(&self, cond: Condition, on: bool) {
        if let Some(monitor) = self.status_monitor.load_full()
            && monitor.cast(StatusMsg::Set(cond, on)).is_err()
        {
            tracing::debug!(?cond, on, "status monitor is down; condition not reported");
        }
    }

    /// Buffer a change to the persistent registry.
    pub fn record(&self, op: ShapeDbOp) {
        match self.shape_db_writer.load_full() {
            Some(w) => {
                self.registry_unwritten.fetch_add(1, Ordering::AcqRel);
                if w.cast(ShapeDbMsg::Op(op)).is_err() {
                    self.registry_unwritten.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!(
                        "shape registry writer is down; a registry change was not recorded"
                    );
                }
            }
            None => tracing::warn!(
                "shape registry writer is not running; a registry change was not recorded"
            ),
        }
    }

    /// A handle never used before: a hash of the definition plus the time in
    /// microseconds, made unique within the process by a sequence.
    pub fn new_handle(&self, def: &ShapeDef) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        def.hash(&mut h);
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let seq = self.handle_seq.fetch_add(1, Ordering::Relaxed);
        // Bump by the sequence so two handles made in the same microsecond differ.
        format!("{}-{}", h.finish() % 100_000_000, micros + seq)
    }

    pub fn last_seen_lsn(&self) -> u64 {
        self.last_seen_lsn.load(Ordering::Acquire)
    }

    /// The live supervision tree, from the root actor down.
    pub fn tree(&self) -> Option<TreeNode> {
        let root = self.root.load_full()?;
        Some(self.node(&root, None))
    }

    fn node(&self, cell: &ActorCell, parent: Option<String>) -> TreeNode {
        let id = cell.get_id();
        let (kind, name, uptime_ms) = self
            .actors
            .actors
            .get(&id)
            .map(|e| {
                (
                    e.0.to_string(),
                    e.1.clone(),
                    e.2.elapsed().as_millis() as u64,
                )
            })
            .unwrap_or_else(|| ("unknown".into(), cell.get_name().unwrap_or_default(), 0));
        let id_text = id.to_string();
        let mut children: Vec<TreeNode> = cell
            .get_children()
            .iter()
            .map(|c| self.node(c, Some(id_text.clone())))
            .collect();
        children.sort_by(|a, b| a.name.cmp(&b.name));
        TreeNode {
            restarts: self.actors.restarts(&name),
            uptime_ms,
            mailbox: self.actors.mailbox_depth(id),
            messages: self.actors.mailboxes.get(&id).map(|d| d.total_sent()),
            id: id_text,
            name,
            kind,
            parent,
            status: format!("{:?}", cell.get_status()).to_lowercase(),
            children,
        }
    }
}
