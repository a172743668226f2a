//! Snapshotter: takes a shape's initial snapshot on its own connection, in a
//! `REPEATABLE READ` transaction whose snapshot tells the Consumer which replicated
//! transactions to skip.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, rpc::CallResult};
use serde_json::json;
use volt_pg::PgError;
use volt_shapes::{LogMode, Shape};
use volt_storage::ShapeLog;

use crate::actors::consumer::{ConsumerMsg, Listed};
use crate::actors::publication_manager::PublicationMsg;
use crate::shared::Shared;
use crate::task::OwnedTask;

pub struct Snapshotter;

/// The stop reason of a Snapshotter that finished; any other end is a failure.
pub const SNAPSHOT_COMPLETE: &str = "snapshot complete";

pub struct SnapshotterArgs {
    pub shared: Arc<Shared>,
    pub handle: String,
    pub shape: Arc<Shape>,
    pub log: Arc<ShapeLog>,
    pub consumer: ActorRef<ConsumerMsg>,
}

pub enum SnapshotterMsg {
    Done,
    Failed(String),
}

pub struct SnapshotterState {
    _task: OwnedTask,
    _listed: Listed,
}

/// Why a snapshot failed, in the words its stop reason gives.
struct Failure(String);

impl From<PgError> for Failure {
    fn from(e: PgError) -> Failure {
        Failure(e.to_string())
    }
}

async fn take_snapshot(args: &SnapshotterArgs) -> Result<(), String> {
    let shared = &args.shared;
    {
        // The table must be published (with full replica identity) before the snapshot
        // starts, or changes made between the two would be lost.
        let manager = shared
            .publication_manager
            .load_full()
            .ok_or("the publication manager is restarting")?;
        match manager
            .call(
                |reply| PublicationMsg::Publish {
                    schema: args.shape.table.schema.clone(),
                    table: args.shape.table.name.clone(),
                    reply,
                },
                None,
            )
            .await
        {
            Ok(CallResult::Success(res)) => res?,
            _ => return Err("the publication manager did not answer".into()),
        }
    }
    if let Some(gate) = shared.failpoints.hold_snapshot.load_full() {
        let _ = gate.acquire().await.map(|p| p.forget());
    }
    let started = std::time::Instant::now();
    // `log=changes_only`: the snapshot only fixes where the changes start.
    let select_sql = (args.shape.def.log == LogMode::Full).then(|| args.shape.snapshot_sql());
    let tx = shared
        .snapshot_sessions
        .begin(&shared.config.pg, select_sql.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let snapshot = tx.snapshot.clone();
    // Recorded before any row is written: a restored shape needs it to filter the
    // transactions the snapshot already holds.
    let recorded = serde_json::to_value(&snapshot).map_err(|e| e.to_string())?;
    args.log
        .mark_snapshot_started(recorded)
        .map_err(|e| e.to_string())?;
    args.consumer
        .cast(ConsumerMsg::SnapshotStarted(snapshot.clone()))
        .map_err(|_| "consumer is gone".to_string())?;
    let mut rows = 0u64;
    if select_sql.is_some() {
        let encoder = args.shape.snapshot_encoder(None);
        // Rows are appended in batches of this many bytes.
        const BATCH: usize = 64 * 1024;
        let mut batch = Vec::with_capacity(BATCH + 4096);
        // Every row is read once this returns: the session goes to the next snapshot
        // while this one's files are made durable.
        tx.rows_then_end(|values| {
            if args.log.is_closed() {
                return Err(Failure("the shape was removed during its snapshot".into()));
            }
            rows += 1;
            encoder.encode(&mut batch, values);
            batch.push(b'\n');
            if batch.len() >= BATCH {
                args.log
                    .append_snapshot_lines(&batch)
                    .map_err(|e| Failure(e.to_string()))?;
                batch.clear();
            }
            Ok(())
        })
        .await
        .map_err(|Failure(e)| e)?;
        args.log
            .append_snapshot_lines(&batch)
            .map_err(|e| e.to_string())?;
    } else {
        tx.end().await;
    }
    let end = json!({"headers": {
        "control": "snapshot-end",
        "xmin": snapshot.xmin.to_string(),
        "xmax": snapshot.xmax.to_string(),
        "xip_list": snapshot.xip.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
    }});
    args.log
        .append_snapshot_line(&end.to_string())
        .map_err(|e| e.to_string())?;
    let read = started.elapsed();
    // fsyncs (a few ms each on a slow disk): the worker's other tasks (requests, other
    // snapshots' rows) move to another thread meanwhile instead of waiting behind them.
    // Not `spawn_blocking`: a Snapshotter killed meanwhile must not have its snapshot
    // complete behind its Consumer's back.
    blocking(|| args.log.finish_snapshot()).map_err(|e| e.to_string())?;
    let took = started.elapsed();
    metrics::histogram!("volt_snapshot_duration_seconds").record(took.as_secs_f64());
    tracing::info!(
        handle = %args.handle,
        rows,
        took = ?took,
        durable_after_read = ?(took - read),
        "snapshot complete"
    );
    Ok(())
}

/// Runs blocking `f` in place, letting the runtime move this worker's other tasks to
/// another thread first where it can (not on a current-thread runtime, as in tests).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Actor for Snapshotter {
    type Msg = SnapshotterMsg;
    type State = SnapshotterState;
    type Arguments = SnapshotterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SnapshotterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let listed = Listed::new(
            &args.shared,
            myself.get_id(),
            "Snapshotter",
            format!("Snapshotter:{}", args.handle),
        );
        let me = myself.clone();
        let task = OwnedTask::spawn_catching(
            async move {
                let msg = match take_snapshot(&args).await {
                    Ok(()) => SnapshotterMsg::Done,
                    Err(e) => SnapshotterMsg::Failed(e),
                };
                let _ = myself.cast(msg);
            },
            move |panic| {
                let _ = me.cast(SnapshotterMsg::Failed(panic));
            },
        );
        Ok(SnapshotterState {
            _task: task,
            _listed: listed,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SnapshotterMsg::Done => {
                myself.stop(Some(SNAPSHOT_COMPLETE.into()));
                Ok(())
            }
            SnapshotterMsg::Failed(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_blocking_step_lets_its_workers_other_tasks_run_meanwhile() {
        let (inside_tx, inside_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        // On the only worker: inline, the task spawned below could not run until this
        // returned, and this waits for it.
        let blocked = tokio::spawn(async move {
            blocking(|| {
                inside_tx.send(()).unwrap();
                done_rx.recv_timeout(Duration::from_secs(20)).is_ok()
            })
        });
        inside_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        let other = tokio::spawn(async move { done_tx.send(()).unwrap() });
        assert!(
            blocked.await.unwrap(),
            "the other task did not run while the step blocked"
        );
        other.await.unwrap();
    }

    #[tokio::test]
    async fn a_blocking_step_runs_in_place_on_a_current_thread_runtime() {
        assert_eq!(blocking(|| 7), 7);
    }
}
