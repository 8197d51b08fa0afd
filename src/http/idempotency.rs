//! `Idempotency-Key` on sends: a client that retries a send it never got an answer for gets
//! the first answer, byte for byte, instead of a second decision and a second SMS.
//!
//! The key (1 to 255 visible ASCII characters) is scoped to the tenant. The first request
//! with it claims it durably before anything is decided; its answer is kept, sealed, for
//! [`KEY_LIFETIME_US`]. A retry with the same request (route, content type, the
//! `X-Consentry-*` headers and body, by SHA-256)
//! gets that answer with `Idempotent-Replayed: true`; with another request, 422
//! `idempotency_key_reused`; while the first is still running (or if it was interrupted by a
//! crash: fail closed), 409 `idempotency_key_in_use`. An answer that says nothing was sent
//! because consentry could not record it (503) gives the key up, so the retry runs.
//! The Twilio front also takes `I-Twilio-Idempotency-Token`.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::error::{ApiError, NothingSent};
use crate::config::Tenant;
use crate::state::AppState;
use crate::store::{Claimed, KeyAnswer, KeyClaim};

/// How long a key and its answer are kept.
pub const KEY_LIFETIME_US: i64 = 24 * 3600 * 1_000_000;
/// The longest key accepted.
const MAX_KEY_LENGTH: usize = 255;
/// The header replays carry.
const REPLAYED: &str = "idempotent-replayed";
/// The largest answer kept (sends answer well under 4 KiB).
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// A request's hold on its key, from [`begin`] to [`Held::finish`].
pub struct Held {
    tenant: String,
    key: String,
}

/// What [`begin`] decided.
pub enum Begun {
    /// No key: the request runs as usual.
    Unkeyed,
    /// The key is this request's: run it, then [`Held::finish`] with its answer.
    Held(Held),
    /// Answer this instead of running the request.
    Answer(Response),
}

/// Claims the request's idempotency key, if it carries one, among `headers` (the standard
/// `Idempotency-Key`, and the names in `also`). `route` and `body` say what the request is.
pub async fn begin(
    state: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    also: &[&str],
    route: &str,
    body: &[u8],
) -> Result<Begun, ApiError> {
    let Some(key) = key_of(headers, also)? else {
        return Ok(Begun::Unkeyed);
    };
    // What the request asks: its route, and the headers and body that say what to send.
    let value = |name: &str| {
        headers
            .get(name)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default()
    };
    let request_hash = request_hash(&[
        route.as_bytes(),
        value("content-type"),
        value("x-consentry-purpose"),
        value("x-consentry-brand"),
        value("x-consentry-campaign"),
        body,
    ]);
    let (claim, claimed) = claim(state, tenant, key.clone(), request_hash).await?;
    match claimed {
        Claimed::Fresh => Ok(Begun::Held(Held {
            tenant: claim.tenant,
            key,
        })),
        Claimed::Mismatch => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for another request",
        )),
        Claimed::InUse { since_us } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_use",
            "a request with this Idempotency-Key has not answered yet; if it was interrupted, \
             the key stays held until it expires, and nothing is sent again with it",
        )
        .with(
            "since",
            jiff::Timestamp::from_microsecond(since_us)
                .map(|t| t.to_string())
                .unwrap_or_default(),
        )),
        Claimed::Answered(answer) => Ok(Begun::Answer(replay(state, &claim, &answer).await?)),
    }
}

/// What a request asks, for telling a retry from another request: SHA-256 over its parts,
/// each prefixed with its length.
pub(crate) fn request_hash(parts: &[&[u8]]) -> Vec<u8> {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        hash.update(&(part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finish().as_ref().to_vec()
}

/// Claims `key` in the tenant for a request of `request_hash`, durably.
pub(crate) async fn claim(
    state: &AppState,
    tenant: &Tenant,
    key: String,
    request_hash: Vec<u8>,
) -> Result<(KeyClaim, Claimed), ApiError> {
    let now_us = state.clock.now().as_microsecond();
    let claim = KeyClaim {
        tenant: tenant.id.as_str().to_owned(),
        key,
        request_hash,
        now_us,
        expires_at_us: now_us.saturating_add(KEY_LIFETIME_US),
    };
    let claimed = state.idempotency_keys().claim_key(&claim).await?;
    Ok((claim, claimed))
}

/// Keeps `bytes` (sealed) as the answer of a claimed key.
pub(crate) async fn keep(
    state: &AppState,
    tenant: &str,
    key: &str,
    status: u16,
    content_type: String,
    bytes: &[u8],
    recipient_hash: Option<String>,
) -> Result<(), String> {
    let now_us = state.clock.now().as_microsecond();
    let sealed = state
        .keys
        .seal(&associated(tenant, key), bytes, now_us)
        .await
        .map_err(|error| error.to_string())?;
    state
        .idempotency_keys()
        .answer_key(
            tenant,
            key,
            &KeyAnswer {
                status,
                content_type,
                key_id: sealed.key_id,
                sealed: sealed.bytes,
                recipient_hash,
            },
        )
        .await
        .map_err(|error| error.to_string())
}

/// The kept answer's bytes, opened.
pub(crate) async fn open_answer(
    state: &AppState,
    claim: &KeyClaim,
    answer: &KeyAnswer,
) -> Result<Vec<u8>, ApiError> {
    let sealed = crate::crypto::Sealed {
        key_id: answer.key_id.clone(),
        bytes: answer.sealed.clone(),
    };
    state
        .keys
        .open(&associated(&claim.tenant, &claim.key), &sealed)
        .await
        .map_err(|error| {
            tracing::error!(%error, "a kept idempotent answer does not open");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the first answer to this Idempotency-Key cannot be read; nothing was sent again",
            )
        })
}

impl Held {
    /// Keeps `response` as the key's answer (or gives the key up if nothing was sent for lack
    /// of a record) and returns it. `recipient_hash`: the message's recipient, if the request
    /// named one, whose erasure deletes the kept answer.
    pub async fn finish(
        self,
        state: &AppState,
        response: Response,
        recipient_hash: Option<String>,
    ) -> Response {
        if response.extensions().get::<NothingSent>().is_some() {
            if let Err(error) = state
                .idempotency_keys()
                .release_key(&self.tenant, &self.key)
                .await
            {
                tracing::warn!(%error, "an idempotency key could not be given up");
            }
            return response;
        }
        let (parts, body) = response.into_parts();
        let bytes = match axum::body::to_bytes(body, MAX_ANSWER_BYTES).await {
            Ok(bytes) => bytes,
            Err(error) => {
                // The key stays pending: a retry gets 409, never a second send.
                tracing::error!(%error, "an answer could not be kept for its idempotency key");
                return Response::from_parts(parts, Body::empty());
            }
        };
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let kept = keep(
            state,
            &self.tenant,
            &self.key,
            parts.status.as_u16(),
            content_type,
            &bytes,
            recipient_hash,
        );
        if let Err(error) = kept.await {
            tracing::error!(%error, "an answer could not be kept for its idempotency key");
        }
        Response::from_parts(parts, Body::from(bytes))
    }
}

/// The first answer, as it was.
async fn replay(
    state: &AppState,
    claim: &KeyClaim,
    answer: &KeyAnswer,
) -> Result<Response, ApiError> {
    let bytes = open_answer(state, claim, answer).await?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    if let Ok(value) = HeaderValue::from_str(&answer.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    Ok(response)
}

/// The key the request carries, if any; 400 `invalid_idempotency_key` when malformed or
/// given twice.
pub(crate) fn key_of(headers: &HeaderMap, also: &[&str]) -> Result<Option<String>, ApiError> {
    let invalid = |message: &str| {
        ApiError::bad_request("invalid_idempotency_key", message.to_owned())
            .with("field", "Idempotency-Key")
    };
    let mut values = std::iter::once("idempotency-key")
        .chain(also.iter().copied())
        .flat_map(|name| headers.get_all(name).iter());
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid("send one idempotency key"));
    }
    let key = value
        .to_str()
        .ok()
        .map(|key| key.trim().trim_matches('"'))
        .filter(|key| {
            !key.is_empty()
                && key.len() <= MAX_KEY_LENGTH
                && key.bytes().all(|byte| (0x20..0x7f).contains(&byte))
        })
        .ok_or_else(|| invalid("the key must be 1 to 255 visible ASCII characters"))?;
    Ok(Some(key.to_owned()))
}

/// What a kept answer is bound to when sealed: its tenant and key.
fn associated(tenant: &str, key: &str) -> Vec<u8> {
    format!("consentry/idempotent-answer/v1\0{tenant}\0{key}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_from_either_header_once() {
        let mut headers = HeaderMap::new();
        assert_eq!(key_of(&headers, &[]).unwrap(), None);
        headers.insert("idempotency-key", HeaderValue::from_static("\"order-1\""));
        assert_eq!(key_of(&headers, &[]).unwrap().as_deref(), Some("order-1"));
        headers.insert("i-twilio-idempotency-token", HeaderValue::from_static("t"));
        assert_eq!(
            key_of(&headers, &["i-twilio-idempotency-token"])
                .unwrap_err()
                .code,
            "invalid_idempotency_key"
        );
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", HeaderValue::from_static(""));
        assert!(key_of(&headers, &[]).is_err());
        headers.insert(
            "idempotency-key",
            HeaderValue::from_str(&"k".repeat(256)).unwrap(),
        );
        assert!(key_of(&headers, &[]).is_err());
    }
}
