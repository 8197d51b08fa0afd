//! Deferred messages: released when due, decided again, then sent, deferred again or
//! cancelled.
//!
//! A deferred message's record (with its sealed body) and its place in the queue are written
//! in one transaction when it is deferred, so a restart loses nothing. At release the message
//! is rebuilt from its record and goes through `decide` again at the release time: an opt-out
//! received in between cancels it (Twilio's toolkit reschedules; consentry also re-checks).
//! Each due message is claimed once (`claimed_at_us`), so it is released once.
//!
//! Of the store it uses [`Messages`](crate::store::Messages) (claims, release decisions) and
//! [`Keys`](crate::store::Keys) (whether the recipient's key was erased); facts and sending go
//! through `flow::send`. Its loop also deletes expired idempotency keys
//! ([`IdempotencyKeys`](crate::store::IdempotencyKeys)).

use std::time::Duration;

use futures_util::StreamExt as _;

use jiff::Timestamp;
use serde_json::Value;

use crate::crypto::Sealed;
use crate::domain::{Body, CanonicalMessage, MessageId, PhoneNumber, Region, Scope, Sender};
use crate::flow::FlowError;
use crate::flow::send::{self, Delivery, Processed, message_associated_data};
use crate::policy::{self, Decision, SenderBounds};
use crate::state::AppState;
use crate::store::{DecisionKind, DeferredMessage, ReleaseRecord};

/// How many due messages one pass takes.
const BATCH: i64 = 200;
/// How often the worker looks for due messages: a paced queue's messages leave this close to
/// their instants.
const POLL: Duration = Duration::from_millis(100);
/// How many due messages are released at once.
const RELEASING: usize = 32;
/// How far ahead due messages are claimed; each waits for its instant.
const LOOKAHEAD: jiff::SignedDuration = jiff::SignedDuration::from_millis(200);
/// The longest a release waits for its forward's turn before it is decided. Its claim lasts
/// five minutes (the store's lease), after which another instance may claim it: a longer
/// wait (a pace of a few a minute, with many releases behind) happens after the decision is
/// recorded instead, as the release is then no longer due anywhere.
const WAIT_FIRST_AT_MOST: Duration = Duration::from_secs(60);
/// How often expired idempotency keys are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub sent: usize,
    pub cancelled: usize,
    pub deferred_again: usize,
    pub failed: usize,
}

/// Runs the worker until `stop` turns true.
pub async fn run(current: crate::state::Current, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut purged = tokio::time::Instant::now();
    loop {
        // The configuration live now: a reload reaches the next pass.
        let state = current.borrow().clone();
        if let Err(error) = release_while(&state, &stop).await {
            tracing::warn!(%error, "releasing deferred messages failed; retrying");
        }
        // Expired idempotency keys and their kept answers go, once a minute.
        if purged.elapsed() >= PURGE_EVERY {
            purged = tokio::time::Instant::now();
            let now_us = state.clock.now().as_microsecond();
            match state.idempotency_keys().purge_keys(now_us).await {
                Ok(0) => {}
                Ok(count) => tracing::debug!(count, "expired idempotency keys deleted"),
                Err(error) => tracing::warn!(%error, "expired idempotency keys not deleted"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// One pass: releases every message due now (by the application's clock).
pub async fn release_due(state: &AppState) -> Result<Released, FlowError> {
    let (_never, stop) = tokio::sync::watch::channel(false);
    release_while(state, &stop).await
}

/// Releases what is due, a claim of up to [`BATCH`] messages at a time, until `stop` turns
/// true. A paced queue keeps messages coming due without end (each one interval after the
/// last), so a pass over a backlog never runs out of them: a stopping instance checks before
/// each claim, finishes what it claimed, and leaves the rest to its restart or to another
/// instance, instead of waiting for the backlog to drain.
async fn release_while(
    state: &AppState,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Released, FlowError> {
    let go_on = || !*stop.borrow();
    let mut released = Released::default();
    loop {
        if !go_on() {
            return Ok(released);
        }
        let now = state.clock.now();
        // Claimed a little ahead, and each released at its own instant: a paced queue leaves
        // one interval apart, not in the bunches of the worker's polls.
        let claimed_at_us = (now + LOOKAHEAD).as_microsecond();
        let due = state.messages().claim_due(claimed_at_us, BATCH).await?;
        if due.is_empty() {
            return Ok(released);
        }
        let claimed: Vec<MessageId> = due.iter().map(|item| item.id.clone()).collect();
        // Released side by side: a paced queue leaves at its rate, not at the pace of one
        // release after another.
        let outcomes: Vec<Released> = futures_util::stream::iter(due)
            .map(|item| async {
                let id = item.id.clone();
                let wait = item.release_at_us - state.clock.now().as_microsecond();
                if wait > 0 {
                    tokio::time::sleep(Duration::from_micros(wait.unsigned_abs())).await;
                }
                let mut one = Released::default();
                // Stopping: what has not begun is given back below. (A release that has
                // begun finishes, or, waiting for its turn, leaves nothing recorded.)
                if !go_on() {
                    return one;
                }
                // One message that cannot be released must not hold back the others; its
                // claim lapses and a later pass takes it again.
                if let Err(error) = release(state, item, stop, &mut one).await {
                    one.failed += 1;
                    tracing::error!(message_id = %id, %error, "a deferred message could not be released");
                }
                one
            })
            .buffer_unordered(RELEASING)
            .collect()
            .await;
        for one in outcomes {
            released.sent += one.sent;
            released.cancelled += one.cancelled;
            released.deferred_again += one.deferred_again;
            released.failed += one.failed;
        }
        if !go_on() {
            // Every release of this claim has ended: what none recorded goes back to the
            // queue now, for the restart or another instance, rather than when the claim's
            // lease lapses (five minutes, in which a paced campaign would stand still).
            let given = state.messages().give_back(&claimed, claimed_at_us).await?;
            tracing::info!(given, "stopping: unreleased claims given back");
            return Ok(released);
        }
    }
}

async fn release(
    state: &AppState,
    item: DeferredMessage,
    stop: &tokio::sync::watch::Receiver<bool>,
    released: &mut Released,
) -> Result<(), FlowError> {
    let now = state.clock.now();
    let Some(tenant) = state.tenants.get(&item.tenant) else {
        let record = release_record(
            &item,
            now,
            DecisionKind::Denied,
            r#"[{"code":"unknown_tenant","detail":"the tenant is no longer configured"}]"#.into(),
            None,
        );
        state.messages().record_release(&record).await?;
        released.cancelled += 1;
        return Ok(());
    };
    // Erased since it was deferred: its body is gone, so it can never be sent.
    if item.key_id.starts_with("rk_")
        && state
            .stored_keys()
            .recipient_key_by_id(&item.key_id)
            .await?
            .is_none()
    {
        let record = release_record(
            &item,
            now,
            DecisionKind::Denied,
            r#"[{"code":"erased","detail":"the recipient's data was erased"}]"#.into(),
            None,
        );
        state.messages().record_release(&record).await?;
        released.cancelled += 1;
        return Ok(());
    }
    let message = rebuild(state, &item, tenant.default_region).await?;
    // A message that holds its paced instant is let through by the decision at once, and its
    // forward keeps the pace: released late (the scheduler fell behind), it may wait a while
    // for its turn. It waits first, while nothing is recorded, so that a stop (or a crash) in
    // the wait leaves it queued, not recorded as released and never forwarded. (Any other
    // message is decided first: the decision paces it, and its forward waits little.)
    let sender = message.from.as_str().to_owned();
    let paced_forward = message.reply.is_none() && state.pacer.holds(&item.id);
    let mut wait_after = Duration::ZERO;
    if paced_forward {
        let wait = state
            .pacer
            .wait_for_turn(&tenant.upstream, &sender, state.clock.now());
        if wait.unsigned_abs() > WAIT_FIRST_AT_MOST {
            wait_after = wait.unsigned_abs();
        } else if wait.is_positive() {
            let mut stop = stop.clone();
            tokio::select! {
                () = tokio::time::sleep(wait.unsigned_abs()) => {}
                Ok(_) = stop.wait_for(|stop| *stop) => {
                    state.pacer.give_back_turn(&tenant.upstream, &sender);
                    return Ok(());
                }
            }
        }
    }
    let now = state.clock.now();
    let recipient_hash = state.numbers.hash(&message.to);
    let decision = {
        let mut turn = state.recipient_turn(&recipient_hash).await?;
        let mut gathered =
            send::gather(state, tenant, &message, now, Some(&mut turn.shared)).await?;
        send::check_number_history(state, tenant, &message, &mut gathered, now).await?;
        let paced = send::take_slot(state, tenant, &message, &mut gathered, now);
        let bounds = SenderBounds::default();
        let facts = gathered.facts(tenant, &bounds, &state.policies, now);
        let decision = policy::decide(message, &facts);
        send::keep_slot(state, tenant, &decision, paced);
        let (kind, reasons, again) = match &decision {
            Decision::Allow(_) => (DecisionKind::Allowed, "[]".into(), None),
            Decision::Deny(denial) => (
                DecisionKind::Denied,
                serde_json::to_string(&denial.reasons).unwrap_or_default(),
                None,
            ),
            Decision::Defer(deferral) => (
                DecisionKind::Deferred,
                serde_json::to_string(&deferral.reasons).unwrap_or_default(),
                Some(deferral.until.as_microsecond()),
            ),
        };
        let record = ReleaseRecord {
            basis: decision.basis_json(),
            ..release_record(&item, now, kind, reasons, again)
        };
        state.messages().record_release(&record).await?;
        turn.end().await;
        decision
    };
    match decision {
        Decision::Allow(permit) => {
            let delivery = if paced_forward {
                // Recorded as released: the claim may lapse now without harm.
                tokio::time::sleep(wait_after).await;
                Delivery::UpstreamInTurn
            } else {
                Delivery::Upstream
            };
            match send::deliver(state, tenant, permit, delivery).await {
                Processed::Sent { .. } => released.sent += 1,
                Processed::Requeued { .. } => released.deferred_again += 1,
                _ => released.failed += 1,
            }
            tracing::info!(message_id = %item.id, tenant = %tenant.id, "deferred message released");
        }
        Decision::Deny(denial) => {
            released.cancelled += 1;
            tracing::info!(message_id = %item.id, code = denial.reasons[0].code.as_str(), "deferred message cancelled");
        }
        Decision::Defer(deferral) => {
            released.deferred_again += 1;
            tracing::info!(message_id = %item.id, until = %deferral.until, "deferred message deferred again");
        }
    }
    Ok(())
}

fn release_record(
    item: &DeferredMessage,
    now: Timestamp,
    decision: DecisionKind,
    reasons_json: String,
    release_again_at_us: Option<i64>,
) -> ReleaseRecord {
    ReleaseRecord {
        message_id: item.id.clone(),
        decided_at_us: now.as_microsecond(),
        decision,
        reasons_json,
        basis: None,
        release_again_at_us,
    }
}

/// The message as it was deferred, from its record and sealed payload.
async fn rebuild(
    state: &AppState,
    item: &DeferredMessage,
    region: Region,
) -> Result<CanonicalMessage, FlowError> {
    let unreadable = |what: &str| {
        tracing::error!(message_id = %item.id, what, "a deferred message cannot be rebuilt");
        FlowError::Unreadable(format!(
            "deferred message {} cannot be read: {what}",
            item.id
        ))
    };
    let mut message = CanonicalMessage {
        id: item.id.clone(),
        tenant: item.tenant.clone(),
        // Placeholders until the payload is open; replaced below.
        to: PhoneNumber::parse("+12025550100", Region::US)
            .map_err(|_| unreadable("placeholder"))?,
        from: Sender::ShortCode("000".into()),
        body: Body::parse("-".into()).map_err(|_| unreadable("placeholder"))?,
        purpose: item.purpose.parse().map_err(|_| unreadable("purpose"))?,
        scope: Scope {
            brand: item.brand.clone(),
            campaign: item.campaign.clone(),
        },
        reply: None,
        status_callback: None,
        send_at: None,
        media: Vec::new(),
    };
    let sealed = Sealed {
        key_id: item.key_id.clone(),
        bytes: item.payload.clone(),
    };
    let payload: Value = state
        .keys
        .open(&message_associated_data(&message), &sealed)
        .await
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| unreadable("payload"))?;
    let field = |name: &str| {
        payload[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| unreadable(name))
    };
    message.to = PhoneNumber::parse(&field("to")?, region).map_err(|_| unreadable("to"))?;
    message.from = Sender::parse(&field("from")?, region).map_err(|_| unreadable("from"))?;
    let media: Vec<String> = match payload.get("media_urls") {
        None => Vec::new(),
        Some(list) => serde_json::from_value(list.clone()).map_err(|_| unreadable("media_urls"))?,
    };
    message.media =
        crate::domain::MediaUrl::parse_all(&media).map_err(|_| unreadable("media_urls"))?;
    message.body = if message.media.is_empty() {
        Body::parse(field("body")?)
    } else {
        Body::parse_caption(field("body")?)
    }
    .map_err(|_| unreadable("body"))?;
    Ok(message)
}
