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

/// Reads a base64 Ed25519 public key (32 bytes).
pub fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| "an Ed25519 public key is 32 bytes".to_owned())
}

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
    from: Party,
    #[serde(default)]
    to: Vec<Party>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Party {
    phone_number: String,
}

/// Reads a verified webhook: `message.received` is an inbound message; anything else (delivery
/// statuses) is acknowledged only.
pub fn parse(body: &[u8]) -> Result<WebhookEvent, WebhookError> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
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
    Ok(WebhookEvent::Message(InboundMessage {
        gateway_id: payload.id,
        from: payload.from.phone_number,
        to: to.phone_number,
        body: payload.text.unwrap_or_default(),
    }))
}

/// `POST /v2/messages` with JSON and the API key as bearer.
pub fn send_request(base_url: &str, api_key: &str, permit: &Permit) -> GatewayRequest {
    let message = permit.message();
    let body = json!({
        "from": message.from.as_str(),
        "to": message.to.e164(),
        "text": message.body.as_str(),
    });
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
        parse_public_key(PUBLIC_KEY).unwrap()
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
    fn delivery_statuses_are_acknowledged_only() {
        let status = br#"{"data":{"event_type":"message.finalized","payload":null}}"#;
        assert_eq!(
            parse(status),
            Ok(WebhookEvent::Other {
                kind: "message.finalized".into()
            })
        );
    }
}
