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
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
