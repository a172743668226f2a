//! ShapeDbWriter: the write buffer in front of ShapeDb. Registrations and removals are
//! buffered and written in one SQLite transaction every 50 ms, so a creation wave costs
//! one write per tick, not one per shape. Readers never wait for it: the in-memory
//! registry already holds what the buffer holds.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use volt_storage::ShapeDbOp;

use crate::shared::Shared;
use crate::shared::clear_if_mine;

/// Electric's flush period.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

pub struct ShapeDbWriter;

pub enum ShapeDbMsg {
    Op(ShapeDbOp),
    Tick,
    /// Write everything buffered now (clean shutdown).
    Flush(RpcReplyPort<()>),
}

pub struct WriterState {
    shared: Arc<Shared>,
    pending: Vec<ShapeDbOp>,
}

impl WriterState {
    async fn flush(&mut self) -> Result<(), ActorProcessingErr> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.pending);
        match self.shared.shape_db.apply(&ops).await {
            Ok(()) => {
                self.shared
                    .registry_unwritten
                    .fetch_sub(ops.len() as u64, std::sync::atomic::Ordering::AcqRel);
            }
            Err(e) => {
                // Keep them for the next tick: a transient SQLite error must not lose shapes.
                tracing::error!(error = %e, pending = ops.len(), "could not write the shape registry");
                self.pending = ops;
            }
        }
        Ok(())
    }
}

impl Actor for ShapeDbWriter {
    type Msg = ShapeDbMsg;
    type State = WriterState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: Arc<Shared>,
    ) -> Result<Self::State, ActorProcessingErr> {
        // What a dead predecessor still held is lost with it: count from zero.
        shared
            .registry_unwritten
            .store(0, std::sync::atomic::Ordering::Release);
        shared.shape_db_writer.store(Some(Arc::new(myself.clone())));
        myself.send_interval(FLUSH_EVERY, || ShapeDbMsg::Tick);
        Ok(WriterState {
            shared,
            pending: Vec::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShapeDbMsg::Op(op) => state.pending.push(op),
            ShapeDbMsg::Tick => state.flush().await?,
            ShapeDbMsg::Flush(reply) => {
                state.flush().await?;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.flush().await?;
        clear_if_mine(&state.shared.shape_db_writer, myself.get_id());
        Ok(())
    }
}
