//! Ctrl-C and SIGTERM, counted from the moment the process starts. Until a handler is
//! installed a signal kills the process outright, and `volt dev` has a Postgres to stop
//! first: a Ctrl-C during its start-up left that server running. So the handlers are
//! installed before anything else, and each stage of the start-up asks whether a
//! signal came.

use tokio::sync::watch;
use volt_stack::task::OwnedTask;

pub struct Signals {
    received: watch::Receiver<u32>,
    _counter: OwnedTask,
}

impl Signals {
    /// Install the handlers (within the runtime). From here on a signal is counted, not
    /// fatal.
    pub fn install() -> std::io::Result<Signals> {
        let (tx, received) = watch::channel(0u32);
        #[cfg(unix)]
        let counter = {
            use tokio::signal::unix::{SignalKind, signal};
            let mut interrupt = signal(SignalKind::interrupt())?;
            let mut terminate = signal(SignalKind::terminate())?;
            OwnedTask::spawn(async move {
                loop {
                    tokio::select! {
                        Some(()) = interrupt.recv() => {},
                        Some(()) = terminate.recv() => {},
                        else => return,
                    }
                    tx.send_modify(|n| *n += 1);
                }
            })
        };
        #[cfg(not(unix))]
        let counter = OwnedTask::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                tx.send_modify(|n| *n += 1);
            }
        });
        Ok(Signals {
            received,
            _counter: counter,
        })
    }

    /// Whether a signal came.
    pub fn any(&self) -> bool {
        *self.received.borrow() > 0
    }

    /// Completes once `n` signals in all have come (at once if they already have).
    pub fn received(&self, n: u32) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.received.clone();
        async move {
            if rx.wait_for(|count| *count >= n).await.is_err() {
                // The counter is gone (no more signals can be seen): never.
                std::future::pending::<()>().await;
            }
        }
    }
}
