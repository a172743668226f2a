//! ShapeCache: serialises shape creation. Reads never come here: request handlers find
//! existing shapes in the shared registry.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use volt_shapes::Shape;
use volt_storage::ShapeLog;

use crate::actors::consumer::{Consumer, ConsumerArgs};
use crate::mailbox::{Mailbox, MailboxDepth};
use crate::shared::clear_if_mine;
use crate::shared::{ShapeEntry, Shared};
use crate::status::Condition;

pub struct ShapeCache;

pub enum ShapeCacheMsg {
    GetOrCreate(Arc<Shape>, RpcReplyPort<Result<Arc<ShapeEntry>, String>>),
}

async fn create(shared: &Arc<Shared>, shape: Arc<Shape>) -> Result<Arc<ShapeEntry>, String> {
    // A request that lost the race to the message queue finds the shape made.
    if let Some(entry) = shared.shapes.by_def(&shape.def) {
        return Ok(entry);
    }
    let handle = shared.new_handle(&shape.def);
    let dir = shared.config.shapes_dir().join(&handle);
    let chunk_bytes = shared.config.chunk_bytes;
    let log = tokio::task::spawn_blocking(move || ShapeLog::create(dir, chunk_bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let log = Arc::new(log);
    let sup = shared
        .consumer_supervisor
        .load_full()
        .ok_or("the shape subsystem is restarting")?;
    // The consumer registers the shape (route, registry, ShapeDb) before it returns
    // and starts the snapshot itself, so a ShapeCache killed mid-creation leaves no
    // half-made shape behind.
    Actor::spawn_linked(
        None,
        Consumer,
        ConsumerArgs {
            shared: shared.clone(),
            handle: handle.clone(),
            shape: shape.clone(),
            log: log.clone(),
            restored: false,
        },
        (*sup).clone(),
    )
    .await
    .map_err(|e| format!("could not start the shape's consumer: {e}"))?;
    let entry = shared
        .shapes
        .get(&handle)
        .ok_or("the new shape's consumer stopped at once")?;
    metrics::counter!("volt_shapes_created_total").increment(1);
    if let Some(max) = shared.config.max_shapes {
        while shared.shapes.len() > max {
            let Some(oldest) = shared.shapes.least_recently_read(&handle) else {
                break;
            };
            tracing::info!(handle = %oldest, max, "evicting the least recently read shape");
            crate::shapes::invalidate(shared, &oldest);
        }
    }
    tracing::info!(%handle, table = %entry.shape.def.qualified_table(), "shape created");
    Ok(entry)
}

pub struct ShapeCacheState {
    shared: Arc<Shared>,
    mailbox: Arc<MailboxDepth>,
}

impl Actor for ShapeCache {
    type Msg = ShapeCacheMsg;
    type State = ShapeCacheState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: Arc<Shared>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mailbox = shared.actors.track_mailbox(myself.get_id());
        shared
            .shape_cache
            .store(Some(Arc::new(Mailbox::new(myself, mailbox.clone()))));
        Ok(ShapeCacheState { shared, mailbox })
    }

    async fn post_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.shared.report(Condition::ShapeCacheReady, true);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.mailbox.received();
        match msg {
            ShapeCacheMsg::GetOrCreate(shape, reply) => {
                let res = create(&state.shared, shape).await;
                if let Err(e) = &res {
                    tracing::warn!(error = %e, "shape creation failed");
                }
                let _ = reply.send(res);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        clear_if_mine(&state.shared.shape_cache, myself.get_id());
        Ok(())
    }
}
