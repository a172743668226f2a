//! Shape removal, shared by every path that ends a shape (consumer death, truncate,
//! subsystem restart).

use std::sync::Arc;

use volt_storage::ShapeDbOp;

use crate::actors::shape_db_writer::ShapeDbMsg;
use crate::actors::shape_log_collector::SlcMsg;
use crate::shared::Shared;

/// Remove a shape: clients holding its handle get a 409 and a new handle. Idempotent.
pub fn invalidate(shared: &Arc<Shared>, handle: &str) {
    let Some(entry) = shared.shapes.remove(handle) else {
        return;
    };
    entry.log.close();
    if let Some(consumer) = &entry.consumer {
        consumer.stop(Some("shape invalidated".into()));
    }
    if let Some(slc) = shared.shape_log_collector.load_full() {
        // Gone already when the collector itself is stopping: nothing left to route.
        let _ = slc.cast(SlcMsg::RemoveShape(handle.to_string()));
    }
    shared.record(ShapeDbOp::Remove {
        handle: handle.to_string(),
    });
    // A rename is cheap and never blocks on a large directory: the trash is emptied
    // later, off the request and replication paths.
    move_to_trash(shared, entry.log.dir());
    shared.durability.shape_removed();
    metrics::counter!("volt_shapes_removed_total").increment(1);
}

/// Bring a followed shape up to what its writer (another instance) has stored. A shape
/// that instance removed leaves the registry here too (without touching its files or
/// registry row, which are that instance's): its readers refetch. Blocking.
pub fn follow(shared: &Shared, entry: &crate::shared::ShapeEntry) {
    if let Err(e) = entry.log.follow() {
        tracing::warn!(handle = %entry.handle, error = %e, "cannot follow a shape's log");
    }
    if entry.log.is_closed()
        && let Some(current) = shared.shapes.get(&entry.handle)
        && Arc::ptr_eq(&current.log, &entry.log)
    {
        tracing::info!(handle = %entry.handle, "a followed shape was removed by the instance writing it");
        shared.shapes.remove(&entry.handle);
    }
}

/// Drop every shape, its registry row and its files: the data they were built from is
/// gone (a different cluster, a new timeline, a new slot).
pub async fn purge_all(shared: &Arc<Shared>) {
    for handle in shared.shapes.handles() {
        invalidate(shared, &handle);
    }
    if let Some(writer) = shared.shape_db_writer.load_full() {
        let _ = writer
            .call(ShapeDbMsg::Flush, Some(std::time::Duration::from_secs(5)))
            .await;
    }
    if let Err(e) = shared.shape_db.remove_all().await {
        tracing::error!(error = %e, "could not clear the shape registry");
    }
    remove_orphan_dirs(shared, &std::collections::HashSet::new());
}

fn move_to_trash(shared: &Shared, dir: &std::path::Path) {
    let trash = shared.config.trash_dir();
    let target = trash.join(format!(
        "{}-{:08x}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        rand::random::<u32>()
    ));
    let moved = std::fs::create_dir_all(&trash).and_then(|_| std::fs::rename(dir, &target));
    match moved {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not move a removed shape's files to the trash; removing them now");
            if let Err(e) = std::fs::remove_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a removed shape's files");
            }
        }
    }
}

/// Make the renames of removed shapes into the trash durable (see `Durability`).
/// Blocking.
pub fn sync_removal_dirs(config: &crate::shared::StackConfig) -> std::io::Result<()> {
    for dir in [config.shapes_dir(), config.trash_dir()] {
        match std::fs::File::open(&dir).and_then(|d| d.sync_all()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Delete what removed shapes left in the trash. Blocking: run it on the blocking pool.
pub fn empty_trash(trash: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(trash) else {
        return;
    };
    for entry in entries.flatten() {
        if let Err(e) = std::fs::remove_dir_all(entry.path()) {
            tracing::warn!(dir = %entry.path().display(), error = %e, "could not empty the trash");
        }
    }
}

/// Remove shape directories that belong to no known shape (left by a crash between
/// creating a shape's files and registering it, or by a purge).
pub fn remove_orphan_dirs(shared: &Shared, keep: &std::collections::HashSet<String>) {
    let dir = shared.config.shapes_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) {
            continue;
        }
        move_to_trash(shared, &entry.path());
    }
}

/// Why a shape could not be found or made. Every kind is worth retrying later; they
/// differ in what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    /// Too many creation requests are queued for ShapeCache: shed, retry soon.
    #[error("too many shapes are being created; retry later")]
    Overloaded,
    /// The creation this request waited for did not finish in time.
    #[error("timed out waiting for the shape to be created")]
    Timeout,
    /// The creation failed (the same reason for every request that waited for it).
    #[error("{0}")]
    Failed(String),
}

/// How long a request waits for a shape being created.
const CREATE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Backoff of a request polling for a shape another request is creating: short first,
/// since most creations take milliseconds.
fn poll_delay(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis([5, 10, 20, 40, 80, 100][attempt.min(5) as usize])
}

/// Find or create the shape for a validated definition. Existing shapes are found in
/// the registry without a message. A shape that another request is creating is waited
/// for by polling the registry (ShapeCache's create-lock table says so), without a
/// message either; only a request that finds neither asks ShapeCache to create it.
pub async fn get_or_create(
    shared: &Arc<Shared>,
    shape: Arc<volt_shapes::Shape>,
) -> Result<Arc<crate::shared::ShapeEntry>, CreateError> {
    use crate::actors::shape_cache::{CreateReply, ShapeCacheMsg};
    use crate::shared::CreateMark;
    use ractor::rpc::CallResult;

    let deadline = tokio::time::Instant::now() + CREATE_WAIT;
    let mut attempt = 0;
    loop {
        if let Some(entry) = shared.shapes.by_def(&shape.def) {
            return Ok(entry);
        }
        let mark = if shared.config.coalesce_creates {
            shared.creating.get(&shape.def)
        } else {
            None
        };
        match mark {
            Some(CreateMark::Failed { reason, .. }) => return Err(CreateError::Failed(reason)),
            Some(CreateMark::InProgress) => {}
            None => {
                let cache = shared
                    .shape_cache
                    .load_full()
                    .ok_or_else(|| CreateError::Failed("the shape cache is restarting".into()))?;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match cache
                    .call_bounded(
                        shared.config.max_shape_cache_mailbox as u64,
                        |r| ShapeCacheMsg::GetOrCreate(shape.clone(), r),
                        Some(left),
                    )
                    .await
                {
                    Ok(None) => {
                        metrics::counter!("volt_shape_cache_shed_total").increment(1);
                        return Err(CreateError::Overloaded);
                    }
                    Ok(Some(CallResult::Success(Ok(CreateReply::Created(entry))))) => {
                        return Ok(entry);
                    }
                    Ok(Some(CallResult::Success(Ok(CreateReply::InProgress)))) => {}
                    Ok(Some(CallResult::Success(Err(reason)))) => {
                        return Err(CreateError::Failed(reason));
                    }
                    Ok(Some(CallResult::Timeout)) => return Err(CreateError::Timeout),
                    _ => {
                        return Err(CreateError::Failed(
                            "the shape cache stopped before answering".into(),
                        ));
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CreateError::Timeout);
        }
        tokio::time::sleep(poll_delay(attempt)).await;
        attempt += 1;
    }
}
