//! PublicationManager: the only actor that changes the publication, so adding a table for
//! a new shape and dropping a table no shape needs any more can never interleave. It also
//! reconciles shapes with the live schema on a timer: DDL followed by no write (and DROP
//! TABLE) sends no Relation message on the stream, so this is how those are noticed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use volt_pg::admin;

use crate::shapes;
use crate::shared::Shared;
use crate::shared::clear_if_mine;

pub struct PublicationManager;

pub enum PublicationMsg {
    /// Make sure a table is published with full replica identity (before a snapshot).
    Publish {
        schema: String,
        table: String,
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// Reconcile now: invalidate shapes whose table changed or vanished, unpublish
    /// tables no shape needs.
    Reconcile(Option<RpcReplyPort<()>>),
}

/// (schema, table)
type TableName = (String, String);

async fn reconcile(shared: &Arc<Shared>) -> Result<(), String> {
    let Some(conn) = shared.admin.load_full() else {
        // No database: nothing to compare with; try again next period.
        return Ok(());
    };
    let publication = shared.config.publication_name();
    // Shapes by table, read before the publication so that a shape registered after this
    // read publishes its table again through us, after any drop below.
    let mut by_table: HashMap<TableName, Vec<(String, Arc<volt_shapes::Shape>)>> = HashMap::new();
    for handle in shared.shapes.handles() {
        if let Some(entry) = shared.shapes.get(&handle) {
            let key = (
                entry.shape.table.schema.clone(),
                entry.shape.table.name.clone(),
            );
            by_table
                .entry(key)
                .or_default()
                .push((handle, entry.shape.clone()));
        }
    }
    for ((schema, name), shapes_on) in &by_table {
        let live = admin::load_table(&conn, schema, name)
            .await
            .map_err(|e| e.to_string())?;
        let changed = match &live {
            None => Some("the table was dropped"),
            Some(t) if shapes_on.iter().any(|(_, s)| !s.table.still_describes(t)) => {
                Some("the table's schema changed")
            }
            Some(_) => None,
        };
        if let Some(reason) = changed {
            shared.schemas.remove(&(schema.clone(), name.clone()));
            for (handle, _) in shapes_on {
                tracing::info!(%handle, table = %name, reason, "invalidating shape");
                shapes::invalidate(shared, handle);
            }
        }
    }
    let needed: HashSet<(String, String)> = shared
        .shapes
        .handles()
        .iter()
        .filter_map(|h| shared.shapes.get(h))
        .map(|e| (e.shape.table.schema.clone(), e.shape.table.name.clone()))
        .collect();
    let published = admin::published_tables(&conn, &publication)
        .await
        .map_err(|e| e.to_string())?;
    for (schema, table) in published {
        if !needed.contains(&(schema.clone(), table.clone())) {
            tracing::info!(%schema, %table, "no shape needs this table any more; unpublishing it");
            admin::unpublish_table(&conn, &publication, &schema, &table)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

pub struct PmState {
    shared: Arc<Shared>,
    /// Tables this actor published (with full replica identity) and has not dropped
    /// since: publishing them again needs no round trip. Only this actor changes the
    /// publication, so the set can only go stale by someone else's DDL, which the
    /// reconciler clears it for.
    published: HashSet<TableName>,
}

impl Actor for PublicationManager {
    type Msg = PublicationMsg;
    type State = PmState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: Arc<Shared>,
    ) -> Result<Self::State, ActorProcessingErr> {
        shared
            .publication_manager
            .store(Some(Arc::new(myself.clone())));
        myself.send_interval(shared.config.reconcile_period, || {
            PublicationMsg::Reconcile(None)
        });
        Ok(PmState {
            shared,
            published: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let shared = &state.shared;
        match msg {
            PublicationMsg::Publish {
                schema,
                table,
                reply,
            } => {
                let key = (schema.clone(), table.clone());
                if state.published.contains(&key) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                let res = match shared.admin.load_full() {
                    None => Err("the database connection is not available".to_string()),
                    Some(conn) => admin::publish_table(
                        &conn,
                        &shared.config.publication_name(),
                        &schema,
                        &table,
                    )
                    .await
                    .map_err(|e| e.to_string()),
                };
                if res.is_ok() {
                    state.published.insert(key);
                }
                let _ = reply.send(res);
            }
            PublicationMsg::Reconcile(reply) => {
                // Start from what Postgres says, not from what we remember.
                state.published.clear();
                if let Err(e) = reconcile(shared).await {
                    tracing::warn!(error = %e, "schema and publication reconciliation failed; retrying next period");
                }
                let trash = shared.config.trash_dir();
                let _ = tokio::task::spawn_blocking(move || shapes::empty_trash(&trash)).await;
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let shared = &state.shared;
        clear_if_mine(&shared.publication_manager, myself.get_id());
        Ok(())
    }
}
