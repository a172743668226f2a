//! ShapeLogCollector: the single consumer of the replication stream. Routes each
//! transaction fragment to the Consumers of the shapes it touches and replies only when
//! every one of them has accepted it, so the replication client applies backpressure
//! and acknowledges nothing that is not stored.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::future::join_all;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, rpc::CallResult};
use volt_shapes::{Shape, TxFragment};

use crate::actors::consumer::{ConsumerMsg, TxPart};
use crate::shapes;
use crate::shared::Shared;
use crate::status::Condition;

pub struct ShapeLogCollector;

pub enum SlcMsg {
    /// A fragment of a committed transaction; replied to once stored by every shape.
    Fragment(TxFragment, RpcReplyPort<Result<(), String>>),
    /// Route changes to a new shape from now on (before its snapshot starts).
    AddShape {
        handle: String,
        shape: Arc<Shape>,
        consumer: ActorRef<ConsumerMsg>,
        reply: RpcReplyPort<()>,
    },
    RemoveShape(String),
}

#[derive(Clone)]
struct Route {
    handle: String,
    consumer: ActorRef<ConsumerMsg>,
}

pub struct SlcState {
    shared: Arc<Shared>,
    /// (schema, table) -> shapes on that table.
    routes: HashMap<(String, String), Vec<Route>>,
    /// Shapes that received a change of the transaction in progress.
    touched: HashSet<String>,
    /// Commit LSN of the last transaction fully processed: replays at or below it
    /// (after a reconnect) are skipped.
    last_committed_lsn: u64,
}

impl SlcState {
    fn remove(&mut self, handle: &str) {
        for routes in self.routes.values_mut() {
            routes.retain(|r| r.handle != handle);
        }
        self.routes.retain(|_, v| !v.is_empty());
        self.touched.remove(handle);
    }

    async fn process(&mut self, frag: TxFragment) -> Result<(), String> {
        if frag.lsn <= self.last_committed_lsn {
            return Ok(());
        }
        // TRUNCATE: the shapes of that table can no longer be kept in step with it.
        for rel in &frag.truncated {
            let key = (rel.schema.clone(), rel.name.clone());
            for route in self.routes.remove(&key).unwrap_or_default() {
                tracing::info!(handle = %route.handle, table = %rel.name, "table truncated; invalidating shape");
                self.touched.remove(&route.handle);
                shapes::invalidate(&self.shared, &route.handle);
            }
        }
        let mut per_shape: HashMap<String, (Route, Vec<volt_shapes::Change>)> = HashMap::new();
        for change in &frag.changes {
            let key = (change.relation.schema.clone(), change.relation.name.clone());
            let Some(routes) = self.routes.get(&key) else {
                continue;
            };
            for route in routes {
                per_shape
                    .entry(route.handle.clone())
                    .or_insert_with(|| (route.clone(), Vec::new()))
                    .1
                    .push(change.clone());
            }
        }
        for handle in per_shape.keys() {
            self.touched.insert(handle.clone());
        }
        if frag.commit_end_lsn.is_some() {
            // The commit goes to every shape the transaction touched, even those with
            // no change in this last fragment.
            for handle in self.touched.drain().collect::<Vec<_>>() {
                if per_shape.contains_key(&handle) {
                    continue;
                }
                if let Some(route) = self.routes.values().flatten().find(|r| r.handle == handle) {
                    per_shape.insert(handle, (route.clone(), Vec::new()));
                }
            }
        }
        let commit = frag.commit_end_lsn.is_some();
        let calls = per_shape.into_values().map(|(route, changes)| {
            let part = TxPart {
                xid: frag.xid,
                lsn: frag.lsn,
                changes,
                commit,
            };
            async move {
                let res = route
                    .consumer
                    .call(|reply| ConsumerMsg::Changes(part, reply), None)
                    .await;
                (route.handle, res)
            }
        });
        for (handle, res) in join_all(calls).await {
            match res {
                Ok(CallResult::Success(Ok(()))) => {}
                Ok(CallResult::Success(Err(e))) => {
                    tracing::error!(%handle, error = %e, "consumer could not store changes; invalidating shape");
                    self.remove(&handle);
                    shapes::invalidate(&self.shared, &handle);
                }
                _ => {
                    // The consumer died: its shape is gone (clients will refetch).
                    self.remove(&handle);
                    shapes::invalidate(&self.shared, &handle);
                }
            }
        }
        metrics::counter!("volt_changes_total").increment(frag.changes.len() as u64);
        if commit {
            metrics::counter!("volt_transactions_total").increment(1);
            self.last_committed_lsn = frag.lsn;
            self.shared.last_seen_lsn.store(frag.lsn, Ordering::Release);
        }
        Ok(())
    }
}

impl Actor for ShapeLogCollector {
    type Msg = SlcMsg;
    type State = SlcState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: Arc<Shared>,
    ) -> Result<Self::State, ActorProcessingErr> {
        // A new collector starts with an empty routing table: shapes do not outlive the
        // shape subsystem yet, so whatever the last one served is gone (clients refetch).
        shapes::purge_all(&shared);
        shared.shape_log_collector.store(Some(Arc::new(myself)));
        Ok(SlcState {
            shared,
            routes: HashMap::new(),
            touched: HashSet::new(),
            last_committed_lsn: 0,
        })
    }

    async fn post_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.shared.report(Condition::ShapeLogCollectorReady, true);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SlcMsg::Fragment(frag, reply) => {
                let res = state.process(frag).await;
                let _ = reply.send(res);
            }
            SlcMsg::AddShape {
                handle,
                shape,
                consumer,
                reply,
            } => {
                let key = (shape.table.schema.clone(), shape.table.name.clone());
                state
                    .routes
                    .entry(key)
                    .or_default()
                    .push(Route { handle, consumer });
                let _ = reply.send(());
            }
            SlcMsg::RemoveShape(handle) => state.remove(&handle),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state
            .shared
            .shape_log_collector
            .load()
            .as_ref()
            .is_some_and(|s| s.get_id() == myself.get_id())
        {
            state.shared.shape_log_collector.store(None);
        }
        Ok(())
    }
}
