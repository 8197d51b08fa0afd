//! The reply flow, once a webhook (or a simulated reply) is verified: classify the text; find
//! the tenants that own the number written to; for each, in one transaction and in the
//! recipient's turn, record the inbound message, the consent event (an opt-out or opt-in, with
//! the message as evidence) or a review, and the delivery to the tenant's webhook; then answer:
//! one confirmation per opt-out, the HELP text, an opt-in confirmation, each through
//! `send::process_group`, so `decide` allows it first.
//!
//! Also here: a gateway's delivery status, appended to its message and passed on to the tenant
//! and the application's status callback through the outbox; and the resolution of a review.

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::FlowError;
use super::consent::{Evidence, Validated, consent_record};
use super::send::{self, Delivery, Processed};
use crate::config::Tenant;
use crate::consent::{Action, Level};
use crate::crypto;
use crate::dialect::{InboundMessage, WebhookError};
use crate::domain::{
    Body, CanonicalMessage, MessageId, PhoneNumber, Purpose, Region, Reply, Scope, Sender,
};
use crate::keywords::{Class, Classification};
use crate::policy::SenderBounds;
use crate::policy::rules::{ReplyFields, ReplyTemplate};
use crate::state::AppState;
use crate::store::{
    InboundRecord, InboundRecorded, OutboxRecord, ResolutionRecord, Resolved, ReviewRecord,
};

/// What handling a reply produced.
#[derive(Debug, Default)]
pub struct Received {
    /// Replies to send back in the webhook's answer (TwiML).
    pub answers: Vec<String>,
    /// The inbound message's id, per owning tenant.
    pub ids: Vec<String>,
    pub duplicate: bool,
}

/// Handles a verified reply: records it and what it causes, then answers it.
pub async fn receive(
    state: &AppState,
    upstream: &str,
    message: InboundMessage,
    delivery: Delivery,
    only_tenant: Option<&crate::domain::TenantId>,
) -> Result<Received, FlowError> {
    let malformed = |what: &str| FlowError::from(WebhookError::Malformed(what.to_owned()));
    let recipient = PhoneNumber::parse(&message.from, Region::US)
        .map_err(|_| malformed("the sender of the reply is not a phone number"))?;
    let written_to = Sender::parse(&message.to, Region::US)
        .map_err(|_| malformed("the number written to is not a sender"))?;
    let classification = state.policies.keywords.classify(&message.body);
    state.metrics.inbound(classification.class.as_str());
    let now = state.clock.now();
    let owners: Vec<&Tenant> = state
        .tenants
        .values()
        .filter(|tenant| tenant.upstream == upstream)
        .filter(|tenant| only_tenant.is_none_or(|only| &tenant.id == only))
        .filter(|tenant| tenant.rules.senders.contains(&written_to))
        .collect();

    let mut received = Received::default();
    if owners.is_empty() {
        // Kept, not lost: an operator can find it; no tenant's ledger can take it.
        let record = inbound_record(
            state,
            upstream,
            &message,
            "",
            &recipient,
            &written_to,
            &classification,
            None,
            now,
        )
        .await?;
        tracing::warn!(upstream, to = %written_to.masked(), "a reply to a number no tenant owns");
        if state
            .inbound()
            .record_inbound(&record, None, None, &[], None)
            .await?
            == InboundRecorded::Duplicate
        {
            received.duplicate = true;
        }
        received.ids.push(record.id);
        return Ok(received);
    }

    for tenant in owners {
        let revoke_all = state.policies.consent.at(now).revoke_all;
        let scope = if revoke_all {
            Scope::tenant_wide()
        } else {
            tenant.scope_of_sender(&written_to)
        };
        let consent = match classification.class {
            Class::OptOut if classification.certain => Some(
                keyword_event(
                    state,
                    tenant,
                    upstream,
                    &message,
                    &recipient,
                    &written_to,
                    Action::OptOut,
                    &scope,
                    now,
                )
                .await?,
            ),
            Class::OptIn => Some(
                keyword_event(
                    state,
                    tenant,
                    upstream,
                    &message,
                    &recipient,
                    &written_to,
                    Action::OptIn,
                    &scope,
                    now,
                )
                .await?,
            ),
            _ => None,
        };
        let record = inbound_record(
            state,
            upstream,
            &message,
            tenant.id.as_str(),
            &recipient,
            &written_to,
            &classification,
            consent.as_ref().map(|c| c.id.clone()),
            now,
        )
        .await?;
        let review = classification.needs_review().then(|| ReviewRecord {
            id: format!("rev_{}", uuid::Uuid::now_v7().simple()),
            tenant: tenant.id.clone(),
            recipient_hash: record.recipient_hash.clone(),
            recipient_masked: record.recipient_masked.clone(),
            inbound_id: record.id.clone(),
            created_at_us: now.as_microsecond(),
        });
        // The tenant hears of it at its webhook and, with SMPP accounts, as a deliver_sm to
        // a session bound to receive: each a durable delivery of its own.
        let mut formats = Vec::new();
        if tenant.webhook.is_some() {
            formats.push(None);
        }
        if state.smpp_accounts.serves(&tenant.id) {
            formats.push(Some(SMPP_FORMAT));
        }
        let mut outbox = Vec::with_capacity(formats.len());
        for format in formats {
            outbox.push(
                outbox_record(
                    state,
                    tenant,
                    upstream,
                    &message,
                    &record,
                    &classification,
                    review.as_ref().map(|r| r.id.as_str()),
                    format,
                    now,
                )
                .await?,
            );
        }
        // In the recipient's turn, as sends are decided: an opt-out is logged before or
        // after a send's record, never beside a decision that did not see it.
        let mut turn = state.recipient_turn(&record.recipient_hash).await?;
        let recorded = state
            .inbound()
            .record_inbound(
                &record,
                consent.as_ref(),
                review.as_ref(),
                &outbox,
                Some(&mut turn.shared),
            )
            .await;
        turn.end().await;
        let recorded = recorded?;
        tracing::info!(
            inbound = %record.id,
            tenant = %tenant.id,
            recipient = %record.recipient_masked,
            class = classification.class.as_str(),
            certain = classification.certain,
            duplicate = recorded == InboundRecorded::Duplicate,
            "reply received"
        );
        received.ids.push(record.id.clone());
        if recorded == InboundRecorded::Duplicate {
            received.duplicate = true;
            continue;
        }

        let answer = match (classification.class, &consent) {
            (Class::OptOut, Some(event)) => Some((
                ReplyTemplate::OptOut,
                Reply::OptOutConfirmation {
                    opt_out_event: event.id.clone(),
                },
            )),
            (Class::OptIn, Some(_)) => Some((ReplyTemplate::OptIn, Reply::OptInConfirmation)),
            (Class::Help, _) => Some((ReplyTemplate::Help, Reply::Help)),
            _ => None,
        };
        let Some((template, reply)) = answer else {
            continue;
        };
        let language = classification
            .matched
            .as_deref()
            .and_then(|word| state.policies.replies.language_of(word))
            .unwrap_or(&tenant.reply_language);
        let text = state.policies.replies.render(
            template,
            language,
            &ReplyFields {
                program: tenant.program_for(&scope),
                help_contact: &tenant.help_contact,
                frequency: &tenant.message_frequency,
            },
        );
        let answer = CanonicalMessage {
            id: MessageId::new(),
            tenant: tenant.id.clone(),
            to: recipient.clone(),
            from: written_to.clone(),
            body: Body::parse(text).map_err(|e| malformed(&e))?,
            purpose: Purpose::Transactional,
            scope: scope.clone(),
            reply: Some(reply),
            status_callback: None,
            send_at: None,
            media: Vec::new(),
        };
        // Decided on its own, not queued with clients' sends (`send::process`): the reply's
        // flow may still hold turns of its own.
        let processed = send::process_group(
            state,
            tenant,
            &SenderBounds::default(),
            vec![answer],
            delivery,
        )
        .await
        .pop()
        .unwrap_or_else(|| Err(FlowError::Unreadable("the flow answered nothing".into())))?;
        match processed {
            Processed::Answered { text, .. } => received.answers.push(text),
            Processed::Denied(denial) => tracing::info!(
                tenant = %tenant.id,
                code = denial.reasons[0].code.as_str(),
                "reply not sent"
            ),
            Processed::Sent { .. }
            | Processed::Failed { .. }
            | Processed::Scheduled(_)
            | Processed::Requeued { .. } => {}
        }
    }
    Ok(received)
}

/// The consent event a keyword reply records, with the message as its evidence.
#[allow(clippy::too_many_arguments)]
async fn keyword_event(
    state: &AppState,
    tenant: &Tenant,
    upstream: &str,
    message: &InboundMessage,
    recipient: &PhoneNumber,
    written_to: &Sender,
    action: Action,
    scope: &Scope,
    now: Timestamp,
) -> Result<crate::store::ConsentRecord, FlowError> {
    let mut extra = Map::new();
    extra.insert("text".into(), Value::String(message.body.clone()));
    extra.insert("to".into(), Value::String(written_to.as_str().to_owned()));
    extra.insert("upstream".into(), Value::String(upstream.to_owned()));
    let event = Validated {
        number: recipient.clone(),
        action,
        level: (action == Action::OptIn).then_some(Level::Express),
        scope: scope.clone(),
        purposes: Default::default(),
        method: "keyword".into(),
        occurred_at: now,
        external_id: Some(format!("inbound:{upstream}:{}", message.gateway_id)),
        evidence: Evidence {
            inbound_message_id: Some(message.gateway_id.clone()),
            extra,
            ..Evidence::default()
        },
    };
    consent_record(state, event, tenant, &format!("inbound:{upstream}"), now).await
}

#[allow(clippy::too_many_arguments)]
async fn inbound_record(
    state: &AppState,
    upstream: &str,
    message: &InboundMessage,
    tenant: &str,
    recipient: &PhoneNumber,
    written_to: &Sender,
    classification: &Classification,
    consent_event: Option<String>,
    now: Timestamp,
) -> Result<InboundRecord, FlowError> {
    let id = format!("in_{}", uuid::Uuid::now_v7().simple());
    let payload = json!({
        "from": recipient.e164(),
        "to": written_to.as_str(),
        "body": message.body,
    });
    // The reply belongs to the number that sent it: sealed under its key, erased with it.
    let recipient_hash = state.numbers.hash(recipient);
    let sealed = seal(
        state,
        Some((tenant, &recipient_hash)),
        &format!("consentry/inbound/v1\0{tenant}\0{id}"),
        payload.to_string().as_bytes(),
        now,
    )
    .await?;
    Ok(InboundRecord {
        id,
        upstream: upstream.to_owned(),
        gateway_id: message.gateway_id.clone(),
        tenant: tenant.to_owned(),
        recipient_hash,
        recipient_masked: recipient.masked(),
        to_masked: written_to.masked(),
        class: classification.class.as_str(),
        certain: classification.certain,
        consent_event,
        received_at_us: now.as_microsecond(),
        key_id: sealed.key_id,
        payload: sealed.bytes,
    })
}

#[allow(clippy::too_many_arguments)]
async fn outbox_record(
    state: &AppState,
    tenant: &Tenant,
    upstream: &str,
    message: &InboundMessage,
    inbound: &InboundRecord,
    classification: &Classification,
    review: Option<&str>,
    format: Option<&'static str>,
    now: Timestamp,
) -> Result<OutboxRecord, FlowError> {
    let id = format!("dlv_{}", uuid::Uuid::now_v7().simple());
    let payload = json!({
        "type": "inbound_message",
        "id": inbound.id,
        "tenant": tenant.id,
        "upstream": upstream,
        "gateway_message_id": message.gateway_id,
        "from": message.from,
        "to": message.to,
        "body": message.body,
        "classification": classification,
        "consent_event": inbound.consent_event,
        "review": review,
        "received_at": now.to_string(),
    });
    let sealed = seal(
        state,
        Some((tenant.id.as_str(), &inbound.recipient_hash)),
        &outbox_associated_data(&tenant.id, &id),
        payload.to_string().as_bytes(),
        now,
    )
    .await?;
    Ok(OutboxRecord {
        id,
        tenant: tenant.id.clone(),
        created_at_us: now.as_microsecond(),
        key_id: sealed.key_id,
        payload: sealed.bytes,
        next_attempt_at_us: now.as_microsecond(),
        url: None,
        format: format.map(str::to_owned),
    })
}

/// The outbox format of a delivery to the tenant's SMPP sessions (`smpp::deliver`): a reply
/// for any session of the tenant bound to receive, or, with `url` = `smpp:<system_id>`, a
/// delivery receipt for that account's sessions.
pub const SMPP_FORMAT: &str = "smpp";

/// The `status_callback` of a message submitted over SMPP with a delivery receipt asked for:
/// its statuses go back to that account's sessions as receipts.
pub fn smpp_receipts_to(system_id: &str) -> crate::domain::StatusCallback {
    crate::domain::StatusCallback {
        url: format!("smpp:{system_id}"),
        account_sid: String::new(),
    }
}

/// Seals under the data key, or under a recipient's key (`(tenant, recipient hash)`) for
/// what belongs to that number.
async fn seal(
    state: &AppState,
    recipient: Option<(&str, &str)>,
    associated: &str,
    plaintext: &[u8],
    now: Timestamp,
) -> Result<crypto::Sealed, FlowError> {
    let sealed = match recipient {
        Some((tenant, hash)) => {
            state
                .keys
                .seal_for(
                    tenant,
                    hash,
                    associated.as_bytes(),
                    plaintext,
                    now.as_microsecond(),
                )
                .await
        }
        None => {
            state
                .keys
                .seal(associated.as_bytes(), plaintext, now.as_microsecond())
                .await
        }
    };
    sealed.map_err(|error| {
        tracing::error!(%error, "sealing failed");
        FlowError::Encryption("the message could not be encrypted; nothing was recorded")
    })
}

/// What became of a delivery status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Recorded on its message (a final one) and passed on.
    Recorded,
    /// No message has the gateway's id (yet: an SMSC's receipt can come before the outcome
    /// that names the id is written); acknowledged and logged.
    UnknownMessage,
}

/// Records a gateway's final delivery status on its message and passes every status on to
/// the tenant's webhook. A status for a message consentry does not know is acknowledged and
/// logged.
pub async fn delivery_status(
    state: &AppState,
    upstream: &str,
    status: &crate::dialect::DeliveryStatus,
) -> Result<Status, FlowError> {
    use crate::dialect::DeliveryState;
    use crate::store::{OutcomeRecord, OutcomeStatus};
    let Some(crate::store::GatewayMessage {
        id,
        tenant: tenant_id,
        recipient_hash,
        status_callback: callback,
    }) = state
        .messages()
        .message_by_gateway_id(upstream, &status.gateway_message_id)
        .await?
    else {
        tracing::warn!(upstream, status = %status.raw, "a delivery status for an unknown message");
        return Ok(Status::UnknownMessage);
    };
    let now = state.clock.now();
    let recorded = match status.state {
        DeliveryState::Delivered => Some(OutcomeStatus::Delivered),
        DeliveryState::Undelivered => Some(OutcomeStatus::Undelivered),
        DeliveryState::Failed => Some(OutcomeStatus::Failed),
        DeliveryState::InProgress => None,
    };
    if let Some(outcome) = recorded {
        state
            .messages()
            .record_outcome(&OutcomeRecord {
                message_id: id.clone(),
                tenant: tenant_id.clone(),
                recipient_hash,
                recorded_at_us: now.as_microsecond(),
                status: outcome,
                upstream_message_id: Some(status.gateway_message_id.clone()),
                error_code: status.error_code.clone(),
                detail: Some(format!("gateway status: {}", status.raw)),
            })
            .await?;
    }
    tracing::info!(message_id = %id, status = %status.raw, "delivery status");
    if let Some(tenant) = state.tenants.get(&tenant_id)
        && tenant.webhook.is_some()
    {
        let payload = json!({
            "type": "delivery_status",
            "message_id": id,
            "tenant": tenant_id,
            "upstream": upstream,
            "gateway_message_id": status.gateway_message_id,
            "status": status.raw,
            "error_code": status.error_code,
            "received_at": now.to_string(),
        });
        enqueue(state, &tenant_id, &payload, None, now).await?;
    }
    let callback = callback
        .as_deref()
        .and_then(|text| serde_json::from_str::<crate::domain::StatusCallback>(text).ok());
    // An SMPP account that asked for receipts hears the final status as one.
    if let Some(callback) = &callback
        && callback.url.starts_with("smpp:")
    {
        if recorded.is_some() {
            let payload = json!({
                "type": "delivery_status",
                "message_id": id,
                "state": match status.state {
                    DeliveryState::Delivered => "delivered",
                    DeliveryState::Undelivered => "undelivered",
                    DeliveryState::Failed | DeliveryState::InProgress => "failed",
                },
                "error_code": status.error_code,
                "received_at": now.to_string(),
            });
            let to = (callback.url.clone(), SMPP_FORMAT);
            enqueue(state, &tenant_id, &payload, Some(to), now).await?;
        }
        return Ok(Status::Recorded);
    }
    // The application's own StatusCallback hears it as it would have from Twilio.
    if let Some(callback) = callback {
        let status_word = match status.state {
            DeliveryState::Delivered => "delivered",
            DeliveryState::Undelivered => "undelivered",
            DeliveryState::Failed => "failed",
            DeliveryState::InProgress => "sent",
        };
        let sid = crate::dialect::twilio::message_sid(&id);
        let mut params = serde_json::Map::new();
        for (name, value) in [
            ("MessageSid", sid.as_str()),
            ("SmsSid", sid.as_str()),
            ("MessageStatus", status_word),
            ("SmsStatus", status_word),
            ("AccountSid", callback.account_sid.as_str()),
            ("ApiVersion", "2010-04-01"),
        ] {
            params.insert(name.into(), Value::String(value.into()));
        }
        if let Some(code) = &status.error_code {
            params.insert("ErrorCode".into(), Value::String(code.clone()));
        }
        let to = (callback.url, "twilio");
        enqueue(state, &tenant_id, &Value::Object(params), Some(to), now).await?;
    }
    Ok(Status::Recorded)
}

/// Seals `payload` and queues it in the outbox for the tenant: to its webhook, or with `to`
/// to a URL or account in a format (`twilio`, [`SMPP_FORMAT`]).
async fn enqueue(
    state: &AppState,
    tenant: &crate::domain::TenantId,
    payload: &Value,
    to: Option<(String, &str)>,
    now: Timestamp,
) -> Result<(), FlowError> {
    let id = format!("dlv_{}", uuid::Uuid::now_v7().simple());
    let sealed = seal(
        state,
        None,
        &outbox_associated_data(tenant, &id),
        payload.to_string().as_bytes(),
        now,
    )
    .await?;
    let (url, format) = match to {
        Some((url, format)) => (Some(url), Some(format.to_owned())),
        None => (None, None),
    };
    state
        .outbox()
        .enqueue_delivery(&OutboxRecord {
            id,
            tenant: tenant.clone(),
            created_at_us: now.as_microsecond(),
            key_id: sealed.key_id,
            payload: sealed.bytes,
            next_attempt_at_us: now.as_microsecond(),
            url,
            format,
        })
        .await?;
    Ok(())
}

/// The associated data of an outbox payload: its identity.
pub fn outbox_associated_data(tenant: &crate::domain::TenantId, id: &str) -> String {
    format!("consentry/outbox/v1\0{tenant}\0{id}")
}

/// Resolves the review of an uncertain reply as `outcome` (`opt_out` or `not_opt_out`), by
/// `resolved_by` (a JWT subject). Returns the store's answer, and the opt-out recorded with the
/// resolution, if any; a review that does not exist is [`Resolved::NotFound`].
pub async fn resolve_review(
    state: &AppState,
    tenant: &Tenant,
    id: &str,
    outcome: &'static str,
    resolved_by: &str,
) -> Result<(Resolved, Option<String>), FlowError> {
    let Some(review) = state.inbound().review(&tenant.id, id).await? else {
        return Ok((Resolved::NotFound, None));
    };
    let now = state.clock.now();
    // An opt-out found on review covers the whole tenant: the reply did not say which part.
    let consent = if outcome == "opt_out" {
        let unreadable = || FlowError::Unreadable("the reviewed message cannot be read".into());
        let sealed = state
            .inbound()
            .inbound_payload(tenant.id.as_str(), &review.inbound_id)
            .await?
            .ok_or_else(unreadable)?;
        let associated = format!("consentry/inbound/v1\0{}\0{}", tenant.id, review.inbound_id);
        let payload: Value = state
            .keys
            .open(associated.as_bytes(), &sealed)
            .await
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(unreadable)?;
        let number = payload["from"]
            .as_str()
            .and_then(|from| PhoneNumber::parse(from, Region::US).ok())
            .ok_or_else(unreadable)?;
        let event = Validated {
            number,
            action: Action::OptOut,
            level: None,
            scope: Scope::tenant_wide(),
            purposes: Default::default(),
            method: "keyword".into(),
            occurred_at: now,
            external_id: Some(format!("review:{id}")),
            evidence: Evidence {
                inbound_message_id: Some(review.inbound_id.clone()),
                ..Evidence::default()
            },
        };
        Some(consent_record(state, event, tenant, resolved_by, now).await?)
    } else {
        None
    };
    let record = ResolutionRecord {
        review_id: id.to_owned(),
        outcome,
        resolved_by: resolved_by.to_owned(),
        resolved_at_us: now.as_microsecond(),
        consent_event: consent.as_ref().map(|c| c.id.clone()),
    };
    // In the recipient's turn: an open review blocks its sends, and an opt-out found on review
    // is a consent event; a send deciding now sees the resolution, or is logged before it.
    let mut turn = state.recipient_turn(&review.recipient_hash).await?;
    let resolved = state
        .inbound()
        .resolve_review(
            &tenant.id,
            &record,
            consent.as_ref(),
            Some(&mut turn.shared),
        )
        .await;
    turn.end().await;
    Ok((resolved?, record.consent_event))
}
