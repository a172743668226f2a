//! The connection subsystem: ConnectionManager (admin connection, publication, slot)
//! and its child ReplicationClient (the stream). Either failing takes the whole
//! subsystem down; its supervisor restarts it with backoff while shapes keep serving.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use volt_pg::PgConn;
use volt_pg::admin;
use volt_pg::replication::{ReplicationStream, StreamItem};

use crate::actors::shape_log_collector::SlcMsg;
use crate::shapes;
use crate::shared::Shared;
use crate::status::Condition;
use crate::task::OwnedTask;

pub struct ConnectionManager;

pub enum CmMsg {
    Connected {
        admin: Arc<PgConn>,
        start_lsn: u64,
        origin: Box<Origin>,
    },
    StartReplication,
    Failed(String),
}

pub struct CmState {
    shared: Arc<Shared>,
    admin: Option<Arc<PgConn>>,
    start_lsn: u64,
    _tasks: Vec<OwnedTask>,
}

impl Drop for CmState {
    fn drop(&mut self) {
        // Runs however the manager ends (a failed or killed actor skips post_stop).
        if let Some(mine) = &self.admin {
            let current = self.shared.admin.load_full();
            if current.is_some_and(|c| Arc::ptr_eq(&c, mine)) {
                self.shared.admin.store(None);
            }
        }
    }
}

/// What the connection found: decides whether the stored shapes still describe this
/// database.
pub struct Origin {
    info: admin::ServerInfo,
    new_publication: bool,
    new_slot: bool,
}

async fn setup(shared: &Shared) -> Result<(PgConn, u64, Origin), volt_pg::PgError> {
    let config = &shared.config;
    let conn = config.pg.connect().await?;
    // One instance per slot: the session that holds the slot's advisory lock (as
    // Electric's replication connection does) is the one that streams. A second
    // instance (the next one of a rolling deploy) waits here until the first one's
    // session ends, and says so in its health.
    let slot = config.slot_name();
    if !admin::try_lock_slot(&conn, &slot).await? {
        tracing::warn!(%slot, "another instance holds the lock on the replication slot; waiting for it");
        shared.report(Condition::WaitingOnLock, true);
        let locked = admin::lock_slot(&conn, &slot).await;
        shared.report(Condition::WaitingOnLock, false);
        locked?;
        tracing::info!(%slot, "acquired the lock on the replication slot");
        shared.report(Condition::SlotLocked, true);
        // Another instance held the slot since this one last wrote its shapes: if it
        // shares the storage directory, it wrote there too. The shape subsystem restarts
        // to read the storage afresh rather than write on from a stale view of it.
        if shared
            .writes_storage
            .swap(false, std::sync::atomic::Ordering::AcqRel)
            && let Some(slc) = shared.find_actor("ShapeLogCollector")
        {
            tracing::warn!(
                "another instance held the replication slot meanwhile; restarting the shape subsystem to reload the storage"
            );
            slc.kill();
        }
    } else {
        shared.report(Condition::SlotLocked, true);
    }
    // Publishing a table takes locks behind the application's transactions: give up
    // (and fail that shape's creation) rather than queue the application behind us.
    conn.batch_execute("SET lock_timeout = '5s'").await?;
    let info = admin::server_info(&conn).await?;
    tracing::info!(
        version = info.version_num,
        system_id = %info.system_identifier,
        timeline = info.timeline,
        "connected to Postgres"
    );
    let new_publication = admin::ensure_publication(&conn, &config.publication_name()).await?;
    let slot = admin::ensure_slot(&conn, &slot).await?;
    if slot.created {
        tracing::info!(slot = %config.slot_name(), "created replication slot");
    }
    let origin = Origin {
        info,
        new_publication,
        new_slot: slot.created,
    };
    Ok((conn, slot.confirmed_flush_lsn, origin))
}

const SYSTEM_ID_KEY: &str = "system_identifier";
const TIMELINE_KEY: &str = "timeline";

/// Stored shapes are only valid against the cluster, timeline, slot and publication they
/// were built from. A different system identifier or timeline (a restored backup, a
/// failover, a new cluster), or a slot or publication created anew after the first
/// start (changes may have been missed), purges them all before streaming starts.
async fn check_origin(shared: &Arc<Shared>, origin: &Origin) -> Result<(), String> {
    let db = &shared.shape_db;
    let stored_id = db.get(SYSTEM_ID_KEY).await.map_err(|e| e.to_string())?;
    let stored_tl = db.get(TIMELINE_KEY).await.map_err(|e| e.to_string())?;
    let timeline = origin.info.timeline.to_string();
    let first_start = stored_id.is_none();
    let reason = if first_start {
        None
    } else if stored_id.as_deref() != Some(origin.info.system_identifier.as_str()) {
        Some("the database's system identifier changed")
    } else if stored_tl.as_deref() != Some(timeline.as_str()) {
        Some("the database's timeline changed")
    } else if origin.new_slot {
        Some("the replication slot was created anew")
    } else if origin.new_publication {
        Some("the publication was created anew")
    } else {
        None
    };
    if let Some(reason) = reason {
        tracing::warn!(reason, shapes = shared.shapes.len(), "purging every shape");
        shapes::purge_all(shared).await;
        shared.durability.reset();
    }
    db.set(SYSTEM_ID_KEY, &origin.info.system_identifier)
        .await
        .map_err(|e| e.to_string())?;
    db.set(TIMELINE_KEY, &timeline)
        .await
        .map_err(|e| e.to_string())
}

impl Actor for ConnectionManager {
    type Msg = CmMsg;
    type State = CmState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: Arc<Shared>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let s = shared.clone();
        let task = OwnedTask::spawn(async move {
            let msg = match setup(&s).await {
                Ok((conn, start_lsn, origin)) => CmMsg::Connected {
                    admin: Arc::new(conn),
                    start_lsn,
                    origin: Box::new(origin),
                },
                Err(e) => CmMsg::Failed(format!("could not set up the database connection: {e}")),
            };
            let _ = myself.cast(msg);
        });
        Ok(CmState {
            shared,
            admin: None,
            start_lsn: 0,
            _tasks: vec![task],
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CmMsg::Connected {
                admin,
                start_lsn,
                origin,
            } => {
                state.shared.admin.store(Some(admin.clone()));
                state.admin = Some(admin.clone());
                state.start_lsn = start_lsn;
                state.shared.report(Condition::AdminConnectionReady, true);
                let me = myself.clone();
                state._tasks.push(OwnedTask::spawn(async move {
                    admin.closed().await;
                    let _ = me.cast(CmMsg::Failed("the admin connection was lost".into()));
                }));
                // Stream only once the collector can take transactions.
                let shared = state.shared.clone();
                state._tasks.push(OwnedTask::spawn(async move {
                    while !shared
                        .status
                        .wait_for(Condition::ShapeLogCollectorReady, Duration::from_secs(60))
                        .await
                    {
                        tracing::info!("waiting for the shape log collector before streaming");
                    }
                    // Only now: the shape subsystem has restored what it will purge.
                    let msg = match check_origin(&shared, &origin).await {
                        Ok(()) => CmMsg::StartReplication,
                        Err(e) => {
                            CmMsg::Failed(format!("cannot check the stored shapes' origin: {e}"))
                        }
                    };
                    let _ = myself.cast(msg);
                }));
            }
            CmMsg::StartReplication => {
                let name = "ReplicationClient";
                let (client, _) = Actor::spawn_linked(
                    None,
                    ReplicationClient,
                    (state.shared.clone(), state.start_lsn),
                    myself.get_cell(),
                )
                .await?;
                state
                    .shared
                    .actors
                    .register(client.get_id(), "ReplicationClient", name.into());
            }
            CmMsg::Failed(e) => return Err(e.into()),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let reason = match evt {
            SupervisionEvent::ActorFailed(cell, e) => {
                state.shared.actors.unregister(cell.get_id());
                e.to_string()
            }
            SupervisionEvent::ActorTerminated(cell, _, r) => {
                state.shared.actors.unregister(cell.get_id());
                r.unwrap_or_else(|| "stopped".into())
            }
            _ => return Ok(()),
        };
        state.shared.report(Condition::ReplicationReady, false);
        Err(format!("replication client exited: {reason}").into())
    }
}

pub struct ReplicationClient;

pub enum RcMsg {
    Streaming,
    /// The stream ended for a clean shutdown, every acknowledgement sent.
    Finished,
    Failed(String),
}

async fn stream(shared: Arc<Shared>, start_lsn: u64, me: ActorRef<RcMsg>) -> Result<(), String> {
    let config = &shared.config;
    let mut stream = ReplicationStream::start(
        &config.pg,
        &config.slot_name(),
        &config.publication_name(),
        start_lsn,
    )
    .await
    .map_err(|e| format!("could not start replication: {e}"))?;
    // Transactions the previous stream cut short are sent again from their start. The
    // stream hands every fragment to this collector and no other: fragments a collector
    // took down with it must not be followed by later ones stored by its successor
    // (which would skip the lost ones as already stored when the stream resends them).
    let slc = shared
        .shape_log_collector
        .load_full()
        .ok_or("the shape log collector is down")?;
    slc.call(SlcMsg::StreamStarted, None)
        .await
        .map_err(|e| format!("the shape log collector is not answering: {e}"))?;
    let _ = me.cast(RcMsg::Streaming);
    let mut shutdown = shared.replication_shutdown.subscribe();
    let mut durable = shared.durability.subscribe();
    // Commit end of the last transaction this stream handed to the collector and the
    // collector took.
    let mut sent = 0u64;
    // Fragments handed to the collector and not answered yet, oldest first, with their
    // commit end: the next one is decoded while the collector routes these.
    let mut pending: VecDeque<(Option<u64>, Reply)> = VecDeque::new();
    loop {
        let item = tokio::select! {
            answer = async {
                match pending.front_mut() {
                    Some((_, reply)) => reply.await,
                    None => std::future::pending().await,
                }
            } => {
                taken(answer)?;
                let Some((end, _)) = pending.pop_front() else {
                    continue;
                };
                // Acknowledged once the flusher declares it durable (the `durable` arm).
                if let Some(end) = end {
                    sent = sent.max(end);
                }
                continue;
            }
            item = stream.next(), if pending.len() < PIPELINE => {
                item.map_err(|e| format!("replication stream failed: {e}"))?
            }
            changed = durable.changed() => {
                if changed.is_err() {
                    return Err("the durability tracker is gone".into());
                }
                let lsn = *durable.borrow_and_update();
                acknowledge(&stream, lsn);
                continue;
            }
            () = async {
                let _ = shutdown.wait_for(|s| *s).await;
            } => {
                // What was written before the shutdown is made durable by the flusher's
                // last rounds: acknowledge it, so a restart resends as little as possible.
                for (end, reply) in pending.drain(..) {
                    if taken(reply.await).is_err() {
                        break;
                    }
                    if let Some(end) = end {
                        sent = sent.max(end);
                    }
                }
                if shared.durability.wait_durable(sent, Duration::from_secs(3)).await {
                    acknowledge(&stream, sent);
                }
                stream.finish(Duration::from_secs(3)).await;
                let _ = me.cast(RcMsg::Finished);
                return Ok(());
            }
        };
        match item {
            None => return Err("Postgres ended the replication stream".into()),
            Some(StreamItem::Fragment(frag)) => {
                let end = frag.commit_end_lsn;
                let current = shared.shape_log_collector.load();
                if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &slc)) {
                    return Err(STOPPED.into());
                }
                let (reply, answer) = tokio::sync::oneshot::channel();
                if slc.cast(SlcMsg::Fragment(frag, reply.into())).is_err() {
                    return Err(STOPPED.into());
                }
                pending.push_back((end, answer));
            }
            Some(StreamItem::KeepAlive { wal_end }) => {
                // Outside a transaction, with nothing waiting for the collector and
                // everything sent durable, nothing received is left to store: let the
                // unrelated WAL go.
                if !stream.in_transaction()
                    && pending.is_empty()
                    && shared.durability.durable_lsn() >= sent
                {
                    stream.acknowledge(wal_end);
                    // Caught up: nothing committed is waiting to be processed.
                    metrics::gauge!("volt_replication_lag_bytes").set(0.0);
                    metrics::gauge!("volt_replication_lag_seconds").set(0.0);
                }
            }
        }
    }
}

/// Fragments handed to the collector ahead of its answers, at most: enough for decoding
/// the next fragment to overlap routing this one, few enough that the collector's
/// backpressure (it takes a fragment only once it has room for it) reaches the stream.
const PIPELINE: usize = 4;

type Reply = tokio::sync::oneshot::Receiver<Result<(), String>>;

/// The collector's answer for a fragment: taken, or why the stream must stop.
fn taken(
    answer: Result<Result<(), String>, tokio::sync::oneshot::error::RecvError>,
) -> Result<(), String> {
    match answer {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(STOPPED.into()),
    }
}

const STOPPED: &str = "the shape log collector stopped mid-transaction";

/// Tell Postgres that everything up to `lsn` is durable, and how far behind that is.
fn acknowledge(stream: &ReplicationStream, lsn: u64) {
    if lsn == 0 {
        return;
    }
    stream.acknowledge(lsn);
    metrics::gauge!("volt_replication_acknowledged_lsn").set(lsn as f64);
    let (bytes, secs) = stream.lag_behind(lsn);
    metrics::gauge!("volt_replication_lag_bytes").set(bytes as f64);
    metrics::gauge!("volt_replication_lag_seconds").set(secs);
}

impl Actor for ReplicationClient {
    type Msg = RcMsg;
    type State = (Arc<Shared>, OwnedTask);
    type Arguments = (Arc<Shared>, u64);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (shared, start_lsn): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let s = shared.clone();
        let on_panic = myself.clone();
        let task = OwnedTask::spawn_catching(
            async move {
                let me = myself.clone();
                if let Err(e) = stream(s, start_lsn, me).await {
                    let _ = myself.cast(RcMsg::Failed(e));
                }
            },
            move |panic| {
                let _ = on_panic.cast(RcMsg::Failed(panic));
            },
        );
        Ok((shared, task))
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RcMsg::Streaming => {
                tracing::info!("replication streaming started");
                state.0.report(Condition::ReplicationReady, true);
                Ok(())
            }
            RcMsg::Finished => {
                tracing::info!("replication stream closed for shutdown");
                state.0.report(Condition::ReplicationReady, false);
                Ok(())
            }
            RcMsg::Failed(e) => Err(e.into()),
        }
    }
}
