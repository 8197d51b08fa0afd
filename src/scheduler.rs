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

use crate::config::Tenant;
use crate::crypto::Sealed;
use crate::domain::{
    Body, CanonicalMessage, MessageId, PhoneNumber, Region, Scope, Sender, TenantId,
};
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
/// How many groups of due messages are released at once.
const RELEASING: usize = 4;
/// The most messages one group takes: they take their turns together, their facts are read
/// in one read and their release decisions written in one write (one commit).
const GROUP: usize = 64;
/// How far apart the instants of one group's messages may be: a paced queue's group waits
/// for its first instant, and each message's forward then waits for its own.
const GROUP_SPAN_US: i64 = 50_000;
/// Forwards of one group in flight at once.
const FORWARDS: usize = 16;
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
/// each claim, finishes what it has begun, and leaves the rest to its restart or to another
/// instance, instead of waiting for the backlog to drain.
///
/// The claims follow each other without a gap: the next one is made as soon as the last
/// group of the one before has begun, while up to [`RELEASING`] groups are still under way
/// (a claim made only once every release of the one before had ended left the queue idle for
/// the slowest release's time and the claim's own).
async fn release_while(
    state: &AppState,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Released, FlowError> {
    // The claims whose groups may not all have begun (their messages and their instant),
    // given back at a stop: a claim is made once the one before has sent its last group on,
    // and at most `RELEASING` groups are under way, so only the last `RELEASING + 1` claims
    // can hold messages not yet released. And the error that ended the claims, once the
    // groups under way have ended.
    let claims: std::sync::Mutex<Vec<(Vec<MessageId>, i64)>> = Default::default();
    let failed: std::sync::Mutex<Option<FlowError>> = Default::default();
    let claimed = futures_util::stream::unfold((), |()| async {
        if !going_on(stop) {
            return None;
        }
        // Claimed a little ahead, and each released at its own instant: a paced queue leaves
        // one interval apart, not in the bunches of the worker's polls.
        let claimed_at_us = (state.clock.now() + LOOKAHEAD).as_microsecond();
        match state.messages().claim_due(claimed_at_us, BATCH).await {
            Ok(due) if due.is_empty() => None,
            Ok(due) => {
                let ids = due.iter().map(|item| item.id.clone()).collect();
                let mut claims = lock(&claims);
                if claims.len() > RELEASING {
                    claims.remove(0);
                }
                claims.push((ids, claimed_at_us));
                Some((futures_util::stream::iter(groups(due)), ()))
            }
            Err(error) => {
                *lock(&failed) = Some(error.into());
                None
            }
        }
    })
    .flatten()
    .boxed();
    // Released side by side: a paced queue leaves at its rate, not at the pace of one
    // group after another.
    let released = claimed
        .map(|group| release_group(state, group, stop))
        .buffer_unordered(RELEASING)
        .fold(Released::default(), |mut all, one| async move {
            all.sent += one.sent;
            all.cancelled += one.cancelled;
            all.deferred_again += one.deferred_again;
            all.failed += one.failed;
            all
        })
        .await;
    if !going_on(stop) {
        // Every release begun has ended: what none recorded goes back to the queue now, for
        // the restart or another instance, rather than when the claim's lease lapses (five
        // minutes, in which a paced campaign would stand still).
        let claims = std::mem::take(&mut *lock(&claims));
        let mut given = 0;
        for (ids, claimed_at_us) in claims {
            given += state.messages().give_back(&ids, claimed_at_us).await?;
        }
        tracing::info!(given, "stopping: unreleased claims given back");
    }
    match lock(&failed).take() {
        Some(error) => Err(error),
        None => Ok(released),
    }
}

/// Whether the worker is to go on (no stop asked for).
fn going_on(stop: &tokio::sync::watch::Receiver<bool>) -> bool {
    !*stop.borrow()
}

/// A mutex of this pass's own (no panic holds it).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Splits a claim (in the order of its instants) into groups of at most [`GROUP`] messages
/// whose instants are within [`GROUP_SPAN_US`] of their first's.
fn groups(due: Vec<DeferredMessage>) -> Vec<Vec<DeferredMessage>> {
    let mut groups: Vec<Vec<DeferredMessage>> = Vec::new();
    for item in due {
        match groups.last_mut() {
            Some(group)
                if group.len() < GROUP
                    && item.release_at_us - group[0].release_at_us <= GROUP_SPAN_US =>
            {
                group.push(item);
            }
            _ => groups.push(vec![item]),
        }
    }
    groups
}

/// Releases a group of due messages at its first's instant: those that can no longer be sent
/// (their tenant is gone, their recipient erased) are called off, and the others are decided
/// again, tenant by tenant ([`release_tenant`]).
async fn release_group(
    state: &AppState,
    group: Vec<DeferredMessage>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Released {
    let mut released = Released::default();
    let Some(first) = group.first() else {
        return released;
    };
    let wait = first.release_at_us - state.clock.now().as_microsecond();
    if wait > 0 {
        tokio::time::sleep(Duration::from_micros(wait.unsigned_abs())).await;
    }
    // Stopping: what has not begun is given back by the caller. (A group that has begun
    // finishes, or, waiting for its turn, leaves nothing recorded.)
    if !going_on(stop) {
        return released;
    }
    let now = state.clock.now();
    let mut called_off = Vec::new();
    let mut by_tenant: std::collections::BTreeMap<TenantId, Vec<Due>> = Default::default();
    // Prepared side by side: each may read its recipient's key from the store.
    let prepared =
        futures_util::future::join_all(group.iter().map(|item| prepare(state, item, now))).await;
    for (item, prepared) in group.into_iter().zip(prepared) {
        // One message that cannot be released must not hold back the others; its claim
        // lapses and a later pass takes it again.
        match prepared {
            Ok(Prepared::CalledOff(record)) => called_off.push(record),
            Ok(Prepared::Message(message)) => {
                by_tenant.entry(item.tenant.clone()).or_default().push(Due {
                    item,
                    message: *message,
                    turn: None,
                })
            }
            Err(error) => {
                released.failed += 1;
                tracing::error!(message_id = %item.id, %error, "a deferred message could not be released");
            }
        }
    }
    if !called_off.is_empty() {
        match state.messages().record_releases(&called_off, None).await {
            Ok(()) => released.cancelled += called_off.len(),
            Err(error) => {
                released.failed += called_off.len();
                tracing::error!(%error, "deferred messages could not be called off");
            }
        }
    }
    for (tenant, messages) in by_tenant {
        // `prepare` found every one of these tenants.
        if let Some(tenant) = state.tenants.get(&tenant) {
            release_tenant(state, tenant, messages, stop, &mut released).await;
        }
    }
    released
}

/// What a due message is before its decision.
enum Prepared {
    /// It can no longer be sent: this denial is its release.
    CalledOff(ReleaseRecord),
    /// Rebuilt from its record, to be decided again.
    Message(Box<CanonicalMessage>),
}

/// A due message on its way: its queue entry, the message rebuilt from it, and, paced, how
/// long after its group's start its forward may leave.
struct Due {
    item: DeferredMessage,
    message: CanonicalMessage,
    turn: Option<Duration>,
}

async fn prepare(
    state: &AppState,
    item: &DeferredMessage,
    now: Timestamp,
) -> Result<Prepared, FlowError> {
    let called_off = |code: &str, detail: &str| {
        Prepared::CalledOff(release_record(
            item,
            now,
            DecisionKind::Denied,
            serde_json::json!([{ "code": code, "detail": detail }]).to_string(),
            None,
        ))
    };
    let Some(tenant) = state.tenants.get(&item.tenant) else {
        return Ok(called_off(
            "unknown_tenant",
            "the tenant is no longer configured",
        ));
    };
    // Erased since it was deferred: its body is gone, so it can never be sent.
    if item.key_id.starts_with("rk_")
        && state
            .stored_keys()
            .recipient_key_by_id(&item.key_id)
            .await?
            .is_none()
    {
        return Ok(called_off("erased", "the recipient's data was erased"));
    }
    Ok(Prepared::Message(Box::new(
        rebuild(state, item, tenant.default_region).await?,
    )))
}

/// Decides a tenant's due messages again and forwards those allowed. A message that holds its
/// paced instant is let through by the decision at once, and its forward keeps the pace:
/// released late (the scheduler fell behind), it may wait a while for its turn. The group
/// waits for its first turn while nothing is recorded, so that a stop (or a crash) in that
/// wait leaves it queued, not recorded as released and never forwarded; each forward then
/// waits for its own turn, at most the group's span later unless the upstream asked for a
/// pause. (Any other message is decided at once: the decision paces it, and its forward waits
/// little.) The messages are decided in rounds in which each recipient comes once, each
/// round in its recipients' turn with one read and one write.
async fn release_tenant(
    state: &AppState,
    tenant: &Tenant,
    mut messages: Vec<Due>,
    stop: &tokio::sync::watch::Receiver<bool>,
    released: &mut Released,
) {
    let now = state.clock.now();
    // Each paced forward's turn, taken now: how long after now it may leave.
    for due in &mut messages {
        if due.message.reply.is_none() && state.pacer.holds(&due.item.id) {
            due.turn = Some(
                state
                    .pacer
                    .wait_for_turn(&tenant.upstream, due.message.from.as_str(), now)
                    .unsigned_abs(),
            );
        }
    }
    let first_turn = messages
        .iter()
        .filter_map(|due| due.turn)
        .filter(|wait| *wait <= WAIT_FIRST_AT_MOST)
        .min()
        .unwrap_or_default();
    let started = tokio::time::Instant::now();
    if !first_turn.is_zero() {
        let mut stop = stop.clone();
        tokio::select! {
            () = tokio::time::sleep(first_turn) => {}
            Ok(_) = stop.wait_for(|stop| *stop) => {
                for due in messages.iter().filter(|due| due.turn.is_some()) {
                    state.pacer.give_back_turn(&tenant.upstream, due.message.from.as_str());
                }
                return;
            }
        }
    }
    let mut forwards = Vec::new();
    let rounds = send::rounds_by(state, messages, |due| &due.message);
    for round in rounds {
        let count = round.len();
        match decide_round(state, tenant, round).await {
            Ok(decided) => {
                for (id, decision, turn) in decided {
                    match decision {
                        Err(error) => {
                            released.failed += 1;
                            tracing::error!(message_id = %id, %error, "a deferred message could not be released");
                        }
                        Ok(Decision::Allow(permit)) => forwards.push((permit, turn)),
                        Ok(Decision::Deny(denial)) => {
                            released.cancelled += 1;
                            tracing::info!(message_id = %id, code = denial.reasons[0].code.as_str(), "deferred message cancelled");
                        }
                        Ok(Decision::Defer(deferral)) => {
                            released.deferred_again += 1;
                            tracing::info!(message_id = %id, until = %deferral.until, "deferred message deferred again");
                        }
                    }
                }
            }
            Err(error) => {
                // Nothing of the round is recorded: its claims lapse and a later pass takes
                // them again.
                released.failed += count;
                tracing::error!(%error, "a group of deferred messages could not be released");
            }
        }
    }
    let outcomes: Vec<Processed> = futures_util::stream::iter(forwards)
        .map(|(permit, turn)| async move {
            let delivery = match turn {
                // Recorded as released: the claim may lapse now without harm.
                Some(turn) => {
                    tokio::time::sleep_until(started + turn).await;
                    Delivery::UpstreamInTurn
                }
                None => Delivery::Upstream,
            };
            let id = permit.message().id.clone();
            let processed = send::deliver(state, tenant, permit, delivery).await;
            tracing::info!(message_id = %id, tenant = %tenant.id, "deferred message released");
            processed
        })
        .buffer_unordered(FORWARDS)
        .collect()
        .await;
    for processed in outcomes {
        match processed {
            Processed::Sent { .. } => released.sent += 1,
            Processed::Requeued { .. } => released.deferred_again += 1,
            _ => released.failed += 1,
        }
    }
}

/// One round of a tenant's due messages (each recipient once), in its recipients' turn: the
/// facts read together, each message decided, and every decision recorded in one write.
/// Each message's id, decision and forward turn, in order; an error fails the whole round
/// (nothing of it recorded).
async fn decide_round(
    state: &AppState,
    tenant: &Tenant,
    round: Vec<(usize, String, Due)>,
) -> Result<Vec<(MessageId, Result<Decision, FlowError>, Option<Duration>)>, FlowError> {
    let hashes: Vec<&str> = round.iter().map(|(_, hash, _)| hash.as_str()).collect();
    let messages: Vec<&CanonicalMessage> = round.iter().map(|(_, _, due)| &due.message).collect();
    let asked = send::ask_ahead(state, tenant, &messages, state.clock.now()).await;
    let mut turn = state.recipients_turn(&hashes).await?;
    let now = state.clock.now();
    let mut gathered =
        send::gather_all(state, tenant, &messages, now, Some(&mut turn.shared)).await?;
    // The numbers' histories, answered ahead of the turn where the question is the same.
    let histories: Vec<Result<(), FlowError>> =
        futures_util::future::join_all(messages.iter().zip(gathered.iter_mut()).map(
            |(message, gathered)| {
                send::check_number_history(state, tenant, message, gathered, now, &asked)
            },
        ))
        .await;
    drop(messages);
    let bounds = SenderBounds::default();
    let mut decided = Vec::with_capacity(round.len());
    let mut records = Vec::with_capacity(round.len());
    for (
        (
            _,
            _,
            Due {
                item,
                message,
                turn,
            },
        ),
        (mut gathered, history),
    ) in round.into_iter().zip(gathered.into_iter().zip(histories))
    {
        // A lookup that failed stops its message: nothing recorded, its claim lapses.
        if let Err(error) = history {
            decided.push((item.id, Err(error), turn));
            continue;
        }
        let paced = send::take_slot(state, tenant, &message, &mut gathered, now);
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
        records.push(ReleaseRecord {
            basis: decision.basis_json(),
            ..release_record(&item, now, kind, reasons, again)
        });
        decided.push((item.id, Ok(decision), turn));
    }
    if !records.is_empty() {
        state
            .messages()
            .record_releases(&records, Some(&mut turn.shared))
            .await?;
    }
    turn.end().await;
    Ok(decided)
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
