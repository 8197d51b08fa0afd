//! Single sends that arrive together are decided together. Each request's message waits in its
//! tenant's queue; a few runners per tenant ([`RUNNERS`]) each take whatever is queued (up to
//! [`GROUP`] messages) and decide it as one group (`flow::send::process`'s runner): the
//! recipients' turns taken at once, their facts read in one read and their records written in
//! one write, as a batch's group is. Nothing waits on purpose: a message that finds a runner
//! free is taken at once, alone; only while every runner is busy do messages gather, and the
//! next group takes them all. On PostgreSQL this turns a transaction per send (its locks, its
//! facts, its record, its commit) into one per group; on SQLite one read and one writer's item
//! per group.
//!
//! This file is only the queue (no IO): who waits, who runs, and the hand-over when a runner
//! finds nothing left.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::FlowError;
use crate::domain::{CanonicalMessage, TenantId};
use crate::policy::{Decision, SenderBounds};

/// Runners of one tenant at once. More than one, so that a group is gathered and decided while
/// the one before it is being written; few, so that groups form under load.
pub const RUNNERS: usize = 4;

/// The most messages one group takes (a batch's group is as large).
pub const GROUP: usize = 256;

/// A message waiting for its decision, and where the decision goes.
pub struct Waiting {
    pub message: CanonicalMessage,
    /// The bounds of the token that sent it.
    pub bounds: SenderBounds,
    pub answer: oneshot::Sender<Result<Decision, FlowError>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    runners: usize,
}

/// The tenants' queues of single sends waiting to be decided.
#[derive(Default)]
pub struct Combiner {
    queues: Mutex<HashMap<TenantId, Queue>>,
}

impl std::fmt::Debug for Combiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Combiner").finish_non_exhaustive()
    }
}

impl Combiner {
    /// Queues a message for its tenant. True if the caller must start a runner for the tenant
    /// (one was free); the runner then takes the queue with [`Combiner::next_group`].
    pub fn queue(&self, tenant: &TenantId, waiting: Waiting) -> bool {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let queue = queues.entry(tenant.clone()).or_default();
        queue.waiting.push_back(waiting);
        if queue.runners < RUNNERS {
            queue.runners += 1;
            true
        } else {
            false
        }
    }

    /// The next group for a runner of the tenant: the oldest waiting messages, up to [`GROUP`],
    /// leaving out those whose sender stopped waiting (nothing of theirs is decided or
    /// recorded). Empty when nothing waits, and the runner is then counted out in the same
    /// step, so that a message queued after it finds a runner free.
    pub fn next_group(&self, tenant: &TenantId) -> Vec<Waiting> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let Some(queue) = queues.get_mut(tenant) else {
            return Vec::new();
        };
        let mut group = Vec::new();
        while group.len() < GROUP {
            let Some(waiting) = queue.waiting.pop_front() else {
                break;
            };
            if !waiting.answer.is_closed() {
                group.push(waiting);
            }
        }
        if group.is_empty() {
            queue.runners -= 1;
            if queue.runners == 0 {
                queues.remove(tenant);
            }
        }
        group
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Body, MessageId, PhoneNumber, Purpose, Region, Scope, Sender};

    fn waiting(tenant: &TenantId) -> (Waiting, oneshot::Receiver<Result<Decision, FlowError>>) {
        let (answer, receiver) = oneshot::channel();
        let message = CanonicalMessage {
            id: MessageId::new(),
            tenant: tenant.clone(),
            to: PhoneNumber::parse("+12025550123", Region::US).expect("number"),
            from: Sender::parse("+12025550100", Region::US).expect("sender"),
            body: Body::parse("hello".into()).expect("body"),
            purpose: Purpose::Transactional,
            scope: Scope::tenant_wide(),
            reply: None,
            status_callback: None,
            send_at: None,
            media: Vec::new(),
        };
        let bounds = SenderBounds::default();
        (
            Waiting {
                message,
                bounds,
                answer,
            },
            receiver,
        )
    }

    #[test]
    fn messages_gather_only_while_every_runner_is_busy() {
        let combiner = Combiner::default();
        let tenant = TenantId::parse("acme").expect("tenant");
        let mut receivers = Vec::new();
        for _ in 0..RUNNERS {
            let (item, receiver) = waiting(&tenant);
            receivers.push(receiver);
            assert!(
                combiner.queue(&tenant, item),
                "a free runner starts at once"
            );
            assert_eq!(
                combiner.next_group(&tenant).len(),
                1,
                "a lone message is taken alone"
            );
        }
        for _ in 0..3 {
            let (item, receiver) = waiting(&tenant);
            receivers.push(receiver);
            assert!(
                !combiner.queue(&tenant, item),
                "every runner is busy: it waits"
            );
        }
        assert_eq!(
            combiner.next_group(&tenant).len(),
            3,
            "the next group takes all that waited"
        );
        for _ in 0..RUNNERS {
            assert!(combiner.next_group(&tenant).is_empty());
        }
        let (item, _receiver) = waiting(&tenant);
        assert!(
            combiner.queue(&tenant, item),
            "the runners were counted out"
        );
    }

    #[test]
    fn a_message_whose_sender_left_is_not_taken_and_groups_are_bounded() {
        let combiner = Combiner::default();
        let tenant = TenantId::parse("acme").expect("tenant");
        let mut kept = Vec::new();
        for _ in 0..RUNNERS {
            let (item, receiver) = waiting(&tenant);
            kept.push(receiver);
            assert!(combiner.queue(&tenant, item));
        }
        let (left, receiver) = waiting(&tenant);
        combiner.queue(&tenant, left);
        drop(receiver);
        for _ in 0..GROUP + 1 {
            let (item, receiver) = waiting(&tenant);
            kept.push(receiver);
            combiner.queue(&tenant, item);
        }
        let all = RUNNERS + GROUP + 1;
        let mut taken = 0;
        loop {
            let group = combiner.next_group(&tenant);
            assert!(group.len() <= GROUP);
            if group.is_empty() {
                break;
            }
            taken += group.len();
        }
        assert_eq!(taken, all, "every message but the one whose sender left");
    }
}
