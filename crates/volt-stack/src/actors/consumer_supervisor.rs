//! ConsumerSupervisor: parent of every Consumer. Consumers are never restarted: a
//! shape whose Consumer dies is removed and its clients refetch under a new handle.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::shapes;
use crate::shared::Shared;
use crate::shared::clear_if_mine;

pub struct ConsumerSupervisor;

impl Actor for ConsumerSupervisor {
    type Msg = ();
    type State = Arc<Shared>;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: Arc<Shared>,
    ) -> Result<Self::State, ActorProcessingErr> {
        shared
            .consumer_supervisor
            .store(Some(Arc::new(myself.get_cell())));
        Ok(shared)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        shared: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        shared.actors.unregister(cell.get_id());
        // Found through the registry, not the actor directory: the directory listing
        // goes with the actor's state, which may be dropped before this event arrives.
        // The index only holds a shape's current consumer, so a predecessor replaced
        // by a restore never removes its successor's shape.
        if let Some(handle) = shared.shapes.handle_of_consumer(cell.get_id()) {
            tracing::warn!(%handle, reason = %why, "consumer exited; removing its shape");
            shapes::invalidate(shared, &handle);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        clear_if_mine(&shared.consumer_supervisor, myself.get_id());
        Ok(())
    }
}
