//! The volt stack: the ractor supervision tree that streams Postgres changes into shape
//! logs, and the shared state request handlers read. `supervision.md` maps the tree.

pub mod actors {
    pub mod connection;
    pub mod consumer;
    pub mod consumer_supervisor;
    pub mod publication_manager;
    pub mod shape_cache;
    pub mod shape_db_writer;
    pub mod shape_log_collector;
    pub mod snapshotter;
    pub mod status_monitor;
    pub mod supervisor;
}
pub mod delivery;
pub mod durability;
pub mod mailbox;
mod prefetch;
pub mod shapes;
pub mod shared;
pub mod snapshot_sessions;
pub mod stats;
pub mod status;
pub mod subset;
pub mod task;
pub mod tree;

use std::sync::Arc;

use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::actors::supervisor::{Supervisor, SupervisorMsg};
pub use crate::shared::{ActorSelector, ShapeEntry, Shared, StackConfig, TreeNode};
pub use crate::status::{Condition, ServiceStatus};

/// A running stack.
pub struct Stack {
    pub shared: Arc<Shared>,
    root: ActorRef<SupervisorMsg>,
    join: JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
#[error("the stack failed to start: {0}")]
pub struct StartError(String);

impl Stack {
    pub async fn start(config: StackConfig) -> Result<Stack, StartError> {
        std::fs::create_dir_all(config.shapes_dir()).map_err(|e| {
            StartError(format!(
                "cannot create the storage directory {}: {e}",
                config.shapes_dir().display()
            ))
        })?;
        let shape_db = volt_storage::ShapeDb::open(&config.storage_dir)
            .await
            .map_err(|e| StartError(e.to_string()))?;
        let shared = Shared::new(config, shape_db);
        let spec = tree::stack_supervisor(&shared);
        let (root, join) = Actor::spawn(None, Supervisor, (shared.clone(), spec))
            .await
            .map_err(|e| StartError(e.to_string()))?;
        shared
            .actors
            .register(root.get_id(), "StackSupervisor", "StackSupervisor".into());
        shared.root.store(Some(Arc::new(root.get_cell())));
        Ok(Stack { shared, root, join })
    }

    /// Resolves when the root supervisor has exited (it only does so when the tree
    /// gave up: a meltdown that restarts could not fix).
    pub async fn wait(&mut self) {
        let _ = (&mut self.join).await;
    }

    /// Stop the whole tree, top down, after the replication stream has told Postgres
    /// about everything stored and the buffered shape registry is written.
    pub async fn stop(self) {
        if self.shared.status.is_set(Condition::ReplicationReady) {
            self.shared.replication_shutdown.send_replace(true);
            self.shared
                .status
                .wait_clear(
                    Condition::ReplicationReady,
                    std::time::Duration::from_secs(5),
                )
                .await;
        }
        if let Some(slc) = self.shared.shape_log_collector.load_full() {
            let _ = slc
                .call(
                    actors::shape_log_collector::SlcMsg::Quiesce,
                    Some(std::time::Duration::from_secs(10)),
                )
                .await;
        }
        if let Some(writer) = self.shared.shape_db_writer.load_full() {
            let _ = writer
                .call(
                    actors::shape_db_writer::ShapeDbMsg::Flush,
                    Some(std::time::Duration::from_secs(5)),
                )
                .await;
        }
        let _ = self
            .root
            .stop_and_wait(
                Some("shutdown".into()),
                Some(std::time::Duration::from_secs(10)),
            )
            .await;
        self.shared.root.store(None);
        let _ = self.join.await;
        self.shared.snapshot_sessions.close_idle().await;
        self.shared.shape_db.close().await;
    }
}
