//! `POST /v1/messages` (scope `messages:send`) and `GET /v1/messages/{id}` (scope
//! `messages:read`).
//!
//! The send flow, in order; each phase either continues or answers. This module does the first
//! two and the answers; `flow::send::process` does the rest:
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
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Principal, scope};
use crate::config::Tenant;
use crate::domain::MessageId;
use crate::flow::request::{SendRequest, canonical_message, sender_bounds};
use crate::flow::{self, send::Delivery, send::Processed};
use crate::http::error::ApiError;
use crate::http::extract::Path;
use crate::http::idempotency::{self, Begun};
use crate::policy::{self, Decision};
use crate::state::AppState;

pub async fn send(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RequestBody,
) -> Result<Response, ApiError> {
    let (principal, tenant) = state.authorize(&headers, scope::SEND)?;
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let held = match idempotency::begin(&state, tenant, &headers, &[], "POST /v1/messages", &bytes)
        .await?
    {
        Begun::Answer(answer) => return Ok(answer),
        Begun::Held(key) => Some(key),
        Begun::Unkeyed => None,
    };
    let mut recipient = None;
    let response = send_parsed(&state, &principal, tenant, &bytes, &mut recipient)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    Ok(match held {
        Some(key) => key.finish(&state, response, recipient).await,
        None => response,
    })
}

/// Parses, decides, records and forwards a native send; sets `recipient` once the recipient
/// is known.
async fn send_parsed(
    state: &Arc<AppState>,
    principal: &Principal,
    tenant: &Tenant,
    bytes: &[u8],
    recipient: &mut Option<String>,
) -> Result<Response, ApiError> {
    let request: SendRequest = parse_json(bytes)?;
    let message = canonical_message(state, request, tenant, state.clock.now())?;
    *recipient = Some(state.numbers.hash(&message.to));
    let bounds = sender_bounds(principal, tenant);
    match flow::send::process(state, tenant, &bounds, message, Delivery::Upstream).await? {
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
        Processed::Requeued { id, until } => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "id": id,
                "status": "scheduled",
                "release_at": until.to_string(),
                "reasons": flow::send::throttled_reasons(until),
            })),
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
        send_at: None,
        media_urls: Vec::new(),
    };
    let message = canonical_message(&state, send, tenant, at)?;
    let bounds = sender_bounds(&principal, tenant);
    let gathered = flow::send::gather(&state, tenant, &message, at, None).await?;
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
    id: Path<String>,
) -> Result<Json<crate::store::MessageView>, ApiError> {
    let (principal, _tenant) = state.authorize(&headers, scope::READ_MESSAGES)?;
    let id = id.get()?;
    let id = MessageId::parse(&id).ok_or_else(message_not_found)?;
    let view = state
        .messages()
        .message(&principal.tenant, &id)
        .await?
        .ok_or_else(message_not_found)?;
    Ok(Json(view))
}

/// `POST /v1/messages/{id}/cancel` (scope `messages:send`): calls off a held message (scheduled
/// with `send_at`, or deferred by a window) before its release. 200 with the message, now
/// `cancelled` (again on a retry); 409 `not_cancellable` with its status once it was released;
/// 404 for another tenant's or no message.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    id: Path<String>,
) -> Result<Json<crate::store::MessageView>, ApiError> {
    let (principal, _tenant) = state.authorize(&headers, scope::SEND)?;
    let id = id.get()?;
    let id = MessageId::parse(&id).ok_or_else(message_not_found)?;
    let view = flow::send::cancel(&state, &principal.tenant, &id)
        .await?
        .ok_or_else(message_not_found)?;
    cancelled(view).map(Json)
}

/// A cancellation's answer: the message if it is cancelled, else 409 with where it stands.
pub(crate) fn cancelled(
    view: crate::store::MessageView,
) -> Result<crate::store::MessageView, ApiError> {
    if view.status == crate::store::MessageStatus::Cancelled {
        return Ok(view);
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "not_cancellable",
        format!(
            "the message is {}: only a scheduled message can be cancelled",
            view.status.as_str()
        ),
    )
    .with("id", view.id.as_str())
    .with("status", view.status.as_str()))
}

pub(crate) fn message_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "message_not_found",
        "no such message",
    )
}

/// Reads the whole JSON body, refusing another content type with 415 and more than `limit`
/// bytes with 413.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: RequestBody,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    if let Some(content_type) = headers.get(http::header::CONTENT_TYPE) {
        let json = content_type.to_str().map(is_json).unwrap_or(false);
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

/// Whether a `Content-Type` is JSON: its media type (before any parameter) is
/// `application/json`, in any case (RFC 9110 section 8.3.1); `application/jsonl` is not.
pub(crate) fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
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
        .map_err(|error| super::edge::body_error(&error, limit))
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| {
        ApiError::bad_request(
            "invalid_request",
            format!("the request is not valid: {error}"),
        )
    })
}
