//! Mailbox depth for the actors on the hot paths. ractor does not expose how many
//! messages wait in an actor's queue, so senders count what they send (through
//! [`Mailbox`]) and the actor counts what it takes out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorId, ActorRef, MessagingErr, RpcReplyPort};

use crate::shared::OwnedBy;

#[derive(Debug)]
pub struct MailboxDepth {
    sent: AtomicU64,
    received: AtomicU64,
    /// `volt_mailbox_depth{actor=...}`.
    gauge: metrics::Gauge,
}

impl Default for MailboxDepth {
    fn default() -> Self {
        MailboxDepth::new("unnamed")
    }
}

impl MailboxDepth {
    pub fn new(actor: &'static str) -> MailboxDepth {
        MailboxDepth {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            gauge: metrics::gauge!("volt_mailbox_depth", "actor" => actor),
        }
    }

    pub fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.gauge.set(self.depth() as f64);
    }

    /// A send that failed (the actor is gone): it never reached the queue.
    fn unsent(&self) {
        self.sent.fetch_sub(1, Ordering::Relaxed);
        self.gauge.set(self.depth() as f64);
    }

    /// Called by the actor as it starts handling a message.
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.gauge.set(self.depth() as f64);
    }

    /// Messages sent so far (including those already handled).
    pub fn total_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Messages sent and not yet taken out by the actor.
    pub fn depth(&self) -> u64 {
        // Read `received` first: a message counted as received was sent before it.
        let received = self.received.load(Ordering::Relaxed);
        self.sent.load(Ordering::Relaxed).saturating_sub(received)
    }
}

/// An actor reference whose sends are counted in the actor's [`MailboxDepth`].
pub struct Mailbox<M: ractor::Message> {
    actor: ActorRef<M>,
    depth: Arc<MailboxDepth>,
}

impl<M: ractor::Message> Mailbox<M> {
    pub fn new(actor: ActorRef<M>, depth: Arc<MailboxDepth>) -> Mailbox<M> {
        Mailbox { actor, depth }
    }

    pub fn actor(&self) -> &ActorRef<M> {
        &self.actor
    }

    pub fn depth(&self) -> &MailboxDepth {
        &self.depth
    }

    pub fn cast(&self, msg: M) -> Result<(), MessagingErr<M>> {
        self.depth.sent();
        let res = self.actor.cast(msg);
        if res.is_err() {
            self.depth.unsent();
        }
        res
    }

    pub async fn call<T: Send + 'static>(
        &self,
        msg: impl FnOnce(RpcReplyPort<T>) -> M,
        timeout: Option<Duration>,
    ) -> Result<CallResult<T>, MessagingErr<M>> {
        self.depth.sent();
        self.counted_call(msg, timeout).await
    }

    /// The call itself, its send already counted.
    async fn counted_call<T: Send + 'static>(
        &self,
        msg: impl FnOnce(RpcReplyPort<T>) -> M,
        timeout: Option<Duration>,
    ) -> Result<CallResult<T>, MessagingErr<M>> {
        let res = self.actor.call(msg, timeout).await;
        // A call whose message never got into the queue failed with a send error; one
        // that timed out or lost its reply port was queued, and is received in time.
        if matches!(res, Err(MessagingErr::SendErr(_))) {
            self.depth.unsent();
        }
        res
    }

    /// `call`, unless `max_depth` messages already wait: then `Ok(None)` (shed). The
    /// send is counted before the check, so racing callers never exceed the bound.
    pub async fn call_bounded<T: Send + 'static>(
        &self,
        max_depth: u64,
        msg: impl FnOnce(RpcReplyPort<T>) -> M,
        timeout: Option<Duration>,
    ) -> Result<Option<CallResult<T>>, MessagingErr<M>> {
        let received = self.depth.received.load(Ordering::Relaxed);
        let sent = self.depth.sent.fetch_add(1, Ordering::Relaxed) + 1;
        if sent.saturating_sub(received) > max_depth {
            self.depth.unsent();
            return Ok(None);
        }
        self.depth.gauge.set(self.depth.depth() as f64);
        self.counted_call(msg, timeout).await.map(Some)
    }
}

impl<M: ractor::Message> Clone for Mailbox<M> {
    fn clone(&self) -> Self {
        Mailbox {
            actor: self.actor.clone(),
            depth: self.depth.clone(),
        }
    }
}

impl<M: ractor::Message> OwnedBy for Mailbox<M> {
    fn owner(&self) -> ActorId {
        self.actor.get_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_sent_minus_received_and_never_negative() {
        let d = MailboxDepth::default();
        d.sent();
        d.sent();
        assert_eq!(d.depth(), 2);
        d.received();
        assert_eq!(d.depth(), 1);
        d.received();
        d.received();
        assert_eq!(d.depth(), 0);
    }
}
