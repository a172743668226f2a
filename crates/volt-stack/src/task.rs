//! Owned background tasks.

use tokio::task::JoinHandle;

/// A task that is aborted when its owner drops it. Actor state holds these, so a task
/// ends with its actor however the actor ends (a killed actor runs no `post_stop`, but
/// its state is still dropped).
pub struct OwnedTask(JoinHandle<()>);

impl OwnedTask {
    pub fn spawn(fut: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        OwnedTask(tokio::spawn(fut))
    }

    /// Like `spawn`, but a panic in the task is reported (to its owning actor, usually)
    /// instead of vanishing with the task.
    pub fn spawn_catching(
        fut: impl std::future::Future<Output = ()> + Send + 'static,
        on_panic: impl FnOnce(String) + Send + 'static,
    ) -> Self {
        use futures::FutureExt;
        OwnedTask(tokio::spawn(async move {
            if let Err(panic) = std::panic::AssertUnwindSafe(fut).catch_unwind().await {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                on_panic(format!("task panicked: {text}"));
            }
        }))
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
