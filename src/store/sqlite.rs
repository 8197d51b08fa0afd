//! The SQLite backend: one file in WAL mode with `synchronous=FULL`, so a committed record
//! survives a power loss; both settings are checked at start-up, not just requested.

use std::str::FromStr as _;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::rows::{
    AUDITED_KINDS, CONSENT_COLUMNS, DEFERRED_COLUMNS, LINK_COLUMNS, LOGGED_TABLES, MESSAGE_COLUMNS,
    REPLY_COLUMNS, checkpoint_from_row, consent_from_row, cosignature_from_row, data_key_from_row,
    decision_count_from_row, deferred_from_row, hash_from, head_sql, in_doubt_from_row,
    in_doubt_sql, leaf_from_row, leaf_sql, link_from_row, log_entry_from_row, logged_counts_sql,
    message_from_row, node_position, number_other_leaves_sql, recipient_key_from_row,
    reply_from_row, review_from_row, set_head_sql, unlogged_rows_sql,
};
use super::{
    AuditFilter, AuditLog, AuditedConsent, AuditedMessage, ConsentRecord, DataKeyRow, Database,
    DeferredMessage, GatewayMessage, InDoubt, Inbound, InboundRecord, InboundRecorded, Keys,
    Ledger, LogEntry, LogHead, MessageRecord, MessageView, Messages, Outbox, OutboxItem,
    OutboxRecord, OutcomeRecord, RecipientFacts, RecipientKeyRow, Recorded, ReleaseRecord,
    ResolutionRecord, Resolved, ReviewRecord, ReviewView, StoreError, StoredConsent, status_of,
};
use super::{Claimed, DecisionCount, IdempotencyKeys, KeyAnswer, KeyClaim, QueueDepths, ReplyView};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::leaf::{self, BodyAccess, Erasure, Kind, Leaf, Link};
use crate::audit::merkle::{Hash, NodeId};
use crate::audit::note::Cosignature;
use crate::domain::{MessageId, TenantId};

mod checkpointer;
mod connection;
mod reader;
mod writer;

pub use writer::BatchStats;
use writer::{GroupWriter, Write, Written};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a claim on a due deferred message holds before another pass may take it again
/// (the worker that claimed it died before deciding).
const CLAIM_LEASE_US: i64 = 5 * 60 * 1_000_000;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// SQLite takes one writer at a time. Writers queue here, in order, instead of in
    /// SQLite's busy handler, which backs off by sleeping up to 100 ms while the lock may
    /// already be free. Readers do not take it (WAL lets them run beside the writer). The
    /// group-commit thread takes it for each of its batches.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The send path's writes: batched, one transaction and one fsync per batch.
    batches: GroupWriter,
    /// The send path's reads, on the calling thread.
    readers: std::sync::Arc<reader::Readers>,
}

/// How long after a failed write batch the store reports itself not ready.
const UNREADY_AFTER_FAILURE_US: i64 = 5_000_000;

impl SqliteStore {
    /// Opens (creating if needed) the database, applies migrations and checks durability.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            // 8 MiB of page cache per connection (the default is 2 MiB) for the audit lists and
            // exports these connections serve. (The send path reads through its own
            // connections, sqlite/reader.rs, whose caches every commit empties.)
            .pragma("cache_size", "-8192")
            // Deleted content is overwritten, not left in free pages: an erased recipient's
            // key must not survive in the file.
            .pragma("secure_delete", "on")
            // The checkpoint thread checkpoints (sqlite/checkpointer.rs), not each commit.
            .pragma("wal_autocheckpoint", "0");
        let path = options.get_filename();
        if path.as_os_str().is_empty() || path.to_string_lossy().contains(":memory:") {
            return Err(StoreError::Unsafe(
                "an in-memory SQLite database is not durable: give a file".into(),
            ));
        }
        // The database and its WAL and shared memory are consentry's alone (SQLite gives the
        // last two the database file's mode).
        crate::datadir::private_file(path)
            .and_then(|()| {
                for suffix in ["-wal", "-shm"] {
                    let mut side = path.as_os_str().to_owned();
                    side.push(suffix);
                    crate::datadir::make_private(std::path::Path::new(&side), 0o600)?;
                }
                Ok(())
            })
            .map_err(|error| StoreError::Unsafe(format!("{error:#}")))?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            // A file's connection does not go away: no check (a hop to sqlx's thread) each
            // time one is taken.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        MIGRATIONS.run(&pool).await?;
        let writer: std::sync::Arc<tokio::sync::Mutex<()>> = Default::default();
        let readers = std::sync::Arc::new(reader::Readers::new(path));
        checkpointer::start(path, std::sync::Arc::downgrade(&readers))?;
        let store = SqliteStore {
            batches: GroupWriter::start(path, writer.clone())?,
            readers,
            pool,
            writer,
        };
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
impl Database for SqliteStore {
    fn write_batches(&self) -> Option<String> {
        Some(self.batches.stats.summary())
    }

    fn write_batch_counts(&self) -> Vec<(String, u64)> {
        self.batches.stats.counts()
    }

    async fn queue_depths(&self) -> Result<QueueDepths, StoreError> {
        let (deferred, earliest_release_us): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(release_at_us) FROM deferred_messages WHERE done = 0",
        )
        .fetch_one(&self.pool)
        .await?;
        let outbox_pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM webhook_outbox WHERE delivered_at_us IS NULL")
                .fetch_one(&self.pool)
                .await?;
        let log_unsequenced: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM log_leaves WHERE leaf_index IS NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(QueueDepths {
            deferred,
            earliest_release_us,
            outbox_pending,
            log_unsequenced,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A write through the send path's writer, committed; and no batch of sends failed in
        // the last few seconds (a full disk can still take a heartbeat's page or two while a
        // send's record does not fit). Ready again once writes land and none has failed for
        // that long: no restart.
        let now_us = jiff::Timestamp::now().as_microsecond();
        self.batches.write(Write::Heartbeat(now_us)).await?;
        if let Some(failed_us) = self.batches.stats.last_failure_us()
            && now_us - failed_us < UNREADY_AFTER_FAILURE_US
        {
            return Err(StoreError::Unsafe(format!(
                "a write batch failed {} ms ago",
                (now_us - failed_us) / 1000
            )));
        }
        Ok(())
    }

    async fn setting(&self, name: &str, value: &str) -> Result<String, StoreError> {
        let _writer = self.writer.lock().await;
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE name = ?")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

#[async_trait]
impl Ledger for SqliteStore {
    async fn lock_recipients(&self, _: &[&str]) -> Result<super::RecipientLock, StoreError> {
        // One process per SQLite file: the in-process lock is the whole lock.
        Ok(super::RecipientLock::Local)
    }

    async fn record_consents(
        &self,
        records: &[ConsentRecord],
        _lock: Option<&mut super::RecipientLock>,
    ) -> Result<Vec<Recorded>, StoreError> {
        match self
            .batches
            .write(Write::Consents(records.to_vec()))
            .await?
        {
            Written::Consents(recorded) => Ok(recorded),
            _ => Err(StoreError::Unsafe(
                "the writer answered another write".into(),
            )),
        }
    }

    async fn recipient_facts(
        &self,
        tenant: &TenantId,
        queries: &[super::FactsQuery<'_>],
        _lock: Option<&mut super::RecipientLock>,
    ) -> Result<Vec<RecipientFacts>, StoreError> {
        // Only what the fold reads: the evidence stays on disk.
        self.readers.recipient_facts(tenant.as_str(), queries)
    }

    async fn consent_events(
        &self,
        tenant: &TenantId,
        recipient_hash: &str,
    ) -> Result<Vec<StoredConsent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, id, tenant, recipient_hash, recipient_masked, action, level, brand, \
             campaign, purposes, method, occurred_at_us, recorded_at_us, recorded_by, \
             external_id, idempotency_key, key_id, evidence FROM consent_events c \
             WHERE tenant = ? AND recipient_hash = ? \
             AND (action = 'opt_out' OR EXISTS (SELECT 1 FROM log_leaves l \
                  WHERE l.kind = 'consent_event' AND l.ref_id = c.id)) \
             ORDER BY seq",
        )
        .bind(tenant.as_str())
        .bind(recipient_hash)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(consent_from_row).collect()
    }
}

#[async_trait]
impl Messages for SqliteStore {
    async fn record_messages(
        &self,
        records: &[MessageRecord],
        _lock: Option<&mut super::RecipientLock>,
    ) -> Result<(), StoreError> {
        self.batches
            .write(Write::Messages(records.to_vec()))
            .await?;
        Ok(())
    }

    async fn record_outcome(&self, outcome: &OutcomeRecord) -> Result<(), StoreError> {
        self.batches.write(Write::Outcome(outcome.clone())).await?;
        Ok(())
    }

    async fn claim_due(&self, now_us: i64, limit: i64) -> Result<Vec<DeferredMessage>, StoreError> {
        // Under the writer's lock nothing else writes: what the read finds due is still
        // unclaimed at the update, which claims it in one statement.
        let _writer = self.writer.lock().await;
        let mut transaction = self.pool.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT {DEFERRED_COLUMNS} \
             FROM deferred_messages d JOIN messages m ON m.id = d.message_id \
             WHERE d.done = 0 AND d.release_at_us <= ? \
             AND (d.claimed_at_us IS NULL OR d.claimed_at_us < ?) \
             ORDER BY d.release_at_us LIMIT ?"
        ))
        .bind(now_us)
        .bind(now_us - CLAIM_LEASE_US)
        .bind(limit)
        .fetch_all(&mut *transaction)
        .await?;
        let claimed = rows
            .iter()
            .map(deferred_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if claimed.is_empty() {
            return Ok(claimed);
        }
        let ids: Vec<&str> = claimed.iter().map(|item| item.id.as_str()).collect();
        sqlx::query(
            "UPDATE deferred_messages SET claimed_at_us = ? \
             WHERE message_id IN (SELECT value FROM json_each(?))",
        )
        .bind(now_us)
        .bind(serde_json::to_string(&ids).map_err(|e| StoreError::Unsafe(e.to_string()))?)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(claimed)
    }

    async fn give_back(&self, ids: &[MessageId], claimed_at_us: i64) -> Result<u64, StoreError> {
        let _writer = self.writer.lock().await;
        let mut transaction = self.pool.begin().await?;
        let mut given = 0;
        for id in ids {
            given += sqlx::query(
                "UPDATE deferred_messages SET claimed_at_us = NULL WHERE message_id = ? \
                 AND done = 0 AND claimed_at_us = ?",
            )
            .bind(id.as_str())
            .bind(claimed_at_us)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        }
        transaction.commit().await?;
        Ok(given)
    }

    async fn record_releases(
        &self,
        releases: &[ReleaseRecord],
        _lock: Option<&mut super::RecipientLock>,
    ) -> Result<(), StoreError> {
        self.batches
            .write(Write::Releases(releases.to_vec()))
            .await?;
        Ok(())
    }

    async fn requeue(&self, tenant: &TenantId, release: &ReleaseRecord) -> Result<(), StoreError> {
        self.batches
            .write(Write::Requeue {
                tenant: tenant.as_str().to_owned(),
                release: release.clone(),
            })
            .await?;
        Ok(())
    }

    async fn cancel_deferred(
        &self,
        tenant: &TenantId,
        release: &ReleaseRecord,
    ) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().await;
        let mut transaction = self.pool.begin().await?;
        let taken = sqlx::query(
            "UPDATE deferred_messages SET done = 1 WHERE message_id = ? AND tenant = ? \
             AND done = 0 AND (claimed_at_us IS NULL OR claimed_at_us < ?)",
        )
        .bind(release.message_id.as_str())
        .bind(tenant.as_str())
        .bind(release.decided_at_us - CLAIM_LEASE_US)
        .execute(&mut *transaction)
        .await?;
        if taken.rows_affected() != 1 {
            return Ok(false);
        }
        append_release(&mut transaction, release).await?;
        transaction.commit().await?;
        Ok(true)
    }

    async fn message_by_gateway_id(
        &self,
        upstream: &str,
        gateway_message_id: &str,
    ) -> Result<Option<GatewayMessage>, StoreError> {
        let row = sqlx::query(
            "SELECT m.id, m.tenant, m.recipient_hash, m.status_callback FROM message_outcomes o \
             JOIN messages m ON m.id = o.message_id \
             WHERE o.upstream_message_id = ? AND m.upstream = ? LIMIT 1",
        )
        .bind(gateway_message_id)
        .bind(upstream)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let id: String = row.try_get("id")?;
        let tenant: String = row.try_get("tenant")?;
        Ok(Some(GatewayMessage {
            id: MessageId::parse(&id).ok_or_else(|| StoreError::Corrupt("messages.id".into()))?,
            tenant: TenantId::parse(&tenant)
                .map_err(|_| StoreError::Corrupt("messages.tenant".into()))?,
            recipient_hash: row.try_get("recipient_hash")?,
            status_callback: row.try_get("status_callback")?,
        }))
    }

    async fn in_doubt(
        &self,
        since_us: i64,
        until_us: i64,
        limit: i64,
    ) -> Result<Vec<InDoubt>, StoreError> {
        sqlx::query(&in_doubt_sql(["?1", "?2", "?3"]))
            .bind(since_us)
            .bind(until_us)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(in_doubt_from_row)
            .collect()
    }

    async fn message_payload(
        &self,
        tenant: &TenantId,
        id: &MessageId,
    ) -> Result<Option<crate::crypto::Sealed>, StoreError> {
        let row = sqlx::query("SELECT key_id, payload FROM messages WHERE tenant = ? AND id = ?")
            .bind(tenant.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(crate::crypto::Sealed {
                key_id: row.try_get("key_id")?,
                bytes: row.try_get("payload")?,
            })
        })
        .transpose()
    }

    async fn message(
        &self,
        tenant: &TenantId,
        id: &MessageId,
    ) -> Result<Option<MessageView>, StoreError> {
        let row = sqlx::query(
            "SELECT m.id, m.created_at_us, m.recipient_masked, m.sender_masked, m.purpose, \
             m.decision, m.reasons, m.upstream, o.status, o.upstream_message_id, o.error_code, \
             r.decision AS release_decision, r.reasons AS release_reasons, d.release_at_us \
             FROM messages m LEFT JOIN message_outcomes o ON o.seq = \
             (SELECT max(seq) FROM message_outcomes WHERE message_id = m.id) \
             LEFT JOIN message_releases r ON r.seq = \
             (SELECT max(seq) FROM message_releases WHERE message_id = m.id) \
             LEFT JOIN deferred_messages d ON d.message_id = m.id \
             WHERE m.tenant = ? AND m.id = ?",
        )
        .bind(tenant.as_str())
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let decision: String = row.try_get("decision")?;
        let outcome: Option<String> = row.try_get("status")?;
        let release: Option<String> = row.try_get("release_decision")?;
        // After a release, its reasons are the ones that count.
        let reasons: String = match row.try_get::<Option<String>, _>("release_reasons")? {
            Some(reasons) => reasons,
            None => row.try_get("reasons")?,
        };
        let release_at_us: Option<i64> = row.try_get("release_at_us")?;
        Ok(Some(MessageView {
            id: row.try_get("id")?,
            created_at_us: row.try_get("created_at_us")?,
            recipient: row.try_get("recipient_masked")?,
            sender: row.try_get("sender_masked")?,
            purpose: row.try_get("purpose")?,
            status: status_of(&decision, release.as_deref(), outcome.as_deref())?,
            release_at: release_at_us
                .and_then(|us| jiff::Timestamp::from_microsecond(us).ok())
                .map(|t| t.to_string()),
            decision,
            reasons: serde_json::from_str(&reasons).unwrap_or(serde_json::Value::Null),
            upstream: row.try_get("upstream")?,
            upstream_message_id: row.try_get("upstream_message_id")?,
            error_code: row.try_get("error_code")?,
        }))
    }
}

#[async_trait]
impl Inbound for SqliteStore {
    async fn record_inbound(
        &self,
        inbound: &InboundRecord,
        consent: Option<&ConsentRecord>,
        review: Option<&ReviewRecord>,
        outbox: &[OutboxRecord],
        _lock: Option<&mut super::RecipientLock>,
    ) -> Result<InboundRecorded, StoreError> {
        let _writer = self.writer.lock().await;
        let mut transaction = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO inbound_messages (id, upstream, gateway_id, tenant, recipient_hash, \
             recipient_masked, to_masked, class, certain, consent_event, received_at_us, key_id, \
             payload, logged) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) \
             ON CONFLICT (upstream, gateway_id, tenant) DO NOTHING",
        )
        .bind(&inbound.id)
        .bind(&inbound.upstream)
        .bind(&inbound.gateway_id)
        .bind(&inbound.tenant)
        .bind(&inbound.recipient_hash)
        .bind(&inbound.recipient_masked)
        .bind(&inbound.to_masked)
        .bind(inbound.class)
        .bind(inbound.certain)
        .bind(inbound.consent_event.as_deref())
        .bind(inbound.received_at_us)
        .bind(&inbound.key_id)
        .bind(&inbound.payload)
        .execute(&mut *transaction)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(InboundRecorded::Duplicate);
        }
        insert_log_entry(&mut transaction, leaf::inbound(inbound, Link::First)).await?;
        if let Some(consent) = consent {
            insert_consent(&mut transaction, consent).await?;
        }
        if let Some(review) = review {
            sqlx::query(
                "INSERT INTO consent_reviews (id, tenant, recipient_hash, recipient_masked, \
                 inbound_id, created_at_us) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&review.id)
            .bind(review.tenant.as_str())
            .bind(&review.recipient_hash)
            .bind(&review.recipient_masked)
            .bind(&review.inbound_id)
            .bind(review.created_at_us)
            .execute(&mut *transaction)
            .await?;
        }
        for outbox in outbox {
            insert_outbox(&mut *transaction, outbox).await?;
        }
        transaction.commit().await?;
        Ok(InboundRecorded::New)
    }

    async fn reviews(
        &self,
        tenant: &TenantId,
        open_only: bool,
        recipient_hash: Option<&str>,
    ) -> Result<Vec<ReviewView>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.id, r.recipient_masked, r.recipient_hash, r.inbound_id, r.created_at_us, s.outcome, \
             s.resolved_by, s.consent_event FROM consent_reviews r \
             LEFT JOIN review_resolutions s ON s.review_id = r.id \
             WHERE r.tenant = ? AND (? = 0 OR s.review_id IS NULL) \
             AND (? IS NULL OR r.recipient_hash = ?) ORDER BY r.seq DESC LIMIT 1000",
        )
        .bind(tenant.as_str())
        .bind(open_only)
        .bind(recipient_hash)
        .bind(recipient_hash)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(review_from_row).collect()
    }

    async fn review(&self, tenant: &TenantId, id: &str) -> Result<Option<ReviewView>, StoreError> {
        let row = sqlx::query(
            "SELECT r.id, r.recipient_masked, r.recipient_hash, r.inbound_id, r.created_at_us, s.outcome, \
             s.resolved_by, s.consent_event FROM consent_reviews r \
             LEFT JOIN review_resolutions s ON s.review_id = r.id \
             WHERE r.tenant = ? AND r.id = ?",
        )
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(review_from_row).transpose()
    }

    async fn replies(
        &self,
        tenant: &TenantId,
        recipient_hash: &str,
        limit: i64,
    ) -> Result<Vec<ReplyView>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {REPLY_COLUMNS} FROM inbound_messages WHERE tenant = ? AND recipient_hash = ? \
             ORDER BY received_at_us DESC LIMIT ?"
        ))
        .bind(tenant.as_str())
        .bind(recipient_hash)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(reply_from_row).collect()
    }

    async fn resolve_review(
        &self,
        tenant: &TenantId,
        resolution: &ResolutionRecord,
        consent: Option<&ConsentRecord>,
        _lock: Option<&mut super::RecipientLock>,
    ) -> Result<Resolved, StoreError> {
        let _writer = self.writer.lock().await;
        let mut transaction = self.pool.begin().await?;
        let review: Option<(String, String)> = sqlx::query_as(
            "SELECT recipient_hash, inbound_id FROM consent_reviews WHERE id = ? AND tenant = ?",
        )
        .bind(&resolution.review_id)
        .bind(tenant.as_str())
        .fetch_optional(&mut *transaction)
        .await?;
        let Some((recipient_hash, inbound_id)) = review else {
            return Ok(Resolved::NotFound);
        };
        let inserted = sqlx::query(
            "INSERT INTO review_resolutions (review_id, outcome, resolved_by, resolved_at_us, \
             consent_event, logged) VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (review_id) DO NOTHING",
        )
        .bind(&resolution.review_id)
        .bind(resolution.outcome)
        .bind(&resolution.resolved_by)
        .bind(resolution.resolved_at_us)
        .bind(resolution.consent_event.as_deref())
        .execute(&mut *transaction)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(Resolved::AlreadyResolved);
        }
        let leaf = leaf::review_resolution(
            &resolution.leaf(tenant.as_str(), recipient_hash, inbound_id),
            Link::First,
        );
        insert_log_entry(&mut transaction, leaf).await?;
        if let Some(consent) = consent {
            insert_consent(&mut transaction, consent).await?;
        }
        transaction.commit().await?;
        Ok(Resolved::Done)
    }

    async fn inbound_payload(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<crate::crypto::Sealed>, StoreError> {
        let row =
            sqlx::query("SELECT key_id, payload FROM inbound_messages WHERE tenant = ? AND id = ?")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| {
            Ok(crate::crypto::Sealed {
                key_id: row.try_get("key_id")?,
                bytes: row.try_get("payload")?,
            })
        })
        .transpose()
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn enqueue_delivery(&self, delivery: &OutboxRecord) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        insert_outbox(&self.pool, delivery).await
    }

    async fn due_deliveries(&self, now_us: i64, limit: i64) -> Result<Vec<OutboxItem>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant, created_at_us, key_id, payload, next_attempt_at_us, attempts, \
             url, format FROM webhook_outbox WHERE delivered_at_us IS NULL AND next_attempt_at_us <= ? \
             ORDER BY next_attempt_at_us, seq LIMIT ?",
        )
        .bind(now_us)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let tenant: String = row.try_get("tenant")?;
                Ok(OutboxItem {
                    attempts: row.try_get("attempts")?,
                    record: OutboxRecord {
                        id: row.try_get("id")?,
                        tenant: TenantId::parse(&tenant)
                            .map_err(|_| StoreError::Corrupt("webhook_outbox.tenant".into()))?,
                        created_at_us: row.try_get("created_at_us")?,
                        key_id: row.try_get("key_id")?,
                        payload: row.try_get("payload")?,
                        next_attempt_at_us: row.try_get("next_attempt_at_us")?,
                        url: row.try_get("url")?,
                        format: row.try_get("format")?,
                    },
                })
            })
            .collect()
    }

    async fn delivery_succeeded(&self, id: &str, at_us: i64) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        sqlx::query(
            "UPDATE webhook_outbox SET delivered_at_us = ?, attempts = attempts + 1 WHERE id = ?",
        )
        .bind(at_us)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delivery_failed(
        &self,
        id: &str,
        attempts: i64,
        next_attempt_at_us: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        sqlx::query(
            "UPDATE webhook_outbox SET attempts = ?, next_attempt_at_us = ?, last_error = ? \
             WHERE id = ?",
        )
        .bind(attempts)
        .bind(next_attempt_at_us)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl AuditLog for SqliteStore {
    async fn sequence_log(&self, limit: i64) -> Result<Option<LogHead>, StoreError> {
        match self.batches.write(Write::Sequence(limit)).await? {
            Written::Sequenced(head) => Ok(Some(head)),
            _ => Err(StoreError::Unsafe(
                "the writer answered another write".into(),
            )),
        }
    }

    async fn log_nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        let mut out = Vec::with_capacity(ids.len());
        for (level, idx) in ids {
            out.push(node(&mut *connection, *level, *idx).await?);
        }
        Ok(out)
    }

    async fn log_size(&self) -> Result<u64, StoreError> {
        let size: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(leaf_index) + 1, 0) FROM log_leaves WHERE leaf_index IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(size as u64)
    }

    async fn log_entries(&self, after: i64, limit: i64) -> Result<Vec<LogEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT leaf_index, kind, ref_id, tenant, leaf_hash FROM log_leaves \
             WHERE leaf_index > ? ORDER BY leaf_index LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(log_entry_from_row).collect()
    }

    async fn log_entry(&self, kind: Kind, ref_id: &str) -> Result<Option<LogEntry>, StoreError> {
        let row = sqlx::query(
            "SELECT leaf_index, kind, ref_id, tenant, leaf_hash FROM log_leaves \
             WHERE kind = ? AND ref_id = ?",
        )
        .bind(kind.as_str())
        .bind(ref_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(log_entry_from_row).transpose()
    }

    async fn leaf_of(&self, kind: Kind, ref_id: &str) -> Result<Option<Leaf>, StoreError> {
        sqlx::query(&leaf_sql(kind, "?"))
            .bind(ref_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| leaf_from_row(kind, &row))
            .transpose()
    }

    async fn logged_row_counts(&self) -> Result<Vec<(Kind, i64, i64)>, StoreError> {
        // One statement, so one snapshot on both backends.
        let row = sqlx::query(&logged_counts_sql())
            .fetch_one(&self.pool)
            .await?;
        LOGGED_TABLES
            .iter()
            .enumerate()
            .map(|(i, (kind, ..))| Ok((*kind, row.try_get(2 * i)?, row.try_get(2 * i + 1)?)))
            .collect()
    }

    async fn unlogged_rows(&self, kind: Kind, limit: i64) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(&unlogged_rows_sql(kind, limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn record_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.batches
            .write(Write::Checkpoint(checkpoint.clone()))
            .await?;
        Ok(())
    }

    async fn checkpoints(&self, after: i64, limit: i64) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT tree_size, root_hash, signed_at_us, key_id, signature FROM log_checkpoints \
             WHERE tree_size > ? ORDER BY tree_size LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT tree_size, root_hash, signed_at_us, key_id, signature FROM log_checkpoints \
             ORDER BY tree_size DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(checkpoint_from_row).transpose()
    }

    async fn checkpoint(&self, tree_size: i64) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT tree_size, root_hash, signed_at_us, key_id, signature FROM log_checkpoints \
             WHERE tree_size = ?",
        )
        .bind(tree_size)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(checkpoint_from_row).transpose()
    }

    async fn record_cosignature(
        &self,
        tree_size: u64,
        cosignature: &Cosignature,
    ) -> Result<(), StoreError> {
        self.batches
            .write(Write::Cosignature(tree_size, cosignature.clone()))
            .await?;
        Ok(())
    }

    async fn cosignatures(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Vec<(u64, Cosignature)>, StoreError> {
        let rows = sqlx::query(
            "SELECT tree_size, witness, cosignature FROM log_cosignatures \
             WHERE tree_size >= ? AND tree_size <= ? ORDER BY tree_size, witness",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cosignature_from_row).collect()
    }

    async fn number_other_leaves(
        &self,
        tenant: &TenantId,
        recipient_hash: &str,
        limit: i64,
    ) -> Result<Vec<(Kind, String, i64)>, StoreError> {
        let rows = sqlx::query(&number_other_leaves_sql(["?1", "?2", "?3"]))
            .bind(tenant.as_str())
            .bind(recipient_hash)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                let kind = Kind::parse(&kind)
                    .ok_or_else(|| StoreError::Corrupt("log_leaves.kind".into()))?;
                Ok((kind, row.try_get("ref_id")?, row.try_get("leaf_index")?))
            })
            .collect()
    }

    async fn latest_cosigned_by(&self, witnesses: i64) -> Result<Option<u64>, StoreError> {
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT tree_size FROM log_cosignatures GROUP BY tree_size \
             HAVING count(*) >= ? ORDER BY tree_size DESC LIMIT 1",
        )
        .bind(witnesses)
        .fetch_optional(&self.pool)
        .await?;
        Ok(size.and_then(|size| u64::try_from(size).ok()))
    }

    async fn latest_cosigned(&self, witness: &str) -> Result<Option<u64>, StoreError> {
        let size: Option<i64> =
            sqlx::query_scalar("SELECT MAX(tree_size) FROM log_cosignatures WHERE witness = ?")
                .bind(witness)
                .fetch_one(&self.pool)
                .await?;
        Ok(size.and_then(|size| u64::try_from(size).ok()))
    }

    async fn decision_counts(
        &self,
        tenant: &TenantId,
        from_us: i64,
        to_us: i64,
        bucket_us: i64,
    ) -> Result<Vec<DecisionCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT (created_at_us - ?2) / ?4 AS bucket, decision, \
             json_extract(reasons, '$[0].code') AS reason, COUNT(*) AS n FROM messages \
             WHERE tenant = ?1 AND created_at_us >= ?2 AND created_at_us < ?3 \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .bind(tenant.as_str())
        .bind(from_us)
        .bind(to_us)
        .bind(bucket_us)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| decision_count_from_row(row, from_us, bucket_us))
            .collect()
    }

    async fn audit_messages(
        &self,
        tenant: &TenantId,
        filter: &AuditFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditedMessage>, StoreError> {
        let rows = sqlx::query(&audit_messages_sql())
            .bind(tenant.as_str())
            .bind(after)
            .bind(filter.recipient_hash.as_deref())
            .bind(filter.recipient_hash.as_deref())
            .bind(filter.from_us)
            .bind(filter.from_us)
            .bind(filter.to_us)
            .bind(filter.to_us)
            .bind(filter.decision.as_deref())
            .bind(filter.decision.as_deref())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditedMessage {
                    leaf_index: row.try_get("leaf_index")?,
                    record: message_from_row(row)?,
                    link: link_from_row(row)?,
                    outcome: row.try_get("outcome")?,
                })
            })
            .collect()
    }

    async fn audit_consents(
        &self,
        tenant: &TenantId,
        filter: &AuditFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditedConsent>, StoreError> {
        let rows = sqlx::query(&audit_consents_sql())
            .bind(tenant.as_str())
            .bind(after)
            .bind(filter.recipient_hash.as_deref())
            .bind(filter.recipient_hash.as_deref())
            .bind(filter.from_us)
            .bind(filter.from_us)
            .bind(filter.to_us)
            .bind(filter.to_us)
            .bind(filter.decision.as_deref())
            .bind(filter.decision.as_deref())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditedConsent {
                    leaf_index: row.try_get("leaf_index")?,
                    record: consent_from_row(row)?.record,
                    link: link_from_row(row)?,
                })
            })
            .collect()
    }

    async fn audited_message(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<MessageRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.tenant = ? AND m.id = ?"
        ))
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(message_from_row).transpose()
    }

    async fn record_body_access(&self, access: &BodyAccess) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        let mut transaction = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO body_accesses (id, tenant, subject, message_id, accessed_at_us) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&access.id)
        .bind(&access.tenant)
        .bind(&access.subject)
        .bind(&access.message_id)
        .bind(access.accessed_at_us)
        .execute(&mut *transaction)
        .await?;
        insert_log_entry(&mut transaction, leaf::body_access(access)).await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn erase_recipient(&self, erasure: &Erasure) -> Result<i64, StoreError> {
        // The answers of sends made before the erasure are kept by writes queued without
        // waiting; they land first, so that the erasure finds and deletes them.
        self.batches.write(Write::Barrier).await?;
        let _writer = self.writer.lock().await;
        let mut transaction = self.pool.begin().await?;
        // The key's columns of the recipient's row; its head stays, for the erasure's leaf.
        let destroyed = sqlx::query(
            "UPDATE log_heads SET key_id = NULL, key_data_key_id = NULL, key_wrapped = NULL, \
             key_created_at_us = NULL \
             WHERE tenant = ? AND recipient_hash = ? AND key_id IS NOT NULL",
        )
        .bind(&erasure.tenant)
        .bind(&erasure.recipient_hash)
        .execute(&mut *transaction)
        .await?
        .rows_affected() as i64;
        // Kept answers to idempotent sends may hold the number and the text.
        sqlx::query("DELETE FROM idempotency_keys WHERE tenant = ? AND recipient_hash = ?")
            .bind(&erasure.tenant)
            .bind(&erasure.recipient_hash)
            .execute(&mut *transaction)
            .await?;
        let erasure = Erasure {
            keys_destroyed: destroyed,
            ..erasure.clone()
        };
        sqlx::query(
            "INSERT INTO erasures (id, tenant, recipient_hash, erased_at_us, erased_by, \
             keys_destroyed) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&erasure.id)
        .bind(&erasure.tenant)
        .bind(&erasure.recipient_hash)
        .bind(erasure.erased_at_us)
        .bind(&erasure.erased_by)
        .bind(erasure.keys_destroyed)
        .execute(&mut *transaction)
        .await?;
        insert_log_entry(&mut transaction, leaf::erasure(&erasure, Link::First)).await?;
        transaction.commit().await?;
        // The cleared key's bytes are overwritten in the database (secure_delete); move the WAL's
        // copies into it and empty the WAL, so no earlier page image keeps the key.
        // A reader still on an older snapshot makes the checkpoint busy: try again for a while.
        for _ in 0..40 {
            let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.pool)
                .await?;
            let busy: i64 = row.try_get(0)?;
            if busy == 0 {
                return Ok(destroyed);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tracing::warn!(
            erasure = %erasure.id,
            "the WAL could not be emptied after an erasure (readers kept it busy); the erased key \
             stays in the WAL file until SQLite's next checkpoint overwrites it"
        );
        Ok(destroyed)
    }
}

/// Every idempotency write goes through the group writer: one queue, so a claim sees every
/// answer and release queued before it, and a claim is durable before the send goes on.
#[async_trait]
impl IdempotencyKeys for SqliteStore {
    async fn claim_key(&self, claim: &KeyClaim) -> Result<Claimed, StoreError> {
        match self.batches.write(Write::ClaimKey(claim.clone())).await? {
            Written::Claimed(claimed) => Ok(claimed),
            _ => Err(StoreError::Unsafe(
                "the writer answered another write".into(),
            )),
        }
    }

    async fn answer_key(
        &self,
        tenant: &str,
        key: &str,
        answer: &KeyAnswer,
    ) -> Result<(), StoreError> {
        // Queued, not waited for: a later claim is queued after it. Lost in a crash, the key
        // stays pending until it expires, and a retry gets 409: nothing is sent twice.
        self.batches.queue(Write::AnswerKey {
            tenant: tenant.to_owned(),
            key: key.to_owned(),
            answer: answer.clone(),
        })
    }

    async fn release_key(&self, tenant: &str, key: &str) -> Result<(), StoreError> {
        self.batches.queue(Write::ReleaseKey {
            tenant: tenant.to_owned(),
            key: key.to_owned(),
        })
    }

    async fn purge_keys(&self, now_us: i64) -> Result<u64, StoreError> {
        match self.batches.write(Write::PurgeKeys(now_us)).await? {
            Written::Purged(count) => Ok(count),
            _ => Err(StoreError::Unsafe(
                "the writer answered another write".into(),
            )),
        }
    }
}

#[async_trait]
impl Keys for SqliteStore {
    async fn data_keys(&self) -> Result<Vec<DataKeyRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, wrapped, created_at_us, retired_at_us FROM data_keys \
             ORDER BY created_at_us, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(data_key_from_row).collect()
    }

    async fn add_data_key(&self, key: &DataKeyRow, retire_others: bool) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        let mut transaction = self.pool.begin().await?;
        if retire_others {
            sqlx::query("UPDATE data_keys SET retired_at_us = ? WHERE retired_at_us IS NULL")
                .bind(key.created_at_us)
                .execute(&mut *transaction)
                .await?;
        }
        sqlx::query(
            "INSERT INTO data_keys (id, wrapped, created_at_us, retired_at_us) VALUES (?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(&key.wrapped)
        .bind(key.created_at_us)
        .bind(key.retired_at_us)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn reserve_key_uses(&self, id: &str, count: i64, limit: i64) -> Result<bool, StoreError> {
        match self
            .batches
            .write(Write::ReserveKeyUses {
                id: id.to_owned(),
                count,
                limit,
            })
            .await?
        {
            Written::Reserved(reserved) => Ok(reserved),
            _ => Err(StoreError::Unsafe(
                "the writer answered another write".into(),
            )),
        }
    }

    async fn recipient_key(
        &self,
        tenant: &str,
        recipient_hash: &str,
    ) -> Result<Option<RecipientKeyRow>, StoreError> {
        let row = sqlx::query(&format!(
            "{RECIPIENT_KEY_SELECT} WHERE tenant = ? AND recipient_hash = ? AND key_id IS NOT NULL"
        ))
        .bind(tenant)
        .bind(recipient_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(recipient_key_from_row).transpose()
    }

    async fn recipient_key_by_id(&self, id: &str) -> Result<Option<RecipientKeyRow>, StoreError> {
        self.readers.recipient_key_by_id(id)
    }

    async fn add_recipient_key(
        &self,
        key: &RecipientKeyRow,
    ) -> Result<RecipientKeyRow, StoreError> {
        {
            let _writer = self.writer.lock().await;
            // A key already made is kept: the first one stays the recipient's.
            sqlx::query(
                "INSERT INTO log_heads (tenant, recipient_hash, key_id, key_data_key_id, \
                 key_wrapped, key_created_at_us) VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (tenant, recipient_hash) DO UPDATE SET key_id = excluded.key_id, \
                 key_data_key_id = excluded.key_data_key_id, key_wrapped = excluded.key_wrapped, \
                 key_created_at_us = excluded.key_created_at_us \
                 WHERE log_heads.key_id IS NULL",
            )
            .bind(&key.tenant)
            .bind(&key.recipient_hash)
            .bind(&key.id)
            .bind(&key.data_key_id)
            .bind(&key.wrapped)
            .bind(key.created_at_us)
            .execute(&self.pool)
            .await?;
        }
        self.recipient_key(&key.tenant, &key.recipient_hash)
            .await?
            .ok_or_else(|| StoreError::Corrupt("log_heads: the key just added is gone".into()))
    }
}

/// Adds a row's entry to the log, pending its index; a leaf about a recipient is linked to the
/// newest leaf about it first, and becomes the newest (the group writer's twin is
/// `writer::insert_log_entry`; both run under the store's writer lock).
async fn insert_log_entry(
    connection: &mut sqlx::SqliteConnection,
    leaf: Leaf,
) -> Result<(), StoreError> {
    let Some(recipient_hash) = leaf.recipient_hash.clone() else {
        sqlx::query("INSERT INTO log_leaves (kind, ref_id, tenant, leaf_hash) VALUES (?, ?, ?, ?)")
            .bind(leaf.kind.as_str())
            .bind(&leaf.ref_id)
            .bind(&leaf.tenant)
            .bind(&leaf.hash()[..])
            .execute(&mut *connection)
            .await?;
        return Ok(());
    };
    let previous: Option<Vec<u8>> = sqlx::query_scalar(&head_sql(["?1", "?2"]))
        .bind(&leaf.tenant)
        .bind(&recipient_hash)
        .fetch_optional(&mut *connection)
        .await?;
    let link = match previous {
        Some(hash) => Link::After(hash_from(hash, "log_heads.last_hash")?),
        None => Link::First,
    };
    let leaf = leaf::relink(leaf, link);
    let hash = leaf.hash();
    sqlx::query(
        "INSERT INTO log_leaves (kind, ref_id, tenant, leaf_hash, chained, prev_hash) \
         VALUES (?, ?, ?, ?, 1, ?)",
    )
    .bind(leaf.kind.as_str())
    .bind(&leaf.ref_id)
    .bind(&leaf.tenant)
    .bind(&hash[..])
    .bind(match &link {
        Link::After(previous) => Some(&previous[..]),
        _ => None,
    })
    .execute(&mut *connection)
    .await?;
    sqlx::query(&set_head_sql(["?1", "?2", "?3"]))
        .bind(&leaf.tenant)
        .bind(&recipient_hash)
        .bind(&hash[..])
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// A stored subtree, by its position (`rows::node_position`).
/// A recipient's key, from its row in `log_heads` (migration 0017), under the names
/// `rows::recipient_key_from_row` reads. Rows of recipients without a key have NULL key
/// columns: every statement filters them out.
pub(crate) const RECIPIENT_KEY_SELECT: &str = "SELECT tenant, recipient_hash, key_id AS id, \
     key_data_key_id AS data_key_id, key_wrapped AS wrapped, key_created_at_us AS created_at_us \
     FROM log_heads";

const NODE_BY_POSITION: &str = "SELECT hash FROM log_nodes WHERE position = ?";
/// A subtree: position, level, index, hash.
const NODE_INSERT: &str = "INSERT INTO log_nodes (position, level, idx, hash) VALUES (?, ?, ?, ?)";

/// One stored perfect subtree.
async fn node<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Sqlite>,
    level: u32,
    idx: u64,
) -> Result<Hash, StoreError> {
    let hash: Option<Vec<u8>> = sqlx::query_scalar(NODE_BY_POSITION)
        .bind(node_position(level, idx))
        .fetch_optional(executor)
        .await?;
    let hash = hash.ok_or_else(|| {
        StoreError::Corrupt(format!("log_nodes: subtree ({level}, {idx}) is missing"))
    })?;
    hash_from(hash, "log_nodes.hash")
}

/// Appends one consent event unless its idempotency key is already in the tenant's ledger.
async fn insert_consent(
    transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    record: &ConsentRecord,
) -> Result<Recorded, StoreError> {
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
    .execute(&mut **transaction)
    .await?;
    if inserted.rows_affected() == 1 {
        insert_log_entry(transaction, leaf::consent_event(record, Link::First)).await?;
        return Ok(Recorded::New);
    }
    let existing: String = sqlx::query_scalar(
        "SELECT id FROM consent_events WHERE tenant = ? AND idempotency_key = ?",
    )
    .bind(record.tenant.as_str())
    .bind(&record.idempotency_key)
    .fetch_one(&mut **transaction)
    .await?;
    Ok(Recorded::Duplicate(existing))
}

/// Queues one delivery.
async fn insert_outbox<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Sqlite>,
    delivery: &OutboxRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO webhook_outbox (id, tenant, created_at_us, key_id, payload, \
         next_attempt_at_us, url, format) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&delivery.id)
    .bind(delivery.tenant.as_str())
    .bind(delivery.created_at_us)
    .bind(&delivery.key_id)
    .bind(&delivery.payload)
    .bind(delivery.next_attempt_at_us)
    .bind(delivery.url.as_deref())
    .bind(delivery.format.as_deref())
    .execute(executor)
    .await?;
    Ok(())
}

/// Appends a decision taken at (or instead of) a release to a message's releases.
async fn append_release(
    connection: &mut sqlx::SqliteConnection,
    release: &ReleaseRecord,
) -> Result<(), StoreError> {
    let (tenant, recipient_hash): (String, String) =
        sqlx::query_as("SELECT tenant, recipient_hash FROM messages WHERE id = ?")
            .bind(release.message_id.as_str())
            .fetch_one(&mut *connection)
            .await?;
    let id = super::row_id("rel");
    sqlx::query(
        "INSERT INTO message_releases (id, message_id, decided_at_us, decision, reasons, basis) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&id)
    .bind(release.message_id.as_str())
    .bind(release.decided_at_us)
    .bind(release.decision.as_str())
    .bind(&release.reasons_json)
    .bind(&release.basis)
    .execute(&mut *connection)
    .await?;
    let leaf = leaf::release(&release.leaf(id, tenant, recipient_hash), Link::First);
    insert_log_entry(connection, leaf).await
}

/// A page of a tenant's messages with their leaf indexes (`Audit::audit_messages`).
fn audit_messages_sql() -> String {
    format!(
        "SELECT l.leaf_index, {MESSAGE_COLUMNS}, {LINK_COLUMNS}, \
         (SELECT status FROM message_outcomes o WHERE o.message_id = m.id \
          ORDER BY o.seq DESC LIMIT 1) AS outcome \
         FROM log_leaves l JOIN messages m ON m.id = l.ref_id \
         WHERE l.tenant = ? AND l.kind = 'message' AND {AUDITED_KINDS} AND l.leaf_index > ? \
         AND (? IS NULL OR m.recipient_hash = ?) \
         AND (? IS NULL OR m.created_at_us >= ?) AND (? IS NULL OR m.created_at_us < ?) \
         AND (? IS NULL OR m.decision = ?) \
         ORDER BY l.leaf_index LIMIT ?"
    )
}

/// A page of a tenant's consent events with their leaf indexes (`Audit::audit_consents`).
fn audit_consents_sql() -> String {
    format!(
        "SELECT l.leaf_index, {CONSENT_COLUMNS}, {LINK_COLUMNS} \
         FROM log_leaves l JOIN consent_events c ON c.id = l.ref_id \
         WHERE l.tenant = ? AND l.kind = 'consent_event' AND {AUDITED_KINDS} AND l.leaf_index > ? \
         AND (? IS NULL OR c.recipient_hash = ?) \
         AND (? IS NULL OR c.occurred_at_us >= ?) AND (? IS NULL OR c.occurred_at_us < ?) \
         AND (? IS NULL OR c.action = ?) \
         ORDER BY l.leaf_index LIMIT ?"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rows;

    /// A send's kept answer is written without waiting (`answer_key` queues it); an erasure
    /// that comes after the answer must still find it and delete it.
    #[tokio::test]
    async fn an_erasure_deletes_the_kept_answer_queued_just_before_it() {
        let folder = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", folder.path().join("erase.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let hash = "cd".repeat(32);
        for round in 0..20 {
            let key = format!("key-{round}");
            let claim = KeyClaim {
                tenant: "acme".into(),
                key: key.clone(),
                request_hash: vec![1; 32],
                now_us: 1,
                expires_at_us: i64::MAX,
            };
            assert_eq!(store.claim_key(&claim).await.unwrap(), Claimed::Fresh);
            let answer = KeyAnswer {
                status: 201,
                content_type: "application/json".into(),
                key_id: "dk_1".into(),
                sealed: vec![2; 48],
                recipient_hash: Some(hash.clone()),
            };
            store.answer_key("acme", &key, &answer).await.unwrap();
            let erasure = Erasure {
                id: crate::store::row_id("era"),
                tenant: "acme".into(),
                recipient_hash: hash.clone(),
                erased_at_us: 2,
                erased_by: "test".into(),
                keys_destroyed: 0,
            };
            store.erase_recipient(&erasure).await.unwrap();
            let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_keys")
                .fetch_one(&store.pool)
                .await
                .unwrap();
            assert_eq!(kept, 0, "round {round}: the answer outlived the erasure");
        }
    }

    /// The steps of a query's plan (EXPLAIN QUERY PLAN's fourth column).
    async fn plan(store: &SqliteStore, sql: &str) -> Vec<String> {
        sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
            .fetch_all(&store.pool)
            .await
            .unwrap()
            .iter()
            .map(|row| sqlx::Row::get::<String, _>(row, 3))
            .collect()
    }

    /// The recent sends a cap counts are read through the recipient's index, which holds
    /// marketing and informational messages only: neither part of the query reads the table.
    #[tokio::test]
    async fn recent_sends_are_read_through_the_recipients_index() {
        let folder = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", folder.path().join("recent.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let plan = plan(&store, reader::RECENT_SENDS).await;
        let through_index = plan
            .iter()
            .filter(|step| step.contains("USING INDEX messages_by_recipient_purpose"))
            .count();
        assert_eq!(through_index, 2, "{plan:#?}");
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN")),
            "{plan:#?}"
        );
    }

    /// `messages in-doubt` finds the releases of its period through their index by time,
    /// without reading every release.
    #[tokio::test]
    async fn in_doubt_releases_are_read_through_their_index_by_time() {
        let folder = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", folder.path().join("doubt.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let plan = plan(&store, &in_doubt_sql(["?1", "?2", "?3"])).await;
        assert!(
            plan.iter()
                .any(|step| step.contains("USING INDEX message_releases_allowed_by_time")),
            "{plan:#?}"
        );
        assert!(
            !plan
                .iter()
                .any(|step| step.starts_with("SCAN r") || step.contains("SCAN message_releases")),
            "{plan:#?}"
        );
    }

    /// A tenant's audit pages of messages and consent events read the tenant's index of
    /// leaves, which holds those two kinds only.
    #[tokio::test]
    async fn audit_pages_are_read_through_the_tenants_index_of_leaves() {
        let folder = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", folder.path().join("pages.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        for sql in [audit_messages_sql(), audit_consents_sql()] {
            let plan = plan(&store, &sql).await;
            assert!(
                plan.iter()
                    .any(|step| step.starts_with("SEARCH l USING INDEX log_leaves_by_tenant")),
                "{plan:#?}"
            );
        }
    }

    /// `messages in-doubt` finds a period's messages through the tenants' time index, tenant
    /// by tenant: it does not read the whole `messages` table (each row holds its sealed body).
    #[tokio::test]
    async fn messages_in_doubt_are_found_through_the_time_index() {
        let folder = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", folder.path().join("doubt.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let plan = plan(&store, &rows::in_doubt_sql(["1", "2", "10"])).await;
        let scans: Vec<&String> = plan
            .iter()
            .filter(|step| step.starts_with("SCAN m ") || step.as_str() == "SCAN m")
            .collect();
        assert!(
            scans.is_empty(),
            "the whole messages table is read: {plan:#?}"
        );
        assert!(
            plan.iter()
                .any(|step| step.contains("SEARCH m USING INDEX messages_by_tenant_time")),
            "{plan:#?}"
        );
    }
}
