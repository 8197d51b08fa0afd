//! Group commit: the send path's durable writes (a message's record with its log entry and
//! recipient key, its outcome, consent events) are written by one thread that owns its own
//! connection and commits whatever is queued in one transaction, with one fsync, then answers
//! every writer in the batch. No artificial wait: while one batch is on the disk the next one
//! gathers in the queue.
//!
//! Each write runs in a savepoint of the batch's transaction, so one write's constraint
//! failure (a second opt-out confirmation, a recipient key made twice) fails that write alone;
//! a failed commit fails every write of the batch, and nothing of it is forwarded.
//!
//! The thread takes the store's writer lock for each batch, so that the writes still done
//! through sqlx (the scheduler, the outbox, the log's sequencer...) queue with it in one order
//! instead of sleeping in SQLite's busy handler.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use rusqlite::{Connection, OptionalExtension as _, params};
use tokio::sync::oneshot;

use super::connection;
use crate::audit::checkpoint::Checkpoint;
use crate::audit::leaf::{self, Leaf, Link};
use crate::audit::merkle::{Frontier, Hash};
use crate::audit::note::Cosignature;
use crate::store::rows::{self, hash_from};
use crate::store::{
    Claimed, ConsentRecord, KeyAnswer, KeyClaim, LogHead, MessageRecord, OutcomeRecord,
    RecipientKeyRow, Recorded, ReleaseRecord, STORED_KEY_COLUMNS, StoreError, StoredKey, classify,
};

/// The writer's page cache, in KiB (negative: SQLite's unit for a size rather than pages).
/// Not larger: SQLite trims the cache at every commit, and when that finds pages to drop it
/// walks the whole hash table, so the cost of a commit grows with the cache. With every
/// commit of the send path made here (no other connection's commit empties the cache), 128 MiB cost 20 % of the
/// writer's time in that walk: 106-112 us of the writer's CPU a send, against 85-95 at 8-16
/// MiB; a million-line consent import ran as fast at 16 MiB as at 128 (`bench/README.md`).
const WRITER_CACHE_KIB: i64 = -16_384;

/// The most writes one transaction takes; the rest wait for the next.
const MAX_BATCH: usize = 512;

/// One durable write of the send path.
pub(crate) enum Write {
    /// Message records, all or none (a group of recipients decided together).
    Messages(Vec<MessageRecord>),
    Outcome(OutcomeRecord),
    Consents(Vec<ConsentRecord>),
    /// Gives up to this many pending log entries their leaf indexes (the log's sequencer).
    Sequence(i64),
    /// Claims an idempotency key, or reads what holds it.
    ClaimKey(KeyClaim),
    /// Keeps a claimed key's answer.
    AnswerKey {
        tenant: String,
        key: String,
        answer: KeyAnswer,
    },
    /// Gives a claimed, unanswered key up.
    ReleaseKey {
        tenant: String,
        key: String,
    },
    /// Deletes the keys expired at this time.
    PurgeKeys(i64),
    /// The decisions at deferred messages' releases (a group decided together), and their
    /// places in the queue: done, or due again.
    Releases(Vec<ReleaseRecord>),
    /// An allowed message queued again (the gateway throttled it), with its release record.
    Requeue {
        tenant: String,
        release: ReleaseRecord,
    },
    /// A durable write of nothing of consequence, for readiness: can a write land on disk?
    Heartbeat(i64),
    /// Nothing: answered once every write queued before it is committed (an erasure waits
    /// for the kept answers of sends before it, which name the number it erases).
    Barrier,
    /// Keeps a signed checkpoint. Here and not through sqlx: a commit by any other connection
    /// empties this connection's page cache, and checkpoints are signed several times a second
    /// under load.
    Checkpoint(Checkpoint),
    /// Keeps a witness's cosignature of a checkpoint (as often as checkpoints).
    Cosignature(u64, Cosignature),
    /// Reserves `count` more uses of a data key, unless that would pass `limit` or the key is
    /// retired (for the same reason: a key's reservations come every thousand new recipients).
    ReserveKeyUses {
        id: String,
        count: i64,
        limit: i64,
    },
}

impl Write {
    /// The records it writes: a commit's size, roughly.
    fn records(&self) -> usize {
        match self {
            Write::Messages(records) => records.len(),
            Write::Consents(records) => records.len(),
            Write::Releases(records) => records.len(),
            _ => 1,
        }
    }
}

/// What a write returns once its batch is durable.
pub(crate) enum Written {
    Done,
    Consents(Vec<Recorded>),
    Sequenced(LogHead),
    /// Whether a reservation of key uses was made.
    Reserved(bool),
    Claimed(Claimed),
    Purged(u64),
}

struct Job {
    write: Write,
    answer: oneshot::Sender<Result<Written, StoreError>>,
}

/// The handle writers use; the thread stops when the last handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct GroupWriter {
    queue: mpsc::Sender<Job>,
    pub(crate) stats: Arc<BatchStats>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl GroupWriter {
    /// Opens the writer's connection to `path` and starts its thread.
    pub(crate) fn start(
        path: &Path,
        lock: Arc<tokio::sync::Mutex<()>>,
    ) -> Result<GroupWriter, StoreError> {
        let connection = connection::open(path, false)?;
        // The writer's cache survives its own commits (every commit the send path makes is
        // made here, so no other connection's commit empties it): the index pages an insert at a random
        // place (a recipient's hash) needs are mostly there already.
        connection.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
        let (queue, jobs) = mpsc::channel();
        let stats = Arc::new(BatchStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("consentry-writer".into())
            .spawn(move || run(connection, jobs, lock, &thread_stats))
            .map_err(|e| StoreError::Unsafe(format!("cannot start the writer thread: {e}")))?;
        Ok(GroupWriter { queue, stats })
    }

    /// Queues a write without waiting for it: every write queued after it is applied after it.
    pub(crate) fn queue(&self, write: Write) -> Result<(), StoreError> {
        let (answer, _) = oneshot::channel();
        self.queue
            .send(Job { write, answer })
            .map_err(|_| StoreError::Unsafe("the writer thread has stopped".into()))
    }

    /// Queues a write and waits until the batch that holds it is committed (or failed).
    pub(crate) async fn write(&self, write: Write) -> Result<Written, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Job { write, answer })
            .map_err(|_| StoreError::Unsafe("the writer thread has stopped".into()))?;
        answered
            .await
            .map_err(|_| StoreError::Unsafe("the writer thread has stopped".into()))?
    }
}

fn run(
    mut connection: Connection,
    jobs: mpsc::Receiver<Job>,
    lock: Arc<tokio::sync::Mutex<()>>,
    stats: &BatchStats,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // The WAL size from which the writer checkpoints after a commit, set for the next one.
    let mut checkpoint_frames = None;
    // Blocks for the first write; then takes everything that queued meanwhile.
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        stats.record(batch.len());
        let frames = super::checkpointer::writer_checkpoint_frames(
            batch.iter().map(|job| job.write.records()).sum(),
        );
        if checkpoint_frames != Some(frames) {
            match connection.pragma_update(None, "wal_autocheckpoint", frames) {
                Ok(()) => checkpoint_frames = Some(frames),
                // The last threshold stays; the checkpoint thread copies the WAL either way.
                Err(error) => tracing::warn!(%error, frames, "cannot set the WAL checkpoint"),
            }
        }
        let results = {
            let _writer = lock.blocking_lock();
            commit(&mut connection, &batch)
        };
        match results {
            Ok(results) => {
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.answer.send(result);
                }
            }
            Err(error) => {
                tracing::error!(%error, writes = batch.len(), "a write batch failed");
                stats.failed();
                let message = error.to_string();
                for job in batch.drain(..) {
                    let _ = job.answer.send(Err(StoreError::Unsafe(format!(
                        "the batch could not be committed: {message}"
                    ))));
                }
            }
        }
    }
    tracing::info!(summary = %stats.summary(), "group commit writer stopped");
}

/// Writes a batch in one transaction. Almost always every write succeeds, and the batch runs
/// without savepoints (a savepoint makes SQLite journal each page it touches a second time);
/// if one write fails, the transaction is rolled back and the batch runs again with each
/// write in a savepoint of its own, so that the failure is that write's alone.
fn commit(
    connection: &mut Connection,
    batch: &[Job],
) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
    {
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut tree = Tree::begin(&transaction)?;
        let mut results = Vec::with_capacity(batch.len());
        for job in batch {
            match apply(&transaction, &mut tree, &job.write) {
                Ok(written) => results.push(Ok(written)),
                Err(_) => break,
            }
        }
        if results.len() == batch.len() {
            transaction.commit()?;
            return Ok(results);
        }
        // Dropped: rolled back.
    }
    let mut transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut tree = Tree::begin(&transaction)?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let savepoint = transaction.savepoint()?;
        let before = tree.clone();
        match apply(&savepoint, &mut tree, &job.write) {
            Ok(written) => {
                savepoint.commit()?;
                results.push(Ok(written));
            }
            Err(error) => {
                // Dropping the savepoint rolls it back, and the tree goes back with it; the
                // batch goes on.
                drop(savepoint);
                tree = before;
                results.push(Err(error));
            }
        }
    }
    transaction.commit()?;
    Ok(results)
}

fn apply(transaction: &Connection, tree: &mut Tree, write: &Write) -> Result<Written, StoreError> {
    match write {
        Write::Messages(records) => {
            for record in records {
                insert_message(transaction, tree, record)?;
            }
            Ok(Written::Done)
        }
        Write::Outcome(outcome) => {
            // Its message must exist: `message_outcomes.message_id` references it.
            let id = crate::store::row_id("out");
            transaction
                .prepare_cached(
                    "INSERT INTO message_outcomes (id, message_id, recorded_at_us, status, \
                     upstream_message_id, error_code, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                )?
                .execute(params![
                    id,
                    outcome.message_id.as_str(),
                    outcome.recorded_at_us,
                    outcome.status.as_str(),
                    outcome.upstream_message_id,
                    outcome.error_code,
                    outcome.detail,
                ])?;
            insert_log_entry(
                transaction,
                tree,
                leaf::outcome(&outcome.leaf(id), Link::First),
            )?;
            Ok(Written::Done)
        }
        Write::Consents(records) => Ok(Written::Consents(
            records
                .iter()
                .map(|record| insert_consent(transaction, tree, record))
                .collect::<Result<_, _>>()?,
        )),
        Write::Sequence(limit) => {
            let indexed = tree.index_pending(transaction, *limit)?;
            Ok(Written::Sequenced(tree.head(transaction, indexed)?))
        }
        Write::ClaimKey(claim) => Ok(Written::Claimed(claim_key(transaction, claim)?)),
        Write::AnswerKey {
            tenant,
            key,
            answer,
        } => {
            transaction
                .prepare_cached(
                    "UPDATE idempotency_keys SET state = 'answered', status = ?, \
                     content_type = ?, key_id = ?, answer = ?, recipient_hash = ? \
                     WHERE tenant = ? AND key = ? AND state = 'pending'",
                )?
                .execute(params![
                    answer.status,
                    answer.content_type,
                    answer.key_id,
                    answer.sealed,
                    answer.recipient_hash,
                    tenant,
                    key,
                ])?;
            Ok(Written::Done)
        }
        Write::ReleaseKey { tenant, key } => {
            transaction
                .prepare_cached(
                    "DELETE FROM idempotency_keys WHERE tenant = ? AND key = ? \
                     AND state = 'pending'",
                )?
                .execute(params![tenant, key])?;
            Ok(Written::Done)
        }
        Write::Barrier => Ok(Written::Done),
        Write::Heartbeat(now_us) => {
            transaction
                .prepare_cached(
                    "INSERT INTO settings (name, value) VALUES ('readiness_checked_at_us', ?) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![now_us.to_string()])?;
            Ok(Written::Done)
        }
        Write::Checkpoint(checkpoint) => {
            transaction
                .prepare_cached(
                    "INSERT INTO log_checkpoints (tree_size, root_hash, signed_at_us, key_id, \
                     signature) VALUES (?, ?, ?, ?, ?) ON CONFLICT (tree_size) DO NOTHING",
                )?
                .execute(params![
                    checkpoint.tree_size as i64,
                    &checkpoint.root_hash[..],
                    checkpoint.signed_at_us,
                    checkpoint.key_id,
                    checkpoint.signature,
                ])?;
            Ok(Written::Done)
        }
        Write::Cosignature(tree_size, cosignature) => {
            transaction
                .prepare_cached(
                    "INSERT INTO log_cosignatures (tree_size, witness, cosignature) \
                     VALUES (?, ?, ?) ON CONFLICT (tree_size, witness) DO NOTHING",
                )?
                .execute(params![
                    *tree_size as i64,
                    cosignature.witness,
                    cosignature.bytes
                ])?;
            Ok(Written::Done)
        }
        Write::ReserveKeyUses { id, count, limit } => Ok(Written::Reserved(
            transaction
                .prepare_cached(
                    "UPDATE data_keys SET uses = uses + ? \
                     WHERE id = ? AND retired_at_us IS NULL AND uses + ? <= ?",
                )?
                .execute(params![count, id, count, limit])?
                == 1,
        )),
        Write::Releases(releases) => {
            for release in releases {
                insert_release(transaction, tree, release)?;
                match release.release_again_at_us {
                    Some(again) => transaction
                        .prepare_cached(
                            "UPDATE deferred_messages SET release_at_us = ?, \
                             claimed_at_us = NULL WHERE message_id = ?",
                        )?
                        .execute(params![again, release.message_id.as_str()])?,
                    None => transaction
                        .prepare_cached(
                            "UPDATE deferred_messages SET done = 1 WHERE message_id = ?",
                        )?
                        .execute(params![release.message_id.as_str()])?,
                };
            }
            Ok(Written::Done)
        }
        Write::Requeue { tenant, release } => {
            let again = release.release_again_at_us.ok_or_else(|| {
                StoreError::Unsafe("a message is queued again without a time".into())
            })?;
            transaction
                .prepare_cached(
                    "INSERT INTO deferred_messages (message_id, tenant, release_at_us) \
                     VALUES (?, ?, ?) ON CONFLICT (message_id) DO UPDATE SET \
                     release_at_us = excluded.release_at_us, claimed_at_us = NULL, done = 0",
                )?
                .execute(params![release.message_id.as_str(), tenant, again])?;
            insert_release(transaction, tree, release)?;
            Ok(Written::Done)
        }
        Write::PurgeKeys(now_us) => Ok(Written::Purged(
            transaction
                .prepare_cached("DELETE FROM idempotency_keys WHERE expires_at_us <= ?")?
                .execute(params![now_us])? as u64,
        )),
    }
}

/// Claims `claim`'s key if it is free (or expired); otherwise says what holds it. In the
/// writer, so two claims of one key are one after the other.
fn claim_key(transaction: &Connection, claim: &KeyClaim) -> Result<Claimed, StoreError> {
    let existing = transaction
        .prepare_cached(&format!(
            "SELECT {STORED_KEY_COLUMNS} FROM idempotency_keys WHERE tenant = ? AND key = ?"
        ))?
        .query_row(params![claim.tenant, claim.key], |row| {
            Ok(StoredKey::from_columns(
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                &row.get::<_, String>(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
                row.get(7)?,
                row.get(8)?,
            ))
        })
        .optional()?;
    let claimed = classify(existing, claim);
    if claimed == Claimed::Fresh {
        transaction
            .prepare_cached(
                "INSERT OR REPLACE INTO idempotency_keys (tenant, key, request_hash, state, \
                 created_at_us, expires_at_us) VALUES (?, ?, ?, 'pending', ?, ?)",
            )?
            .execute(params![
                claim.tenant,
                claim.key,
                claim.request_hash,
                claim.now_us,
                claim.expires_at_us,
            ])?;
    }
    Ok(claimed)
}

/// Pending entries indexed at the start of a batch, at most; past it, the batch's own entries
/// are left pending too, behind them, for the sequencer.
const PENDING_AT_START: i64 = 10_000;

/// The log's tree as one transaction of the writer extends it. Every entry the writer adds
/// gets its leaf index as it is inserted, so that a send's two leaves cost two inserts and not,
/// as when the sequencer indexed them later, two inserts and two updates of three indexes each.
/// Entries still pending (written through sqlx: erasures, body accesses, replies) are indexed
/// first, when the batch begins, so the log keeps the order in which entries were written.
/// The tree's edge is read at the first entry of the batch and lives as long as the
/// transaction: a rolled-back write takes its copy back with it.
#[derive(Clone)]
struct Tree {
    /// Whether this transaction indexes its entries as it adds them (nothing older is pending).
    inline: bool,
    frontier: Option<Frontier>,
}

impl Tree {
    /// The tree of a transaction that has just begun: what is pending is indexed first.
    fn begin(transaction: &Connection) -> Result<Tree, StoreError> {
        let mut tree = Tree {
            inline: false,
            frontier: None,
        };
        let indexed = tree.index_pending(transaction, PENDING_AT_START)?;
        tree.inline = indexed < PENDING_AT_START as u64;
        Ok(tree)
    }

    /// The edge of the tree, read from the stored subtrees the first time.
    fn frontier(&mut self, transaction: &Connection) -> Result<&mut Frontier, StoreError> {
        if self.frontier.is_none() {
            self.frontier = Some(read_frontier(transaction)?);
        }
        Ok(self.frontier.as_mut().expect("just read"))
    }

    /// Appends a leaf: stores the subtrees it completes and returns its index.
    fn append(&mut self, transaction: &Connection, hash: Hash) -> Result<i64, StoreError> {
        let frontier = self.frontier(transaction)?;
        let index = frontier.size() as i64;
        let completed = frontier.push(hash);
        let mut insert_node = transaction.prepare_cached(super::NODE_INSERT)?;
        for ((level, idx), node) in completed {
            insert_node.execute(params![
                rows::node_position(level, idx),
                level as i64,
                idx as i64,
                &node[..]
            ])?;
        }
        Ok(index)
    }

    /// The index a new entry gets now, or `None` when it is left pending.
    fn index_for(
        &mut self,
        transaction: &Connection,
        hash: Hash,
    ) -> Result<Option<i64>, StoreError> {
        if !self.inline {
            return Ok(None);
        }
        self.append(transaction, hash).map(Some)
    }

    /// Gives the oldest pending entries (up to `limit`) the next leaf indexes, in `seq` order;
    /// returns how many it indexed.
    fn index_pending(&mut self, transaction: &Connection, limit: i64) -> Result<u64, StoreError> {
        let pending: Vec<(i64, Vec<u8>)> = transaction
            .prepare_cached(
                "SELECT seq, leaf_hash FROM log_leaves WHERE leaf_index IS NULL \
                 ORDER BY seq LIMIT ?",
            )?
            .query_map([limit], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (seq, hash) in &pending {
            let index = self.append(
                transaction,
                hash_from(hash.clone(), "log_leaves.leaf_hash")?,
            )?;
            transaction
                .prepare_cached("UPDATE log_leaves SET leaf_index = ? WHERE seq = ?")?
                .execute(params![index, seq])?;
        }
        Ok(pending.len() as u64)
    }

    /// The tree as it stands in this transaction.
    fn head(&mut self, transaction: &Connection, indexed: u64) -> Result<LogHead, StoreError> {
        let frontier = self.frontier(transaction)?;
        Ok(LogHead {
            size: frontier.size(),
            root: frontier.root(),
            indexed,
        })
    }
}

/// The right edge of the tree of every indexed entry, from its stored subtrees.
fn read_frontier(transaction: &Connection) -> Result<Frontier, StoreError> {
    let size: i64 = transaction
        .prepare_cached(
            "SELECT COALESCE(MAX(leaf_index) + 1, 0) FROM log_leaves WHERE leaf_index IS NOT NULL",
        )?
        .query_row([], |row| row.get(0))?;
    let size = size as u64;
    let mut edge = Vec::new();
    let mut node = transaction.prepare_cached(super::NODE_BY_POSITION)?;
    for (level, idx) in Frontier::nodes_of(size) {
        let hash: Option<Vec<u8>> = node
            .query_row([rows::node_position(level, idx)], |row| row.get(0))
            .optional()?;
        let hash = hash.ok_or_else(|| {
            StoreError::Corrupt(format!("log_nodes: subtree ({level}, {idx}) is missing"))
        })?;
        edge.push(hash_from(hash, "log_nodes.hash")?);
    }
    Frontier::from_parts(size, edge)
        .ok_or_else(|| StoreError::Corrupt("log_nodes: the tree's edge".into()))
}

fn insert_release(
    transaction: &Connection,
    tree: &mut Tree,
    release: &ReleaseRecord,
) -> Result<(), StoreError> {
    let (tenant, recipient_hash) = message_recipient(transaction, &release.message_id)?;
    let id = crate::store::row_id("rel");
    transaction
        .prepare_cached(
            "INSERT INTO message_releases (id, message_id, decided_at_us, decision, reasons, basis) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )?
        .execute(params![
            id,
            release.message_id.as_str(),
            release.decided_at_us,
            release.decision.as_str(),
            release.reasons_json,
            release.basis,
        ])?;
    insert_log_entry(
        transaction,
        tree,
        leaf::release(&release.leaf(id, tenant, recipient_hash), Link::First),
    )
}

/// The tenant and recipient hash of a message, whose chain its outcomes and releases extend.
fn message_recipient(
    transaction: &Connection,
    id: &crate::domain::MessageId,
) -> Result<(String, String), StoreError> {
    transaction
        .prepare_cached("SELECT tenant, recipient_hash FROM messages WHERE id = ?")?
        .query_row(params![id.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?
        .ok_or_else(|| StoreError::Corrupt(format!("no message {id} to record about")))
}

fn insert_message(
    transaction: &Connection,
    tree: &mut Tree,
    record: &MessageRecord,
) -> Result<(), StoreError> {
    transaction
        .prepare_cached(
            "INSERT INTO messages (id, tenant, created_at_us, recipient_hash, recipient_masked, \
             sender_masked, purpose, brand, campaign, decision, reply_kind, confirms_event, \
             reasons, upstream, key_id, payload, status_callback, basis) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )?
        .execute(params![
            record.id.as_str(),
            record.tenant.as_str(),
            record.created_at_us,
            record.recipient_hash,
            record.recipient_masked,
            record.sender_masked,
            record.purpose,
            record.brand,
            record.campaign,
            record.decision.as_str(),
            record.reply_kind,
            record.confirms_event,
            record.reasons_json,
            record.upstream,
            record.key_id,
            record.payload,
            record.status_callback,
            record.basis,
        ])?;
    // A first send's new key goes into the recipient's row with the message's leaf.
    insert_log_entry_with_key(
        transaction,
        tree,
        leaf::message(record, Link::First),
        record.new_recipient_key.as_ref(),
    )?;
    if let Some(release_at_us) = record.release_at_us {
        transaction
            .prepare_cached(
                "INSERT INTO deferred_messages (message_id, tenant, release_at_us) VALUES (?, ?, ?)",
            )?
            .execute(params![
                record.id.as_str(),
                record.tenant.as_str(),
                release_at_us
            ])?;
    }
    Ok(())
}

fn insert_consent(
    transaction: &Connection,
    tree: &mut Tree,
    record: &ConsentRecord,
) -> Result<Recorded, StoreError> {
    let inserted = transaction
        .prepare_cached(
            "INSERT INTO consent_events (id, tenant, recipient_hash, recipient_masked, \
             action, level, brand, campaign, purposes, method, occurred_at_us, \
             recorded_at_us, recorded_by, external_id, idempotency_key, key_id, evidence) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (tenant, idempotency_key) DO NOTHING",
        )?
        .execute(params![
            record.id,
            record.tenant.as_str(),
            record.recipient_hash,
            record.recipient_masked,
            record.action.as_str(),
            record.level.map(|level| level.as_str()),
            record.brand,
            record.campaign,
            record.purposes,
            record.method,
            record.occurred_at_us,
            record.recorded_at_us,
            record.recorded_by,
            record.external_id,
            record.idempotency_key,
            record.key_id,
            record.evidence,
        ])?;
    if inserted == 1 {
        insert_log_entry(transaction, tree, leaf::consent_event(record, Link::First))?;
        return Ok(Recorded::New);
    }
    let existing: Option<String> = transaction
        .prepare_cached("SELECT id FROM consent_events WHERE tenant = ? AND idempotency_key = ?")?
        .query_row(
            params![record.tenant.as_str(), record.idempotency_key],
            |row| row.get(0),
        )
        .optional()?;
    existing
        .map(Recorded::Duplicate)
        .ok_or_else(|| StoreError::Corrupt("consent_events: a conflict without a row".into()))
}

/// Adds a row's entry to the log, with its leaf index (pending one, if the batch left older
/// entries pending); a leaf about a recipient is linked to the newest leaf about it first, and
/// becomes the newest (see `rows::head_sql`).
fn insert_log_entry(
    transaction: &Connection,
    tree: &mut Tree,
    leaf: Leaf,
) -> Result<(), StoreError> {
    insert_log_entry_with_key(transaction, tree, leaf, None)
}

/// [`insert_log_entry`], storing a new recipient key in the recipient's row with its new head
/// (migration 0017). The write fails if the recipient has a key already: another write made
/// one first, and what this one sealed could not be opened with it.
fn insert_log_entry_with_key(
    transaction: &Connection,
    tree: &mut Tree,
    leaf: Leaf,
    new_key: Option<&RecipientKeyRow>,
) -> Result<(), StoreError> {
    let Some(recipient_hash) = leaf.recipient_hash.clone() else {
        if new_key.is_some() {
            return Err(StoreError::Corrupt(format!(
                "a recipient key with a leaf about no recipient ({})",
                leaf.ref_id
            )));
        }
        let hash = leaf.hash();
        let index = tree.index_for(transaction, hash)?;
        transaction
            .prepare_cached(
                "INSERT INTO log_leaves (kind, ref_id, tenant, leaf_hash, leaf_index) \
                 VALUES (?, ?, ?, ?, ?)",
            )?
            .execute(params![
                leaf.kind.as_str(),
                leaf.ref_id,
                leaf.tenant,
                &hash[..],
                index
            ])?;
        return Ok(());
    };
    let previous: Option<Vec<u8>> = transaction
        .prepare_cached(&rows::head_sql(["?1", "?2"]))?
        .query_row(params![leaf.tenant, recipient_hash], |row| row.get(0))
        .optional()?;
    let link = match previous {
        Some(hash) => Link::After(hash_from(hash, "log_heads.last_hash")?),
        None => Link::First,
    };
    let leaf = leaf::relink(leaf, link);
    let hash = leaf.hash();
    let previous = match &link {
        Link::After(previous) => Some(&previous[..]),
        _ => None,
    };
    let index = tree.index_for(transaction, hash)?;
    transaction
        .prepare_cached(
            "INSERT INTO log_leaves (kind, ref_id, tenant, leaf_hash, chained, prev_hash, \
             leaf_index) VALUES (?, ?, ?, ?, 1, ?, ?)",
        )?
        .execute(params![
            leaf.kind.as_str(),
            leaf.ref_id,
            leaf.tenant,
            &hash[..],
            previous,
            index
        ])?;
    let Some(key) = new_key else {
        transaction
            .prepare_cached(&rows::set_head_sql(["?1", "?2", "?3"]))?
            .execute(params![leaf.tenant, recipient_hash, &hash[..]])?;
        return Ok(());
    };
    if key.tenant != leaf.tenant || key.recipient_hash != recipient_hash {
        return Err(StoreError::Corrupt(format!(
            "a recipient key for another recipient than its leaf's ({})",
            leaf.ref_id
        )));
    }
    let changed = transaction
        .prepare_cached(HEAD_WITH_NEW_KEY)?
        .execute(params![
            leaf.tenant,
            recipient_hash,
            &hash[..],
            key.id,
            key.data_key_id,
            key.wrapped,
            key.created_at_us,
        ])?;
    if changed != 1 {
        return Err(StoreError::Unsafe(format!(
            "another write stored a key for the recipient of {} first",
            leaf.ref_id
        )));
    }
    Ok(())
}

/// A recipient's new head with its new key, unless it has a key already (then nothing changes,
/// and the caller fails the write).
const HEAD_WITH_NEW_KEY: &str = "INSERT INTO log_heads (tenant, recipient_hash, last_hash, key_id, \
     key_data_key_id, key_wrapped, key_created_at_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
     ON CONFLICT (tenant, recipient_hash) DO UPDATE SET last_hash = excluded.last_hash, \
     key_id = excluded.key_id, key_data_key_id = excluded.key_data_key_id, \
     key_wrapped = excluded.key_wrapped, key_created_at_us = excluded.key_created_at_us \
     WHERE log_heads.key_id IS NULL";

/// How many writes each batch held: the figure that says whether group commit groups.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Batches of 1, 2-3, 4-7, ... 256-511, 512 writes.
    buckets: [AtomicU64; 10],
    writes: AtomicU64,
    /// When the last batch failed to commit (microseconds since 1970), or 0.
    last_failure_us: std::sync::atomic::AtomicI64,
}

impl BatchStats {
    fn failed(&self) {
        self.last_failure_us
            .store(jiff::Timestamp::now().as_microsecond(), Ordering::Relaxed);
    }

    fn record(&self, size: usize) {
        let bucket = (usize::BITS - size.leading_zeros()).saturating_sub(1) as usize;
        self.buckets[bucket.min(9)].fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(size as u64, Ordering::Relaxed);
    }

    /// When the last batch failed to commit, if one ever did.
    pub fn last_failure_us(&self) -> Option<i64> {
        Some(self.last_failure_us.load(Ordering::Relaxed)).filter(|us| *us != 0)
    }

    /// Batches by size bucket (`1`, `2-3`, ..., `512`), empty buckets left out.
    pub fn counts(&self) -> Vec<(String, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .map(|(index, bucket)| (index, bucket.load(Ordering::Relaxed)))
            .filter(|(_, count)| *count > 0)
            .map(|(index, count)| {
                let low = 1u64 << index;
                let label = if low == 1 || index == 9 {
                    format!("{low}")
                } else {
                    format!("{low}-{}", 2 * low - 1)
                };
                (label, count)
            })
            .collect()
    }

    /// `batches=… writes=… sizes=1:…,2-3:…,…` (empty buckets left out).
    pub fn summary(&self) -> String {
        let counts = self.counts();
        let batches: u64 = counts.iter().map(|(_, count)| count).sum();
        let sizes: Vec<String> = counts
            .iter()
            .map(|(label, count)| format!("{label}:{count}"))
            .collect();
        format!(
            "batches={batches} writes={} sizes={}",
            self.writes.load(Ordering::Relaxed),
            sizes.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageId, TenantId};
    use crate::store::{DecisionKind, OutcomeStatus};

    fn record(confirms: Option<&str>) -> MessageRecord {
        MessageRecord {
            id: MessageId::new(),
            tenant: TenantId::parse("t").unwrap(),
            created_at_us: 1,
            recipient_hash: "ab".repeat(32),
            recipient_masked: "+1415555****".into(),
            sender_masked: "ACME".into(),
            purpose: "transactional",
            brand: None,
            campaign: None,
            decision: DecisionKind::Allowed,
            reply_kind: confirms.map(|_| "opt_out_confirmation"),
            confirms_event: confirms.map(str::to_owned),
            reasons_json: "[]".into(),
            upstream: Some("gw".into()),
            key_id: "dk_1".into(),
            payload: vec![1, 2, 3],
            release_at_us: None,
            status_callback: None,
            basis: None,
            new_recipient_key: None,
        }
    }

    fn job(write: Write) -> (Job, oneshot::Receiver<Result<Written, StoreError>>) {
        let (answer, answered) = oneshot::channel();
        (Job { write, answer }, answered)
    }

    #[tokio::test]
    async fn one_failing_write_fails_alone_and_the_rest_of_its_batch_commits() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("batch.db");
        crate::store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let mut connection = connection::open(&path, false).unwrap();

        let first = record(Some("evt_1"));
        let outcome = OutcomeRecord {
            message_id: first.id.clone(),
            tenant: first.tenant.clone(),
            recipient_hash: first.recipient_hash.clone(),
            recorded_at_us: 2,
            status: OutcomeStatus::Sent,
            upstream_message_id: Some("gw-1".into()),
            error_code: None,
            detail: None,
        };
        // The third write is a second confirmation of the same opt-out: the unique index
        // refuses it, and only it.
        let batch = vec![
            job(Write::Messages(vec![first])).0,
            job(Write::Outcome(outcome)).0,
            job(Write::Messages(vec![record(Some("evt_1"))])).0,
            job(Write::Messages(vec![record(None)])).0,
        ];
        let results = commit(&mut connection, &batch).unwrap();
        let failed: Vec<bool> = results.iter().map(Result::is_err).collect();
        assert_eq!(failed, [false, false, true, false]);
        let count = |sql: &str| -> i64 { connection.query_row(sql, [], |row| row.get(0)).unwrap() };
        assert_eq!(count("SELECT count(*) FROM messages"), 2);
        assert_eq!(count("SELECT count(*) FROM message_outcomes"), 1);
        assert_eq!(
            count("SELECT count(*) FROM log_leaves"),
            3,
            "each record and the outcome has its entry"
        );
        // The outcome links to its message's leaf: one chain per recipient, none broken.
        assert_eq!(
            count(
                "SELECT count(*) FROM log_leaves o JOIN log_leaves m ON m.leaf_hash = o.prev_hash \
                 WHERE o.kind = 'outcome' AND m.kind = 'message' AND o.chained = 1"
            ),
            1
        );
    }

    /// A recipient's key is kept in its `log_heads` row (migration 0017): a second new key for
    /// the same recipient (another write made one first) fails that write alone, and the
    /// first key stays the recipient's.
    #[tokio::test]
    async fn a_second_new_key_for_a_recipient_fails_alone_and_the_first_stays() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("keys.db");
        crate::store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let mut connection = connection::open(&path, false).unwrap();
        connection
            .execute_batch(
                "INSERT INTO data_keys (id, wrapped, created_at_us) VALUES ('dk_1', x'00', 0)",
            )
            .unwrap();
        let with_key = |id: &str| {
            let mut record = record(None);
            record.key_id = id.into();
            record.new_recipient_key = Some(RecipientKeyRow {
                tenant: record.tenant.as_str().into(),
                recipient_hash: record.recipient_hash.clone(),
                id: id.into(),
                data_key_id: "dk_1".into(),
                wrapped: vec![7; 40],
                created_at_us: 1,
            });
            record
        };
        let third = record(None);
        let third_id = third.id.as_str().to_owned();
        let batch = vec![
            job(Write::Messages(vec![with_key("rk_first")])).0,
            job(Write::Messages(vec![with_key("rk_second")])).0,
            job(Write::Messages(vec![third])).0,
        ];
        let results = commit(&mut connection, &batch).unwrap();
        let failed: Vec<bool> = results.iter().map(Result::is_err).collect();
        assert_eq!(failed, [false, true, false]);
        let text =
            |sql: &str| -> String { connection.query_row(sql, [], |row| row.get(0)).unwrap() };
        assert_eq!(
            text("SELECT key_id FROM log_heads WHERE key_id IS NOT NULL"),
            "rk_first"
        );
        assert_eq!(text("SELECT CAST(count(*) AS TEXT) FROM messages"), "2");
        // The head is the newest leaf about the recipient, the third write's.
        assert_eq!(
            text("SELECT l.ref_id FROM log_heads h JOIN log_leaves l ON l.leaf_hash = h.last_hash"),
            third_id
        );
    }

    #[tokio::test]
    async fn writes_are_answered_once_their_batch_is_durable() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("queue.db");
        crate::store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let writer = GroupWriter::start(&path, Default::default()).unwrap();
        let writes = (0..50).map(|_| writer.write(Write::Messages(vec![record(None)])));
        for result in futures_util::future::join_all(writes).await {
            assert!(result.is_ok());
        }
        let connection = connection::open(&path, true).unwrap();
        let stored: i64 = connection
            .query_row("SELECT count(*) FROM messages", [], |row| row.get(0))
            .unwrap();
        assert_eq!(stored, 50);
        assert!(
            writer.stats.summary().contains("writes=50"),
            "{}",
            writer.stats.summary()
        );
    }

    /// The log's leaf indexes stay the order entries were written in: one left pending by
    /// another connection is indexed before the batch's own, a write rolled back gives its
    /// indexes back, and the stored tree matches the leaves.
    #[tokio::test]
    async fn a_batch_indexes_what_is_pending_first_and_a_failed_write_gives_its_indexes_back() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("tree.db");
        crate::store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let mut connection = connection::open(&path, false).unwrap();
        // An entry written through another connection (as an erasure's is): pending.
        connection
            .execute(
                "INSERT INTO log_leaves (kind, ref_id, tenant, leaf_hash) VALUES \
                 ('body_access', 'acc_1', 't', ?)",
                params![&[7u8; 32][..]],
            )
            .unwrap();
        let first = record(None);
        let confirmation = record(Some("evt_1"));
        let batch = vec![
            job(Write::Messages(vec![first.clone()])).0,
            job(Write::Messages(vec![confirmation])).0,
            // Its first record is logged (a leaf appended), then its second refused: the
            // whole write is rolled back, its leaf and index with it.
            job(Write::Messages(vec![record(None), record(Some("evt_1"))])).0,
            job(Write::Messages(vec![record(None)])).0,
        ];
        let results = commit(&mut connection, &batch).unwrap();
        let failed: Vec<bool> = results.iter().map(Result::is_err).collect();
        assert_eq!(failed, [false, false, true, false]);
        let leaves: Vec<(i64, String, Vec<u8>)> = connection
            .prepare("SELECT leaf_index, ref_id, leaf_hash FROM log_leaves ORDER BY leaf_index")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let indexes: Vec<i64> = leaves.iter().map(|(index, ..)| *index).collect();
        assert_eq!(indexes, [0, 1, 2, 3], "one index each, none skipped");
        assert_eq!(leaves[0].1, "acc_1", "the pending entry comes first");
        assert_eq!(leaves[1].1, first.id.as_str());
        let mut tree = Frontier::default();
        for (_, _, hash) in &leaves {
            tree.push(hash_from(hash.clone(), "leaf").unwrap());
        }
        let stored = read_frontier(&connection).unwrap();
        assert_eq!(stored.size(), 4);
        assert_eq!(
            stored.root(),
            tree.root(),
            "the stored subtrees are the leaves'"
        );
    }
}
