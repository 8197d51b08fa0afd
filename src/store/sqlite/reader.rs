//! The send path's reads: what `decide` needs about a recipient, and the recipient's key, read
//! on the calling thread from a small pool of read-only connections. No thread hop: a read of
//! pages in the cache takes microseconds, less than the round trip to a worker thread would.
//! WAL lets these run beside the writer; each gather is one read transaction, so its reads see
//! one state of the database.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension as _, params};

use super::connection;
use crate::store::rows::consent_event;
use crate::store::{FactsQuery, RecipientFacts, RecipientKeyRow, StoreError};

/// Read-only connections, opened on demand and kept for reuse.
#[derive(Debug)]
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// More idle connections than this are closed: one per thread that reads at once is enough.
const MAX_IDLE: usize = 16;

impl Readers {
    pub(crate) fn new(path: &Path) -> Readers {
        Readers {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn with<T>(
        &self,
        read: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let taken = self.idle.lock().map_err(|_| poisoned())?.pop();
        let mut connection = match taken {
            Some(connection) => connection,
            None => connection::open(&self.path, true)?,
        };
        let result = read(&mut connection);
        // A connection whose read failed may be in any state: it is not reused.
        if result.is_ok() {
            let mut idle = self.idle.lock().map_err(|_| poisoned())?;
            if idle.len() < MAX_IDLE {
                idle.push(connection);
            }
        }
        result
    }

    /// The recipients' facts and keys, in one read transaction: one state of the database, and
    /// the pages one recipient's reads bring into the cache kept for the next (a commit by
    /// the writer empties a reader's cache between transactions, not within one).
    pub(crate) fn recipient_facts(
        &self,
        tenant: &str,
        queries: &[FactsQuery<'_>],
    ) -> Result<Vec<RecipientFacts>, StoreError> {
        self.with(|connection| {
            let transaction = connection.transaction()?;
            let facts = queries
                .iter()
                .map(|query| facts(&transaction, tenant, query))
                .collect::<Result<Vec<_>, _>>()?;
            transaction.finish()?;
            Ok(facts)
        })
    }

    /// The recipient key with id `id`, if it is still kept (a scheduled message's release and
    /// every opening of a sealed body look it up: on the calling thread, as the facts).
    pub(crate) fn recipient_key_by_id(
        &self,
        id: &str,
    ) -> Result<Option<RecipientKeyRow>, StoreError> {
        self.with(|connection| {
            Ok(connection
                .prepare_cached(&format!("{KEY_SELECT} WHERE key_id = ?"))?
                .query_row(params![id], key_from_row)
                .optional()?)
        })
    }
}

/// One recipient's facts, read in `transaction`.
fn facts(
    transaction: &Connection,
    tenant: &str,
    query: &FactsQuery<'_>,
) -> Result<RecipientFacts, StoreError> {
    let FactsQuery {
        recipient_hash,
        purpose,
        recent,
    } = *query;
    let consent = transaction
        .prepare_cached(
            "SELECT seq, id, action, level, brand, campaign, purposes, occurred_at_us, \
             method FROM consent_events c WHERE tenant = ? AND recipient_hash = ? \
             AND (action = 'opt_out' OR EXISTS (SELECT 1 FROM log_leaves l \
                         WHERE l.kind = 'consent_event' AND l.ref_id = c.id)) \
             ORDER BY seq",
        )?
        .query_map(params![tenant, recipient_hash], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, Option<String>>(5)?,
                row.get::<_, String>(6)?,
                row.get::<_, i64>(7)?,
                row.get::<_, String>(8)?,
            ))
        })?
        .map(|row| {
            let (seq, id, action, level, brand, campaign, purposes, occurred_at_us, method) = row?;
            consent_event(
                seq,
                id,
                &action,
                level.as_deref(),
                brand,
                campaign,
                &purposes,
                occurred_at_us,
                &method,
            )
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let confirmed_opt_outs = transaction
        .prepare_cached(
            "SELECT confirms_event FROM messages WHERE tenant = ? AND recipient_hash = ? \
             AND confirms_event IS NOT NULL",
        )?
        .query_map(params![tenant, recipient_hash], |row| row.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    let open_reviews = transaction
        .prepare_cached(
            "SELECT r.id FROM consent_reviews r LEFT JOIN review_resolutions s \
             ON s.review_id = r.id WHERE r.tenant = ? AND r.recipient_hash = ? \
             AND s.review_id IS NULL ORDER BY r.seq",
        )?
        .query_map(params![tenant, recipient_hash], |row| row.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    let recent_us = match recent {
        None => Vec::new(),
        Some((since_us, limit)) => transaction
            .prepare_cached(RECENT_SENDS)?
            .query_map(
                params![tenant, recipient_hash, purpose, since_us, limit],
                |row| row.get(0),
            )?
            .collect::<Result<Vec<i64>, _>>()?,
    };
    let recipient_key = transaction
        .prepare_cached(&format!(
            "{KEY_SELECT} WHERE tenant = ? AND recipient_hash = ? AND key_id IS NOT NULL"
        ))?
        .query_row(params![tenant, recipient_hash], key_from_row)
        .optional()?;
    Ok(RecipientFacts {
        consent,
        confirmed_opt_outs,
        open_reviews,
        recent_us,
        recipient_key,
    })
}

/// A recipient's key, in the columns [`key_from_row`] reads.
const KEY_SELECT: &str = "SELECT tenant, recipient_hash, key_id, key_data_key_id, key_wrapped, \
     key_created_at_us FROM log_heads";

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RecipientKeyRow> {
    Ok(RecipientKeyRow {
        tenant: row.get(0)?,
        recipient_hash: row.get(1)?,
        id: row.get(2)?,
        data_key_id: row.get(3)?,
        wrapped: row.get(4)?,
        created_at_us: row.get(5)?,
    })
}

/// The times of a recipient's recent sends of a purpose that a cap counts: allowed when sent,
/// or allowed at a release. It repeats the condition of the partial index
/// `messages_by_recipient_purpose` (migration 0018), without which it would not be used.
pub(super) const RECENT_SENDS: &str = "SELECT at FROM ( \
     SELECT created_at_us AS at FROM messages WHERE tenant = ?1 \
     AND recipient_hash = ?2 AND purpose = ?3 AND purpose <> 'transactional' \
     AND decision = 'allowed' AND created_at_us > ?4 \
     UNION ALL \
     SELECT r.decided_at_us AS at FROM message_releases r \
     JOIN messages m ON m.id = r.message_id \
     WHERE m.tenant = ?1 AND m.recipient_hash = ?2 AND m.purpose = ?3 \
     AND m.purpose <> 'transactional' \
     AND r.decision = 'allowed' AND r.decided_at_us > ?4) \
     ORDER BY at DESC LIMIT ?5";

fn poisoned() -> StoreError {
    StoreError::Unsafe("the read connection pool is poisoned".into())
}
