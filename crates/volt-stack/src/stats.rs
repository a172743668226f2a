//! Gauges sampled from the shared state (counters are bumped where things happen).

use std::sync::Arc;
use std::time::Duration;

use crate::shared::Shared;
use crate::task::OwnedTask;

/// Set the sampled gauges once.
pub fn sample(shared: &Shared) {
    metrics::gauge!("volt_shapes_active").set(shared.shapes.len() as f64);
    let (creating, failed) = shared.creating.counts();
    metrics::gauge!("volt_shapes_creating").set(creating as f64);
    metrics::gauge!("volt_shapes_failed").set(failed as f64);
    metrics::gauge!("volt_storage_bytes")
        .set((volt_storage::shape_log::stored_bytes() + shared.shape_db.bytes_on_disk()) as f64);
    metrics::gauge!("volt_replication_processed_lsn").set(shared.last_seen_lsn() as f64);
    metrics::gauge!("volt_replication_durable_lsn").set(shared.durability.durable_lsn() as f64);
    metrics::gauge!("volt_service_active").set(
        if shared.status.status() == crate::status::ServiceStatus::Active {
            1.0
        } else {
            0.0
        },
    );
}

/// Sample every `period`, for as long as the returned task is held.
pub fn sampler(shared: Arc<Shared>, period: Duration) -> OwnedTask {
    OwnedTask::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            sample(&shared);
        }
    })
}
