//! Telnyx: webhooks and the Messaging API.
//!
//! Webhook signatures (Telnyx API v2): `telnyx-signature-ed25519` is the base64 Ed25519
//! signature of `telnyx-timestamp + "|" + raw body` under the account's public key; a timestamp
//! outside the tolerance (default 300 s) is refused, so a captured webhook cannot be replayed
//! later.

use base64::Engine as _;
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::json;

use super::{GatewayRequest, InboundMessage, WebhookError, WebhookEvent};
use crate::policy::Permit;

pub const SIGNATURE_HEADER: &str = "telnyx-signature-ed25519";
pub const TIMESTAMP_HEADER: &str = "telnyx-timestamp";
pub const DEFAULT_BASE_URL: &str = "https://api.telnyx.com";

/// Verifies a webhook's signature and freshness at `now` (unix seconds).
pub fn verify(
    public_key: &[u8; 32],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance_seconds: u64,
) -> Result<(), WebhookError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(WebhookError::MissingSignature);
    };
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| WebhookError::BadSignature)?;
    let mut signed = Vec::with_capacity(timestamp.len() + 1 + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'|');
    signed.extend_from_slice(body);
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&signed, &signature)
        .map_err(|_| WebhookError::BadSignature)?;
    let sent: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| WebhookError::Malformed("telnyx-timestamp is not a number".into()))?;
    if now.abs_diff(sent) > tolerance_seconds {
        return Err(WebhookError::Stale);
    }
    Ok(())
}

#[derive(Deserialize)]
struct Envelope {
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    event_type: String,
    #[serde(default)]
    payload: Option<Payload>,
}

#[derive(Deserialize)]
struct Payload {
    id: String,
    #[serde(default)]
    from: Option<Party>,
    #[serde(default)]
    to: Vec<Party>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Party {
    phone_number: String,
    #[serde(default)]
    status: Option<String>,
}

/// Reads a verified webhook: `message.received` is an inbound message; anything else (delivery
/// statuses) is acknowledged only.
pub fn parse(body: &[u8]) -> Result<WebhookEvent, WebhookError> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
    if matches!(
        envelope.data.event_type.as_str(),
        "message.sent" | "message.finalized"
    ) {
        let payload = envelope
            .data
            .payload
            .ok_or_else(|| WebhookError::Malformed("a status without a payload".into()))?;
        let raw = payload
            .to
            .first()
            .and_then(|to| to.status.clone())
            .unwrap_or_else(|| envelope.data.event_type.clone());
        let state = match raw.as_str() {
            "delivered" => super::DeliveryState::Delivered,
            "delivery_failed" => super::DeliveryState::Undelivered,
            "sending_failed" => super::DeliveryState::Failed,
            _ => super::DeliveryState::InProgress,
        };
        return Ok(WebhookEvent::Status(super::DeliveryStatus {
            gateway_message_id: payload.id,
            state,
            raw,
            error_code: payload
                .errors
                .first()
                .and_then(|error| error.get("code"))
                .map(|code| {
                    code.as_str()
                        .map_or_else(|| code.to_string(), str::to_owned)
                }),
        }));
    }
    if envelope.data.event_type != "message.received" {
        return Ok(WebhookEvent::Other {
            kind: envelope.data.event_type,
        });
    }
    let payload = envelope
        .data
        .payload
        .ok_or_else(|| WebhookError::Malformed("message.received without a payload".into()))?;
    let to = payload
        .to
        .into_iter()
        .next()
        .ok_or_else(|| WebhookError::Malformed("no receiving number".into()))?;
    let from = payload
        .from
        .ok_or_else(|| WebhookError::Malformed("no sending number".into()))?;
    Ok(WebhookEvent::Message(InboundMessage {
        gateway_id: payload.id,
        from: from.phone_number,
        to: to.phone_number,
        body: payload.text.unwrap_or_default(),
    }))
}

/// `POST /v2/messages` with JSON and the API key as bearer; with consentry's own status URL
/// when it has a public one.
pub fn send_request(
    base_url: &str,
    api_key: &str,
    status_url: Option<&str>,
    permit: &Permit,
) -> GatewayRequest {
    let message = permit.message();
    let mut body = json!({
        "from": message.from.as_str(),
        "to": message.to.e164(),
        "text": message.body.as_str(),
    });
    if !message.media.is_empty() {
        let media: Vec<&str> = message.media.iter().map(|m| m.as_str()).collect();
        body["media_urls"] = json!(media);
    }
    if let Some(url) = status_url {
        body["webhook_url"] = json!(url);
    }
    GatewayRequest {
        url: format!("{}/v2/messages", base_url.trim_end_matches('/')),
        content_type: "application/json",
        authorization: format!("Bearer {api_key}"),
        body: body.to_string().into_bytes(),
    }
}

/// The message id in Telnyx's answer (`data.id`).
pub fn message_id(answer: &serde_json::Value) -> Option<String> {
    answer
        .pointer("/data/id")
        .and_then(|id| id.as_str())
        .map(str::to_owned)
}

/// Telnyx's error code (and HTTP status) for a consentry code: Telnyx's own where one means the
/// same, else a documented consentry code.
pub fn front_error(code: &str) -> (u16, &'static str) {
    match code {
        "opted_out" => (400, "40300"),
        "invalid_recipient" | "missing_to" => (400, "40310"),
        "invalid_sender" | "missing_from" | "sender_not_allowed" => (400, "40305"),
        "missing_body" | "invalid_body" => (400, "40306"),
        "no_consent" => (400, "93001"),
        "quiet_hours" => (400, "93002"),
        "frequency_cap" => (400, "93003"),
        "pending_review" => (400, "93004"),
        "purpose_not_allowed" => (400, "93005"),
        "unknown_time_zone" | "no_allowed_window" => (400, "93006"),
        "unknown_scope" => (400, "93007"),
        "number_reassigned" => (400, "93008"),
        "invalid_purpose" => (400, "93009"),
        "duplicate_parameter" | "invalid_request" | "unsupported_parameter" => (400, "10015"),
        "message_not_found" => (404, "10005"),
        "payload_too_large" => (413, "93413"),
        "upstream_unavailable"
        | "upstream_timeout"
        | "upstream_rejected"
        | "upstream_bad_answer" => (502, "93500"),
        "store_unavailable" | "encryption_unavailable" | "reassigned_lookup_unavailable" => {
            (503, "93503")
        }
        code if super::twilio::is_authentication(code) => (401, "10009"),
        _ => (400, "93000"),
    }
}

/// Telnyx's error body: `{"errors": [{"code", "title", "detail", "meta"}]}`.
pub fn error_body(code: &str, message: &str) -> (u16, serde_json::Value) {
    let (status, number) = front_error(code);
    (
        status,
        json!({ "errors": [{
            "code": number,
            "title": code.replace('_', " "),
            "detail": message,
            "meta": { "consentry_code": code },
        }]}),
    )
}

/// Telnyx's message resource, wrapped in `data`.
pub fn message_resource(
    id: &str,
    from: &str,
    to: &str,
    text: &str,
    status: &str,
    created: jiff::Timestamp,
) -> serde_json::Value {
    json!({ "data": {
        "record_type": "message",
        "id": id,
        "direction": "outbound",
        "type": "SMS",
        "from": { "phone_number": from },
        "to": [{ "phone_number": to, "status": status }],
        "text": text,
        "media": [],
        "parts": 1,
        "encoding": "GSM-7",
        "created_at": created.to_string(),
        "errors": [],
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signed independently with `openssl pkeyutl -sign -rawin` over `timestamp|body`.
    const PUBLIC_KEY: &str = "IYZuBTlX3dje7w/t/U7vUA/wJGBCI6NY/gvb6NmtumY=";
    const TIMESTAMP: &str = "1700000000";
    const BODY: &str = r#"{"data":{"event_type":"message.received","id":"ev-1","payload":{"id":"msg-1","from":{"phone_number":"+14155550123"},"to":[{"phone_number":"+12025550100"}],"text":"STOP"}}}"#;
    const SIGNATURE: &str =
        "T+SGmh2wzVcDrQwB36YuRpgIiqVMNkbm61ZRpHBBa/T/l9NOJNliOqxJee+AFWtVUSyfte+AX3iUnScLxAjaAw==";

    fn key() -> [u8; 32] {
        crate::crypto::decode_public_key(PUBLIC_KEY).unwrap()
    }

    #[test]
    fn an_openssl_signed_webhook_verifies_and_parses() {
        let now = 1_700_000_100;
        assert_eq!(
            verify(
                &key(),
                Some(TIMESTAMP),
                Some(SIGNATURE),
                BODY.as_bytes(),
                now,
                300
            ),
            Ok(())
        );
        let WebhookEvent::Message(message) = parse(BODY.as_bytes()).unwrap() else {
            panic!("not a message");
        };
        assert_eq!(
            (
                message.gateway_id.as_str(),
                message.from.as_str(),
                message.to.as_str(),
                message.body.as_str()
            ),
            ("msg-1", "+14155550123", "+12025550100", "STOP")
        );
    }

    #[test]
    fn wrong_key_altered_body_missing_header_and_stale_time_fail() {
        let now = 1_700_000_100;
        let other = [7u8; 32];
        assert_eq!(
            verify(
                &other,
                Some(TIMESTAMP),
                Some(SIGNATURE),
                BODY.as_bytes(),
                now,
                300
            ),
            Err(WebhookError::BadSignature)
        );
        let altered = BODY.replace("STOP", "START");
        assert_eq!(
            verify(
                &key(),
                Some(TIMESTAMP),
                Some(SIGNATURE),
                altered.as_bytes(),
                now,
                300
            ),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(
                &key(),
                Some("1700000001"),
                Some(SIGNATURE),
                BODY.as_bytes(),
                now,
                300
            ),
            Err(WebhookError::BadSignature),
            "the timestamp is signed too"
        );
        assert_eq!(
            verify(&key(), None, Some(SIGNATURE), BODY.as_bytes(), now, 300),
            Err(WebhookError::MissingSignature)
        );
        assert_eq!(
            verify(
                &key(),
                Some(TIMESTAMP),
                Some(SIGNATURE),
                BODY.as_bytes(),
                1_700_000_301,
                300
            ),
            Err(WebhookError::Stale)
        );
    }

    #[test]
    fn delivery_statuses_are_read() {
        let finalized = br#"{"data":{"event_type":"message.finalized","payload":{"id":"m-1","to":[{"phone_number":"+14155550123","status":"delivery_failed"}],"errors":[{"code":"40008"}]}}}"#;
        let WebhookEvent::Status(status) = parse(finalized).unwrap() else {
            panic!("not a status");
        };
        assert_eq!(status.gateway_message_id, "m-1");
        assert_eq!(status.state, crate::dialect::DeliveryState::Undelivered);
        assert_eq!(status.error_code.as_deref(), Some("40008"));
        let other = br#"{"data":{"event_type":"number_order.complete","payload":null}}"#;
        assert!(matches!(parse(other), Ok(WebhookEvent::Other { .. })));
    }
}
