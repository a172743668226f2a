//! The shape of the supervision tree (see supervision.md, which maps it).

use std::sync::Arc;
use std::time::Duration;

use crate::actors::connection::ConnectionManager;
use crate::actors::consumer_supervisor::ConsumerSupervisor;
use crate::actors::publication_manager::PublicationManager;
use crate::actors::shape_cache::ShapeCache;
use crate::actors::shape_db_writer::ShapeDbWriter;
use crate::actors::shape_log_collector::ShapeLogCollector;
use crate::actors::status_monitor::StatusMonitor;
use crate::actors::supervisor::{
    ChildSpec, Strategy, Supervisor, SupervisorSpec, actor_child, exponential_backoff, no_backoff,
};
use crate::shared::Shared;

fn escalating(mut c: ChildSpec) -> ChildSpec {
    c.escalate = true;
    c
}

pub fn stack_supervisor(_: &Arc<Shared>) -> SupervisorSpec {
    SupervisorSpec {
        kind: "StackSupervisor",
        name: "StackSupervisor".into(),
        strategy: Strategy::Escalate,
        children: vec![Supervisor::child(
            monitored_core_supervisor,
            "MonitoredCoreSupervisor",
            "MonitoredCoreSupervisor",
        )],
        max_restarts: 0,
        window: Duration::from_secs(1),
        backoff: no_backoff,
    }
}

/// StatusMonitor first, rest-for-one: a new monitor starts empty, so everything that
/// reports to it restarts and reports again.
pub fn monitored_core_supervisor(_: &Arc<Shared>) -> SupervisorSpec {
    SupervisorSpec {
        kind: "MonitoredCoreSupervisor",
        name: "MonitoredCoreSupervisor".into(),
        strategy: Strategy::RestForOne,
        children: vec![
            actor_child("StatusMonitor", "StatusMonitor", || StatusMonitor),
            Supervisor::child(core_supervisor, "CoreSupervisor", "CoreSupervisor"),
        ],
        max_restarts: 3,
        window: Duration::from_secs(60),
        backoff: no_backoff,
    }
}

/// The two subsystems start side by side and fail independently.
pub fn core_supervisor(_: &Arc<Shared>) -> SupervisorSpec {
    SupervisorSpec {
        kind: "CoreSupervisor",
        name: "CoreSupervisor".into(),
        strategy: Strategy::OneForOne,
        children: vec![
            Supervisor::child(
                shape_subsystem_supervisor,
                "ShapeSubsystemSupervisor",
                "ShapeSubsystemSupervisor",
            ),
            Supervisor::child(
                connection_subsystem_supervisor,
                "ConnectionSubsystemSupervisor",
                "ConnectionSubsystemSupervisor",
            ),
        ],
        max_restarts: 5,
        window: Duration::from_secs(60),
        backoff: no_backoff,
    }
}

/// ShapeDbWriter, ConsumerSupervisor and ShapeLogCollector hold state that only makes
/// sense together (registry writes, consumers, the routes pointing at them): any of them
/// exiting restarts the whole shape subsystem, which restores its shapes from storage.
/// ShapeCache holds no state of its own and restarts alone.
pub fn shape_subsystem_supervisor(_: &Arc<Shared>) -> SupervisorSpec {
    SupervisorSpec {
        kind: "ShapeSubsystemSupervisor",
        name: "ShapeSubsystemSupervisor".into(),
        strategy: Strategy::OneForOne,
        children: vec![
            escalating(actor_child("ShapeDbWriter", "ShapeDbWriter", || {
                ShapeDbWriter
            })),
            escalating(actor_child(
                "ConsumerSupervisor",
                "ConsumerSupervisor",
                || ConsumerSupervisor,
            )),
            // Restores the shapes from storage on start, under the ConsumerSupervisor.
            escalating(actor_child(
                "ShapeLogCollector",
                "ShapeLogCollector",
                || ShapeLogCollector,
            )),
            actor_child("ShapeCache", "ShapeCache", || ShapeCache),
            actor_child("PublicationManager", "PublicationManager", || {
                PublicationManager
            }),
        ],
        max_restarts: 10,
        window: Duration::from_secs(60),
        backoff: no_backoff,
    }
}

/// Connection errors restart only this subsystem, with backoff, for as long as
/// Postgres stays away: losing the database must never stop the service.
pub fn connection_subsystem_supervisor(_: &Arc<Shared>) -> SupervisorSpec {
    SupervisorSpec {
        kind: "ConnectionSubsystemSupervisor",
        name: "ConnectionSubsystemSupervisor".into(),
        strategy: Strategy::OneForOne,
        children: vec![actor_child(
            "ConnectionManager",
            "ConnectionManager",
            || ConnectionManager,
        )],
        max_restarts: usize::MAX,
        window: Duration::from_secs(60),
        backoff: exponential_backoff,
    }
}
