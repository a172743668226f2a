//! Consumer: one per shape. Owns the shape's log writer, filters what the snapshot
//! already holds, and appends the shape's changes transaction by transaction.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use volt_pg::snapshot::PgSnapshot;
use volt_shapes::{Change, LogItem, Shape};
use volt_storage::{LogOffset, ShapeLog};

use crate::actors::snapshotter::{Snapshotter, SnapshotterArgs};
use crate::shared::Shared;

pub struct Consumer;

/// The part of one transaction fragment that concerns one shape.
#[derive(Debug, Clone)]
pub struct TxPart {
    pub xid: u32,
    pub lsn: u64,
    pub changes: Vec<Change>,
    /// This part ends the transaction.
    pub commit: bool,
}

pub enum ConsumerMsg {
    StartSnapshot,
    SnapshotStarted(PgSnapshot),
    SnapshotFailed(String),
    Changes(TxPart, RpcReplyPort<Result<(), String>>),
    /// Forget the transaction in progress: a new stream will send it again.
    Rollback(RpcReplyPort<()>),
}

pub struct ConsumerArgs {
    pub shared: Arc<Shared>,
    pub handle: String,
    pub shape: Arc<Shape>,
    pub log: Arc<ShapeLog>,
    /// The shape comes from storage: its snapshot is done and its log may already hold
    /// transactions that the stream sends again.
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
    /// The transaction being written: its last item is held back until the next one
    /// (or the commit) says whether it is the shape's last change of the transaction.
    held: Option<LogItem>,
    skipping_tx: Option<u32>,
}

impl ConsumerState {
    fn apply(&mut self, part: TxPart) -> Result<(), String> {
        // Already in the log (a replay after a reconnect or a restart): skip it whole.
        if part.lsn <= self.log.latest_offset().tx {
            return Ok(());
        }
        let snapshot = self.snapshot.as_ref().ok_or("snapshot not started")?;
        if self.filtering {
            if snapshot.is_after(part.xid) {
                self.filtering = false;
            } else if snapshot.contains_xid(part.xid) {
                self.skipping_tx = (!part.commit).then_some(part.xid);
                return Ok(());
            }
        }
        if self.skipping_tx == Some(part.xid) {
            if part.commit {
                self.skipping_tx = None;
            }
            return Ok(());
        }
        for change in &part.changes {
            for item in self.shape.convert(change) {
                if let Some(prev) = self.held.replace(item) {
                    self.write(&prev, part.xid, part.lsn, false)?;
                }
            }
        }
        if part.commit
            && let Some(last) = self.held.take()
        {
            self.write(&last, part.xid, part.lsn, true)?;
            self.log
                .commit(LogOffset::new(part.lsn, last.op))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn write(&self, item: &LogItem, xid: u32, lsn: u64, last: bool) -> Result<(), String> {
        let rel = (
            self.shape.table.schema.as_str(),
            self.shape.table.name.as_str(),
        );
        self.log
            .append(
                LogOffset::new(lsn, item.op),
                &item.to_json(rel, xid, lsn, last),
                last,
            )
            .map_err(|e| e.to_string())
    }
}

impl Actor for Consumer {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ConsumerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
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
            None
        };
        Ok(ConsumerState {
            shared: args.shared,
            handle: args.handle,
            shape: args.shape,
            log: args.log,
            snapshot,
            filtering: true,
            buffered: Vec::new(),
            held: None,
            skipping_tx: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConsumerMsg::StartSnapshot => {
                let name = format!("Snapshotter:{}", state.handle);
                let args = SnapshotterArgs {
                    shared: state.shared.clone(),
                    shape: state.shape.clone(),
                    log: state.log.clone(),
                    consumer: myself.clone(),
                };
                let (snap, _) = Actor::spawn_linked(
                    Some(state.shared.actor_name(&name)),
                    Snapshotter,
                    args,
                    myself.get_cell(),
                )
                .await?;
                state
                    .shared
                    .actors
                    .register(snap.get_id(), "Snapshotter", name);
            }
            ConsumerMsg::SnapshotStarted(snapshot) => {
                let recorded = serde_json::to_value(&snapshot)?;
                state.log.mark_snapshot_started(recorded)?;
                state.snapshot = Some(snapshot);
                for part in std::mem::take(&mut state.buffered) {
                    state.apply(part)?;
                }
            }
            ConsumerMsg::SnapshotFailed(reason) => {
                state.log.mark_snapshot_failed(reason.clone());
                return Err(format!("snapshot failed: {reason}").into());
            }
            ConsumerMsg::Rollback(reply) => {
                state.held = None;
                state.skipping_tx = None;
                let res = state.log.rollback();
                let _ = reply.send(());
                res?;
            }
            ConsumerMsg::Changes(part, reply) => {
                if state.snapshot.is_none() {
                    state.buffered.push(part);
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                let res = state.apply(part);
                let failed = res.clone().err();
                let _ = reply.send(res);
                if let Some(e) = failed {
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
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                state.shared.actors.unregister(cell.get_id());
                let _ = myself.cast(ConsumerMsg::SnapshotFailed(err.to_string()));
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.shared.actors.unregister(cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.shared.actors.unregister(myself.get_id());
        Ok(())
    }
}
