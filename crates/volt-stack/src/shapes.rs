//! Shape removal, shared by every path that ends a shape (consumer death, truncate,
//! subsystem restart).

use std::sync::Arc;

use crate::actors::shape_log_collector::SlcMsg;
use crate::shared::Shared;

/// Remove a shape: clients holding its handle get a 409 and a new handle. Idempotent.
pub fn invalidate(shared: &Arc<Shared>, handle: &str) {
    let Some(entry) = shared.shapes.remove(handle) else {
        return;
    };
    entry.log.close();
    entry.consumer.stop(Some("shape invalidated".into()));
    if let Some(slc) = shared.shape_log_collector.load_full() {
        // Gone already when the collector itself is stopping: nothing left to route.
        let _ = slc.cast(SlcMsg::RemoveShape(handle.to_string()));
    }
    if let Err(e) = entry.log.remove_files() {
        tracing::warn!(%handle, error = %e, "could not remove the files of a removed shape");
    }
}

/// Drop every shape and whatever shape files an earlier run left on disk.
pub fn purge_all(shared: &Arc<Shared>) {
    for handle in shared.shapes.handles() {
        invalidate(shared, &handle);
    }
    let dir = shared.config.shapes_dir();
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not clear old shape files")
        }
    }
}

/// Find or create the shape for a validated definition. Existing shapes are found in
/// the registry without a message; creation goes through ShapeCache.
pub async fn get_or_create(
    shared: &Arc<Shared>,
    shape: Arc<volt_shapes::Shape>,
) -> Result<Arc<crate::shared::ShapeEntry>, String> {
    use crate::actors::shape_cache::ShapeCacheMsg;
    use ractor::rpc::CallResult;

    if let Some(entry) = shared.shapes.by_def(&shape.def) {
        return Ok(entry);
    }
    let cache = shared
        .shape_cache
        .load_full()
        .ok_or("the shape cache is restarting")?;
    match cache
        .call(
            |r| ShapeCacheMsg::GetOrCreate(shape, r),
            Some(std::time::Duration::from_secs(30)),
        )
        .await
    {
        Ok(CallResult::Success(res)) => res,
        Ok(CallResult::Timeout) => Err("timed out waiting for the shape cache".into()),
        _ => Err("the shape cache stopped before answering".into()),
    }
}
