//! The sequencer: gives pending log entries their leaf indexes and signs checkpoints every
//! `checkpoint_leaves` leaves or `checkpoint_interval_ms`, in the background. On PostgreSQL
//! every entry is written pending (several instances write at once) and indexed here; on SQLite
//! the group writer indexes the entries it writes as it writes them, and what is left pending
//! here is the few written through sqlx (erasures, body accesses, replies).
//!
//! Several instances may run it against one PostgreSQL database: each batch takes a
//! transaction-scoped advisory lock, so one sequences at a time and another takes over as soon
//! as one stops; the unique `leaf_index` makes a second assignment of a position impossible.
//!
//! Of the store it uses the [`AuditLog`] part only.

use std::time::Duration;

use super::checkpoint::{Cadence, Checkpoint, LogSigner};
use crate::store::{AuditLog, StoreError};

/// Entries sequenced per transaction.
const BATCH: i64 = 250;
/// How often the sequencer looks for pending entries.
const POLL: Duration = Duration::from_millis(200);

/// How many polls between looks for a rotated data key.
const KEY_REFRESH_POLLS: u32 = 10;

/// Runs the sequencer until `stop` turns true. It also looks for rotated data keys every
/// couple of seconds, so a rotation reaches every instance without a restart.
pub async fn run(current: crate::state::Current, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut polls = 0u32;
    loop {
        let state = current.borrow().clone();
        polls = polls.wrapping_add(1);
        if polls % KEY_REFRESH_POLLS == 0
            && let Err(error) = state.keys.refresh().await
        {
            tracing::warn!(%error, "looking for a rotated data key failed");
        }
        let now_us = || state.clock.now().as_microsecond();
        if state.log_cadence.enabled
            && let Err(error) = step(
                state.audit_log(),
                &state.log_signer,
                state.log_cadence,
                &now_us,
            )
            .await
        {
            tracing::warn!(%error, "sequencing the log failed; retrying");
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// Sequences what is pending (batch by batch until a batch is not full: under steady load new
/// pending entries keep arriving, and the sequencer must still get to sign), signing a checkpoint
/// whenever one is due, stamped with the time it is signed (`now_us` is read at each); returns
/// the last one signed.
pub async fn step(
    store: &dyn AuditLog,
    signer: &LogSigner,
    cadence: Cadence,
    now_us: &(dyn Fn() -> i64 + Sync),
) -> Result<Option<Checkpoint>, StoreError> {
    let mut signed = None;
    loop {
        let Some(head) = store.sequence_log(BATCH).await? else {
            // Another instance is sequencing; it signs too.
            return Ok(signed);
        };
        if let Some(checkpoint) = sign_if_due(store, signer, cadence, head, now_us()).await? {
            signed = Some(checkpoint);
        }
        if head.indexed < BATCH as u64 {
            return Ok(signed);
        }
    }
}

/// Signs the head if the cadence says a checkpoint is due.
async fn sign_if_due(
    store: &dyn AuditLog,
    signer: &LogSigner,
    cadence: Cadence,
    head: crate::store::LogHead,
    now_us: i64,
) -> Result<Option<Checkpoint>, StoreError> {
    let latest = store.latest_checkpoint().await?;
    let due = match &latest {
        None => head.size > 0,
        Some(latest) => {
            head.size > latest.tree_size
                && (head.size - latest.tree_size >= cadence.leaves
                    || now_us - latest.signed_at_us >= cadence.interval_us)
        }
    };
    if !due {
        return Ok(None);
    }
    let checkpoint = signer.sign(head.size, head.root, now_us);
    store.record_checkpoint(&checkpoint).await?;
    Ok(Some(checkpoint))
}
