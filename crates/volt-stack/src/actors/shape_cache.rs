//! ShapeCache: serialises shape creation. Reads never come here: request handlers find
//! existing shapes in the shared registry.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, rpc::CallResult};
use volt_shapes::Shape;
use volt_storage::{ShapeDbOp, ShapeLog};

use crate::actors::consumer::{Consumer, ConsumerArgs, ConsumerMsg};
use crate::actors::shape_log_collector::SlcMsg;
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
    let log = Arc::new(
        ShapeLog::create(
            shared.config.shapes_dir().join(&handle),
            shared.config.chunk_bytes,
        )
        .map_err(|e| e.to_string())?,
    );
    let sup = shared
        .consumer_supervisor
        .load_full()
        .ok_or("the shape subsystem is restarting")?;
    let slc = shared
        .shape_log_collector
        .load_full()
        .ok_or("the shape subsystem is restarting")?;
    let name = format!("Consumer:{handle}");
    let (consumer, _) = Actor::spawn_linked(
        Some(shared.actor_name(&name)),
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
    shared.actors.register(consumer.get_id(), "Consumer", name);
    // Routed before the snapshot starts, so no change falls between the two.
    match slc
        .call(
            |reply| SlcMsg::AddShape {
                handle: handle.clone(),
                shape: shape.clone(),
                consumer: consumer.clone(),
                reply,
            },
            None,
        )
        .await
    {
        Ok(CallResult::Success(())) => {}
        _ => {
            consumer.stop(None);
            return Err("the shape log collector is not available".into());
        }
    }
    let entry = Arc::new(ShapeEntry {
        handle: handle.clone(),
        shape,
        log,
        consumer: consumer.clone(),
    });
    shared.shapes.insert(entry.clone());
    shared.record(ShapeDbOp::Add {
        handle: handle.clone(),
        definition: entry.shape.to_definition_json(),
    });
    consumer
        .cast(ConsumerMsg::StartSnapshot)
        .map_err(|_| "the shape's consumer died at start".to_string())?;
    metrics::counter!("volt_shapes_created_total").increment(1);
    tracing::info!(%handle, table = %entry.shape.def.qualified_table(), "shape created");
    Ok(entry)
}

impl Actor for ShapeCache {
    type Msg = ShapeCacheMsg;
    type State = Arc<Shared>;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: Arc<Shared>,
    ) -> Result<Self::State, ActorProcessingErr> {
        shared.shape_cache.store(Some(Arc::new(myself)));
        Ok(shared)
    }

    async fn post_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        shared: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        shared.report(Condition::ShapeCacheReady, true);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        shared: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShapeCacheMsg::GetOrCreate(shape, reply) => {
                let res = create(shared, shape).await;
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
        shared: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if shared
            .shape_cache
            .load()
            .as_ref()
            .is_some_and(|c| c.get_id() == myself.get_id())
        {
            shared.shape_cache.store(None);
        }
        Ok(())
    }
}
