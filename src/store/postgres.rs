//! The PostgreSQL backend: several consentry instances may share one database. Durability is
//! PostgreSQL's: `synchronous_commit` must not be `off` for consentry's sessions (checked at
//! start-up), so a committed record has reached the WAL on disk before the upstream is called.
//!
//! No in-process write queue: PostgreSQL takes concurrent writers. Deferred messages are claimed
//! with `FOR UPDATE SKIP LOCKED`, so instances sharing the database never claim one twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use super::rows::{
    AUDITED_KINDS, CONSENT_COLUMNS, DEFERRED_COLUMNS, LINK_COLUMNS, LOGGED_TABLES, MESSAGE_COLUMNS,
    REPLY_COLUMNS, checkpoint_from_row, consent_from_row, cosignature_from_row, data_key_from_row,
    decision_count_from_row, deferred_from_row, event_from_row, hash_from, in_doubt_from_row,
    in_doubt_sql, leaf_from_row, leaf_sql, link_from_row, log_entry_from_row, logged_counts_sql,
    message_from_row, node_position, number_other_leaves_sql, recipient_key_from_row,
    reply_from_row, review_from_row, unlogged_rows_sql,
};
use super::{
    AuditFilter, AuditLog, AuditedConsent, AuditedMessage, ConsentRecord, DataKeyRow, Database,
    DeferredMessage, GatewayMessage, InDoubt, Inbound, InboundRecord, InboundRecorded, Keys,
    Ledger, LogEntry, LogHead, MessageRecord, MessageView, Messages, Outbox, OutboxItem,
    OutboxRecord, OutcomeRecord, RecipientFacts, RecipientKeyRow, Recorded, ReleaseRecord,
    ResolutionRecord, Resolved, ReviewRecord, ReviewView, StoreError, StoredConsent, status_of,
};
use super::{
    Claimed, DecisionCount, IdempotencyKeys, KeyAnswer, KeyClaim, QueueDepths, ReplyView,
    STORED_KEY_COLUMNS, StoredKey, classify,
};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::leaf::{self, BodyAccess, Erasure, Kind, Leaf, Link};
use crate::audit::merkle::{Frontier, Hash, NodeId};
use crate::audit::note::Cosignature;
use crate::domain::{MessageId, TenantId};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// How long a claim on a due deferred message holds before another pass may take it again
/// (the worker that claimed it died before deciding). The same lease as SQLite's.
const CLAIM_LEASE_US: i64 = 5 * 60 * 1_000_000;

/// Recipients' advisory locks, held by an open transaction on one of the [`Lockers`]'
/// connections.
pub struct AdvisoryLock {
    /// The connection whose open transaction holds `pg_advisory_xact_lock`: the facts are read
    /// and the record written in it, and its commit (or rollback) releases the lock. `None`
    /// once the transaction has ended.
    connection: Option<PgConnection>,
    /// A write began in the transaction and left without committing it: it ends in a rollback.
    abandoned: bool,
    lockers: Arc<Lockers>,
    /// At most [`LOCKERS`] locks at once.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl AdvisoryLock {
    /// Ends the lock's transaction, if the record's commit has not already: a commit, or a
    /// rollback if a write in it did not finish.
    pub async fn release(mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        let end = if self.abandoned { "ROLLBACK" } else { "COMMIT" };
        match sqlx::Executor::execute(&mut connection, sqlx::raw_sql(end)).await {
            Ok(_) => self.lockers.keep(connection),
            // Dropped, the connection closes, and the server ends the lock with the session.
            Err(error) => {
                tracing::warn!(%error, "a recipient lock's transaction did not end cleanly")
            }
        }
    }
}

/// The connections recipient locks are taken on, kept here between locks instead of in sqlx's
/// pool: the pool checks every connection given back to it with a round trip (unconditional
/// in sqlx 0.8), and a lock's connection was given back after every group, a round trip the
/// server made for nothing. At most [`LOCKERS`] are out at once; one idle for
/// [`CHECK_IDLE_AFTER`] is checked before it is used again.
struct Lockers {
    permits: Arc<tokio::sync::Semaphore>,
    idle: std::sync::Mutex<Vec<(PgConnection, Instant)>>,
    options: PgConnectOptions,
}

impl std::fmt::Debug for Lockers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lockers").finish_non_exhaustive()
    }
}

/// How long opening a connection for a lock may take (the pool's acquire timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Lockers {
    /// The most recently used idle connection (checked first if it has been idle a while),
    /// or a new one.
    async fn take(&self) -> Result<PgConnection, StoreError> {
        loop {
            let next = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match next {
                Some((mut connection, since)) if since.elapsed() >= CHECK_IDLE_AFTER => {
                    if sqlx::Connection::ping(&mut connection).await.is_ok() {
                        return Ok(connection);
                    }
                }
                Some((connection, _)) => return Ok(connection),
                None => return self.connect().await,
            }
        }
    }

    async fn connect(&self) -> Result<PgConnection, StoreError> {
        use sqlx::ConnectOptions as _;
        tokio::time::timeout(CONNECT_TIMEOUT, self.options.connect())
            .await
            .map_err(|_| StoreError::Unsafe("connecting to PostgreSQL timed out".into()))?
            .map_err(StoreError::from)
    }

    /// Gives back a connection whose transaction has ended.
    fn keep(&self, connection: PgConnection) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((connection, Instant::now()));
    }

    /// Closes every idle connection: after one failed, the others, opened to the same server,
    /// have most likely been ended the same way (a restart, a failover, an operator ending
    /// the instance's sessions), and each would fail one more send.
    fn forget_idle(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// The transaction a write goes in: a lock's, or one of its own from the pool.
enum WriteTransaction<'a> {
    Own(Option<sqlx::Transaction<'static, sqlx::Postgres>>),
    /// The lock's connection is there (checked when the write begins) until the commit.
    Lock(&'a mut AdvisoryLock),
}

impl WriteTransaction<'_> {
    async fn commit(mut self) -> Result<(), StoreError> {
        // Taken out before the first await: the future then holds no borrow of the lock.
        let (own, locked) = match &mut self {
            WriteTransaction::Own(transaction) => (transaction.take(), None),
            WriteTransaction::Lock(lock) => (
                None,
                lock.connection
                    .take()
                    .map(|connection| (connection, lock.lockers.clone())),
            ),
        };
        drop(self);
        if let Some(transaction) = own {
            transaction.commit().await?;
        }
        if let Some((mut connection, lockers)) = locked {
            // A connection whose commit failed is dropped: closed, the lock ends.
            sqlx::Executor::execute(&mut connection, sqlx::raw_sql("COMMIT")).await?;
            lockers.keep(connection);
        }
        Ok(())
    }
}

impl Drop for WriteTransaction<'_> {
    fn drop(&mut self) {
        // A write that left before its commit: its lock's transaction is rolled back at the
        // lock's release (or closed with its connection if the lock is dropped). Its own
        // transaction sqlx rolls back.
        if let WriteTransaction::Lock(lock) = self
            && lock.connection.is_some()
        {
            lock.abandoned = true;
        }
    }
}

impl std::ops::Deref for WriteTransaction<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            WriteTransaction::Own(transaction) => transaction.as_ref().expect("open until commit"),
            WriteTransaction::Lock(lock) => lock.connection.as_ref().expect("open until commit"),
        }
    }
}

impl std::ops::DerefMut for WriteTransaction<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            WriteTransaction::Own(transaction) => transaction.as_mut().expect("open until commit"),
            WriteTransaction::Lock(lock) => lock.connection.as_mut().expect("open until commit"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    lockers: Arc<Lockers>,
    outcomes: OutcomeWriter,
}

/// Outcomes are appended in batches: one statement (one commit, one WAL flush) for whatever
/// outcomes are queued, each writer answered once its batch is committed. No artificial wait:
/// the next batch gathers while one is written. (Four queues, a message's outcomes always in
/// the same one, were tried: sends were slower, 1,430-1,470 a second against 1,910-2,160, the
/// batches' statements waiting for the same two CPUs.)
#[derive(Debug, Clone)]
struct OutcomeWriter {
    queue: tokio::sync::mpsc::UnboundedSender<QueuedOutcome>,
}

type QueuedOutcome = (
    OutcomeRecord,
    tokio::sync::oneshot::Sender<Result<(), String>>,
);

/// The most outcomes one INSERT takes.
const MAX_OUTCOME_BATCH: usize = 1_000;

impl OutcomeWriter {
    fn start(pool: PgPool) -> OutcomeWriter {
        let (queue, queued) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(write_outcomes(pool, queued));
        OutcomeWriter { queue }
    }

    async fn write(&self, outcome: &OutcomeRecord) -> Result<(), StoreError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.queue
            .send((outcome.clone(), answer))
            .map_err(|_| StoreError::Unsafe("the outcome writer has stopped".into()))?;
        answered
            .await
            .map_err(|_| StoreError::Unsafe("the outcome writer has stopped".into()))?
            .map_err(|error| StoreError::Unsafe(format!("the outcome was not recorded: {error}")))
    }
}

/// The [`OutcomeWriter`]'s task: its queue's outcomes, a batch at a time, on a connection it
/// keeps. A pool's connection is checked with a round trip each time it goes back to the pool
/// (sqlx does so on every release), one more round trip in every batch that every send waits
/// for; so the writer takes one and keeps it, and takes another only after a statement failed.
async fn write_outcomes(
    pool: PgPool,
    mut queued: tokio::sync::mpsc::UnboundedReceiver<QueuedOutcome>,
) {
    let mut batch = Vec::new();
    let mut kept: Option<sqlx::pool::PoolConnection<sqlx::Postgres>> = None;
    while let Some(first) = queued.recv().await {
        batch.push(first);
        while batch.len() < MAX_OUTCOME_BATCH {
            match queued.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let outcomes: Vec<&OutcomeRecord> = batch.iter().map(|(o, _)| o).collect();
        match insert_outcomes(&pool, &mut kept, &outcomes).await {
            Ok(()) => {
                for (_, answer) in batch.drain(..) {
                    let _ = answer.send(Ok(()));
                }
            }
            // One bad row fails the statement: each is then written alone, so that the
            // failure is its own.
            Err(_) => {
                for (outcome, answer) in batch.drain(..) {
                    let result = insert_outcomes(&pool, &mut kept, &[&outcome])
                        .await
                        .map_err(|error| error.to_string());
                    let _ = answer.send(result);
                }
            }
        }
    }
}

/// One statement, one round trip, and no transaction of its own: it writes the outcomes and
/// their leaves and commits alone. (A transaction around them took five round trips, one after
/// the other, and every send waits for its outcome's batch: on a busy machine 9 ms of a send's
/// 20. Reading the messages' recipients first, before the flow passed them, was one more.) The
/// outcomes' messages must exist (`message_outcomes.message_id` references them).
/// `kept` is the writer's connection: taken from the pool when there is none, and given back
/// after a failed statement (a connection whose statement failed may be broken).
async fn insert_outcomes(
    pool: &PgPool,
    kept: &mut Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    outcomes: &[&OutcomeRecord],
) -> Result<(), StoreError> {
    let connection = match kept {
        Some(connection) => connection,
        None => kept.insert(pool.acquire().await?),
    };
    let message_ids: Vec<&str> = outcomes.iter().map(|o| o.message_id.as_str()).collect();
    let ids: Vec<String> = outcomes.iter().map(|_| super::row_id("out")).collect();
    let mut leaves: Vec<Leaf> = outcomes
        .iter()
        .zip(&ids)
        .map(|(outcome, id)| leaf::outcome(&outcome.leaf(id.clone()), Link::First))
        .collect();
    // In the order `consentry_append_leaves` locks the recipients' heads in.
    leaves.sort_by(|a, b| (&a.tenant, &a.recipient_hash).cmp(&(&b.tenant, &b.recipient_hash)));
    let written = sqlx::query(
        "WITH outcome AS ( \
           INSERT INTO message_outcomes (id, message_id, recorded_at_us, status, \
           upstream_message_id, error_code, detail) \
           SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], \
           $6::text[], $7::text[])) \
         SELECT consentry_append_leaves($8, $9, $10, $11, $12)",
    )
    .bind(&ids)
    .bind(&message_ids)
    .bind(
        outcomes
            .iter()
            .map(|o| o.recorded_at_us)
            .collect::<Vec<_>>(),
    )
    .bind(
        outcomes
            .iter()
            .map(|o| o.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        outcomes
            .iter()
            .map(|o| o.upstream_message_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        outcomes
            .iter()
            .map(|o| o.error_code.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        outcomes
            .iter()
            .map(|o| o.detail.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(leaves.iter().map(|l| l.kind.as_str()).collect::<Vec<_>>())
    .bind(leaves.iter().map(|l| l.ref_id.as_str()).collect::<Vec<_>>())
    .bind(leaves.iter().map(|l| l.tenant.as_str()).collect::<Vec<_>>())
    .bind(
        leaves
            .iter()
            .map(|l| l.recipient_hash.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        leaves
            .iter()
            .map(|l| l.bytes.as_slice())
            .collect::<Vec<_>>(),
    )
    .execute(&mut **connection)
    .await;
    if written.is_err() {
        *kept = None;
    }
    written?;
    Ok(())
}

/// The sequencer's advisory lock: a two-key lock, so it cannot meet a recipient's (one-key)
/// lock.
const SEQUENCER_LOCK: (i32, i32) = (0x636f_6e73, 1);

/// The connections an instance opens at most: [`LOCKERS`] of them for recipient locks (each
/// lock's connection also reads its facts and writes its record), the pool's for everything
/// else.
const CONNECTIONS: u32 = 32;
/// A connection idle this long is checked before it is used.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(10);
const LOCKERS: usize = 24;

impl PgStore {
    /// The transaction a write goes in: the recipients' lock's own when it is given, so that
    /// its commit makes the write durable and releases the lock in one step, and the write
    /// needs no second connection (a lock holds one, and the pool keeps only a few beside the
    /// locks for everything else); else a new one. A lock whose transaction has already ended fails the write: made outside the lock,
    /// it could land after another instance decided without seeing it.
    async fn write_transaction<'a>(
        &self,
        lock: Option<&'a mut super::RecipientLock>,
    ) -> Result<WriteTransaction<'a>, StoreError> {
        match lock {
            Some(super::RecipientLock::Postgres(lock)) => {
                if lock.connection.is_none() || lock.abandoned {
                    return Err(StoreError::Unsafe(
                        "the recipients' lock ended before its write; nothing was written".into(),
                    ));
                }
                Ok(WriteTransaction::Lock(lock))
            }
            _ => Ok(WriteTransaction::Own(Some(self.pool.begin().await?))),
        }
    }

    /// Connects, applies migrations and checks durability.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let mut options: PgConnectOptions = url.parse()?;
        // Names this instance's sessions in `pg_stat_activity` (`consentry-<pid>`), unless the
        // URL names them: an operator can tell the instances apart, and end one's sessions.
        if options.get_application_name().is_none() {
            options = options.application_name(&format!("consentry-{}", std::process::id()));
        }
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS - LOCKERS as u32)
            .acquire_timeout(Duration::from_secs(5))
            // sqlx checks a connection with a round trip each time it is taken from the pool
            // (and each time it goes back). Taken often, as on the send path, it was just
            // used: only one idle for a while is checked (the server or a firewall may have
            // closed it); one that fails is closed and another taken.
            .test_before_acquire(false)
            .before_acquire(|connection, meta| {
                Box::pin(async move {
                    if meta.idle_for >= CHECK_IDLE_AFTER {
                        sqlx::Connection::ping(connection).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options.clone())
            .await?;
        MIGRATIONS.run(&pool).await?;
        let store = PgStore {
            outcomes: OutcomeWriter::start(pool.clone()),
            pool,
            lockers: Arc::new(Lockers {
                permits: Arc::new(tokio::sync::Semaphore::new(LOCKERS)),
                idle: std::sync::Mutex::new(Vec::new()),
                options,
            }),
        };
        store.check_durability().await?;
        Ok(store)
    }

    async fn check_durability(&self) -> Result<(), StoreError> {
        let synchronous_commit: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&self.pool)
            .await?;
        if synchronous_commit.eq_ignore_ascii_case("off") {
            return Err(StoreError::Unsafe(
                "synchronous_commit is off, expected on (or local, remote_write, remote_apply)"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Database for PgStore {
    async fn setting(&self, name: &str, value: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn queue_depths(&self) -> Result<QueueDepths, StoreError> {
        let (deferred, earliest_release_us, outbox_pending, log_unsequenced): (
            i64,
            Option<i64>,
            i64,
            i64,
        ) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM deferred_messages WHERE NOT done), \
             (SELECT MIN(release_at_us) FROM deferred_messages WHERE NOT done), \
             (SELECT COUNT(*) FROM webhook_outbox WHERE delivered_at_us IS NULL), \
             (SELECT COUNT(*) FROM log_leaves WHERE leaf_index IS NULL)",
        )
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
        // A committed write, not a read: a database that answers but cannot write (a full
        // disk, a read-only standby) is not ready for sends.
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ('readiness_checked_at_us', $1) \
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(jiff::Timestamp::now().as_microsecond().to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Ledger for PgStore {
    async fn lock_recipients(
        &self,
        recipient_hashes: &[&str],
    ) -> Result<super::RecipientLock, StoreError> {
        // In the order of their keys, one statement after the other: two groups locked at
        // once in two instances never wait for each other in a circle.
        let mut keys: Vec<i64> = recipient_hashes
            .iter()
            .map(|hash| super::lock_key(hash))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        // Its statements are planned once: a plan PostgreSQL would make again at every
        // execution (a custom plan) was a fifth of its CPU under sends.
        let mut statement = String::from("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan");
        for key in keys {
            statement.push_str(&format!("; SELECT pg_advisory_xact_lock({key})"));
        }
        let permit = self
            .lockers
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unsafe("the lock semaphore is closed".into()))?;
        // One round trip: the transaction and its locks in one simple query. The keys are
        // integers consentry computed, so they are written into the statement as literals.
        // A connection in steady use is not checked before it is used (`Lockers::take`): one
        // the server ended since its last use fails here, before anything was done, and the
        // lock is taken once more on a new connection, the idle ones closed with it.
        let mut connection = self.lockers.take().await?;
        if let Err(error) =
            sqlx::Executor::execute(&mut connection, sqlx::raw_sql(&statement)).await
        {
            tracing::info!(%error, "a kept connection failed to take a lock; trying a new one");
            drop(connection);
            self.lockers.forget_idle();
            connection = self.lockers.connect().await?;
            sqlx::Executor::execute(&mut connection, sqlx::raw_sql(&statement)).await?;
        }
        Ok(super::RecipientLock::Postgres(AdvisoryLock {
            connection: Some(connection),
            abandoned: false,
            lockers: self.lockers.clone(),
            _permit: permit,
        }))
    }

    async fn record_consents(
        &self,
        records: &[ConsentRecord],
        lock: Option<&mut super::RecipientLock>,
    ) -> Result<Vec<Recorded>, StoreError> {
        // Written in the order of their recipients (each recipient's in its own order): each
        // event locks its recipient's head until the commit, and every transaction that holds
        // several heads takes them in this order, so two never wait for each other.
        let mut order: Vec<usize> = (0..records.len()).collect();
        order.sort_by(|a, b| {
            let key = |at: usize| (records[at].tenant.as_str(), &records[at].recipient_hash);
            key(*a).cmp(&key(*b))
        });
        let mut transaction = self.write_transaction(lock).await?;
        let mut results: Vec<Option<Recorded>> = vec![None; records.len()];
        for at in order {
            results[at] = Some(insert_consent(&mut transaction, &records[at]).await?);
        }
        transaction.commit().await?;
        Ok(results.into_iter().flatten().collect())
    }

    async fn recipient_facts(
        &self,
        tenant: &TenantId,
        queries: &[super::FactsQuery<'_>],
        lock: Option<&mut super::RecipientLock>,
    ) -> Result<Vec<RecipientFacts>, StoreError> {
        // In the lock's transaction: what it reads is what the records it writes were decided
        // on, and no other instance decides about the recipients meanwhile. Without a lock,
        // in a transaction of its own, so that every answer reads one state.
        let mut own;
        let connection: &mut sqlx::PgConnection = match lock {
            Some(super::RecipientLock::Postgres(AdvisoryLock {
                connection: Some(connection),
                abandoned: false,
                ..
            })) => connection,
            _ => {
                own = self.pool.begin().await?;
                &mut own
            }
        };
        facts(connection, tenant, queries).await
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
             WHERE tenant = $1 AND recipient_hash = $2 \
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
impl Messages for PgStore {
    async fn record_messages(
        &self,
        records: &[MessageRecord],
        lock: Option<&mut super::RecipientLock>,
    ) -> Result<(), StoreError> {
        let mut transaction = self.write_transaction(lock).await?;
        insert_messages(&mut transaction, records).await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn record_outcome(&self, outcome: &OutcomeRecord) -> Result<(), StoreError> {
        self.outcomes.write(outcome).await
    }

    async fn claim_due(&self, now_us: i64, limit: i64) -> Result<Vec<DeferredMessage>, StoreError> {
        // One statement, one round trip: rows another transaction is claiming are skipped,
        // not waited for, so each due message goes to one claimer, whichever instance it runs
        // in. (A claim of 200 made one `UPDATE` per row: 200 round trips while the releases it
        // feeds waited.)
        let rows = sqlx::query(&format!(
            "WITH due AS (SELECT message_id FROM deferred_messages \
             WHERE NOT done AND release_at_us <= $1 \
             AND (claimed_at_us IS NULL OR claimed_at_us < $2) \
             ORDER BY release_at_us LIMIT $3 FOR UPDATE SKIP LOCKED), \
             d AS (UPDATE deferred_messages q SET claimed_at_us = $1 FROM due \
             WHERE q.message_id = due.message_id RETURNING q.message_id, q.release_at_us) \
             SELECT {DEFERRED_COLUMNS} FROM d JOIN messages m ON m.id = d.message_id \
             ORDER BY d.release_at_us"
        ))
        .bind(now_us)
        .bind(now_us - CLAIM_LEASE_US)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(deferred_from_row).collect()
    }

    async fn give_back(&self, ids: &[MessageId], claimed_at_us: i64) -> Result<u64, StoreError> {
        let ids: Vec<&str> = ids.iter().map(MessageId::as_str).collect();
        let given = sqlx::query(
            "UPDATE deferred_messages SET claimed_at_us = NULL WHERE message_id = ANY($1) \
             AND NOT done AND claimed_at_us = $2",
        )
        .bind(&ids)
        .bind(claimed_at_us)
        .execute(&self.pool)
        .await?;
        Ok(given.rows_affected())
    }

    async fn record_releases(
        &self,
        releases: &[ReleaseRecord],
        lock: Option<&mut super::RecipientLock>,
    ) -> Result<(), StoreError> {
        let mut transaction = self.write_transaction(lock).await?;
        // A group's releases in three statements over arrays, not three round trips each.
        let ids: Vec<String> = releases.iter().map(|_| super::row_id("rel")).collect();
        let message_ids: Vec<&str> = releases.iter().map(|r| r.message_id.as_str()).collect();
        let recipients: Vec<(String, String)> = sqlx::query_as(
            "WITH r AS (INSERT INTO message_releases \
             (id, message_id, decided_at_us, decision, reasons, basis) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], \
             $6::text[]) RETURNING message_id) \
             SELECT m.tenant, m.recipient_hash FROM UNNEST($2::text[]) WITH ORDINALITY AS q(id, n) \
             JOIN messages m ON m.id = q.id ORDER BY q.n",
        )
        .bind(&ids)
        .bind(&message_ids)
        .bind(releases.iter().map(|r| r.decided_at_us).collect::<Vec<_>>())
        .bind(
            releases
                .iter()
                .map(|r| r.decision.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            releases
                .iter()
                .map(|r| r.reasons_json.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            releases
                .iter()
                .map(|r| r.basis.as_deref())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *transaction)
        .await?;
        if recipients.len() != releases.len() {
            return Err(StoreError::Corrupt(
                "a released message has no record to release".into(),
            ));
        }
        let leaves = releases
            .iter()
            .zip(ids)
            .zip(recipients)
            .map(|((release, id), (tenant, hash))| {
                leaf::release(&release.leaf(id, tenant, hash), Link::First)
            })
            .collect();
        insert_log_entries(&mut transaction, leaves).await?;
        sqlx::query(
            "UPDATE deferred_messages d SET release_at_us = COALESCE(q.again, d.release_at_us), \
             claimed_at_us = CASE WHEN q.again IS NULL THEN d.claimed_at_us END, \
             done = q.again IS NULL \
             FROM UNNEST($1::text[], $2::int8[]) AS q(id, again) WHERE d.message_id = q.id",
        )
        .bind(&message_ids)
        .bind(
            releases
                .iter()
                .map(|r| r.release_again_at_us)
                .collect::<Vec<_>>(),
        )
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn requeue(&self, tenant: &TenantId, release: &ReleaseRecord) -> Result<(), StoreError> {
        let again = release
            .release_again_at_us
            .ok_or_else(|| StoreError::Unsafe("a message is queued again without a time".into()))?;
        let mut transaction = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO deferred_messages (message_id, tenant, release_at_us) VALUES ($1, $2, $3) \
             ON CONFLICT (message_id) DO UPDATE SET release_at_us = excluded.release_at_us, \
             claimed_at_us = NULL, done = FALSE",
        )
        .bind(release.message_id.as_str())
        .bind(tenant.as_str())
        .bind(again)
        .execute(&mut *transaction)
        .await?;
        append_release(&mut transaction, release).await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn cancel_deferred(
        &self,
        tenant: &TenantId,
        release: &ReleaseRecord,
    ) -> Result<bool, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let taken = sqlx::query(
            "UPDATE deferred_messages SET done = TRUE WHERE message_id = $1 AND tenant = $2 \
             AND NOT done AND (claimed_at_us IS NULL OR claimed_at_us < $3)",
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
             WHERE o.upstream_message_id = $1 AND m.upstream = $2 LIMIT 1",
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
        sqlx::query(&in_doubt_sql(["$1", "$2", "$3"]))
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
        let row = sqlx::query("SELECT key_id, payload FROM messages WHERE tenant = $1 AND id = $2")
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
             WHERE m.tenant = $1 AND m.id = $2",
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
impl Inbound for PgStore {
    async fn record_inbound(
        &self,
        inbound: &InboundRecord,
        consent: Option<&ConsentRecord>,
        review: Option<&ReviewRecord>,
        outbox: &[OutboxRecord],
        lock: Option<&mut super::RecipientLock>,
    ) -> Result<InboundRecorded, StoreError> {
        let mut transaction = self.write_transaction(lock).await?;
        let inserted = sqlx::query(
            "INSERT INTO inbound_messages (id, upstream, gateway_id, tenant, recipient_hash, \
             recipient_masked, to_masked, class, certain, consent_event, received_at_us, key_id, \
             payload, logged) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             TRUE) ON CONFLICT (upstream, gateway_id, tenant) DO NOTHING",
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
        insert_log_entries(&mut transaction, vec![leaf::inbound(inbound, Link::First)]).await?;
        if let Some(consent) = consent {
            insert_consent(&mut transaction, consent).await?;
        }
        if let Some(review) = review {
            sqlx::query(
                "INSERT INTO consent_reviews (id, tenant, recipient_hash, recipient_masked, \
                 inbound_id, created_at_us) VALUES ($1, $2, $3, $4, $5, $6)",
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
             WHERE r.tenant = $1 AND ($2 = FALSE OR s.review_id IS NULL) \
             AND ($3::TEXT IS NULL OR r.recipient_hash = $3) ORDER BY r.seq DESC LIMIT 1000",
        )
        .bind(tenant.as_str())
        .bind(open_only)
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
             WHERE r.tenant = $1 AND r.id = $2",
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
            "SELECT {REPLY_COLUMNS} FROM inbound_messages WHERE tenant = $1 AND recipient_hash = $2 \
             ORDER BY received_at_us DESC LIMIT $3"
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
        lock: Option<&mut super::RecipientLock>,
    ) -> Result<Resolved, StoreError> {
        let mut transaction = self.write_transaction(lock).await?;
        let review: Option<(String, String)> = sqlx::query_as(
            "SELECT recipient_hash, inbound_id FROM consent_reviews WHERE id = $1 AND tenant = $2",
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
             consent_event, logged) VALUES ($1, $2, $3, $4, $5, TRUE) \
             ON CONFLICT (review_id) DO NOTHING",
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
        insert_log_entries(&mut transaction, vec![leaf]).await?;
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
        let row = sqlx::query(
            "SELECT key_id, payload FROM inbound_messages WHERE tenant = $1 AND id = $2",
        )
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
impl Outbox for PgStore {
    async fn enqueue_delivery(&self, delivery: &OutboxRecord) -> Result<(), StoreError> {
        insert_outbox(&self.pool, delivery).await
    }

    async fn due_deliveries(&self, now_us: i64, limit: i64) -> Result<Vec<OutboxItem>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant, created_at_us, key_id, payload, next_attempt_at_us, attempts, \
             url, format FROM webhook_outbox \
             WHERE delivered_at_us IS NULL AND next_attempt_at_us <= $1 \
             ORDER BY next_attempt_at_us, seq LIMIT $2",
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
        sqlx::query(
            "UPDATE webhook_outbox SET delivered_at_us = $1, attempts = attempts + 1 \
             WHERE id = $2",
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
        sqlx::query(
            "UPDATE webhook_outbox SET attempts = $1, next_attempt_at_us = $2, last_error = $3 \
             WHERE id = $4",
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
impl AuditLog for PgStore {
    async fn sequence_log(&self, limit: i64) -> Result<Option<LogHead>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        // One sequencer at a time across every instance; held until this transaction ends.
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
            .bind(SEQUENCER_LOCK.0)
            .bind(SEQUENCER_LOCK.1)
            .fetch_one(&mut *transaction)
            .await?;
        if !locked {
            return Ok(None);
        }
        let size: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(leaf_index) + 1, 0) FROM log_leaves WHERE leaf_index IS NOT NULL",
        )
        .fetch_one(&mut *transaction)
        .await?;
        let size = size as u64;
        let mut edge = Vec::new();
        for (level, idx) in Frontier::nodes_of(size) {
            edge.push(node(&mut *transaction, level, idx).await?);
        }
        let mut frontier = Frontier::from_parts(size, edge)
            .ok_or_else(|| StoreError::Corrupt("log_nodes: the tree's edge".into()))?;
        let pending = sqlx::query(
            "SELECT seq, leaf_hash FROM log_leaves WHERE leaf_index IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *transaction)
        .await?;
        let mut leaves: Vec<(i64, i64)> = Vec::with_capacity(pending.len());
        let mut nodes = Vec::with_capacity(pending.len() * 2);
        for row in &pending {
            let seq: i64 = row.try_get("seq")?;
            let hash = hash_from(row.try_get("leaf_hash")?, "log_leaves.leaf_hash")?;
            leaves.push((seq, frontier.size() as i64));
            nodes.extend(frontier.push(hash));
        }
        // Two statements per batch, whatever its size, each over arrays: the writer is held
        // briefly, and each leaf's row is found by its key (a correlated lookup in a list of
        // values made the update quadratic in the batch: 24-33 ms for 300 leaves).
        sqlx::query(
            "INSERT INTO log_nodes (position, level, idx, hash) \
             SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::bytea[])",
        )
        .bind(
            nodes
                .iter()
                .map(|((level, idx), _)| node_position(*level, *idx))
                .collect::<Vec<_>>(),
        )
        .bind(
            nodes
                .iter()
                .map(|((level, _), _)| *level as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            nodes
                .iter()
                .map(|((_, idx), _)| *idx as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            nodes
                .iter()
                .map(|(_, hash)| hash.to_vec())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *transaction)
        .await?;
        sqlx::query(
            "UPDATE log_leaves AS l SET leaf_index = v.idx \
             FROM UNNEST($1::int8[], $2::int8[]) AS v (seq, idx) WHERE l.seq = v.seq",
        )
        .bind(leaves.iter().map(|(seq, _)| *seq).collect::<Vec<_>>())
        .bind(leaves.iter().map(|(_, index)| *index).collect::<Vec<_>>())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(Some(LogHead {
            size: frontier.size(),
            root: frontier.root(),
            indexed: leaves.len() as u64,
        }))
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
             WHERE leaf_index > $1 ORDER BY leaf_index LIMIT $2",
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
             WHERE kind = $1 AND ref_id = $2",
        )
        .bind(kind.as_str())
        .bind(ref_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(log_entry_from_row).transpose()
    }

    async fn leaf_of(&self, kind: Kind, ref_id: &str) -> Result<Option<Leaf>, StoreError> {
        sqlx::query(&leaf_sql(kind, "$1"))
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
        sqlx::query(
            "INSERT INTO log_checkpoints (tree_size, root_hash, signed_at_us, key_id, signature) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tree_size) DO NOTHING",
        )
        .bind(checkpoint.tree_size as i64)
        .bind(&checkpoint.root_hash[..])
        .bind(checkpoint.signed_at_us)
        .bind(&checkpoint.key_id)
        .bind(&checkpoint.signature)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn checkpoints(&self, after: i64, limit: i64) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT tree_size, root_hash, signed_at_us, key_id, signature FROM log_checkpoints \
             WHERE tree_size > $1 ORDER BY tree_size LIMIT $2",
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
             WHERE tree_size = $1",
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
        sqlx::query(
            "INSERT INTO log_cosignatures (tree_size, witness, cosignature) VALUES ($1, $2, $3) \
             ON CONFLICT (tree_size, witness) DO NOTHING",
        )
        .bind(tree_size as i64)
        .bind(&cosignature.witness)
        .bind(&cosignature.bytes)
        .execute(&self.pool)
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
             WHERE tree_size >= $1 AND tree_size <= $2 ORDER BY tree_size, witness",
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
        let rows = sqlx::query(&number_other_leaves_sql(["$1", "$2", "$3"]))
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
             HAVING count(*) >= $1 ORDER BY tree_size DESC LIMIT 1",
        )
        .bind(witnesses)
        .fetch_optional(&self.pool)
        .await?;
        Ok(size.and_then(|size| u64::try_from(size).ok()))
    }

    async fn latest_cosigned(&self, witness: &str) -> Result<Option<u64>, StoreError> {
        let size: Option<i64> =
            sqlx::query_scalar("SELECT MAX(tree_size) FROM log_cosignatures WHERE witness = $1")
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
            "SELECT (created_at_us - $2) / $4 AS bucket, decision, \
             (reasons::jsonb -> 0 ->> 'code') AS reason, COUNT(*) AS n FROM messages \
             WHERE tenant = $1 AND created_at_us >= $2 AND created_at_us < $3 \
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
        let rows = sqlx::query(&format!(
            "SELECT l.leaf_index, {MESSAGE_COLUMNS}, {LINK_COLUMNS}, \
             (SELECT status FROM message_outcomes o WHERE o.message_id = m.id \
              ORDER BY o.seq DESC LIMIT 1) AS outcome \
             FROM log_leaves l JOIN messages m ON m.id = l.ref_id \
             WHERE l.tenant = $1 AND l.kind = 'message' AND {AUDITED_KINDS} AND l.leaf_index > $2 \
             AND ($3::TEXT IS NULL OR m.recipient_hash = $4) \
             AND ($5::BIGINT IS NULL OR m.created_at_us >= $6) AND ($7::BIGINT IS NULL OR m.created_at_us < $8) \
             AND ($9::TEXT IS NULL OR m.decision = $10) \
             ORDER BY l.leaf_index LIMIT $11"
        ))
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
        let rows = sqlx::query(&format!(
            "SELECT l.leaf_index, {CONSENT_COLUMNS}, {LINK_COLUMNS} \
             FROM log_leaves l JOIN consent_events c ON c.id = l.ref_id \
             WHERE l.tenant = $1 AND l.kind = 'consent_event' AND {AUDITED_KINDS} AND l.leaf_index > $2 \
             AND ($3::TEXT IS NULL OR c.recipient_hash = $4) \
             AND ($5::BIGINT IS NULL OR c.occurred_at_us >= $6) AND ($7::BIGINT IS NULL OR c.occurred_at_us < $8) \
             AND ($9::TEXT IS NULL OR c.action = $10) \
             ORDER BY l.leaf_index LIMIT $11"
        ))
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
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.tenant = $1 AND m.id = $2"
        ))
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(message_from_row).transpose()
    }

    async fn record_body_access(&self, access: &BodyAccess) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO body_accesses (id, tenant, subject, message_id, accessed_at_us) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&access.id)
        .bind(&access.tenant)
        .bind(&access.subject)
        .bind(&access.message_id)
        .bind(access.accessed_at_us)
        .execute(&mut *transaction)
        .await?;
        insert_log_entries(&mut transaction, vec![leaf::body_access(access)]).await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn erase_recipient(&self, erasure: &Erasure) -> Result<i64, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let destroyed =
            sqlx::query("DELETE FROM recipient_keys WHERE tenant = $1 AND recipient_hash = $2")
                .bind(&erasure.tenant)
                .bind(&erasure.recipient_hash)
                .execute(&mut *transaction)
                .await?
                .rows_affected() as i64;
        // Kept answers to idempotent sends may hold the number and the text.
        sqlx::query("DELETE FROM idempotency_keys WHERE tenant = $1 AND recipient_hash = $2")
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
             keys_destroyed) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&erasure.id)
        .bind(&erasure.tenant)
        .bind(&erasure.recipient_hash)
        .bind(erasure.erased_at_us)
        .bind(&erasure.erased_by)
        .bind(erasure.keys_destroyed)
        .execute(&mut *transaction)
        .await?;
        insert_log_entries(&mut transaction, vec![leaf::erasure(&erasure, Link::First)]).await?;
        transaction.commit().await?;
        Ok(destroyed)
    }
}

/// Shared by every instance: the key's row is the lock. A claim inserts it, or takes over an
/// expired one, in one statement; otherwise it reads what holds it.
#[async_trait]
impl IdempotencyKeys for PgStore {
    async fn claim_key(&self, claim: &KeyClaim) -> Result<Claimed, StoreError> {
        // Twice at most: the row may expire and be purged between the insert and the read.
        for _ in 0..2 {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (tenant, key, request_hash, state, created_at_us, \
                 expires_at_us) VALUES ($1, $2, $3, 'pending', $4, $5) \
                 ON CONFLICT (tenant, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, \
                 state = 'pending', created_at_us = EXCLUDED.created_at_us, \
                 expires_at_us = EXCLUDED.expires_at_us, status = NULL, content_type = NULL, \
                 key_id = NULL, answer = NULL, recipient_hash = NULL \
                 WHERE idempotency_keys.expires_at_us <= EXCLUDED.created_at_us RETURNING 1",
            )
            .bind(&claim.tenant)
            .bind(&claim.key)
            .bind(&claim.request_hash)
            .bind(claim.now_us)
            .bind(claim.expires_at_us)
            .fetch_optional(&self.pool)
            .await?;
            if inserted.is_some() {
                return Ok(Claimed::Fresh);
            }
            let existing = sqlx::query(&format!(
                "SELECT {STORED_KEY_COLUMNS} FROM idempotency_keys WHERE tenant = $1 AND key = $2"
            ))
            .bind(&claim.tenant)
            .bind(&claim.key)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| -> Result<StoredKey, StoreError> {
                Ok(StoredKey::from_columns(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    &row.try_get::<String, _>(3)?,
                    row.try_get::<Option<i32>, _>(4)?.map(i64::from),
                    row.try_get(5)?,
                    row.try_get(6)?,
                    row.try_get(7)?,
                    row.try_get(8)?,
                ))
            })
            .transpose()?;
            if existing.is_some() {
                let claimed = classify(existing, claim);
                if claimed != Claimed::Fresh {
                    return Ok(claimed);
                }
            }
        }
        Err(StoreError::Unsafe(
            "an idempotency key could neither be claimed nor read".into(),
        ))
    }

    async fn answer_key(
        &self,
        tenant: &str,
        key: &str,
        answer: &KeyAnswer,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE idempotency_keys SET state = 'answered', status = $1, content_type = $2, \
             key_id = $3, answer = $4, recipient_hash = $5 \
             WHERE tenant = $6 AND key = $7 AND state = 'pending'",
        )
        .bind(i32::from(answer.status))
        .bind(&answer.content_type)
        .bind(&answer.key_id)
        .bind(&answer.sealed)
        .bind(&answer.recipient_hash)
        .bind(tenant)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release_key(&self, tenant: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE tenant = $1 AND key = $2 AND state = 'pending'",
        )
        .bind(tenant)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn purge_keys(&self, now_us: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM idempotency_keys WHERE expires_at_us <= $1")
                .bind(now_us)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}

#[async_trait]
impl Keys for PgStore {
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
        let mut transaction = self.pool.begin().await?;
        if retire_others {
            sqlx::query("UPDATE data_keys SET retired_at_us = $1 WHERE retired_at_us IS NULL")
                .bind(key.created_at_us)
                .execute(&mut *transaction)
                .await?;
        }
        sqlx::query(
            "INSERT INTO data_keys (id, wrapped, created_at_us, retired_at_us) VALUES ($1, $2, $3, $4)",
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
        let updated = sqlx::query(
            "UPDATE data_keys SET uses = uses + $1 \
             WHERE id = $2 AND retired_at_us IS NULL AND uses + $3 <= $4",
        )
        .bind(count)
        .bind(id)
        .bind(count)
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn recipient_key(
        &self,
        tenant: &str,
        recipient_hash: &str,
    ) -> Result<Option<RecipientKeyRow>, StoreError> {
        let row = sqlx::query(
            "SELECT tenant, recipient_hash, id, data_key_id, wrapped, created_at_us \
             FROM recipient_keys WHERE tenant = $1 AND recipient_hash = $2",
        )
        .bind(tenant)
        .bind(recipient_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(recipient_key_from_row).transpose()
    }

    async fn recipient_key_by_id(&self, id: &str) -> Result<Option<RecipientKeyRow>, StoreError> {
        let row = sqlx::query(
            "SELECT tenant, recipient_hash, id, data_key_id, wrapped, created_at_us \
             FROM recipient_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(recipient_key_from_row).transpose()
    }

    async fn add_recipient_key(
        &self,
        key: &RecipientKeyRow,
    ) -> Result<RecipientKeyRow, StoreError> {
        {
            sqlx::query(
                "INSERT INTO recipient_keys (tenant, recipient_hash, id, data_key_id, wrapped, \
                 created_at_us) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (tenant, recipient_hash) DO NOTHING",
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
            .ok_or_else(|| StoreError::Corrupt("recipient_keys: the key just added is gone".into()))
    }
}

/// Adds rows' entries to the log, pending their indexes, in one round trip: the function
/// `consentry_append_leaves` (migration 0014) links each leaf about a recipient to the newest
/// leaf about it, under the lock of the recipient's head row. Sorted by recipient first, so
/// that every transaction locks heads in one order and two cannot wait for each other; leaves
/// about one recipient keep their order.
async fn insert_log_entries(
    connection: &mut sqlx::PgConnection,
    mut leaves: Vec<Leaf>,
) -> Result<(), StoreError> {
    if leaves.is_empty() {
        return Ok(());
    }
    leaves.sort_by(|a, b| (&a.tenant, &a.recipient_hash).cmp(&(&b.tenant, &b.recipient_hash)));
    sqlx::query("SELECT consentry_append_leaves($1, $2, $3, $4, $5)")
        .bind(leaves.iter().map(|l| l.kind.as_str()).collect::<Vec<_>>())
        .bind(leaves.iter().map(|l| l.ref_id.as_str()).collect::<Vec<_>>())
        .bind(leaves.iter().map(|l| l.tenant.as_str()).collect::<Vec<_>>())
        .bind(
            leaves
                .iter()
                .map(|l| l.recipient_hash.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            leaves
                .iter()
                .map(|l| l.bytes.as_slice())
                .collect::<Vec<_>>(),
        )
        .execute(connection)
        .await?;
    Ok(())
}

/// One stored perfect subtree.
async fn node<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Postgres>,
    level: u32,
    idx: u64,
) -> Result<Hash, StoreError> {
    let hash: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT hash FROM log_nodes WHERE position = $1")
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
    transaction: &mut PgConnection,
    record: &ConsentRecord,
) -> Result<Recorded, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO consent_events (id, tenant, recipient_hash, recipient_masked, \
         action, level, brand, campaign, purposes, method, occurred_at_us, \
         recorded_at_us, recorded_by, external_id, idempotency_key, key_id, evidence) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
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
        insert_log_entries(transaction, vec![leaf::consent_event(record, Link::First)]).await?;
        return Ok(Recorded::New);
    }
    let existing: String = sqlx::query_scalar(
        "SELECT id FROM consent_events WHERE tenant = $1 AND idempotency_key = $2",
    )
    .bind(record.tenant.as_str())
    .bind(&record.idempotency_key)
    .fetch_one(&mut *transaction)
    .await?;
    Ok(Recorded::Duplicate(existing))
}

/// Queues one delivery.
async fn insert_outbox<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Postgres>,
    delivery: &OutboxRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO webhook_outbox (id, tenant, created_at_us, key_id, payload, \
         next_attempt_at_us, url, format) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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

/// What the send path reads about a recipient, on one connection.
/// The facts of a group of recipients in two round trips, whatever its size: their consent
/// events in one query, and the rest (confirmations, open reviews, the recent sends a cap
/// counts, the recipient's key) in another, one row per query in the group's order.
async fn facts(
    connection: &mut sqlx::PgConnection,
    tenant: &TenantId,
    queries: &[super::FactsQuery<'_>],
) -> Result<Vec<RecipientFacts>, StoreError> {
    let hashes: Vec<&str> = queries.iter().map(|query| query.recipient_hash).collect();
    // Only what the fold reads: the evidence stays in the table.
    let mut consent: std::collections::HashMap<String, Vec<crate::consent::ConsentEvent>> =
        std::collections::HashMap::new();
    for row in sqlx::query(
        "SELECT recipient_hash, seq, id, action, level, brand, campaign, purposes, \
         occurred_at_us, method FROM consent_events c \
         WHERE tenant = $1 AND recipient_hash = ANY($2) \
         AND (action = 'opt_out' OR EXISTS (SELECT 1 FROM log_leaves l \
                     WHERE l.kind = 'consent_event' AND l.ref_id = c.id)) \
         ORDER BY seq",
    )
    .bind(tenant.as_str())
    .bind(&hashes)
    .fetch_all(&mut *connection)
    .await?
    {
        let hash: String = row.try_get("recipient_hash")?;
        consent.entry(hash).or_default().push(event_from_row(&row)?);
    }
    // The rest, one row per query: confirmations, open reviews, the recent sends a cap counts
    // (none when a query's `recent` is None: `> NULL` holds for no row), and the key.
    let purposes: Vec<&str> = queries.iter().map(|query| query.purpose).collect();
    let since: Vec<Option<i64>> = queries.iter().map(|q| q.recent.map(|r| r.0)).collect();
    let limits: Vec<Option<i64>> = queries.iter().map(|q| q.recent.map(|r| r.1)).collect();
    let rows = sqlx::query(
        "SELECT \
         ARRAY(SELECT confirms_event FROM messages WHERE tenant = $1 \
               AND recipient_hash = q.hash AND confirms_event IS NOT NULL) AS confirmed, \
         ARRAY(SELECT r.id FROM consent_reviews r LEFT JOIN review_resolutions s \
               ON s.review_id = r.id WHERE r.tenant = $1 AND r.recipient_hash = q.hash \
               AND s.review_id IS NULL ORDER BY r.seq) AS reviews, \
         ARRAY(SELECT at FROM ( \
               SELECT created_at_us AS at FROM messages WHERE tenant = $1 \
               AND recipient_hash = q.hash AND purpose = q.purpose AND purpose <> 'transactional' \
               AND decision = 'allowed' \
               AND created_at_us > q.since \
               UNION ALL \
               SELECT r.decided_at_us AS at FROM message_releases r \
               JOIN messages m ON m.id = r.message_id \
               WHERE m.tenant = $1 AND m.recipient_hash = q.hash AND m.purpose = q.purpose \
               AND m.purpose <> 'transactional' \
               AND r.decision = 'allowed' AND r.decided_at_us > q.since) AS recent \
               ORDER BY at DESC LIMIT q.lim) AS recent, \
         k.tenant, k.recipient_hash, k.id, k.data_key_id, k.wrapped, k.created_at_us \
         FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[]) \
              WITH ORDINALITY AS q(hash, purpose, since, lim, place) \
         LEFT JOIN recipient_keys k ON k.tenant = $1 AND k.recipient_hash = q.hash \
         ORDER BY q.place",
    )
    .bind(tenant.as_str())
    .bind(&hashes)
    .bind(&purposes)
    .bind(&since)
    .bind(&limits)
    .fetch_all(&mut *connection)
    .await?;
    if rows.len() != queries.len() {
        return Err(StoreError::Corrupt(format!(
            "{} rows of facts for {} recipients",
            rows.len(),
            queries.len()
        )));
    }
    queries
        .iter()
        .zip(rows)
        .map(|(query, row)| {
            let key_id: Option<String> = row.try_get("id")?;
            Ok(RecipientFacts {
                recipient_key: match key_id {
                    Some(_) => Some(recipient_key_from_row(&row)?),
                    None => None,
                },
                consent: consent.remove(query.recipient_hash).unwrap_or_default(),
                confirmed_opt_outs: row.try_get("confirmed")?,
                open_reviews: row.try_get("reviews")?,
                recent_us: row.try_get("recent")?,
            })
        })
        .collect()
}

/// Message records with their new recipient keys, log entries and places in the deferred
/// queue, in one statement (and a second for the queue) whatever the group's size: each column
/// an array, unnested. Data-modifying CTEs run together and fail together.
async fn insert_messages(
    connection: &mut sqlx::PgConnection,
    records: &[MessageRecord],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&MessageRecord) -> &str| -> Vec<&str> { records.iter().map(f).collect() };
    let optional = |f: fn(&MessageRecord) -> Option<&str>| -> Vec<Option<&str>> {
        records.iter().map(f).collect()
    };
    let created: Vec<i64> = records.iter().map(|r| r.created_at_us).collect();
    let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    let keys: Vec<&super::RecipientKeyRow> = records
        .iter()
        .filter_map(|r| r.new_recipient_key.as_ref())
        .collect();
    let key_column = |f: fn(&super::RecipientKeyRow) -> &str| -> Vec<&str> {
        keys.iter().map(|k| f(k)).collect()
    };
    let mut leaves: Vec<Leaf> = records
        .iter()
        .map(|record| leaf::message(record, Link::First))
        .collect();
    // In the order `insert_log_entries` locks the recipients' heads in.
    leaves.sort_by(|a, b| (&a.tenant, &a.recipient_hash).cmp(&(&b.tenant, &b.recipient_hash)));
    sqlx::query(
        "WITH message AS ( \
           INSERT INTO messages (id, tenant, created_at_us, recipient_hash, \
           recipient_masked, sender_masked, purpose, brand, campaign, decision, reply_kind, \
           confirms_event, reasons, upstream, key_id, payload, status_callback, basis) \
           SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
           $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], \
           $12::text[], $13::text[], $14::text[], $15::text[], $16::bytea[], $17::text[], \
           $28::text[])), \
         recipient_key AS ( \
           INSERT INTO recipient_keys (tenant, recipient_hash, id, data_key_id, wrapped, \
           created_at_us) SELECT * FROM unnest($18::text[], $19::text[], $20::text[], \
           $21::text[], $22::bytea[], $23::bigint[])) \
         SELECT consentry_append_leaves($24, $25, $26, $29, $27)",
    )
    .bind(column(|r| r.id.as_str()))
    .bind(column(|r| r.tenant.as_str()))
    .bind(&created)
    .bind(column(|r| &r.recipient_hash))
    .bind(column(|r| &r.recipient_masked))
    .bind(column(|r| &r.sender_masked))
    .bind(column(|r| r.purpose))
    .bind(optional(|r| r.brand.as_deref()))
    .bind(optional(|r| r.campaign.as_deref()))
    .bind(column(|r| r.decision.as_str()))
    .bind(optional(|r| r.reply_kind))
    .bind(optional(|r| r.confirms_event.as_deref()))
    .bind(column(|r| &r.reasons_json))
    .bind(optional(|r| r.upstream.as_deref()))
    .bind(column(|r| &r.key_id))
    .bind(&payloads)
    .bind(optional(|r| r.status_callback.as_deref()))
    .bind(key_column(|k| &k.tenant))
    .bind(key_column(|k| &k.recipient_hash))
    .bind(key_column(|k| &k.id))
    .bind(key_column(|k| &k.data_key_id))
    .bind(
        keys.iter()
            .map(|k| k.wrapped.as_slice())
            .collect::<Vec<_>>(),
    )
    .bind(keys.iter().map(|k| k.created_at_us).collect::<Vec<_>>())
    .bind(leaves.iter().map(|l| l.kind.as_str()).collect::<Vec<_>>())
    .bind(leaves.iter().map(|l| l.ref_id.as_str()).collect::<Vec<_>>())
    .bind(leaves.iter().map(|l| l.tenant.as_str()).collect::<Vec<_>>())
    .bind(
        leaves
            .iter()
            .map(|l| l.bytes.as_slice())
            .collect::<Vec<_>>(),
    )
    .bind(optional(|r| r.basis.as_deref()))
    .bind(
        leaves
            .iter()
            .map(|l| l.recipient_hash.as_deref())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *connection)
    .await?;
    let (deferred, release_at): (Vec<&MessageRecord>, Vec<i64>) = records
        .iter()
        .filter_map(|r| Some((r, r.release_at_us?)))
        .unzip();
    if !deferred.is_empty() {
        // After the records: the queue's rows refer to them.
        sqlx::query(
            "INSERT INTO deferred_messages (message_id, tenant, release_at_us) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])",
        )
        .bind(deferred.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
        .bind(
            deferred
                .iter()
                .map(|r| r.tenant.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(&release_at)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// Appends a decision taken at (or instead of) a release to a message's releases, and its leaf.
async fn append_release(
    connection: &mut sqlx::PgConnection,
    release: &ReleaseRecord,
) -> Result<(), StoreError> {
    let id = super::row_id("rel");
    let (tenant, recipient_hash): (String, String) = sqlx::query_as(
        "INSERT INTO message_releases (id, message_id, decided_at_us, decision, reasons, basis) \
         SELECT $1, $2, $3, $4, $5, $6 RETURNING \
         (SELECT tenant FROM messages WHERE id = $2), \
         (SELECT recipient_hash FROM messages WHERE id = $2)",
    )
    .bind(&id)
    .bind(release.message_id.as_str())
    .bind(release.decided_at_us)
    .bind(release.decision.as_str())
    .bind(&release.reasons_json)
    .bind(&release.basis)
    .fetch_one(&mut *connection)
    .await?;
    let leaf = leaf::release(&release.leaf(id, tenant, recipient_hash), Link::First);
    insert_log_entries(connection, vec![leaf]).await
}
