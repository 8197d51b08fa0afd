//! Storage: the store's interface and its records. The interface is split by concern, and each
//! flow or worker names the part it uses: [`Database`] (ping, settings, write batches),
//! [`Ledger`] (consent events, a recipient's facts and lock), [`Messages`] (records, outcomes,
//! releases, deferred claims, reads), [`Inbound`] (replies and reviews), [`Outbox`] (deliveries to
//! webhooks), [`AuditLog`] (the verifiable log, checkpoints, audit lists, body accesses, erasure)
//! and [`Keys`] (data keys, recipient keys). [`Store`] is all of them, for what needs everything.
//! Each backend (SQLite and PostgreSQL, each from its own folder of `migrations/`) implements
//! them, one `impl` block per trait, with runtime-checked `sqlx::query` so one binary serves
//! either.
//!
//! Invariants every backend keeps: a record is durable when `record_message` returns (the
//! upstream is called only after); message rows and outcomes are append-only; no body and no
//! full phone number is written readable.

mod leaves;
pub use leaves::row_id;
pub mod postgres;
mod rows;
pub mod sqlite;

use async_trait::async_trait;
use serde::Serialize;

use jiff::Timestamp;

use crate::audit::checkpoint::Checkpoint;
use crate::audit::leaf::{BodyAccess, Erasure, Kind, Leaf};
use crate::audit::merkle::{Hash, NodeId};
use crate::audit::note::Cosignature;
use crate::consent::{Action, ConsentEvent, Level, Purposes};
use crate::domain::{MessageId, Purpose, Scope, TenantId};

/// A storage failure. The send path answers it with 503 and forwards nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("the database is not configured safely: {0}")]
    Unsafe(String),
    #[error("a stored row does not parse: {0}")]
    Corrupt(String),
}

/// Whether a message was allowed to leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Allowed,
    Denied,
    Deferred,
}

impl DecisionKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            DecisionKind::Allowed => "allowed",
            DecisionKind::Denied => "denied",
            DecisionKind::Deferred => "deferred",
        }
    }
}

/// A message's record, written before anything is forwarded.
#[derive(Debug, Clone)]
pub struct MessageRecord {
    pub id: MessageId,
    pub tenant: TenantId,
    pub created_at_us: i64,
    pub recipient_hash: String,
    pub recipient_masked: String,
    pub sender_masked: String,
    pub purpose: &'static str,
    pub brand: Option<String>,
    pub campaign: Option<String>,
    pub decision: DecisionKind,
    /// For answers to replies: `opt_out_confirmation`, `opt_in_confirmation`, `help`.
    pub reply_kind: Option<&'static str>,
    /// For an opt-out confirmation: the opt-out it confirms (unique: one confirmation each).
    pub confirms_event: Option<String>,
    /// The reasons as a JSON array of `{code, detail}`.
    pub reasons_json: String,
    pub upstream: Option<String>,
    pub key_id: String,
    pub payload: Vec<u8>,
    /// For a deferred message: when to decide again.
    pub release_at_us: Option<i64>,
    /// The application's status callback, as JSON `{"url", "account_sid"}`.
    pub status_callback: Option<String>,
    /// What an allowed message's consent rested on, as JSON (`policy::Basis`).
    pub basis: Option<String>,
    /// A first-time recipient's new key, sealing `payload`: stored in the record's
    /// transaction, which fails if the recipient already has one.
    pub new_recipient_key: Option<RecipientKeyRow>,
}

/// A deferred message taken for release, with what is needed to rebuild it.
#[derive(Debug, Clone)]
pub struct DeferredMessage {
    pub id: MessageId,
    pub tenant: TenantId,
    pub purpose: String,
    pub brand: Option<String>,
    pub campaign: Option<String>,
    pub key_id: String,
    pub payload: Vec<u8>,
    /// When it is due.
    pub release_at_us: i64,
}

/// What the decision at a release was.
#[derive(Debug, Clone)]
pub struct ReleaseRecord {
    pub message_id: MessageId,
    pub decided_at_us: i64,
    pub decision: DecisionKind,
    pub reasons_json: String,
    /// Decided by the policies: its grounds (`Decision::basis_json`), logged with it; an
    /// allowed one's is replayed by `audit verify`.
    pub basis: Option<String>,
    /// Deferred again: the new release time.
    pub release_again_at_us: Option<i64>,
}

/// What the upstream answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    Sent,
    Failed,
    /// Reported by the gateway later: reached the handset.
    Delivered,
    /// Reported by the gateway later: not delivered by the carrier.
    Undelivered,
}

impl OutcomeStatus {
    pub const ALL: [OutcomeStatus; 4] = [
        OutcomeStatus::Sent,
        OutcomeStatus::Failed,
        OutcomeStatus::Delivered,
        OutcomeStatus::Undelivered,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            OutcomeStatus::Sent => "sent",
            OutcomeStatus::Failed => "failed",
            OutcomeStatus::Delivered => "delivered",
            OutcomeStatus::Undelivered => "undelivered",
        }
    }

    /// The status a stored outcome row names.
    pub fn parse(text: &str) -> Option<OutcomeStatus> {
        OutcomeStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// Where a message stands, derived from its record, its latest release decision and its
/// latest outcome ([`status_of`]); never stored apart from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Denied when it was sent: recorded, never forwarded.
    Denied,
    /// Deferred, waiting for its release.
    Scheduled,
    /// Deferred, then denied at its release (an opt-out in between, an erasure, ...).
    Cancelled,
    /// Allowed and recorded; the gateway has not answered yet (being forwarded, or the
    /// process stopped while it was).
    Accepted,
    /// The gateway accepted it.
    Sent,
    /// The gateway refused it, could not be reached, or reported that it could not send it.
    Failed,
    /// The gateway reported that it reached the handset.
    Delivered,
    /// The gateway reported that the carrier did not deliver it.
    Undelivered,
}

impl MessageStatus {
    pub const ALL: [MessageStatus; 8] = [
        MessageStatus::Denied,
        MessageStatus::Scheduled,
        MessageStatus::Cancelled,
        MessageStatus::Accepted,
        MessageStatus::Sent,
        MessageStatus::Failed,
        MessageStatus::Delivered,
        MessageStatus::Undelivered,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            MessageStatus::Denied => "denied",
            MessageStatus::Scheduled => "scheduled",
            MessageStatus::Cancelled => "cancelled",
            MessageStatus::Accepted => "accepted",
            MessageStatus::Sent => "sent",
            MessageStatus::Failed => "failed",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Undelivered => "undelivered",
        }
    }
}

impl From<OutcomeStatus> for MessageStatus {
    fn from(outcome: OutcomeStatus) -> MessageStatus {
        match outcome {
            OutcomeStatus::Sent => MessageStatus::Sent,
            OutcomeStatus::Failed => MessageStatus::Failed,
            OutcomeStatus::Delivered => MessageStatus::Delivered,
            OutcomeStatus::Undelivered => MessageStatus::Undelivered,
        }
    }
}

/// An upstream outcome, appended after the call.
#[derive(Debug, Clone)]
pub struct OutcomeRecord {
    pub message_id: MessageId,
    /// The message's tenant and recipient (its hash), which the outcome's leaf carries. The
    /// flow has them from the message it forwarded, so the write need not read the message
    /// first (on PostgreSQL that read was a round trip of its own on every send).
    pub tenant: TenantId,
    pub recipient_hash: String,
    pub recorded_at_us: i64,
    pub status: OutcomeStatus,
    pub upstream_message_id: Option<String>,
    pub error_code: Option<String>,
    pub detail: Option<String>,
}

/// The message a gateway's delivery status is about.
#[derive(Debug, Clone)]
pub struct GatewayMessage {
    pub id: MessageId,
    pub tenant: TenantId,
    pub recipient_hash: String,
    /// Where its statuses go, as the sender asked (JSON of a `StatusCallback`).
    pub status_callback: Option<String>,
}

/// A message as `GET /v1/messages/{id}` shows it: no body, masked numbers.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub id: String,
    pub created_at_us: i64,
    pub recipient: String,
    pub sender: String,
    pub purpose: String,
    pub decision: String,
    pub reasons: serde_json::Value,
    pub upstream: Option<String>,
    /// Where the message stands ([`MessageStatus`]).
    pub status: MessageStatus,
    /// For a deferred message: when it is due.
    pub release_at: Option<String>,
    pub upstream_message_id: Option<String>,
    pub error_code: Option<String>,
}

/// One event of the consent ledger as stored.
#[derive(Debug, Clone)]
pub struct ConsentRecord {
    pub id: String,
    pub tenant: TenantId,
    pub recipient_hash: String,
    pub recipient_masked: String,
    pub action: Action,
    pub level: Option<Level>,
    pub brand: Option<String>,
    pub campaign: Option<String>,
    /// Space-separated purposes, sorted; empty for every purpose.
    pub purposes: String,
    pub method: String,
    pub occurred_at_us: i64,
    pub recorded_at_us: i64,
    /// The JWT subject that recorded it.
    pub recorded_by: String,
    pub external_id: Option<String>,
    /// Unique per tenant: the external id, or a hash of the event's content.
    pub idempotency_key: String,
    pub key_id: String,
    /// The sealed evidence (and the full number).
    pub evidence: Vec<u8>,
}

/// A ledger row with its position.
#[derive(Debug, Clone)]
pub struct StoredConsent {
    pub seq: i64,
    pub record: ConsentRecord,
}

impl StoredConsent {
    /// The event as the consent fold reads it. A row that does not parse is an error: the
    /// caller must not guess at consent.
    pub fn to_event(&self) -> Result<ConsentEvent, StoreError> {
        let record = &self.record;
        let purposes = record
            .purposes
            .split_whitespace()
            .map(|p| p.parse::<Purpose>())
            .collect::<Result<_, _>>()
            .map_err(StoreError::Corrupt)?;
        let occurred_at = Timestamp::from_microsecond(record.occurred_at_us)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(ConsentEvent {
            id: record.id.clone(),
            seq: self.seq,
            action: record.action,
            level: record.level,
            scope: Scope {
                brand: record.brand.clone(),
                campaign: record.campaign.clone(),
            },
            purposes: Purposes(purposes),
            occurred_at,
            number_reassigned: crate::consent::is_number_change(&record.method),
        })
    }
}

/// What the send path reads about a recipient before deciding.
#[derive(Debug, Clone, Default)]
pub struct RecipientFacts {
    /// The consent events, as the fold reads them (no evidence).
    pub consent: Vec<ConsentEvent>,
    pub confirmed_opt_outs: Vec<String>,
    pub open_reviews: Vec<String>,
    /// Microseconds since the epoch of each recent message of the purpose.
    pub recent_us: Vec<i64>,
    /// The recipient's key in the tenant, if it has one yet: its message is sealed under it.
    pub recipient_key: Option<RecipientKeyRow>,
}

/// What a send asks about its recipient ([`Ledger::recipient_facts`]).
#[derive(Debug, Clone, Copy)]
pub struct FactsQuery<'a> {
    pub recipient_hash: &'a str,
    pub purpose: &'a str,
    /// `(since_us, limit)`: the instants of the latest `limit` messages of `purpose` sent
    /// since `since_us` (for frequency caps); `None` when no cap applies.
    pub recent: Option<(i64, i64)>,
}

/// A verified inbound message as stored.
#[derive(Debug, Clone)]
pub struct InboundRecord {
    pub id: String,
    pub upstream: String,
    pub gateway_id: String,
    /// Empty when no tenant owns the number written to.
    pub tenant: String,
    pub recipient_hash: String,
    pub recipient_masked: String,
    pub to_masked: String,
    pub class: &'static str,
    pub certain: bool,
    pub consent_event: Option<String>,
    pub received_at_us: i64,
    pub key_id: String,
    pub payload: Vec<u8>,
}

/// An uncertain opt-out awaiting a person.
#[derive(Debug, Clone)]
pub struct ReviewRecord {
    pub id: String,
    pub tenant: TenantId,
    pub recipient_hash: String,
    pub recipient_masked: String,
    pub inbound_id: String,
    pub created_at_us: i64,
}

/// A review as listed, with its resolution if it has one.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewView {
    pub id: String,
    pub recipient: String,
    /// Not shown: for taking the recipient's turn when the review is resolved.
    #[serde(skip)]
    pub recipient_hash: String,
    pub inbound_id: String,
    pub created_at_us: i64,
    pub outcome: Option<String>,
    pub resolved_by: Option<String>,
    pub consent_event: Option<String>,
}

/// How many of a tenant's messages got one decision, for one headline reason, in one span of
/// time (the console's chart of decisions over time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionCount {
    /// The start of the span, microseconds.
    pub bucket_us: i64,
    pub decision: String,
    /// The first reason's code; none for an allowed message.
    pub reason: Option<String>,
    pub count: i64,
}

/// A reply from a number as the console lists it: what it was taken for, never its text.
#[derive(Debug, Clone, Serialize)]
pub struct ReplyView {
    pub id: String,
    pub upstream: String,
    /// The number that replied, masked.
    pub from: String,
    /// The tenant's number it was sent to, masked.
    pub to: String,
    /// The keyword class it was taken for (`opt_out`, `opt_in`, `help`, `other`).
    pub class: String,
    pub certain: bool,
    /// The consent event it recorded, if any.
    pub consent_event: Option<String>,
    pub received_at_us: i64,
}

/// How a review was resolved.
#[derive(Debug, Clone)]
pub struct ResolutionRecord {
    pub review_id: String,
    pub outcome: &'static str,
    pub resolved_by: String,
    pub resolved_at_us: i64,
    pub consent_event: Option<String>,
}

/// A delivery to a tenant's webhook.
#[derive(Debug, Clone)]
pub struct OutboxRecord {
    pub id: String,
    pub tenant: TenantId,
    pub created_at_us: i64,
    pub key_id: String,
    pub payload: Vec<u8>,
    pub next_attempt_at_us: i64,
    /// A URL of its own (an application's StatusCallback) instead of the tenant's webhook.
    pub url: Option<String>,
    /// How to send to `url`: `twilio` (a form, signed as Twilio signs).
    pub format: Option<String>,
}

/// A delivery that is due, with its attempts so far.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub record: OutboxRecord,
    pub attempts: i64,
}

/// What recording an inbound message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundRecorded {
    New,
    /// The gateway delivered this message before; nothing was added.
    Duplicate,
}

/// What resolving a review did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Done,
    AlreadyResolved,
    NotFound,
}

/// What recording an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    New,
    /// The same event was recorded before, under this id.
    Duplicate(String),
}

/// An entry of the verifiable log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its place in the tree; `None` until the sequencer gives it one.
    pub leaf_index: Option<i64>,
    pub kind: Kind,
    pub ref_id: String,
    pub tenant: String,
    pub leaf_hash: Hash,
}

/// The tree as it stands: its size and root hash; and how many pending entries the call that
/// answered it gave indexes to (entries written with their index, as the SQLite writer's
/// are, are not counted: they were never pending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHead {
    pub size: u64,
    pub root: Hash,
    pub indexed: u64,
}

/// What the audit lists may be filtered by.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub recipient_hash: Option<String>,
    /// Inclusive lower bound of the row's time, microseconds.
    pub from_us: Option<i64>,
    /// Exclusive upper bound of the row's time, microseconds.
    pub to_us: Option<i64>,
    /// Messages: `allowed`, `denied` or `deferred`. Consent events: `opt_in` or `opt_out`.
    pub decision: Option<String>,
}

/// A message record as the audit API lists it, with its place in the log.
#[derive(Debug, Clone)]
pub struct AuditedMessage {
    pub leaf_index: i64,
    pub record: MessageRecord,
    /// Its leaf's link to the previous leaf about the recipient.
    pub link: crate::audit::leaf::Link,
    /// The latest upstream outcome, if any.
    pub outcome: Option<String>,
}

/// A consent event as the audit API lists it, with its place in the log.
#[derive(Debug, Clone)]
pub struct AuditedConsent {
    pub leaf_index: i64,
    pub record: ConsentRecord,
    /// Its leaf's link to the previous leaf about the recipient.
    pub link: crate::audit::leaf::Link,
}

/// A data key as stored: wrapped by the key-encryption key.
#[derive(Debug, Clone)]
pub struct DataKeyRow {
    pub id: String,
    pub wrapped: Vec<u8>,
    pub created_at_us: i64,
    pub retired_at_us: Option<i64>,
}

/// A recipient's key as stored: wrapped by a data key.
#[derive(Debug, Clone)]
pub struct RecipientKeyRow {
    pub tenant: String,
    pub recipient_hash: String,
    pub id: String,
    pub data_key_id: String,
    pub wrapped: Vec<u8>,
    pub created_at_us: i64,
}

/// A lock on one recipient held across every process that shares the database, from reading
/// the facts to recording the decision: the in-process lock does the same within a process.
/// On PostgreSQL it is a transaction-scoped advisory lock in an open transaction: the facts
/// are read and the record written in that transaction, whose commit releases the lock.
/// Release it with [`RecipientLock::release`] if nothing committed it; dropped unreleased, its
/// transaction rolls back, which releases it as surely.
pub enum RecipientLock {
    /// SQLite has one process.
    Local,
    Postgres(postgres::AdvisoryLock),
}

impl RecipientLock {
    pub async fn release(self) {
        if let RecipientLock::Postgres(lock) = self {
            lock.release().await;
        }
    }
}

/// The advisory-lock key of a recipient: the first 8 bytes of its keyed hash.
pub fn lock_key(recipient_hash: &str) -> i64 {
    let bytes: Vec<u8> = (0..16)
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(recipient_hash.get(i..i + 2)?, 16).ok())
        .collect();
    let mut key = [0u8; 8];
    key[..bytes.len()].copy_from_slice(&bytes);
    i64::from_be_bytes(key)
}

/// The database itself: whether it answers, how it groups writes, and the settings every
/// instance shares.
/// What waits in the store, read at each metrics scrape.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepths {
    pub deferred: i64,
    /// When the earliest deferred message is due.
    pub earliest_release_us: Option<i64>,
    pub outbox_pending: i64,
    pub log_unsequenced: i64,
}

#[async_trait]
pub trait Database: Send + Sync + 'static {
    /// Succeeds when the database takes a durable write (readiness: a send could be logged).
    async fn ping(&self) -> Result<(), StoreError>;

    /// How the send path's writes were grouped into transactions so far, where the backend
    /// groups them (`batches=… writes=… sizes=1:…,2-3:…`).
    fn write_batches(&self) -> Option<String> {
        None
    }

    /// The same, as counts by size bucket (`1`, `2-3`, ...), for the metrics.
    fn write_batch_counts(&self) -> Vec<(String, u64)> {
        Vec::new()
    }

    /// What waits: deferred messages, deliveries to tenants, log entries not yet sequenced.
    async fn queue_depths(&self) -> Result<QueueDepths, StoreError>;

    /// Records `value` under `name` if nothing is recorded yet, and returns what is recorded
    /// (the first instance's value).
    async fn setting(&self, name: &str, value: &str) -> Result<String, StoreError>;
}

/// The consent ledger and what the send path reads about a recipient, under the lock that
/// orders one recipient's decisions (`AppState::recipient_turn`).
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Takes the lock on recipients (one, or a group decided together) that all processes
    /// sharing the database respect, each recipient's in the order of its key.
    async fn lock_recipients(&self, recipient_hashes: &[&str])
    -> Result<RecipientLock, StoreError>;

    /// Appends consent events in one transaction; an event whose idempotency key is already
    /// in the tenant's ledger is not added again. Given the recipients' lock, in the lock's
    /// own session, as [`Messages::record_messages`].
    async fn record_consents(
        &self,
        records: &[ConsentRecord],
        lock: Option<&mut RecipientLock>,
    ) -> Result<Vec<Recorded>, StoreError>;

    /// A recipient's consent events in a tenant, in ledger order, as decisions read them: an
    /// opt-in without a log entry (written outside consentry) is left out.
    async fn consent_events(
        &self,
        tenant: &TenantId,
        recipient_hash: &str,
    ) -> Result<Vec<StoredConsent>, StoreError>;

    /// Everything the send path reads about recipients in a tenant, one answer per query in
    /// its order: the consent ledger, confirmations, open reviews, the recent sends a cap
    /// counts, and the recipient's key. All read in one transaction (one state of the
    /// database); under the recipients' `lock`, where the backend reads in the lock's session.
    async fn recipient_facts(
        &self,
        tenant: &TenantId,
        queries: &[FactsQuery<'_>],
        lock: Option<&mut RecipientLock>,
    ) -> Result<Vec<RecipientFacts>, StoreError>;
}

/// Message records, their outcomes and release decisions, the deferred messages' claims, and
/// reading a message back.
#[async_trait]
pub trait Messages: Send + Sync + 'static {
    /// Durably appends message records, all or none, in one transaction. Given the
    /// recipients' lock, they are written in the lock's own session: if that session ended
    /// (and the lock with it), the write fails rather than land after another instance
    /// decided without seeing it.
    async fn record_messages(
        &self,
        records: &[MessageRecord],
        lock: Option<&mut RecipientLock>,
    ) -> Result<(), StoreError>;

    /// Durably appends an upstream outcome.
    async fn record_outcome(&self, outcome: &OutcomeRecord) -> Result<(), StoreError>;

    /// Deferred messages due at `now_us`, each claimed for this caller: a message is returned
    /// by one call only.
    async fn claim_due(&self, now_us: i64, limit: i64) -> Result<Vec<DeferredMessage>, StoreError>;

    /// Gives back what a `claim_due(claimed_at_us, …)` claimed and no release took up (a
    /// stopping instance's), so that its restart or another instance releases it at once
    /// instead of after the claim's lease. A message since released, re-armed or claimed again
    /// is left as it is. How many were given back.
    async fn give_back(&self, ids: &[MessageId], claimed_at_us: i64) -> Result<u64, StoreError>;

    /// Records the decisions at releases (and re-arms the messages deferred again), all or
    /// none, in one transaction. Given the recipients' lock, in the lock's own session, as
    /// [`Messages::record_messages`].
    async fn record_releases(
        &self,
        releases: &[ReleaseRecord],
        lock: Option<&mut RecipientLock>,
    ) -> Result<(), StoreError>;

    /// Queues an allowed message again, in one transaction: it (re)enters the deferred queue at
    /// `release.release_again_at_us` and `release` (a deferral: the gateway throttled it) is
    /// appended to its releases. The scheduler decides it again then.
    async fn requeue(&self, tenant: &TenantId, release: &ReleaseRecord) -> Result<(), StoreError>;

    /// Calls off a tenant's deferred message that no release has claimed, in one transaction:
    /// it leaves the queue and `release` (a denial) is appended to its releases. Whether it was
    /// called off by this call: a message already released, being released, called off
    /// before, not deferred or not the tenant's is left as it is.
    async fn cancel_deferred(
        &self,
        tenant: &TenantId,
        release: &ReleaseRecord,
    ) -> Result<bool, StoreError>;

    /// A tenant's message, with its latest outcome; another tenant's message is `None`.
    async fn message(
        &self,
        tenant: &TenantId,
        id: &MessageId,
    ) -> Result<Option<MessageView>, StoreError>;

    /// The message an upstream's message id belongs to.
    async fn message_by_gateway_id(
        &self,
        upstream: &str,
        gateway_message_id: &str,
    ) -> Result<Option<GatewayMessage>, StoreError>;

    /// The sealed payload of a tenant's message.
    async fn message_payload(
        &self,
        tenant: &TenantId,
        id: &MessageId,
    ) -> Result<Option<crate::crypto::Sealed>, StoreError>;

    /// Messages in doubt: allowed in `[since_us, until_us)`, at their send or at their latest
    /// release, and with no gateway answer recorded. An instance stopped between the two (a
    /// `kill -9`, a crash, a write of the answer that failed), so the gateway may or may not
    /// have them. Oldest first, at most `limit`. Reads the period's messages and every release.
    async fn in_doubt(
        &self,
        since_us: i64,
        until_us: i64,
        limit: i64,
    ) -> Result<Vec<InDoubt>, StoreError>;
}

/// A message in doubt (`Messages::in_doubt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InDoubt {
    pub id: String,
    pub tenant: String,
    /// When the decision that allowed it was taken.
    pub allowed_at_us: i64,
    /// `send` (allowed as it was sent) or `release` (allowed when it came due).
    pub allowed_by: String,
}

/// Recipients' replies as recorded, and the reviews of uncertain opt-outs.
#[async_trait]
pub trait Inbound: Send + Sync + 'static {
    /// Records an inbound message and what it causes, in one transaction: all or nothing, and
    /// nothing at all if the gateway delivered it before. Given the recipient's lock, in the
    /// lock's own session, as [`Messages::record_messages`].
    async fn record_inbound(
        &self,
        inbound: &InboundRecord,
        consent: Option<&ConsentRecord>,
        review: Option<&ReviewRecord>,
        outbox: &[OutboxRecord],
        lock: Option<&mut RecipientLock>,
    ) -> Result<InboundRecorded, StoreError>;

    /// The sealed payload of a tenant's inbound message.
    async fn inbound_payload(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<crate::crypto::Sealed>, StoreError>;

    /// A tenant's reviews, newest first (at most 1,000); only the open ones if `open_only`,
    /// only one recipient's if `recipient_hash` names it.
    async fn reviews(
        &self,
        tenant: &TenantId,
        open_only: bool,
        recipient_hash: Option<&str>,
    ) -> Result<Vec<ReviewView>, StoreError>;

    /// One of a tenant's reviews.
    async fn review(&self, tenant: &TenantId, id: &str) -> Result<Option<ReviewView>, StoreError>;

    /// A number's replies to a tenant, newest first, at most `limit`.
    async fn replies(
        &self,
        tenant: &TenantId,
        recipient_hash: &str,
        limit: i64,
    ) -> Result<Vec<ReplyView>, StoreError>;

    /// Resolves a review (once), with the opt-out it leads to, in one transaction. Given the
    /// recipient's lock, in the lock's own session, as [`Messages::record_messages`].
    async fn resolve_review(
        &self,
        tenant: &TenantId,
        resolution: &ResolutionRecord,
        consent: Option<&ConsentRecord>,
        lock: Option<&mut RecipientLock>,
    ) -> Result<Resolved, StoreError>;
}

/// Deliveries to tenants' webhooks and applications' status callbacks.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Queues a delivery to a tenant's webhook.
    async fn enqueue_delivery(&self, delivery: &OutboxRecord) -> Result<(), StoreError>;

    /// Deliveries due at `now_us`, oldest first.
    async fn due_deliveries(&self, now_us: i64, limit: i64) -> Result<Vec<OutboxItem>, StoreError>;

    /// Marks a delivery done.
    async fn delivery_succeeded(&self, id: &str, at_us: i64) -> Result<(), StoreError>;

    /// Records a failed attempt and when to try again.
    async fn delivery_failed(
        &self,
        id: &str,
        attempts: i64,
        next_attempt_at_us: i64,
        error: &str,
    ) -> Result<(), StoreError>;
}

/// The verifiable log. Writing a logged row (message, consent event, body access, erasure)
/// adds its log entry in the same transaction: this trait sequences the entries, stores the
/// subtrees and checkpoints, lists the logged rows for the audit API, and records body
/// accesses and erasures.
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Gives up to `limit` pending entries their leaf indexes, in order, and stores the
    /// subtrees they complete; returns the tree after. `None` when another process holds the
    /// sequencer's lock (it is sequencing).
    async fn sequence_log(&self, limit: i64) -> Result<Option<LogHead>, StoreError>;

    /// Stored perfect subtrees; a missing one is an error (the tree is damaged).
    async fn log_nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError>;

    /// The number of sequenced entries.
    async fn log_size(&self) -> Result<u64, StoreError>;

    /// Sequenced entries with `leaf_index > after`, in order.
    async fn log_entries(&self, after: i64, limit: i64) -> Result<Vec<LogEntry>, StoreError>;

    /// The entry of a row.
    async fn log_entry(&self, kind: Kind, ref_id: &str) -> Result<Option<LogEntry>, StoreError>;

    /// The leaf of a logged row, rebuilt from the row as stored now; `None` if the row is gone.
    async fn leaf_of(&self, kind: Kind, ref_id: &str) -> Result<Option<Leaf>, StoreError>;

    /// For each logged kind: its table's rows and its log entries (sequenced or pending),
    /// counted in one snapshot.
    async fn logged_row_counts(&self) -> Result<Vec<(Kind, i64, i64)>, StoreError>;

    /// The ids of up to `limit` rows of `kind` that have no log entry: rows added outside the
    /// log, which `audit verify` names.
    async fn unlogged_rows(&self, kind: Kind, limit: i64) -> Result<Vec<String>, StoreError>;

    /// Stores a signed checkpoint (a second one for the same size is ignored).
    async fn record_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError>;

    /// Checkpoints with `tree_size > after`, smallest first.
    async fn checkpoints(&self, after: i64, limit: i64) -> Result<Vec<Checkpoint>, StoreError>;

    /// The latest checkpoint.
    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError>;

    /// The checkpoint for a tree size.
    async fn checkpoint(&self, tree_size: i64) -> Result<Option<Checkpoint>, StoreError>;

    /// Stores a witness's cosignature of the checkpoint of `tree_size` (a second one by the
    /// same witness for the same size is ignored).
    async fn record_cosignature(
        &self,
        tree_size: u64,
        cosignature: &Cosignature,
    ) -> Result<(), StoreError>;

    /// The cosignatures of the checkpoints with `from <= tree_size <= to`, smallest first.
    async fn cosignatures(&self, from: i64, to: i64)
    -> Result<Vec<(u64, Cosignature)>, StoreError>;

    /// The largest tree size `witness` cosigned.
    async fn latest_cosigned(&self, witness: &str) -> Result<Option<u64>, StoreError>;

    /// A number's sequenced leaves other than its consent events and message records, in log
    /// order: its erasures, and the reads of its messages' bodies (`kind`, `ref_id`,
    /// `leaf_index`), at most `limit`.
    async fn number_other_leaves(
        &self,
        tenant: &TenantId,
        recipient_hash: &str,
        limit: i64,
    ) -> Result<Vec<(Kind, String, i64)>, StoreError>;

    /// The largest tree size cosigned by at least `witnesses` witnesses.
    async fn latest_cosigned_by(&self, witnesses: i64) -> Result<Option<u64>, StoreError>;

    /// A tenant's sequenced message records with `leaf_index > after`, in log order.
    /// How many of a tenant's messages made at `from_us` or later and before `to_us` got each
    /// decision and headline reason, by span of `bucket_us` from `from_us`.
    async fn decision_counts(
        &self,
        tenant: &TenantId,
        from_us: i64,
        to_us: i64,
        bucket_us: i64,
    ) -> Result<Vec<DecisionCount>, StoreError>;

    async fn audit_messages(
        &self,
        tenant: &TenantId,
        filter: &AuditFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditedMessage>, StoreError>;

    /// A tenant's sequenced consent events with `leaf_index > after`, in log order.
    async fn audit_consents(
        &self,
        tenant: &TenantId,
        filter: &AuditFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditedConsent>, StoreError>;

    /// A tenant's message record with the sealed body.
    async fn audited_message(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<MessageRecord>, StoreError>;

    /// Records (and logs) that someone read a message body, before they get it.
    async fn record_body_access(&self, access: &BodyAccess) -> Result<(), StoreError>;

    /// Deletes a recipient's keys and records (and logs) the erasure, in one transaction;
    /// returns how many keys were destroyed.
    async fn erase_recipient(&self, erasure: &Erasure) -> Result<i64, StoreError>;
}

/// Data keys (wrapped by the key-encryption key) and recipients' keys (wrapped by a data key).
#[async_trait]
pub trait Keys: Send + Sync + 'static {
    /// Every data key, oldest first.
    async fn data_keys(&self) -> Result<Vec<DataKeyRow>, StoreError>;

    /// Adds a data key; with `retire_others`, every other key stops sealing at its creation.
    async fn add_data_key(&self, key: &DataKeyRow, retire_others: bool) -> Result<(), StoreError>;

    /// Reserves `count` more seals under a data key; false if that would pass `limit` or the
    /// key is retired.
    async fn reserve_key_uses(&self, id: &str, count: i64, limit: i64) -> Result<bool, StoreError>;

    /// A recipient's key in a tenant.
    async fn recipient_key(
        &self,
        tenant: &str,
        recipient_hash: &str,
    ) -> Result<Option<RecipientKeyRow>, StoreError>;

    /// A recipient key by its id.
    async fn recipient_key_by_id(&self, id: &str) -> Result<Option<RecipientKeyRow>, StoreError>;

    /// Adds a recipient key unless the recipient has one; returns the one that is stored.
    async fn add_recipient_key(&self, key: &RecipientKeyRow)
    -> Result<RecipientKeyRow, StoreError>;
}

/// A request's claim on an idempotency key.
#[derive(Debug, Clone)]
pub struct KeyClaim {
    pub tenant: String,
    pub key: String,
    /// SHA-256 of what the request asked (route, content type, body).
    pub request_hash: Vec<u8>,
    pub now_us: i64,
    pub expires_at_us: i64,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The key is this request's: nothing was done with it before (or its answer expired).
    Fresh,
    /// A request with the key has not answered yet (or was interrupted: fail closed).
    InUse { since_us: i64 },
    /// The key was used for another request.
    Mismatch,
    /// The key's first answer.
    Answered(KeyAnswer),
}

/// The first answer to a key, sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAnswer {
    pub status: u16,
    pub content_type: String,
    pub key_id: String,
    pub sealed: Vec<u8>,
    /// The message's recipient, when the request named one: its erasure deletes the answer.
    pub recipient_hash: Option<String>,
}

/// A key's row as stored, for [`classify`].
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub request_hash: Vec<u8>,
    pub created_at_us: i64,
    pub expires_at_us: i64,
    /// Present once the first request answered.
    pub answer: Option<KeyAnswer>,
}

impl StoredKey {
    /// The row from its columns ([`STORED_KEY_COLUMNS`]).
    #[allow(clippy::too_many_arguments)]
    pub fn from_columns(
        request_hash: Vec<u8>,
        created_at_us: i64,
        expires_at_us: i64,
        state: &str,
        status: Option<i64>,
        content_type: Option<String>,
        key_id: Option<String>,
        answer: Option<Vec<u8>>,
        recipient_hash: Option<String>,
    ) -> StoredKey {
        let answer = match (state, status, content_type, key_id, answer) {
            ("answered", Some(status), Some(content_type), Some(key_id), Some(sealed)) => {
                Some(KeyAnswer {
                    status: u16::try_from(status).unwrap_or(500),
                    content_type,
                    key_id,
                    sealed,
                    recipient_hash,
                })
            }
            _ => None,
        };
        StoredKey {
            request_hash,
            created_at_us,
            expires_at_us,
            answer,
        }
    }
}

/// What a claim finds, given the key's row: the one rule both backends apply.
pub fn classify(existing: Option<StoredKey>, claim: &KeyClaim) -> Claimed {
    match existing {
        None => Claimed::Fresh,
        Some(stored) if stored.expires_at_us <= claim.now_us => Claimed::Fresh,
        Some(stored) if stored.request_hash != claim.request_hash => Claimed::Mismatch,
        Some(StoredKey {
            answer: Some(answer),
            ..
        }) => Claimed::Answered(answer),
        Some(stored) => Claimed::InUse {
            since_us: stored.created_at_us,
        },
    }
}

/// The columns of `idempotency_keys` that [`StoredKey`] is read from, in this order.
pub const STORED_KEY_COLUMNS: &str = "request_hash, created_at_us, expires_at_us, state, status, \
     content_type, key_id, answer, recipient_hash";

/// Idempotency keys of sends (`http::idempotency`).
#[async_trait]
pub trait IdempotencyKeys: Send + Sync + 'static {
    /// Claims a key for a request, durably, or says what holds it.
    async fn claim_key(&self, claim: &KeyClaim) -> Result<Claimed, StoreError>;
    /// Keeps a claimed key's answer. Returns once any later claim of the key will see it.
    async fn answer_key(
        &self,
        tenant: &str,
        key: &str,
        answer: &KeyAnswer,
    ) -> Result<(), StoreError>;
    /// Gives a claimed key up: nothing was sent, a retry may run again.
    async fn release_key(&self, tenant: &str, key: &str) -> Result<(), StoreError>;
    /// Deletes the keys that expired before `now_us`; returns how many.
    async fn purge_keys(&self, now_us: i64) -> Result<u64, StoreError>;
}

/// Everything a backend stores, for what needs all of it (`open`, the wiring, `AppState`); a
/// flow or worker names the part it uses instead.
pub trait Store:
    Database + Ledger + Messages + Inbound + Outbox + AuditLog + Keys + IdempotencyKeys
{
}

impl<
    T: Database + Ledger + Messages + Inbound + Outbox + AuditLog + Keys + IdempotencyKeys + ?Sized,
> Store for T
{
}

/// Opens the store a database URL names.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(std::sync::Arc::new(postgres::PgStore::open(url).await?))
    } else {
        Err(StoreError::Unsafe(format!(
            "unsupported database URL scheme in {:?}",
            url.split(':').next().unwrap_or_default()
        )))
    }
}

/// Derives a message's status from its decision, its latest release decision (deferred
/// messages) and its latest outcome.
pub fn status_of(
    decision: &str,
    latest_release: Option<&str>,
    latest_outcome: Option<&str>,
) -> Result<MessageStatus, StoreError> {
    Ok(match (decision, latest_release, latest_outcome) {
        ("denied", _, _) => MessageStatus::Denied,
        ("deferred", None, _) => MessageStatus::Scheduled,
        // Deferred at its last release, or queued again after the gateway throttled it.
        (_, Some("deferred"), _) => MessageStatus::Scheduled,
        (_, Some("denied"), _) => MessageStatus::Cancelled,
        (_, _, Some(status)) => OutcomeStatus::parse(status)
            .ok_or_else(|| StoreError::Corrupt(format!("an outcome of status {status:?}")))?
            .into(),
        (_, _, None) => MessageStatus::Accepted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_messages_status_follows_its_decision_release_and_outcome() {
        use MessageStatus::*;
        let cases: [(&str, Option<&str>, Option<&str>, MessageStatus); 12] = [
            ("allowed", Some("deferred"), None, Scheduled),
            ("allowed", Some("denied"), None, Cancelled),
            ("denied", None, None, Denied),
            ("deferred", None, None, Scheduled),
            ("deferred", Some("deferred"), None, Scheduled),
            ("deferred", Some("denied"), None, Cancelled),
            ("deferred", Some("allowed"), None, Accepted),
            ("deferred", Some("allowed"), Some("sent"), Sent),
            ("allowed", None, None, Accepted),
            ("allowed", None, Some("failed"), Failed),
            ("allowed", None, Some("delivered"), Delivered),
            ("allowed", None, Some("undelivered"), Undelivered),
        ];
        for (decision, release, outcome, expected) in cases {
            assert_eq!(
                status_of(decision, release, outcome).unwrap(),
                expected,
                "{decision} {release:?} {outcome:?}"
            );
        }
        assert!(matches!(
            status_of("allowed", None, Some("lost")),
            Err(StoreError::Corrupt(_))
        ));
    }
}
