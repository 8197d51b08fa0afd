//! Recording consent: a validated event (from the consent API, an import, a keyword reply or a
//! review) becomes its ledger record, with the number and the evidence sealed together and an
//! idempotency key that makes a repeat a duplicate, not a second event. The ledger is
//! append-only: there is no flow that changes or removes an event.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::FlowError;
use crate::config::Tenant;
use crate::consent::{Action, ConsentEvent, Level};
use crate::crypto;
use crate::domain::{PhoneNumber, Purpose, Scope};
use crate::state::AppState;
use crate::store::{ConsentRecord, Recorded, StoredConsent};

/// What shows the consent was given (or withdrawn): kept sealed with the event.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// The exact text the person was shown or read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disclosure_text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disclosure_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub double_opt_in_id: Option<String>,
    /// The person was told that consent is not a condition of purchase (47 CFR 64.1200(f)(9)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_condition_of_purchase: Option<bool>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// The part of an event that is needed to build its record.
pub struct Validated {
    pub number: PhoneNumber,
    pub action: Action,
    pub level: Option<Level>,
    pub scope: Scope,
    pub purposes: BTreeSet<Purpose>,
    pub method: String,
    pub occurred_at: Timestamp,
    pub external_id: Option<String>,
    pub evidence: Evidence,
}

/// What the sealed evidence holds: the number and the evidence.
#[derive(Debug, Serialize, Deserialize)]
pub struct SealedEvidence {
    pub number: String,
    pub evidence: Evidence,
}

/// Builds the ledger record of a validated event, sealing the number and evidence.
/// `recorded_by` is the JWT subject, or `inbound:<upstream>` for a reply.
pub async fn consent_record(
    state: &AppState,
    event: Validated,
    tenant: &Tenant,
    recorded_by: &str,
    now: Timestamp,
) -> Result<ConsentRecord, FlowError> {
    let id = format!("evt_{}", uuid::Uuid::now_v7().simple());
    let purposes = event
        .purposes
        .iter()
        .map(Purpose::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    let recipient_hash = state.numbers.hash(&event.number);
    let idempotency_key = match &event.external_id {
        // The same external id for another recipient or action is another event: an
        // opt-out is never swallowed as the "duplicate" of an opt-in.
        Some(external) => format!(
            "ext:{}:{recipient_hash}:{}",
            external,
            event.action.as_str()
        ),
        None => {
            let content = json!([
                recipient_hash,
                event.action.as_str(),
                event.level.map(|l| l.as_str()),
                event.scope.brand,
                event.scope.campaign,
                purposes,
                event.method,
                event.occurred_at.as_microsecond(),
                event.evidence,
            ]);
            let digest =
                ring::digest::digest(&ring::digest::SHA256, content.to_string().as_bytes());
            format!("sha256:{}", crypto::hex(digest.as_ref()))
        }
    };
    let sealed_evidence = SealedEvidence {
        number: event.number.e164().to_owned(),
        evidence: event.evidence,
    };
    let plaintext = serde_json::to_vec(&sealed_evidence).unwrap_or_default();
    let sealed = state
        .keys
        .seal(
            &consent_associated_data(tenant, &id),
            &plaintext,
            now.as_microsecond(),
        )
        .await
        .map_err(|error| {
            tracing::error!(%error, "sealing consent evidence failed");
            FlowError::Encryption("the evidence could not be encrypted; nothing was recorded")
        })?;
    Ok(ConsentRecord {
        id,
        tenant: tenant.id.clone(),
        recipient_hash,
        recipient_masked: event.number.masked(),
        action: event.action,
        level: event.level,
        brand: event.scope.brand,
        campaign: event.scope.campaign,
        purposes,
        method: event.method,
        occurred_at_us: event.occurred_at.as_microsecond(),
        recorded_at_us: now.as_microsecond(),
        recorded_by: recorded_by.to_owned(),
        external_id: event.external_id,
        idempotency_key,
        key_id: sealed.key_id,
        evidence: sealed.bytes,
    })
}

/// Records one event in the recipient's turn and reads it back as stored: the event first
/// recorded, and `true`, when the same event was recorded before.
pub async fn record(
    state: &AppState,
    event: Validated,
    tenant: &Tenant,
    recorded_by: &str,
    now: Timestamp,
) -> Result<(StoredConsent, bool), FlowError> {
    let record = consent_record(state, event, tenant, recorded_by, now).await?;
    // In the recipient's turn: a send deciding now sees this event, or is logged before it.
    let mut turn = state.recipient_turn(&record.recipient_hash).await?;
    let recorded = state
        .ledger()
        .record_consents(std::slice::from_ref(&record), Some(&mut turn.shared))
        .await;
    turn.end().await;
    let recorded = recorded?;
    let (duplicate, id) = match recorded.into_iter().next() {
        Some(Recorded::Duplicate(existing)) => (true, existing),
        _ => (false, record.id.clone()),
    };
    tracing::info!(
        event = %id,
        tenant = %tenant.id,
        recipient = %record.recipient_masked,
        action = record.action.as_str(),
        duplicate,
        "consent recorded"
    );
    let stored = state
        .ledger()
        .consent_events(&tenant.id, &record.recipient_hash)
        .await?
        .into_iter()
        .find(|stored| stored.record.id == id)
        .ok_or_else(|| {
            FlowError::Unreadable("the event was recorded but cannot be read back".into())
        })?;
    Ok((stored, duplicate))
}

/// The recipient's ledger in this tenant, as the fold reads it.
pub async fn consent_events(
    state: &AppState,
    tenant: &Tenant,
    number: &PhoneNumber,
) -> Result<(Vec<StoredConsent>, Vec<ConsentEvent>), FlowError> {
    let stored = state
        .ledger()
        .consent_events(&tenant.id, &state.numbers.hash(number))
        .await?;
    let events = stored
        .iter()
        .map(StoredConsent::to_event)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((stored, events))
}

/// Opens the number and evidence sealed with a ledger record; `None` if they do not open.
pub async fn open_evidence(
    state: &AppState,
    tenant: &Tenant,
    record: &ConsentRecord,
) -> Option<SealedEvidence> {
    let sealed = crypto::Sealed {
        key_id: record.key_id.clone(),
        bytes: record.evidence.clone(),
    };
    state
        .keys
        .open(&consent_associated_data(tenant, &record.id), &sealed)
        .await
        .ok()
        .and_then(|bytes| serde_json::from_slice::<SealedEvidence>(&bytes).ok())
}

/// The associated data bound to an event's sealed evidence: its identity.
fn consent_associated_data(tenant: &Tenant, id: &str) -> Vec<u8> {
    format!("consentry/consent/v1\0{}\0{id}", tenant.id).into_bytes()
}
