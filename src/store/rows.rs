//! Decoding of stored rows, shared by both backends: the columns are the same, only the row
//! type differs.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{
    ConsentRecord, DataKeyRow, DecisionCount, DecisionKind, DeferredMessage, InDoubt, LogEntry,
    MessageRecord, RecipientKeyRow, ReplyView, ReviewView, StoreError, StoredConsent,
};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::leaf::{self, Kind, Leaf, Link};
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
/// Each logged kind's table, its id column and which of its rows are logged (rows of outcomes,
/// releases, inbound messages and resolutions written before they became leaves are not).
pub(crate) const LOGGED_TABLES: [(Kind, &str, &str, &str); 8] = [
    (Kind::Message, "messages", "id", "1 = 1"),
    (Kind::ConsentEvent, "consent_events", "id", "1 = 1"),
    (Kind::BodyAccess, "body_accesses", "id", "1 = 1"),
    (Kind::Erasure, "erasures", "id", "1 = 1"),
    (Kind::Outcome, "message_outcomes", "id", "id IS NOT NULL"),
    (Kind::Release, "message_releases", "id", "id IS NOT NULL"),
    (Kind::Inbound, "inbound_messages", "id", "logged"),
    (
        Kind::ReviewResolution,
        "review_resolutions",
        "review_id",
        "logged",
    ),
];

/// Each logged table's rows and its log entries, counted in one statement (so in one
/// snapshot, on both backends): two columns per entry of [`LOGGED_TABLES`].
pub(crate) fn logged_counts_sql() -> String {
    let counts: Vec<String> = LOGGED_TABLES
        .iter()
        .map(|(kind, table, _, logged)| {
            format!(
                "(SELECT count(*) FROM {table} WHERE {logged}), \
                 (SELECT count(*) FROM log_leaves WHERE kind = '{}')",
                kind.as_str()
            )
        })
        .collect();
    format!("SELECT {}", counts.join(", "))
}

/// The columns of a consent event, for [`consent_from_row`].
pub(crate) const CONSENT_COLUMNS: &str = "c.seq, c.id, c.tenant, c.recipient_hash, \
     c.recipient_masked, c.action, c.level, c.brand, c.campaign, c.purposes, c.method, \
     c.occurred_at_us, c.recorded_at_us, c.recorded_by, c.external_id, c.idempotency_key, \
     c.key_id, c.evidence";

/// A log entry's (`l`) link, for [`link_from_row`].
pub(crate) const LINK_COLUMNS: &str =
    "CAST(CASE WHEN l.chained THEN 1 ELSE 0 END AS BIGINT) AS chained, l.prev_hash";

/// A leaf's link, as its log entry stores it.
pub(crate) fn link_from_row<R>(row: &R) -> Result<Link, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database>,
    i64: Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database>,
    Vec<u8>: Type<R::Database>,
{
    let chained: Option<i64> = row.try_get("chained")?;
    let prev_hash: Option<Vec<u8>> = row.try_get("prev_hash")?;
    match (chained, prev_hash) {
        (None | Some(0), _) => Ok(Link::Unchained),
        (_, None) => Ok(Link::First),
        (_, Some(hash)) => Ok(Link::After(hash_from(hash, "log_leaves.prev_hash")?)),
    }
}

/// The condition of the partial index `log_leaves_by_tenant` (migration 0019), repeated in
/// the queries that page through a tenant's messages and consent events so that SQLite uses
/// it (a partial index serves a query only when the query's own terms imply its condition).
/// Only those two kinds are paged by tenant: a send's outcome, a release, a reply are found
/// through their message or their recipient, and write no entry here.
pub(crate) const AUDITED_KINDS: &str = "l.kind IN ('message', 'consent_event')";

/// The statement that reads the row a leaf of `kind` records, with its link, by the row's id
/// (`placeholder` in the backend's syntax), for [`leaf_from_row`].
pub(crate) fn leaf_sql(kind: Kind, placeholder: &str) -> String {
    let (columns, from, id) = match kind {
        Kind::Message => (MESSAGE_COLUMNS, "messages m", "m.id"),
        Kind::ConsentEvent => (CONSENT_COLUMNS, "consent_events c", "c.id"),
        Kind::BodyAccess => (
            "b.id, b.tenant, b.subject, b.message_id, b.accessed_at_us",
            "body_accesses b",
            "b.id",
        ),
        Kind::Erasure => (
            "e.id, e.tenant, e.recipient_hash, e.erased_at_us, e.erased_by, e.keys_destroyed",
            "erasures e",
            "e.id",
        ),
        Kind::Outcome => (
            "o.id, m.tenant, o.message_id, m.recipient_hash, o.recorded_at_us, o.status, \
             o.upstream_message_id, o.error_code, o.detail",
            "message_outcomes o JOIN messages m ON m.id = o.message_id",
            "o.id",
        ),
        Kind::Release => (
            "r.id, m.tenant, r.message_id, m.recipient_hash, r.decided_at_us, r.decision, \
             r.reasons, r.basis",
            "message_releases r JOIN messages m ON m.id = r.message_id",
            "r.id",
        ),
        Kind::Inbound => (
            "i.id, i.tenant, i.recipient_hash, i.recipient_masked, i.to_masked, i.upstream, \
             i.gateway_id, i.class, CAST(CASE WHEN i.certain THEN 1 ELSE 0 END AS BIGINT) \
             AS certain, \
             i.consent_event, i.received_at_us, i.key_id, i.payload",
            "inbound_messages i",
            "i.id",
        ),
        Kind::ReviewResolution => (
            "r.review_id AS id, v.tenant, v.recipient_hash, v.inbound_id, r.outcome, \
             r.resolved_by, r.resolved_at_us, r.consent_event",
            "review_resolutions r JOIN consent_reviews v ON v.id = r.review_id",
            "r.review_id",
        ),
    };
    format!(
        "SELECT {columns}, {LINK_COLUMNS} FROM {from} \
         LEFT JOIN log_leaves l ON l.kind = '{}' AND l.ref_id = {id} \
         WHERE {id} = {placeholder}",
        kind.as_str()
    )
}

/// The leaf of a row read by [`leaf_sql`].
pub(crate) fn leaf_from_row<R>(kind: Kind, row: &R) -> Result<Leaf, StoreError>
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
    let link = link_from_row(row)?;
    Ok(match kind {
        Kind::Message => leaf::message(&message_from_row(row)?, link),
        Kind::ConsentEvent => leaf::consent_event(&consent_from_row(row)?.record, link),
        Kind::BodyAccess => leaf::body_access(&leaf::BodyAccess {
            id: row.try_get("id")?,
            tenant: row.try_get("tenant")?,
            subject: row.try_get("subject")?,
            message_id: row.try_get("message_id")?,
            accessed_at_us: row.try_get("accessed_at_us")?,
        }),
        Kind::Erasure => leaf::erasure(
            &leaf::Erasure {
                id: row.try_get("id")?,
                tenant: row.try_get("tenant")?,
                recipient_hash: row.try_get("recipient_hash")?,
                erased_at_us: row.try_get("erased_at_us")?,
                erased_by: row.try_get("erased_by")?,
                keys_destroyed: row.try_get("keys_destroyed")?,
            },
            link,
        ),
        Kind::Outcome => leaf::outcome(
            &leaf::Outcome {
                id: row.try_get("id")?,
                tenant: row.try_get("tenant")?,
                message_id: row.try_get("message_id")?,
                recipient_hash: row.try_get("recipient_hash")?,
                recorded_at_us: row.try_get("recorded_at_us")?,
                status: row.try_get("status")?,
                upstream_message_id: row.try_get("upstream_message_id")?,
                error_code: row.try_get("error_code")?,
                detail: row.try_get("detail")?,
            },
            link,
        ),
        Kind::Release => leaf::release(
            &leaf::Release {
                id: row.try_get("id")?,
                tenant: row.try_get("tenant")?,
                message_id: row.try_get("message_id")?,
                recipient_hash: row.try_get("recipient_hash")?,
                decided_at_us: row.try_get("decided_at_us")?,
                decision: row.try_get("decision")?,
                reasons_json: row.try_get("reasons")?,
                basis: row.try_get("basis")?,
            },
            link,
        ),
        Kind::Inbound => {
            let (id, tenant, recipient_hash): (String, String, String) = (
                row.try_get("id")?,
                row.try_get("tenant")?,
                row.try_get("recipient_hash")?,
            );
            let (recipient_masked, to_masked, upstream, gateway_id, class): (
                String,
                String,
                String,
                String,
                String,
            ) = (
                row.try_get("recipient_masked")?,
                row.try_get("to_masked")?,
                row.try_get("upstream")?,
                row.try_get("gateway_id")?,
                row.try_get("class")?,
            );
            let consent_event: Option<String> = row.try_get("consent_event")?;
            let key_id: String = row.try_get("key_id")?;
            let payload: Vec<u8> = row.try_get("payload")?;
            let certain: i64 = row.try_get("certain")?;
            leaf::inbound(
                leaf::InboundColumns {
                    id: &id,
                    tenant: &tenant,
                    recipient_hash: &recipient_hash,
                    recipient_masked: &recipient_masked,
                    to_masked: &to_masked,
                    upstream: &upstream,
                    gateway_id: &gateway_id,
                    class: &class,
                    certain: certain != 0,
                    consent_event: consent_event.as_deref(),
                    received_at_us: row.try_get("received_at_us")?,
                    key_id: &key_id,
                    payload: &payload,
                },
                link,
            )
        }
        Kind::ReviewResolution => leaf::review_resolution(
            &leaf::Resolution {
                id: row.try_get("id")?,
                tenant: row.try_get("tenant")?,
                recipient_hash: row.try_get("recipient_hash")?,
                inbound_id: row.try_get("inbound_id")?,
                outcome: row.try_get("outcome")?,
                resolved_by: row.try_get("resolved_by")?,
                resolved_at_us: row.try_get("resolved_at_us")?,
                consent_event: row.try_get("consent_event")?,
            },
            link,
        ),
    })
}

/// The newest leaf about a recipient, to link the next one to (`tenant` and `recipient_hash`
/// as the first two parameters, in each dialect's placeholders). A recipient's row may hold
/// its key and no leaf yet (`last_hash` NULL): no row, then.
pub(crate) fn head_sql(placeholders: [&str; 2]) -> String {
    let [tenant, hash] = placeholders;
    format!(
        "SELECT last_hash FROM log_heads WHERE tenant = {tenant} AND recipient_hash = {hash} \
         AND last_hash IS NOT NULL"
    )
}

/// Makes a leaf the newest about its recipient (`tenant`, `recipient_hash`, `last_hash`, in
/// each dialect's placeholders).
pub(crate) fn set_head_sql(placeholders: [&str; 3]) -> String {
    let [tenant, hash, leaf_hash] = placeholders;
    format!(
        "INSERT INTO log_heads (tenant, recipient_hash, last_hash) \
         VALUES ({tenant}, {hash}, {leaf_hash}) ON CONFLICT (tenant, recipient_hash) \
         DO UPDATE SET last_hash = excluded.last_hash"
    )
}

/// A number's leaves other than its messages and consent events (its erasures, the reads of
/// its messages' bodies, their outcomes and releases, its replies and the resolutions of their
/// reviews) with their leaf indexes, in log order (`tenant` and `recipient_hash` are the
/// statement's first two parameters, given in each dialect's placeholders, and `limit` its
/// third).
pub(crate) fn number_other_leaves_sql(placeholders: [&str; 3]) -> String {
    let [tenant, hash, limit] = placeholders;
    let of_messages = |kind: &str, table: &str, alias: &str| {
        format!(
            "SELECT l.kind, l.ref_id, l.leaf_index FROM log_leaves l \
             JOIN {table} {alias} ON {alias}.id = l.ref_id \
             JOIN messages m ON m.id = {alias}.message_id \
             WHERE l.kind = '{kind}' AND m.tenant = {tenant} AND m.recipient_hash = {hash} \
             AND l.leaf_index IS NOT NULL"
        )
    };
    format!(
        "SELECT kind, ref_id, leaf_index FROM ( \
           SELECT l.kind, l.ref_id, l.leaf_index FROM log_leaves l \
           JOIN erasures e ON e.id = l.ref_id \
           WHERE l.kind = 'erasure' AND e.tenant = {tenant} AND e.recipient_hash = {hash} \
           AND l.leaf_index IS NOT NULL \
           UNION ALL {} UNION ALL {} UNION ALL {} \
           UNION ALL \
           SELECT l.kind, l.ref_id, l.leaf_index FROM log_leaves l \
           JOIN inbound_messages i ON i.id = l.ref_id \
           WHERE l.kind = 'inbound' AND i.tenant = {tenant} AND i.recipient_hash = {hash} \
           AND l.leaf_index IS NOT NULL \
           UNION ALL \
           SELECT l.kind, l.ref_id, l.leaf_index FROM log_leaves l \
           JOIN consent_reviews v ON v.id = l.ref_id \
           WHERE l.kind = 'review_resolution' AND v.tenant = {tenant} \
           AND v.recipient_hash = {hash} AND l.leaf_index IS NOT NULL \
         ) AS other ORDER BY leaf_index LIMIT {limit}",
        of_messages("body_access", "body_accesses", "b"),
        of_messages("outcome", "message_outcomes", "o"),
        of_messages("release", "message_releases", "r"),
    )
}

/// The ids of up to `limit` rows of `kind`'s table that have no log entry (the same SQL on
/// both backends: the table and kind are constants).
pub(crate) fn unlogged_rows_sql(kind: Kind, limit: i64) -> String {
    let (table, id, logged) = LOGGED_TABLES
        .iter()
        .find(|(k, ..)| *k == kind)
        .map_or(("messages", "id", "1 = 1"), |(_, table, id, logged)| {
            (table, id, logged)
        });
    format!(
        "SELECT t.{id} FROM {table} t WHERE {logged} AND NOT EXISTS (SELECT 1 FROM log_leaves l \
         WHERE l.kind = '{}' AND l.ref_id = t.{id}) ORDER BY t.{id} LIMIT {}",
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

/// The columns a claim of deferred messages reads, `m` the messages and `d` the queue.
pub(crate) const DEFERRED_COLUMNS: &str =
    "m.id, m.tenant, m.purpose, m.brand, m.campaign, m.key_id, m.payload, d.release_at_us";

/// A claimed deferred message ([`DEFERRED_COLUMNS`]).
pub(crate) fn deferred_from_row<R>(row: &R) -> Result<DeferredMessage, StoreError>
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
    Ok(DeferredMessage {
        id: MessageId::parse(&id).ok_or_else(|| corrupt("id"))?,
        tenant: TenantId::parse(&tenant).map_err(|_| corrupt("tenant"))?,
        purpose: row.try_get("purpose")?,
        brand: row.try_get("brand")?,
        campaign: row.try_get("campaign")?,
        key_id: row.try_get("key_id")?,
        payload: row.try_get("payload")?,
        release_at_us: row.try_get("release_at_us")?,
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

/// `Messages::in_doubt`'s query, with the placeholders of the period's start and end and of
/// the limit: a message allowed as it was sent and never released, or whose latest release
/// allowed it, with no outcome at all (each path to the gateway records one: sent, failed, or
/// queued again by a new release).
///
/// The messages of the period are found tenant by tenant through `messages_by_tenant_time`:
/// `tenants` walks that index's distinct tenants one seek each (a loose index scan, which
/// neither SQLite nor PostgreSQL makes of a `DISTINCT` by itself), so the query reads the
/// period's messages, not the whole table. Releases that allowed their message are found by
/// time through `message_releases_allowed_by_time` (migration 0020), whose condition the
/// query repeats so that both planners use it.
pub(crate) fn in_doubt_sql([since, until, limit]: [&str; 3]) -> String {
    format!(
        "WITH RECURSIVE tenants (tenant) AS ( \
         SELECT MIN(tenant) FROM messages \
         UNION ALL \
         SELECT (SELECT MIN(next.tenant) FROM messages next WHERE next.tenant > tenants.tenant) \
         FROM tenants WHERE tenants.tenant IS NOT NULL) \
         SELECT id, tenant, at, allowed_by FROM ( \
         SELECT m.id, m.tenant, m.created_at_us AS at, 'send' AS allowed_by \
         FROM tenants t JOIN messages m ON m.tenant = t.tenant \
         AND m.created_at_us >= {since} AND m.created_at_us < {until} \
         WHERE m.decision = 'allowed' \
         AND NOT EXISTS (SELECT 1 FROM message_releases r WHERE r.message_id = m.id) \
         AND NOT EXISTS (SELECT 1 FROM message_outcomes o WHERE o.message_id = m.id) \
         UNION ALL \
         SELECT m.id, m.tenant, r.decided_at_us AS at, 'release' AS allowed_by \
         FROM message_releases r JOIN messages m ON m.id = r.message_id \
         WHERE r.decision = 'allowed' AND r.decided_at_us >= {since} AND r.decided_at_us < {until} \
         AND NOT EXISTS (SELECT 1 FROM message_releases later \
             WHERE later.message_id = r.message_id AND later.seq > r.seq) \
         AND NOT EXISTS (SELECT 1 FROM message_outcomes o WHERE o.message_id = r.message_id) \
         ) AS doubt ORDER BY at, id LIMIT {limit}"
    )
}

pub(crate) fn in_doubt_from_row<R>(row: &R) -> Result<InDoubt, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database>,
    String: Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database>,
    i64: Type<R::Database>,
{
    Ok(InDoubt {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        allowed_at_us: row.try_get("at")?,
        allowed_by: row.try_get("allowed_by")?,
    })
}

/// Where a stored subtree sits in `log_nodes` (migration 0016): its in-order position in the
/// tree, `(2 * idx + 1) * 2^level - 1` (a leaf at `2 * idx`; the subtree a leaf completes at
/// level `l`, `2^l - 1` places before it). Appending leaves adds rows at the table's end, where
/// keyed by `(level, idx)` each level had an end of its own. Never more than twice the leaves.
pub(crate) fn node_position(level: u32, idx: u64) -> i64 {
    (((2 * idx + 1) << level) - 1) as i64
}

#[cfg(test)]
mod tests {
    use super::node_position;
    use crate::audit::merkle::Frontier;

    /// Every subtree has a position of its own; what a leaf completes sits at most a level's
    /// width behind the newest leaf, and never past twice the leaves.
    #[test]
    fn subtrees_take_distinct_in_order_positions_near_the_end() {
        let mut tree = Frontier::default();
        let mut seen = std::collections::HashSet::new();
        for leaf in 0..5_000u64 {
            let newest = node_position(0, leaf);
            assert_eq!(newest, 2 * leaf as i64);
            for ((level, idx), _) in tree.push([leaf as u8; 32]) {
                let position = node_position(level, idx);
                assert!(seen.insert(position), "({level}, {idx}) shares {position}");
                assert_eq!(position, newest + 1 - (1 << level), "({level}, {idx})");
                assert!(position < 2 * (leaf as i64 + 1));
            }
        }
        // Level 1, index 0 covers leaves 0 and 1: between them, at 1.
        assert_eq!(node_position(1, 0), 1);
        assert_eq!(node_position(2, 1), 11);
    }
}
