//! Checkpoints: copying the WAL's pages back into the database file, off the writer's path.
//!
//! SQLite checkpoints on commit by default, in the committing connection, every 1,000 pages:
//! on the send path that put the copy of a thousand pages and its fsync inside a batch's
//! commit, ahead of every writer waiting for it. This thread checkpoints `PASSIVE` (it waits
//! for no reader and blocks no writer) every few milliseconds, so the copy is done beside the
//! writer. Under a steady load it never quite catches up (pages arrive while it copies), and
//! the WAL can start over only once it is copied whole: the group writer keeps an automatic
//! checkpoint ([`writer_checkpoint_frames`]), which then has little left to copy, and lets the
//! WAL restart at its next write. The other connections do not checkpoint.

use std::path::Path;
use std::sync::Weak;
use std::time::Duration;

use super::connection;
use crate::store::StoreError;

/// How often the thread looks.
const INTERVAL: Duration = Duration::from_millis(20);
/// The WAL frames (pages) from which the group writer checkpoints after a commit of `records`
/// records. Small commits (single sends, a few dozen records) checkpoint from 4 MiB: the WAL
/// starts over more often, and the p99 of sends was lower (medians of alternating runs, 13.0
/// against 17.1 ms in one hour, 16.9 against 19.2 in a slower one: `bench/README.md`, "twelfth
/// look"). Large commits (a batch's groups, an import) from 16 MiB: there the writer is the
/// busy thread, and the copies it then makes itself instead of this thread cost batches 7 %.
pub(crate) fn writer_checkpoint_frames(records: usize) -> i64 {
    if records < LARGE_COMMIT { 1_024 } else { 4_096 }
}

/// Records from which a commit is large (see [`writer_checkpoint_frames`]).
const LARGE_COMMIT: usize = 128;

/// Starts the thread; it stops once `alive` can no longer be upgraded (the store is gone).
pub(crate) fn start<T: Send + Sync + 'static>(
    path: &Path,
    alive: Weak<T>,
) -> Result<(), StoreError> {
    let connection = connection::open(path, false)?;
    // It copies WAL frames to the file; it has no use for a page cache of its own.
    connection.pragma_update(None, "cache_size", -512)?;
    std::thread::Builder::new()
        .name("consentry-checkpoint".into())
        .spawn(move || {
            while alive.strong_count() > 0 {
                std::thread::sleep(INTERVAL);
                if let Err(error) =
                    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    tracing::warn!(%error, "WAL checkpoint failed; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        })
        .map_err(|e| StoreError::Unsafe(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(())
}
