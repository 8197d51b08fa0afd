//! The `http-json` gateway: messages are posted as JSON with a bearer credential; webhooks carry
//! `X-Webhook-Signature: sha256=<hex of HMAC-SHA256(secret, raw body)>` and the JSON
//! `{"id", "from", "to", "body"}`.

use ring::hmac;
use serde::{Deserialize, Serialize};

use super::{GatewayRequest, InboundMessage, WebhookError, WebhookEvent};
use crate::policy::Permit;

pub const SIGNATURE_HEADER: &str = "x-webhook-signature";

/// Checks the signature header against the raw body, in constant time.
pub fn verify(secret: &[u8], header: Option<&str>, body: &[u8]) -> Result<(), WebhookError> {
    let header = header.ok_or(WebhookError::MissingSignature)?;
    let hex = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(WebhookError::BadSignature)?;
    let tag = decode_hex(hex).ok_or(WebhookError::BadSignature)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, body, &tag).map_err(|_| WebhookError::BadSignature)
}

/// The signature header value for a body (what a gateway, or a test, sends).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!(
        "sha256={}",
        crate::crypto::hex(hmac::sign(&key, body).as_ref())
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Inbound {
    id: String,
    from: String,
    to: String,
    #[serde(default)]
    body: String,
}

/// Parses a verified webhook body.
pub fn parse(body: &[u8]) -> Result<WebhookEvent, WebhookError> {
    let inbound: Inbound =
        serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
    Ok(WebhookEvent::Message(InboundMessage {
        gateway_id: inbound.id,
        from: inbound.from,
        to: inbound.to,
        body: inbound.body,
    }))
}

#[derive(Serialize)]
struct Outbound<'a> {
    id: &'a str,
    to: &'a str,
    from: &'a str,
    body: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    media_urls: Vec<&'a str>,
    purpose: &'a str,
}

/// `POST url` with the message as JSON and the bearer credential.
pub fn send_request(url: &str, credential: &str, permit: &Permit) -> GatewayRequest {
    let message = permit.message();
    let body = serde_json::to_vec(&Outbound {
        id: message.id.as_str(),
        to: message.to.e164(),
        from: message.from.as_str(),
        body: message.body.as_str(),
        media_urls: message.media.iter().map(|m| m.as_str()).collect(),
        purpose: message.purpose.as_str(),
    })
    .expect("a message serialises");
    GatewayRequest {
        url: url.to_owned(),
        content_type: "application/json",
        authorization: format!("Bearer {credential}"),
        body,
    }
}

/// The gateway's message id in its answer: a string or number `id`.
pub fn message_id(answer: &serde_json::Value) -> Option<String> {
    match answer.get("id") {
        Some(serde_json::Value::String(id)) => Some(id.clone()),
        Some(serde_json::Value::Number(id)) => Some(id.to_string()),
        _ => None,
    }
}

pub(crate) fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_every_byte_of_the_body() {
        let body = br#"{"id":"in-1","from":"+14155550123","to":"+12025550100","body":"STOP"}"#;
        let header = sign(b"secret", body);
        assert_eq!(verify(b"secret", Some(&header), body), Ok(()));
        assert_eq!(
            verify(b"other", Some(&header), body),
            Err(WebhookError::BadSignature)
        );
        let mut altered = body.to_vec();
        altered[10] ^= 1;
        assert_eq!(
            verify(b"secret", Some(&header), &altered),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(b"secret", None, body),
            Err(WebhookError::MissingSignature)
        );
        assert_eq!(
            verify(b"secret", Some("sha256=zz"), body),
            Err(WebhookError::BadSignature)
        );
        // Computed independently: printf '%s' BODY | openssl dgst -sha256 -hmac secret
        assert_eq!(
            sign(b"secret", b"hello"),
            "sha256=88aab3ede8d3adf94d26ab90d3bafd4a2083070c3bcce9c014ee04a443847c0b"
        );
    }
}
