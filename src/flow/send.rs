//! The send flow, after a message is parsed: gather the recipient's facts, decide (purely,
//! [`policy::decide`]), record the decision with the sealed body (durable before anything
//! leaves), then forward an allowed message with its permit and append the gateway's outcome.
//! Every message consentry sends goes through [`process`] (the native API's, the fronts', the
//! SMPP front's: decided in groups with the sends beside them) or [`process_group`] (a batch's
//! groups, its own answers to replies); a deferred message released by the scheduler goes
//! through [`deliver`] once it is decided again.
//!
//! Each phase either continues or stops: a record that cannot be written stops before
//! forwarding ([`FlowError`], nothing sent); a denial or deferral is recorded and returned as a
//! normal [`Processed`]; a gateway failure is recorded and returned as [`Processed::Failed`].

use futures_util::StreamExt as _;
use jiff::Timestamp;
use serde_json::json;

use std::sync::Arc;

use super::FlowError;
use super::combine::Waiting;
use crate::config::Tenant;
use crate::domain::{CanonicalMessage, MessageId, TenantId};
use crate::metrics::{DecisionLabels, Phase};
use crate::policy::{self, Decision, Facts, SenderBounds};
use crate::state::AppState;
use crate::store::{DecisionKind, FactsQuery, MessageRecord, OutcomeRecord, OutcomeStatus};

/// How an allowed message leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Through the tenant's upstream's send API.
    Upstream,
    /// The same, its forward's turn in the pace already taken and waited for (the scheduler
    /// waits before it decides a release, so that nothing is recorded while it waits).
    UpstreamInTurn,
    /// In the answer to the gateway's webhook (TwiML); the caller sends it.
    InWebhookAnswer,
}

/// What became of a message.
#[derive(Debug)]
pub enum Processed {
    Denied(policy::Denial),
    Sent {
        id: MessageId,
        receipt: crate::upstream::Receipt,
    },
    Failed {
        id: MessageId,
        error: crate::upstream::UpstreamError,
    },
    /// Recorded as sent; its text goes back in the webhook answer.
    Answered {
        id: MessageId,
        text: String,
    },
    /// Deferred: recorded, and released by the scheduler at `until`.
    Scheduled(policy::Deferral),
    /// The gateway throttled it (429): queued again, and decided and sent again at `until`.
    Requeued {
        id: MessageId,
        until: Timestamp,
    },
}

/// What `decide` needs to know about a recipient, read from the store and the zone table.
pub struct Gathered {
    pub consent: Vec<crate::consent::ConsentEvent>,
    pub confirmed_opt_outs: Vec<String>,
    pub open_reviews: Vec<String>,
    pub recent: Vec<Timestamp>,
    pub location: crate::zones::Location,
    /// The recipient's key in the tenant, read with the rest: its record is sealed under it.
    pub recipient_key: Option<crate::store::RecipientKeyRow>,
    /// When the upstream's pace lets the message leave, if later than now ([`take_slot`]).
    pub paced_until: Option<Timestamp>,
}

impl Gathered {
    /// The facts `decide` takes, for a tenant and a token's bounds, at `now`.
    pub fn facts<'a>(
        &'a self,
        tenant: &'a Tenant,
        bounds: &'a SenderBounds,
        policies: &'a crate::policy::rules::PolicySet,
        now: Timestamp,
    ) -> Facts<'a> {
        Facts {
            tenant: &tenant.rules,
            bounds,
            policies,
            consent: &self.consent,
            confirmed_opt_outs: &self.confirmed_opt_outs,
            open_reviews: &self.open_reviews,
            location: &self.location,
            recent: &self.recent,
            now,
            paced_until: self.paced_until,
        }
    }
}

/// Reads the facts about a message's recipient, as of `now`.
pub async fn gather(
    state: &AppState,
    tenant: &Tenant,
    message: &CanonicalMessage,
    now: Timestamp,
    lock: Option<&mut crate::store::RecipientLock>,
) -> Result<Gathered, FlowError> {
    let mut gathered = gather_all(state, tenant, &[message], now, lock).await?;
    gathered
        .pop()
        .ok_or_else(|| FlowError::Unreadable("the store answered no facts".into()))
}

/// Reads the facts about messages' recipients, as of `now`, in one read of the store: one
/// answer per message, in order.
pub async fn gather_all(
    state: &AppState,
    tenant: &Tenant,
    messages: &[&CanonicalMessage],
    now: Timestamp,
    lock: Option<&mut crate::store::RecipientLock>,
) -> Result<Vec<Gathered>, FlowError> {
    let mut locations = Vec::with_capacity(messages.len());
    let mut hashes = Vec::with_capacity(messages.len());
    let mut windows = Vec::with_capacity(messages.len());
    for message in messages {
        // Recent sends are read only as far as a cap that applies to this number and purpose
        // needs: the latest `count` within its window.
        let location = state.policies.zones.locate(&message.to);
        let caps = state
            .policies
            .jurisdictions
            .applicable(&location, message.purpose)
            .into_iter()
            .filter_map(|rule| rule.cap)
            .fold(None, |widest: Option<(u32, u32)>, cap| {
                let (hours, count) = widest.unwrap_or((0, 0));
                Some((hours.max(cap.hours), count.max(cap.count)))
            });
        windows.push(caps.map(|(hours, count)| {
            let since = now - jiff::SignedDuration::from_hours(i64::from(hours));
            (since.as_microsecond(), i64::from(count))
        }));
        locations.push(location);
        hashes.push(state.numbers.hash(&message.to));
    }
    let queries: Vec<FactsQuery<'_>> = messages
        .iter()
        .zip(&hashes)
        .zip(&windows)
        .map(|((message, hash), recent)| FactsQuery {
            recipient_hash: hash,
            purpose: message.purpose.as_str(),
            recent: *recent,
        })
        .collect();
    let answers = state
        .ledger()
        .recipient_facts(&tenant.id, &queries, lock)
        .await?;
    if answers.len() != messages.len() {
        return Err(FlowError::Unreadable(
            "the store answered facts for another number of recipients".into(),
        ));
    }
    Ok(answers
        .into_iter()
        .zip(locations)
        .map(|(recipient, location)| Gathered {
            consent: recipient.consent,
            confirmed_opt_outs: recipient.confirmed_opt_outs,
            open_reviews: recipient.open_reviews,
            recent: recipient
                .recent_us
                .iter()
                .filter_map(|us| Timestamp::from_microsecond(*us).ok())
                .collect(),
            location,
            recipient_key: recipient.recipient_key,
            paced_until: None,
        })
        .collect())
}

/// Takes the message's instant from its upstream's pace ([`crate::pacing`]), before `decide`:
/// now, or a later instant reserved for it, which `decide` defers an allowed message to
/// (reason `paced`). Answers to replies are not paced (an opt-out's confirmation has minutes
/// to leave), nor a message held for a later `send_at` (it is paced at its release). Returns
/// whether an instant was taken, for [`keep_slot`].
pub fn take_slot(
    state: &AppState,
    tenant: &Tenant,
    message: &CanonicalMessage,
    gathered: &mut Gathered,
    now: Timestamp,
) -> bool {
    if message.reply.is_some() || message.send_at.is_some_and(|at| at > now) {
        return false;
    }
    match state
        .pacer
        .slot(&message.id, &tenant.upstream, message.from.as_str(), now)
    {
        crate::pacing::Slot::Now => {}
        crate::pacing::Slot::At(at) => gathered.paced_until = Some(at),
    }
    true
}

/// Keeps the instant [`take_slot`] took only for a message that uses it: one sent now, or one
/// deferred to it; a denied message, or one deferred by another rule, gives it back.
pub fn keep_slot(state: &AppState, tenant: &Tenant, decision: &Decision, taken: bool) {
    let uses_it = match decision {
        Decision::Allow(_) => true,
        Decision::Defer(deferral) => deferral
            .reasons
            .first()
            .is_some_and(|reason| reason.code == policy::ReasonCode::Paced),
        Decision::Deny(_) => false,
    };
    if taken && !uses_it {
        let message = decision.message();
        state
            .pacer
            .give_back(&message.id, &tenant.upstream, message.from.as_str());
    }
}

/// The reassigned-numbers lookup's answers to a group's questions, asked before its turn
/// ([`ask_ahead`]), by recipient and date.
#[derive(Default)]
pub struct Asked(
    std::collections::HashMap<
        (String, jiff::civil::Date),
        Result<crate::reassigned::Answer, crate::reassigned::LookupError>,
    >,
);

/// The date [`check_number_history`] asks about for a message (the day its consent was
/// obtained), if it asks.
fn number_history_question(
    state: &AppState,
    message: &CanonicalMessage,
    gathered: &Gathered,
    now: Timestamp,
) -> Option<jiff::civil::Date> {
    use crate::consent::ConsentState;
    use crate::domain::Purpose;
    let lookup = state.reassigned.as_ref()?;
    let relevant = matches!(message.purpose, Purpose::Marketing | Purpose::Informational)
        && message.reply.is_none()
        && message.send_at.is_none_or(|at| at <= now)
        && gathered.location.country.as_deref() == Some("US");
    if !relevant {
        return None;
    }
    let policy = state.policies.consent.at(now);
    let consented_at = match crate::consent::state(
        &gathered.consent,
        &message.scope,
        message.purpose,
        &policy,
        now,
    ) {
        ConsentState::OptedIn { event, .. } => event.occurred_at,
        _ => return None,
    };
    if now.duration_since(consented_at) < lookup.min_consent_age {
        return None;
    }
    Some(consented_at.to_zoned(jiff::tz::TimeZone::UTC).date())
}

/// Asks the reassigned-numbers lookup the questions a group's messages would ask in their
/// recipients' turn, before the turn is taken (by facts read now, without the lock), all at
/// once: a lookup that waits on the network then holds no recipient's turn (nor, on
/// PostgreSQL, a locked connection). In the turn, [`check_number_history`] uses these
/// answers, failures included; a question the turn's facts ask differently (a consent
/// recorded in between) is asked there.
pub async fn ask_ahead(
    state: &AppState,
    tenant: &Tenant,
    messages: &[&CanonicalMessage],
    now: Timestamp,
) -> Asked {
    use crate::domain::Purpose;
    let mut asked = Asked::default();
    let Some(lookup) = &state.reassigned else {
        return asked;
    };
    if !messages.iter().any(|message| {
        matches!(message.purpose, Purpose::Marketing | Purpose::Informational)
            && message.reply.is_none()
    }) {
        return asked;
    }
    // A read that fails here fails in the turn too, which answers for it.
    let Ok(gathered) = gather_all(state, tenant, messages, now, None).await else {
        return asked;
    };
    let mut questions = std::collections::HashMap::new();
    for (message, gathered) in messages.iter().zip(&gathered) {
        if let Some(since) = number_history_question(state, message, gathered, now) {
            questions
                .entry((state.numbers.hash(&message.to), since))
                .or_insert(&message.to);
        }
    }
    let answers = futures_util::future::join_all(
        questions
            .iter()
            .map(|((hash, since), number)| lookup.ask(number, hash, *since)),
    )
    .await;
    asked.0 = questions.into_keys().zip(answers).collect();
    asked
}

/// Asks whether the number changed hands since the consent a send relies on, when that matters:
/// a reassigned-numbers lookup is configured, the message is marketing or informational (not
/// an answer to a reply, not held for later: a held one is asked at its release), the number
/// is a US one (the FCC's database covers those), and its consent is at least
/// `min_consent_age` old. A "yes" is recorded in the recipient's ledger as an opt-out
/// (method `reassigned_lookup`, the question and the answer as its evidence, a leaf of the
/// audit log) and added to the facts, so that `decide` denies this send `number_reassigned`,
/// naming it, and every later one without asking again. "No" and "no data" change nothing. In
/// the recipient's turn, between `gather` and `decide`; a lookup that fails stops the send
/// ([`FlowError::Lookup`]: nothing recorded, nothing sent). The answer [`ask_ahead`] got to
/// the same question before the turn is used, not asked again.
pub async fn check_number_history(
    state: &AppState,
    tenant: &Tenant,
    message: &CanonicalMessage,
    gathered: &mut Gathered,
    now: Timestamp,
    asked: &Asked,
) -> Result<(), FlowError> {
    use crate::consent::Action;
    let Some(lookup) = &state.reassigned else {
        return Ok(());
    };
    let Some(since) = number_history_question(state, message, gathered, now) else {
        return Ok(());
    };
    let recipient_hash = state.numbers.hash(&message.to);
    let answer = match asked.0.get(&(recipient_hash.clone(), since)) {
        Some(answer) => answer.clone()?,
        None => lookup.ask(&message.to, &recipient_hash, since).await?,
    };
    if answer != crate::reassigned::Answer::Yes {
        return Ok(());
    }
    let mut evidence = super::consent::Evidence::default();
    evidence
        .extra
        .insert("source".into(), json!("reassigned_numbers_lookup"));
    evidence.extra.insert(
        "question".into(),
        json!({ "disconnected_since": since.to_string(), "asked_at": now.to_string() }),
    );
    evidence
        .extra
        .insert("answer".into(), json!(answer.as_str()));
    let event = super::consent::Validated {
        number: message.to.clone(),
        action: Action::OptOut,
        level: None,
        scope: crate::domain::Scope::tenant_wide(),
        purposes: Default::default(),
        method: crate::consent::REASSIGNED_LOOKUP.to_owned(),
        occurred_at: now,
        external_id: None,
        evidence,
    };
    let record =
        super::consent::consent_record(state, event, tenant, "reassigned-numbers-lookup", now)
            .await?;
    // Beside the group's lock, not in its session: the lock's transaction is for its records.
    state
        .ledger()
        .record_consents(std::slice::from_ref(&record), None)
        .await?;
    tracing::info!(
        event = %record.id,
        tenant = %tenant.id,
        recipient = %record.recipient_masked,
        since = %since,
        "the reassigned-numbers lookup says the number changed hands; its consent no longer counts"
    );
    gathered.consent.push(crate::consent::ConsentEvent {
        id: record.id,
        seq: i64::MAX,
        action: Action::OptOut,
        level: None,
        scope: crate::domain::Scope::tenant_wide(),
        purposes: crate::consent::Purposes::all(),
        occurred_at: now,
        number_reassigned: true,
    });
    Ok(())
}

/// The send flow after parsing: gather the recipient's facts, decide, record the decision
/// durably, then forward an allowed message and record the outcome. Every message a client
/// sends goes through here; consentry's own replies and a batch's groups go through
/// [`process_group`]. Single sends that arrive together are decided together
/// ([`super::combine`]): the message waits in its tenant's queue until a runner takes it with
/// whatever else is queued, then this request forwards it on its own.
pub async fn process(
    state: &Arc<AppState>,
    tenant: &Tenant,
    bounds: &SenderBounds,
    message: CanonicalMessage,
    delivery: Delivery,
) -> Result<Processed, FlowError> {
    let started = std::time::Instant::now();
    let (answer, decided) = tokio::sync::oneshot::channel();
    let waiting = Waiting {
        message,
        bounds: bounds.clone(),
        answer,
    };
    if state.deciding.queue(&tenant.id, waiting) {
        tokio::spawn(run_queue(Arc::clone(state), tenant.id.clone()));
    }
    let decision = decided.await.map_err(|_| {
        FlowError::Unreadable(
            "the group deciding the message stopped before it was decided; nothing was sent".into(),
        )
    })??;
    let processed = match settle(state, tenant, decision) {
        Settled::Answer(processed) => processed,
        Settled::Forward(permit) => deliver(state, tenant, permit, delivery).await,
    };
    state.metrics.phase(Phase::Total, started.elapsed());
    Ok(processed)
}

/// Runs a tenant's queue of single sends ([`super::combine`]) until none is left. A pass that
/// panics is followed by another, so that the messages queued behind it are still decided
/// (those of its group see their answer dropped: nothing was sent). A runner dropped with its
/// runtime just ends. (It was a `Drop` that spawned the next runner when its thread was
/// panicking: dropped by a runtime shutting down during another panic, each runner spawned one
/// more that was dropped at once, until the stack overflowed.)
async fn run_queue(state: Arc<AppState>, tenant: TenantId) {
    use futures_util::FutureExt as _;
    while std::panic::AssertUnwindSafe(run_groups(&state, &tenant))
        .catch_unwind()
        .await
        .is_err()
    {
        tracing::error!(%tenant, "a runner of single sends panicked; another takes its place");
    }
}

/// Decides the tenant's queued single sends, group after group, until none is left.
async fn run_groups(state: &Arc<AppState>, tenant_id: &TenantId) {
    loop {
        let group = state.deciding.next_group(tenant_id);
        if group.is_empty() {
            return;
        }
        let Some(tenant) = state.tenants.get(tenant_id) else {
            // A message is queued only by a request of a tenant of this state.
            continue;
        };
        let mut answers = Vec::with_capacity(group.len());
        let mut bounds = Vec::with_capacity(group.len());
        let mut messages = Vec::with_capacity(group.len());
        for waiting in group {
            answers.push(Some(waiting.answer));
            bounds.push(waiting.bounds);
            messages.push(waiting.message);
        }
        state.metrics.send_group(messages.len());
        for round in rounds(state, messages) {
            for (index, decided) in
                decide_round(state, tenant, GroupBounds::Each(&bounds), round).await
            {
                if let Some(answer) = answers[index].take() {
                    // A sender's request runs to its end even if its client leaves
                    // (`http::edge`); one that stopped anyway (a panic, a shutdown past its
                    // drain) forwards nothing: its record stays allowed without an outcome,
                    // listed in doubt.
                    let _ = answer.send(decided);
                }
            }
        }
    }
}

/// What a decision becomes before anything is forwarded.
enum Settled {
    /// A denial or a deferral: recorded, and this is the answer.
    Answer(Processed),
    /// Allowed: the permit goes on to [`deliver`].
    Forward(policy::Permit),
}

/// Counts a decision and says what it becomes.
fn settle(state: &AppState, tenant: &Tenant, decision: Decision) -> Settled {
    state.metrics.decision(decision_labels(&decision, tenant));
    match decision {
        Decision::Deny(denial) => {
            tracing::debug!(
                message_id = %denial.message.id,
                tenant = %tenant.id,
                code = denial.reasons[0].code.as_str(),
                "message denied"
            );
            Settled::Answer(Processed::Denied(denial))
        }
        Decision::Defer(deferral) => {
            tracing::debug!(
                message_id = %deferral.message.id,
                tenant = %tenant.id,
                until = %deferral.until,
                "message deferred"
            );
            Settled::Answer(Processed::Scheduled(deferral))
        }
        Decision::Allow(permit) => Settled::Forward(permit),
    }
}

/// The bounds each message of a group was sent under.
#[derive(Clone, Copy)]
enum GroupBounds<'a> {
    /// One token's, for all (a batch, a reply).
    One(&'a SenderBounds),
    /// Each message's own request's, by its place in the group (combined single sends).
    Each(&'a [SenderBounds]),
}

impl GroupBounds<'_> {
    fn of(&self, index: usize) -> &SenderBounds {
        match self {
            GroupBounds::One(bounds) => bounds,
            GroupBounds::Each(each) => &each[index],
        }
    }
}

/// Forwards of one group in flight at once.
const GROUP_FORWARDS: usize = 32;

/// [`process`] for messages decided together (a batch's recipients): one answer per message,
/// in order. The recipients take their turns together, their facts are read in one read of the
/// store and their records written in one write (one transaction), then the allowed ones are
/// forwarded, [`GROUP_FORWARDS`] at a time. A message whose recipient comes again in the group
/// is decided in a later round, after the earlier one is recorded, as if sent after it. A
/// store that fails fails the round it was reading or writing: nothing of it is sent.
pub async fn process_group(
    state: &AppState,
    tenant: &Tenant,
    bounds: &SenderBounds,
    messages: Vec<CanonicalMessage>,
    delivery: Delivery,
) -> Vec<Result<Processed, FlowError>> {
    let started = std::time::Instant::now();
    let count = messages.len();
    let mut answers: Vec<Option<Result<Processed, FlowError>>> =
        std::iter::repeat_with(|| None).take(count).collect();
    let mut permits = Vec::new();
    for round in rounds(state, messages) {
        for (index, decided) in decide_round(state, tenant, GroupBounds::One(bounds), round).await {
            answers[index] = match decided.map(|decision| settle(state, tenant, decision)) {
                Err(error) => Some(Err(error)),
                Ok(Settled::Answer(processed)) => Some(Ok(processed)),
                Ok(Settled::Forward(permit)) => {
                    permits.push((index, permit));
                    None
                }
            };
        }
    }
    let delivered: Vec<(usize, Processed)> =
        futures_util::stream::iter(permits)
            .map(|(index, permit)| async move {
                (index, deliver(state, tenant, permit, delivery).await)
            })
            .buffer_unordered(GROUP_FORWARDS)
            .collect()
            .await;
    for (index, processed) in delivered {
        answers[index] = Some(Ok(processed));
        state.metrics.phase(Phase::Total, started.elapsed());
    }
    answers
        .into_iter()
        .map(|answer| {
            answer.unwrap_or_else(|| Err(FlowError::Unreadable("a message was not decided".into())))
        })
        .collect()
}

/// Splits a group into rounds in which each recipient comes once, each message numbered by
/// its place in the group: a recipient's second message is in the second round, and so on.
fn rounds(
    state: &AppState,
    messages: Vec<CanonicalMessage>,
) -> Vec<Vec<(usize, String, CanonicalMessage)>> {
    rounds_by(state, messages, |message| message)
}

/// [`rounds`] of any items that carry a message (the scheduler's releases), each with its
/// recipient's hash.
pub fn rounds_by<T>(
    state: &AppState,
    items: Vec<T>,
    message_of: impl Fn(&T) -> &CanonicalMessage,
) -> Vec<Vec<(usize, String, T)>> {
    let mut rounds: Vec<Vec<(usize, String, T)>> = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (index, message) in items.into_iter().enumerate() {
        let hash = state.numbers.hash(&message_of(&message).to);
        let times = seen.entry(hash.clone()).or_default();
        if rounds.len() <= *times {
            rounds.push(Vec::new());
        }
        rounds[*times].push((index, hash, message));
        *times += 1;
    }
    rounds
}

/// One round of a group, in its recipients' turn: gather, decide and seal each message, then
/// record every decision in one durable write. A message whose lookup or sealing failed is
/// answered with its error and not recorded; a store that fails fails every message of the
/// round.
async fn decide_round(
    state: &AppState,
    tenant: &Tenant,
    bounds: GroupBounds<'_>,
    round: Vec<(usize, String, CanonicalMessage)>,
) -> Vec<(usize, Result<Decision, FlowError>)> {
    let started = std::time::Instant::now();
    let hashes: Vec<&str> = round.iter().map(|(_, hash, _)| hash.as_str()).collect();
    let messages: Vec<&CanonicalMessage> = round.iter().map(|(_, _, message)| message).collect();
    let asked = ask_ahead(state, tenant, &messages, state.clock.now()).await;
    // Facts and records under one lock, in this process and across the processes that
    // share the database: caps and confirmations see every decision.
    let mut turn = match state.recipients_turn(&hashes).await {
        Ok(turn) => turn,
        Err(error) => return fail_all(round.iter().map(|(index, ..)| *index), error.into()),
    };
    let now = state.clock.now();
    let gathered = match gather_all(state, tenant, &messages, now, Some(&mut turn.shared)).await {
        Ok(gathered) => gathered,
        Err(error) => return fail_all(round.iter().map(|(index, ..)| *index), error),
    };
    // The numbers' histories, answered ahead of the turn where the question is the same.
    let mut gathered = gathered;
    let histories: Vec<Result<(), FlowError>> =
        futures_util::future::join_all(messages.iter().zip(gathered.iter_mut()).map(
            |(message, gathered)| {
                check_number_history(state, tenant, message, gathered, now, &asked)
            },
        ))
        .await;
    drop(messages);
    let mut decided = Vec::with_capacity(round.len());
    let mut records = Vec::with_capacity(round.len());
    for (((index, hash, message), mut gathered), history) in
        round.into_iter().zip(gathered).zip(histories)
    {
        if let Err(error) = history {
            decided.push((index, Err(error)));
            continue;
        }
        let paced = take_slot(state, tenant, &message, &mut gathered, now);
        let facts = gathered.facts(tenant, bounds.of(index), &state.policies, now);
        let decision = policy::decide(message, &facts);
        keep_slot(state, tenant, &decision, paced);
        match sealed_record(state, &decision, tenant, now, hash, gathered.recipient_key).await {
            Ok(record) => {
                records.push(record);
                decided.push((index, Ok(decision)));
            }
            Err(error) => decided.push((index, Err(error))),
        }
    }
    state.metrics.phase(Phase::Gather, started.elapsed());
    let recording = std::time::Instant::now();
    if !records.is_empty()
        && let Err(error) = state
            .messages()
            .record_messages(&records, Some(&mut turn.shared))
            .await
    {
        // Nothing of the round is recorded: none of it may leave.
        let text = error.to_string();
        tracing::error!(%error, "a group's records could not be written; nothing of it was sent");
        for (_, decision) in &mut decided {
            if decision.is_ok() {
                *decision = Err(store_failure(&text));
            }
        }
        return decided;
    }
    state.metrics.phase(Phase::Record, recording.elapsed());
    turn.end().await;
    decided
}

/// The same store failure, answered for each of `indexes`.
fn fail_all(
    indexes: impl Iterator<Item = usize>,
    error: FlowError,
) -> Vec<(usize, Result<Decision, FlowError>)> {
    let text = error.to_string();
    tracing::error!(%error, "a group's facts could not be read; nothing of it was sent");
    indexes
        .map(|index| (index, Err(store_failure(&text))))
        .collect()
}

/// A store failure shared by several messages (each answer holds its own copy).
fn store_failure(text: &str) -> FlowError {
    FlowError::Store(crate::store::StoreError::Unsafe(text.to_owned()))
}

/// A decision's labels in `consentry_decisions_total`.
fn decision_labels(decision: &Decision, tenant: &Tenant) -> DecisionLabels {
    let (outcome, reason) = match decision {
        Decision::Allow(_) => ("allowed", "none"),
        Decision::Deny(denial) => (
            "denied",
            denial.reasons.first().map_or("none", |r| r.code.as_str()),
        ),
        Decision::Defer(deferral) => (
            "deferred",
            deferral.reasons.first().map_or("none", |r| r.code.as_str()),
        ),
    };
    DecisionLabels {
        outcome,
        reason,
        purpose: decision.message().purpose.as_str(),
        tenant: tenant.id.as_str().to_owned(),
    }
}

/// Sends a permitted message and records what the gateway answered.
pub async fn deliver(
    state: &AppState,
    tenant: &Tenant,
    permit: policy::Permit,
    delivery: Delivery,
) -> Processed {
    let forwarded = Forwarded::of(state, permit.message());
    let id = forwarded.id.clone();
    if delivery == Delivery::InWebhookAnswer {
        let text = permit.message().body.as_str().to_owned();
        record_outcome(
            state,
            &forwarded,
            &Ok(crate::upstream::Receipt {
                name: tenant.upstream.clone(),
                message_id: None,
            }),
        )
        .await;
        return Processed::Answered { id, text };
    }
    let upstream = state
        .upstreams
        .get(&tenant.upstream)
        .expect("tenant upstreams are checked at start-up");
    // Forwards keep the pace too: queued messages released late wait their turn here.
    if permit.message().reply.is_none() && delivery == Delivery::Upstream {
        let wait = state.pacer.wait_for_turn(
            &tenant.upstream,
            permit.message().from.as_str(),
            state.clock.now(),
        );
        if wait.is_positive() {
            tokio::time::sleep(wait.unsigned_abs()).await;
        }
    }
    let forwarding = std::time::Instant::now();
    let result = upstream.forward(permit).await;
    state.metrics.phase(Phase::Forward, forwarding.elapsed());
    state.metrics.upstream_answer(
        &tenant.upstream,
        result
            .as_ref()
            .map_or_else(|error| error.code(), |_| "sent"),
    );
    if let Err(crate::upstream::UpstreamError::Throttled { retry_after }) = &result {
        return requeue(state, tenant, &forwarded, *retry_after).await;
    }
    let recording = std::time::Instant::now();
    record_outcome(state, &forwarded, &result).await;
    state.metrics.phase(Phase::Outcome, recording.elapsed());
    match result {
        Ok(receipt) => {
            tracing::debug!(message_id = %id, tenant = %tenant.id, upstream = %receipt.name, "message sent");
            Processed::Sent { id, receipt }
        }
        Err(error) => {
            tracing::warn!(message_id = %id, tenant = %tenant.id, %error, "upstream failed");
            Processed::Failed { id, error }
        }
    }
}

/// How long an upstream that throttled without saying for how long is left alone.
const DEFAULT_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// The reasons of a message the gateway throttled, queued again until `until`.
pub fn throttled_reasons(until: Timestamp) -> serde_json::Value {
    json!([{
        "code": policy::ReasonCode::GatewayThrottled.as_str(),
        "detail": format!("the gateway answered 429 (too many requests); it is sent again at {until}"),
    }])
}

/// The gateway throttled a message: its upstream is paused for the time it asked (the pace's
/// next instants come after it), and the message is queued again for the pause's end, when it
/// is decided again and takes its turn. Nothing is lost: if the queue cannot be written, the
/// message is recorded as failed, as any forward that did not succeed.
async fn requeue(
    state: &AppState,
    tenant: &Tenant,
    forwarded: &Forwarded,
    retry_after: Option<std::time::Duration>,
) -> Processed {
    let id = forwarded.id.clone();
    let now = state.clock.now();
    let pause = retry_after.unwrap_or(DEFAULT_PAUSE);
    let until = now + jiff::SignedDuration::try_from(pause).unwrap_or(jiff::SignedDuration::ZERO);
    state.pacer.pause(&tenant.upstream, until);
    let release = crate::store::ReleaseRecord {
        message_id: id.clone(),
        decided_at_us: now.as_microsecond(),
        decision: DecisionKind::Deferred,
        reasons_json: throttled_reasons(until).to_string(),
        basis: None,
        release_again_at_us: Some(until.as_microsecond()),
    };
    match state.messages().requeue(&tenant.id, &release).await {
        Ok(()) => {
            tracing::info!(message_id = %id, tenant = %tenant.id, upstream = %tenant.upstream, %until, "the gateway throttled; queued again");
            Processed::Requeued { id, until }
        }
        Err(error) => {
            tracing::error!(message_id = %id, %error, "a throttled message could not be queued again");
            let failed = Err(crate::upstream::UpstreamError::Throttled { retry_after });
            record_outcome(state, forwarded, &failed).await;
            Processed::Failed {
                id,
                error: crate::upstream::UpstreamError::Throttled { retry_after },
            }
        }
    }
}

/// A message on its way to the gateway: what its outcome's record names.
struct Forwarded {
    id: MessageId,
    tenant: TenantId,
    recipient_hash: String,
}

impl Forwarded {
    fn of(state: &AppState, message: &CanonicalMessage) -> Forwarded {
        Forwarded {
            id: message.id.clone(),
            tenant: message.tenant.clone(),
            recipient_hash: state.numbers.hash(&message.to),
        }
    }
}

/// Appends the gateway's answer. The gateway has answered: whatever happens to this write,
/// the caller must learn what the gateway did, or a client would retry a sent message.
async fn record_outcome(
    state: &AppState,
    message: &Forwarded,
    result: &Result<crate::upstream::Receipt, crate::upstream::UpstreamError>,
) {
    let (status, upstream_message_id, error_code, detail) = match result {
        Ok(receipt) => (OutcomeStatus::Sent, receipt.message_id.clone(), None, None),
        Err(error) => (
            OutcomeStatus::Failed,
            None,
            Some(error.code().to_owned()),
            Some(error.to_string()),
        ),
    };
    let outcome = OutcomeRecord {
        message_id: message.id.clone(),
        tenant: message.tenant.clone(),
        recipient_hash: message.recipient_hash.clone(),
        recorded_at_us: state.clock.now().as_microsecond(),
        status,
        upstream_message_id,
        error_code,
        detail,
    };
    if let Err(error) = state.messages().record_outcome(&outcome).await {
        tracing::error!(message_id = %message.id, %error, "the upstream outcome could not be recorded");
    }
}

/// Seals the message and builds its record with the decision, for [`Messages::record_messages`].
///
/// [`Messages::record_messages`]: crate::store::Messages::record_messages
async fn sealed_record(
    state: &AppState,
    decision: &Decision,
    tenant: &Tenant,
    now: Timestamp,
    recipient_hash: String,
    recipient_key: Option<crate::store::RecipientKeyRow>,
) -> Result<MessageRecord, FlowError> {
    let message = decision.message();
    let (kind, reasons, release_at_us) = match decision {
        Decision::Allow(_) => (DecisionKind::Allowed, serde_json::json!([]), None),
        Decision::Deny(denial) => (
            DecisionKind::Denied,
            serde_json::to_value(&denial.reasons).unwrap_or_default(),
            None,
        ),
        Decision::Defer(deferral) => (
            DecisionKind::Deferred,
            serde_json::to_value(&deferral.reasons).unwrap_or_default(),
            Some(deferral.until.as_microsecond()),
        ),
    };
    let mut plaintext = json!({
        "to": message.to.e164(),
        "from": message.from.as_str(),
        "body": message.body.as_str(),
    });
    // An MMS's media are sealed with its body: a URL can name its recipient or its content.
    if !message.media.is_empty() {
        let media: Vec<&str> = message.media.iter().map(|m| m.as_str()).collect();
        plaintext["media_urls"] = json!(media);
    }
    // Sealed under the recipient's own key: erasing the number makes it unreadable.
    let (sealed, new_recipient_key) = state
        .keys
        .seal_for_record(
            message.tenant.as_str(),
            &recipient_hash,
            recipient_key,
            &message_associated_data(message),
            plaintext.to_string().as_bytes(),
            now.as_microsecond(),
        )
        .await
        .map_err(|error| {
            tracing::error!(%error, "sealing failed");
            FlowError::Encryption("the message could not be encrypted; nothing was sent")
        })?;
    Ok(MessageRecord {
        id: message.id.clone(),
        tenant: message.tenant.clone(),
        created_at_us: now.as_microsecond(),
        recipient_hash,
        recipient_masked: message.to.masked(),
        sender_masked: message.from.masked(),
        purpose: message.purpose.as_str(),
        brand: message.scope.brand.clone(),
        campaign: message.scope.campaign.clone(),
        decision: kind,
        reply_kind: message.reply.as_ref().map(|reply| reply.kind()),
        confirms_event: match &message.reply {
            Some(crate::domain::Reply::OptOutConfirmation { opt_out_event }) => {
                Some(opt_out_event.clone())
            }
            _ => None,
        },
        reasons_json: reasons.to_string(),
        // A deferred message will leave through the tenant's upstream too: its delivery
        // statuses find it by that.
        upstream: matches!(kind, DecisionKind::Allowed | DecisionKind::Deferred)
            .then(|| tenant.upstream.clone()),
        key_id: sealed.key_id,
        payload: sealed.bytes,
        release_at_us,
        status_callback: message
            .status_callback
            .as_ref()
            .and_then(|callback| serde_json::to_string(callback).ok()),
        basis: decision.basis_json(),
        new_recipient_key,
    })
}

/// A tenant's message's recipient, sender and body, unsealed (for the Twilio front's
/// fetch, which answers with them as Twilio does, to a token with `audit:decrypt` or where
/// the tenant sets `twilio_fetch_body`); `None` once the recipient was erased.
/// Like every read of a body, it is recorded in the log (by `subject`) before it happens.
pub async fn message_content(
    state: &AppState,
    tenant: &crate::domain::TenantId,
    id: &MessageId,
    subject: &str,
) -> Result<Option<(String, String, String)>, FlowError> {
    let unreadable = || FlowError::Unreadable("the message cannot be read".into());
    let sealed = state
        .messages()
        .message_payload(tenant, id)
        .await?
        .ok_or_else(unreadable)?;
    state
        .audit_log()
        .record_body_access(&crate::audit::leaf::BodyAccess {
            id: format!("acc_{}", uuid::Uuid::now_v7().simple()),
            tenant: tenant.as_str().to_owned(),
            subject: subject.to_owned(),
            message_id: id.as_str().to_owned(),
            accessed_at_us: state.clock.now().as_microsecond(),
        })
        .await?;
    let associated = format!("consentry/message/v1\0{tenant}\0{id}").into_bytes();
    let opened = match state.keys.open(&associated, &sealed).await {
        Ok(bytes) => bytes,
        Err(crate::keyring::KeyError::Crypto(crate::crypto::CryptoError::Erased(_))) => {
            return Ok(None);
        }
        Err(error) => {
            tracing::error!(message_id = %id, %error, "a message body does not decrypt");
            return Err(unreadable());
        }
    };
    let payload: serde_json::Value = serde_json::from_slice(&opened).map_err(|_| unreadable())?;
    let field = |name: &str| payload[name].as_str().unwrap_or_default().to_owned();
    Ok(Some((field("to"), field("from"), field("body"))))
}

/// The associated data bound to a message's sealed payload: its identity.
pub fn message_associated_data(message: &CanonicalMessage) -> Vec<u8> {
    format!("consentry/message/v1\0{}\0{}", message.tenant, message.id).into_bytes()
}

/// Calls off a tenant's held message (scheduled by its sender, or deferred by a window) before
/// its release: it will not be sent, and its releases end with a denial
/// `cancelled_by_sender`. Returns the message as it now stands, `None` if the tenant has no
/// such message; a message already released, being released or never held stands as it was,
/// and the caller tells its sender so by its status.
pub async fn cancel(
    state: &AppState,
    tenant: &crate::domain::TenantId,
    id: &MessageId,
) -> Result<Option<crate::store::MessageView>, FlowError> {
    let release = crate::store::ReleaseRecord {
        message_id: id.clone(),
        decided_at_us: state.clock.now().as_microsecond(),
        decision: DecisionKind::Denied,
        reasons_json: json!([{
            "code": "cancelled_by_sender",
            "detail": "the sender called it off before its release",
        }])
        .to_string(),
        basis: None,
        release_again_at_us: None,
    };
    if state.messages().cancel_deferred(tenant, &release).await? {
        state.pacer.forget(id);
        tracing::info!(message_id = %id, %tenant, "held message cancelled by its sender");
    }
    Ok(state.messages().message(tenant, id).await?)
}
