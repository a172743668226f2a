//! StatusMonitor: the only writer of the readiness board.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::shared::Shared;
use crate::shared::clear_if_mine;
use crate::status::Condition;

pub struct StatusMonitor;

pub enum StatusMsg {
    Set(Condition, bool),
}

impl Actor for StatusMonitor {
    type Msg = StatusMsg;
    type State = Arc<Shared>;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: Arc<Shared>,
    ) -> Result<Self::State, ActorProcessingErr> {
        // A new monitor starts from nothing: everything after it in the tree is
        // restarted with it and reports again (rest-for-one).
        shared.status.reset();
        shared.status_monitor.store(Some(Arc::new(myself)));
        Ok(shared)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        shared: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StatusMsg::Set(cond, on) => {
                let before = shared.status.status();
                shared.status.set(cond, on);
                let after = shared.status.status();
                if before != after {
                    tracing::info!(status = after.as_str(), ?cond, on, "service status changed");
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        clear_if_mine(&shared.status_monitor, myself.get_id());
        shared.status.reset();
        Ok(())
    }
}
