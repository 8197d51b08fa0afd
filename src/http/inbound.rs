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
//! This module verifies and parses; `flow::receive` handles the reply once verified (classify,
//! record with what it causes, answer) and resolves reviews. The webhook is answered only after
//! all of it is committed.

use std::sync::Arc;

use axum::Json;
use axum::body::Body as RequestBody;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, Uri};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::scope;
use crate::dialect::{self, InboundMessage, WebhookEvent};
use crate::flow::receive::Received;
use crate::flow::{self, send::Delivery};
use crate::http::error::ApiError;
use crate::http::extract::{Path, Query};
use crate::http::messages::{parse_json, read_body, read_body_any};
use crate::state::AppState;
use crate::store::Resolved;
use crate::upstream::{Upstream, WebhookKey};

pub async fn webhook(
    State(state): State<Arc<AppState>>,
    name: Path<String>,
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
    let name = name.get()?;
    let Some(Upstream::Gateway(gateway)) = state.upstreams.get(&name) else {
        return Err(not_found());
    };
    // An upstream without a webhook secret takes no webhooks: said before the body is read.
    if matches!(gateway.webhook, WebhookKey::Generic(None)) {
        return Err(not_found());
    }
    let bytes = read_body_any(&headers, body, state.max_request_bytes).await?;
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let verified = (|| -> Result<WebhookEvent, dialect::WebhookError> {
        Ok(match &gateway.webhook {
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
            WebhookKey::Generic(None) => return Err(dialect::WebhookError::MissingSignature),
        })
    })();
    let event = match verified {
        Ok(event) => event,
        Err(error) => {
            state.metrics.webhook_refused(error.code());
            return Err(error.into());
        }
    };
    let twiml = gateway.kind == crate::config::UpstreamKind::Twilio;
    let received = match event {
        WebhookEvent::Status(status) => {
            flow::receive::delivery_status(&state, &name, &status).await?;
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
            flow::receive::receive(&state, &name, message, delivery, None).await?
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
    let received = flow::receive::receive(
        &state,
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

#[derive(Debug, Deserialize)]
pub struct ReviewQuery {
    #[serde(default)]
    open: Option<bool>,
    /// Only this number's reviews (E.164, or national in the tenant's region).
    #[serde(default)]
    number: Option<String>,
}

pub async fn reviews(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Query<ReviewQuery>,
) -> Result<Json<Value>, ApiError> {
    let (principal, tenant) = state.authorize(&headers, scope::CONSENTS_READ)?;
    let query = query.get()?;
    let number = query
        .number
        .as_deref()
        .map(|number| {
            crate::domain::PhoneNumber::parse(number, tenant.default_region).map_err(|e| {
                ApiError::bad_request("invalid_number", format!("number: {e}"))
                    .with("field", "number")
            })
        })
        .transpose()?;
    let recipient_hash = number.map(|number| state.numbers.hash(&number));
    let reviews = state
        .inbound()
        .reviews(
            &principal.tenant,
            query.open.unwrap_or(true),
            recipient_hash.as_deref(),
        )
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
    id: Path<String>,
    body: RequestBody,
) -> Result<Json<Value>, ApiError> {
    let (principal, tenant) = state.authorize(&headers, scope::CONSENTS_WRITE)?;
    let id = id.get()?;
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
    let (resolved, consent_event) =
        flow::receive::resolve_review(&state, tenant, &id, outcome, &principal.subject).await?;
    match resolved {
        Resolved::Done => Ok(Json(json!({
            "id": id, "outcome": outcome, "consent_event": consent_event,
        }))),
        Resolved::AlreadyResolved => Err(ApiError::new(
            StatusCode::CONFLICT,
            "review_already_resolved",
            "the review was resolved before",
        )),
        Resolved::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "review_not_found",
            "no such review",
        )),
    }
}
