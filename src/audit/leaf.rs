//! The exact bytes of each log leaf. An independent verifier rebuilds them from the exported
//! rows, so this encoding is part of the external contract (docs/auditors.md):
//!
//! ```text
//! leaf   = 0x01 (version) || kind (1 byte) || field*   (a fixed list of fields per kind)
//! field  = 0x00                                        absent (SQL NULL)
//!        | 0x01 || length (u32, big-endian) || bytes   text (UTF-8) or bytes
//!        | 0x02 || value (i64, big-endian)             integer
//! kind   = 0x01 message | 0x02 consent event | 0x03 body access | 0x04 erasure
//! ```
//!
//! Message records and consent events are logged with their sealed payloads (ciphertext, not
//! plaintext), so erasing a recipient's key leaves every leaf, and every proof, intact.

use super::merkle::{Hash, leaf_hash};

/// The format version, the first byte of every leaf...
pub const VERSION: u8 = 1;
/// ...but a message record's with its decision basis as an 18th field: an older leaf keeps
/// its bytes, and so its hash.
pub const BASIS_VERSION: u8 = 2;

/// What a leaf records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message,
    ConsentEvent,
    BodyAccess,
    Erasure,
}

impl Kind {
    pub fn code(self) -> u8 {
        match self {
            Kind::Message => 1,
            Kind::ConsentEvent => 2,
            Kind::BodyAccess => 3,
            Kind::Erasure => 4,
        }
    }

    /// The name stored in `log_leaves.kind` and shown in exports.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::ConsentEvent => "consent_event",
            Kind::BodyAccess => "body_access",
            Kind::Erasure => "erasure",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        [
            Kind::Message,
            Kind::ConsentEvent,
            Kind::BodyAccess,
            Kind::Erasure,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }

    fn from_code(code: u8) -> Option<Kind> {
        [
            Kind::Message,
            Kind::ConsentEvent,
            Kind::BodyAccess,
            Kind::Erasure,
        ]
        .into_iter()
        .find(|kind| kind.code() == code)
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
/// [`BASIS_VERSION`]).
pub fn message<'a>(record: impl Into<MessageColumns<'a>>) -> Leaf {
    let record = record.into();
    let encoder = match record.basis {
        Some(_) => Encoder::with_version(BASIS_VERSION, Kind::Message),
        None => Encoder::new(Kind::Message),
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
    if let Some(basis) = record.basis {
        encoder = encoder.text(basis);
    }
    let bytes = encoder.0;
    Leaf {
        kind: Kind::Message,
        ref_id: record.id.to_owned(),
        tenant: record.tenant.to_owned(),
        bytes,
    }
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
/// idempotency_key, key_id, evidence.
pub fn consent_event<'a>(record: impl Into<ConsentColumns<'a>>) -> Leaf {
    let record = record.into();
    let bytes = Encoder::new(Kind::ConsentEvent)
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
        .0;
    Leaf {
        kind: Kind::ConsentEvent,
        ref_id: record.id.to_owned(),
        tenant: record.tenant.to_owned(),
        bytes,
    }
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
    let bytes = Encoder::new(Kind::BodyAccess)
        .text(&access.id)
        .text(&access.tenant)
        .text(&access.subject)
        .text(&access.message_id)
        .int(access.accessed_at_us)
        .0;
    Leaf {
        kind: Kind::BodyAccess,
        ref_id: access.id.clone(),
        tenant: access.tenant.clone(),
        bytes,
    }
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

/// An erasure's leaf: id, tenant, recipient_hash, erased_at_us, erased_by, keys_destroyed.
pub fn erasure(erasure: &Erasure) -> Leaf {
    let bytes = Encoder::new(Kind::Erasure)
        .text(&erasure.id)
        .text(&erasure.tenant)
        .text(&erasure.recipient_hash)
        .int(erasure.erased_at_us)
        .text(&erasure.erased_by)
        .int(erasure.keys_destroyed)
        .0;
    Leaf {
        kind: Kind::Erasure,
        ref_id: erasure.id.clone(),
        tenant: erasure.tenant.clone(),
        bytes,
    }
}

/// When the leaf's row was recorded, in microseconds since the Unix epoch: a message's
/// `created_at_us`, a consent event's `recorded_at_us` (not `occurred_at_us`, which the
/// client states), a body access's `accessed_at_us`, an erasure's `erased_at_us`. `None` if
/// the fields are not those of `kind`.
pub fn recorded_at_us(kind: Kind, fields: &[Field]) -> Option<i64> {
    let position = match kind {
        Kind::Message => 2,
        Kind::ConsentEvent => 11,
        Kind::BodyAccess => 4,
        Kind::Erasure => 3,
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
    if version != VERSION && !(version == BASIS_VERSION && kind == Kind::Message) {
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
}
