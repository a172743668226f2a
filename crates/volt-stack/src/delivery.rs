//! One transaction fragment on its way to the Consumers it concerns. The collector sends
//! each Consumer its part with a `Ticket` and waits once, with one deadline, for all of
//! them: a `call` per Consumer cost a reply channel and a timer each, a tenth of volt's
//! CPU when every transaction touches a hundred shapes.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// How one recipient answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    /// It could not store its part.
    Failed(String),
    /// It went away without answering (the Consumer died, its mailbox dropped).
    Dropped,
    /// It had not answered by the deadline.
    Stalled,
}

/// Called once the last recipient answered.
type OnSettled = Box<dyn FnOnce() + Send>;

pub struct Delivery {
    remaining: AtomicUsize,
    outcomes: Mutex<Vec<Option<Outcome>>>,
    all_answered: Notify,
    on_settled: Mutex<Option<OnSettled>>,
}

impl Delivery {
    /// A delivery to `n` recipients, and their tickets in recipient order. `on_settled`
    /// is called (from the last recipient's task) once every recipient answered; never
    /// for a delivery to nobody, which is settled from the start.
    pub fn new(
        n: usize,
        on_settled: impl FnOnce() + Send + 'static,
    ) -> (Arc<Delivery>, Vec<Ticket>) {
        let on_settled: OnSettled = Box::new(on_settled);
        let delivery = Arc::new(Delivery {
            remaining: AtomicUsize::new(n),
            outcomes: Mutex::new(vec![None; n]),
            all_answered: Notify::new(),
            on_settled: Mutex::new(Some(on_settled)),
        });
        let tickets = (0..n)
            .map(|index| Ticket {
                delivery: delivery.clone(),
                index,
                answered: false,
            })
            .collect();
        (delivery, tickets)
    }

    /// Wait until every recipient answered, until `deadline` at most; then each one's
    /// outcome, in recipient order (`Stalled` for those that had not answered).
    pub async fn outcomes_by(&self, deadline: tokio::time::Instant) -> Vec<Outcome> {
        let _ = tokio::time::timeout_at(deadline, async {
            while !self.is_settled() {
                // The last ticket's `notify_one` leaves a permit if nobody waits yet.
                self.all_answered.notified().await;
            }
        })
        .await;
        self.outcomes_now()
    }

    /// Whether every recipient answered.
    pub fn is_settled(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }

    /// Each recipient's outcome so far (`Stalled` for those that have not answered).
    pub fn outcomes_now(&self) -> Vec<Outcome> {
        self.outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|o| o.clone().unwrap_or(Outcome::Stalled))
            .collect()
    }

    fn answer(&self, index: usize, outcome: Outcome) {
        self.outcomes.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(outcome);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_answered.notify_one();
            let on_settled = self
                .on_settled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(f) = on_settled {
                f();
            }
        }
    }
}

/// A recipient's way to answer, once. Dropped unanswered (with the message that carried
/// it, when its actor dies), it answers `Dropped`.
pub struct Ticket {
    delivery: Arc<Delivery>,
    index: usize,
    answered: bool,
}

impl Ticket {
    pub fn answer(mut self, res: &Result<(), String>) {
        self.answered = true;
        let outcome = match res {
            Ok(()) => Outcome::Stored,
            Err(e) => Outcome::Failed(e.clone()),
        };
        self.delivery.answer(self.index, outcome);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.answered {
            self.delivery.answer(self.index, Outcome::Dropped);
        }
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("index", &self.index)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test]
    async fn every_recipient_is_heard_stored_failed_dropped_or_stalled() {
        let (delivery, mut tickets) = Delivery::new(4, || {});
        let stalled = tickets.pop().unwrap();
        let dropped = tickets.pop().unwrap();
        let failed = tickets.pop().unwrap();
        let stored = tickets.pop().unwrap();
        let answering = tokio::spawn(async move {
            stored.answer(&Ok(()));
            failed.answer(&Err("no space".into()));
            drop(dropped);
        });
        let outcomes = delivery
            .outcomes_by(Instant::now() + Duration::from_millis(200))
            .await;
        answering.await.unwrap();
        assert_eq!(
            outcomes,
            [
                Outcome::Stored,
                Outcome::Failed("no space".into()),
                Outcome::Dropped,
                Outcome::Stalled
            ]
        );
        drop(stalled);
    }

    #[tokio::test]
    async fn the_wait_ends_with_the_last_answer_even_one_given_before_it_began() {
        let (delivery, tickets) = Delivery::new(2, || {});
        for t in tickets {
            t.answer(&Ok(()));
        }
        // Already all answered: no wait at all, however long the deadline.
        let outcomes = delivery
            .outcomes_by(Instant::now() + Duration::from_secs(3600))
            .await;
        assert_eq!(outcomes, [Outcome::Stored, Outcome::Stored]);

        let (delivery, tickets) = Delivery::new(3, || {});
        let answering = tokio::spawn(async move {
            for t in tickets {
                tokio::task::yield_now().await;
                t.answer(&Ok(()));
            }
        });
        let outcomes = delivery
            .outcomes_by(Instant::now() + Duration::from_secs(3600))
            .await;
        answering.await.unwrap();
        assert_eq!(outcomes, vec![Outcome::Stored; 3]);
    }

    #[tokio::test]
    async fn the_last_answer_calls_back_once() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (delivery, tickets) = Delivery::new(2, move || {
            let _ = tx.send(());
        });
        let mut tickets = tickets.into_iter();
        tickets.next().unwrap().answer(&Ok(()));
        assert!(!delivery.is_settled());
        assert!(rx.try_recv().is_err());
        drop(tickets);
        assert!(delivery.is_settled());
        assert_eq!(delivery.outcomes_now(), [Outcome::Stored, Outcome::Dropped]);
        assert!(rx.try_recv().is_ok());
        assert!(rx.recv().await.is_none(), "called once, then dropped");
    }

    #[tokio::test]
    async fn a_delivery_to_nobody_is_done_at_once() {
        let (delivery, tickets) = Delivery::new(0, || {});
        assert!(tickets.is_empty());
        assert!(
            delivery
                .outcomes_by(Instant::now() + Duration::from_secs(3600))
                .await
                .is_empty()
        );
    }
}
