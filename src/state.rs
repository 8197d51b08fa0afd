//! The state every request handler, flow and worker shares: the parts [`App::build`] made from
//! the configuration (tenants, verifier, store, keys, upstreams, policies), the clock, and the
//! per-recipient locks. It holds no logic beyond taking a recipient's turn; the flows that use
//! it live in `flow`, the workers in `scheduler`, `outbox` and `audit::sequencer`. Its accessors
//! (`ledger()`, `messages()`, `audit_log()`, ...) give each of them the part of the store it uses.
//!
//! [`App::build`]: crate::app::App::build

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::audit::checkpoint::{Cadence, LogSigner};
use crate::auth::Verifier;
use crate::config::Tenant;
use crate::crypto::NumberHasher;
use crate::domain::TenantId;
use crate::keyring::KeyRing;
use crate::outbox::webhooks::Webhooks;
use crate::policy::rules::PolicySet;
use crate::store::{
    AuditLog, Database, IdempotencyKeys, Inbound, Keys, Ledger, Messages, Outbox, Store,
};
use crate::upstream::Upstreams;

/// The state live now: a reload (`App::reload`) sends a new one; requests and worker passes
/// take the one current when they start, and finish with it.
pub type Current = tokio::sync::watch::Receiver<Arc<AppState>>;

/// What every request handler, flow and worker shares. A reload builds a new one from the new
/// configuration around the same shared parts (`Arc`s: the store, keys, locks, metrics...), so
/// a recipient's turn and the counts survive it.
#[derive(Debug)]
pub struct AppState {
    pub clock: Clock,
    pub recipient_locks: Arc<RecipientLocks>,
    pub tenants: BTreeMap<TenantId, Tenant>,
    pub verifier: Verifier,
    pub store: Arc<dyn Store>,
    pub keys: Arc<KeyRing>,
    /// Signs the verifiable log's checkpoints.
    pub log_signer: Arc<LogSigner>,
    pub log_cadence: Cadence,
    /// The witnesses each new checkpoint goes to (`audit::witnessing`).
    pub witnesses: Vec<crate::audit::checkpoint::WitnessEndpoint>,
    /// The client that talks to them.
    pub witness_client: crate::upstream::HttpClient,
    pub numbers: Arc<NumberHasher>,
    pub upstreams: Upstreams,
    /// Each upstream's pace (kept across reloads).
    pub pacer: Arc<crate::pacing::Pacer>,
    /// The reassigned-numbers lookup, when one is configured.
    pub reassigned: Option<Arc<crate::reassigned::Lookup>>,
    pub policies: PolicySet,
    pub webhooks: Webhooks,
    pub max_request_bytes: usize,
    /// The slowest a request body may arrive, after its grace (`http::edge`).
    pub min_body_rate: u64,
    /// What the flows count, for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Which configuration is live: 1 at start, one more at each reload.
    pub config_version: u64,
    /// The API listener's connection table, read by `/metrics`.
    pub connections: Arc<crate::server::limits::Limits>,
    /// Who may bind to the SMPP front (`[[smpp.accounts]]`); empty without `[smpp]`.
    pub smpp_accounts: Arc<crate::smpp::accounts::Accounts>,
    /// The SMPP sessions bound to receive replies and receipts (kept across reloads).
    pub smpp_receivers: Arc<crate::smpp::deliver::Receivers>,
    /// Single sends waiting to be decided together (`flow::send::process`).
    pub deciding: crate::flow::combine::Combiner,
    /// The API's handlers under way, each in a task of its own (`http::edge`): a client that
    /// goes away does not stop one; shutdown waits for them (kept across reloads).
    pub in_flight: tokio_util::task::TaskTracker,
}

/// The parts of the store (`store`'s traits): each flow and worker names the one it uses, and
/// `store` itself is for what needs all of them.
impl AppState {
    /// Whether the database answers, how it groups writes, the shared settings.
    pub fn database(&self) -> &dyn Database {
        &*self.store
    }

    /// The consent ledger, the facts a decision reads, and the recipient's lock.
    pub fn ledger(&self) -> &dyn Ledger {
        &*self.store
    }

    /// Message records, outcomes, releases and deferred claims, and messages read back.
    pub fn messages(&self) -> &dyn Messages {
        &*self.store
    }

    /// Inbound messages and reviews.
    pub fn inbound(&self) -> &dyn Inbound {
        &*self.store
    }

    /// Deliveries to tenants' webhooks and status callbacks.
    pub fn outbox(&self) -> &dyn Outbox {
        &*self.store
    }

    /// The verifiable log: sequencing, subtrees, checkpoints, audit lists, body accesses,
    /// erasures.
    pub fn audit_log(&self) -> &dyn AuditLog {
        &*self.store
    }

    /// Idempotency keys of sends.
    pub fn idempotency_keys(&self) -> &dyn IdempotencyKeys {
        &*self.store
    }

    /// The keys as stored (wrapped); `keys` is the ring that unwraps and uses them.
    pub fn stored_keys(&self) -> &dyn Keys {
        &*self.store
    }
}

impl AppState {
    /// Waits for the recipient's turn.
    pub async fn recipient_turn(
        &self,
        recipient_hash: &str,
    ) -> Result<RecipientTurn<'_>, crate::store::StoreError> {
        self.recipients_turn(&[recipient_hash]).await
    }

    /// Waits for the turn of every recipient of a group at once (in a fixed order, so that
    /// two groups never wait for each other in a circle).
    pub async fn recipients_turn(
        &self,
        recipient_hashes: &[&str],
    ) -> Result<RecipientTurn<'_>, crate::store::StoreError> {
        let local = self.recipient_locks.lock_all(recipient_hashes).await;
        let shared = self.ledger().lock_recipients(recipient_hashes).await?;
        Ok(RecipientTurn {
            _local: local,
            shared,
        })
    }

    /// The recipients' turn in this process only (a consent import's batch, too many
    /// recipients for PostgreSQL's lock table): the sends of this instance wait for it.
    pub async fn local_turn(&self, recipient_hashes: &[&str]) -> LocalTurn<'_> {
        LocalTurn(self.recipient_locks.lock_all(recipient_hashes).await)
    }
}

/// Recipients' in-process locks, held until dropped ([`AppState::local_turn`]).
pub struct LocalTurn<'a>(#[allow(dead_code)] Vec<Held<'a>>);

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// Where the application reads the time. Only the IO edges read it; `decide` is given it.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    /// The system clock shifted by an offset that tests set: time still passes, from the
    /// instant they choose (quiet hours and deferrals are tested at known local times).
    Shifted(Arc<std::sync::Mutex<jiff::SignedDuration>>),
}

impl Clock {
    /// A clock that reads `at` now and moves on in real time.
    pub fn starting_at(at: jiff::Timestamp) -> Clock {
        let clock = Clock::Shifted(Arc::default());
        clock.set(at);
        clock
    }

    pub fn now(&self) -> jiff::Timestamp {
        let now = jiff::Timestamp::now();
        match self {
            Clock::System => now,
            Clock::Shifted(offset) => now + *offset.lock().expect("clock lock"),
        }
    }

    /// Makes a shifted clock read `to` now (a system clock ignores it).
    pub fn set(&self, to: jiff::Timestamp) {
        if let Clock::Shifted(offset) = self {
            *offset.lock().expect("clock lock") = to.duration_since(jiff::Timestamp::now());
        }
    }
}

/// Serialises the decisions about one recipient within this process, so that reading the
/// facts (caps, confirmations) and recording the decision are one step: two concurrent sends
/// to a number cannot both take the last place under a cap. One lock per recipient held or
/// awaited (keyed by the first 8 bytes of its keyed hash), made when first wanted and dropped
/// when no one holds or waits for it: two recipients never wait for each other, so a group of
/// recipients decided together (a batch) does not stall the sends beside it.
#[derive(Debug, Default)]
pub struct RecipientLocks {
    held: std::sync::Mutex<std::collections::HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
}

/// One recipient's lock, held; released when dropped.
struct Held<'a> {
    locks: &'a RecipientLocks,
    key: i64,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut held = self.locks.table();
        // Every holder and waiter took its clone under this table's lock: only the table's
        // own is left when no one holds or waits.
        if held
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            held.remove(&self.key);
        }
    }
}

impl RecipientLocks {
    fn table(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, Arc<tokio::sync::Mutex<()>>>>
    {
        // The table is only ever changed whole under its lock: a panic cannot leave it half
        // written, so a poisoned lock's table is still right.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for every one of `recipient_hashes`' locks, taken in the order of their keys
    /// (so that two groups never wait for each other in a circle; a recipient named twice is
    /// locked once).
    async fn lock_all(&self, recipient_hashes: &[&str]) -> Vec<Held<'_>> {
        let mut keys: Vec<i64> = recipient_hashes
            .iter()
            .map(|hash| crate::store::lock_key(hash))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut held = Vec::with_capacity(keys.len());
        for key in keys {
            let lock = self.table().entry(key).or_default().clone();
            // Counted as a holder from here: a drop while waiting keeps the table right.
            let mut entry = Held {
                locks: self,
                key,
                guard: None,
            };
            entry.guard = Some(lock.lock_owned().await);
            held.push(entry);
        }
        held
    }
}

/// A recipient's turn (or a group's: every one of its recipients'): the in-process locks and,
/// on PostgreSQL, the lock across the processes sharing the database. Every write about a
/// recipient that a decision reads (a send's record, a consent event, a reply) is made in its
/// turn, so the log's order of a recipient's leaves is the order in which its decisions were
/// made.
pub struct RecipientTurn<'a> {
    _local: Vec<Held<'a>>,
    pub shared: crate::store::RecipientLock,
}

impl RecipientTurn<'_> {
    /// Ends the turn (the shared lock is released explicitly, its connection returned).
    pub async fn end(self) {
        self.shared.release().await;
    }
}
