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

use crate::domain::{MessageId, TenantId};

/// A storage failure. The send path answers it with 503 and forwards nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("the database is not configured safely: {0}")]
    Unsafe(String),
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

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Succeeds when the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Durably appends a message record.
    async fn record_message(&self, record: &MessageRecord) -> Result<(), StoreError>;

    /// Durably appends an upstream outcome.
    async fn record_outcome(&self, outcome: &OutcomeRecord) -> Result<(), StoreError>;

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
