//! `POST /v1/messages` (scope `messages:send`) and `GET /v1/messages/{id}` (scope
//! `messages:read`).
//!
//! The send flow, in order; each phase either continues or answers:
//! 1. authenticate the bearer token (401, 403);
//! 2. read the bounded body and parse it into a [`CanonicalMessage`] (413, 400);
//! 3. decide, purely ([`policy::decide`]);
//! 4. record the decision with the sealed body, durably (503 if it cannot be written: nothing
//!    is forwarded);
//! 5. a denial answers 403 with its reason codes;
//! 6. an allowed message is forwarded with its permit, and the outcome appended (201, or 502
//!    when the gateway fails).

use std::sync::Arc;

use axum::Json;
use axum::body::Body as RequestBody;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Principal, scope};
use crate::config::Tenant;
use crate::domain::{Body, CanonicalMessage, MessageId, PhoneNumber, Purpose, Sender};
use crate::http::error::ApiError;
use crate::policy::{self, Decision, Facts, SenderBounds};
use crate::state::AppState;
use crate::store::{DecisionKind, MessageRecord, OutcomeRecord, OutcomeStatus};

/// The native send request; the gateway-compatible fronts fill the same fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendRequest {
    pub to: String,
    pub from: String,
    pub body: String,
    pub purpose: String,
    /// The brand and campaign the message is for: consent is checked at that scope.
    pub brand: Option<String>,
    pub campaign: Option<String>,
}

pub async fn send(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RequestBody,
) -> Result<Response, ApiError> {
    let (principal, tenant) = state.authorize(&headers, scope::SEND)?;
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let request: SendRequest = parse_json(&bytes)?;
    let message = canonical_message(request, tenant)?;
    let bounds = sender_bounds(&principal, tenant);
    match state
        .process(tenant, &bounds, message, Delivery::Upstream)
        .await?
    {
        Processed::Denied(denial) => {
            let headline = &denial.reasons[0];
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                headline.code.as_str(),
                headline.detail.clone(),
            )
            .with("id", denial.message.id.as_str())
            .with(
                "reasons",
                serde_json::to_value(&denial.reasons).unwrap_or_default(),
            ))
        }
        Processed::Sent { id, receipt } => Ok((
            StatusCode::CREATED,
            Json(json!({ "id": id, "status": "sent", "upstream": receipt })),
        )
            .into_response()),
        Processed::Failed { id, error } => Err(ApiError::from(error).with("id", id.as_str())),
        Processed::Answered { id, .. } => Ok((
            StatusCode::CREATED,
            Json(json!({ "id": id, "status": "sent" })),
        )
            .into_response()),
        Processed::Scheduled(deferral) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "id": deferral.message.id,
                "status": "scheduled",
                "release_at": deferral.until.to_string(),
                "reasons": deferral.reasons,
            })),
        )
            .into_response()),
    }
}

/// How an allowed message leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Through the tenant's upstream's send API.
    Upstream,
    /// In the answer to the gateway's webhook (TwiML); the caller sends it.
    InWebhookAnswer,
}

/// What became of a message.
#[derive(Debug)]
pub enum Processed {
    Denied(policy::Denial),
    Sent {
        id: MessageId,
        receipt: crate::upstream::Receipt,
    },
    Failed {
        id: MessageId,
        error: crate::upstream::UpstreamError,
    },
    /// Recorded as sent; its text goes back in the webhook answer.
    Answered {
        id: MessageId,
        text: String,
    },
    /// Deferred: recorded, and released by the scheduler at `until`.
    Scheduled(policy::Deferral),
}

/// What `decide` needs to know about a recipient, read from the store and the zone table.
pub struct Gathered {
    pub consent: Vec<crate::consent::ConsentEvent>,
    pub confirmed_opt_outs: Vec<String>,
    pub open_reviews: Vec<String>,
    pub recent: Vec<Timestamp>,
    pub location: crate::zones::Location,
    /// The recipient's key in the tenant, read with the rest: its record is sealed under it.
    pub recipient_key: Option<crate::store::RecipientKeyRow>,
}

impl Gathered {
    /// The facts `decide` takes, for a tenant and a token's bounds, at `now`.
    pub fn facts<'a>(
        &'a self,
        tenant: &'a Tenant,
        bounds: &'a SenderBounds,
        policies: &'a crate::policy::rules::PolicySet,
        now: Timestamp,
    ) -> Facts<'a> {
        Facts {
            tenant: &tenant.rules,
            bounds,
            policies,
            consent: &self.consent,
            confirmed_opt_outs: &self.confirmed_opt_outs,
            open_reviews: &self.open_reviews,
            location: &self.location,
            recent: &self.recent,
            now,
        }
    }
}

impl AppState {
    /// Reads the facts about a message's recipient, as of `now`.
    pub async fn gather(
        &self,
        tenant: &Tenant,
        message: &CanonicalMessage,
        now: Timestamp,
    ) -> Result<Gathered, ApiError> {
        // Recent sends are read only as far as a cap that applies to this number and purpose
        // needs: the latest `count` within its window.
        let location = self.policies.zones.locate(&message.to);
        let caps = self
            .policies
            .jurisdictions
            .applicable(&location, message.purpose)
            .into_iter()
            .filter_map(|rule| rule.cap)
            .fold(None, |widest: Option<(u32, u32)>, cap| {
                let (hours, count) = widest.unwrap_or((0, 0));
                Some((hours.max(cap.hours), count.max(cap.count)))
            });
        let recent_window = caps.map(|(hours, count)| {
            let since = now - jiff::SignedDuration::from_hours(i64::from(hours));
            (since.as_microsecond(), i64::from(count))
        });
        let recipient = self
            .store
            .recipient_facts(
                &tenant.id,
                &self.numbers.hash(&message.to),
                message.purpose.as_str(),
                recent_window,
            )
            .await?;
        let consent = recipient.consent;
        let recent = recipient
            .recent_us
            .iter()
            .filter_map(|us| Timestamp::from_microsecond(*us).ok())
            .collect();
        Ok(Gathered {
            consent,
            confirmed_opt_outs: recipient.confirmed_opt_outs,
            open_reviews: recipient.open_reviews,
            recent,
            location,
            recipient_key: recipient.recipient_key,
        })
    }

    /// The send flow after parsing: gather the recipient's facts, decide, record the decision
    /// durably, then forward an allowed message and record the outcome. Every message consentry
    /// sends, the API's and its own replies, goes through here.
    pub async fn process(
        &self,
        tenant: &Tenant,
        bounds: &SenderBounds,
        message: CanonicalMessage,
        delivery: Delivery,
    ) -> Result<Processed, ApiError> {
        let recipient_hash = self.numbers.hash(&message.to);
        let decision = {
            // Facts and record under one lock, in this process and across the processes that
            // share the database: caps and confirmations see every decision.
            let mut turn = self.recipient_turn(&recipient_hash).await?;
            let now = self.clock.now();
            let gathered = self.gather(tenant, &message, now).await?;
            let facts = gathered.facts(tenant, bounds, &self.policies, now);
            let decision = policy::decide(message, &facts);
            self.record_decision(
                &decision,
                tenant,
                now,
                gathered.recipient_key,
                &mut turn.shared,
            )
            .await?;
            turn.end().await;
            decision
        };

        let permit = match decision {
            Decision::Deny(denial) => {
                tracing::info!(
                    message = %denial.message.id,
                    tenant = %tenant.id,
                    code = denial.reasons[0].code.as_str(),
                    "message denied"
                );
                return Ok(Processed::Denied(denial));
            }
            Decision::Defer(deferral) => {
                tracing::info!(
                    message = %deferral.message.id,
                    tenant = %tenant.id,
                    until = %deferral.until,
                    "message deferred"
                );
                return Ok(Processed::Scheduled(deferral));
            }
            Decision::Allow(permit) => permit,
        };
        Ok(self.deliver(tenant, permit, delivery).await)
    }

    /// Sends a permitted message and records what the gateway answered.
    pub async fn deliver(
        &self,
        tenant: &Tenant,
        permit: policy::Permit,
        delivery: Delivery,
    ) -> Processed {
        let id = permit.message().id.clone();
        if delivery == Delivery::InWebhookAnswer {
            let text = permit.message().body.as_str().to_owned();
            self.record_outcome(
                &id,
                &Ok(crate::upstream::Receipt {
                    name: tenant.upstream.clone(),
                    message_id: None,
                }),
            )
            .await;
            return Processed::Answered { id, text };
        }
        let upstream = self
            .upstreams
            .get(&tenant.upstream)
            .expect("tenant upstreams are checked at start-up");
        let result = upstream.forward(permit).await;
        self.record_outcome(&id, &result).await;
        match result {
            Ok(receipt) => {
                tracing::info!(message = %id, tenant = %tenant.id, upstream = %receipt.name, "message sent");
                Processed::Sent { id, receipt }
            }
            Err(error) => {
                tracing::warn!(message = %id, tenant = %tenant.id, %error, "upstream failed");
                Processed::Failed { id, error }
            }
        }
    }

    /// Appends the gateway's answer. The gateway has answered: whatever happens to this write,
    /// the caller must learn what the gateway did, or a client would retry a sent message.
    pub(crate) async fn record_outcome(
        &self,
        id: &MessageId,
        result: &Result<crate::upstream::Receipt, crate::upstream::UpstreamError>,
    ) {
        let now = Timestamp::now().as_microsecond();
        let outcome = match result {
            Ok(receipt) => OutcomeRecord {
                message_id: id.clone(),
                recorded_at_us: now,
                status: OutcomeStatus::Sent,
                upstream_message_id: receipt.message_id.clone(),
                error_code: None,
                detail: None,
            },
            Err(error) => OutcomeRecord {
                message_id: id.clone(),
                recorded_at_us: now,
                status: OutcomeStatus::Failed,
                upstream_message_id: None,
                error_code: Some(error.code().to_owned()),
                detail: Some(error.to_string()),
            },
        };
        if let Err(error) = self.store.record_outcome(&outcome).await {
            tracing::error!(message = %id, %error, "the upstream outcome could not be recorded");
        }
    }
}

/// `POST /v1/decisions` (scope `messages:send`): the send request, and an optional `at`
/// (RFC 3339). What would happen if this were sent then, and why: nothing is recorded or sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionRequest {
    to: String,
    from: String,
    body: String,
    purpose: String,
    brand: Option<String>,
    campaign: Option<String>,
    at: Option<String>,
}

pub async fn dry_run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RequestBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (principal, tenant) = state.authorize(&headers, scope::SEND)?;
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let request: DecisionRequest = parse_json(&bytes)?;
    let at = match request.at.as_deref() {
        None => state.clock.now(),
        Some(text) => crate::rfc3339::parse(text).map_err(|e| {
            ApiError::bad_request("invalid_at", format!("at: not an RFC 3339 time: {e}"))
                .with("field", "at")
        })?,
    };
    let send = SendRequest {
        to: request.to,
        from: request.from,
        body: request.body,
        purpose: request.purpose,
        brand: request.brand,
        campaign: request.campaign,
    };
    let message = canonical_message(send, tenant)?;
    let bounds = sender_bounds(&principal, tenant);
    let gathered = state.gather(tenant, &message, at).await?;
    let facts = gathered.facts(tenant, &bounds, &state.policies, at);
    let decision = policy::decide(message, &facts);
    let (verdict, release_at, reasons) = match &decision {
        Decision::Allow(_) => ("allow", None, json!([])),
        Decision::Deny(denial) => ("deny", None, json!(denial.reasons)),
        Decision::Defer(deferral) => (
            "defer",
            Some(deferral.until.to_string()),
            json!(deferral.reasons),
        ),
    };
    let location = &gathered.location;
    Ok(Json(json!({
        "decision": verdict,
        "at": at.to_string(),
        "release_at": release_at,
        "reasons": reasons,
        "location": {
            "country": location.country,
            "regions": location.regions,
            "zones": location.zone_names(),
        },
        "trace": decision.trace(),
    })))
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<crate::store::MessageView>, ApiError> {
    let (principal, _tenant) = state.authorize(&headers, scope::READ_MESSAGES)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "message_not_found",
            "no such message",
        )
    };
    let id = MessageId::parse(&id).ok_or_else(not_found)?;
    let view = state
        .store
        .message(&principal.tenant, &id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(view))
}

impl AppState {
    /// Seals the message and writes its record with the decision. Returns only once the record
    /// is durable, written in the session of the recipient's lock.
    async fn record_decision(
        &self,
        decision: &Decision,
        tenant: &Tenant,
        now: Timestamp,
        recipient_key: Option<crate::store::RecipientKeyRow>,
        lock: &mut crate::store::RecipientLock,
    ) -> Result<(), ApiError> {
        let message = decision.message();
        let (kind, reasons, release_at_us) = match decision {
            Decision::Allow(_) => (DecisionKind::Allowed, serde_json::json!([]), None),
            Decision::Deny(denial) => (
                DecisionKind::Denied,
                serde_json::to_value(&denial.reasons).unwrap_or_default(),
                None,
            ),
            Decision::Defer(deferral) => (
                DecisionKind::Deferred,
                serde_json::to_value(&deferral.reasons).unwrap_or_default(),
                Some(deferral.until.as_microsecond()),
            ),
        };
        let plaintext = json!({
            "to": message.to.e164(),
            "from": message.from.as_str(),
            "body": message.body.as_str(),
        });
        // Sealed under the recipient's own key: erasing the number makes it unreadable.
        let recipient_hash = self.numbers.hash(&message.to);
        let (sealed, new_recipient_key) = self
            .keys
            .seal_for_record(
                message.tenant.as_str(),
                &recipient_hash,
                recipient_key,
                &message_associated_data(message),
                plaintext.to_string().as_bytes(),
                now.as_microsecond(),
            )
            .await
            .map_err(|error| {
                tracing::error!(%error, "sealing failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "encryption_unavailable",
                    "the message could not be encrypted; nothing was sent",
                )
            })?;
        let record = MessageRecord {
            id: message.id.clone(),
            tenant: message.tenant.clone(),
            created_at_us: now.as_microsecond(),
            recipient_hash,
            recipient_masked: message.to.masked(),
            sender_masked: message.from.masked(),
            purpose: message.purpose.as_str(),
            brand: message.scope.brand.clone(),
            campaign: message.scope.campaign.clone(),
            decision: kind,
            reply_kind: message.reply.as_ref().map(|reply| reply.kind()),
            confirms_event: match &message.reply {
                Some(crate::domain::Reply::OptOutConfirmation { opt_out_event }) => {
                    Some(opt_out_event.clone())
                }
                _ => None,
            },
            reasons_json: reasons.to_string(),
            // A deferred message will leave through the tenant's upstream too: its delivery
            // statuses find it by that.
            upstream: matches!(kind, DecisionKind::Allowed | DecisionKind::Deferred)
                .then(|| tenant.upstream.clone()),
            key_id: sealed.key_id,
            payload: sealed.bytes,
            release_at_us,
            status_callback: message
                .status_callback
                .as_ref()
                .and_then(|callback| serde_json::to_string(callback).ok()),
            new_recipient_key,
        };
        self.store.record_message(&record, Some(lock)).await?;
        Ok(())
    }
}

impl AppState {
    /// A tenant's message's recipient, sender and body, unsealed (for the Twilio front's
    /// fetch, which answers with them as Twilio does, to a token with `audit:decrypt` or where
    /// the tenant sets `twilio_fetch_body`); `None` once the recipient was erased.
    /// Like every read of a body, it is recorded in the log (by `subject`) before it happens.
    pub async fn message_content(
        &self,
        tenant: &crate::domain::TenantId,
        id: &MessageId,
        subject: &str,
    ) -> Result<Option<(String, String, String)>, ApiError> {
        let unreadable = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the message cannot be read",
            )
        };
        let sealed = self
            .store
            .message_payload(tenant, id)
            .await?
            .ok_or_else(unreadable)?;
        self.store
            .record_body_access(&crate::audit::leaf::BodyAccess {
                id: format!("acc_{}", uuid::Uuid::now_v7().simple()),
                tenant: tenant.as_str().to_owned(),
                subject: subject.to_owned(),
                message_id: id.as_str().to_owned(),
                accessed_at_us: self.clock.now().as_microsecond(),
            })
            .await?;
        let associated = format!("consentry/message/v1\0{tenant}\0{id}").into_bytes();
        let opened = match self.keys.open(&associated, &sealed).await {
            Ok(bytes) => bytes,
            Err(crate::keyring::KeyError::Crypto(crate::crypto::CryptoError::Erased(_))) => {
                return Ok(None);
            }
            Err(error) => {
                tracing::error!(message = %id, %error, "a message body does not decrypt");
                return Err(unreadable());
            }
        };
        let payload: serde_json::Value =
            serde_json::from_slice(&opened).map_err(|_| unreadable())?;
        let field = |name: &str| payload[name].as_str().unwrap_or_default().to_owned();
        Ok(Some((field("to"), field("from"), field("body"))))
    }
}

/// The associated data bound to a message's sealed payload: its identity.
pub fn message_associated_data(message: &CanonicalMessage) -> Vec<u8> {
    format!("consentry/message/v1\0{}\0{}", message.tenant, message.id).into_bytes()
}

/// Reads the whole JSON body, refusing another content type with 415 and more than `limit`
/// bytes with 413.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: RequestBody,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    if let Some(content_type) = headers.get(http::header::CONTENT_TYPE) {
        let json = content_type
            .to_str()
            .map(|value| value.trim_start().starts_with("application/json"))
            .unwrap_or(false);
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the request as application/json",
            ));
        }
    }
    read_body_any(headers, body, limit).await
}

/// Reads the whole body, whatever its type, refusing more than `limit` bytes with 413.
pub(crate) async fn read_body_any(
    headers: &HeaderMap,
    body: RequestBody,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::payload_too_large(limit))
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| {
        ApiError::bad_request(
            "invalid_request",
            format!("the request is not valid: {error}"),
        )
    })
}

/// Parses the request's fields into the canonical message, each bad field with its own code.
pub(crate) fn canonical_message(
    request: SendRequest,
    tenant: &Tenant,
) -> Result<CanonicalMessage, ApiError> {
    let to = PhoneNumber::parse(&request.to, tenant.default_region).map_err(|error| {
        ApiError::bad_request("invalid_recipient", format!("to: {error}")).with("field", "to")
    })?;
    let from = Sender::parse(&request.from, tenant.default_region).map_err(|error| {
        ApiError::bad_request("invalid_sender", format!("from: {error}")).with("field", "from")
    })?;
    let purpose: Purpose = request.purpose.parse().map_err(|error: String| {
        ApiError::bad_request("invalid_purpose", format!("purpose: {error}"))
            .with("field", "purpose")
    })?;
    let body = Body::parse(request.body).map_err(|error| {
        ApiError::bad_request("invalid_body", format!("body: {error}")).with("field", "body")
    })?;
    let scope = tenant
        .scope(request.brand.as_deref(), request.campaign.as_deref())
        .map_err(|error| {
            ApiError::bad_request(
                "unknown_scope",
                format!("{}: {}", error.field, error.message),
            )
            .with("field", error.field)
        })?;
    // A sender that sends for one brand only sends at that brand's scope: a STOP to it (an
    // opt-out of the brand) must block what it sends, whether or not the request names it.
    let sender_scope = tenant.scope_of_sender(&from);
    let scope = match (&sender_scope.brand, &scope.brand) {
        (Some(_), None) => sender_scope,
        (Some(own), Some(named)) if own != named => {
            return Err(ApiError::bad_request(
                "unknown_scope",
                format!("from: this sender sends for brand {own} only, not {named}"),
            )
            .with("field", "brand"));
        }
        _ => scope,
    };
    Ok(CanonicalMessage {
        id: MessageId::new(),
        tenant: tenant.id.clone(),
        to,
        from,
        body,
        purpose,
        scope,
        reply: None,
        status_callback: None,
    })
}

/// The token's narrowing of the tenant's senders and purposes. A sender in the token that does
/// not parse matches nothing, so it can only narrow.
pub(crate) fn sender_bounds(principal: &Principal, tenant: &Tenant) -> SenderBounds {
    SenderBounds {
        senders: principal.senders.as_ref().map(|senders| {
            senders
                .iter()
                .filter_map(|sender| Sender::parse(sender, tenant.default_region).ok())
                .collect()
        }),
        purposes: principal.purposes.clone(),
    }
}
