//! Which field of each logged record is which column of its leaf: the records as the plain
//! values `audit::leaf` encodes, so that the leaf format needs no store type.

use super::{ConsentRecord, MessageRecord};
use crate::audit::leaf::{ConsentColumns, MessageColumns};

impl<'a> From<&'a MessageRecord> for MessageColumns<'a> {
    fn from(record: &'a MessageRecord) -> Self {
        MessageColumns {
            id: record.id.as_str(),
            tenant: record.tenant.as_str(),
            created_at_us: record.created_at_us,
            recipient_hash: &record.recipient_hash,
            recipient_masked: &record.recipient_masked,
            sender_masked: &record.sender_masked,
            purpose: record.purpose,
            brand: record.brand.as_deref(),
            campaign: record.campaign.as_deref(),
            decision: record.decision.as_str(),
            reasons_json: &record.reasons_json,
            upstream: record.upstream.as_deref(),
            reply_kind: record.reply_kind,
            confirms_event: record.confirms_event.as_deref(),
            status_callback: record.status_callback.as_deref(),
            key_id: &record.key_id,
            payload: &record.payload,
            basis: record.basis.as_deref(),
        }
    }
}

impl<'a> From<&'a ConsentRecord> for ConsentColumns<'a> {
    fn from(record: &'a ConsentRecord) -> Self {
        ConsentColumns {
            id: &record.id,
            tenant: record.tenant.as_str(),
            recipient_hash: &record.recipient_hash,
            recipient_masked: &record.recipient_masked,
            action: record.action.as_str(),
            level: record.level.map(|level| level.as_str()),
            brand: record.brand.as_deref(),
            campaign: record.campaign.as_deref(),
            purposes: &record.purposes,
            method: &record.method,
            occurred_at_us: record.occurred_at_us,
            recorded_at_us: record.recorded_at_us,
            recorded_by: &record.recorded_by,
            external_id: record.external_id.as_deref(),
            idempotency_key: &record.idempotency_key,
            key_id: &record.key_id,
            evidence: &record.evidence,
        }
    }
}
