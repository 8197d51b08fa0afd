//! Gateway dialects: how each gateway signs its webhooks, what its inbound messages look like,
//! and how a message is sent through its API. Pure: bytes and strings in, values out; the HTTP
//! edges live in `http::inbound` and `upstream`.
//!
//! - `generic`: the `http-json` gateway (HMAC-SHA256 of the raw body);
//! - `twilio`: form or JSON webhooks signed with HMAC-SHA1 (or -SHA256) of URL and parameters;
//! - `telnyx`: JSON webhooks signed with Ed25519 over `timestamp|body`;
//! - `vonage`: the SMS API, as an upstream and as a front.

pub mod generic;
pub mod telnyx;
pub mod twilio;
pub mod vonage;

/// A recipient's message as a gateway delivered it, before any parsing of its numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// The gateway's id for the message: webhooks delivered twice carry the same one.
    pub gateway_id: String,
    /// The recipient's number (who wrote).
    pub from: String,
    /// The number written to (one of a tenant's senders).
    pub to: String,
    pub body: String,
}

/// What a verified webhook carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    Message(InboundMessage),
    Status(DeliveryStatus),
    /// Any other event: verified, acknowledged, not acted on.
    Other {
        kind: String,
    },
}

/// A gateway's report on a message it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryStatus {
    /// The gateway's id of the message (the one its send API answered).
    pub gateway_message_id: String,
    pub state: DeliveryState,
    /// The gateway's own word for it (`delivered`, `undelivered`, `delivery_failed`, ...).
    pub raw: String,
    pub error_code: Option<String>,
}

/// Where a message stands at the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// A final state: reached the handset.
    Delivered,
    /// A final state: the carrier did not deliver it.
    Undelivered,
    /// A final state: the gateway could not send it.
    Failed,
    /// Not final (queued, sending, sent ...): passed on, not recorded.
    InProgress,
}

/// Why a webhook was refused. Nothing of a refused webhook is recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the webhook carries no signature")]
    MissingSignature,
    #[error("the webhook's signature does not verify")]
    BadSignature,
    #[error("the webhook's timestamp is outside the accepted window")]
    Stale,
    #[error("the webhook is malformed: {0}")]
    Malformed(String),
}

impl WebhookError {
    pub fn code(&self) -> &'static str {
        match self {
            WebhookError::MissingSignature => "missing_signature",
            WebhookError::BadSignature => "invalid_signature",
            WebhookError::Stale => "stale_webhook",
            WebhookError::Malformed(_) => "malformed_webhook",
        }
    }
}

/// A request to a gateway's send API, built from scratch from a permitted message.
#[derive(Debug, Clone)]
pub struct GatewayRequest {
    pub url: String,
    pub content_type: &'static str,
    pub authorization: String,
    pub body: Vec<u8>,
}

/// A gateway's own error, read from its error shape: Twilio `{"code", "message"}`, Telnyx
/// `{"errors": [{"code", "title"}]}`, or a generic `{"error": ...}`.
pub fn gateway_error(answer: &serde_json::Value) -> Option<String> {
    gateway_error_text(answer).map(|text| mask_numbers(&text))
}

/// The text with every run of six or more digits cut to its first two and `****`: a gateway's
/// message may quote the number it refused, and no full number may reach logs or records.
pub fn mask_numbers(text: &str) -> String {
    let mut masked = String::with_capacity(text.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, masked: &mut String| {
        if digits.len() >= 6 {
            masked.push_str(&digits[..2]);
            masked.push_str("****");
        } else {
            masked.push_str(digits);
        }
        digits.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut masked);
            masked.push(c);
        }
    }
    flush(&mut digits, &mut masked);
    masked
}

fn gateway_error_text(answer: &serde_json::Value) -> Option<String> {
    let text = |value: &serde_json::Value| {
        value
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string())
    };
    if let (Some(code), Some(message)) = (answer.get("code"), answer.get("message")) {
        return Some(format!("code {}, {}", text(code), text(message)));
    }
    if let Some(first) = answer.pointer("/errors/0") {
        let code = first.get("code").map(text).unwrap_or_default();
        let title = first
            .get("detail")
            .or(first.get("title"))
            .map(text)
            .unwrap_or_default();
        return Some(format!("code {code}, {title}"));
    }
    answer.get("error").map(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_texts_lose_their_numbers() {
        let twilio = serde_json::json!({
            "code": 21211,
            "message": "The 'To' number +14155550123 is not a valid phone number."
        });
        assert_eq!(
            gateway_error(&twilio).unwrap(),
            "code 21211, The 'To' number +14**** is not a valid phone number."
        );
        assert_eq!(
            mask_numbers("call 12345 or 4155550123"),
            "call 12345 or 41****"
        );
    }
}
