//! Opening the hot path's own connections to the database file sqlx opened: the same
//! durability settings, checked.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::store::StoreError;

/// A connection to `path`, in WAL mode with `synchronous=FULL` (checked, as sqlx's are);
/// `read_only` ones refuse writes.
pub(crate) fn open(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let connection = Connection::open_with_flags(path, flags)?;
    connection.busy_timeout(Duration::from_secs(5))?;
    // As the sqlx pool's (SqliteStore::open): deleted content overwritten, foreign keys on;
    // and statement journals in memory; no checkpoint on commit: the checkpoint thread does
    // them (checkpointer.rs), and a WAL that grew is cut back to 32 MiB when it starts over.
    // 16 MiB of page cache for the writer, whose cache survives its own commits; readers get
    // less (below). (A memory map for reads was tried: the file grows with every batch, and
    // remapping it cost more than the preads it saved.)
    connection.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -16384; \
         PRAGMA secure_delete = ON; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 0; \
         PRAGMA journal_size_limit = 33554432;",
    )?;
    if read_only {
        // A reader's page cache is emptied whenever another connection commits (on the send
        // path, all the time): 2 MiB is all it ever holds to use, and there may be 16 of them.
        connection.pragma_update(None, "cache_size", -2048)?;
    }
    connection.set_prepared_statement_cache_capacity(64);
    let journal: String = connection.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
    let synchronous: i64 = connection.query_row("PRAGMA synchronous", [], |row| row.get(0))?;
    if !journal.eq_ignore_ascii_case("wal") || synchronous < 2 {
        return Err(StoreError::Unsafe(format!(
            "journal_mode is {journal} and synchronous {synchronous}, expected wal and FULL (2)"
        )));
    }
    Ok(connection)
}
