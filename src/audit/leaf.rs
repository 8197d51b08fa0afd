//! The exact bytes of each log leaf. An independent verifier rebuilds them from the exported
//! rows, so this encoding is part of the external contract (docs/auditors.md):
//!
//! ```text
//! leaf   = 0x01 (version) || kind (1 byte) || field*   (a fixed list of fields per kind)
//! field  = 0x00                                        absent (SQL NULL)
//!        | 0x01 || length (u32, big-endian) || bytes   text (UTF-8) or bytes
//!        | 0x02 || value (i64, big-endian)             integer
//! kind   = 0x01 message | 0x02 consent event | 0x03 body access | 0x04 erasure
//!        | 0x05 outcome | 0x06 release | 0x07 inbound | 0x08 review resolution
//! ```
//!
//! Message records and consent events are logged with their sealed payloads (ciphertext, not
//! plaintext), so erasing a recipient's key leaves every leaf, and every proof, intact.
//!
//! Every leaf about a recipient written since version 3 (all kinds but body accesses) ends with
//! one more field, its *link*: the 32-byte hash of the previous leaf about the same tenant and
//! recipient hash, or absent for the first. A number's leaves are then a hash chain, so a
//! bundle of them shows that none is missing (see [`Link`]).

use super::merkle::{Hash, leaf_hash};

/// The format version, the first byte of every leaf...
pub const VERSION: u8 = 1;
/// ...but a message record's with its decision basis as an 18th field: an older leaf keeps
/// its bytes, and so its hash.
pub const BASIS_VERSION: u8 = 2;
/// ...and every leaf about a recipient written since with its [`Link`] as its last field (a
/// message's basis is then always a field, absent or not).
pub const CHAIN_VERSION: u8 = 3;
/// ...and a release a policy decided with that decision's basis as a field before its link (a
/// release no policy decided, such as a cancellation, keeps version 3).
pub const RELEASE_BASIS_VERSION: u8 = 4;

/// Whether a leaf of this version ends with a link.
fn chained(version: Option<&u8>) -> bool {
    matches!(version, Some(&CHAIN_VERSION | &RELEASE_BASIS_VERSION))
}

/// Where a leaf stands in its recipient's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Logged before chains (version 1 or 2): the leaf has no link field.
    Unchained,
    /// The first leaf about its recipient: the link field is absent.
    First,
    /// The hash of the previous leaf about the same recipient.
    After(Hash),
}

/// What a leaf records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message,
    ConsentEvent,
    BodyAccess,
    Erasure,
    Outcome,
    Release,
    Inbound,
    ReviewResolution,
}

/// Every kind, in code order.
pub const KINDS: [Kind; 8] = [
    Kind::Message,
    Kind::ConsentEvent,
    Kind::BodyAccess,
    Kind::Erasure,
    Kind::Outcome,
    Kind::Release,
    Kind::Inbound,
    Kind::ReviewResolution,
];

impl Kind {
    pub fn code(self) -> u8 {
        match self {
            Kind::Message => 1,
            Kind::ConsentEvent => 2,
            Kind::BodyAccess => 3,
            Kind::Erasure => 4,
            Kind::Outcome => 5,
            Kind::Release => 6,
            Kind::Inbound => 7,
            Kind::ReviewResolution => 8,
        }
    }

    /// The name stored in `log_leaves.kind` and shown in exports.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::ConsentEvent => "consent_event",
            Kind::BodyAccess => "body_access",
            Kind::Erasure => "erasure",
            Kind::Outcome => "outcome",
            Kind::Release => "release",
            Kind::Inbound => "inbound",
            Kind::ReviewResolution => "review_resolution",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        KINDS.into_iter().find(|kind| kind.as_str() == text)
    }

    fn from_code(code: u8) -> Option<Kind> {
        KINDS.into_iter().find(|kind| kind.code() == code)
    }

    /// Where a leaf of this kind holds its tenant and the recipient hash it is about (`None`
    /// for body accesses, which name a message, not a recipient).
    pub fn about_fields(self) -> Option<(usize, usize)> {
        match self {
            Kind::Message | Kind::Outcome | Kind::Release => Some((1, 3)),
            Kind::ConsentEvent | Kind::Erasure | Kind::Inbound | Kind::ReviewResolution => {
                Some((1, 2))
            }
            Kind::BodyAccess => None,
        }
    }
}

/// One field of a leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Absent,
    Bytes(Vec<u8>),
    Int(i64),
}

/// A leaf: what it records, which row, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub kind: Kind,
    /// The id of the row it records.
    pub ref_id: String,
    pub tenant: String,
    /// The recipient hash it is about, whose chain it extends (`None` for body accesses).
    pub recipient_hash: Option<String>,
    pub bytes: Vec<u8>,
}

impl Leaf {
    pub fn hash(&self) -> Hash {
        leaf_hash(&self.bytes)
    }
}

struct Encoder(Vec<u8>);

impl Encoder {
    fn new(kind: Kind) -> Self {
        Encoder::with_version(VERSION, kind)
    }
    fn with_version(version: u8, kind: Kind) -> Self {
        Encoder(vec![version, kind.code()])
    }
    fn bytes(mut self, value: &[u8]) -> Self {
        self.0.push(0x01);
        self.0
            .extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_be_bytes());
        self.0.extend_from_slice(value);
        self
    }
    fn text(self, value: &str) -> Self {
        self.bytes(value.as_bytes())
    }
    fn optional(mut self, value: Option<&str>) -> Self {
        match value {
            Some(value) => self.text(value),
            None => {
                self.0.push(0x00);
                self
            }
        }
    }
    fn int(mut self, value: i64) -> Self {
        self.0.push(0x02);
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }
    /// Ends a leaf about a recipient: a chained leaf is of version 3 (or later) and ends with
    /// its link.
    fn link(mut self, link: Link) -> Self {
        if link != Link::Unchained {
            self.0[0] = self.0[0].max(CHAIN_VERSION);
        }
        match link {
            Link::Unchained => self,
            Link::First => {
                self.0.push(0x00);
                self
            }
            Link::After(hash) => self.bytes(&hash),
        }
    }
    fn leaf(self, kind: Kind, ref_id: &str, tenant: &str, recipient_hash: Option<&str>) -> Leaf {
        Leaf {
            kind,
            ref_id: ref_id.to_owned(),
            tenant: tenant.to_owned(),
            recipient_hash: recipient_hash.map(str::to_owned),
            bytes: self.0,
        }
    }
}

/// The columns of a `messages` row that its leaf covers, as plain values: the store maps its
/// records to them (`store::leaves`), so the leaf format depends on no store type.
#[derive(Debug, Clone, Copy)]
pub struct MessageColumns<'a> {
    pub id: &'a str,
    pub tenant: &'a str,
    pub created_at_us: i64,
    pub recipient_hash: &'a str,
    pub recipient_masked: &'a str,
    pub sender_masked: &'a str,
    pub purpose: &'a str,
    pub brand: Option<&'a str>,
    pub campaign: Option<&'a str>,
    pub decision: &'a str,
    pub reasons_json: &'a str,
    pub upstream: Option<&'a str>,
    pub reply_kind: Option<&'a str>,
    pub confirms_event: Option<&'a str>,
    pub status_callback: Option<&'a str>,
    pub key_id: &'a str,
    pub payload: &'a [u8],
    /// What an allowed message's consent rested on (JSON), when recorded.
    pub basis: Option<&'a str>,
}

/// A message record's leaf: every column of its `messages` row, in this order: id, tenant,
/// created_at_us, recipient_hash, recipient_masked, sender_masked, purpose, brand, campaign,
/// decision, reasons, upstream, reply_kind, confirms_event, status_callback, key_id, payload;
/// then, for a record with a decision basis, the basis (and the leaf's version is
/// [`BASIS_VERSION`]); a chained leaf (version 3) has the basis field, absent or not, then its
/// link.
pub fn message<'a>(record: impl Into<MessageColumns<'a>>, link: Link) -> Leaf {
    let record = record.into();
    let encoder = match (record.basis, link) {
        (_, Link::First | Link::After(_)) => Encoder::new(Kind::Message),
        (Some(_), Link::Unchained) => Encoder::with_version(BASIS_VERSION, Kind::Message),
        (None, Link::Unchained) => Encoder::new(Kind::Message),
    };
    let mut encoder = encoder
        .text(record.id)
        .text(record.tenant)
        .int(record.created_at_us)
        .text(record.recipient_hash)
        .text(record.recipient_masked)
        .text(record.sender_masked)
        .text(record.purpose)
        .optional(record.brand)
        .optional(record.campaign)
        .text(record.decision)
        .text(record.reasons_json)
        .optional(record.upstream)
        .optional(record.reply_kind)
        .optional(record.confirms_event)
        .optional(record.status_callback)
        .text(record.key_id)
        .bytes(record.payload);
    encoder = match (record.basis, link) {
        (basis, Link::First | Link::After(_)) => encoder.optional(basis).link(link),
        (Some(basis), Link::Unchained) => encoder.text(basis),
        (None, Link::Unchained) => encoder,
    };
    encoder.leaf(
        Kind::Message,
        record.id,
        record.tenant,
        Some(record.recipient_hash),
    )
}

/// The columns of a `consent_events` row that its leaf covers, as plain values (mapped from
/// the store's records in `store::leaves`).
#[derive(Debug, Clone, Copy)]
pub struct ConsentColumns<'a> {
    pub id: &'a str,
    pub tenant: &'a str,
    pub recipient_hash: &'a str,
    pub recipient_masked: &'a str,
    pub action: &'a str,
    pub level: Option<&'a str>,
    pub brand: Option<&'a str>,
    pub campaign: Option<&'a str>,
    pub purposes: &'a str,
    pub method: &'a str,
    pub occurred_at_us: i64,
    pub recorded_at_us: i64,
    pub recorded_by: &'a str,
    pub external_id: Option<&'a str>,
    pub idempotency_key: &'a str,
    pub key_id: &'a str,
    pub evidence: &'a [u8],
}

/// A consent event's leaf: id, tenant, recipient_hash, recipient_masked, action, level, brand,
/// campaign, purposes, method, occurred_at_us, recorded_at_us, recorded_by, external_id,
/// idempotency_key, key_id, evidence; then, chained, its link.
pub fn consent_event<'a>(record: impl Into<ConsentColumns<'a>>, link: Link) -> Leaf {
    let record = record.into();
    Encoder::new(Kind::ConsentEvent)
        .text(record.id)
        .text(record.tenant)
        .text(record.recipient_hash)
        .text(record.recipient_masked)
        .text(record.action)
        .optional(record.level)
        .optional(record.brand)
        .optional(record.campaign)
        .text(record.purposes)
        .text(record.method)
        .int(record.occurred_at_us)
        .int(record.recorded_at_us)
        .text(record.recorded_by)
        .optional(record.external_id)
        .text(record.idempotency_key)
        .text(record.key_id)
        .bytes(record.evidence)
        .link(link)
        .leaf(
            Kind::ConsentEvent,
            record.id,
            record.tenant,
            Some(record.recipient_hash),
        )
}

/// A read of a message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyAccess {
    pub id: String,
    pub tenant: String,
    /// The JWT subject that read it.
    pub subject: String,
    pub message_id: String,
    pub accessed_at_us: i64,
}

/// A body access's leaf: id, tenant, subject, message_id, accessed_at_us.
pub fn body_access(access: &BodyAccess) -> Leaf {
    Encoder::new(Kind::BodyAccess)
        .text(&access.id)
        .text(&access.tenant)
        .text(&access.subject)
        .text(&access.message_id)
        .int(access.accessed_at_us)
        .leaf(Kind::BodyAccess, &access.id, &access.tenant, None)
}

/// An erasure of a recipient's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub id: String,
    pub tenant: String,
    pub recipient_hash: String,
    pub erased_at_us: i64,
    pub erased_by: String,
    pub keys_destroyed: i64,
}

/// An erasure's leaf: id, tenant, recipient_hash, erased_at_us, erased_by, keys_destroyed;
/// then, chained, its link.
pub fn erasure(erasure: &Erasure, link: Link) -> Leaf {
    Encoder::new(Kind::Erasure)
        .text(&erasure.id)
        .text(&erasure.tenant)
        .text(&erasure.recipient_hash)
        .int(erasure.erased_at_us)
        .text(&erasure.erased_by)
        .int(erasure.keys_destroyed)
        .link(link)
        .leaf(
            Kind::Erasure,
            &erasure.id,
            &erasure.tenant,
            Some(&erasure.recipient_hash),
        )
}

/// What the upstream answered about a message (a row of `message_outcomes`: the forward's
/// `sent` or `failed`, a receipt's `delivered` or `undelivered`), with the message's tenant
/// and recipient hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub id: String,
    pub tenant: String,
    pub message_id: String,
    pub recipient_hash: String,
    pub recorded_at_us: i64,
    pub status: String,
    pub upstream_message_id: Option<String>,
    pub error_code: Option<String>,
    pub detail: Option<String>,
}

/// An outcome's leaf: id, tenant, message_id, recipient_hash, recorded_at_us, status,
/// upstream_message_id, error_code, detail, link.
pub fn outcome(outcome: &Outcome, link: Link) -> Leaf {
    Encoder::with_version(CHAIN_VERSION, Kind::Outcome)
        .text(&outcome.id)
        .text(&outcome.tenant)
        .text(&outcome.message_id)
        .text(&outcome.recipient_hash)
        .int(outcome.recorded_at_us)
        .text(&outcome.status)
        .optional(outcome.upstream_message_id.as_deref())
        .optional(outcome.error_code.as_deref())
        .optional(outcome.detail.as_deref())
        .link(link)
        .leaf(
            Kind::Outcome,
            &outcome.id,
            &outcome.tenant,
            Some(&outcome.recipient_hash),
        )
}

/// The decision taken when a deferred message came due (a row of `message_releases`), with the
/// message's tenant and recipient hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub id: String,
    pub tenant: String,
    pub message_id: String,
    pub recipient_hash: String,
    pub decided_at_us: i64,
    pub decision: String,
    pub reasons_json: String,
    /// The grounds of a release a policy decided (JSON, as a message's basis: what an allowed
    /// one's consent rested on, the policy version of a denial or a deferral).
    pub basis: Option<String>,
}

/// A release's leaf: id, tenant, message_id, recipient_hash, decided_at_us, decision, reasons;
/// for a release with a decision basis, the basis (and the leaf's version is
/// [`RELEASE_BASIS_VERSION`]); then its link.
pub fn release(release: &Release, link: Link) -> Leaf {
    debug_assert!(
        link != Link::Unchained,
        "releases are leaves only since chains"
    );
    let version = match release.basis {
        Some(_) => RELEASE_BASIS_VERSION,
        None => CHAIN_VERSION,
    };
    let encoder = Encoder::with_version(version, Kind::Release)
        .text(&release.id)
        .text(&release.tenant)
        .text(&release.message_id)
        .text(&release.recipient_hash)
        .int(release.decided_at_us)
        .text(&release.decision)
        .text(&release.reasons_json);
    match &release.basis {
        Some(basis) => encoder.text(basis),
        None => encoder,
    }
    .link(link)
    .leaf(
        Kind::Release,
        &release.id,
        &release.tenant,
        Some(&release.recipient_hash),
    )
}

/// The columns of an `inbound_messages` row that its leaf covers.
#[derive(Debug, Clone, Copy)]
pub struct InboundColumns<'a> {
    pub id: &'a str,
    pub tenant: &'a str,
    pub recipient_hash: &'a str,
    pub recipient_masked: &'a str,
    pub to_masked: &'a str,
    pub upstream: &'a str,
    pub gateway_id: &'a str,
    pub class: &'a str,
    pub certain: bool,
    pub consent_event: Option<&'a str>,
    pub received_at_us: i64,
    pub key_id: &'a str,
    pub payload: &'a [u8],
}

/// An inbound message's leaf: id, tenant, recipient_hash, recipient_masked, to_masked,
/// upstream, gateway_id, class, certain (1 or 0), consent_event, received_at_us, key_id,
/// payload (sealed), link.
pub fn inbound<'a>(record: impl Into<InboundColumns<'a>>, link: Link) -> Leaf {
    let record = record.into();
    Encoder::with_version(CHAIN_VERSION, Kind::Inbound)
        .text(record.id)
        .text(record.tenant)
        .text(record.recipient_hash)
        .text(record.recipient_masked)
        .text(record.to_masked)
        .text(record.upstream)
        .text(record.gateway_id)
        .text(record.class)
        .int(i64::from(record.certain))
        .optional(record.consent_event)
        .int(record.received_at_us)
        .text(record.key_id)
        .bytes(record.payload)
        .link(link)
        .leaf(
            Kind::Inbound,
            record.id,
            record.tenant,
            Some(record.recipient_hash),
        )
}

/// How a person resolved a review of an unclear reply (a row of `review_resolutions`), with
/// the review's tenant, recipient hash and inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The review's id.
    pub id: String,
    pub tenant: String,
    pub recipient_hash: String,
    pub inbound_id: String,
    pub outcome: String,
    pub resolved_by: String,
    pub resolved_at_us: i64,
    pub consent_event: Option<String>,
}

/// A review resolution's leaf: id (the review's), tenant, recipient_hash, inbound_id, outcome,
/// resolved_by, resolved_at_us, consent_event, link.
pub fn review_resolution(resolution: &Resolution, link: Link) -> Leaf {
    Encoder::with_version(CHAIN_VERSION, Kind::ReviewResolution)
        .text(&resolution.id)
        .text(&resolution.tenant)
        .text(&resolution.recipient_hash)
        .text(&resolution.inbound_id)
        .text(&resolution.outcome)
        .text(&resolution.resolved_by)
        .int(resolution.resolved_at_us)
        .optional(resolution.consent_event.as_deref())
        .link(link)
        .leaf(
            Kind::ReviewResolution,
            &resolution.id,
            &resolution.tenant,
            Some(&resolution.recipient_hash),
        )
}

/// When the leaf's row was recorded, in microseconds since the Unix epoch: a message's
/// `created_at_us`, a consent event's `recorded_at_us` (not `occurred_at_us`, which the
/// client states), a body access's `accessed_at_us`, an erasure's `erased_at_us`, an
/// outcome's `recorded_at_us`, a release's `decided_at_us`, an inbound message's
/// `received_at_us`, a resolution's `resolved_at_us`. `None` if the fields are not those of
/// `kind`.
pub fn recorded_at_us(kind: Kind, fields: &[Field]) -> Option<i64> {
    let position = match kind {
        Kind::Message => 2,
        Kind::ConsentEvent => 11,
        Kind::BodyAccess => 4,
        Kind::Erasure => 3,
        Kind::Outcome | Kind::Release => 4,
        Kind::Inbound => 10,
        Kind::ReviewResolution => 6,
    };
    match fields.get(position) {
        Some(Field::Int(at)) => Some(*at),
        _ => None,
    }
}

/// Splits a leaf into its kind and fields; `None` if it is not a well-formed leaf.
pub fn decode(bytes: &[u8]) -> Option<(Kind, Vec<Field>)> {
    let (&version, rest) = bytes.split_first()?;
    let (&kind, mut rest) = rest.split_first()?;
    let kind = Kind::from_code(kind)?;
    let known = match version {
        VERSION => kind.code() <= Kind::Erasure.code(),
        BASIS_VERSION => kind == Kind::Message,
        CHAIN_VERSION => kind != Kind::BodyAccess,
        RELEASE_BASIS_VERSION => kind == Kind::Release,
        _ => false,
    };
    if !known {
        return None;
    }
    let mut fields = Vec::new();
    while let Some((&tag, after)) = rest.split_first() {
        match tag {
            0x00 => {
                fields.push(Field::Absent);
                rest = after;
            }
            0x01 => {
                let (length, after) = after.split_at_checked(4)?;
                let length = u32::from_be_bytes(length.try_into().ok()?) as usize;
                let (value, after) = after.split_at_checked(length)?;
                fields.push(Field::Bytes(value.to_vec()));
                rest = after;
            }
            0x02 => {
                let (value, after) = after.split_at_checked(8)?;
                fields.push(Field::Int(i64::from_be_bytes(value.try_into().ok()?)));
                rest = after;
            }
            _ => return None,
        }
    }
    Some((kind, fields))
}

/// Links a leaf built as the first of its chain ([`Link::First`]) to the previous leaf about
/// its recipient. Leaves are built unlinked where their rows are made; the store links each
/// one as it writes it, since only the store knows the newest leaf about the recipient then.
/// A leaf that is not chained is returned as it is.
pub fn relink(mut leaf: Leaf, link: Link) -> Leaf {
    if !chained(leaf.bytes.first()) || leaf.bytes.last() != Some(&0x00) {
        return leaf;
    }
    if let Link::After(hash) = link {
        leaf.bytes.pop();
        leaf.bytes.push(0x01);
        leaf.bytes.extend_from_slice(&32u32.to_be_bytes());
        leaf.bytes.extend_from_slice(&hash);
    }
    leaf
}

/// A decoded leaf's link: `Unchained` for a leaf of version 1 or 2, else its last field.
/// `None` if the leaf is not well formed or its last field is not a link.
pub fn link_of(bytes: &[u8], fields: &[Field]) -> Option<Link> {
    if !chained(bytes.first()) {
        return Some(Link::Unchained);
    }
    match fields.last()? {
        Field::Absent => Some(Link::First),
        Field::Bytes(hash) => Some(Link::After(hash.as_slice().try_into().ok()?)),
        Field::Int(_) => None,
    }
}

/// The tenant and recipient hash a decoded leaf is about (`None` for a body access).
pub fn about(kind: Kind, fields: &[Field]) -> Option<(&[u8], &[u8])> {
    let (tenant, recipient) = kind.about_fields()?;
    match (fields.get(tenant)?, fields.get(recipient)?) {
        (Field::Bytes(tenant), Field::Bytes(recipient)) => Some((tenant, recipient)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_exactly_as_documented() {
        let access = BodyAccess {
            id: "ax".into(),
            tenant: "t".into(),
            subject: "s".into(),
            message_id: "m".into(),
            accessed_at_us: 258,
        };
        let leaf = body_access(&access);
        let expected: Vec<u8> = [
            &[1u8, 3][..],
            &[1, 0, 0, 0, 2, b'a', b'x'],
            &[1, 0, 0, 0, 1, b't'],
            &[1, 0, 0, 0, 1, b's'],
            &[1, 0, 0, 0, 1, b'm'],
            &[2, 0, 0, 0, 0, 0, 0, 1, 2],
        ]
        .concat();
        assert_eq!(leaf.bytes, expected);
        let (kind, fields) = decode(&leaf.bytes).unwrap();
        assert_eq!(kind, Kind::BodyAccess);
        assert_eq!(fields[0], Field::Bytes(b"ax".to_vec()));
        assert_eq!(fields[4], Field::Int(258));
        assert!(decode(&leaf.bytes[..leaf.bytes.len() - 1]).is_none());
    }

    #[test]
    fn a_chained_leaf_ends_with_its_link_and_is_relinked_in_place() {
        let erased = Erasure {
            id: "e".into(),
            tenant: "t".into(),
            recipient_hash: "r".into(),
            erased_at_us: 1,
            erased_by: "s".into(),
            keys_destroyed: 0,
        };
        let unchained = erasure(&erased, Link::Unchained);
        let first = erasure(&erased, Link::First);
        assert_eq!(unchained.bytes[0], VERSION);
        assert_eq!(first.bytes[0], CHAIN_VERSION);
        assert_eq!(first.bytes[1..first.bytes.len() - 1], unchained.bytes[1..]);
        assert_eq!(first.bytes.last(), Some(&0x00));
        let previous = [7u8; 32];
        let after = relink(first.clone(), Link::After(previous));
        assert_eq!(after, erasure(&erased, Link::After(previous)));
        let tail: Vec<u8> = [&[1u8, 0, 0, 0, 32][..], &previous].concat();
        assert!(after.bytes.ends_with(&tail));
        for (leaf, link) in [
            (&unchained, Link::Unchained),
            (&first, Link::First),
            (&after, Link::After(previous)),
        ] {
            let (kind, fields) = decode(&leaf.bytes).unwrap();
            assert_eq!(kind, Kind::Erasure);
            assert_eq!(link_of(&leaf.bytes, &fields), Some(link));
            assert_eq!(
                about(kind, &fields),
                Some((&b"t"[..], &b"r"[..])),
                "tenant and number"
            );
        }
        // A body access is never chained; a version-3 one does not decode.
        let access = body_access(&BodyAccess {
            id: "a".into(),
            tenant: "t".into(),
            subject: "s".into(),
            message_id: "m".into(),
            accessed_at_us: 1,
        });
        assert_eq!(relink(access.clone(), Link::After(previous)), access);
        let mut forged = access.bytes.clone();
        forged[0] = CHAIN_VERSION;
        assert!(decode(&forged).is_none());
    }

    #[test]
    fn an_allowed_release_carries_its_basis_before_its_link() {
        let mut released = Release {
            id: "rel".into(),
            tenant: "t".into(),
            message_id: "m".into(),
            recipient_hash: "r".into(),
            decided_at_us: 9,
            decision: "denied".into(),
            reasons_json: "[]".into(),
            basis: None,
        };
        let without = release(&released, Link::First);
        assert_eq!(without.bytes[0], CHAIN_VERSION);
        released.decision = "allowed".into();
        released.basis = Some("{}".into());
        let previous = [3u8; 32];
        let with = relink(release(&released, Link::First), Link::After(previous));
        assert_eq!(with, release(&released, Link::After(previous)));
        assert_eq!(with.bytes[0], RELEASE_BASIS_VERSION);
        let (kind, fields) = decode(&with.bytes).unwrap();
        assert_eq!(kind, Kind::Release);
        assert_eq!(fields.len(), 9, "seven columns, the basis, the link");
        assert_eq!(fields[7], Field::Bytes(b"{}".to_vec()));
        assert_eq!(link_of(&with.bytes, &fields), Some(Link::After(previous)));
        // Version 4 is a release's only.
        let mut forged = without.bytes.clone();
        forged[1] = Kind::Outcome.code();
        forged[0] = RELEASE_BASIS_VERSION;
        assert!(decode(&forged).is_none());
    }
}
