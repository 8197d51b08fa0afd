//! Recipients' replies: gateway webhooks, the sandbox's simulated replies, and the review of
//! uncertain opt-outs.
//!
//! - `POST /v1/inbound/{upstream}`: the webhook a gateway delivers replies (and statuses) to.
//!   The signature is verified before anything else; a webhook that fails is answered 401/400
//!   and leaves no trace.
//! - `POST /v1/sandbox/replies` (scope `admin`): `{"from", "to", "body"}`, a reply as if a
//!   recipient had written it; it runs the same path as a verified webhook.
//! - `GET /v1/reviews` (scope `consents:read`) and `POST /v1/reviews/{id}/resolve` (scope
//!   `consents:write`, `{"outcome": "opt_out" | "not_opt_out"}`).
//!
//! The path of a reply, once verified: classify the text; find the tenants that own the number
//! written to; for each, in one transaction, record the inbound message, the consent event
//! (an opt-out or opt-in, with the message as evidence) or a review, and the delivery to the
//! tenant's webhook; then answer: one confirmation per opt-out, the HELP text, an opt-in
//! confirmation. The webhook is answered only after all of it is committed.

use std::sync::Arc;

use axum::Json;
use axum::body::Body as RequestBody;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, Uri};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::auth::scope;
use crate::config::Tenant;
use crate::consent::{Action, Level};
use crate::crypto;
use crate::dialect::{self, InboundMessage, WebhookError, WebhookEvent};
use crate::domain::{
    Body, CanonicalMessage, MessageId, PhoneNumber, Purpose, Region, Reply, Scope, Sender,
};
use crate::http::consents::{Evidence, Validated};
use crate::http::error::ApiError;
use crate::http::messages::{Delivery, Processed, parse_json, read_body, read_body_any};
use crate::keywords::{Class, Classification};
use crate::policy::SenderBounds;
use crate::policy::rules::{ReplyFields, ReplyTemplate};
use crate::state::AppState;
use crate::store::{InboundRecord, InboundRecorded, OutboxRecord, ResolutionRecord, ReviewRecord};
use crate::upstream::{Upstream, WebhookKey};

impl From<WebhookError> for ApiError {
    fn from(error: WebhookError) -> Self {
        let status = match error {
            WebhookError::Malformed(_) => StatusCode::BAD_REQUEST,
            WebhookError::MissingSignature | WebhookError::BadSignature | WebhookError::Stale => {
                StatusCode::UNAUTHORIZED
            }
        };
        tracing::warn!(code = error.code(), "webhook refused");
        ApiError::new(status, error.code(), error.to_string())
    }
}

/// What handling a reply produced.
#[derive(Debug, Default)]
pub struct Received {
    /// Replies to send back in the webhook's answer (TwiML).
    pub answers: Vec<String>,
    /// The inbound message's id, per owning tenant.
    pub ids: Vec<String>,
    pub duplicate: bool,
}

pub async fn webhook(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: RequestBody,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_upstream",
            "no such upstream webhook",
        )
    };
    let Some(Upstream::Gateway(gateway)) = state.upstreams.get(&name) else {
        return Err(not_found());
    };
    let bytes = read_body_any(&headers, body, state.max_request_bytes).await?;
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let event = match &gateway.webhook {
        WebhookKey::Twilio {
            auth_token,
            public_url,
        } => {
            let url = called_url(public_url.as_deref(), &uri, &headers);
            let params = dialect::twilio::verify_webhook(
                auth_token.expose(),
                &url,
                header("content-type").unwrap_or_default(),
                header(dialect::twilio::SIGNATURE_HEADER),
                &bytes,
            )?;
            dialect::twilio::parse(&params)?
        }
        WebhookKey::Telnyx {
            public_key,
            tolerance_seconds,
        } => {
            dialect::telnyx::verify(
                public_key,
                header(dialect::telnyx::TIMESTAMP_HEADER),
                header(dialect::telnyx::SIGNATURE_HEADER),
                &bytes,
                Timestamp::now().as_second(),
                *tolerance_seconds,
            )?;
            dialect::telnyx::parse(&bytes)?
        }
        WebhookKey::Generic(Some(secret)) => {
            dialect::generic::verify(
                secret.expose().as_bytes(),
                header(dialect::generic::SIGNATURE_HEADER),
                &bytes,
            )?;
            dialect::generic::parse(&bytes)?
        }
        WebhookKey::Generic(None) => return Err(not_found()),
    };
    let twiml = gateway.kind == crate::config::UpstreamKind::Twilio;
    let received = match event {
        WebhookEvent::Status(status) => {
            state.delivery_status(&name, &status).await?;
            Received::default()
        }
        WebhookEvent::Other { kind } => {
            tracing::debug!(upstream = %name, %kind, "webhook event acknowledged");
            Received::default()
        }
        WebhookEvent::Message(message) => {
            let delivery = if twiml {
                Delivery::InWebhookAnswer
            } else {
                Delivery::Upstream
            };
            state.receive(&name, message, delivery, None).await?
        }
    };
    if twiml {
        return Ok((
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, "text/xml")],
            dialect::twilio::twiml(&received.answers),
        )
            .into_response());
    }
    Ok((
        StatusCode::OK,
        Json(json!({ "status": "received", "ids": received.ids, "duplicate": received.duplicate })),
    )
        .into_response())
}

/// The URL the gateway called: the configured public URL (consentry usually sits behind a
/// load balancer), else the scheme, host and path of the request, with its query either way.
fn called_url(public_url: Option<&str>, uri: &Uri, headers: &HeaderMap) -> String {
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    match public_url {
        Some(url) => format!("{}{query}", url.trim_end_matches('?')),
        None => {
            let host = uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .or_else(|| {
                    headers
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            format!("https://{host}{}{query}", uri.path())
        }
    }
}

/// A simulated reply.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxReply {
    from: String,
    to: String,
    body: String,
}

pub async fn sandbox_reply(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RequestBody,
) -> Result<Response, ApiError> {
    let (principal, _tenant) = state.authorize(&headers, scope::ADMIN)?;
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let reply: SandboxReply = parse_json(&bytes)?;
    let message = InboundMessage {
        gateway_id: format!("sbx_in_{}", uuid::Uuid::now_v7().simple()),
        from: reply.from,
        to: reply.to,
        body: reply.body,
    };
    // A simulated reply reaches the caller's tenant only.
    let received = state
        .receive(
            crate::config::SANDBOX,
            message,
            Delivery::Upstream,
            Some(&principal.tenant),
        )
        .await?;
    Ok((
        StatusCode::OK,
        Json(json!({ "status": "received", "ids": received.ids })),
    )
        .into_response())
}

impl AppState {
    /// Handles a verified reply: records it and what it causes, then answers it.
    pub async fn receive(
        &self,
        upstream: &str,
        message: InboundMessage,
        delivery: Delivery,
        only_tenant: Option<&crate::domain::TenantId>,
    ) -> Result<Received, ApiError> {
        let malformed = |what: &str| ApiError::from(WebhookError::Malformed(what.to_owned()));
        let recipient = PhoneNumber::parse(&message.from, Region::US)
            .map_err(|_| malformed("the sender of the reply is not a phone number"))?;
        let written_to = Sender::parse(&message.to, Region::US)
            .map_err(|_| malformed("the number written to is not a sender"))?;
        let classification = self.policies.keywords.classify(&message.body);
        let now = self.clock.now();
        let owners: Vec<&Tenant> = self
            .tenants
            .values()
            .filter(|tenant| tenant.upstream == upstream)
            .filter(|tenant| only_tenant.is_none_or(|only| &tenant.id == only))
            .filter(|tenant| tenant.rules.senders.contains(&written_to))
            .collect();

        let mut received = Received::default();
        if owners.is_empty() {
            // Kept, not lost: an operator can find it; no tenant's ledger can take it.
            let record = self
                .inbound_record(
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
            if self.store.record_inbound(&record, None, None, None).await?
                == InboundRecorded::Duplicate
            {
                received.duplicate = true;
            }
            received.ids.push(record.id);
            return Ok(received);
        }

        for tenant in owners {
            let revoke_all = self.policies.consent.at(now).revoke_all;
            let scope = if revoke_all {
                Scope::tenant_wide()
            } else {
                tenant.scope_of_sender(&written_to)
            };
            let consent = match classification.class {
                Class::OptOut if classification.certain => Some(
                    self.keyword_event(
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
                    self.keyword_event(
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
            let record = self
                .inbound_record(
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
            let outbox = match &tenant.webhook {
                Some(_) => Some(
                    self.outbox_record(
                        tenant,
                        upstream,
                        &message,
                        &record,
                        &classification,
                        review.as_ref().map(|r| r.id.as_str()),
                        now,
                    )
                    .await?,
                ),
                None => None,
            };
            // In the recipient's turn, as sends are decided: an opt-out is logged before or
            // after a send's record, never beside a decision that did not see it.
            let turn = self.recipient_turn(&record.recipient_hash).await?;
            let recorded = self
                .store
                .record_inbound(&record, consent.as_ref(), review.as_ref(), outbox.as_ref())
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
                .and_then(|word| self.policies.replies.language_of(word))
                .unwrap_or(&tenant.reply_language);
            let text = self.policies.replies.render(
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
            };
            match self
                .process(tenant, &SenderBounds::default(), answer, delivery)
                .await?
            {
                Processed::Answered { text, .. } => received.answers.push(text),
                Processed::Denied(denial) => tracing::info!(
                    tenant = %tenant.id,
                    code = denial.reasons[0].code.as_str(),
                    "reply not sent"
                ),
                Processed::Sent { .. } | Processed::Failed { .. } | Processed::Scheduled(_) => {}
            }
        }
        Ok(received)
    }

    /// The consent event a keyword reply records, with the message as its evidence.
    #[allow(clippy::too_many_arguments)]
    async fn keyword_event(
        &self,
        tenant: &Tenant,
        upstream: &str,
        message: &InboundMessage,
        recipient: &PhoneNumber,
        written_to: &Sender,
        action: Action,
        scope: &Scope,
        now: Timestamp,
    ) -> Result<crate::store::ConsentRecord, ApiError> {
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
        self.consent_record(event, tenant, &format!("inbound:{upstream}"), now)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn inbound_record(
        &self,
        upstream: &str,
        message: &InboundMessage,
        tenant: &str,
        recipient: &PhoneNumber,
        written_to: &Sender,
        classification: &Classification,
        consent_event: Option<String>,
        now: Timestamp,
    ) -> Result<InboundRecord, ApiError> {
        let id = format!("in_{}", uuid::Uuid::now_v7().simple());
        let payload = json!({
            "from": recipient.e164(),
            "to": written_to.as_str(),
            "body": message.body,
        });
        // The reply belongs to the number that sent it: sealed under its key, erased with it.
        let recipient_hash = self.numbers.hash(recipient);
        let sealed = self
            .seal(
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
        &self,
        tenant: &Tenant,
        upstream: &str,
        message: &InboundMessage,
        inbound: &InboundRecord,
        classification: &Classification,
        review: Option<&str>,
        now: Timestamp,
    ) -> Result<OutboxRecord, ApiError> {
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
        let sealed = self
            .seal(
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
            format: None,
        })
    }

    /// Seals under the data key, or under a recipient's key (`(tenant, recipient hash)`) for
    /// what belongs to that number.
    async fn seal(
        &self,
        recipient: Option<(&str, &str)>,
        associated: &str,
        plaintext: &[u8],
        now: Timestamp,
    ) -> Result<crypto::Sealed, ApiError> {
        let sealed = match recipient {
            Some((tenant, hash)) => {
                self.keys
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
                self.keys
                    .seal(associated.as_bytes(), plaintext, now.as_microsecond())
                    .await
            }
        };
        sealed.map_err(|error| {
            tracing::error!(%error, "sealing failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "encryption_unavailable",
                "the message could not be encrypted; nothing was recorded",
            )
        })
    }
}

impl AppState {
    /// Records a gateway's final delivery status on its message and passes every status on to
    /// the tenant's webhook. A status for a message consentry does not know is acknowledged and
    /// logged.
    pub async fn delivery_status(
        &self,
        upstream: &str,
        status: &crate::dialect::DeliveryStatus,
    ) -> Result<(), ApiError> {
        use crate::dialect::DeliveryState;
        use crate::store::{OutcomeRecord, OutcomeStatus};
        let Some((id, tenant_id, callback)) = self
            .store
            .message_by_gateway_id(upstream, &status.gateway_message_id)
            .await?
        else {
            tracing::warn!(upstream, status = %status.raw, "a delivery status for an unknown message");
            return Ok(());
        };
        let now = self.clock.now();
        let recorded = match status.state {
            DeliveryState::Delivered => Some(OutcomeStatus::Delivered),
            DeliveryState::Undelivered => Some(OutcomeStatus::Undelivered),
            DeliveryState::Failed => Some(OutcomeStatus::Failed),
            DeliveryState::InProgress => None,
        };
        if let Some(outcome) = recorded {
            self.store
                .record_outcome(&OutcomeRecord {
                    message_id: id.clone(),
                    recorded_at_us: now.as_microsecond(),
                    status: outcome,
                    upstream_message_id: Some(status.gateway_message_id.clone()),
                    error_code: status.error_code.clone(),
                    detail: Some(format!("gateway status: {}", status.raw)),
                })
                .await?;
        }
        tracing::info!(message = %id, status = %status.raw, "delivery status");
        if let Some(tenant) = self.tenants.get(&tenant_id)
            && tenant.webhook.is_some()
        {
            let delivery_id = format!("dlv_{}", uuid::Uuid::now_v7().simple());
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
            let sealed = self
                .seal(
                    None,
                    &outbox_associated_data(&tenant_id, &delivery_id),
                    payload.to_string().as_bytes(),
                    now,
                )
                .await?;
            self.store
                .enqueue_delivery(&OutboxRecord {
                    id: delivery_id,
                    tenant: tenant_id.clone(),
                    created_at_us: now.as_microsecond(),
                    key_id: sealed.key_id,
                    payload: sealed.bytes,
                    next_attempt_at_us: now.as_microsecond(),
                    url: None,
                    format: None,
                })
                .await?;
        }
        // The application's own StatusCallback hears it as it would have from Twilio.
        if let Some(callback) = callback
            .as_deref()
            .and_then(|text| serde_json::from_str::<crate::domain::StatusCallback>(text).ok())
        {
            let delivery_id = format!("dlv_{}", uuid::Uuid::now_v7().simple());
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
            let sealed = self
                .seal(
                    None,
                    &outbox_associated_data(&tenant_id, &delivery_id),
                    Value::Object(params).to_string().as_bytes(),
                    now,
                )
                .await?;
            self.store
                .enqueue_delivery(&OutboxRecord {
                    id: delivery_id,
                    tenant: tenant_id,
                    created_at_us: now.as_microsecond(),
                    key_id: sealed.key_id,
                    payload: sealed.bytes,
                    next_attempt_at_us: now.as_microsecond(),
                    url: Some(callback.url),
                    format: Some("twilio".into()),
                })
                .await?;
        }
        Ok(())
    }
}

/// The associated data of an outbox payload: its identity.
pub fn outbox_associated_data(tenant: &crate::domain::TenantId, id: &str) -> String {
    format!("consentry/outbox/v1\0{tenant}\0{id}")
}

#[derive(Debug, Deserialize)]
pub struct ReviewQuery {
    #[serde(default)]
    open: Option<bool>,
}

pub async fn reviews(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<ReviewQuery>,
) -> Result<Json<Value>, ApiError> {
    let (principal, _tenant) = state.authorize(&headers, scope::CONSENTS_READ)?;
    let reviews = state
        .store
        .reviews(&principal.tenant, query.open.unwrap_or(true))
        .await?;
    Ok(Json(json!({ "reviews": reviews })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resolution {
    outcome: String,
}

pub async fn resolve_review(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: RequestBody,
) -> Result<Json<Value>, ApiError> {
    let (principal, tenant) = state.authorize(&headers, scope::CONSENTS_WRITE)?;
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let resolution: Resolution = parse_json(&bytes)?;
    let outcome: &'static str = match resolution.outcome.as_str() {
        "opt_out" => "opt_out",
        "not_opt_out" => "not_opt_out",
        _ => {
            return Err(ApiError::bad_request(
                "invalid_outcome",
                "outcome must be opt_out or not_opt_out",
            )
            .with("field", "outcome"));
        }
    };
    let review = state.store.review(&tenant.id, &id).await?.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "review_not_found", "no such review")
    })?;
    let now = state.clock.now();
    // An opt-out found on review covers the whole tenant: the reply did not say which part.
    let consent = if outcome == "opt_out" {
        let unreadable = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the reviewed message cannot be read",
            )
        };
        let sealed = state
            .store
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
        Some(
            state
                .consent_record(event, tenant, &principal.subject, now)
                .await?,
        )
    } else {
        None
    };
    let record = ResolutionRecord {
        review_id: id.clone(),
        outcome,
        resolved_by: principal.subject.clone(),
        resolved_at_us: now.as_microsecond(),
        consent_event: consent.as_ref().map(|c| c.id.clone()),
    };
    match state
        .store
        .resolve_review(&tenant.id, &record, consent.as_ref())
        .await?
    {
        crate::store::Resolved::Done => Ok(Json(json!({
            "id": id, "outcome": outcome, "consent_event": record.consent_event,
        }))),
        crate::store::Resolved::AlreadyResolved => Err(ApiError::new(
            StatusCode::CONFLICT,
            "review_already_resolved",
            "the review was resolved before",
        )),
        crate::store::Resolved::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "review_not_found",
            "no such review",
        )),
    }
}
