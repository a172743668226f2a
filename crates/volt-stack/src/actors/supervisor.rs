//! A small supervisor: ractor has no restart strategies (its default reaction to a
//! child's exit is to stop the parent), so the tree's restart rules are written here.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};

use crate::shared::Shared;
use crate::status::Condition;

pub type StartFn = Arc<
    dyn Fn(Arc<Shared>, ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync,
>;

#[derive(Clone)]
pub struct ChildSpec {
    /// Display name, stable across restarts (restart counts are kept by it).
    pub name: String,
    pub kind: &'static str,
    /// This child's exit fails the supervisor whatever its strategy: its state cannot
    /// be rebuilt without restarting its siblings too.
    pub escalate: bool,
    /// Spawns the child linked to the given supervisor cell.
    pub start: StartFn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Restart only the child that exited.
    OneForOne,
    /// Restart the child that exited and every child started after it.
    RestForOne,
    /// Any child exit fails this supervisor, so its own parent decides.
    Escalate,
}

#[derive(Clone)]
pub struct SupervisorSpec {
    pub kind: &'static str,
    pub name: String,
    pub strategy: Strategy,
    pub children: Vec<ChildSpec>,
    /// More restarts than this within `window` fails the supervisor (meltdown).
    pub max_restarts: usize,
    pub window: Duration,
    /// Delay before the n-th consecutive restart of a child.
    pub backoff: fn(u32) -> Duration,
}

pub fn no_backoff(_: u32) -> Duration {
    Duration::ZERO
}

/// 100 ms doubling up to 10 s, as for reconnecting to Postgres.
pub fn exponential_backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(7))).min(Duration::from_secs(10))
}

pub struct Supervisor;

pub enum SupervisorMsg {
    /// Start the children from this index on that are not running.
    Restart(usize),
}

pub struct SupervisorState {
    shared: Arc<Shared>,
    spec: SupervisorSpec,
    cells: Vec<Option<ActorCell>>,
    attempts: Vec<u32>,
    history: VecDeque<Instant>,
}

/// A child spec for a plain actor whose arguments are the shared state.
pub fn actor_child<A>(name: &str, kind: &'static str, make: fn() -> A) -> ChildSpec
where
    A: Actor<Arguments = Arc<Shared>>,
{
    ChildSpec {
        name: name.to_string(),
        kind,
        escalate: false,
        start: Arc::new(move |shared, parent| {
            Box::pin(async move {
                let (r, _) = Actor::spawn_linked(None, make(), shared, parent).await?;
                Ok(r.get_cell())
            })
        }),
    }
}

impl Supervisor {
    /// A child spec that starts a supervisor built from `spec`.
    pub fn child(
        spec_fn: fn(&Arc<Shared>) -> SupervisorSpec,
        name: &str,
        kind: &'static str,
    ) -> ChildSpec {
        ChildSpec {
            name: name.to_string(),
            kind,
            escalate: false,
            start: Arc::new(move |shared, parent| {
                Box::pin(async move {
                    let spec = spec_fn(&shared);
                    let (r, _) =
                        Actor::spawn_linked(None, Supervisor, (shared, spec), parent).await?;
                    Ok(r.get_cell())
                })
            }),
        }
    }
}

impl SupervisorState {
    async fn start_from(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        from: usize,
    ) -> Result<(), (usize, SpawnErr)> {
        for i in from..self.spec.children.len() {
            if self.cells[i].is_some() {
                continue;
            }
            let child = self.spec.children[i].clone();
            let cell = (child.start)(self.shared.clone(), myself.get_cell())
                .await
                .map_err(|e| (i, e))?;
            self.shared
                .actors
                .register(cell.get_id(), child.kind, child.name.clone());
            self.cells[i] = Some(cell);
        }
        Ok(())
    }

    fn forget(&mut self, i: usize) -> Option<ActorCell> {
        let cell = self.cells[i].take()?;
        self.shared.actors.unregister(cell.get_id());
        for cond in Condition::held_by(self.spec.children[i].kind) {
            self.shared.report(*cond, false);
        }
        Some(cell)
    }

    fn schedule_restart(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        i: usize,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        self.history.push_back(now);
        while self
            .history
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.spec.window)
        {
            self.history.pop_front();
        }
        // A child that stayed up for a whole window starts its backoff over.
        if self.history.len() == 1 {
            self.attempts[i] = 0;
        }
        if self.history.len() > self.spec.max_restarts {
            return Err(format!(
                "{}: more than {} restarts within {:?}; giving up",
                self.spec.name, self.spec.max_restarts, self.spec.window
            )
            .into());
        }
        let delay = (self.spec.backoff)(self.attempts[i]);
        self.attempts[i] += 1;
        self.shared
            .actors
            .count_restart(&self.spec.children[i].name);
        metrics::counter!("volt_actor_restarts_total", "kind" => self.spec.children[i].kind)
            .increment(1);
        tracing::info!(
            supervisor = %self.spec.name,
            child = %self.spec.children[i].name,
            ?delay,
            "restarting child"
        );
        if delay.is_zero() {
            myself
                .cast(SupervisorMsg::Restart(i))
                .map_err(|e| format!("cannot message myself: {e}"))?;
        } else {
            myself.send_after(delay, move || SupervisorMsg::Restart(i));
        }
        Ok(())
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = (Arc<Shared>, SupervisorSpec);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (shared, spec): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let n = spec.children.len();
        let mut state = SupervisorState {
            shared,
            spec,
            cells: vec![None; n],
            attempts: vec![0; n],
            history: VecDeque::new(),
        };
        if let Err((i, e)) = state.start_from(&myself, 0).await {
            // Stop what did start so nothing outlives a failed start.
            for cell in state.cells.iter().flatten() {
                cell.kill();
            }
            return Err(format!(
                "{}: child {} failed to start: {e}",
                state.spec.name, state.spec.children[i].name
            )
            .into());
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Restart(from) => {
                if let Err((i, e)) = state.start_from(&myself, from).await {
                    tracing::warn!(
                        supervisor = %state.spec.name,
                        child = %state.spec.children[i].name,
                        error = %e,
                        "child failed to start"
                    );
                    state.schedule_restart(&myself, i)?;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!("stopped: {}", reason.unwrap_or_else(|| "normal".into())),
            ),
            _ => return Ok(()),
        };
        let Some(i) = state
            .cells
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
        else {
            return Ok(());
        };
        let name = state.spec.children[i].name.clone();
        tracing::warn!(supervisor = %state.spec.name, child = %name, %reason, "child exited");
        state.forget(i);
        if state.spec.children[i].escalate {
            return Err(format!("{name} {reason}").into());
        }
        match state.spec.strategy {
            Strategy::Escalate => Err(format!("{name} {reason}").into()),
            Strategy::OneForOne => state.schedule_restart(&myself, i),
            Strategy::RestForOne => {
                for j in (i + 1..state.cells.len()).rev() {
                    if let Some(cell) = state.forget(j) {
                        cell.kill();
                    }
                }
                state.schedule_restart(&myself, i)
            }
        }
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for i in 0..state.cells.len() {
            state.forget(i);
        }
        state.shared.actors.unregister(myself.get_id());
        Ok(())
    }
}
