//! Decoding of stored rows, shared by both backends: the columns are the same, only the row
//! type differs.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{
    ConsentRecord, DataKeyRow, DecisionCount, DecisionKind, LogEntry, MessageRecord,
    RecipientKeyRow, ReplyView, ReviewView, StoreError, StoredConsent,
};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::leaf::Kind;
use crate::audit::merkle::Hash;
use crate::audit::note::Cosignature;
use crate::consent::{Action, ConsentEvent, Level};
use crate::domain::{MessageId, Purpose, TenantId};

/// A ledger row as the consent fold reads it.
pub(crate) fn event_from_row<R>(row: &R) -> Result<ConsentEvent, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database>,
    String: Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database>,
    i64: Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database>,
    Vec<u8>: Type<R::Database>,
{
    let action: String = row.try_get("action")?;
    let level: Option<String> = row.try_get("level")?;
    let purposes: String = row.try_get("purposes")?;
    let method: String = row.try_get("method")?;
    consent_event(
        row.try_get("seq")?,
        row.try_get("id")?,
        &action,
        level.as_deref(),
        row.try_get("brand")?,
        row.try_get("campaign")?,
        &purposes,
        row.try_get("occurred_at_us")?,
        &method,
    )
}

/// A ledger row's columns, as the consent fold reads them; every backend maps its rows here.
#[allow(clippy::too_many_arguments)]
pub(crate) fn consent_event(
    seq: i64,
    id: String,
    action: &str,
    level: Option<&str>,
    brand: Option<String>,
    campaign: Option<String>,
    purposes: &str,
    occurred_at_us: i64,
    method: &str,
) -> Result<ConsentEvent, StoreError> {
    ConsentEvent::from_columns(
        seq,
        id,
        action,
        level,
        brand,
        campaign,
        purposes,
        occurred_at_us,
        method,
    )
    .map_err(|what| StoreError::Corrupt(format!("consent_events.{what}")))
}

/// A whole ledger row.
pub(crate) fn consent_from_row<R>(row: &R) -> Result<StoredConsent, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database>,
    String: Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database>,
    i64: Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database>,
    Vec<u8>: Type<R::Database>,
{
    let corrupt = |what: &str| StoreError::Corrupt(format!("consent_events.{what}"));
    let action: String = row.try_get("action")?;
    let level: Option<String> = row.try_get("level")?;
    let tenant: String = row.try_get("tenant")?;
    Ok(StoredConsent {
        seq: row.try_get("seq")?,
        record: ConsentRecord {
            id: row.try_get("id")?,
            tenant: TenantId::parse(&tenant).map_err(|_| corrupt("tenant"))?,
            recipient_hash: row.try_get("recipient_hash")?,
            recipient_masked: row.try_get("recipient_masked")?,
            action: Action::parse(&action).ok_or_else(|| corrupt("action"))?,
            level: match level {
                None => None,
                Some(level) => Some(Level::parse(&level).ok_or_else(|| corrupt("level"))?),
            },
            brand: row.try_get("brand")?,
            campaign: row.try_get("campaign")?,
            purposes: row.try_get("purposes")?,
            method: row.try_get("method")?,
            occurred_at_us: row.try_get("occurred_at_us")?,
            recorded_at_us: row.try_get("recorded_at_us")?,
            recorded_by: row.try_get("recorded_by")?,
            external_id: row.try_get("external_id")?,
            idempotency_key: row.try_get("idempotency_key")?,
            key_id: row.try_get("key_id")?,
            evidence: row.try_get("evidence")?,
        },
    })
}

/// A review with its resolution.
pub(crate) fn review_from_row<R>(row: &R) -> Result<ReviewView, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database>,
    String: Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database>,
    i64: Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database>,
    Vec<u8>: Type<R::Database>,
{
    Ok(ReviewView {
        id: row.try_get("id")?,
        recipient: row.try_get("recipient_masked")?,
        recipient_hash: row.try_get("recipient_hash")?,
        inbound_id: row.try_get("inbound_id")?,
        created_at_us: row.try_get("created_at_us")?,
        outcome: row.try_get("outcome")?,
        resolved_by: row.try_get("resolved_by")?,
        consent_event: row.try_get("consent_event")?,
    })
}

/// A reply, from `REPLY_COLUMNS`.
pub(crate) fn reply_from_row<R>(row: &R) -> Result<ReplyView, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database>,
    String: Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database>,
    i64: Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database>,
    bool: Type<R::Database>,
{
    Ok(ReplyView {
        id: row.try_get("id")?,
        upstream: row.try_get("upstream")?,
        from: row.try_get("recipient_masked")?,
        to: row.try_get("to_masked")?,
        class: row.try_get("class")?,
        certain: row.try_get("certain")?,
        consent_event: row.try_get("consent_event")?,
        received_at_us: row.try_get("received_at_us")?,
    })
}

/// The columns [`reply_from_row`] reads.
pub(crate) const REPLY_COLUMNS: &str =
    "id, upstream, recipient_masked, to_masked, class, certain, consent_event, received_at_us";

/// A count of decisions: `bucket` is the span's number from the first, which starts at
/// `from_us`.
pub(crate) fn decision_count_from_row<R>(
    row: &R,
    from_us: i64,
    bucket_us: i64,
) -> Result<DecisionCount, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database>,
    String: Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database>,
    i64: Type<R::Database>,
{
    let bucket: i64 = row.try_get("bucket")?;
    Ok(DecisionCount {
        bucket_us: from_us + bucket * bucket_us,
        decision: row.try_get("decision")?,
        reason: row.try_get("reason")?,
        count: row.try_get("n")?,
    })
}

/// The columns of a message record, in the order [`message_from_row`] reads them.
pub(crate) const MESSAGE_COLUMNS: &str = "m.id, m.tenant, m.created_at_us, m.recipient_hash, \
     m.recipient_masked, m.sender_masked, m.purpose, m.brand, m.campaign, m.decision, \
     m.reply_kind, m.confirms_event, m.reasons, m.upstream, m.key_id, m.payload, \
     m.status_callback, m.basis";

/// The logged tables, by the kind of leaf their rows are.
pub(crate) const LOGGED_TABLES: [(Kind, &str); 4] = [
    (Kind::Message, "messages"),
    (Kind::ConsentEvent, "consent_events"),
    (Kind::BodyAccess, "body_accesses"),
    (Kind::Erasure, "erasures"),
];

/// Each logged table's rows and its log entries, counted in one statement.
pub(crate) const LOGGED_COUNTS: &str = "SELECT \
     (SELECT count(*) FROM messages), \
     (SELECT count(*) FROM log_leaves WHERE kind = 'message'), \
     (SELECT count(*) FROM consent_events), \
     (SELECT count(*) FROM log_leaves WHERE kind = 'consent_event'), \
     (SELECT count(*) FROM body_accesses), \
     (SELECT count(*) FROM log_leaves WHERE kind = 'body_access'), \
     (SELECT count(*) FROM erasures), \
     (SELECT count(*) FROM log_leaves WHERE kind = 'erasure')";

/// A number's erasures and body reads with their leaf indexes, in log order (`tenant` and
/// `recipient_hash` are the statement's first two parameters, given in each dialect's
/// placeholders, and `limit` its third).
pub(crate) fn number_other_leaves_sql(placeholders: [&str; 3]) -> String {
    let [tenant, hash, limit] = placeholders;
    format!(
        "SELECT kind, ref_id, leaf_index FROM ( \
           SELECT l.kind, l.ref_id, l.leaf_index FROM log_leaves l \
           JOIN erasures e ON e.id = l.ref_id \
           WHERE l.kind = 'erasure' AND e.tenant = {tenant} AND e.recipient_hash = {hash} \
           AND l.leaf_index IS NOT NULL \
           UNION ALL \
           SELECT l.kind, l.ref_id, l.leaf_index FROM log_leaves l \
           JOIN body_accesses b ON b.id = l.ref_id JOIN messages m ON m.id = b.message_id \
           WHERE l.kind = 'body_access' AND m.tenant = {tenant} AND m.recipient_hash = {hash} \
           AND l.leaf_index IS NOT NULL \
         ) AS other ORDER BY leaf_index LIMIT {limit}"
    )
}

/// The ids of up to `limit` rows of `kind`'s table that have no log entry (the same SQL on
/// both backends: the table and kind are constants).
pub(crate) fn unlogged_rows_sql(kind: Kind, limit: i64) -> String {
    let table = LOGGED_TABLES
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("messages", |(_, table)| table);
    format!(
        "SELECT t.id FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM log_leaves l \
         WHERE l.kind = '{}' AND l.ref_id = t.id) ORDER BY t.id LIMIT {}",
        kind.as_str(),
        limit.max(0)
    )
}

/// A whole message row, as it was recorded (a row that does not parse is corrupt: the audit
/// must not guess).
pub(crate) fn message_from_row<R>(row: &R) -> Result<MessageRecord, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database>,
    String: Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database>,
    i64: Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database>,
    Vec<u8>: Type<R::Database>,
{
    let corrupt = |what: &str| StoreError::Corrupt(format!("messages.{what}"));
    let id: String = row.try_get("id")?;
    let tenant: String = row.try_get("tenant")?;
    let purpose: String = row.try_get("purpose")?;
    let decision: String = row.try_get("decision")?;
    let reply_kind: Option<String> = row.try_get("reply_kind")?;
    Ok(MessageRecord {
        id: MessageId::parse(&id).ok_or_else(|| corrupt("id"))?,
        tenant: TenantId::parse(&tenant).map_err(|_| corrupt("tenant"))?,
        created_at_us: row.try_get("created_at_us")?,
        recipient_hash: row.try_get("recipient_hash")?,
        recipient_masked: row.try_get("recipient_masked")?,
        sender_masked: row.try_get("sender_masked")?,
        purpose: purpose
            .parse::<Purpose>()
            .map_err(|_| corrupt("purpose"))?
            .as_str(),
        brand: row.try_get("brand")?,
        campaign: row.try_get("campaign")?,
        decision: match decision.as_str() {
            "allowed" => DecisionKind::Allowed,
            "denied" => DecisionKind::Denied,
            "deferred" => DecisionKind::Deferred,
            _ => return Err(corrupt("decision")),
        },
        reply_kind: match reply_kind.as_deref() {
            None => None,
            Some("opt_out_confirmation") => Some("opt_out_confirmation"),
            Some("opt_in_confirmation") => Some("opt_in_confirmation"),
            Some("help") => Some("help"),
            Some(_) => return Err(corrupt("reply_kind")),
        },
        confirms_event: row.try_get("confirms_event")?,
        reasons_json: row.try_get("reasons")?,
        upstream: row.try_get("upstream")?,
        key_id: row.try_get("key_id")?,
        payload: row.try_get("payload")?,
        release_at_us: None,
        status_callback: row.try_get("status_callback")?,
        basis: row.try_get("basis")?,
        new_recipient_key: None,
    })
}

/// A checkpoint row.
pub(crate) fn checkpoint_from_row<R>(row: &R) -> Result<Checkpoint, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database>,
    String: Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database>,
    i64: Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database>,
    Vec<u8>: Type<R::Database>,
{
    let size: i64 = row.try_get("tree_size")?;
    Ok(Checkpoint {
        tree_size: u64::try_from(size)
            .map_err(|_| StoreError::Corrupt("log_checkpoints.tree_size".into()))?,
        root_hash: hash_from(row.try_get("root_hash")?, "log_checkpoints.root_hash")?,
        signed_at_us: row.try_get("signed_at_us")?,
        key_id: row.try_get("key_id")?,
        signature: row.try_get("signature")?,
        cosignatures: Vec::new(),
    })
}

/// A cosignature row (`tree_size, witness, cosignature`).
pub(crate) fn cosignature_from_row<R>(row: &R) -> Result<(u64, Cosignature), StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database>,
    String: Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database>,
    i64: Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database>,
    Vec<u8>: Type<R::Database>,
{
    let size: i64 = row.try_get("tree_size")?;
    let size = u64::try_from(size)
        .map_err(|_| StoreError::Corrupt("log_cosignatures.tree_size".into()))?;
    let cosignature = Cosignature::from_parts(row.try_get("witness")?, row.try_get("cosignature")?)
        .map_err(|why| StoreError::Corrupt(format!("log_cosignatures: {why}")))?;
    Ok((size, cosignature))
}

/// A log entry row (`leaf_index, kind, ref_id, tenant, leaf_hash`).
pub(crate) fn log_entry_from_row<R>(row: &R) -> Result<LogEntry, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database>,
    String: Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database>,
    i64: Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database>,
    Vec<u8>: Type<R::Database>,
{
    let kind: String = row.try_get("kind")?;
    Ok(LogEntry {
        leaf_index: row.try_get("leaf_index")?,
        kind: Kind::parse(&kind).ok_or_else(|| StoreError::Corrupt("log_leaves.kind".into()))?,
        ref_id: row.try_get("ref_id")?,
        tenant: row.try_get("tenant")?,
        leaf_hash: hash_from(row.try_get("leaf_hash")?, "log_leaves.leaf_hash")?,
    })
}

/// A data key row.
pub(crate) fn data_key_from_row<R>(row: &R) -> Result<DataKeyRow, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database>,
    String: Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database>,
    i64: Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database>,
    Vec<u8>: Type<R::Database>,
{
    Ok(DataKeyRow {
        id: row.try_get("id")?,
        wrapped: row.try_get("wrapped")?,
        created_at_us: row.try_get("created_at_us")?,
        retired_at_us: row.try_get("retired_at_us")?,
    })
}

/// A recipient key row.
pub(crate) fn recipient_key_from_row<R>(row: &R) -> Result<RecipientKeyRow, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database>,
    String: Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database>,
    i64: Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database>,
    Vec<u8>: Type<R::Database>,
{
    Ok(RecipientKeyRow {
        tenant: row.try_get("tenant")?,
        recipient_hash: row.try_get("recipient_hash")?,
        id: row.try_get("id")?,
        data_key_id: row.try_get("data_key_id")?,
        wrapped: row.try_get("wrapped")?,
        created_at_us: row.try_get("created_at_us")?,
    })
}

/// A 32-byte hash column.
pub(crate) fn hash_from(bytes: Vec<u8>, column: &str) -> Result<Hash, StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{column} is not 32 bytes")))
}
