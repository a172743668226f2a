//! Readiness of the stack. The StatusMonitor actor is the only writer; request
//! handlers read the board directly, without a message.

use tokio::sync::watch;

/// Conditions that together make the stack `active`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Condition {
    /// The admin connection is up, the publication and slot exist.
    AdminConnectionReady = 1,
    /// The ShapeLogCollector is ready to receive transactions.
    ShapeLogCollectorReady = 2,
    /// The ShapeCache can create shapes.
    ShapeCacheReady = 4,
    /// The replication stream is flowing.
    ReplicationReady = 8,
    /// Not a readiness condition: another instance holds the replication slot's advisory
    /// lock and the connection subsystem waits for it (health `waiting`).
    WaitingOnLock = 16,
    /// Not a readiness condition: this instance's connection holds the replication slot's
    /// advisory lock, so it may write the shapes' storage.
    SlotLocked = 32,
}

const ALL: u8 = 1 | 2 | 4 | 8;

impl Condition {
    /// Conditions held by an actor kind or by actors below it in the tree: when an actor
    /// of that kind exits, these are no longer true.
    pub fn held_by(kind: &str) -> &'static [Condition] {
        use Condition::*;
        match kind {
            "ShapeLogCollector" => &[ShapeLogCollectorReady],
            "ShapeCache" => &[ShapeCacheReady],
            "ShapeSubsystemSupervisor" => &[ShapeLogCollectorReady, ShapeCacheReady],
            "ReplicationClient" => &[ReplicationReady],
            "ConnectionManager" | "ConnectionSubsystemSupervisor" => &[
                AdminConnectionReady,
                ReplicationReady,
                WaitingOnLock,
                SlotLocked,
            ],
            "CoreSupervisor" | "MonitoredCoreSupervisor" | "StatusMonitor" => &[
                AdminConnectionReady,
                ShapeLogCollectorReady,
                ShapeCacheReady,
                ReplicationReady,
                WaitingOnLock,
                SlotLocked,
            ],
            _ => &[],
        }
    }
}

/// What `/v1/health` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceStatus {
    Starting,
    /// Another instance holds the replication slot's lock.
    Waiting,
    Active,
}

impl ServiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceStatus::Starting => "starting",
            ServiceStatus::Waiting => "waiting",
            ServiceStatus::Active => "active",
        }
    }
}

/// The shared readiness board: a bit set of conditions behind a `watch`, so readers
/// can both read it and wait for a change.
pub struct StatusBoard {
    bits: watch::Sender<u8>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard {
            bits: watch::Sender::new(0),
        }
    }
}

impl StatusBoard {
    pub(crate) fn set(&self, cond: Condition, on: bool) {
        self.bits.send_if_modified(|b| {
            let new = if on {
                *b | cond as u8
            } else {
                *b & !(cond as u8)
            };
            let changed = new != *b;
            *b = new;
            changed
        });
    }

    pub(crate) fn reset(&self) {
        self.bits.send_replace(0);
    }

    pub fn is_set(&self, cond: Condition) -> bool {
        *self.bits.borrow() & cond as u8 != 0
    }

    pub fn status(&self) -> ServiceStatus {
        let bits = *self.bits.borrow();
        if bits & ALL == ALL {
            ServiceStatus::Active
        } else if bits & Condition::WaitingOnLock as u8 != 0 {
            ServiceStatus::Waiting
        } else {
            ServiceStatus::Starting
        }
    }

    /// Wait until `cond` holds or `timeout` passes; true if it holds.
    pub async fn wait_for(&self, cond: Condition, timeout: std::time::Duration) -> bool {
        let mut rx = self.bits.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|b| b & cond as u8 != 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Wait until `cond` no longer holds or `timeout` passes; true if it is clear.
    pub async fn wait_clear(&self, cond: Condition, timeout: std::time::Duration) -> bool {
        let mut rx = self.bits.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|b| b & cond as u8 == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Wait until the stack is active or `timeout` passes; true if active.
    pub async fn wait_active(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.bits.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|b| b & ALL == ALL))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_is_active_only_when_every_condition_holds() {
        let board = StatusBoard::default();
        board.set(Condition::AdminConnectionReady, true);
        board.set(Condition::ShapeLogCollectorReady, true);
        board.set(Condition::ShapeCacheReady, true);
        assert_eq!(board.status(), ServiceStatus::Starting);
        board.set(Condition::ReplicationReady, true);
        assert_eq!(board.status(), ServiceStatus::Active);
        for c in Condition::held_by("ConnectionManager") {
            board.set(*c, false);
        }
        assert_eq!(board.status(), ServiceStatus::Starting);
        assert!(board.is_set(Condition::ShapeCacheReady));
        board.set(Condition::WaitingOnLock, true);
        assert_eq!(board.status(), ServiceStatus::Waiting);
    }
}
