//! The SQLite backend: one file in WAL mode with `synchronous=FULL`, so a committed record
//! survives a power loss; both settings are checked at start-up, not just requested.

use std::str::FromStr as _;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{
    ConsentRecord, MessageRecord, MessageView, OutcomeRecord, Recorded, Store, StoreError,
    StoredConsent, status_of,
};
use crate::consent::{Action, Level};
use crate::domain::{MessageId, TenantId};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database, applies migrations and checks durability.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        MIGRATIONS.run(&pool).await?;
        let store = SqliteStore { pool };
        store.check_durability().await?;
        Ok(store)
    }

    async fn check_durability(&self) -> Result<(), StoreError> {
        let mut connection = self.pool.acquire().await?;
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *connection)
            .await?;
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *connection)
            .await?;
        if !journal.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unsafe(format!(
                "journal_mode is {journal}, expected wal"
            )));
        }
        // 2 is FULL, 3 is EXTRA: both sync the WAL on every commit.
        if synchronous < 2 {
            return Err(StoreError::Unsafe(format!(
                "synchronous is {synchronous}, expected FULL (2) or EXTRA (3)"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn record_message(&self, record: &MessageRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO messages (id, tenant, created_at_us, recipient_hash, recipient_masked, \
             sender_masked, purpose, brand, campaign, decision, reasons, upstream, key_id, \
             payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(record.id.as_str())
        .bind(record.tenant.as_str())
        .bind(record.created_at_us)
        .bind(&record.recipient_hash)
        .bind(&record.recipient_masked)
        .bind(&record.sender_masked)
        .bind(record.purpose)
        .bind(record.brand.as_deref())
        .bind(record.campaign.as_deref())
        .bind(record.decision.as_str())
        .bind(&record.reasons_json)
        .bind(record.upstream.as_deref())
        .bind(&record.key_id)
        .bind(&record.payload)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_outcome(&self, outcome: &OutcomeRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO message_outcomes (message_id, recorded_at_us, status, \
             upstream_message_id, error_code, detail) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(outcome.message_id.as_str())
        .bind(outcome.recorded_at_us)
        .bind(outcome.status.as_str())
        .bind(outcome.upstream_message_id.as_deref())
        .bind(outcome.error_code.as_deref())
        .bind(outcome.detail.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_consents(
        &self,
        records: &[ConsentRecord],
    ) -> Result<Vec<Recorded>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let mut results = Vec::with_capacity(records.len());
        for record in records {
            let inserted = sqlx::query(
                "INSERT INTO consent_events (id, tenant, recipient_hash, recipient_masked, \
                 action, level, brand, campaign, purposes, method, occurred_at_us, \
                 recorded_at_us, recorded_by, external_id, idempotency_key, key_id, evidence) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (tenant, idempotency_key) DO NOTHING",
            )
            .bind(&record.id)
            .bind(record.tenant.as_str())
            .bind(&record.recipient_hash)
            .bind(&record.recipient_masked)
            .bind(record.action.as_str())
            .bind(record.level.map(|level| level.as_str()))
            .bind(record.brand.as_deref())
            .bind(record.campaign.as_deref())
            .bind(&record.purposes)
            .bind(&record.method)
            .bind(record.occurred_at_us)
            .bind(record.recorded_at_us)
            .bind(&record.recorded_by)
            .bind(record.external_id.as_deref())
            .bind(&record.idempotency_key)
            .bind(&record.key_id)
            .bind(&record.evidence)
            .execute(&mut *transaction)
            .await?;
            if inserted.rows_affected() == 1 {
                results.push(Recorded::New);
            } else {
                let existing: String = sqlx::query_scalar(
                    "SELECT id FROM consent_events WHERE tenant = ? AND idempotency_key = ?",
                )
                .bind(record.tenant.as_str())
                .bind(&record.idempotency_key)
                .fetch_one(&mut *transaction)
                .await?;
                results.push(Recorded::Duplicate(existing));
            }
        }
        transaction.commit().await?;
        Ok(results)
    }

    async fn consent_events(
        &self,
        tenant: &TenantId,
        recipient_hash: &str,
    ) -> Result<Vec<StoredConsent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, id, tenant, recipient_hash, recipient_masked, action, level, brand, \
             campaign, purposes, method, occurred_at_us, recorded_at_us, recorded_by, \
             external_id, idempotency_key, key_id, evidence FROM consent_events \
             WHERE tenant = ? AND recipient_hash = ? ORDER BY seq",
        )
        .bind(tenant.as_str())
        .bind(recipient_hash)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(consent_from_row).collect()
    }

    async fn message(
        &self,
        tenant: &TenantId,
        id: &MessageId,
    ) -> Result<Option<MessageView>, StoreError> {
        let row = sqlx::query(
            "SELECT m.id, m.created_at_us, m.recipient_masked, m.sender_masked, m.purpose, \
             m.decision, m.reasons, m.upstream, o.status, o.upstream_message_id, o.error_code \
             FROM messages m LEFT JOIN message_outcomes o ON o.seq = \
             (SELECT max(seq) FROM message_outcomes WHERE message_id = m.id) \
             WHERE m.tenant = ? AND m.id = ?",
        )
        .bind(tenant.as_str())
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let decision: String = row.try_get("decision")?;
        let outcome: Option<String> = row.try_get("status")?;
        let reasons: String = row.try_get("reasons")?;
        Ok(Some(MessageView {
            id: row.try_get("id")?,
            created_at_us: row.try_get("created_at_us")?,
            recipient: row.try_get("recipient_masked")?,
            sender: row.try_get("sender_masked")?,
            purpose: row.try_get("purpose")?,
            status: status_of(&decision, outcome.as_deref()),
            decision,
            reasons: serde_json::from_str(&reasons).unwrap_or(serde_json::Value::Null),
            upstream: row.try_get("upstream")?,
            upstream_message_id: row.try_get("upstream_message_id")?,
            error_code: row.try_get("error_code")?,
        }))
    }
}

fn consent_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<StoredConsent, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("consent_events.{what}"));
    let action: String = row.try_get("action")?;
    let level: Option<String> = row.try_get("level")?;
    let tenant: String = row.try_get("tenant")?;
    Ok(StoredConsent {
        seq: row.try_get("seq")?,
        record: ConsentRecord {
            id: row.try_get("id")?,
            tenant: TenantId::parse(&tenant).map_err(|_| corrupt("tenant"))?,
            recipient_hash: row.try_get("recipient_hash")?,
            recipient_masked: row.try_get("recipient_masked")?,
            action: Action::parse(&action).ok_or_else(|| corrupt("action"))?,
            level: match level {
                None => None,
                Some(level) => Some(Level::parse(&level).ok_or_else(|| corrupt("level"))?),
            },
            brand: row.try_get("brand")?,
            campaign: row.try_get("campaign")?,
            purposes: row.try_get("purposes")?,
            method: row.try_get("method")?,
            occurred_at_us: row.try_get("occurred_at_us")?,
            recorded_at_us: row.try_get("recorded_at_us")?,
            recorded_by: row.try_get("recorded_by")?,
            external_id: row.try_get("external_id")?,
            idempotency_key: row.try_get("idempotency_key")?,
            key_id: row.try_get("key_id")?,
            evidence: row.try_get("evidence")?,
        },
    })
}
