//! ShapeCache: the one place shapes are created. Reads never come here: request
//! handlers find existing shapes in the shared registry, and shapes being created in
//! the create-lock table it publishes (`Shared::creating`), so a herd of requests for
//! one new shape sends it one message, not one each. The creation work itself (the
//! shape's directory, its Consumer and Snapshotter) runs in a task the actor owns, so
//! its mailbox keeps moving while shapes are made.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use volt_shapes::{Shape, ShapeDef};
use volt_storage::ShapeLog;

use crate::actors::consumer::{Consumer, ConsumerArgs};
use crate::mailbox::{Mailbox, MailboxDepth};
use crate::shared::clear_if_mine;
use crate::shared::{CreateMark, ShapeEntry, Shared};
use crate::status::Condition;
use crate::task::OwnedTask;

/// How long a failed creation stays published, so the requests that were waiting for
/// it fail fast with its reason instead of retrying it at once.
const FAILURE_GRACE: Duration = Duration::from_secs(1);

pub struct ShapeCache;

/// What a creation request gets back.
pub enum CreateReply {
    Created(Arc<ShapeEntry>),
    /// Another request's creation of this shape is under way: wait for it in the
    /// registry.
    InProgress,
}

pub enum ShapeCacheMsg {
    GetOrCreate(Arc<Shape>, RpcReplyPort<Result<CreateReply, String>>),
    /// A creation task finished.
    Created {
        def: ShapeDef,
        task: u64,
        result: Result<(), String>,
    },
    /// The grace of a published failure has passed.
    SweepFailed {
        def: ShapeDef,
        id: u64,
    },
}

async fn create(shared: &Arc<Shared>, shape: Arc<Shape>) -> Result<Arc<ShapeEntry>, String> {
    if let Some(gate) = shared.failpoints.hold_create.load_full() {
        let _ = gate.acquire().await.map(|p| p.forget());
    }
    if let Some(reason) = shared.failpoints.fail_create.load_full() {
        return Err((*reason).clone());
    }
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
        ConsumerArgs::new(shared, handle.clone(), shape.clone(), log.clone(), false),
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
    /// This actor, with its sends counted, for messages to itself.
    me: Mailbox<ShapeCacheMsg>,
    /// Creations under way; aborted if ShapeCache dies (their marks go with the table,
    /// which a restarted ShapeCache starts empty).
    tasks: HashMap<u64, OwnedTask>,
    next_task: u64,
}

impl ShapeCacheState {
    fn get_or_create(
        &mut self,
        shape: Arc<Shape>,
        reply: RpcReplyPort<Result<CreateReply, String>>,
    ) {
        let shared = &self.shared;
        if let Some(entry) = shared.shapes.by_def(&shape.def) {
            let _ = reply.send(Ok(CreateReply::Created(entry)));
            return;
        }
        match shared.creating.get(&shape.def) {
            Some(CreateMark::InProgress) => {
                let _ = reply.send(Ok(CreateReply::InProgress));
                return;
            }
            Some(CreateMark::Failed { reason, .. }) => {
                let _ = reply.send(Err(reason));
                return;
            }
            None => {}
        }
        shared.creating.set_in_progress(&shape.def);
        let task = self.next_task;
        self.next_task += 1;
        let (shared, me, def) = (shared.clone(), self.me.clone(), shape.def.clone());
        let on_panic = (self.me.clone(), def.clone());
        self.tasks.insert(
            task,
            OwnedTask::spawn_catching(
                async move {
                    let result = create(&shared, shape).await;
                    let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
                    // The registry entry is readable before the mark is cleared (the
                    // Consumer registered it before `create` returned), so a waiter
                    // never sees neither.
                    let _ = me.cast(ShapeCacheMsg::Created {
                        def,
                        task,
                        result: outcome,
                    });
                    let _ = reply.send(result.map(CreateReply::Created));
                },
                move |panic| {
                    let (me, def) = on_panic;
                    let _ = me.cast(ShapeCacheMsg::Created {
                        def,
                        task,
                        result: Err(format!("shape creation panicked: {panic}")),
                    });
                },
            ),
        );
    }
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
        let mailbox = shared.actors.track_mailbox(myself.get_id(), "ShapeCache");
        let me = Mailbox::new(myself, mailbox.clone());
        // A new ShapeCache owns no creation: the marks of its predecessor's (aborted
        // with it) would strand their waiters.
        shared.creating.clear_all();
        shared.shape_cache.store(Some(Arc::new(me.clone())));
        Ok(ShapeCacheState {
            shared,
            mailbox,
            me,
            tasks: HashMap::new(),
            next_task: 0,
        })
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
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.mailbox.received();
        match msg {
            ShapeCacheMsg::GetOrCreate(shape, reply) if state.shared.config.coalesce_creates => {
                state.get_or_create(shape, reply);
            }
            // Without coalescing (measured against, in the herd benchmark): every
            // request waits in the mailbox, and creation runs in the handler.
            ShapeCacheMsg::GetOrCreate(shape, reply) => {
                let res = create(&state.shared, shape).await;
                let _ = reply.send(res.map(CreateReply::Created));
            }
            ShapeCacheMsg::Created { def, task, result } => {
                state.tasks.remove(&task);
                match result {
                    Ok(()) => state.shared.creating.clear(&def),
                    Err(reason) => {
                        tracing::warn!(table = %def.qualified_table(), %reason, "shape creation failed");
                        let id = state.shared.creating.set_failed(&def, reason);
                        state.mailbox.sent();
                        myself.send_after(FAILURE_GRACE, move || ShapeCacheMsg::SweepFailed {
                            def,
                            id,
                        });
                    }
                }
            }
            ShapeCacheMsg::SweepFailed { def, id } => state.shared.creating.sweep(&def, id),
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
