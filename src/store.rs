//! Storage: the [`Store`] interface and its records. The send path needs only these operations;
//! each backend (SQLite now, PostgreSQL later, both from `migrations/`) implements them with
//! runtime-checked `sqlx::query` so one binary serves either.
//!
//! Invariants every backend keeps: a record is durable when `record_message` returns (the
//! upstream is called only after); message rows and outcomes are append-only; no body and no
//! full phone number is written readable.

pub mod sqlite;

use async_trait::async_trait;
use serde::Serialize;

use jiff::Timestamp;

use crate::consent::{Action, ConsentEvent, Level, Purposes};
use crate::domain::{MessageId, Purpose, Scope, TenantId};

/// A storage failure. The send path answers it with 503 and forwards nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
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
}

impl DecisionKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            DecisionKind::Allowed => "allowed",
            DecisionKind::Denied => "denied",
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
    /// The reasons as a JSON array of `{code, detail}`.
    pub reasons_json: String,
    pub upstream: Option<String>,
    pub key_id: String,
    pub payload: Vec<u8>,
}

/// What the upstream answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    Sent,
    Failed,
}

impl OutcomeStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            OutcomeStatus::Sent => "sent",
            OutcomeStatus::Failed => "failed",
        }
    }
}

/// An upstream outcome, appended after the call.
#[derive(Debug, Clone)]
pub struct OutcomeRecord {
    pub message_id: MessageId,
    pub recorded_at_us: i64,
    pub status: OutcomeStatus,
    pub upstream_message_id: Option<String>,
    pub error_code: Option<String>,
    pub detail: Option<String>,
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
    /// `denied`, `accepted` (allowed, no outcome yet), `sent` or `failed`.
    pub status: String,
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
        })
    }
}

/// What recording an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    New,
    /// The same event was recorded before, under this id.
    Duplicate(String),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Succeeds when the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Durably appends a message record.
    async fn record_message(&self, record: &MessageRecord) -> Result<(), StoreError>;

    /// Durably appends an upstream outcome.
    async fn record_outcome(&self, outcome: &OutcomeRecord) -> Result<(), StoreError>;

    /// Appends consent events in one transaction; an event whose idempotency key is already
    /// in the tenant's ledger is not added again.
    async fn record_consents(&self, records: &[ConsentRecord])
    -> Result<Vec<Recorded>, StoreError>;

    /// A recipient's consent events in a tenant, in ledger order.
    async fn consent_events(
        &self,
        tenant: &TenantId,
        recipient_hash: &str,
    ) -> Result<Vec<StoredConsent>, StoreError>;

    /// A tenant's message, with its latest outcome; another tenant's message is `None`.
    async fn message(
        &self,
        tenant: &TenantId,
        id: &MessageId,
    ) -> Result<Option<MessageView>, StoreError>;
}

/// Opens the store a database URL names.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(sqlite::SqliteStore::open(url).await?))
    } else {
        Err(StoreError::Unsafe(format!(
            "unsupported database URL scheme in {:?}",
            url.split(':').next().unwrap_or_default()
        )))
    }
}

/// Derives a message's status from its decision and latest outcome.
pub fn status_of(decision: &str, latest_outcome: Option<&str>) -> String {
    match (decision, latest_outcome) {
        ("denied", _) => "denied".into(),
        (_, Some(status)) => status.into(),
        (_, None) => "accepted".into(),
    }
}
