//! Decoding of stored rows, shared by both backends: the columns are the same, only the row
//! type differs.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{ConsentRecord, ReviewView, StoreError, StoredConsent};
use crate::consent::{Action, ConsentEvent, Level, Purposes};
use crate::domain::{Purpose, Scope, TenantId};

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
    let corrupt = |what: &str| StoreError::Corrupt(format!("consent_events.{what}"));
    let action: String = row.try_get("action")?;
    let level: Option<String> = row.try_get("level")?;
    let purposes: String = row.try_get("purposes")?;
    Ok(ConsentEvent {
        id: row.try_get("id")?,
        seq: row.try_get("seq")?,
        action: Action::parse(&action).ok_or_else(|| corrupt("action"))?,
        level: match level {
            None => None,
            Some(level) => Some(Level::parse(&level).ok_or_else(|| corrupt("level"))?),
        },
        scope: Scope {
            brand: row.try_get("brand")?,
            campaign: row.try_get("campaign")?,
        },
        purposes: Purposes(
            purposes
                .split_whitespace()
                .map(|p| p.parse::<Purpose>())
                .collect::<Result<_, _>>()
                .map_err(|_| corrupt("purposes"))?,
        ),
        occurred_at: jiff::Timestamp::from_microsecond(row.try_get("occurred_at_us")?)
            .map_err(|_| corrupt("occurred_at_us"))?,
    })
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
        inbound_id: row.try_get("inbound_id")?,
        created_at_us: row.try_get("created_at_us")?,
        outcome: row.try_get("outcome")?,
        resolved_by: row.try_get("resolved_by")?,
        consent_event: row.try_get("consent_event")?,
    })
}
