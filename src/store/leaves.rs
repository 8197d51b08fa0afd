//! Which field of each logged record is which column of its leaf: the records as the plain
//! values `audit::leaf` encodes, so that the leaf format needs no store type.

use super::{
    ConsentRecord, InboundRecord, MessageRecord, OutcomeRecord, ReleaseRecord, ResolutionRecord,
};
use crate::audit::leaf::{
    ConsentColumns, InboundColumns, MessageColumns, Outcome, Release, Resolution,
};

/// A new id for a logged row that has none of its own (outcomes, releases): its leaf's ref_id.
pub fn row_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

impl OutcomeRecord {
    /// Its leaf's fields, with the row's id.
    pub fn leaf(&self, id: String) -> Outcome {
        Outcome {
            id,
            tenant: self.tenant.as_str().to_owned(),
            message_id: self.message_id.as_str().to_owned(),
            recipient_hash: self.recipient_hash.clone(),
            recorded_at_us: self.recorded_at_us,
            status: self.status.as_str().to_owned(),
            upstream_message_id: self.upstream_message_id.clone(),
            error_code: self.error_code.clone(),
            detail: self.detail.clone(),
        }
    }
}

impl ReleaseRecord {
    /// Its leaf's fields, with the row's id and its message's tenant and recipient hash.
    pub fn leaf(&self, id: String, tenant: String, recipient_hash: String) -> Release {
        Release {
            id,
            tenant,
            message_id: self.message_id.as_str().to_owned(),
            recipient_hash,
            decided_at_us: self.decided_at_us,
            decision: self.decision.as_str().to_owned(),
            reasons_json: self.reasons_json.clone(),
            basis: self.basis.clone(),
        }
    }
}

impl ResolutionRecord {
    /// Its leaf's fields, with its review's tenant, recipient hash and inbound message.
    pub fn leaf(&self, tenant: &str, recipient_hash: String, inbound_id: String) -> Resolution {
        Resolution {
            id: self.review_id.clone(),
            tenant: tenant.to_owned(),
            recipient_hash,
            inbound_id,
            outcome: self.outcome.to_owned(),
            resolved_by: self.resolved_by.clone(),
            resolved_at_us: self.resolved_at_us,
            consent_event: self.consent_event.clone(),
        }
    }
}

impl<'a> From<&'a InboundRecord> for InboundColumns<'a> {
    fn from(record: &'a InboundRecord) -> Self {
        InboundColumns {
            id: &record.id,
            tenant: &record.tenant,
            recipient_hash: &record.recipient_hash,
            recipient_masked: &record.recipient_masked,
            to_masked: &record.to_masked,
            upstream: &record.upstream,
            gateway_id: &record.gateway_id,
            class: record.class,
            certain: record.certain,
            consent_event: record.consent_event.as_deref(),
            received_at_us: record.received_at_us,
            key_id: &record.key_id,
            payload: &record.payload,
        }
    }
}

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
