//! Verification of the log: by an auditor offline (an export, or one number's bundle, with a
//! checkpoint and the public key) or by an operator online (the database itself). Each check
//! names the first leaf index that fails and why.

use std::collections::BTreeMap;

use serde_json::Value;

use super::checkpoint::{Checkpoint, CheckpointView, unhex};
use super::leaf::{self, Field, Kind, Link};
use super::merkle::{self, Frontier, Hash};
use super::note::WitnessKey;
use crate::crypto::hex;
use crate::store::{AuditLog, StoreError};

/// Why verification failed, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", match position { Some(p) => format!("leaf {p}: "), None => String::new() })]
pub struct Failure {
    /// The first leaf index that fails, when one can be named.
    pub position: Option<u64>,
    pub reason: String,
}

fn fail(position: impl Into<Option<u64>>, reason: impl Into<String>) -> Failure {
    Failure {
        position: position.into(),
        reason: reason.into(),
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub leaves: u64,
    pub checkpoints: usize,
    pub root: Hash,
    /// The size of the largest checkpoint that matched: leaves past it are not signed yet.
    pub signed: u64,
    /// With a witness policy: the largest checkpoint a quorum of witnesses cosigned.
    pub witnessed: Option<u64>,
    /// Allowed messages whose consent was replayed against the log.
    pub replayed: u64,
}

/// The witnesses an auditor relies on: a checkpoint counts as witnessed when `quorum` of them
/// cosigned it (C2SP tlog-cosignature, over the log's note named `origin`).
#[derive(Debug, Clone)]
pub struct WitnessPolicy {
    /// The log's origin line.
    pub origin: String,
    pub witnesses: Vec<WitnessKey>,
    pub quorum: usize,
    /// A checkpoint signed more than this long before the newest one must be witnessed:
    /// newer ones may still be on their way to the witnesses.
    pub grace_us: i64,
    /// The latest heads the witnesses themselves say they cosigned (`GET /checkpoint` of a
    /// `consentry witness`), checked as [`witnessed_head`] read them: the log must hold each.
    pub heads: Vec<WitnessedHead>,
}

/// A tree head a witness cosigned, as the witness shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessedHead {
    pub witness: String,
    pub tree_size: u64,
    pub root: Hash,
}

/// Reads a witness's latest cosigned checkpoint (a C2SP note with the log's signature and the
/// witness's cosignature): both must verify, the log's under `log_key` and the witness's under
/// one of the policy's keys.
pub fn witnessed_head(
    note_text: &str,
    log_key: &[u8],
    policy: &WitnessPolicy,
) -> Result<WitnessedHead, String> {
    let note = super::note::SignedCheckpoint::parse(note_text)?;
    if note.origin != policy.origin {
        return Err(format!(
            "the witness shows a checkpoint of {}, not of {}",
            note.origin, policy.origin
        ));
    }
    if !note.signed_by_log(log_key) {
        return Err("the witness shows a checkpoint the log's key did not sign".into());
    }
    for (name, bytes) in &note.signatures {
        let Some(key) = policy.witnesses.iter().find(|key| &key.name == name) else {
            continue;
        };
        let Ok(cosignature) = super::note::Cosignature::from_parts(name.clone(), bytes.clone())
        else {
            continue;
        };
        if cosignature.verify(key, &note.body).is_ok() {
            return Ok(WitnessedHead {
                witness: name.clone(),
                tree_size: note.tree_size,
                root: note.root,
            });
        }
    }
    Err("the checkpoint it shows carries no cosignature by a witness of the policy".into())
}

/// Checks the checkpoints against a witness policy; returns the largest tree size a quorum
/// cosigned. Fails on a cosignature by a policy witness that does not verify (that witness
/// saw another tree of that size), when no checkpoint has a quorum, and when a checkpoint
/// older than the grace is larger than every witnessed one (the witnesses refused it, or
/// never saw it). Cosignatures by other keys are ignored.
pub fn check_witnesses(policy: &WitnessPolicy, checkpoints: &[Checkpoint]) -> Result<u64, Failure> {
    if policy.quorum == 0 || policy.quorum > policy.witnesses.len() {
        return Err(fail(
            None,
            format!(
                "a quorum of {} among {} witnesses cannot be met",
                policy.quorum,
                policy.witnesses.len()
            ),
        ));
    }
    // The largest size each witness cosigned: a cosignature vouches for every smaller tree the
    // cosigned one extends, which the checkpoints' roots, checked against the tree, show.
    let mut largest: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for checkpoint in checkpoints {
        let body = checkpoint.note_body(&policy.origin);
        for cosignature in &checkpoint.cosignatures {
            // Lines by other keys (another name, or another key id) are ignored.
            let Some(key) = policy
                .witnesses
                .iter()
                .find(|key| key.name == cosignature.witness && cosignature.bytes[..4] == key.id())
            else {
                continue;
            };
            cosignature.verify(key, &body).map_err(|why| {
                fail(
                    None,
                    format!(
                        "checkpoint at size {}: {why}: that witness cosigned another tree of \
                         this size (or another origin than {})",
                        checkpoint.tree_size, policy.origin
                    ),
                )
            })?;
            let size = largest.entry(key.name.as_str()).or_default();
            *size = (*size).max(checkpoint.tree_size);
        }
    }
    let mut sizes: Vec<u64> = largest.into_values().collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    // The largest size that `quorum` witnesses cosigned or extended.
    let witnessed = sizes.get(policy.quorum - 1).copied();
    let Some(witnessed) = witnessed else {
        let newest = checkpoints.iter().map(|c| c.tree_size).max();
        return Err(fail(
            None,
            format!(
                "{}no checkpoint is cosigned by {} of the {} witnesses: nothing in this log is \
                 witnessed, so a history rewritten with the log's key would look the same",
                newest.map_or(String::new(), |size| format!(
                    "checkpoint at size {size} (the newest): "
                )),
                policy.quorum,
                policy.witnesses.len()
            ),
        ));
    };
    let newest = checkpoints
        .iter()
        .map(|c| c.signed_at_us)
        .max()
        .unwrap_or(0);
    if let Some(unwitnessed) = checkpoints
        .iter()
        .filter(|c| c.tree_size > witnessed && c.signed_at_us < newest - policy.grace_us)
        .min_by_key(|c| c.tree_size)
    {
        return Err(fail(
            witnessed,
            format!(
                "the checkpoint at size {} was never cosigned by {} witnesses, though newer \
                 checkpoints came after it; the witnesses refused or never saw it (the largest \
                 witnessed size is {witnessed})",
                unwitnessed.tree_size, policy.quorum
            ),
        ));
    }
    Ok(witnessed)
}

/// How far a leaf's recording time may fall behind the latest one before it in the log: rows
/// decided at one moment reach the log in the order their writes were queued, and instances
/// sharing a PostgreSQL database have clocks of their own. Past it, the row was back-dated or
/// slipped into the log out of its order.
pub const ORDER_TOLERANCE_US: i64 = 60_000_000;

/// Checks that the leaves' recording times never go back along the log by more than
/// [`ORDER_TOLERANCE_US`].
#[derive(Debug, Default)]
pub struct OrderCheck {
    /// The latest recording time seen, and at which leaf.
    latest: Option<(i64, u64)>,
}

impl OrderCheck {
    /// Takes the leaf at `index` (its bytes, already checked to be a well-formed leaf).
    pub fn see(&mut self, index: u64, bytes: &[u8]) -> Result<(), Failure> {
        let at = leaf::decode(bytes)
            .and_then(|(kind, fields)| leaf::recorded_at_us(kind, &fields))
            .ok_or_else(|| fail(index, "the leaf has no recording time"))?;
        match self.latest {
            Some((latest, latest_index)) if at < latest - ORDER_TOLERANCE_US => Err(fail(
                index,
                format!(
                    "recorded at {}, {} s before leaf {latest_index} (recorded at {}) that comes \
                     before it in the log: the row was back-dated or put in the log out of its \
                     order (the tolerance is {} s)",
                    show_time(at),
                    (latest - at) / 1_000_000,
                    show_time(latest),
                    ORDER_TOLERANCE_US / 1_000_000
                ),
            )),
            Some((latest, _)) if at <= latest => Ok(()),
            _ => {
                self.latest = Some((at, index));
                Ok(())
            }
        }
    }
}

/// Replays each allowed message's consent: the basis its leaf records (`policy::Basis`: the
/// opt-in it rested on and the consent rules applied) must hold against the recipient's
/// consent events that come before it in the log. A message whose opt-in is not in the log
/// before it, or that an earlier opt-out forbids, fails. A held message (deferred, scheduled,
/// paced or throttled) is replayed when a release allows it, at that release's place and time,
/// against the basis the release records. Messages recorded before bases were (leaf version 1)
/// and releases before they had one (leaf version 3) are not replayed.
#[derive(Debug, Default)]
pub struct Replay {
    /// Each recipient's consent events so far, by tenant and recipient hash.
    ledgers: std::collections::HashMap<(String, String), Vec<crate::consent::ConsentEvent>>,
    /// The purpose and scope of each message not denied so far, which a release may allow
    /// later: by the 128 bits of its id, as an index into `scopes` (a log has few distinct
    /// ones), so that a log of millions of messages costs tens of bytes each.
    messages: std::collections::HashMap<[u8; 16], u32>,
    scopes: Vec<(crate::domain::Purpose, crate::domain::Scope)>,
    scope_index: std::collections::HashMap<(crate::domain::Purpose, crate::domain::Scope), u32>,
    /// How many decisions were replayed.
    pub replayed: u64,
}

/// The 128 bits of a message id (`msg_` and 32 hex digits), as bytes (which a map packs
/// tighter than a `u128`).
fn message_bits(id: &str) -> Option<[u8; 16]> {
    let hex = id.strip_prefix("msg_")?;
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u128::from_str_radix(hex, 16).ok())
        .flatten()
        .map(u128::to_be_bytes)
}

impl Replay {
    /// Takes the leaf at `index` (already checked to be well formed).
    pub fn see(&mut self, index: u64, bytes: &[u8]) -> Result<(), Failure> {
        let Some((kind, fields)) = leaf::decode(bytes) else {
            return Err(fail(index, "the leaf is not in the documented format"));
        };
        let text = |position: usize| match fields.get(position) {
            Some(Field::Bytes(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        };
        let int = |position: usize| match fields.get(position) {
            Some(Field::Int(value)) => Some(*value),
            _ => None,
        };
        let unreadable = |what: &str| fail(index, format!("the leaf's {what} does not read"));
        let at = |us: Option<i64>, what: &str| {
            us.and_then(|us| jiff::Timestamp::from_microsecond(us).ok())
                .ok_or_else(|| unreadable(what))
        };
        let basis = |json: &str| {
            serde_json::from_str::<crate::policy::Basis>(json)
                .map_err(|_| unreadable("decision basis"))
        };
        match kind {
            Kind::ConsentEvent => {
                let key = (
                    text(1).ok_or_else(|| unreadable("tenant"))?,
                    text(2).ok_or_else(|| unreadable("recipient_hash"))?,
                );
                let event = crate::consent::ConsentEvent::from_columns(
                    index as i64,
                    text(0).ok_or_else(|| unreadable("id"))?,
                    &text(4).ok_or_else(|| unreadable("action"))?,
                    text(5).as_deref(),
                    text(6),
                    text(7),
                    &text(8).ok_or_else(|| unreadable("purposes"))?,
                    int(10).ok_or_else(|| unreadable("occurred_at_us"))?,
                    &text(9).ok_or_else(|| unreadable("method"))?,
                )
                .map_err(unreadable)?;
                self.ledgers.entry(key).or_default().push(event);
                Ok(())
            }
            Kind::Message => {
                let decision = text(9);
                if decision.as_deref() == Some("denied") {
                    return Ok(());
                }
                let purpose: crate::domain::Purpose = text(6)
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| unreadable("purpose"))?;
                let scope = crate::domain::Scope {
                    brand: text(7),
                    campaign: text(8),
                };
                if let Some(bits) = text(0).as_deref().and_then(message_bits) {
                    let next = u32::try_from(self.scopes.len()).unwrap_or(u32::MAX);
                    let slot = *self
                        .scope_index
                        .entry((purpose, scope.clone()))
                        .or_insert(next);
                    if slot == next {
                        self.scopes.push((purpose, scope.clone()));
                    }
                    self.messages.insert(bits, slot);
                }
                match text(17) {
                    Some(json) if decision.as_deref() == Some("allowed") => {
                        let key = (
                            text(1).ok_or_else(|| unreadable("tenant"))?,
                            text(3).ok_or_else(|| unreadable("recipient_hash"))?,
                        );
                        let decided_at = at(int(2), "created_at_us")?;
                        self.replay(index, &basis(&json)?, &key, &scope, purpose, decided_at)
                    }
                    _ => Ok(()),
                }
            }
            // Denied when it came due (or cancelled): no later release may send it.
            Kind::Release if text(5).as_deref() == Some("denied") => {
                if let Some(bits) = text(2).as_deref().and_then(message_bits) {
                    self.messages.remove(&bits);
                }
                Ok(())
            }
            Kind::Release
                if bytes.first() == Some(&leaf::RELEASE_BASIS_VERSION)
                    && text(5).as_deref() == Some("allowed") =>
            {
                let message = text(2).ok_or_else(|| unreadable("message_id"))?;
                let Some((purpose, scope)) = message_bits(&message)
                    .and_then(|bits| self.messages.get(&bits))
                    .and_then(|&slot| self.scopes.get(slot as usize))
                    .cloned()
                else {
                    return Err(fail(
                        index,
                        format!(
                            "the release allows message {message}, which is not in the log \
                             before it (or was denied there, or by a release before)"
                        ),
                    ));
                };
                let key = (
                    text(1).ok_or_else(|| unreadable("tenant"))?,
                    text(3).ok_or_else(|| unreadable("recipient_hash"))?,
                );
                let json = text(7).ok_or_else(|| unreadable("decision basis"))?;
                let decided_at = at(int(4), "decided_at_us")?;
                self.replay(index, &basis(&json)?, &key, &scope, purpose, decided_at)
            }
            _ => Ok(()),
        }
    }

    fn replay(
        &mut self,
        index: u64,
        basis: &crate::policy::Basis,
        key: &(String, String),
        scope: &crate::domain::Scope,
        purpose: crate::domain::Purpose,
        decided_at: jiff::Timestamp,
    ) -> Result<(), Failure> {
        let events = self.ledgers.get(key).map_or(&[][..], Vec::as_slice);
        self.replayed += 1;
        replay(index, basis, events, scope, purpose, decided_at)
    }
}

/// Checks each recipient's chain: every leaf about a recipient written since chains
/// (`leaf::Link`) names the hash of the leaf about the same tenant and recipient hash that
/// comes just before it in the log, or none if none does. A leaf of a number deleted, or one
/// put in its place, breaks the link of the next.
#[derive(Debug, Default)]
pub struct ChainCheck {
    /// The newest leaf about each recipient so far (its hash and index), by tenant and
    /// recipient hash.
    heads: std::collections::HashMap<(Vec<u8>, Vec<u8>), (Hash, u64)>,
}

impl ChainCheck {
    /// Takes the leaf at `index` (already checked to be well formed).
    pub fn see(&mut self, index: u64, bytes: &[u8]) -> Result<(), Failure> {
        let (kind, fields) = leaf::decode(bytes)
            .ok_or_else(|| fail(index, "the leaf is not in the documented format"))?;
        let Some((tenant, recipient)) = leaf::about(kind, &fields) else {
            return Ok(());
        };
        let link = leaf::link_of(bytes, &fields)
            .ok_or_else(|| fail(index, "the leaf's link to the previous leaf does not read"))?;
        let key = (tenant.to_vec(), recipient.to_vec());
        let previous = self.heads.get(&key).copied();
        let broken = match (link, previous) {
            (Link::Unchained | Link::First, None) | (Link::Unchained, Some(_)) => None,
            (Link::After(hash), Some((previous, _))) if hash == previous => None,
            (Link::First, Some((_, at))) => Some(format!(
                "the leaf says it is the first about its number, but leaf {at} before it is \
                 about the same number"
            )),
            (Link::After(_), Some((_, at))) => Some(format!(
                "the leaf links to a previous leaf about its number that is not leaf {at}, the \
                 one before it: a leaf of the number is missing or was replaced"
            )),
            (Link::After(_), None) => Some(
                "the leaf links to a previous leaf about its number that is not there: a leaf \
                 of the number is missing"
                    .to_owned(),
            ),
        };
        if let Some(why) = broken {
            return Err(fail(index, why));
        }
        self.heads.insert(key, (merkle::leaf_hash(bytes), index));
        Ok(())
    }
}

/// One allowed message's consent, decided again from the events before it.
fn replay(
    index: u64,
    basis: &crate::policy::Basis,
    events: &[crate::consent::ConsentEvent],
    scope: &crate::domain::Scope,
    purpose: crate::domain::Purpose,
    decided_at: jiff::Timestamp,
) -> Result<(), Failure> {
    use crate::consent::{ConsentProblem, ConsentState};
    if let Some(id) = &basis.consent_event
        && !events.iter().any(|event| &event.id == id)
    {
        return Err(fail(
            index,
            format!(
                "the message rests on consent event {id}, which is not in the log before it: \
                 the opt-in was never logged, or logged after the send"
            ),
        ));
    }
    let replayed = crate::consent::check(events, scope, purpose, &basis.policy(), decided_at);
    match (replayed, &basis.consent_event) {
        // Allowed again. (Which of two equal opt-ins the fold names may differ: the log orders
        // a recipient's events as they were committed, the ledger as they were numbered,
        // which on PostgreSQL can differ. The one the message names is in the log before it.)
        (Ok(ConsentState::OptedIn { .. }), _) | (Ok(ConsentState::NoRecord), None) => Ok(()),
        (Ok(_), _) => Err(fail(
            index,
            "replayed against the consent events before it, the message has no opt-in to rest on",
        )),
        (Err(ConsentProblem::OptedOut(event)), _) => Err(fail(
            index,
            format!(
                "the message was allowed, yet opt-out {} comes before it in the log and \
                 forbids it",
                event.id
            ),
        )),
        (Err(ConsentProblem::NoConsent { needed, .. }), _) => Err(fail(
            index,
            format!(
                "the message was allowed, yet the consent events before it in the log hold no \
                 {} opt-in for it",
                needed.as_str()
            ),
        )),
    }
}

fn show_time(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us).map_or_else(|_| format!("{us} us"), |t| t.to_string())
}

/// Rebuilds the tree from leaves fed in order and checks it against every checkpoint.
pub struct LogVerifier {
    frontier: Frontier,
    checkpoints: BTreeMap<u64, Checkpoint>,
    /// Heads witnesses cosigned, by size: the tree must pass through each.
    heads: BTreeMap<u64, WitnessedHead>,
    checked: usize,
    /// The size of the last checkpoint that matched.
    last_good: u64,
}

impl LogVerifier {
    /// Checks every checkpoint's signature first: a forged one fails before any leaf is read.
    /// Two signed checkpoints of one size with different roots are a fork, and fail.
    pub fn new(public_key: &[u8], checkpoints: Vec<Checkpoint>) -> Result<LogVerifier, Failure> {
        let mut by_size: BTreeMap<u64, Checkpoint> = BTreeMap::new();
        for checkpoint in checkpoints {
            checkpoint.verify(public_key).map_err(|reason| {
                fail(
                    None,
                    format!("checkpoint at size {}: {reason}", checkpoint.tree_size),
                )
            })?;
            if let Some(other) = by_size.get(&checkpoint.tree_size)
                && other.root_hash != checkpoint.root_hash
            {
                return Err(fail(
                    None,
                    format!(
                        "checkpoint at size {}: two signed checkpoints of this size have \
                         different roots: the log forked",
                        checkpoint.tree_size
                    ),
                ));
            }
            by_size.insert(checkpoint.tree_size, checkpoint);
        }
        Ok(LogVerifier {
            frontier: Frontier::default(),
            heads: BTreeMap::new(),
            checkpoints: by_size,
            checked: 0,
            last_good: 0,
        })
    }

    /// Also checks the tree against heads witnesses cosigned.
    pub fn with_heads(mut self, heads: &[WitnessedHead]) -> LogVerifier {
        self.heads = heads.iter().map(|h| (h.tree_size, h.clone())).collect();
        self
    }

    /// Adds the leaf at `index` (which must be the next one).
    pub fn push(&mut self, index: u64, leaf_hash: Hash) -> Result<(), Failure> {
        let expected = self.frontier.size();
        if index != expected {
            return Err(fail(
                expected,
                format!(
                    "missing: the log goes from leaf {} to leaf {index}",
                    expected as i64 - 1
                ),
            ));
        }
        self.frontier.push(leaf_hash);
        let size = self.frontier.size();
        if let Some(checkpoint) = self.checkpoints.get(&size) {
            if checkpoint.root_hash != self.frontier.root() {
                return Err(fail(
                    self.last_good,
                    format!(
                        "the tree of {size} leaves does not match the signed checkpoint: a leaf \
                         between {} and {} was altered, removed, added or moved",
                        self.last_good,
                        size - 1
                    ),
                ));
            }
            self.checked += 1;
            self.last_good = size;
        }
        if let Some(head) = self.heads.get(&size)
            && head.root != self.frontier.root()
        {
            return Err(fail(
                None,
                format!(
                    "checkpoint at size {size}, cosigned by witness {}: the log's tree of that \
                     size is another one; the log was rewritten after the witness saw it",
                    head.witness
                ),
            ));
        }
        Ok(())
    }

    /// Ends the walk: a checkpoint beyond the leaves means the log was truncated.
    pub fn finish(self) -> Result<Report, Failure> {
        let size = self.frontier.size();
        if size > 0 && self.checkpoints.is_empty() {
            return Err(fail(
                None,
                "no signed checkpoint: the leaves cannot be checked against anything",
            ));
        }
        if let Some((&witnessed, head)) = self.heads.range(size + 1..).next_back() {
            return Err(fail(
                size,
                format!(
                    "truncated: witness {} cosigned a tree of {witnessed} leaves, the log has {size}",
                    head.witness
                ),
            ));
        }
        if let Some((&signed, _)) = self.checkpoints.range(size + 1..).next_back() {
            return Err(fail(
                size,
                format!(
                    "truncated: a checkpoint was signed for {signed} leaves, the log has {size}"
                ),
            ));
        }
        Ok(Report {
            leaves: size,
            checkpoints: self.checked,
            root: self.frontier.root(),
            signed: self.last_good,
            witnessed: None,
            replayed: 0,
        })
    }
}

/// Verifies the database: each logged row is rebuilt into its leaf and compared with the hash
/// logged when it was written, the tree is rebuilt and checked against every signed checkpoint,
/// and every logged table's rows must all be in the log.
pub async fn verify_store(
    store: &dyn AuditLog,
    public_key: &[u8],
    pinned: Vec<Checkpoint>,
    witnesses: Option<&WitnessPolicy>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Report, Failure> {
    let database = |error: StoreError| fail(None, format!("the database cannot be read: {error}"));
    // The checkpoints an auditor kept count as much as the database's own.
    let mut checkpoints = pinned;
    let mut after = 0i64;
    loop {
        let mut page = store.checkpoints(after, 1000).await.map_err(database)?;
        let Some(last) = page.last() else { break };
        after = last.tree_size as i64;
        super::with_cosignatures(store, &mut page)
            .await
            .map_err(database)?;
        checkpoints.extend(page);
    }
    let witnessed = witnesses
        .map(|policy| check_witnesses(policy, &checkpoints))
        .transpose()?;
    let mut verifier = LogVerifier::new(public_key, checkpoints)?
        .with_heads(witnesses.map_or(&[][..], |policy| &policy.heads));
    let mut order = OrderCheck::default();
    let mut replay = Replay::default();
    let mut chains = ChainCheck::default();
    let mut after = -1i64;
    loop {
        let entries = store.log_entries(after, 1000).await.map_err(database)?;
        if entries.is_empty() {
            break;
        }
        // The tree as stored holds each leaf's hash at its index: an entry moved to another
        // index no longer matches it.
        let stored: Vec<_> = entries
            .iter()
            .map(|entry| (0u32, entry.leaf_index.unwrap_or_default() as u64))
            .collect();
        let stored = store.log_nodes(&stored).await.map_err(database)?;
        for (entry, stored) in entries.into_iter().zip(stored) {
            let index = entry.leaf_index.unwrap_or_default();
            let position = u64::try_from(index).map_err(|_| {
                fail(
                    None,
                    format!(
                        "the log entry of the {} {} has a negative leaf index",
                        entry.kind.as_str(),
                        entry.ref_id
                    ),
                )
            })?;
            let rebuilt = match store.leaf_of(entry.kind, &entry.ref_id).await {
                Ok(Some(leaf)) => leaf,
                Ok(None) => {
                    return Err(fail(
                        position,
                        format!(
                            "the {} {} is missing from the database",
                            entry.kind.as_str(),
                            entry.ref_id
                        ),
                    ));
                }
                Err(error) => {
                    return Err(fail(
                        position,
                        format!(
                            "the {} {} does not read back: {error}",
                            entry.kind.as_str(),
                            entry.ref_id
                        ),
                    ));
                }
            };
            if rebuilt.hash() != entry.leaf_hash {
                return Err(fail(
                    position,
                    format!(
                        "the {} {} was altered after it was logged",
                        entry.kind.as_str(),
                        entry.ref_id
                    ),
                ));
            }
            if stored != entry.leaf_hash {
                return Err(fail(
                    position,
                    format!(
                        "the {} {} is not the leaf the tree holds at this index (moved or replaced)",
                        entry.kind.as_str(),
                        entry.ref_id
                    ),
                ));
            }
            order.see(position, &rebuilt.bytes)?;
            replay.see(position, &rebuilt.bytes)?;
            verifier.push(position, rebuilt.hash())?;
            chains.see(position, &rebuilt.bytes)?;
            progress(position + 1);
            after = index;
        }
    }
    let mut report = verifier.finish()?;
    report.witnessed = witnessed;
    report.replayed = replay.replayed;
    // Every logged row is written with its entry: in one snapshot the counts are equal.
    let counts = store.logged_row_counts().await.map_err(database)?;
    let mut unlogged = Vec::new();
    for (kind, rows, entries) in counts.iter().filter(|(_, rows, entries)| rows != entries) {
        let ids = store.unlogged_rows(*kind, 5).await.map_err(database)?;
        unlogged.push(format!(
            "{}: {rows} rows, {entries} log entries{}",
            kind.as_str(),
            if ids.is_empty() {
                String::new()
            } else {
                format!("; not in the log: {}", ids.join(", "))
            }
        ));
    }
    if !unlogged.is_empty() {
        return Err(fail(
            None,
            format!(
                "rows and log entries differ, so a row was added or removed outside the log ({})",
                unlogged.join("; ")
            ),
        ));
    }
    Ok(report)
}

/// Verifies an export (`consentry audit export`: one JSON object per line with `leaf_index`,
/// `kind`, `id` and `leaf`, base64) against checkpoints.
pub fn verify_export(
    lines: impl Iterator<Item = std::io::Result<String>>,
    checkpoints: Vec<Checkpoint>,
    public_key: &[u8],
    witnesses: Option<&WitnessPolicy>,
    progress: &dyn Fn(u64),
) -> Result<Report, Failure> {
    use base64::Engine as _;
    let witnessed = witnesses
        .map(|policy| check_witnesses(policy, &checkpoints))
        .transpose()?;
    let mut verifier = LogVerifier::new(public_key, checkpoints)?
        .with_heads(witnesses.map_or(&[][..], |policy| &policy.heads));
    let mut order = OrderCheck::default();
    let mut replay = Replay::default();
    let mut chains = ChainCheck::default();
    for (number, line) in lines.enumerate() {
        let line = line.map_err(|e| fail(None, format!("export line {}: {e}", number + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Value = serde_json::from_str(&line)
            .map_err(|e| fail(None, format!("export line {}: not JSON: {e}", number + 1)))?;
        let index = row["leaf_index"]
            .as_u64()
            .ok_or_else(|| fail(None, format!("export line {}: no leaf_index", number + 1)))?;
        let bytes = row["leaf"]
            .as_str()
            .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
            .ok_or_else(|| fail(index, "the leaf is not base64"))?;
        check_leaf(index, &row, &bytes)?;
        if let Some(logged) = row["logged_hash"].as_str()
            && logged != hex(&merkle::leaf_hash(&bytes))
        {
            return Err(fail(
                index,
                format!(
                    "the {} {} was altered after it was logged: its leaf's hash is not the one \
                     logged when it was written",
                    row["kind"].as_str().unwrap_or("row"),
                    row["id"].as_str().unwrap_or("?")
                ),
            ));
        }
        order.see(index, &bytes)?;
        replay.see(index, &bytes)?;
        // The tree first: a line taken out is named as missing, not as its successor's link.
        verifier.push(index, merkle::leaf_hash(&bytes))?;
        chains.see(index, &bytes)?;
        progress(index + 1);
    }
    let mut report = verifier.finish()?;
    report.witnessed = witnessed;
    report.replayed = replay.replayed;
    Ok(report)
}

/// A leaf must parse and be the row it claims to be.
fn check_leaf(index: u64, row: &Value, bytes: &[u8]) -> Result<(), Failure> {
    let (kind, fields) = leaf::decode(bytes)
        .ok_or_else(|| fail(index, "the leaf is not in the documented format"))?;
    let claimed = row["kind"].as_str().and_then(Kind::parse);
    if claimed.is_some_and(|claimed| claimed != kind) {
        return Err(fail(index, "the leaf's kind is not the row's"));
    }
    let id = match fields.first() {
        Some(Field::Bytes(id)) => String::from_utf8_lossy(id).into_owned(),
        _ => return Err(fail(index, "the leaf has no id")),
    };
    if row["id"].as_str().is_some_and(|claimed| claimed != id) {
        return Err(fail(
            index,
            format!("the leaf is {id}, the row says {}", row["id"]),
        ));
    }
    Ok(())
}

/// The fields a bundle row shows, and where each is in its leaf: what an auditor reads must be
/// what was signed.
const MESSAGE_FIELDS: [(&str, usize); 15] = [
    ("id", 0),
    ("created_at_us", 2),
    ("recipient_hash", 3),
    ("recipient", 4),
    ("sender", 5),
    ("purpose", 6),
    ("brand", 7),
    ("campaign", 8),
    ("decision", 9),
    ("upstream", 11),
    ("reply_kind", 12),
    ("confirms_event", 13),
    ("key_id", 15),
    ("tenant", 1),
    ("basis", 17),
];
const CONSENT_FIELDS: [(&str, usize); 11] = [
    ("id", 0),
    ("recipient_hash", 2),
    ("recipient", 3),
    ("action", 4),
    ("level", 5),
    ("brand", 6),
    ("campaign", 7),
    ("method", 9),
    ("recorded_by", 12),
    ("external_id", 13),
    ("key_id", 15),
];

/// Whether a shown JSON value is the leaf's field (absent fields show as null; a row may leave
/// a field out, but never show another value).
fn shows(value: Option<&Value>, field: Option<&Field>) -> bool {
    match (value, field) {
        (None, _) => true,
        // A leaf of an older version ends before the field.
        (Some(Value::Null), Some(Field::Absent) | None) => true,
        (Some(Value::String(text)), Some(Field::Bytes(bytes))) => text.as_bytes() == bytes,
        (Some(Value::Number(number)), Some(Field::Int(int))) => number.as_i64() == Some(*int),
        _ => false,
    }
}

/// The most rows a bundle's list holds (`GET /v1/audit/numbers/{number}/bundle`): a list this
/// long may have been cut, and the bundle's links are then not checked.
pub const BUNDLE_LIMIT: usize = 10_000;

/// What a bundle's verification proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleReport {
    /// How many rows were proven in the log under the checkpoint.
    pub proven: usize,
    /// Whether every leaf's link was checked (not when a list is at [`BUNDLE_LIMIT`]).
    pub chained: bool,
}

/// Verifies one number's bundle (`GET /v1/audit/numbers/{number}/bundle`): the checkpoint's
/// signature; for each row, that its leaf is well formed, of its section's kind, about the
/// bundle's number and tenant, that every field the row shows is the leaf's, and that its
/// inclusion proof leads to the checkpoint's root (a row inside the checkpoint must have one).
/// Returns how many rows were proven.
pub fn verify_bundle(
    bundle: &Value,
    public_key: &[u8],
    witnesses: Option<&WitnessPolicy>,
) -> Result<BundleReport, Failure> {
    use base64::Engine as _;
    let view: CheckpointView = serde_json::from_value(bundle["checkpoint"].clone())
        .map_err(|e| fail(None, format!("the bundle has no readable checkpoint: {e}")))?;
    let checkpoint = Checkpoint::from_view(&view).map_err(|e| fail(None, e))?;
    checkpoint.verify(public_key).map_err(|e| {
        fail(
            None,
            format!("checkpoint at size {}: {e}", checkpoint.tree_size),
        )
    })?;
    if let Some(policy) = witnesses {
        check_witnesses(policy, std::slice::from_ref(&checkpoint))?;
    }
    let signed = Checkpoint::signed_text(
        checkpoint.tree_size,
        &checkpoint.root_hash,
        checkpoint.signed_at_us,
    );
    if view.signed_text != signed {
        return Err(fail(
            None,
            "the checkpoint's signed_text is not what was signed",
        ));
    }
    let number_hash = bundle["recipient_hash"].as_str();
    let tenant = bundle["tenant"].as_str();
    let mut proven = 0;
    let mut message_ids = std::collections::HashSet::new();
    // Every leaf of the bundle, by index, for the chain.
    let mut leaves = BTreeMap::new();
    for (section, kind, fields) in [
        ("consent_events", Kind::ConsentEvent, &CONSENT_FIELDS[..]),
        ("messages", Kind::Message, &MESSAGE_FIELDS[..]),
    ] {
        for row in bundle[section].as_array().into_iter().flatten() {
            let index = row["leaf_index"]
                .as_u64()
                .ok_or_else(|| fail(None, format!("a row of {section} has no leaf_index")))?;
            let bytes = row["leaf"]
                .as_str()
                .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
                .ok_or_else(|| fail(index, "the leaf is not base64"))?;
            let (leaf_kind, values) = leaf::decode(&bytes)
                .ok_or_else(|| fail(index, "the leaf is not in the documented format"))?;
            if leaf_kind != kind {
                return Err(fail(
                    index,
                    format!("a {} leaf among the {section}", leaf_kind.as_str()),
                ));
            }
            for (name, at) in fields {
                if !shows(row.get(*name), values.get(*at)) {
                    return Err(fail(
                        index,
                        format!("the row shows a {name} its leaf does not hold"),
                    ));
                }
            }
            // Shown parsed: the reasons (JSON text in the leaf) and the purposes (space-separated).
            let text = |at: usize| match values.get(at) {
                Some(Field::Bytes(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
                _ => String::new(),
            };
            let parsed_differ = match kind {
                Kind::Message => row.get("reasons").is_some_and(|shown| {
                    serde_json::from_str::<Value>(&text(10)).ok().as_ref() != Some(shown)
                }),
                _ => row.get("purposes").is_some_and(|shown| {
                    let leaf: Vec<String> = text(8).split_whitespace().map(str::to_owned).collect();
                    serde_json::to_value(leaf).ok().as_ref() != Some(shown)
                }),
            };
            if parsed_differ {
                return Err(fail(
                    index,
                    "the row shows reasons or purposes its leaf does not hold",
                ));
            }
            let about = |at: usize, expected: Option<&str>| match (values.get(at), expected) {
                (Some(Field::Bytes(bytes)), Some(expected)) => bytes == expected.as_bytes(),
                _ => false,
            };
            let hash_at = if kind == Kind::Message { 3 } else { 2 };
            if !about(hash_at, number_hash) || !about(1, tenant) {
                return Err(fail(index, "the leaf is about another number or tenant"));
            }
            if kind == Kind::Message {
                message_ids.insert(text(0));
            }
            proven += usize::from(in_the_tree(index, &bytes, row, &checkpoint)?);
            leaves.insert(index, bytes);
        }
    }
    // The number's other leaves: its erasures, the reads of its messages' bodies, their
    // outcomes and releases, its replies and the resolutions of their reviews.
    for row in bundle["other_leaves"].as_array().into_iter().flatten() {
        let index = row["leaf_index"]
            .as_u64()
            .ok_or_else(|| fail(None, "a row of other_leaves has no leaf_index"))?;
        let bytes = row["leaf"]
            .as_str()
            .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
            .ok_or_else(|| fail(index, "the leaf is not base64"))?;
        let (kind, values) = leaf::decode(&bytes)
            .ok_or_else(|| fail(index, "the leaf is not in the documented format"))?;
        let field = |at: usize| match values.get(at) {
            Some(Field::Bytes(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        };
        let about_number = match kind {
            Kind::BodyAccess => field(3).is_some_and(|id| message_ids.contains(&id)),
            Kind::Message | Kind::ConsentEvent => false,
            _ => leaf::about(kind, &values).is_some_and(|(leaf_tenant, hash)| {
                Some(leaf_tenant) == tenant.map(str::as_bytes)
                    && Some(hash) == number_hash.map(str::as_bytes)
            }),
        };
        if row["kind"].as_str() != Some(kind.as_str())
            || field(1).as_deref() != tenant
            || !about_number
        {
            return Err(fail(
                index,
                "the leaf is not about this number (nor a read of one of its messages)",
            ));
        }
        proven += usize::from(in_the_tree(index, &bytes, row, &checkpoint)?);
        leaves.insert(index, bytes);
    }
    // Every leaf about the number, in log order, links to the one before it: a bundle that
    // holds them all from the first shows that none is missing. (A list as long as a bundle's
    // lists may be holds the first leaves of its kind, not all the first leaves of the number:
    // its chain is not checked; the lists, filtered by number, page through the rest. Judged
    // here from the lists, not from the bundle's own `truncated`, which a forger could set.)
    let cut = ["consent_events", "messages", "other_leaves"]
        .iter()
        .any(|section| bundle[section].as_array().map_or(0, Vec::len) >= BUNDLE_LIMIT);
    if !cut {
        let mut chain = ChainCheck::default();
        for (index, bytes) in &leaves {
            chain.see(*index, bytes)?;
        }
    }
    Ok(BundleReport {
        proven,
        chained: !cut,
    })
}

/// A bundle row's leaf: its shown hash is its hash, and, inside the checkpoint, its inclusion
/// proof leads to the root. Whether it was proven (a row logged after the checkpoint is not
/// yet provable).
fn in_the_tree(
    index: u64,
    bytes: &[u8],
    row: &Value,
    checkpoint: &Checkpoint,
) -> Result<bool, Failure> {
    let hash = merkle::leaf_hash(bytes);
    if row["leaf_hash"]
        .as_str()
        .is_some_and(|claimed| claimed != hex(&hash))
    {
        return Err(fail(index, "leaf_hash is not the hash of the leaf"));
    }
    if index >= checkpoint.tree_size {
        return Ok(false);
    }
    let proof: Vec<Hash> = row["inclusion_proof"]
        .as_array()
        .ok_or_else(|| fail(index, "no inclusion proof for a leaf inside the checkpoint"))?
        .iter()
        .map(|h| h.as_str().and_then(unhex))
        .collect::<Option<_>>()
        .ok_or_else(|| fail(index, "inclusion_proof holds a malformed hash"))?;
    merkle::verify_inclusion(
        index,
        checkpoint.tree_size,
        &hash,
        &proof,
        &checkpoint.root_hash,
    )
    .map_err(|e| fail(index, format!("inclusion proof: {e}")))?;
    Ok(true)
}

/// Verifies a consistency proof (as `GET /v1/audit/proofs/consistency` answers it) between two
/// signed checkpoints an auditor holds.
pub fn verify_consistency_proof(
    proof: &Value,
    old: &Checkpoint,
    new: &Checkpoint,
    public_key: &[u8],
) -> Result<(), Failure> {
    old.verify(public_key).map_err(|e| fail(None, e))?;
    new.verify(public_key).map_err(|e| fail(None, e))?;
    if proof["from"].as_u64() != Some(old.tree_size) || proof["to"].as_u64() != Some(new.tree_size)
    {
        return Err(fail(
            None,
            format!(
                "the proof is between sizes {} and {}, the checkpoints are {} and {}",
                proof["from"], proof["to"], old.tree_size, new.tree_size
            ),
        ));
    }
    let path: Vec<Hash> = proof["proof"]
        .as_array()
        .ok_or_else(|| fail(None, "proof is not a list"))?
        .iter()
        .map(|h| h.as_str().and_then(unhex))
        .collect::<Option<_>>()
        .ok_or_else(|| fail(None, "the proof holds a malformed hash"))?;
    merkle::verify_consistency(
        old.tree_size,
        new.tree_size,
        &old.root_hash,
        &new.root_hash,
        &path,
    )
    .map_err(|e| {
        fail(
            old.tree_size,
            format!(
                "consistency proof from {} to {} leaves: {e}",
                old.tree_size, new.tree_size
            ),
        )
    })
}

/// Reads checkpoints from a file: one checkpoint object, a list of them, or NDJSON.
pub fn read_checkpoints(text: &str) -> Result<Vec<Checkpoint>, String> {
    read_views(text)?
        .iter()
        .map(Checkpoint::from_view)
        .collect()
}

/// The log's origin as checkpoints read from a file name it (`None` for older files).
pub fn read_origin(text: &str) -> Result<Option<String>, String> {
    Ok(read_views(text)?
        .into_iter()
        .map(|view| view.origin)
        .find(|origin| !origin.is_empty()))
}

fn read_views(text: &str) -> Result<Vec<CheckpointView>, String> {
    let views: Vec<CheckpointView> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => items
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?,
        Ok(value) => vec![serde_json::from_value(value).map_err(|e| e.to_string())?],
        Err(_) => text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?,
    };
    Ok(views)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::LogSigner;

    fn signer() -> LogSigner {
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap();
        LogSigner::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn leaves(n: u8) -> Vec<Hash> {
        (0..n).map(|i| merkle::leaf_hash(&[i])).collect()
    }

    fn checkpoint_at(signer: &LogSigner, leaves: &[Hash]) -> Checkpoint {
        let mut frontier = Frontier::default();
        for leaf in leaves {
            frontier.push(*leaf);
        }
        signer.sign(leaves.len() as u64, frontier.root(), 1)
    }

    fn run(
        leaves: &[(u64, Hash)],
        checkpoints: Vec<Checkpoint>,
        key: &[u8],
    ) -> Result<Report, Failure> {
        let mut verifier = LogVerifier::new(key, checkpoints)?;
        for (index, hash) in leaves {
            verifier.push(*index, *hash)?;
        }
        verifier.finish()
    }

    #[test]
    fn each_kind_of_tampering_names_its_position() {
        let signer = signer();
        let key = signer.public_key().to_vec();
        let good = leaves(10);
        let checkpoints = vec![
            checkpoint_at(&signer, &good[..4]),
            checkpoint_at(&signer, &good),
        ];
        let indexed: Vec<(u64, Hash)> = good
            .iter()
            .copied()
            .enumerate()
            .map(|(i, h)| (i as u64, h))
            .collect();
        assert_eq!(run(&indexed, checkpoints.clone(), &key).unwrap().leaves, 10);

        // Altered leaf 6: the checkpoint at 10 no longer matches; the last good one was at 4.
        let mut altered = indexed.clone();
        altered[6].1[0] ^= 1;
        assert_eq!(
            run(&altered, checkpoints.clone(), &key)
                .unwrap_err()
                .position,
            Some(4)
        );

        // Removed leaf 2: the walk finds the gap.
        let mut removed = indexed.clone();
        removed.remove(2);
        assert_eq!(
            run(&removed, checkpoints.clone(), &key)
                .unwrap_err()
                .position,
            Some(2)
        );

        // Swapped leaves 1 and 2 (indexes kept): the checkpoint at 4 fails.
        let mut swapped = indexed.clone();
        let (a, b) = (swapped[1].1, swapped[2].1);
        swapped[1].1 = b;
        swapped[2].1 = a;
        assert_eq!(
            run(&swapped, checkpoints.clone(), &key)
                .unwrap_err()
                .position,
            Some(0)
        );

        // Truncated to 7: a checkpoint for 10 was signed.
        let failure = run(&indexed[..7], checkpoints.clone(), &key).unwrap_err();
        assert_eq!(failure.position, Some(7));
        assert!(failure.reason.contains("truncated"), "{failure}");

        // A forged checkpoint signature.
        let mut forged = checkpoints.clone();
        forged[1].signature[0] ^= 1;
        assert!(
            run(&indexed, forged, &key)
                .unwrap_err()
                .reason
                .contains("signature")
        );
        // A checkpoint signed by another key.
        let stranger = signer_other();
        let mut foreign = checkpoints.clone();
        foreign[1] = checkpoint_at(&stranger, &good);
        assert!(run(&indexed, foreign, &key).is_err());
    }

    fn signer_other() -> LogSigner {
        signer()
    }

    #[test]
    fn a_witness_policy_needs_a_quorum_of_valid_cosignatures_on_every_older_checkpoint() {
        use crate::audit::note::{WitnessKey, cosign};
        use ring::signature::{Ed25519KeyPair, KeyPair as _};
        let log = signer();
        let witness = |name: &str| {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
            let key = WitnessKey {
                name: name.into(),
                public_key: pair.public_key().as_ref().to_vec(),
            };
            (pair, key)
        };
        let (one, one_key) = witness("w/1");
        let (two, two_key) = witness("w/2");
        let policy = WitnessPolicy {
            origin: "log/o".into(),
            witnesses: vec![one_key.clone(), two_key.clone()],
            quorum: 2,
            grace_us: 60_000_000,
            heads: Vec::new(),
        };
        let sign = |size: u64, at_s: i64, by: &[(&Ed25519KeyPair, &str)]| {
            let mut checkpoint = log.sign(size, [size as u8; 32], at_s * 1_000_000);
            let body = checkpoint.note_body("log/o");
            checkpoint.cosignatures = by
                .iter()
                .map(|(pair, name)| cosign(pair, name, &body, 1))
                .collect();
            checkpoint
        };
        let both = [(&one, "w/1"), (&two, "w/2")];
        let witnessed = sign(10, 0, &both);
        assert_eq!(
            check_witnesses(&policy, std::slice::from_ref(&witnessed)),
            Ok(10)
        );

        // One of two is not a quorum of two: nothing is witnessed.
        let half = sign(20, 30, &both[..1]);
        let failure = check_witnesses(&policy, std::slice::from_ref(&half)).unwrap_err();
        assert!(
            failure.reason.contains("no checkpoint is cosigned by 2"),
            "{failure}"
        );
        // A newer one still within the grace of the newest may wait for its cosignatures...
        assert_eq!(
            check_witnesses(&policy, &[witnessed.clone(), half.clone()]),
            Ok(10)
        );
        // ...an older one may not.
        let later = sign(30, 100, &both[..1]);
        let failure =
            check_witnesses(&policy, &[witnessed.clone(), half.clone(), later]).unwrap_err();
        assert!(
            failure
                .reason
                .contains("checkpoint at size 20 was never cosigned"),
            "{failure}"
        );

        // A cosignature over another root for the same size (a fork the witness saw) fails.
        let mut forked = witnessed.clone();
        forked.root_hash = [99; 32];
        let failure = check_witnesses(&policy, &[forked]).unwrap_err();
        assert!(failure.reason.contains("does not verify"), "{failure}");
        // Cosignatures by keys outside the policy count for nothing.
        let (stranger, _) = witness("w/1");
        let strangers = sign(10, 0, &[(&stranger, "w/1"), (&two, "w/2")]);
        let failure = check_witnesses(&policy, &[strangers]).unwrap_err();
        assert!(
            failure.reason.contains("no checkpoint is cosigned by 2"),
            "{failure}"
        );
        // A cosignature of a larger tree vouches for the smaller ones it extends: witnesses
        // that ended on different checkpoints still make a quorum, at the smaller size.
        let apart = [sign(10, 0, &both[1..]), sign(20, 30, &both[..1])];
        assert_eq!(check_witnesses(&policy, &apart), Ok(10));
        let single = WitnessPolicy {
            quorum: 1,
            ..policy.clone()
        };
        assert_eq!(check_witnesses(&single, &[half]), Ok(20));
        let impossible = WitnessPolicy {
            quorum: 3,
            ..policy
        };
        assert!(check_witnesses(&impossible, &[witnessed]).is_err());
    }

    #[test]
    fn a_chain_shows_a_missing_or_replaced_leaf_of_a_number() {
        use crate::audit::leaf::{Erasure, Outcome, erasure, outcome, relink};
        let erased = |id: &str, number: &str| {
            erasure(
                &Erasure {
                    id: id.into(),
                    tenant: "t".into(),
                    recipient_hash: number.into(),
                    erased_at_us: 1,
                    erased_by: "s".into(),
                    keys_destroyed: 0,
                },
                Link::First,
            )
        };
        let answered = |id: &str, number: &str| {
            outcome(
                &Outcome {
                    id: id.into(),
                    tenant: "t".into(),
                    message_id: "msg_1".into(),
                    recipient_hash: number.into(),
                    recorded_at_us: 2,
                    status: "sent".into(),
                    upstream_message_id: None,
                    error_code: None,
                    detail: None,
                },
                Link::First,
            )
        };
        // Two numbers, interleaved, each linked as the store links them.
        let a1 = erased("e1", "a");
        let b1 = erased("e2", "b");
        let a2 = relink(answered("o1", "a"), Link::After(a1.hash()));
        let a3 = relink(erased("e3", "a"), Link::After(a2.hash()));
        let run = |leaves: &[&crate::audit::leaf::Leaf]| {
            let mut chains = ChainCheck::default();
            leaves
                .iter()
                .enumerate()
                .try_for_each(|(i, leaf)| chains.see(i as u64, &leaf.bytes))
        };
        assert_eq!(run(&[&a1, &b1, &a2, &a3]), Ok(()));
        // The middle leaf of "a" deleted: the next one links to a leaf that is not there.
        let failure = run(&[&a1, &b1, &a3]).unwrap_err();
        assert_eq!(failure.position, Some(2));
        assert!(
            failure.reason.contains("missing or was replaced"),
            "{failure}"
        );
        // Its first deleted.
        let failure = run(&[&b1, &a2, &a3]).unwrap_err();
        assert_eq!(failure.position, Some(1));
        // Two swapped.
        assert!(run(&[&a1, &a3, &a2]).is_err());
        // A leaf claiming to be the first of a number that has one before it.
        assert!(run(&[&a1, &erased("e4", "a")]).is_err());
        // The link is in the leaf's bytes, so in its hash.
        assert_ne!(a2.hash(), answered("o1", "a").hash());
    }

    fn consent(id: &'static str, action: &'static str, at: i64) -> Vec<u8> {
        use crate::audit::leaf::{ConsentColumns, consent_event};
        consent_event(
            ConsentColumns {
                id,
                tenant: "t",
                recipient_hash: "r",
                recipient_masked: "+1415555****",
                action,
                level: (action == "opt_in").then_some("express_written"),
                brand: None,
                campaign: None,
                purposes: "",
                method: "web_form",
                occurred_at_us: at,
                recorded_at_us: at,
                recorded_by: "s",
                external_id: None,
                idempotency_key: id,
                key_id: "k",
                evidence: b"e",
            },
            Link::Unchained,
        )
        .bytes
    }

    /// A marketing message's leaf, of id `id`, decided `decision`.
    fn marketing_to(
        id: &'static str,
        decision: &'static str,
        basis: Option<&'static str>,
        at: i64,
    ) -> Vec<u8> {
        use crate::audit::leaf::{MessageColumns, message};
        message(
            MessageColumns {
                id,
                tenant: "t",
                created_at_us: at,
                recipient_hash: "r",
                recipient_masked: "+1415555****",
                sender_masked: "+1202555****",
                purpose: "marketing",
                brand: None,
                campaign: None,
                decision,
                reasons_json: "[]",
                upstream: Some("gw"),
                reply_kind: None,
                confirms_event: None,
                status_callback: None,
                key_id: "k",
                payload: b"p",
                basis,
            },
            Link::Unchained,
        )
        .bytes
    }

    fn marketing(basis: Option<&'static str>, at: i64) -> Vec<u8> {
        marketing_to("msg", "allowed", basis, at)
    }

    /// Replays `leaves` in order: how many decisions were replayed, or the first failure.
    fn run_replay(leaves: &[Vec<u8>]) -> Result<u64, Failure> {
        let mut replay = Replay::default();
        leaves
            .iter()
            .enumerate()
            .try_for_each(|(i, leaf)| replay.see(i as u64, leaf))
            .map(|()| replay.replayed)
    }

    #[test]
    fn replay_holds_an_allowed_message_to_the_consent_before_it_in_the_log() {
        let basis =
            Some(r#"{"consent_event":"in","requirement":"express_written","revoke_all":false}"#);
        let run = run_replay;
        assert_eq!(
            run(&[consent("in", "opt_in", 10), marketing(basis, 20)]),
            Ok(1)
        );
        // Recorded before bases were: not replayed.
        assert_eq!(run(&[marketing(None, 20)]), Ok(0));
        // The opt-in it names is not in the log before it.
        let failure = run(&[marketing(basis, 20), consent("in", "opt_in", 10)]).unwrap_err();
        assert_eq!(failure.position, Some(0));
        assert!(
            failure.reason.contains("not in the log before it"),
            "{failure}"
        );
        // An opt-out before it forbids it.
        let failure = run(&[
            consent("in", "opt_in", 10),
            consent("out", "opt_out", 15),
            marketing(basis, 20),
        ])
        .unwrap_err();
        assert_eq!(failure.position, Some(2));
        assert!(
            failure.reason.contains("opt-out out comes before it"),
            "{failure}"
        );
        // An opt-in that happened after the decision cannot have allowed it.
        let failure = run(&[consent("in", "opt_in", 30), marketing(basis, 20)]).unwrap_err();
        assert!(
            failure.reason.contains("no express_written opt-in"),
            "{failure}"
        );
        // A basis naming no opt-in where one was needed.
        let none =
            Some(r#"{"consent_event":null,"requirement":"express_written","revoke_all":false}"#);
        assert!(run(&[marketing(none, 20)]).is_err());
        assert!(run(&[marketing(basis, 20)]).is_err());
    }

    #[test]
    fn a_held_message_is_replayed_when_a_release_allows_it() {
        use crate::audit::leaf::{Release, release};
        const HELD: &str = "msg_0192f1d4a3b07c4e8a6b2d9e5f1c3a70";
        let basis =
            Some(r#"{"consent_event":"in","requirement":"express_written","revoke_all":false}"#);
        let released = |message: &str, basis: Option<&str>, at: i64| {
            release(
                &Release {
                    id: "rel".into(),
                    tenant: "t".into(),
                    message_id: message.into(),
                    recipient_hash: "r".into(),
                    decided_at_us: at,
                    decision: "allowed".into(),
                    reasons_json: "[]".into(),
                    basis: basis.map(str::to_owned),
                },
                crate::audit::leaf::Link::First,
            )
            .bytes
        };
        let held = marketing_to(HELD, "deferred", None, 20);
        assert_eq!(
            run_replay(&[
                consent("in", "opt_in", 10),
                held.clone(),
                released(HELD, basis, 30)
            ]),
            Ok(1)
        );
        // A release from before releases had bases: not replayed.
        assert_eq!(
            run_replay(&[
                consent("in", "opt_in", 10),
                held.clone(),
                released(HELD, None, 30)
            ]),
            Ok(0)
        );
        // Opted out while it was held: the release at night's end may not send it.
        let failure = run_replay(&[
            consent("in", "opt_in", 10),
            held.clone(),
            consent("out", "opt_out", 25),
            released(HELD, basis, 30),
        ])
        .unwrap_err();
        assert_eq!(failure.position, Some(3));
        assert!(failure.reason.contains("opt-out out"), "{failure}");
        // A release of a message the log does not hold before it.
        let failure =
            run_replay(&[consent("in", "opt_in", 10), released(HELD, basis, 30)]).unwrap_err();
        assert_eq!(failure.position, Some(1));
        assert!(
            failure.reason.contains("not in the log before it"),
            "{failure}"
        );
        // A release of a message that was denied.
        let denied = marketing_to(HELD, "denied", None, 20);
        assert!(run_replay(&[denied, released(HELD, basis, 30)]).is_err());
        // A release after the sender cancelled it.
        let cancelled = release(
            &Release {
                id: "rel0".into(),
                tenant: "t".into(),
                message_id: HELD.into(),
                recipient_hash: "r".into(),
                decided_at_us: 25,
                decision: "denied".into(),
                reasons_json: r#"[{"code":"cancelled_by_sender"}]"#.into(),
                basis: None,
            },
            crate::audit::leaf::Link::First,
        )
        .bytes;
        let failure = run_replay(&[
            consent("in", "opt_in", 10),
            held,
            cancelled,
            released(HELD, basis, 30),
        ])
        .unwrap_err();
        assert_eq!(failure.position, Some(3));
    }

    #[test]
    fn heads_the_witnesses_show_must_be_in_the_tree() {
        use crate::audit::note::{WitnessKey, cosign};
        use ring::signature::{Ed25519KeyPair, KeyPair as _};
        let log = signer().with_origin("log/o").unwrap();
        let witness_pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let witness = Ed25519KeyPair::from_pkcs8(witness_pkcs8.as_ref()).unwrap();
        let key = WitnessKey {
            name: "w/1".into(),
            public_key: witness.public_key().as_ref().to_vec(),
        };
        let policy = WitnessPolicy {
            origin: "log/o".into(),
            witnesses: vec![key],
            quorum: 1,
            grace_us: 0,
            heads: Vec::new(),
        };
        let all = leaves(6);
        let mut frontier = Frontier::default();
        let mut roots = Vec::new();
        for leaf in &all {
            frontier.push(*leaf);
            roots.push(frontier.root());
        }
        // What the witness shows: the log's note with its cosignature.
        let shown = |size: u64, root: Hash| {
            let checkpoint = log.sign(size, root, 1);
            let note = log.note(&checkpoint);
            let body = checkpoint.note_body("log/o");
            format!("{note}{}", cosign(&witness, "w/1", &body, 7).line())
        };
        let head = witnessed_head(&shown(4, roots[3]), log.public_key(), &policy).unwrap();
        assert_eq!(head.tree_size, 4);
        let walk = |leaves: &[Hash], head: &WitnessedHead| {
            let checkpoint = log.sign(2, roots[1], 1);
            let mut verifier = LogVerifier::new(log.public_key(), vec![checkpoint])
                .unwrap()
                .with_heads(std::slice::from_ref(head));
            for (i, leaf) in leaves.iter().enumerate() {
                verifier.push(i as u64, *leaf)?;
            }
            verifier.finish()
        };
        assert!(walk(&all, &head).is_ok());
        let failure = walk(&all[..3], &head).unwrap_err();
        assert!(
            failure
                .reason
                .contains("truncated: witness w/1 cosigned a tree of 4"),
            "{failure}"
        );
        let mut rewritten = all.clone();
        rewritten[2] = merkle::leaf_hash(b"other");
        let failure = walk(&rewritten, &head).unwrap_err();
        assert!(
            failure
                .reason
                .contains("cosigned by witness w/1: the log's tree of that size is another one"),
            "{failure}"
        );

        // What is shown must be the log's, of this origin, cosigned by a policy witness.
        let stranger = signer().with_origin("log/o").unwrap();
        assert!(witnessed_head(&shown(4, roots[3]), stranger.public_key(), &policy).is_err());
        let other_origin = WitnessPolicy {
            origin: "log/p".into(),
            ..policy.clone()
        };
        assert!(witnessed_head(&shown(4, roots[3]), log.public_key(), &other_origin).is_err());
        let unsigned = log.note(&log.sign(4, roots[3], 1));
        assert!(witnessed_head(&unsigned, log.public_key(), &policy).is_err());
    }
}
