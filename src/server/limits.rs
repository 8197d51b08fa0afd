//! How many connections are open, in all and per client address, and which one gives way.
//!
//! A new connection beyond a limit takes the place of an open one that has not shown a valid
//! token yet (a slow or idle client that never authenticated), oldest first, preferring one
//! that is already closing; when every open connection has authenticated, the new one is
//! refused. Real senders keep their connections while unauthenticated ones hold the table.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

pub struct Limits {
    max: usize,
    per_client: usize,
    table: Mutex<Table>,
    /// Counted for the metrics.
    pub evicted: AtomicU64,
    pub refused: AtomicU64,
    pub handshake_failures: AtomicU64,
}

#[derive(Default)]
struct Table {
    next: u64,
    /// By admission order: the first is the oldest.
    open: BTreeMap<u64, Entry>,
    per_client: HashMap<IpAddr, usize>,
}

struct Entry {
    client: IpAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    proven: AtomicBool,
    closing: AtomicBool,
    evicted: AtomicBool,
    eviction: Notify,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `server.max_connections` are open and all have authenticated.
    Full,
    /// `server.max_connections_per_client` are open from this address and all have
    /// authenticated.
    Client,
}

/// An open connection's place in the table; dropping it frees the place.
pub struct Slot {
    limits: Arc<Limits>,
    id: u64,
    shared: Arc<Shared>,
}

/// Carried in each request's extensions: marks its connection as authenticated.
#[derive(Clone)]
pub struct Proof(Arc<Shared>);

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("max", &self.max)
            .field("per_client", &self.per_client)
            .field("open", &self.open())
            .finish()
    }
}

impl Limits {
    pub fn new(max: usize, per_client: usize) -> Arc<Limits> {
        Arc::new(Limits {
            max: max.max(1),
            per_client: per_client.max(1),
            table: Mutex::new(Table::default()),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
        })
    }

    /// A place for a connection from `client`, made by evicting an unauthenticated one if
    /// the table is full.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Slot, Refused> {
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if table.per_client.get(&client).copied().unwrap_or(0) >= self.per_client {
            if !table.evict(|entry| entry.client == client) {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Client);
            }
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        if table.open.len() >= self.max {
            if !table.evict(|_| true) {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Full);
            }
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let id = table.next;
        table.next += 1;
        let shared = Arc::new(Shared::default());
        table.open.insert(
            id,
            Entry {
                client,
                shared: shared.clone(),
            },
        );
        *table.per_client.entry(client).or_default() += 1;
        Ok(Slot {
            limits: self.clone(),
            id,
            shared,
        })
    }

    /// How many connections hold a place (open or lingering).
    pub fn open(&self) -> usize {
        self.table.lock().map(|table| table.open.len()).unwrap_or(0)
    }
}

impl Table {
    /// Evicts the connection that gives way among those `eligible`: a closing one first, then
    /// the oldest that has not authenticated. False when there is none.
    fn evict(&mut self, eligible: impl Fn(&Entry) -> bool) -> bool {
        let candidates = || self.open.iter().filter(|(_, entry)| eligible(entry));
        let chosen = candidates()
            .find(|(_, entry)| entry.shared.closing.load(Ordering::Acquire))
            .or_else(|| {
                candidates().find(|(_, entry)| !entry.shared.proven.load(Ordering::Acquire))
            })
            .map(|(id, _)| *id);
        let Some(id) = chosen else { return false };
        if let Some(entry) = self.remove(id) {
            entry.shared.evicted.store(true, Ordering::Release);
            entry.shared.eviction.notify_one();
        }
        true
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.open.remove(&id)?;
        if let Some(count) = self.per_client.get_mut(&entry.client) {
            *count -= 1;
            if *count == 0 {
                self.per_client.remove(&entry.client);
            }
        }
        Some(entry)
    }
}

impl Slot {
    pub fn proof(&self) -> Proof {
        Proof(self.shared.clone())
    }

    /// True once the connection was told to give way.
    pub fn evicted(&self) -> bool {
        self.shared.evicted.load(Ordering::Acquire)
    }

    /// Completes when the connection is told to give way.
    pub fn eviction(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move { shared.eviction.notified().await }
    }

    /// Marks the connection as closing (lingering): the first to give way.
    pub fn closing(&self) {
        self.shared.closing.store(true, Ordering::Release);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut table) = self.limits.table.lock() {
            table.remove(self.id);
        }
    }
}

impl Proof {
    pub fn is_proven(&self) -> bool {
        self.0.proven.load(Ordering::Relaxed)
    }

    pub fn prove(&self) {
        self.0.proven.store(true, Ordering::Release);
    }
}

/// The default limit: three quarters of the process's open-file limit, leaving the rest for
/// the database, the upstream connections and the files consentry opens.
pub fn default_max_connections() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let files = limit
        .current
        .and_then(|files| usize::try_from(files).ok())
        .unwrap_or(65_536);
    (files.saturating_mul(3) / 4).clamp(16, 1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_full_table_evicts_the_oldest_unauthenticated_connection() {
        let limits = Limits::new(3, 10);
        let first = limits.admit(client(1)).unwrap();
        let second = limits.admit(client(1)).unwrap();
        let third = limits.admit(client(2)).unwrap();
        first.proof().prove();
        let fourth = limits.admit(client(3)).unwrap();
        assert!(
            !first.evicted(),
            "an authenticated connection keeps its place"
        );
        assert!(second.evicted(), "the oldest unauthenticated one gives way");
        assert!(!third.evicted());
        assert_eq!(limits.open(), 3);
        drop(second);
        assert_eq!(limits.open(), 3, "an evicted slot was already freed");
        third.closing();
        let _fifth = limits.admit(client(4)).unwrap();
        assert!(third.evicted(), "a closing connection gives way first");
        fourth.proof().prove();
        _fifth.proof().prove();
        assert_eq!(limits.admit(client(5)).err(), Some(Refused::Full));
    }

    #[test]
    fn one_client_is_limited_to_its_share() {
        let limits = Limits::new(100, 2);
        let a = limits.admit(client(1)).unwrap();
        let b = limits.admit(client(1)).unwrap();
        a.proof().prove();
        b.proof().prove();
        assert_eq!(limits.admit(client(1)).err(), Some(Refused::Client));
        assert!(limits.admit(client(2)).is_ok());
        drop(a);
        assert!(limits.admit(client(1)).is_ok());
    }
}
